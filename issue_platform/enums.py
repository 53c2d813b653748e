"""Sentry's enums, with Sentry's integer values (see README: "Domain")."""
from enum import Enum, IntEnum


class GroupCategory(IntEnum):
    ERROR = 1
    PERFORMANCE = 2
    PROFILE = 3
    CRON = 4
    REPLAY = 5
    FEEDBACK = 6
    UPTIME = 7
    METRIC_ALERT = 8
    TEST_NOTIFICATION = 9
    OUTAGE = 10
    METRIC = 11
    DB_QUERY = 12
    HTTP_CLIENT = 13
    FRONTEND = 14
    MOBILE = 15
    AI_DETECTED = 16
    PREPROD = 17
    INSTRUMENTATION = 18


class GroupStatus(IntEnum):
    UNRESOLVED = 0
    RESOLVED = 1
    IGNORED = 2
    PENDING_DELETION = 3
    DELETION_IN_PROGRESS = 4
    PENDING_MERGE = 5
    REPROCESSING = 6


class GroupSubStatus(IntEnum):
    UNTIL_ESCALATING = 1
    ESCALATING = 2
    ONGOING = 3
    UNTIL_CONDITION_MET = 4
    FOREVER = 5
    REGRESSED = 6
    NEW = 7


class PriorityLevel(IntEnum):
    LOW = 25
    MEDIUM = 50
    HIGH = 75


class PayloadType(str, Enum):
    OCCURRENCE = "occurrence"
    STATUS_CHANGE = "status_change"


# Sentry's LOG_LEVELS_MAP keys, in severity order; the index is the compact code.
LEVELS = ("debug", "info", "warning", "error", "fatal")
