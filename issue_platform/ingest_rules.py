"""Occurrence ingest rules: Sentry's `save_issue_from_occurrence` for a key's group (plain Python).

* A new group (`_create_issue_kwargs`, `_create_group`): UNRESOLVED/NEW; priority and
  `initial_priority` = the occurrence's priority (validation filled a missing one as `_get_kwargs`
  does); `first_seen`, `last_seen` and `active_at` = the embedded event's timestamp; culprit cut to
  200 characters; `platform` = the event's; `assignee` = the occurrence's actor, if any
  (`save_issue_from_occurrence` assigns only a group it creates).
* An existing group (`_process_existing_aggregate`, then `update_priority`): `last_seen` never moves
  back, `first_seen` moves earlier for an older event; subtitle, culprit and level follow the
  occurrence, the title too unless it would put an empty or placeholder title over a real one
  (`_get_updated_group_title`); the priority follows every occurrence (reason `issue_platform`);
  `initial_priority` (Sentry's `metadata.initial_priority`, merged from `materialize_metadata`)
  becomes the occurrence's priority, which is what leaving ESCALATING restores.
* Regression (`_handle_regression`): a group `Group.get_status()` reports RESOLVED (RESOLVED, or
  UNRESOLVED, never resolved, with `last_seen` past the resolve age for types with
  `enable_auto_resolve`) regresses unless its `active_at` is within 5 s of the event; the occurrence
  counts either way.
"""
from __future__ import annotations

from issue_platform.activity import ISSUE_PLATFORM, SET_REGRESSION, Row, record, update_priority
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.key_state import Group
from issue_platform.grouptype import GroupType
from issue_platform.pending import Display, PendingOccurrence

MAX_CULPRIT_LENGTH = 200  # sentry.constants
PLACEHOLDER_EVENT_TITLES = frozenset(("<untitled>", "<unknown>", "<unlabeled event>", "Error"))  # sentry.constants
REGRESSION_GUARD_SECONDS = 5.0  # `_handle_regression` skips groups active this recently
HOUR = 3600.0


def truncate_culprit(culprit: str) -> str:
    """`truncatechars(culprit, MAX_CULPRIT_LENGTH)`: longer values keep 197 characters and "..."."""
    return culprit if len(culprit) <= MAX_CULPRIT_LENGTH else culprit[:MAX_CULPRIT_LENGTH - 3] + "..."


def updated_title(existing: str, incoming: str) -> str:
    """`event_manager._get_updated_group_title`: the incoming title, unless it is not a real one
    (empty or a placeholder) and the existing one is not a placeholder."""
    is_real = bool(incoming) and incoming not in PLACEHOLDER_EVENT_TITLES
    return incoming if is_real or existing in PLACEHOLDER_EVENT_TITLES else existing


def create_group(group_id: int, project_id: int, primary_hash: str, ev: PendingOccurrence, display: Display,
                 gtype: GroupType) -> Group:
    seen = ev.event_datetime
    return Group(group_id, project_id, primary_hash, ev.type, display.title, display.subtitle,
                 truncate_culprit(display.culprit), display.level, ev.priority, ev.priority, S.UNRESOLVED, Sub.NEW,
                 seen, seen, seen, 1, 1, substatus_since=ev.time, resolve_age_hours=ev.admission.resolve_age_hours,
                 visible=ev.admission.visible, platform=display.platform, assignee=display.assignee)


def update_group(group: Group, ev: PendingOccurrence, display: Display, gtype: GroupType) -> tuple[list[Row], bool]:
    """An occurrence on an existing group of its type: (activity rows, is_regression)."""
    seen = ev.event_datetime
    group.last_seen = max(group.last_seen, seen)
    group.first_seen = min(group.first_seen, seen)
    group.title = updated_title(group.title, display.title)
    group.subtitle, group.level = display.subtitle, display.level
    group.culprit = truncate_culprit(display.culprit)
    group.times_seen += 1
    group.version += 1
    group.initial_priority = ev.priority
    group.resolve_age_hours, group.visible = ev.admission.resolve_age_hours, ev.admission.visible
    rows: list[Row] = []
    is_regression = _regress(group, ev, gtype)
    if is_regression:  # no releases here, so Sentry's `version` is always ""
        rows.append(record(group, SET_REGRESSION, ev.time, {"event_id": ev.event_id, "version": ""}))
    rows += update_priority(group, ev.priority, ISSUE_PLATFORM, ev.time)
    return rows, is_regression


def _reports_resolved(group: Group, gtype: GroupType, now: float) -> bool:
    """`Group.get_status() == RESOLVED` at `now` (no snoozes here: IGNORED stays IGNORED); a group
    resolved once and unresolved since (`resolved_at` set) is not resolved by age."""
    if group.status == S.RESOLVED:
        return True
    age = group.resolve_age_hours * HOUR
    return (group.status == S.UNRESOLVED and gtype.enable_auto_resolve and age > 0
            and group.last_seen < now - age and group.resolved_at is None)


def _regress(group: Group, ev: PendingOccurrence, gtype: GroupType) -> bool:
    """`_handle_regression`, after `last_seen` took this event (as Sentry orders it)."""
    if not _reports_resolved(group, gtype, ev.time):
        return False
    date = group.last_seen  # max(event.datetime, last_seen)
    if group.active_at >= date - REGRESSION_GUARD_SECONDS:
        return False
    group.active_at = date
    group.set_status(S.UNRESOLVED, Sub.REGRESSED, ev.time)
    return True
