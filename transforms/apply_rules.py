"""ApplyRules: the stateful Beam step that owns each key's events and applies them in event-time order
through the per-key flush (issue_platform.flush.Flusher) and its rules engine."""
from __future__ import annotations

import collections
import math

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import BytesCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from issue_platform.config import PlatformConfig
from issue_platform.flush import DEFAULT_ALLOWED_LATENESS_SECONDS, BundleKey, Clock, Flusher, HeldRecords
from issue_platform.pending import keyed, shard_of, split_keyed
from issue_platform.rules_engine import DEFAULT_DEDUPE_WINDOW_SECONDS
from issue_platform.tables import ACTIVITY, DEAD_LETTER, GROUPS, OCCURRENCES, POST_PROCESS, STATE, STATUS_CHANGES, \
    counter_name
from transforms.read import NAMESPACE, Progress

OUTPUTS = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, STATE, DEAD_LETTER)  # by table name
ROWS_PER_BATCH = 1000  # the most rows of one table in one output element (a hot key's flush yields many)
_END_OF_TIME = GlobalWindow().max_timestamp()


class ApplyRulesFn(beam.DoFn):
    """Buffers each key's events until the watermark passes them, then flushes them through
    `issue_platform.flush.Flusher` (the streaming variant; `BatchApplyRulesFn` below differs only in
    what `process` arms and in its cells).

    Event time is the occurrence's `detection_time` (a status change's `update_date`). Input arrives
    in any order (a batch run gives none at all), so events wait in EVENTS until the watermark
    guarantees nothing earlier can still arrive; then FLUSH hands them to the flusher (its module
    docstring has a key's timeline). A stream also writes a key's snapshot whenever a flush or a late
    event changed its state.

    Per key that costs one small state read per bundle, one bag append per event, and one state read
    and write per flush; the state cache is not on the per-element path.

    Attributes:
      EVENTS: compact encoded events waiting for the watermark, and the interned display strings
        they reference (issue_platform.pending: event and display records).
      KEY_STATE: the encoded `KeyState` (group, noise counter, recent occurrence ids).
      CLOCK: the encoded `issue_platform.flush.Clock` (wake_at, flushed_until, revision).
      FLUSH: event-time timer at the earliest event buffered since (rounded up to a whole second),
        the next transition, or after a flush the last of the events still waiting within a minute
        of the first and behind the wall clock (`Flusher._next_round`), whichever comes first.
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
                 bounded: bool = True, flush_seconds: float = 1.0, version_floor: int = 0):
        self._config = config
        self._settings = dict(dedupe_window=dedupe_window, as_of=as_of, allowed_lateness=allowed_lateness,
                              bounded=bounded, flush_seconds=flush_seconds, version_floor=version_floor)
        self._bounded = bounded  # only a bounded input has an end of time to arm FINAL for
        self._counters = {}

    def setup(self):
        self._flusher = Flusher(self._config.registry(), lambda name: self._counter(name).inc(), **self._settings)

    def start_bundle(self):
        self._seen_in_bundle = {}  # key -> BundleKey: saves state reads and appends

    def process(self, element, timestamp=beam.DoFn.TimestampParam, events=beam.DoFn.StateParam(EVENTS),
                key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                flush=beam.DoFn.TimerParam(FLUSH), final=beam.DoFn.TimerParam(FINAL)):
        key, (record, display) = element
        cells = _StateCells(events, key_state, clock, flush)
        seen = self._seen_in_bundle.get(key)
        if seen is None:
            seen = self._seen_in_bundle[key] = BundleKey(cells.clock())
            if self._bounded:
                final.set(_END_OF_TIME)
        yield from self._emit(self._flusher.take(key, record, display, timestamp.micros / 1e6, cells, seen))

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                 events=beam.DoFn.StateParam(EVENTS), key_state=beam.DoFn.StateParam(KEY_STATE),
                 clock=beam.DoFn.StateParam(CLOCK), flush=beam.DoFn.TimerParam(FLUSH)):
        cells = _StateCells(events, key_state, clock, flush)
        Progress.applied()
        yield from self._emit(self._flusher.flush(key, timestamp.micros / 1e6, cells))

    @on_timer(FINAL)
    def on_final(self, key=beam.DoFn.KeyParam, events=beam.DoFn.StateParam(EVENTS),
                 key_state=beam.DoFn.StateParam(KEY_STATE), clock=beam.DoFn.StateParam(CLOCK),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        Progress.applied()
        yield from self._emit(self._flusher.flush(key, math.inf, _StateCells(events, key_state, clock, flush)))

    def _emit(self, rows):
        """(table, row) pairs -> batches (lists) of at most ROWS_PER_BATCH rows of one table, each row
        counted: a table part is a PCollection of row batches (see `ApplyRules`)."""
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


class _StateCells:
    """A key's Beam state cells and FLUSH timer as `issue_platform.flush.KeyCells`."""

    __slots__ = ("_events", "_state", "_clock", "_timer")

    def __init__(self, events, key_state, clock, timer):
        self._events, self._state, self._clock, self._timer = events, key_state, clock, timer

    def events(self):
        return self._events.read()

    def add_event(self, record):
        self._events.add(record)

    def clear_events(self):
        self._events.clear()

    def state(self):
        return self._state.read()

    def write_state(self, encoded):
        if encoded is None:
            self._state.clear()
        else:
            self._state.write(encoded)

    def clock(self):
        return Clock.decode(self._clock.read())

    def write_clock(self, clock):
        if clock is None:
            self._clock.clear()
        else:
            self._clock.write(clock.encode())

    def wake_at(self, at):
        self._timer.set(Timestamp(at))


class BatchApplyRulesFn(ApplyRulesFn):
    """The batch variant: a bounded input's watermark jumps to +infinity only after all input is read,
    so per-element wake-ups (FLUSH, CLOCK) could only fire at the end anyway. `process` therefore
    only buffers and arms FINAL, which flushes each key's events once, in one sorted pass through the
    same `Flusher.flush`: results are identical.

    Its state is keyed by shard (issue_platform.pending.shard_of), not by group key: each element is a
    key's batch record (or a resumed key's seed) after its group key, and FINAL flushes the shard's
    keys one after another. A runner keeps objects per state cell and timer until the bundle that
    touched them commits (the SDK's state objects and keys, the runner's copies, each timer's
    encoding), and a batch run touches every key in one bundle and fires every FINAL in another:
    per shard, that is paid once for the keys it holds instead of once per key."""

    FINAL = TimerSpec("final", TimeDomain.WATERMARK)  # its own spec: a spec has one callback

    def process(self, element, events=beam.DoFn.StateParam(ApplyRulesFn.EVENTS),
                final=beam.DoFn.TimerParam(FINAL)):
        shard, value = element
        if shard not in self._seen_in_bundle:  # a shard gets many records per bundle; every timer set is
            self._seen_in_bundle[shard] = None  # encoded and copied until the runner dedupes it
            final.set(_END_OF_TIME)
        events.add(value)

    def finish_bundle(self):
        self._seen_in_bundle = {}  # not kept while the bundle commits

    @on_timer(FINAL)
    def on_final(self, events=beam.DoFn.StateParam(ApplyRulesFn.EVENTS)):
        # KEY_STATE and CLOCK are never written in a batch run (a resumed key's state is a seed record in
        # EVENTS), so the flush does not open them: each key's records are its cells (HeldRecords).
        held = {}
        for value in events.read():
            key, record = split_keyed(value)
            held.setdefault(key, []).append(record)
        events.clear()
        yield from self._emit(self._flush_each(held))  # row batches span the shard's keys

    def _flush_each(self, held):
        for key in sorted(held):  # each key's records are dropped once it is flushed
            Progress.applied()
            yield from self._flusher.flush(key, math.inf, HeldRecords(held.pop(key)))


def sharded_seed(element):
    """A resumed key's `(key, (seed, b""))` as the batch step takes it: `(shard, keyed(key, seed))`."""
    key, (seed, _) = element
    return shard_of(key), keyed(key, seed)


class ApplyRules(beam.PTransform):
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
    flushes (and fewer intermediate snapshots). `version_floor`: see `RulesEngine`."""

    def __init__(self, config: PlatformConfig, dedupe_window: float = DEFAULT_DEDUPE_WINDOW_SECONDS,
                 as_of: float = math.inf, allowed_lateness: float = DEFAULT_ALLOWED_LATENESS_SECONDS,
                 streaming: bool = True, bounded: bool = True, flush_seconds: float = 1.0, version_floor: int = 0):
        super().__init__()
        fn_class = ApplyRulesFn if streaming else BatchApplyRulesFn
        self._fn = fn_class(config, dedupe_window, as_of, allowed_lateness, bounded or not streaming, flush_seconds,
                            version_floor)

    def expand(self, keyed):
        results = keyed | "ApplyInEventTimeOrder" >> beam.ParDo(self._fn).with_outputs(*OUTPUTS)
        return {table: results[table] for table in OUTPUTS}
