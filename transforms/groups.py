"""ProcessGroups: the stateful step that owns each group and applies its events in event-time order."""
from __future__ import annotations

import logging
import math
import struct

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
from issue_platform.groups import (ACTIVITY, DEFAULT_DEDUPE_WINDOW_SECONDS, GROUPS, OCCURRENCES, POST_PROCESS,
                                   STATUS_CHANGES, GroupProcessor, KeyState, iso)
from issue_platform.grouptype import registry
from issue_platform.pending import (Display, PendingOccurrence, decode, display_record, is_display_record,
                                    record_display_digest, sort_key, split_display_record)
from transforms.parse import DEAD_LETTER, NAMESPACE, internal_error_row

TABLES = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY)
DEFAULT_ALLOWED_LATENESS_SECONDS = 600.0
_END_OF_TIME = GlobalWindow().max_timestamp()
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
                              transitions up to `as_of`

    Per key that costs one small state read per bundle, one bag append per event, and one state read
    and write per flush; the state cache is not on the per-element path.

    Attributes:
      EVENTS: compact encoded events waiting for the watermark, and the interned display strings
        they reference (issue_platform.pending: event and display records).
      KEY_STATE: the encoded `KeyState` (group, noise counter, recent occurrence ids).
      CLOCK: (wake_at, flushed_until): when FLUSH is set to fire (so a later event never pushes it
        later) and the key's clock (everything at or before it has been applied).
      FLUSH: event-time timer at the earliest waiting event (rounded up to a whole second) or the
        next transition, whichever comes first.
      FINAL: event-time timer at the end of time: the final flush of a bounded input.
    """

    EVENTS = BagStateSpec("events", BytesCoder())
    KEY_STATE = ReadModifyWriteStateSpec("key_state", BytesCoder())
    CLOCK = ReadModifyWriteStateSpec("clock", BytesCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
    FINAL = TimerSpec("final", TimeDomain.WATERMARK)

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS,
                 as_of: float = math.inf, allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS):
        self._config, self._as_of, self._allowed_lateness = config, as_of, allowed_lateness
        # A redelivery inside the allowed lateness must still be recognised as a duplicate.
        self._dedupe_window = max(dedupe_window, allowed_lateness)
        self._counters = {}

    def setup(self):
        self._config.install()

    def start_bundle(self):
        # key -> [wake_at, flushed_until, digests added this bundle]: saves state reads and appends.
        self._seen_in_bundle = {}

    def process(self, element, timestamp=beam.DoFn.TimestampParam, events=beam.DoFn.StateParam(EVENTS),
                key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                flush=beam.DoFn.TimerParam(FLUSH), final=beam.DoFn.TimerParam(FINAL)):
        key, (record, display) = element
        seen = self._seen_in_bundle.get(key)
        if seen is None:
            seen = self._seen_in_bundle[key] = [*_read_clock(clock), set()]
            final.set(_END_OF_TIME)
        event_time = timestamp.micros / 1e6
        if seen[1] is not None and event_time <= seen[1]:
            yield from self._late(key, record, display, event_time, key_state, clock, flush, seen)
            return
        events.add(record)
        digest = record_display_digest(record)
        if digest is not None and digest not in seen[2]:
            events.add(display_record(digest, display))
            seen[2].add(digest)
        self._wake(float(math.ceil(event_time)), clock, flush, seen)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), key_state=beam.DoFn.StateParam(KEY_STATE),
                 clock=beam.DoFn.StateParam(CLOCK), flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._flush(key, timestamp.micros / 1e6, events, key_state, clock, flush)

    @on_timer(FINAL)
    def on_final(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                 key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._flush(key, math.inf, events, key_state, clock, flush)

    def _flush(self, key, horizon, events, key_state, clock, flush):
        """Apply every buffered event and transition at or before `horizon`, in order; keep the rest.

        Events at or before the key's previous clock were applied by an earlier flush and are skipped;
        the buffer is rewritten without them only once they are at least half of it, so a flush that
        applies a small prefix of a large buffer copies nothing (amortised O(1) per event)."""
        previous = _read_clock(clock)[1]
        previous = -math.inf if previous is None else previous
        interned, pending, applied = {}, [], 0
        for record in events.read():
            if is_display_record(record):
                digest, display = split_display_record(record)
                interned[digest] = display
                continue
            event = decode(record)
            if event.time <= previous:
                applied += 1
            else:
                pending.append((event, record))
        pending.sort(key=lambda pair: sort_key(pair[0]))
        ready = [event for event, _ in pending if event.time <= horizon]
        waiting = [(event, raw) for event, raw in pending if event.time > horizon]
        state, rows, wakeup = self._apply(key, key_state, interned, ready, horizon)
        yield from self._emit(rows)
        if horizon == math.inf:  # the end of time: nothing can follow, so keep nothing
            for cell in (events, key_state, clock):
                cell.clear()
            return
        if state.is_empty():
            key_state.clear()
        else:
            key_state.write(state.encode())
        if not waiting:
            events.clear()
        elif applied + len(ready) >= len(waiting):
            events.clear()
            for _, raw in waiting:
                events.add(raw)
            for digest in {record_display_digest(raw) for _, raw in waiting} - {None}:
                events.add(display_record(digest, interned[digest]))
        candidates = [t for t in (waiting[0][0].time if waiting else None, wakeup) if t is not None]
        wake = float(math.ceil(min(candidates))) if candidates else None
        if wake is not None:
            flush.set(Timestamp(wake))
        clock.write(_encode_clock(wake, horizon))

    def _late(self, key, record, display, event_time, key_state, clock, flush, seen):
        """An event behind the key's clock: apply it now (out of order) or dead-letter it."""
        event, flushed = decode(record), seen[1]
        if flushed - event_time > self._allowed_lateness:
            self._counter(f"dead_letter.{R.LATE}").inc()
            yield pvalue.TaggedOutput(DEAD_LETTER, {
                "stage": R.STAGE_GROUP, "reason": R.LATE, "field": "detection_time",
                "error": f"{flushed - event_time:.0f}s behind the key's clock; allowed lateness "
                         f"{self._allowed_lateness:.0f}s", "payload": orjson.dumps(_summary(key, event)).decode(),
                "payload_truncated": False})
            return
        interned = {record_display_digest(record): display} if display else {}
        state, rows, wake = self._apply(key, key_state, interned, [event], flushed)
        yield from self._emit(rows)
        key_state.write(state.encode())
        if wake is not None:
            self._wake(float(math.ceil(wake)), clock, flush, seen)

    def _apply(self, key, key_state, interned, events, horizon):
        """(state, rows, next wake-up) after applying `events` and the transitions up to `horizon`.

        A failure of ours must neither stop the pipeline nor leave a group half-updated. If anything
        fails, the flush is redone event by event from the state before it: an event that fails is
        dead-lettered as `internal_error` (stage `group`) and the group keeps its state from just
        before that event, so the other events count exactly as they would have. If the
        transitions due at the end fail, the state from before them is kept and the key's next
        transitions wait for its next event (retrying at once would fail again, forever)."""
        state = KeyState.decode(key_state.read())
        had_group = state.group is not None
        processor = GroupProcessor(key, state, _Displays(interned), registry, self._dedupe_window, self._as_of)
        try:
            rows = [row for event in events for row in processor.apply(event)]
            rows += processor.finish(horizon)
            wakeup = processor.next_wakeup()
        except Exception:
            processor.state = KeyState.decode(key_state.read())
            rows, wakeup = self._apply_one_by_one(key, processor, events, horizon)
        if not had_group and processor.state.group is not None:  # whether or not post-process messages are on
            self._counter("groups.created").inc()
        return processor.state, rows, wakeup

    @staticmethod
    def _apply_one_by_one(key, processor, events, horizon):
        rows = []
        for event in events:
            before = processor.state.encode()
            try:
                rows += processor.apply(event)
            except Exception as exc:
                processor.state = KeyState.decode(before)
                rows.append((DEAD_LETTER, internal_error_row(R.STAGE_GROUP, exc, orjson.dumps(_summary(key, event)))))
        before = processor.state.encode()
        try:
            rows += processor.finish(horizon)
            return rows, processor.next_wakeup()
        except Exception as exc:
            _LOGGER.warning("group step: time-driven transitions failed: %s", type(exc).__name__)
            processor.state = KeyState.decode(before)
            return rows, None

    @staticmethod
    def _wake(wake, clock, flush, seen):
        if seen[0] is None or wake < seen[0]:
            flush.set(Timestamp(wake))
            seen[0] = wake
            clock.write(_encode_clock(wake, seen[1]))

    def _emit(self, rows):
        for table, row in rows:
            if table in (OCCURRENCES, STATUS_CHANGES):
                self._counter(f"{table}.{row['outcome']}").inc()
            elif table == ACTIVITY:
                self._counter(f"activity.{row['type']}").inc()
            yield pvalue.TaggedOutput(table, row)

    def _counter(self, name):
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(NAMESPACE, name)
        return counter


def _summary(key: str, event) -> dict:
    """What a dead-letter row of this step keeps of an event (the raw payload is long gone)."""
    return {"kind": "occurrence" if isinstance(event, PendingOccurrence) else "status_change",
            "key": key, "id": event.id, "time": iso(event.time)}


_CLOCK = struct.Struct("<dd")  # wake_at, flushed_until; NaN for "none"


def _encode_clock(wake_at, flushed_until) -> bytes:
    return _CLOCK.pack(math.nan if wake_at is None else wake_at, math.nan if flushed_until is None else flushed_until)


def _read_clock(clock) -> list:
    data = clock.read()
    if not data:
        return [None, None]
    return [None if math.isnan(v) else v for v in _CLOCK.unpack(data)]


class BatchProcessGroupsFn(ProcessGroupsFn):
    """The batch variant: a bounded input's watermark jumps to +infinity only after all input is read,
    so per-element wake-ups (FLUSH, CLOCK) could only fire at the end anyway. `process` therefore
    only buffers and arms FINAL, which applies each key's events in one sorted pass through the same
    `_flush`: results are identical, and a batch run touches two state cells per key instead of five,
    which is what its memory grows with (every key's buffer lives until the end)."""

    def process(self, element, events=beam.DoFn.StateParam(ProcessGroupsFn.EVENTS),
                final=beam.DoFn.TimerParam(ProcessGroupsFn.FINAL)):
        key, (record, display) = element
        digests = self._seen_in_bundle.get(key)  # the digests added this bundle, concatenated (compact)
        if digests is None:
            digests = b""
            final.set(_END_OF_TIME)
        events.add(record)
        digest = record_display_digest(record)
        if digest is not None and not _has_digest(digests, digest):
            events.add(display_record(digest, display))
            digests += digest
        self._seen_in_bundle[key] = digests


def _has_digest(digests: bytes, digest: bytes) -> bool:
    size = len(digest)
    return any(digests[i:i + size] == digest for i in range(0, len(digests), size))


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
    `post_process` and `activity` outputs, plus `dead_letter` for events too late to apply (a dict
    of PCollections by table name). `streaming` picks the DoFn variant; the results do not depend
    on it."""

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS,
                 as_of: float = math.inf, allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 streaming: bool = True):
        super().__init__()
        fn_class = ProcessGroupsFn if streaming else BatchProcessGroupsFn
        self._fn = fn_class(config, dedupe_window, as_of, allowed_lateness)

    def expand(self, keyed):
        results = keyed | "ApplyInEventTimeOrder" >> beam.ParDo(self._fn).with_outputs(*TABLES, DEAD_LETTER)
        return {table: results[table] for table in (*TABLES, DEAD_LETTER)}
