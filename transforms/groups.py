"""ProcessGroups: the stateful step that owns each group and applies its events in event-time order."""
from __future__ import annotations

import math

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BytesCoder, FloatCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from issue_platform.config import PlatformConfig
from issue_platform.groups import (DEFAULT_DEDUPE_WINDOW_SECONDS, GROUPS, OCCURRENCES, POST_PROCESS,
                                   STATUS_CHANGES, GroupProcessor, KeyState)
from issue_platform.grouptype import registry
from issue_platform.pending import Display, decode, record_display_digest, sort_key
from transforms.parse import NAMESPACE

TABLES = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS)
_END_OF_TIME = GlobalWindow().max_timestamp()


class ProcessGroupsFn(beam.DoFn):
    """Buffers each key's events until the watermark passes them, then applies them in order.

    Event time is the occurrence's `detection_time`. Input arrives in any order (a batch run gives
    none at all), so events wait in EVENTS until the watermark guarantees nothing earlier can still
    arrive; then FLUSH sorts them and hands them to `GroupProcessor`. Timeline for one key:

        process  t=10:00:05  buffer it; FLUSH set to 10:00:06 (the next whole second)
        process  t=10:00:02  buffer it; FLUSH moved earlier, to 10:00:03
        watermark 10:00:04 -> FLUSH(10:00:03): apply 10:00:02; 10:00:05 stays; FLUSH set to 10:00:06
        watermark 10:00:07 -> FLUSH(10:00:06): apply 10:00:05; buffer empty, no timer
        end of input (the watermark jumps to +inf) -> FINAL: apply whatever is still buffered

    A batch run never advances the watermark before the end, so everything is applied by the FINAL
    timer in one sorted pass per key (FLUSH timers that fire after it find an empty buffer). Per
    key that costs one read of WAKE_AT per bundle, one bag append per event, and one state read and
    write per flush; the state cache is not on the per-element path.

    Attributes:
      EVENTS: compact encoded events waiting for the watermark (issue_platform.pending).
      DISPLAYS: interned display strings the waiting events reference (12-byte digest + JSON).
      KEY_STATE: the encoded `KeyState` (group, noise counter, recent occurrence ids).
      WAKE_AT: when FLUSH is set to fire (so a later event never pushes it later).
      FLUSH: event-time timer at the earliest waiting event, rounded up to a whole second.
      FINAL: event-time timer at the end of time: the final flush of a bounded input.
    """

    EVENTS = BagStateSpec("events", BytesCoder())
    DISPLAYS = BagStateSpec("displays", BytesCoder())
    KEY_STATE = ReadModifyWriteStateSpec("key_state", BytesCoder())
    WAKE_AT = ReadModifyWriteStateSpec("wake_at", FloatCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
    FINAL = TimerSpec("final", TimeDomain.WATERMARK)

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS):
        self._config, self._dedupe_window = config, dedupe_window
        self._counters = {}

    def setup(self):
        self._config.install()

    def start_bundle(self):
        # key -> [wake_at, digests added this bundle]: saves a state read and repeated appends.
        self._seen_in_bundle = {}

    def process(self, element, timestamp=beam.DoFn.TimestampParam,
                events=beam.DoFn.StateParam(EVENTS), displays=beam.DoFn.StateParam(DISPLAYS),
                wake_at=beam.DoFn.StateParam(WAKE_AT), flush=beam.DoFn.TimerParam(FLUSH),
                final=beam.DoFn.TimerParam(FINAL)):
        key, (record, display) = element
        events.add(record)
        seen = self._seen_in_bundle.get(key)
        if seen is None:
            seen = self._seen_in_bundle[key] = [wake_at.read(), set()]
            final.set(_END_OF_TIME)
        digest = record_display_digest(record)
        if digest is not None and digest not in seen[1]:
            displays.add(digest + display)
            seen[1].add(digest)
        wake = float(math.ceil(timestamp.micros / 1e6))
        if seen[0] is None or wake < seen[0]:
            flush.set(Timestamp(wake))
            wake_at.write(wake)
            seen[0] = wake

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), displays=beam.DoFn.StateParam(DISPLAYS),
                 key_state=beam.DoFn.StateParam(KEY_STATE), wake_at=beam.DoFn.StateParam(WAKE_AT),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._flush(key, timestamp.micros / 1e6, events, displays, key_state, wake_at, flush)

    @on_timer(FINAL)
    def on_final(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                 displays=beam.DoFn.StateParam(DISPLAYS), key_state=beam.DoFn.StateParam(KEY_STATE),
                 wake_at=beam.DoFn.StateParam(WAKE_AT), flush=beam.DoFn.TimerParam(FLUSH)):
        yield from self._flush(key, math.inf, events, displays, key_state, wake_at, flush)

    def _flush(self, key, horizon, events, displays, key_state, wake_at, flush):
        """Apply every buffered event at or before `horizon`, in order; keep the rest."""
        pending = sorted(((decode(r), r) for r in events.read()), key=lambda pair: sort_key(pair[0]))
        if not pending:
            return
        interned = {d[:12]: d[12:] for d in displays.read()}
        ready = [event for event, _ in pending if event.time <= horizon]
        waiting = [(event, raw) for event, raw in pending if event.time > horizon]
        if ready:
            state = KeyState.decode(key_state.read())
            processor = GroupProcessor(key, state, _Displays(interned), registry, self._dedupe_window)
            for event in ready:
                for table, row in processor.apply(event):
                    self._count(table, row)
                    yield pvalue.TaggedOutput(table, row)
            for table, row in processor.finish():
                yield pvalue.TaggedOutput(table, row)
            key_state.write(state.encode())
        events.clear()
        displays.clear()
        if waiting:
            referenced = {record_display_digest(raw) for _, raw in waiting}
            for _, raw in waiting:
                events.add(raw)
            for digest in referenced - {None}:
                displays.add(digest + interned[digest])
            wake = float(math.ceil(waiting[0][0].time))
            flush.set(Timestamp(wake))
            wake_at.write(wake)
        else:
            wake_at.clear()

    def _count(self, table, row):
        if table in (OCCURRENCES, STATUS_CHANGES):
            name = f"{table}.{row['outcome']}"
        elif table == POST_PROCESS and row["is_new"]:
            name = "groups.created"
        else:
            return
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Metrics.counter(NAMESPACE, name)
        counter.inc()


class _Displays(dict):
    """Decodes interned displays on first use."""

    def __init__(self, raw: dict):
        super().__init__()
        self._raw = raw

    def __missing__(self, digest):
        value = self[digest] = Display.decode(self._raw[digest])
        return value


class ProcessGroups(beam.PTransform):
    """Keyed, timestamped compact events -> the `groups`, `occurrences`, `status_changes` and
    `post_process` outputs (a dict of PCollections by table name)."""

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS):
        super().__init__()
        self._fn = ProcessGroupsFn(config, dedupe_window)

    def expand(self, keyed):
        results = keyed | "ApplyInEventTimeOrder" >> beam.ParDo(self._fn).with_outputs(*TABLES)
        return {table: results[table] for table in TABLES}


__all__ = ["ProcessGroups", "ProcessGroupsFn", "TABLES"]
