"""ProcessGroups: the stateful step that owns each group and applies its events in event-time order."""
from __future__ import annotations

import bisect
import collections
import logging
import math
import struct
import time

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from issue_platform import outcomes as R
from issue_platform.config import PlatformConfig
from issue_platform.groups import DEFAULT_DEDUPE_WINDOW_SECONDS, GroupProcessor, KeyState
from issue_platform.snapshot import is_seed_record, newer_seed, snapshot_row, split_seed_record
from issue_platform.tables import (ACTIVITY, DEAD_LETTER, GROUPS, OCCURRENCES, POST_PROCESS, STATE, STATUS_CHANGES,
                                   counter_name, dead_letter_row, iso)
from issue_platform.validation import Rejected
from issue_platform.pending import (Display, PendingOccurrence, decode, display_record, is_display_record, keyed,
                                    record_display_digest, record_time, shard_of, sort_records, split_display_record,
                                    split_keyed, unbatched)
from transforms.parse import NAMESPACE, internal_error_row

TABLES = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, STATE)
DEFAULT_ALLOWED_LATENESS_SECONDS = 600.0
REPLAY_FLUSH_SECONDS = 3600.0  # FLUSH's rounding in a replay in event-time order (see ProcessGroups)
ROWS_PER_BATCH = 1000  # the most rows of one table in one output element (a hot key's flush yields many)
_END_OF_TIME = GlobalWindow().max_timestamp()
_SUMMARY_BYTES = 1024  # a late event's dead-letter payload is its summary (kind, key, id, time)
_LOGGER = logging.getLogger(__name__)


class ProcessGroupsFn(beam.DoFn):
    """Buffers each key's events until the watermark passes them, then applies them in order (the
    streaming variant; `BatchProcessGroupsFn` below differs only in what `process` arms).

    Event time is the occurrence's `detection_time` (a status change's `update_date`). Input arrives
    in any order (a batch run gives none at all), so events wait in EVENTS until the watermark
    guarantees nothing earlier can still arrive; then FLUSH sorts them and hands them, with the
    time-driven transitions due in between, to `GroupProcessor`. Timeline for one key:

        process  t=10:00:05  buffer it; FLUSH set to 10:00:06 (the next whole second)
        process  t=10:00:02  buffer it; FLUSH moved earlier, to 10:00:03
        watermark 10:00:04 -> FLUSH(10:00:03): apply 10:00:02; 10:00:05 waits; FLUSH set to 10:00:06
        watermark 10:00:07 -> FLUSH(10:00:06): apply 10:00:05; the group is NEW, so FLUSH is set to
                              its next transition (auto-resolve at last_seen + resolve_age, or
                              back to ongoing 7 days after it was created)
        watermark passes that transition -> FLUSH: apply it (never beyond `as_of`)
        process  t=10:00:01, now behind the key's flushed time 10:00:06: late. Within the allowed
                 lateness it is applied at once (out of order); beyond it, dead-lettered as `late`
        end of input (the watermark jumps to +inf) -> FINAL: apply what is still buffered, and
                              transitions up to `as_of`; write the key's state to the `state` table
                              (its snapshot, for a later job's --resume_from) and clear it

    A resumed key's first element is a seed record (issue_platform.snapshot): it waits in EVENTS like
    an event, and the first flush adopts it as the key's state before applying anything; events at or
    before the snapshot's clock are then late (applied within the allowed lateness, else dead-lettered).
    A stream also writes a key's snapshot whenever a flush or a late event changed its state.

    Per key that costs one small state read per bundle, one bag append per event, and one state read
    and write per flush; the state cache is not on the per-element path.

    Attributes:
      EVENTS: compact encoded events waiting for the watermark, and the interned display strings
        they reference (issue_platform.pending: event and display records).
      KEY_STATE: the encoded `KeyState` (group, noise counter, recent occurrence ids).
      CLOCK: (wake_at, flushed_until, revision): when FLUSH is set to fire (so a later event never
        pushes it later), the key's clock (everything at or before it has been applied), and how many
        snapshots of the key were written (orders a stream's snapshots at the same clock).
      FLUSH: event-time timer at the earliest waiting event (rounded up to a whole second) or the
        next transition, whichever comes first.
      FINAL: event-time timer at the end of time: the final flush of a bounded input (never armed for
        a live stream, where a key that holds nothing keeps no state and no timer: `keys.released`).
    """

    EVENTS = BagStateSpec("events", BytesCoder())
    KEY_STATE = ReadModifyWriteStateSpec("key_state", BytesCoder())
    CLOCK = ReadModifyWriteStateSpec("clock", BytesCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
    FINAL = TimerSpec("final", TimeDomain.WATERMARK)

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS,
                 as_of: float = math.inf, allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 bounded: bool = True, flush_seconds: float = 1.0):
        self._config, self._as_of, self._allowed_lateness = config, as_of, allowed_lateness
        self._bounded = bounded  # only a bounded input has an end of time to arm FINAL for
        self._flush_seconds = flush_seconds
        # A redelivery inside the allowed lateness must still be recognised as a duplicate.
        self._dedupe_window = max(dedupe_window, allowed_lateness)
        self._counters = {}

    def setup(self):
        self._types = self._config.registry()

    def start_bundle(self):
        # key -> [wake_at, flushed_until, digests added this bundle]: saves state reads and appends.
        self._seen_in_bundle = {}

    def process(self, element, timestamp=beam.DoFn.TimestampParam, events=beam.DoFn.StateParam(EVENTS),
                key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                flush=beam.DoFn.TimerParam(FLUSH), final=beam.DoFn.TimerParam(FINAL)):
        key, (record, display) = element
        seen = self._seen_in_bundle.get(key)  # [wake_at, flushed_until, revision, digests added]
        if seen is None:
            seen = self._seen_in_bundle[key] = [*_read_clock(clock), set()]
            if self._bounded:
                final.set(_END_OF_TIME)
        event_time = timestamp.micros / 1e6
        if seen[1] is not None and event_time <= seen[1] and not is_seed_record(record):
            yield from self._emit(self._late(key, record, display, event_time, key_state, clock, flush, seen))
            return
        events.add(record)
        digest = record_display_digest(record)
        if digest is not None and digest not in seen[3]:
            events.add(display_record(digest, display))
            seen[3].add(digest)
        self._wake(self._round_up(event_time), clock, flush, seen)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), key_state=beam.DoFn.StateParam(KEY_STATE),
                 clock=beam.DoFn.StateParam(CLOCK), flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._emit(self._flush(key, timestamp.micros / 1e6, events, key_state, clock, flush))

    @on_timer(FINAL)
    def on_final(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                 key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._emit(self._flush(key, math.inf, events, key_state, clock, flush))

    def _flush(self, key, horizon, events, key_state, clock, flush):
        """Apply every buffered event and transition at or before `horizon`, in order; keep the rest.
        Yields the (table, row) pairs that makes as it goes (`_emit` batches them).

        Events at or before the key's previous clock were applied by an earlier flush and are skipped;
        the buffer is rewritten without them only once they are at least half of it, so a flush that
        applies a small prefix of a large buffer copies nothing (amortised O(1) per event)."""
        _, previous, revision = _read_clock(clock)
        previous = -math.inf if previous is None else previous
        interned, pending, applied, seed = {}, [], 0, None
        for record in unbatched(events.read()):
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
        stored = start = key_state.read()
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
            for cell in (events, key_state, clock):
                cell.clear()
            return
        if encoded is None:
            key_state.clear()
            if start:  # the key's snapshot is now "nothing", so that a resume does not bring back the old one
                revision += 1
                yield self._snapshot(key, state, b"", min(horizon, limit), revision)
        elif encoded != stored:
            key_state.write(encoded)
            revision += 1
            yield self._snapshot(key, state, encoded, min(horizon, limit), revision)
        if not waiting:
            events.clear()
        elif seed is not None or applied + len(ready) >= len(waiting):
            events.clear()
            for raw in waiting:
                events.add(raw)
            for digest in {record_display_digest(raw) for raw in waiting} - {None}:
                events.add(display_record(digest, interned[digest]))
        if wakeup is not None and wakeup <= horizon:  # fired ahead of the wall clock (a drain): see _apply
            wakeup = None
        candidates = [t for t in (self._round_up(record_time(waiting[0])) if waiting else None,
                                  None if wakeup is None else float(math.ceil(wakeup))) if t is not None]
        wake = min(candidates) if candidates else None
        if wake is not None:
            flush.set(Timestamp(wake))
            clock.write(_encode_clock(wake, horizon, revision))
        elif encoded is None:  # nothing waits, nothing is due, nothing is held: the key keeps no state at all
            clock.clear()
            self._counter("keys.released").inc()
        else:
            clock.write(_encode_clock(None, horizon, revision))

    def _adopt(self, key, seed, stored, previous, pending):
        """A resumed key's first flush: the snapshot becomes its state, and buffered events at or before
        the snapshot's clock are late (removed from `pending` and dead-lettered when beyond the allowed
        lateness). A seed for a key that already has state (a snapshot read twice, or events flushed
        before it arrived) is ignored and counted. Returns (the state to start from, its revision)."""
        state, snapshot_at, revision = split_seed_record(seed)
        if stored is not None or previous != -math.inf:
            self._counter("snapshot.ignored").inc()
            return stored, 0
        self._counter("snapshot.resumed").inc()
        for record in [record for record in pending if snapshot_at - record_time(record) > self._allowed_lateness]:
            pending.remove(record)
            yield self._late_letter(key, record, snapshot_at)
        return state, revision

    def _late(self, key, record, display, event_time, key_state, clock, flush, seen):
        """An event behind the key's clock: apply it now (out of order) or dead-letter it ((table, row) pairs)."""
        flushed = seen[1]
        if flushed - event_time > self._allowed_lateness:
            yield self._late_letter(key, record, flushed)
            return
        interned = {record_display_digest(record): display} if display else {}
        stored, limit = key_state.read(), self._transitions_until()
        state, wake = yield from self._apply(key, stored, interned, [record], flushed, limit)
        encoded = state.encode()
        if encoded != stored:
            key_state.write(encoded)
            seen[2] += 1
            clock.write(_encode_clock(*seen[:3]))
            yield self._snapshot(key, state, encoded, min(flushed, limit), seen[2])
        if wake is not None and wake > flushed:
            self._wake(float(math.ceil(wake)), clock, flush, seen)

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
        processor = self._processor(key, start, displays, limit)
        had_group = processor.state.group is not None
        checkpoint, since = start, 0  # the state before records[since:], none of which has failed
        for i, record in enumerate(records):
            try:
                rows = processor.apply(decode(record))
            except Exception as exc:
                processor = self._rebuild(key, checkpoint, displays, limit, records[since:i])
                checkpoint, since = processor.state.encode(), i + 1
                yield DEAD_LETTER, internal_error_row(R.STAGE_GROUP, exc, orjson.dumps(_summary(key, record)))
                continue
            yield from rows
        try:
            rows, wakeup = processor.finish(horizon), processor.next_wakeup(self._as_of)
        except Exception as exc:
            _LOGGER.warning("group step: time-driven transitions failed: %s", type(exc).__name__)
            processor = self._rebuild(key, checkpoint, displays, limit, records[since:])
            rows, wakeup = [], None
        yield from rows
        if not had_group and processor.state.group is not None:  # whether or not post-process messages are on
            self._counter("groups.created").inc()
        return processor.state, wakeup

    def _processor(self, key, start, displays, limit) -> GroupProcessor:
        return GroupProcessor(key, KeyState.decode(start), displays, self._types, self._dedupe_window, limit)

    def _rebuild(self, key, start, displays, limit, records) -> GroupProcessor:
        """A processor holding the state after applying `records` to `start` (their rows are not
        wanted: they were emitted already)."""
        processor = self._processor(key, start, displays, limit)
        for record in records:
            processor.apply(decode(record))
        return processor

    def _late_letter(self, key, record, clock_at):
        """The dead-letter row of an event too far behind its key's clock (its id, key and time only)."""
        late = Rejected(R.LATE, "detection_time", f"{clock_at - record_time(record):.0f}s behind the key's clock; "
                        f"allowed lateness {self._allowed_lateness:.0f}s", stage=R.STAGE_GROUP)
        return DEAD_LETTER, dead_letter_row(late, orjson.dumps(_summary(key, record)), _SUMMARY_BYTES)

    def _snapshot(self, key, state, encoded, at, revision):
        group_id = state.group.group_id if state.group is not None else None
        return STATE, snapshot_row(key, encoded, at, revision, group_id)

    def _round_up(self, t: float) -> float:
        """When FLUSH fires for an event waiting at `t`: the next whole `flush_seconds` (a transition
        due at `t` fires at the next whole second, so that it is applied when a 1 s rounding would)."""
        return float(math.ceil(t / self._flush_seconds) * self._flush_seconds)

    @staticmethod
    def _wake(wake, clock, flush, seen):
        if seen[0] is None or wake < seen[0]:
            flush.set(Timestamp(wake))
            seen[0] = wake
            clock.write(_encode_clock(*seen[:3]))

    def _emit(self, rows):
        """(table, row) pairs -> batches (lists) of at most ROWS_PER_BATCH rows of one table, each row
        counted: a table part is a PCollection of row batches (see `ProcessGroups`)."""
        batches, counts = {}, collections.Counter()
        for table, row in rows:
            batch = batches.setdefault(table, [])
            batch.append(row)
            counts[counter_name(table, row)] += 1
            if len(batch) == ROWS_PER_BATCH:
                yield pvalue.TaggedOutput(table, batch)
                batches[table] = []
        for table, batch in batches.items():
            if batch:
                yield pvalue.TaggedOutput(table, batch)
        for name, count in counts.items():
            if name is not None:
                self._counter(name).inc(count)

    def _counter(self, name):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(NAMESPACE, name)
        return counter


def _summary(key: str, record: bytes) -> dict:
    """What a dead-letter row of this step keeps of an event (the raw payload is long gone)."""
    try:
        event = decode(record)
    except Exception:  # the record itself is what failed: the key is all there is to say
        return {"key": key}
    return {"kind": "occurrence" if isinstance(event, PendingOccurrence) else "status_change",
            "key": key, "id": event.id, "time": iso(event.time)}


_CLOCK = struct.Struct("<ddq")  # wake_at, flushed_until (NaN for "none"), revision


def _encode_clock(wake_at, flushed_until, revision) -> bytes:
    return _CLOCK.pack(math.nan if wake_at is None else wake_at,
                       math.nan if flushed_until is None else flushed_until, revision)


def _read_clock(clock) -> list:
    data = clock.read()
    if not data:
        return [None, None, 0]
    wake_at, flushed_until, revision = _CLOCK.unpack(data)
    return [None if math.isnan(wake_at) else wake_at, None if math.isnan(flushed_until) else flushed_until, revision]


class BatchProcessGroupsFn(ProcessGroupsFn):
    """The batch variant: a bounded input's watermark jumps to +infinity only after all input is read,
    so per-element wake-ups (FLUSH, CLOCK) could only fire at the end anyway. `process` therefore
    only buffers and arms FINAL, which applies each key's events in one sorted pass through the same
    `_flush`: results are identical.

    Its state is keyed by shard (issue_platform.pending.shard_of), not by group key: each element is a
    key's batch record (or a resumed key's seed) after its group key, and FINAL flushes the shard's
    keys one after another. A runner keeps objects per state cell and timer until the bundle that
    touched them commits (the SDK's state objects and keys, the runner's copies, each timer's
    encoding), and a batch run touches every key in one bundle and fires every FINAL in another:
    per shard, that is paid once for the keys it holds instead of once per key."""

    FINAL = TimerSpec("final", TimeDomain.WATERMARK)  # its own spec: a spec has one callback

    def process(self, element, events=beam.DoFn.StateParam(ProcessGroupsFn.EVENTS),
                final=beam.DoFn.TimerParam(FINAL)):
        shard, value = element
        if shard not in self._seen_in_bundle:  # a shard gets many records per bundle; every timer set is
            self._seen_in_bundle[shard] = None  # encoded and copied until the runner dedupes it
            final.set(_END_OF_TIME)
        events.add(value)

    def finish_bundle(self):
        self._seen_in_bundle = {}  # not kept while the bundle commits

    @on_timer(FINAL)
    def on_final(self, events=beam.DoFn.StateParam(ProcessGroupsFn.EVENTS)):
        # KEY_STATE and CLOCK are never written in a batch run (a resumed key's state is a seed record in
        # EVENTS), so the flush does not open them.
        held = {}
        for value in events.read():
            key, record = split_keyed(value)
            held.setdefault(key, _Held()).append(record)
        events.clear()
        yield from self._emit(self._flush_each(held))  # row batches span the shard's keys

    def _flush_each(self, held):
        for key in sorted(held):  # each key's records are dropped once it is flushed
            yield from self._flush(key, math.inf, held.pop(key), _NEVER_WRITTEN, _NEVER_WRITTEN, None)


def sharded_seed(element):
    """A resumed key's `(key, (seed, b""))` as the batch step takes it: `(shard, keyed(key, seed))`."""
    key, (seed, _) = element
    return shard_of(key), keyed(key, seed)


class _Held(list):
    """One key's records of a shard, read and cleared by `_flush` as it does its EVENTS bag."""

    def read(self):
        return self


class _NeverWritten:
    """A state cell that holds nothing (what `_flush` reads and clears of KEY_STATE and CLOCK in batch)."""

    def read(self):
        return None

    def clear(self):
        pass


_NEVER_WRITTEN = _NeverWritten()


class _Displays(dict):
    """Decodes interned displays on first use."""

    def __init__(self, raw: dict):
        super().__init__()
        self._raw = raw

    def __missing__(self, digest):
        value = self[digest] = Display.decode(self._raw[digest])
        return value


class ProcessGroups(beam.PTransform):
    """Keyed, timestamped compact events -> the `groups`, `occurrences`, `status_changes`,
    `post_process`, `activity` and `state` outputs, plus `dead_letter` for events too late to apply (a
    dict of PCollections by table name). Each element is a batch: the list of one table's rows from one
    flush (or late event) of one key (in batch, from the final flush of a shard's keys), so that the
    runner's per-element cost downstream is paid per batch, not per row. `streaming` picks the DoFn
    variant; the results do not depend on it. `bounded=False` (a live stream) arms no end-of-time
    timer, so a key that holds nothing (no group, no noise count, no recent id) keeps no state and no
    timer.

    `flush_seconds` is how finely FLUSH rounds up the times of the events it waits for (transitions
    wait to the next whole second): 1 s judges lateness to the second. A replay in event-time order
    may pass more (`REPLAY_FLUSH_SECONDS`): no event of it can arrive behind the watermark, so none
    is late whatever the rounding, and each flush applies its events sorted with the transitions due
    between them, as the batch run's one flush does; the final results are the same, with fewer
    flushes (and fewer intermediate snapshots)."""

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS,
                 as_of: float = math.inf, allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 streaming: bool = True, bounded: bool = True, flush_seconds: float = 1.0):
        super().__init__()
        fn_class = ProcessGroupsFn if streaming else BatchProcessGroupsFn
        self._fn = fn_class(config, dedupe_window, as_of, allowed_lateness, bounded or not streaming, flush_seconds)

    def expand(self, keyed):
        results = keyed | "ApplyInEventTimeOrder" >> beam.ParDo(self._fn).with_outputs(*TABLES, DEAD_LETTER)
        return {table: results[table] for table in (*TABLES, DEAD_LETTER)}
