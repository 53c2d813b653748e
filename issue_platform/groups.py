"""Group state per key and the rules that apply one event to it (plain Python).

A key is `(project_id, md5(fingerprint[0]))`. `KeyState` is everything we remember for it: the
group (once created), the noise counter (until then) and recently seen occurrence ids.
`GroupProcessor` applies events to a `KeyState` strictly in event-time order and returns output
rows as `(table, row)` pairs; the Beam stateful step and the plain-Python benchmark loop both
drive it, so they do the same work by construction.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Mapping, Optional

import orjson

from issue_platform import outcomes as O
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.fingerprint import group_id_for, split_group_key
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.noise import NoiseCounter, should_create_group
from issue_platform.pending import Display, Pending, PendingOccurrence, PendingStatusChange

# Tables (output names).
GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS = "groups", "occurrences", "status_changes", "post_process"

# An occurrence id seen again within this much event time is a duplicate. Sentry keeps ids 300 s
# in processing time; ours is event time, so batch and streaming agree (see README).
DEFAULT_DEDUPE_WINDOW_SECONDS = 300.0

# Status-change outcomes.
APPLIED, NO_OP, GROUP_NOT_FOUND = "applied", "no_op", "group_not_found"
INVALID_TRANSITION, UNSUPPORTED_STATUS = "invalid_transition", "unsupported_status"
_IGNORED_SUBSTATUSES = {Sub.UNTIL_ESCALATING, Sub.UNTIL_CONDITION_MET, Sub.FOREVER}


def iso(ts: float) -> str:
    """Event time as an RFC 3339 UTC string (BigQuery TIMESTAMP-compatible)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Group:
    group_id: int
    project_id: int
    primary_hash: str
    type: int
    title: str
    subtitle: str
    culprit: str
    level: str
    priority: int
    status: int
    substatus: Optional[int]
    first_seen: float
    last_seen: float
    times_seen: int
    version: int
    environments: list = field(default_factory=list)

    def row(self) -> dict:
        return {
            "group_id": self.group_id, "project_id": self.project_id, "type": self.type,
            "fingerprint": self.primary_hash, "title": self.title, "subtitle": self.subtitle,
            "culprit": self.culprit, "level": self.level, "priority": self.priority,
            "status": self.status, "substatus": self.substatus, "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen), "times_seen": self.times_seen, "version": self.version,
        }


@dataclass
class KeyState:
    group: Optional[Group] = None
    noise: Optional[NoiseCounter] = None
    seen: dict = field(default_factory=dict)  # occurrence id (hex) -> detection_time
    cursor: float = float("-inf")  # latest event time applied

    def encode(self) -> bytes:
        return orjson.dumps({"group": asdict(self.group) if self.group else None,
                             "noise": tuple(self.noise) if self.noise else None, "seen": self.seen,
                             "cursor": None if self.cursor == float("-inf") else self.cursor})

    @classmethod
    def decode(cls, data: Optional[bytes]) -> "KeyState":
        if not data:
            return cls()
        raw = orjson.loads(data)
        return cls(Group(**raw["group"]) if raw["group"] else None,
                   NoiseCounter(*raw["noise"]) if raw["noise"] else None, raw["seen"],
                   float("-inf") if raw["cursor"] is None else raw["cursor"])


def occurrence_row(*, occurrence_id: str, project_id: int, fingerprint: Iterable[str], type_id: int,
                   event_id: str, display: Display, priority: Optional[int], resource_id: Optional[str],
                   detection_time: float, group_id: Optional[int], outcome: str) -> dict:
    """One row of the occurrences table (evidence and the event go to the evidence table)."""
    return {
        "occurrence_id": occurrence_id, "project_id": project_id, "group_id": group_id, "outcome": outcome,
        "type": type_id, "fingerprint": list(fingerprint), "event_id": event_id,
        "issue_title": display.title, "subtitle": display.subtitle, "culprit": display.culprit,
        "level": display.level, "environment": display.environment, "priority": priority,
        "resource_id": resource_id, "detection_time": iso(detection_time),
    }


class GroupProcessor:
    """Applies one key's events, in event-time order, to its `KeyState`."""

    def __init__(self, key: str, state: KeyState, displays: Mapping[bytes, Display], types: GroupTypeRegistry,
                 dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS):
        self.key, self.state, self.displays, self.types = key, state, displays, types
        self.project_id, self.primary_hash = split_group_key(key)
        self.dedupe_window = dedupe_window
        self._version_at_start = state.group.version if state.group else 0

    def apply(self, event: Pending) -> list[tuple[str, dict]]:
        self.state.cursor = max(self.state.cursor, event.time)
        if isinstance(event, PendingOccurrence):
            return self._occurrence(event)
        return [self._status_change(event)]

    def finish(self) -> list[tuple[str, dict]]:
        """End of a flush: forget ids older than the window; a snapshot row if the group changed."""
        horizon = self.state.cursor - self.dedupe_window
        self.state.seen = {i: t for i, t in self.state.seen.items() if t >= horizon}
        group = self.state.group
        if group is None or group.version == self._version_at_start:
            return []
        self._version_at_start = group.version
        return [(GROUPS, group.row())]

    def _occurrence(self, ev: PendingOccurrence) -> list[tuple[str, dict]]:
        state = self.state
        display = self.displays[ev.display]
        previous = state.seen.get(ev.id)
        is_new = is_new_env = is_regression = False
        if previous is not None and abs(ev.time - previous) <= self.dedupe_window:
            outcome = O.DUPLICATE
        else:
            state.seen[ev.id] = ev.time
            group = state.group
            if group is None:
                gtype = self.types.get_by_type_id(ev.type)
                create, state.noise = should_create_group(state.noise, ev.time, gtype.noise_config)
                if create:
                    priority = ev.priority or ev.initial_priority or int(gtype.default_priority)
                    state.group = Group(
                        group_id_for(self.key), self.project_id, self.primary_hash, ev.type, display.title,
                        display.subtitle, display.culprit, display.level, priority, S.UNRESOLVED, Sub.NEW,
                        ev.time, ev.time, 1, 1)
                    is_new = True
                outcome = O.GROUPED if create else O.NOISE_SUPPRESSED
            elif group.type != ev.type:
                outcome = O.TYPE_MISMATCH
            else:
                self._update(group, ev, display)
                is_regression = group.status == S.RESOLVED
                if is_regression:  # Sentry's _handle_regression; IGNORED groups never regress
                    group.status, group.substatus = S.UNRESOLVED, Sub.REGRESSED
                outcome = O.GROUPED
        rows = [(OCCURRENCES, self._occurrence_row(ev, display, outcome))]
        if outcome == O.GROUPED:
            group = state.group
            if display.environment not in group.environments:
                group.environments.append(display.environment)
                is_new_env = True
            rows.append((POST_PROCESS, {
                "group_id": group.group_id, "occurrence_id": ev.id, "project_id": self.project_id,
                "event_id": ev.event_id, "primary_hash": self.primary_hash, "group_type": group.type,
                "is_new": is_new, "is_regression": is_regression, "is_new_group_environment": is_new_env,
            }))
        return rows

    @staticmethod
    def _update(group: Group, ev: PendingOccurrence, display: Display) -> None:
        """Sentry's `_process_existing_aggregate`: display fields follow the latest occurrence."""
        if ev.time >= group.last_seen:
            group.last_seen = ev.time
            group.title, group.subtitle, group.culprit, group.level = display[:4]
        group.first_seen = min(group.first_seen, ev.time)
        group.times_seen += 1
        if ev.priority is not None:
            group.priority = ev.priority
        group.version += 1

    def _occurrence_row(self, ev: PendingOccurrence, display: Display, outcome: str) -> dict:
        grouped = outcome == O.GROUPED
        return occurrence_row(
            occurrence_id=ev.id, project_id=self.project_id, fingerprint=(self.primary_hash, *ev.extra_fingerprint),
            type_id=ev.type, event_id=ev.event_id, display=display,
            priority=ev.priority if ev.priority is not None else ev.initial_priority, resource_id=ev.resource_id,
            detection_time=ev.time, group_id=self.state.group.group_id if grouped else None, outcome=outcome)

    def _status_change(self, ev: PendingStatusChange) -> tuple[str, dict]:
        group = self.state.group
        outcome, reason = self._transition(group, ev.new_status, ev.new_substatus)
        if outcome == APPLIED:
            group.status, group.substatus = ev.new_status, ev.new_substatus
            group.version += 1
        return STATUS_CHANGES, {
            "status_change_id": ev.id, "project_id": self.project_id, "fingerprint": self.primary_hash,
            "group_id": group.group_id if group else None, "new_status": ev.new_status,
            "new_substatus": ev.new_substatus, "outcome": outcome, "reason": reason, "timestamp": iso(ev.time),
        }

    @staticmethod
    def _transition(group: Optional[Group], status: int, substatus: Optional[int]) -> tuple[str, Optional[str]]:
        """Sentry's status-change consumer rules (reference §6.5)."""
        if group is None:
            return GROUP_NOT_FOUND, None
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
        if substatus == Sub.ESCALATING:
            return (APPLIED, None) if group.status == S.IGNORED else (INVALID_TRANSITION, "not_ignored")
        if substatus in (Sub.REGRESSED, Sub.ONGOING):
            return APPLIED, None
        return INVALID_TRANSITION, "invalid_substatus"
