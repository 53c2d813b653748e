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


class ActivityType(IntEnum):
    """Sentry's `sentry.types.activity.ActivityType` (the values a status change's `activity_type` may name)."""

    SET_RESOLVED = 1
    SET_UNRESOLVED = 2
    SET_IGNORED = 3
    SET_PUBLIC = 4
    SET_PRIVATE = 5
    SET_REGRESSION = 6
    CREATE_ISSUE = 7
    NOTE = 8
    FIRST_SEEN = 9
    RELEASE = 10
    ASSIGNED = 11
    UNASSIGNED = 12
    SET_RESOLVED_IN_RELEASE = 13
    MERGE = 14
    SET_RESOLVED_BY_AGE = 15
    SET_RESOLVED_IN_COMMIT = 16
    DEPLOY = 17
    NEW_PROCESSING_ISSUES = 18
    UNMERGE_SOURCE = 19
    UNMERGE_DESTINATION = 20
    SET_RESOLVED_IN_PULL_REQUEST = 21
    REPROCESS = 22
    MARK_REVIEWED = 23
    AUTO_SET_ONGOING = 24
    SET_ESCALATING = 25
    SET_PRIORITY = 26
    DELETED_ATTACHMENT = 27
    REFERENCED_IN_COMMIT = 28
    SEER_RCA_STARTED = 29
    SEER_RCA_COMPLETED = 30
    SEER_SOLUTION_STARTED = 31
    SEER_SOLUTION_COMPLETED = 32
    SEER_CODING_STARTED = 33
    SEER_CODING_COMPLETED = 34
    SEER_PR_CREATED = 35
    SEER_ITERATION_STARTED = 36
    SEER_ITERATION_COMPLETED = 37


class PayloadType(str, Enum):
    OCCURRENCE = "occurrence"
    STATUS_CHANGE = "status_change"


# Sentry's LOG_LEVELS_MAP keys, in severity order; the index is the compact code.
LEVELS = ("debug", "info", "warning", "error", "fatal")
