"""Group state per key and the rules that apply events and time to it (plain Python).

A key is `(project_id, md5(fingerprint[0]))`. `KeyState` is everything we remember for it: the
group (once created), the noise counter (until then) and recently seen occurrence ids.
`GroupProcessor` applies events to a `KeyState` strictly in event-time order, interleaving the
time-driven transitions that fall due between them (auto-resolve, back to ongoing, daily
forecasts), and returns output rows as `(table, row)` pairs. The Beam stateful step and the
plain-Python benchmark loop both drive it, so batch, streaming and the benchmark do the same work.

Time-driven transitions never run past `as_of`: a finite input (a batch run, a replay) ends with
the watermark at +infinity, and the state must be what a live stream shows when its watermark
reaches `as_of`, not what it would show in the far future.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

import orjson

from issue_platform import escalation as esc
from issue_platform import outcomes as O
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.fingerprint import group_id_for, split_group_key
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.noise import NoiseCounter, is_expired, should_create_group
from issue_platform.pending import Display, Pending, PendingOccurrence, PendingStatusChange
from issue_platform.tables import (ACTIVITY, GROUPS, OCCURRENCES, POST_PROCESS, STATUS_CHANGES, activity_row, group_row,
                                   occurrence_row, post_process_row, status_change_row)

# An occurrence id seen again within this much event time is a duplicate. Sentry keeps ids 300 s
# in processing time; ours is event time, so batch and streaming agree (see README).
DEFAULT_DEDUPE_WINDOW_SECONDS = 300.0
HOUR, DAY = 3600.0, 86400.0
TRANSITION_AFTER_SECONDS = 7 * DAY  # Sentry's auto_ongoing_issues TRANSITION_AFTER_DAYS

# Status-change outcomes.
APPLIED, NO_OP, GROUP_NOT_FOUND = "applied", "no_op", "group_not_found"
INVALID_TRANSITION, UNSUPPORTED_STATUS = "invalid_transition", "unsupported_status"
_IGNORED_SUBSTATUSES = {Sub.UNTIL_ESCALATING, Sub.UNTIL_CONDITION_MET, Sub.FOREVER}

# Activity types (Sentry's ActivityType names, lower case).
SET_RESOLVED, SET_IGNORED, SET_UNRESOLVED = "set_resolved", "set_ignored", "set_unresolved"
SET_REGRESSION, SET_ESCALATING, SET_RESOLVED_BY_AGE = "set_regression", "set_escalating", "set_resolved_by_age"
AUTO_SET_ONGOING, SET_PRIORITY = "auto_set_ongoing", "set_priority"

# Time-driven transitions, in the order they apply when due at the same instant.
_AUTO_RESOLVE, _FORECAST, _ONGOING = "auto_resolve", "forecast", "ongoing"


def _next_utc_midnight(ts: float) -> float:
    return (math.floor(ts / DAY) + 1) * DAY


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
    substatus_since: float = 0.0  # when the group entered its current substatus
    resolve_age_hours: int = 0  # the project's setting, as of the latest event
    visible: bool = True
    priority_before_escalation: Optional[int] = None
    hourly: esc.HourlyCounts = field(default_factory=esc.HourlyCounts)  # grouped occurrences per clock hour
    forecast: Optional[dict] = None  # escalation.Forecast.to_json(), while archived until escalating
    forecast_checked_at: float = 0.0  # the last daily forecast run (or archive time)


@dataclass
class KeyState:
    group: Optional[Group] = None
    noise: Optional[NoiseCounter] = None
    seen: dict = field(default_factory=dict)  # occurrence id (hex) -> detection_time
    cursor: float = float("-inf")  # latest event time applied

    def encode(self) -> bytes:
        group = None
        if self.group is not None:
            group = asdict(self.group)
            group["hourly"] = self.group.hourly.to_json()
        return orjson.dumps({"group": group,
                             "noise": tuple(self.noise) if self.noise else None, "seen": self.seen,
                             "cursor": None if self.cursor == float("-inf") else self.cursor})

    @classmethod
    def decode(cls, data: Optional[bytes]) -> "KeyState":
        if not data:
            return cls()
        raw = orjson.loads(data)
        group = raw["group"]
        if group is not None:
            group["hourly"] = esc.HourlyCounts.from_json(group["hourly"])
        return cls(Group(**group) if group else None,
                   NoiseCounter(*raw["noise"]) if raw["noise"] else None, raw["seen"],
                   float("-inf") if raw["cursor"] is None else raw["cursor"])

    def is_empty(self) -> bool:
        return self.group is None and self.noise is None and not self.seen


class GroupProcessor:
    """Applies one key's events and due transitions, in event-time order, to its `KeyState`."""

    def __init__(self, key: str, state: KeyState, displays: Mapping[bytes, Display], types: GroupTypeRegistry,
                 dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS, as_of: float = math.inf):
        self.key, self.state, self.displays, self.types = key, state, displays, types
        self.project_id, self.primary_hash = split_group_key(key)
        self.dedupe_window, self.as_of = dedupe_window, as_of
        self._version_at_start = state.group.version if state.group else 0

    # ---- driving -------------------------------------------------------------------------------

    def apply(self, event: Pending) -> list[tuple[str, dict]]:
        """Transitions due at or before the event, then the event itself."""
        rows = self.advance_to(event.time)
        self.state.cursor = max(self.state.cursor, event.time)
        if isinstance(event, PendingOccurrence):
            rows += self._occurrence(event)
        else:
            rows += self._status_change(event)
        return rows

    def advance_to(self, now: float) -> list[tuple[str, dict]]:
        """Apply every time-driven transition due at or before `now` (and never after `as_of`)."""
        rows: list[tuple[str, dict]] = []
        limit = min(now, self.as_of)
        while (due := self.next_transition()) is not None and due[0] <= limit:
            rows += self._transition_at(*due)
        if is_expired(self.state.noise, limit):
            self.state.noise = None  # the next sighting would restart the count anyway
        return rows

    def next_wakeup(self) -> Optional[float]:
        """When this key next needs the clock: its next transition or noise expiry (if ≤ as_of)."""
        times = [t for t in ((self.next_transition() or (None,))[0],
                             self.state.noise.expires_at if self.state.noise else None) if t is not None]
        wake = min(times, default=None)
        return wake if wake is not None and wake <= self.as_of else None

    def finish(self, horizon: Optional[float] = None) -> list[tuple[str, dict]]:
        """End of a flush at `horizon` (default: the latest event applied): due transitions, bounded
        state, and a snapshot row if the group changed."""
        rows = self.advance_to(self.state.cursor if horizon is None else horizon)
        window_start = self.state.cursor - self.dedupe_window
        self.state.seen = {i: t for i, t in self.state.seen.items() if t >= window_start}
        group = self.state.group
        if group is not None and group.hourly:
            group.hourly.prune(max(self.state.cursor, group.last_seen))
        if group is not None and group.version != self._version_at_start:
            self._version_at_start = group.version
            rows.append((GROUPS, group_row(group)))
        return rows

    # ---- time-driven transitions ---------------------------------------------------------------

    def next_transition(self) -> Optional[tuple[float, str]]:
        group = self.state.group
        if group is None:
            return None
        gtype = self.types.get_by_type_id(group.type)
        due = []
        if group.status == S.UNRESOLVED:
            if group.substatus in (Sub.NEW, Sub.REGRESSED, Sub.ESCALATING):
                due.append((group.substatus_since + TRANSITION_AFTER_SECONDS, _ONGOING))
            if gtype.enable_auto_resolve and group.resolve_age_hours > 0:
                due.append((group.last_seen + group.resolve_age_hours * HOUR, _AUTO_RESOLVE))
        elif self._archived_until_escalating(group, gtype):
            # Sentry's daily forecast job covers such groups seen in the last 7 days.
            midnight = _next_utc_midnight(group.forecast_checked_at)
            if midnight <= group.last_seen + 7 * DAY:
                due.append((midnight, _FORECAST))
        return min(due) if due else None

    def _transition_at(self, when: float, kind: str) -> list[tuple[str, dict]]:
        group = self.state.group
        if kind == _FORECAST:
            group.forecast_checked_at = when
            forecast = esc.forecast_for(group.hourly, when)
            group.forecast = forecast.to_json() if forecast else None
            return []
        if kind == _AUTO_RESOLVE:
            self._set_status(group, S.RESOLVED, None, when)
            return [self._activity(SET_RESOLVED_BY_AGE, when, {"age": group.resolve_age_hours})]
        rows = []
        if group.substatus == Sub.ESCALATING:
            rows += self._restore_priority(group, when)
        self._set_status(group, S.UNRESOLVED, Sub.ONGOING, when)
        return [self._activity(AUTO_SET_ONGOING, when, {"after_days": 7})] + rows

    # ---- occurrences ---------------------------------------------------------------------------

    def _occurrence(self, ev: PendingOccurrence) -> list[tuple[str, dict]]:
        state = self.state
        display = self.displays[ev.display]
        previous = state.seen.get(ev.id)
        is_new = is_regression = False
        rows: list[tuple[str, dict]] = []
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
                        ev.time, ev.time, 1, 1, substatus_since=ev.time)
                    is_new = True
                outcome = O.GROUPED if create else O.NOISE_SUPPRESSED
            elif group.type != ev.type:
                outcome = O.TYPE_MISMATCH
            else:
                is_regression = self._is_regression(group, ev.time)
                rows += self._update(group, ev, display)
                outcome = O.GROUPED
        rows.insert(0, (OCCURRENCES, self._occurrence_row(ev, display, outcome)))
        if outcome == O.GROUPED:
            rows += self._after_grouping(ev, display, is_new, is_regression)
        return rows

    def _is_regression(self, group: Group, now: float) -> bool:
        """Sentry's `_handle_regression`: RESOLVED groups regress, and so do UNRESOLVED ones past the
        project's resolve age (`Group.get_status()` reports them resolved); IGNORED ones never."""
        if group.status == S.RESOLVED:
            return True
        age = group.resolve_age_hours * HOUR
        return group.status == S.UNRESOLVED and age > 0 and now - group.last_seen > age

    def _update(self, group: Group, ev: PendingOccurrence, display: Display) -> list[tuple[str, dict]]:
        """Sentry's `_process_existing_aggregate`: display fields follow the latest occurrence."""
        if ev.time >= group.last_seen:
            group.last_seen = ev.time
            group.title, group.subtitle, group.culprit, group.level = display[:4]
        group.first_seen = min(group.first_seen, ev.time)
        group.times_seen += 1
        group.version += 1
        if ev.priority is not None and ev.priority != group.priority:  # Sentry PR #90125
            group.priority = ev.priority
            return [self._activity(SET_PRIORITY, ev.time, {"priority": ev.priority, "reason": "issue_platform"})]
        return []

    def _after_grouping(self, ev: PendingOccurrence, display: Display, is_new: bool,
                        is_regression: bool) -> list[tuple[str, dict]]:
        group, rows = self.state.group, []
        group.resolve_age_hours = ev.admission.resolve_age_hours
        group.visible = ev.admission.visible
        gtype = self.types.get_by_type_id(group.type)
        if gtype.enable_escalation_detection:
            group.hourly.add(ev.time)
        if is_regression:
            self._set_status(group, S.UNRESOLVED, Sub.REGRESSED, ev.time)
            rows.append(self._activity(SET_REGRESSION, ev.time, {"event_id": ev.event_id}))
        elif self._archived_until_escalating(group, gtype):
            group.forecast_checked_at = max(group.forecast_checked_at, ev.time)
            rows += self._check_escalation(group, ev)
        is_new_env = display.environment not in group.environments
        if is_new_env:
            group.environments.append(display.environment)
        if ev.admission.post_process:
            rows.append((POST_PROCESS, post_process_row(
                group_id=group.group_id, occurrence_id=ev.id, project_id=self.project_id, event_id=ev.event_id,
                primary_hash=self.primary_hash, group_type=group.type, is_new=is_new, is_regression=is_regression,
                is_new_group_environment=is_new_env)))
        return rows

    def _check_escalation(self, group: Group, ev: PendingOccurrence) -> list[tuple[str, dict]]:
        """Sentry's `process_snoozes` for IGNORED/UNTIL_ESCALATING groups at least 24 h old."""
        if esc.uses_new_escalation_logic(group.first_seen, ev.time):
            return []
        forecast = esc.Forecast.from_json(group.forecast) if group.forecast else esc.default_forecast(ev.time)
        today = forecast.todays(ev.time)
        hourly = group.hourly.in_current_hour(ev.time)
        if not esc.is_escalating(hourly, today):
            return []
        return self._escalate(group, ev.time, {"event_id": ev.event_id, "forecast": today})

    def _escalate(self, group: Group, when: float, data: dict) -> list[tuple[str, dict]]:
        """`manage_issue_states(ESCALATING)`: only from IGNORED; bumps the priority."""
        self._set_status(group, S.UNRESOLVED, Sub.ESCALATING, when)
        rows = [self._activity(SET_ESCALATING, when, data)]
        bumped = esc.escalated_priority(group.priority)
        group.priority_before_escalation = group.priority
        if bumped != group.priority:
            group.priority = bumped
            rows.append(self._activity(SET_PRIORITY, when, {"priority": bumped, "reason": "escalating"}))
        return rows

    def _restore_priority(self, group: Group, when: float) -> list[tuple[str, dict]]:
        previous, group.priority_before_escalation = group.priority_before_escalation, None
        if previous is None or previous == group.priority:
            return []
        group.priority = previous
        return [self._activity(SET_PRIORITY, when, {"priority": previous, "reason": "ongoing"})]

    def _occurrence_row(self, ev: PendingOccurrence, display: Display, outcome: str) -> dict:
        grouped = outcome == O.GROUPED
        return occurrence_row(
            occurrence_id=ev.id, project_id=self.project_id, fingerprint=(self.primary_hash, *ev.extra_fingerprint),
            type_id=ev.type, event_id=ev.event_id, display=display,
            priority=ev.priority if ev.priority is not None else ev.initial_priority, resource_id=ev.resource_id,
            detection_time=ev.time, group_id=self.state.group.group_id if grouped else None, outcome=outcome)

    # ---- status changes ------------------------------------------------------------------------

    def _status_change(self, ev: PendingStatusChange) -> list[tuple[str, dict]]:
        group = self.state.group
        outcome, reason = self._transition(group, ev.new_status, ev.new_substatus)
        rows: list[tuple[str, dict]] = []
        if outcome == APPLIED:
            group.resolve_age_hours = ev.resolve_age_hours
            rows = self._apply_status(group, ev)
        return [(STATUS_CHANGES, status_change_row(
            status_change_id=ev.id, project_id=self.project_id, fingerprint=self.primary_hash,
            group_id=group.group_id if group else None, new_status=ev.new_status, new_substatus=ev.new_substatus,
            outcome=outcome, reason=reason, timestamp=ev.time))] + rows

    def _apply_status(self, group: Group, ev: PendingStatusChange) -> list[tuple[str, dict]]:
        """The effects of an accepted status change (Sentry's `update_status`)."""
        extra = dict(ev.activity_data or {})
        when, substatus = ev.time, ev.new_substatus
        if ev.new_status == S.RESOLVED:
            self._set_status(group, S.RESOLVED, None, when)
            return [self._activity(SET_RESOLVED, when, extra)]
        if ev.new_status == S.IGNORED:
            self._set_status(group, S.IGNORED, substatus, when)
            if substatus == Sub.UNTIL_ESCALATING and self.types.get_by_type_id(group.type).enable_escalation_detection:
                group.forecast_checked_at = when  # handle_archived_until_escalating: forecast now
                forecast = esc.forecast_for(group.hourly, when)
                group.forecast = forecast.to_json() if forecast else None
            return [self._activity(SET_IGNORED, when, {"substatus": substatus, **extra})]
        if substatus == Sub.ESCALATING:
            return self._escalate(group, when, extra)
        if substatus == Sub.REGRESSED:
            self._set_status(group, S.UNRESOLVED, Sub.REGRESSED, when)
            return [self._activity(SET_REGRESSION, when, extra)]
        was_escalating = group.substatus == Sub.ESCALATING
        rows = self._restore_priority(group, when) if was_escalating else []
        self._set_status(group, S.UNRESOLVED, Sub.ONGOING, when)
        return [self._activity(AUTO_SET_ONGOING if was_escalating else SET_UNRESOLVED, when, extra)] + rows

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

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _archived_until_escalating(group: Group, gtype) -> bool:
        return (group.status == S.IGNORED and group.substatus == Sub.UNTIL_ESCALATING
                and gtype.enable_escalation_detection)

    @staticmethod
    def _set_status(group: Group, status: int, substatus: Optional[int], when: float) -> None:
        group.status, group.substatus, group.substatus_since = status, substatus, when
        if status != S.IGNORED:
            group.forecast = None
        group.version += 1

    def _activity(self, kind: str, when: float, data: dict) -> tuple[str, dict]:
        return ACTIVITY, activity_row(group_id=self.state.group.group_id, project_id=self.project_id, kind=kind,
                                      timestamp=when, data=data)
