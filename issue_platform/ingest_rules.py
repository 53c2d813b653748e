"""Occurrence ingest rules: Sentry's `save_issue_from_occurrence` for a key's group (plain Python).

* A new group (`_create_issue_kwargs`, `_create_group`): UNRESOLVED/NEW; priority = the occurrence's
  `priority` (`initial_issue_priority` is its older name) or the type's default; `first_seen`,
  `last_seen` and `active_at` = the embedded event's timestamp; culprit cut to 200 characters.
* An existing group (`_process_existing_aggregate`, then `update_priority`): `last_seen` never moves
  back, `first_seen` moves earlier for an older event; title, subtitle, culprit and level follow the
  occurrence; the priority follows every occurrence (`priority or default`, reason
  `issue_platform`); `initial_priority` (Sentry's `metadata.initial_priority`) becomes the
  occurrence's own priority, which is what leaving ESCALATING restores.
* Regression (`_handle_regression`): a group `Group.get_status()` reports RESOLVED (RESOLVED, or
  UNRESOLVED with `last_seen` past the resolve age for types with `enable_auto_resolve`) regresses
  unless its `active_at` is within 5 s of the event; the occurrence counts either way.
"""
from __future__ import annotations

from issue_platform.activity import ISSUE_PLATFORM, SET_REGRESSION, Row, record, update_priority
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.key_state import Group
from issue_platform.grouptype import GroupType
from issue_platform.pending import Display, PendingOccurrence

MAX_CULPRIT_LENGTH = 200  # sentry.constants
REGRESSION_GUARD_SECONDS = 5.0  # `_handle_regression` skips groups active this recently
HOUR = 3600.0


def truncate_culprit(culprit: str) -> str:
    """`truncatechars(culprit, MAX_CULPRIT_LENGTH)`: longer values keep 197 characters and "..."."""
    return culprit if len(culprit) <= MAX_CULPRIT_LENGTH else culprit[:MAX_CULPRIT_LENGTH - 3] + "..."


def occurrence_priority(ev: PendingOccurrence):
    return ev.priority if ev.priority is not None else ev.initial_priority


def _priority(ev: PendingOccurrence, gtype: GroupType) -> int:
    return occurrence_priority(ev) or int(gtype.default_priority)


def create_group(group_id: int, project_id: int, primary_hash: str, ev: PendingOccurrence, display: Display,
                 gtype: GroupType) -> Group:
    seen, priority = ev.event_datetime, _priority(ev, gtype)
    return Group(group_id, project_id, primary_hash, ev.type, display.title, display.subtitle,
                 truncate_culprit(display.culprit), display.level, priority, priority, S.UNRESOLVED, Sub.NEW,
                 seen, seen, seen, 1, 1, substatus_since=ev.time, resolve_age_hours=ev.admission.resolve_age_hours,
                 visible=ev.admission.visible)


def update_group(group: Group, ev: PendingOccurrence, display: Display, gtype: GroupType) -> tuple[list[Row], bool]:
    """An occurrence on an existing group of its type: (activity rows, is_regression)."""
    seen = ev.event_datetime
    group.last_seen = max(group.last_seen, seen)
    group.first_seen = min(group.first_seen, seen)
    group.title, group.subtitle, group.level = display.title, display.subtitle, display.level
    group.culprit = truncate_culprit(display.culprit)
    group.times_seen += 1
    group.version += 1
    group.initial_priority = occurrence_priority(ev)
    group.resolve_age_hours, group.visible = ev.admission.resolve_age_hours, ev.admission.visible
    rows: list[Row] = []
    is_regression = _regress(group, ev, gtype)
    if is_regression:  # no releases here, so Sentry's `version` is always ""
        rows.append(record(group, SET_REGRESSION, ev.time, {"event_id": ev.event_id, "version": ""}))
    rows += update_priority(group, _priority(ev, gtype), ISSUE_PLATFORM, ev.time)
    return rows, is_regression


def _reports_resolved(group: Group, gtype: GroupType, now: float) -> bool:
    """`Group.get_status() == RESOLVED` at `now` (no snoozes here: IGNORED stays IGNORED)."""
    if group.status == S.RESOLVED:
        return True
    age = group.resolve_age_hours * HOUR
    return (group.status == S.UNRESOLVED and gtype.enable_auto_resolve and age > 0
            and group.last_seen < now - age)


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
