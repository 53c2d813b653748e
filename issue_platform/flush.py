"""The per-key flush: what the stateful step does with one key's buffered events (plain Python).

Events wait in a key's buffer until the watermark passes them; a flush then sorts them and applies
them, with the time-driven transitions due in between, through the `RulesEngine`, keeps what must
still wait, snapshots the key's state and says when to wake it next. `Flusher` holds that logic once;
the streaming and the batch Beam steps (`transforms.apply_rules`) both call it, each through its own
`KeyCells`: the streaming step's Beam state cells and FLUSH timer, or a batch key's records
(`HeldRecords`: a batch key is flushed once, at the end of input, and keeps nothing). Timeline for one
key (streaming):

    take     t=10:00:05  buffer it; wake at 10:00:06 (the next whole second)
    take     t=10:00:02  buffer it; wake earlier, at 10:00:03
    watermark 10:00:04 -> flush(10:00:03): apply 10:00:02; 10:00:05 waits; wake at 10:00:06 (after a
                          flush, at the last waiting event within a minute of the first and behind
                          the wall clock: a backlog drains a minute of event time per round)
    watermark 10:00:07 -> flush(10:00:06): apply 10:00:05; the group is NEW, so wake at its next
                          transition (auto-resolve at last_seen + resolve_age, or back to ongoing 7
                          days after it was created)
    watermark passes that transition -> flush: apply it (never beyond `as_of`)
    take     t=10:00:01, now behind the key's flushed time 10:00:06: late. Within the allowed lateness
             it is applied at once (out of order); beyond it, dead-lettered as `late`
    end of input (horizon +inf) -> the final flush: apply what is still buffered, and transitions up to
             `as_of`; snapshot the key's state (for a later job's --resume_from) and keep nothing

A resumed key's first buffered record is a seed (issue_platform.snapshot_codec): the first flush adopts
it as the key's state before applying anything; events at or before the snapshot's clock are then late.
"""
from __future__ import annotations

import bisect
import logging
import math
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Protocol

import orjson

from issue_platform import outcomes
from issue_platform.dead_letters import internal_error_row, late_row
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.key_state import KeyState
from issue_platform.pending import (Display, PendingOccurrence, decode, display_record, is_display_record,
                                    record_display_digest, record_time, sort_records, split_display_record,
                                    unbatched)
from issue_platform.rules_engine import DEFAULT_DEDUPE_WINDOW_SECONDS, RulesEngine
from issue_platform.snapshot_codec import is_seed_record, newer_seed, snapshot_row, split_seed_record
from issue_platform.tables import DEAD_LETTER, STATE, iso

DEFAULT_ALLOWED_LATENESS_SECONDS = 600.0
CATCH_UP_SECONDS = 60.0  # how much event time one flush round may take in at most (Flusher._next_round)
REPLAY_FLUSH_SECONDS = 3600.0  # the flush rounding of a replay in event-time order (see transforms.apply_rules)

Rows = Iterator[tuple[str, dict]]  # (table, row) pairs, yielded as they are made
_LOGGER = logging.getLogger(__name__)


@dataclass
class Clock:
    """A key's clock: when its next flush is set to fire (so a later event never pushes it later),
    the time up to which everything was applied, and how many snapshots of the key were written
    (orders a stream's snapshots at the same clock)."""

    wake_at: Optional[float] = None
    flushed_until: Optional[float] = None
    revision: int = 0

    _PACKED = struct.Struct("<ddq")  # NaN for "none"

    def encode(self) -> bytes:
        return self._PACKED.pack(math.nan if self.wake_at is None else self.wake_at,
                                 math.nan if self.flushed_until is None else self.flushed_until, self.revision)

    @classmethod
    def decode(cls, data: Optional[bytes]) -> "Clock":
        if not data:
            return cls()
        wake_at, flushed_until, revision = cls._PACKED.unpack(data)
        return cls(None if math.isnan(wake_at) else wake_at, None if math.isnan(flushed_until) else flushed_until,
                   revision)


class KeyCells(Protocol):
    """One key's stored state as a flush reads and writes it: its buffered records, its encoded
    `KeyState`, its `Clock`, and its wake-up timer. Writing None clears a cell."""

    def events(self) -> Iterable[bytes]: ...
    def add_event(self, record: bytes) -> None: ...
    def clear_events(self) -> None: ...
    def state(self) -> Optional[bytes]: ...
    def write_state(self, encoded: Optional[bytes]) -> None: ...
    def clock(self) -> Clock: ...
    def write_clock(self, clock: Optional[Clock]) -> None: ...
    def wake_at(self, at: float) -> None: ...


class HeldRecords:
    """`KeyCells` of a batch key: its records, flushed once at the end of input. A batch key keeps no
    state, clock or timer between flushes (a resumed key's state is a seed record among its records)."""

    def __init__(self, records: list):
        self._records = records

    def events(self) -> Iterable[bytes]:
        return self._records

    def add_event(self, record: bytes) -> None:
        self._records.append(record)

    def clear_events(self) -> None:
        self._records.clear()

    def state(self) -> Optional[bytes]:
        return None

    def write_state(self, encoded: Optional[bytes]) -> None:
        self._nothing_kept(encoded)

    def clock(self) -> Clock:
        return Clock()

    def write_clock(self, clock: Optional[Clock]) -> None:
        self._nothing_kept(clock)

    def wake_at(self, at: float) -> None:
        self._nothing_kept(at)

    @staticmethod
    def _nothing_kept(value) -> None:
        if value is not None:
            raise RuntimeError("a batch key is flushed once, at the end of input: it keeps nothing")


@dataclass
class BundleKey:
    """What the streaming step remembers of a key during one bundle, to save state reads and appends:
    its clock as last read or written, and the display digests it added to the buffer."""

    clock: Clock
    digests: set = field(default_factory=set)


class Flusher:
    """Applies one key's buffered events in event-time order (see the module docstring). Yields the
    (table, row) pairs it makes as it goes; `count(name)` increments a counter."""

    def __init__(self, types: GroupTypeRegistry, count: Callable[[str], None],
                 dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS, as_of: float = math.inf,
                 allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS, bounded: bool = True,
                 flush_seconds: float = 1.0, version_floor: int = 0):
        self._types, self._count = types, count
        self._version_floor = version_floor  # see RulesEngine
        self._as_of, self._allowed_lateness = as_of, allowed_lateness
        self._bounded = bounded  # a live stream's transitions also never pass the wall clock
        self._flush_seconds = flush_seconds
        # A redelivery inside the allowed lateness must still be recognised as a duplicate.
        self._dedupe_window = max(dedupe_window, allowed_lateness)

    def take(self, key: str, record: bytes, display: bytes, event_time: float, cells: KeyCells,
             seen: BundleKey) -> Rows:
        """A streaming event: buffered until the watermark passes it, or, behind the key's clock, late."""
        flushed = seen.clock.flushed_until
        if flushed is not None and event_time <= flushed and not is_seed_record(record):
            yield from self._late(key, record, display, event_time, cells, seen)
            return
        cells.add_event(record)
        digest = record_display_digest(record)
        if digest is not None and digest not in seen.digests:
            cells.add_event(display_record(digest, display))
            seen.digests.add(digest)
        self._wake(self.round_up(event_time), cells, seen)

    def flush(self, key: str, horizon: float, cells: KeyCells) -> Rows:
        """Apply every buffered event and transition at or before `horizon`, in order; keep the rest.

        Events at or before the key's previous clock were applied by an earlier flush and are skipped;
        the buffer is rewritten without them only once they are at least half of it, so a flush that
        applies a small prefix of a large buffer copies nothing (amortised O(1) per event)."""
        clock = cells.clock()
        previous = -math.inf if clock.flushed_until is None else clock.flushed_until
        revision = clock.revision
        interned, pending, applied, seed = {}, [], 0, None
        for record in unbatched(cells.events()):
            if is_display_record(record):
                digest, display = split_display_record(record)
                interned[digest] = display
                continue
            if is_seed_record(record):
                seed = record if seed is None else newer_seed(seed, record)
                continue
            if record_time(record) <= previous:
                applied += 1
            else:
                pending.append(record)
        stored = start = cells.state()
        if seed is not None:
            start, revision = yield from self._adopt(key, seed, stored, previous, pending)
        # Sorted and split as encoded records (each is decoded only when applied): a hot key's flush holds
        # its records, not their decoded events nor its output rows.
        sort_records(pending)
        split = bisect.bisect_right(pending, horizon, key=record_time)  # sorted by time first
        ready, waiting = pending[:split], pending[split:]
        limit = self._transitions_until()
        state, wakeup = yield from self._apply(key, start, interned, ready, horizon, limit)
        encoded = None if state.is_empty() else state.encode()
        if horizon == math.inf:  # the end of time: nothing can follow; snapshot the key, keep nothing
            if encoded is not None or stored is not None:  # "nothing" replaces a stream's earlier snapshot
                at = state.cursor if self._as_of == math.inf else max(state.cursor, self._as_of)
                yield self._snapshot(key, state, encoded or b"", at, revision + 1)
            cells.clear_events()
            cells.write_state(None)
            cells.write_clock(None)
            return
        if encoded is None:
            cells.write_state(None)
            if start:  # the key's snapshot is now "nothing", so that a resume does not bring back the old one
                revision += 1
                yield self._snapshot(key, state, b"", min(horizon, limit), revision)
        elif encoded != stored:
            cells.write_state(encoded)
            revision += 1
            yield self._snapshot(key, state, encoded, min(horizon, limit), revision)
        if not waiting:
            cells.clear_events()
        elif seed is not None or applied + len(ready) >= len(waiting):
            cells.clear_events()
            for raw in waiting:
                cells.add_event(raw)
            for digest in {record_display_digest(raw) for raw in waiting} - {None}:
                cells.add_event(display_record(digest, interned[digest]))
        if wakeup is not None and wakeup <= horizon:  # fired ahead of the wall clock (a drain): see _apply
            wakeup = None
        candidates = [t for t in (self._next_round(waiting) if waiting else None,
                                  None if wakeup is None else float(math.ceil(wakeup))) if t is not None]
        wake = min(candidates) if candidates else None
        if wake is not None:
            cells.wake_at(wake)
            cells.write_clock(Clock(wake, horizon, revision))
        elif encoded is None:  # nothing waits, nothing is due, nothing is held: the key keeps no state at all
            cells.write_clock(None)
            self._count("keys.released")
        else:
            cells.write_clock(Clock(None, horizon, revision))

    def _next_round(self, waiting: list) -> float:
        """When the next flush fires for the events still waiting (sorted): once the watermark has passed
        the last of them that is within `CATCH_UP_SECONDS` of the first and, in a live stream, not
        after the wall clock; so that one round applies them all.

        Waking for the first only would drain a key one event-second per round, and a round is a
        watermark advance plus a bundle on every step (about a second on Flink): a backlog spanning an
        hour of event time (a restart, a producer that was down) would take an hour to catch up. Events
        not yet reached by the wall clock cannot have been passed by a live watermark either, so those
        are still flushed second by second (a detector whose clock runs ahead gets its rows as soon as
        before); the bound keeps a far-future event from holding back the ones before it. An event
        that arrives meanwhile with an earlier time arms the timer earlier, as always (`take`)."""
        first = record_time(waiting[0])
        reached = math.inf if self._bounded else time.time()
        last = bisect.bisect_right(waiting, max(first, min(first + CATCH_UP_SECONDS, reached)), key=record_time) - 1
        return self.round_up(record_time(waiting[last]))

    def round_up(self, t: float) -> float:
        """When the flush fires for an event waiting at `t`: the next whole `flush_seconds` (a transition
        due at `t` fires at the next whole second, so that it is applied when a 1 s rounding would)."""
        return float(math.ceil(t / self._flush_seconds) * self._flush_seconds)

    def _adopt(self, key, seed, stored, previous, pending):
        """A resumed key's first flush: the snapshot becomes its state, and buffered events at or before
        the snapshot's clock are late (removed from `pending` and dead-lettered when beyond the allowed
        lateness). A seed for a key that already has state (a snapshot read twice, or events flushed
        before it arrived) is ignored and counted. Returns (the state to start from, its revision)."""
        state, snapshot_at, revision = split_seed_record(seed)
        if stored is not None or previous != -math.inf:
            self._count("snapshot.ignored")
            return stored, 0
        self._count("snapshot.resumed")
        for record in [record for record in pending if snapshot_at - record_time(record) > self._allowed_lateness]:
            pending.remove(record)
            yield self._late_letter(key, record, snapshot_at)
        return state, revision

    def _late(self, key, record, display, event_time, cells: KeyCells, seen: BundleKey) -> Rows:
        """An event behind the key's clock: apply it now (out of order) or dead-letter it."""
        flushed = seen.clock.flushed_until
        if flushed - event_time > self._allowed_lateness:
            yield self._late_letter(key, record, flushed)
            return
        interned = {record_display_digest(record): display} if display else {}
        stored, limit = cells.state(), self._transitions_until()
        state, wake = yield from self._apply(key, stored, interned, [record], flushed, limit)
        encoded = state.encode()
        if encoded != stored:
            cells.write_state(encoded)
            seen.clock.revision += 1
            cells.write_clock(seen.clock)
            yield self._snapshot(key, state, encoded, min(flushed, limit), seen.clock.revision)
        if wake is not None and wake > flushed:
            self._wake(float(math.ceil(wake)), cells, seen)

    def _transitions_until(self) -> float:
        """How far time-driven transitions may run: `as_of`, and in a live stream also the wall clock
        (see `_apply`)."""
        return self._as_of if self._bounded else min(self._as_of, time.time())

    def _apply(self, key, start, interned, records, horizon, limit):
        """Applies the events encoded in `records` (in order) and the transitions up to `horizon` (never
        past `limit`) to the state encoded in `start`, yielding each event's (table, row) pairs as soon
        as it is applied (a hot key's flush never holds all its rows); returns (state, next wake-up).

        A failure of ours must neither stop the pipeline nor leave a group half-updated. An event that
        fails is dead-lettered as `internal_error` (stage `group`) and the group goes on from its state
        just before that event, rebuilt by applying again the events since the last checkpoint (`start`,
        or the state encoded at the previous failure: the rules are deterministic and the rows were
        already emitted), so the other events count exactly as they would have and many failures in one
        flush cost one pass over it. If the transitions due at the end fail, the state from before them
        is kept and the key's next transitions wait for its next event (retrying at once would fail
        again, forever).

        In a live stream transitions also never run past the wall clock: draining a Dataflow job moves
        the watermark to infinity and fires every timer, and a group must not be auto-resolved, turned
        ongoing or have its counts expired ahead of real time (in the output tables or in the snapshot
        the next job resumes from, whose clock is therefore never past `limit` either). Such an early
        timer applies nothing and arms nothing again."""
        displays = _Displays(interned)
        engine = self._engine(key, start, displays, limit)
        had_group = engine.state.group is not None
        checkpoint, since = start, 0  # the state before records[since:], none of which has failed
        for i, record in enumerate(records):
            try:
                rows = engine.apply(decode(record))
            except Exception as exc:
                engine = self._rebuild(key, checkpoint, displays, limit, records[since:i])
                checkpoint, since = engine.state.encode(), i + 1
                yield DEAD_LETTER, internal_error_row(outcomes.STAGE_GROUP, exc, orjson.dumps(summary(key, record)))
                continue
            yield from rows
        try:
            rows, wakeup = engine.finish(horizon), engine.next_wakeup(self._as_of)
        except Exception as exc:
            _LOGGER.warning("group step: time-driven transitions failed: %s", type(exc).__name__)
            engine = self._rebuild(key, checkpoint, displays, limit, records[since:])
            rows, wakeup = [], None
        yield from rows
        if not had_group and engine.state.group is not None:  # whether or not post-process messages are on
            self._count("groups.created")
        return engine.state, wakeup

    def _engine(self, key, start, displays, limit) -> RulesEngine:
        return RulesEngine(key, KeyState.decode(start), displays, self._types, self._dedupe_window, limit,
                           self._version_floor)

    def _rebuild(self, key, start, displays, limit, records) -> RulesEngine:
        """An engine holding the state after applying `records` to `start` (their rows are not wanted:
        they were emitted already)."""
        engine = self._engine(key, start, displays, limit)
        for record in records:
            engine.apply(decode(record))
        return engine

    def _late_letter(self, key, record, clock_at):
        """The dead-letter row of an event too far behind its key's clock (its id, key and time only)."""
        return DEAD_LETTER, late_row(summary(key, record), clock_at - record_time(record), self._allowed_lateness)

    @staticmethod
    def _snapshot(key, state, encoded, at, revision):
        group_id = state.group.group_id if state.group is not None else None
        return STATE, snapshot_row(key, encoded, at, revision, group_id)

    @staticmethod
    def _wake(wake: float, cells: KeyCells, seen: BundleKey) -> None:
        if seen.clock.wake_at is None or wake < seen.clock.wake_at:
            cells.wake_at(wake)
            seen.clock.wake_at = wake
            cells.write_clock(seen.clock)


def summary(key: str, record: bytes) -> dict:
    """What a dead-letter row of the stateful step keeps of an event (the raw payload is long gone)."""
    try:
        event = decode(record)
    except Exception:  # the record itself is what failed: the key is all there is to say
        return {"key": key}
    return {"kind": "occurrence" if isinstance(event, PendingOccurrence) else "status_change",
            "key": key, "id": event.id, "time": iso(event.time)}


class _Displays(dict):
    """Decodes interned displays on first use."""

    def __init__(self, raw: dict):
        super().__init__()
        self._raw = raw

    def __missing__(self, digest):
        value = self[digest] = Display.decode(self._raw[digest])
        return value
