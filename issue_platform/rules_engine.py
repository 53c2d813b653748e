"""The event-time driver: applies one key's events, and the transitions due between them, to its state.

`RulesEngine` applies events to a `KeyState` (key_state.py) strictly in event-time order,
interleaving the time-driven transitions that fall due between them (lifecycle.py), and returns
output rows as `(table, row)` pairs. Per item it does what Sentry's consumer does: drop an id seen
within the dedupe window (`occurrence_consumer.process_occurrence_group` caches every item's id,
occurrences and status changes alike), then the occurrence ingest rules (ingest_rules.py) and, when
the occurrence is post-processed, the escalation check, or the status-change rules (status_rules.py).
The Beam stateful step and the plain-Python benchmark loop both drive it, so batch, streaming and the
benchmark do the same work.

Time-driven transitions never run past `as_of`: a finite input (a batch run, a replay) ends with
the watermark at +infinity, and the state must be what a live stream shows when its watermark
reaches `as_of`, not what it would show in the far future.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from issue_platform import ingest_rules, lifecycle, status_rules
from issue_platform import outcomes
from issue_platform.fingerprint import group_id_for, split_group_key
from issue_platform.key_state import Group, KeyState
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.noise import is_expired, should_create_group
from issue_platform.pending import Display, Pending, PendingOccurrence, PendingStatusChange
from issue_platform.tables import (GROUPS, OCCURRENCES, POST_PROCESS, STATUS_CHANGES, group_row, occurrence_row,
                                   post_process_row, status_change_row)

__all__ = ["DEFAULT_DEDUPE_WINDOW_SECONDS", "RulesEngine", "KeyState"]

# An id seen again within this much event time is a duplicate. Sentry keeps ids 300 s in
# processing time; ours is event time, so batch and streaming agree (see README).
DEFAULT_DEDUPE_WINDOW_SECONDS = 300.0
_MIN_IDS_TO_FORGET = 1024  # a flush forgets old ids once a key holds this many (see _is_duplicate)

Rows = list[tuple[str, dict]]


class RulesEngine:
    """Applies one key's events and due transitions, in event-time order, to its `KeyState`."""

    def __init__(self, key: str, state: KeyState, displays: Mapping[bytes, Display], types: GroupTypeRegistry,
                 dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS, as_of: float = math.inf,
                 version_floor: int = 0):
        """`version_floor`: a live job on a sink that holds an earlier job's groups passes the highest
        version there; a group created here starts above it, and a resumed group's next row too (its
        snapshot may be older than its last row: a job killed between the two writes), so a group's
        version never goes backwards across jobs."""
        self.key, self.state, self.displays, self.types = key, state, displays, types
        self.version_floor = version_floor
        if state.group is not None and state.group.version < version_floor:
            state.group.version = version_floor
        self.project_id, self.primary_hash = split_group_key(key)
        self.dedupe_window, self.as_of = dedupe_window, as_of
        self._version_at_start = state.group.version if state.group else 0
        self._forget_ids_at = _MIN_IDS_TO_FORGET

    def apply(self, event: Pending) -> Rows:
        """Transitions due at or before the event, then the event itself."""
        rows = self.advance_to(event.time)
        self.state.cursor = max(self.state.cursor, event.time)
        duplicate = self._is_duplicate(event)
        if isinstance(event, PendingOccurrence):
            return rows + self._occurrence(event, duplicate)
        return rows + self._status_change(event, duplicate)

    def advance_to(self, now: float) -> Rows:
        """Apply every time-driven transition due at or before `now` (and never after `as_of`)."""
        rows: Rows = []
        limit = min(now, self.as_of)
        while (due := self.next_transition()) is not None and due[0] <= limit:
            rows += lifecycle.apply_transition(self.state.group, *due)
        if is_expired(self.state.noise, limit):
            self.state.noise = None  # the next sighting would restart the count anyway
        return rows

    def next_transition(self) -> Optional[tuple[float, str]]:
        group = self.state.group
        return None if group is None else lifecycle.next_transition(group, self.types.get_by_type_id(group.type))

    def next_wakeup(self, as_of: Optional[float] = None) -> Optional[float]:
        """When this key next needs the clock (if ≤ `as_of`, by default the processor's): its next
        transition, its noise counter's expiry, or, for a key without a group, the moment its last
        recent id is forgotten (after which the key holds nothing at all)."""
        state = self.state
        times = [t for t in ((self.next_transition() or (None,))[0],
                             state.noise.expires_at if state.noise else None,
                             max(state.seen.values()) + self.id_retention if state.group is None and state.seen
                             else None) if t is not None]
        wake, as_of = min(times, default=None), self.as_of if as_of is None else as_of
        return wake if wake is not None and wake <= as_of else None

    @property
    def id_retention(self) -> float:
        """How long an id is kept behind the key's clock: twice the window, so that an event applied
        late (at most the allowed lateness, which never exceeds the window, behind the clock) still
        meets every id within the window of it."""
        return 2 * self.dedupe_window

    def finish(self, horizon: Optional[float] = None) -> Rows:
        """End of a flush at `horizon` (default: the latest event applied): due transitions, bounded
        state, and a snapshot row if the group changed."""
        now = self.state.cursor if horizon is None else max(horizon, self.state.cursor)
        rows = self.advance_to(now)
        self._forget_ids(now)
        group = self.state.group
        if group is not None:
            lifecycle.prune(group, self.state.cursor)
            if group.version != self._version_at_start:
                self._version_at_start = group.version
                rows.append((GROUPS, group_row(group)))
        return rows

    def _forget_ids(self, now: float) -> None:
        """Forget the ids more than `id_retention` behind `now` (never past `as_of`)."""
        forget_before = min(now, self.as_of) - self.id_retention
        self.state.seen = {i: t for i, t in self.state.seen.items() if t > forget_before}
        self._forget_ids_at = max(2 * len(self.state.seen), _MIN_IDS_TO_FORGET)

    def _is_duplicate(self, event: Pending) -> bool:
        """Seen within the window (a duplicate does not refresh the id, as in Sentry's cache).

        Ids are also forgotten during a flush, each time they have doubled since the last time: a hot
        key's flush in a batch run applies days of events in one pass, and would otherwise hold every
        id until `finish`. Events are applied in time order (the cursor never moves back), so an id
        forgotten here is more than twice the window behind every event still to come: no decision
        changes, and `finish` forgets the rest as before."""
        seen = self.state.seen
        previous = seen.get(event.id)
        if previous is not None and abs(event.time - previous) <= self.dedupe_window:
            return True
        seen[event.id] = event.time
        if len(seen) >= self._forget_ids_at:
            self._forget_ids(self.state.cursor)
        return False

    # ---- occurrences ---------------------------------------------------------------------------

    def _occurrence(self, ev: PendingOccurrence, duplicate: bool) -> Rows:
        state, display = self.state, self.displays[ev.display]
        group, rows, is_new, is_regression = state.group, [], False, False
        if duplicate:
            outcome = outcomes.DUPLICATE
        elif group is None:
            gtype = self.types.get_by_type_id(ev.type)
            create, state.noise = should_create_group(state.noise, ev.time, gtype.noise_config)
            if create:
                group = state.group = ingest_rules.create_group(
                    group_id_for(self.key), self.project_id, self.primary_hash, ev, display, gtype)
                group.version += self.version_floor
                is_new = True
            outcome = outcomes.GROUPED if create else outcomes.NOISE_SUPPRESSED
        elif group.type != ev.type:
            outcome = outcomes.TYPE_MISMATCH
        else:
            gtype = self.types.get_by_type_id(group.type)
            rows, is_regression = ingest_rules.update_group(group, ev, display, gtype)
            outcome = outcomes.GROUPED
        rows.insert(0, (OCCURRENCES, self._occurrence_row(ev, display, outcome)))
        if outcome == outcomes.GROUPED:
            rows += self._after_grouping(group, ev, display, is_new, is_regression)
        return rows

    def _after_grouping(self, group: Group, ev: PendingOccurrence, display: Display, is_new: bool,
                        is_regression: bool) -> Rows:
        """Hourly counts and environments (what Snuba and GroupEnvironment record), then post-processing:
        the escalation check runs only where post-processing does (`process_snoozes`)."""
        gtype, rows = self.types.get_by_type_id(group.type), []
        if gtype.enable_escalation_detection:
            group.hourly.add(ev.event_datetime)
        is_new_env = display.environment not in group.environments
        if is_new_env:
            group.environments.append(display.environment)
        if not ev.admission.post_process:
            return rows
        if not is_new:  # has_reappeared
            rows += lifecycle.check_escalation(group, gtype, ev.time, ev.event_id)
        rows.append((POST_PROCESS, post_process_row(
            group_id=group.group_id, occurrence_id=ev.id, project_id=self.project_id, event_id=ev.event_id,
            primary_hash=self.primary_hash, group_type=group.type, is_new=is_new, is_regression=is_regression,
            is_new_group_environment=is_new_env)))
        return rows

    def _occurrence_row(self, ev: PendingOccurrence, display: Display, outcome: str) -> dict:
        grouped = outcome == outcomes.GROUPED
        return occurrence_row(
            occurrence_id=ev.id, project_id=self.project_id, fingerprint=(self.primary_hash, *ev.extra_fingerprint),
            type_id=ev.type, event_id=ev.event_id, display=display, priority=ev.priority,
            resource_id=ev.resource_id, detection_time=ev.time,
            group_id=self.state.group.group_id if grouped else None, outcome=outcome)

    # ---- status changes ------------------------------------------------------------------------

    def _status_change(self, ev: PendingStatusChange, duplicate: bool) -> Rows:
        group = self.state.group
        if duplicate:
            outcome, reason = status_rules.DUPLICATE, None
        else:
            outcome, reason = status_rules.check(group, ev.new_status, ev.new_substatus, ev.activity_type)
        rows = status_rules.apply(group, ev) if outcome in status_rules.EFFECTIVE else []
        return [(STATUS_CHANGES, status_change_row(
            status_change_id=ev.id, project_id=self.project_id, fingerprint=self.primary_hash,
            group_id=group.group_id if group else None, new_status=ev.new_status, new_substatus=ev.new_substatus,
            outcome=outcome, reason=reason, timestamp=ev.time))] + rows
