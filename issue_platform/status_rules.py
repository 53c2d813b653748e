"""Status-change rules: Sentry's `status_change_consumer.update_status` (plain Python).

`check` decides the outcome (reference §6.5); `apply` makes an accepted change. A status change only
changes the status: archiving until escalating computes no forecast (the daily job or the first
escalation check does), and the activity carries the message's `activity_data` (see activity.py).

A message's `activity_type` (`update_status`, before anything else once the group is found): a value
that is not an `ActivityType` drops the message (`unknown_activity_type`); an event-only type (Seer's
autofix steps) records that activity on the group and changes nothing else (`activity_recorded`),
whatever the status fields say; any other known type is not read (the status decides the activity).
"""
from __future__ import annotations

from typing import Optional

from issue_platform import outcomes
from issue_platform.activity import (AUTO_SET_ONGOING, EVENT_ONLY_ACTIVITY_TYPES, SET_IGNORED, SET_REGRESSION,
                                     SET_RESOLVED, SET_UNRESOLVED, Row, record)
from issue_platform.enums import ActivityType
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.key_state import Group
from issue_platform.lifecycle import escalate, set_ongoing
from issue_platform.pending import PendingStatusChange

# Status-change outcomes (`duplicate`: its id was seen within the dedupe window, as for occurrences).
APPLIED, NO_OP, GROUP_NOT_FOUND = "applied", "no_op", "group_not_found"
INVALID_TRANSITION, UNSUPPORTED_STATUS, DUPLICATE = "invalid_transition", "unsupported_status", outcomes.DUPLICATE
UNKNOWN_ACTIVITY_TYPE, ACTIVITY_RECORDED = "unknown_activity_type", "activity_recorded"
EFFECTIVE = (APPLIED, ACTIVITY_RECORDED)  # the outcomes whose effects `apply` makes
_ACTIVITY_TYPES = frozenset(ActivityType)
_IGNORED_SUBSTATUSES = {Sub.UNTIL_ESCALATING, Sub.UNTIL_CONDITION_MET, Sub.FOREVER}


def check(group: Optional[Group], status: int, substatus: Optional[int],
          activity_type: Optional[int] = None) -> tuple[str, Optional[str]]:
    """(outcome, reason) of a status change on `group` (None: no group for its fingerprint)."""
    if group is None:
        return GROUP_NOT_FOUND, None
    if activity_type is not None:
        if activity_type not in _ACTIVITY_TYPES:
            return UNKNOWN_ACTIVITY_TYPE, None
        if activity_type in EVENT_ONLY_ACTIVITY_TYPES:
            return ACTIVITY_RECORDED, None
    if status not in (S.UNRESOLVED, S.RESOLVED, S.IGNORED):
        return UNSUPPORTED_STATUS, f"status {status} is not supported by status changes"
    if (group.status, group.substatus) == (status, substatus):
        return NO_OP, None
    if status == S.RESOLVED:
        return (APPLIED, None) if substatus is None else (INVALID_TRANSITION, "unexpected_substatus")
    if substatus is None:
        return INVALID_TRANSITION, "missing_substatus"
    if status == S.IGNORED:
        return (APPLIED, None) if substatus in _IGNORED_SUBSTATUSES else (INVALID_TRANSITION, "invalid_substatus")
    if substatus == Sub.ESCALATING:  # manage_issue_states updates only IGNORED groups
        return (APPLIED, None) if group.status == S.IGNORED else (INVALID_TRANSITION, "not_ignored")
    if substatus in (Sub.REGRESSED, Sub.ONGOING):
        return APPLIED, None
    return INVALID_TRANSITION, "invalid_substatus"


def apply(group: Group, change: PendingStatusChange) -> list[Row]:
    """The effects of a change `check` accepted (an outcome in EFFECTIVE)."""
    data, when, substatus = change.activity_data, change.time, change.new_substatus
    if change.activity_type in EVENT_ONLY_ACTIVITY_TYPES:  # `_record_event_activity`
        return [record(group, ActivityType(change.activity_type).name.lower(), when, data)]
    group.resolve_age_hours = change.resolve_age_hours
    if change.new_status == S.RESOLVED:
        group.set_status(S.RESOLVED, None, when)
        return [record(group, SET_RESOLVED, when, data)]
    if change.new_status == S.IGNORED:
        group.set_status(S.IGNORED, substatus, when)
        group.forecast_checked_at = when  # the daily forecast job covers it from the next midnight
        return [record(group, SET_IGNORED, when, data)]
    if substatus == Sub.ESCALATING:
        return escalate(group, when, None)  # no event: Sentry's activity data is empty
    if substatus == Sub.REGRESSED:
        group.set_status(S.UNRESOLVED, Sub.REGRESSED, when)
        return [record(group, SET_REGRESSION, when, data)]
    kind = AUTO_SET_ONGOING if group.substatus == Sub.ESCALATING else SET_UNRESOLVED
    return set_ongoing(group, when, kind, data)
