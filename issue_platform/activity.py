"""Activity records and priority changes, with the data Sentry writes for each (plain Python).

Activity types are Sentry's `ActivityType` names in lower case. The data of each, as Sentry writes it:

  set_resolved, set_ignored, set_unresolved, auto_set_ongoing, set_regression (from a status change):
      the message's `activity_data`, or {} (`update_group_status(activity_data=...)`)
  set_regression (an occurrence on a resolved group): {"event_id", "version"} (`_handle_regression`)
  set_escalating: {"event_id", "forecast"} from the escalation check; {} from a status change
      (`manage_issue_states` without an event)
  set_resolved_by_age: {"age": hours}; auto_set_ongoing (after 7 days): {"after_days": 7}
  set_priority: {"priority": "low" | "medium" | "high", "reason": "escalating" | "ongoing" |
      "issue_platform"} (`priority.update_priority`, `PriorityLevel.to_str()`)
  seer_rca_started ... seer_iteration_completed (a status change naming one in `activity_type`): the
      message's `activity_data`, or {} (`status_change_consumer._record_event_activity`)
"""
from __future__ import annotations

from typing import Optional

from issue_platform.enums import ActivityType, PriorityLevel
from issue_platform.key_state import Group
from issue_platform.tables import ACTIVITY, activity_row

SET_RESOLVED, SET_IGNORED, SET_UNRESOLVED = "set_resolved", "set_ignored", "set_unresolved"
SET_REGRESSION, SET_ESCALATING, SET_RESOLVED_BY_AGE = "set_regression", "set_escalating", "set_resolved_by_age"
AUTO_SET_ONGOING, SET_PRIORITY = "auto_set_ongoing", "set_priority"

# `status_change_consumer.update_status` records these (Sentry's AUTOFIX_ACTIVITY_TYPES) without touching
# the status. That set was not in the copies of types/activity.py read; these are its Seer types, which
# `update_status`'s comment names ("autofix/Seer state transitions").
EVENT_ONLY_ACTIVITY_TYPES = frozenset((
    ActivityType.SEER_RCA_STARTED, ActivityType.SEER_RCA_COMPLETED, ActivityType.SEER_SOLUTION_STARTED,
    ActivityType.SEER_SOLUTION_COMPLETED, ActivityType.SEER_CODING_STARTED, ActivityType.SEER_CODING_COMPLETED,
    ActivityType.SEER_PR_CREATED, ActivityType.SEER_ITERATION_STARTED, ActivityType.SEER_ITERATION_COMPLETED))

# PriorityChangeReason values.
ESCALATING, ONGOING, ISSUE_PLATFORM = "escalating", "ongoing", "issue_platform"

Row = tuple[str, dict]


def record(group: Group, kind: str, when: float, data: Optional[dict] = None) -> Row:
    return ACTIVITY, activity_row(group_id=group.group_id, project_id=group.project_id, kind=kind,
                                  timestamp=when, data=dict(data or {}))


def update_priority(group: Group, priority: Optional[int], reason: str, when: float) -> list[Row]:
    """Sentry's `update_priority`: nothing if unset or unchanged, else the change and its activity."""
    if priority is None or priority == group.priority:
        return []
    group.priority = priority  # part of the change that caused it: no version bump of its own
    return [record(group, SET_PRIORITY, when, {"priority": PriorityLevel(priority).name.lower(), "reason": reason})]
