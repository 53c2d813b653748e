"""The stateless steps before a group's stateful step: parse and validate (ParsePayloads), the ingest
gate (GateIngest) and keying; `Ingest` runs the three as one step, which is what the pipeline uses."""
from __future__ import annotations

import time
from typing import Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from issue_platform import outcomes
from issue_platform.config import PlatformConfig
from issue_platform.config_cache import CACHE as CONFIG_CACHE
from issue_platform.dead_letters import dead_letter_row, internal_error_row
from issue_platform.fingerprint import group_key
from issue_platform.ingest_gate import IngestGate, ingest_disabled_row
from issue_platform.tables import DEAD_LETTER, EVIDENCE, OCCURRENCES, PART_GATE, PART_KEY, PART_PARSE, evidence_row
from issue_platform.pending import (DIGEST_SIZE, add_to_batch, display_record, encode_occurrence,
                                    encode_status_change, keyed, new_batch, record_display_digest, sealed_batch,
                                    shard_of)
from issue_platform.validation import (DEFAULT_MAX_PAYLOAD_BYTES, Occurrence, PayloadValidator, Rejected,
                                       StatusChange, parse)
from transforms.read import NAMESPACE, Lines, Progress, SourcedPayload, open_config

EVENT_TIMES = "events.time"  # a distribution of the valid events' times (unix seconds)


def _counter(group: str, name: str):
    return Metrics.counter(NAMESPACE, f"{group}.{name}")


def _internal_error(stage: str, exc: Exception, payload, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                    source: Optional[str] = None):
    """`internal_error_row` as this module's dead-letter output, counted."""
    _counter("dead_letter", outcomes.INTERNAL_ERROR).inc()
    return pvalue.TaggedOutput(DEAD_LETTER, internal_error_row(stage, exc, payload, max_bytes, source))


class _ParseFn(beam.DoFn):
    """Raw payload -> Occurrence / StatusChange, or a dead-letter row. Never raises on input. Every
    element is a record (blank JSON lines never get here: the reader counts them)."""

    def __init__(self, config: PlatformConfig, max_bytes: int, validator: str, progress: bool):
        self._config, self._max_bytes, self._mode, self._progress = config, max_bytes, validator, progress
        self._records_in = _counter("records", "in")

    def setup(self):
        self._validator = PayloadValidator(self._mode, self._config.registry())

    def process(self, raw):
        records = self.take_in(raw)
        for i, one in enumerate(records):
            yield with_source(self.parse_one(one), records, i)

    def take_in(self, raw) -> Sequence:
        """The records of one input element (a `Lines` batch or one payload), counted as taken in."""
        records = raw if isinstance(raw, Lines) else (raw,)
        self._records_in.inc(len(records))
        Progress.tick(self._progress, len(records))
        return records

    def parse_one(self, raw):
        """One raw payload -> its validated payload, or its dead-letter row as a TaggedOutput."""
        source = None
        if isinstance(raw, SourcedPayload):  # where it came from goes with any dead letter
            raw, source, problem = raw
            if problem is not None:  # the source found the message itself wrong (e.g. its event-time attribute)
                _counter("dead_letter", problem[0]).inc()
                rejected = Rejected(*problem, stage=outcomes.STAGE_PARSE)
                return pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(rejected, raw, self._max_bytes, source))
        try:
            return self._validator.validate(parse(raw, self._max_bytes))
        except Rejected as rejected:
            _counter("dead_letter", rejected.reason).inc()
            return pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(rejected, raw, self._max_bytes, source))
        except Exception as exc:
            return _internal_error(outcomes.STAGE_PARSE, exc, raw, self._max_bytes, source)


def with_source(parsed, records: Sequence, i: int):
    """`parsed` (what `parse_one` gave record `i` of `records`), its dead-letter row naming the record's
    file and line when `records` are `Lines` of a file."""
    if isinstance(parsed, pvalue.TaggedOutput) and isinstance(records, Lines):
        parsed.value["source"] = records.source(i)
    return parsed


class ParsePayloads(beam.PTransform):
    """Parses and validates payloads. Outputs: main (validated payloads) and `dead_letter`.
    `progress`: report the records taken in on stderr (see `Progress`)."""

    def __init__(self, config: PlatformConfig, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 validator: str = "fast", progress: bool = False):
        super().__init__()
        self._fn = _ParseFn(config, max_bytes, validator, progress)

    def expand(self, raw):
        return raw | "Validate" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="valid")


NO_CONFIG_UPDATES = ()  # `_GateIngestFn.admit`'s versions when there is no side input: the constructor's config


class _GateIngestFn(beam.DoFn):
    """Decides each payload's `Admission` from the project's settings and flags in the config side
    input (every version seen so far; the newest `loaded_at` wins), or, with `refresh_seconds`,
    from the process-wide config cache, which re-reads `--config` when its copy is older than that.
    Flag results are cached per config version, type and project."""

    def __init__(self, config: PlatformConfig, refresh_seconds: Optional[float] = None):
        self._config, self._refresh_seconds = config, refresh_seconds
        self._dropped = _counter("occurrences", outcomes.INGEST_DISABLED)

    def setup(self):
        self._gate, self._versions = IngestGate(self._config, self._config.registry()), None

    def process(self, payload, versions: list):
        yield self.admit(payload, versions)

    def admit(self, payload, versions: list):
        """(payload, Admission), or the payload's `occurrences` or dead-letter row as a TaggedOutput."""
        try:
            return self._admit(payload, versions)
        except Exception as exc:
            return _internal_error(outcomes.STAGE_GATE, exc, payload)

    def _admit(self, payload, versions: list):
        if versions is not self._versions:  # a new side-input value: pick the newest config
            self._versions = versions
            self._gate.use(max(versions, key=lambda c: c.loaded_at, default=self._config))
        if self._refresh_seconds:
            self._refresh()
        admission = self._gate.admit(payload)
        if admission is not None:
            return payload, admission
        self._dropped.inc()
        return pvalue.TaggedOutput(OCCURRENCES, ingest_disabled_row(payload))

    def _refresh(self):
        config, outcome = CONFIG_CACHE.get(self._gate.config, self._refresh_seconds, open_config, _file_stamp)
        if outcome:
            _counter("config", outcome).inc()
        self._gate.use(config)


def _file_stamp(path: str) -> tuple[float, int]:
    """(mtime, size) of any Beam filesystem path."""
    [metadata] = FileSystems.match([path], limits=[1])[0].metadata_list
    return metadata.last_updated_in_seconds, metadata.size_in_bytes


class GateIngest(beam.PTransform):
    """Sentry's `allow_ingest` (occurrences of types whose ingest flag is off for the project's
    organization become `ingest_disabled` rows in output `occurrences`), plus the post-process and
    visible flags and the project's resolve_age for the stateful step. Main output:
    `(payload, Admission)`. `config_updates` is a PCollection of `PlatformConfig` versions (one
    element in batch; a refreshing one in a stream, where the newest `loaded_at` wins); without it
    the constructor's config is used, read once, or re-read every `refresh_seconds` (counters
    `config.reloaded`, `config.refused`)."""

    def __init__(self, config: PlatformConfig, config_updates: Optional[beam.PCollection] = None,
                 refresh_seconds: Optional[float] = None):
        super().__init__()
        self._config, self._updates, self._refresh_seconds = config, config_updates, refresh_seconds

    def expand(self, payloads):
        updates = self._updates
        if updates is None:
            updates = payloads.pipeline | "Config" >> beam.Create([self._config])
        return payloads | "AllowIngest" >> beam.ParDo(
            _GateIngestFn(self._config, self._refresh_seconds), beam.pvalue.AsList(updates)).with_outputs(
                OCCURRENCES, DEAD_LETTER, main="allowed")


KeyedRecord = Tuple[str, Tuple[bytes, bytes]]


class _KeyByGroup:
    """Keys each payload by `"<project_id>:<md5(fingerprint[0])>"`, stamps its event time and encodes
    it compactly for the group's buffer. Event time: `detection_time`; a status change's
    `update_date`, else `received_at` when given (file replays pass their as-of time), else the
    time we received it. Each occurrence's evidence and event go to output `evidence`."""

    def __init__(self, received_at: Optional[float]):
        self._received_at = received_at
        self._times = Metrics.distribution(NAMESPACE, EVENT_TIMES)  # its min warns of an --as_of before all data

    def key(self, admitted):
        """(keyed event, evidence row) for an occurrence, (keyed event, None) for a status change, or its
        dead-letter row as a TaggedOutput: nothing half-done. A keyed event is the tuple (key, record,
        display, event time)."""
        payload, admission = admitted
        try:
            return self._encode(payload, admission)
        except Exception as exc:
            return _internal_error(outcomes.STAGE_KEY, exc, payload)

    def _encode(self, payload, admission) -> tuple:
        key = group_key(payload.project_id, payload.fingerprint[0])
        if isinstance(payload, Occurrence):
            record, _, display = encode_occurrence(payload, admission)
            self._times.update(int(payload.detection_time))
            return (key, record, display, payload.detection_time), evidence_row(payload)
        change: StatusChange = payload
        received_at = self._received_at if self._received_at is not None else time.time()
        record = encode_status_change(change, received_at, admission)
        if change.update_date is not None:
            self._times.update(int(change.update_date))
        return (key, record, b"", change.update_date or received_at), None


class _IngestFn(beam.DoFn):
    """ParsePayloads, GateIngest and KeyByGroup as one step: each payload goes through the three
    steps' own per-record code, and every output keeps the table part of the step that made it. The
    rows of one input element (a batch of `Lines`) leave as one list per output (table part), so
    that the steps after it pay their per-element cost per batch.

    With `per_key` (a batch run), the keyed records of a bundle leave as one batch record per key when
    the bundle finishes (issue_platform.pending.new_batch: the events, and the display records they
    reference that this bundle has not sent for the key yet), or earlier once the bundle holds
    MAX_BUFFERED_BYTES, each as `(shard, keyed(key, batch record))` (issue_platform.pending.shard_of).
    The stateful step keeps what it receives until its own bundle commits, so one compact object per
    key and bundle, and some runner objects per shard, is what a batch run's memory grows with."""

    MAX_BUFFERED_BYTES = 16 << 20

    def __init__(self, config: PlatformConfig, max_bytes: int, validator: str, progress: bool,
                 refresh_seconds: Optional[float], received_at: Optional[float], per_key: bool):
        self._parse = _ParseFn(config, max_bytes, validator, progress)
        self._gate = _GateIngestFn(config, refresh_seconds)
        self._key = _KeyByGroup(received_at)
        self._per_key = per_key

    def setup(self):
        self._parse.setup()
        self._gate.setup()

    def start_bundle(self):
        self._digests = {}  # key -> the display digests sent this bundle, concatenated (compact)
        self._batches, self._buffered = {}, 0  # key -> its batch record so far; their total size

    def process(self, raw):
        rows = {}  # output tag -> the rows this element produced for it
        batches = self._batches if self._per_key else None
        records = self._parse.take_in(raw)
        for i, one in enumerate(records):
            payload = self._parse.parse_one(one)
            if isinstance(payload, pvalue.TaggedOutput):
                rows.setdefault(PART_PARSE, []).append(with_source(payload, records, i).value)
                continue
            admitted = self._gate.admit(payload, NO_CONFIG_UPDATES)
            if isinstance(admitted, pvalue.TaggedOutput):
                rows.setdefault(OCCURRENCES if admitted.tag == OCCURRENCES else PART_GATE, []).append(admitted.value)
                continue
            keyed = self._key.key(admitted)
            if isinstance(keyed, pvalue.TaggedOutput):
                rows.setdefault(PART_KEY, []).append(keyed.value)
                continue
            (key, record, display, at), evidence = keyed
            if evidence is not None:
                rows.setdefault(EVIDENCE, []).append(evidence)
            if batches is None:
                yield TimestampedValue((key, (record, display)), at)
            else:  # the batch stateful step ignores event times: no timestamp is built
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = new_batch()
                self._buffered += add_to_batch(batch, record)
                if display:
                    self._send_display(key, record, display, batch)
        for tag, batch in rows.items():
            yield pvalue.TaggedOutput(tag, batch)
        if self._buffered >= self.MAX_BUFFERED_BYTES:
            yield from self._batches_out()

    def finish_bundle(self):
        self._digests = {}  # not kept while the stateful step holds what this bundle sends it
        for shard, value in self._batches_out():  # the batch stateful step runs in the global window
            yield WindowedValue((shard, value), MIN_TIMESTAMP, (GlobalWindow(),))

    def _batches_out(self):
        batches, self._batches, self._buffered = self._batches, {}, 0
        while batches:
            key, batch = batches.popitem()
            yield shard_of(key), keyed(key, sealed_batch(batch))

    def _send_display(self, key, record, display, batch):
        """Adds the display record an occurrence references to its key's batch, once per key and bundle
        (the stateful step interns it; every bundle that sends a key events also sends their displays)."""
        digest = record_display_digest(record)
        sent = self._digests.get(key, b"")
        at = sent.find(digest)
        while at > 0 and at % DIGEST_SIZE:  # found across two digests: look on
            at = sent.find(digest, at + 1)
        if at == -1:
            self._buffered += add_to_batch(batch, display_record(digest, display))
            self._digests[key] = sent + digest


class Ingest(beam.PTransform):
    """ParsePayloads | GateIngest | KeyByGroup fused into one step (the same code per record, one
    runner step instead of three). Outputs: `keyed` (per shard, key and bundle with `per_key`), and
    as batches of rows (a list per input element): `occurrences` (ingest disabled), `evidence`, and
    the dead letters of each stage under `issue_platform.tables.PART_PARSE`, `PART_GATE` and `PART_KEY`.
    The gate decides by `config`, re-read every `refresh_seconds` when given (see `GateIngest`).

    It takes no side input (GateIngest's config updates): on Beam 2.62's Flink runner a step with a
    side input cannot be checkpointed once the side input has arrived (its operator state is written
    with the view's windowed coder: ClassCastException, docs/flink-streaming.md), and a stream's
    records wait in operator state until it arrives."""

    def __init__(self, config: PlatformConfig, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, validator: str = "fast",
                 progress: bool = False, refresh_seconds: Optional[float] = None,
                 received_at: Optional[float] = None, per_key: bool = False):
        super().__init__()
        self._per_key = per_key
        self._fn = _IngestFn(config, max_bytes, validator, progress, refresh_seconds, received_at, per_key)

    def expand(self, raw):
        keyed_type = Tuple[int, bytes] if self._per_key else KeyedRecord
        return raw | "ParseGateAndKey" >> beam.ParDo(self._fn).with_output_types(
            keyed_type).with_outputs(OCCURRENCES, EVIDENCE, PART_PARSE, PART_GATE, PART_KEY, main="keyed")


__all__ = ["SourcedPayload", "ParsePayloads", "GateIngest", "Ingest", "KeyedRecord"]
