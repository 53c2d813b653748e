"""ParsePayloads, GateIngest and KeyByGroup: the stateless steps before a group's stateful step."""
from __future__ import annotations

import logging
import time
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from issue_platform import outcomes as R
from issue_platform.config import PlatformConfig
from issue_platform.config_cache import CACHE as CONFIG_CACHE
from issue_platform.fingerprint import group_key
from issue_platform.tables import DEAD_LETTER, EVIDENCE, OCCURRENCES, dead_letter_row, evidence_row, occurrence_row
from issue_platform.pending import Admission, Display, encode_occurrence, encode_status_change
from issue_platform.validation import (DEFAULT_MAX_PAYLOAD_BYTES, Occurrence, PayloadValidator, Rejected,
                                       StatusChange, parse)

_LOGGER = logging.getLogger(__name__)
NAMESPACE = "issue_platform"


def _counter(group: str, name: str):
    return Metrics.counter(NAMESPACE, f"{group}.{name}")


class SourcedPayload(NamedTuple):
    """A raw payload from a live source and where it came from (`kafka:TOPIC:PARTITION:OFFSET` or
    `pubsub:SUBSCRIPTION:MESSAGE_ID`), so that its dead-letter row can name it."""
    payload: bytes
    source: str


class _ParseFn(beam.DoFn):
    """Raw payload -> Occurrence / StatusChange, or a dead-letter row. Never raises on input."""

    def __init__(self, config: PlatformConfig, max_bytes: int, validator: str):
        self._config, self._max_bytes, self._mode = config, max_bytes, validator
        self._records_in = _counter("records", "in")
        self._blank = _counter("records", "blank_lines")

    def setup(self):
        self._validator = PayloadValidator(self._mode, self._config.registry())

    def process(self, raw):
        source = None
        if isinstance(raw, SourcedPayload):
            raw, source = raw
        if isinstance(raw, (bytes, str)) and not raw.strip():
            self._blank.inc()
            return
        self._records_in.inc()
        try:
            yield self._validator.validate(parse(raw, self._max_bytes))
        except Rejected as rejected:
            _counter("dead_letter", rejected.reason).inc()
            yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(rejected, raw, self._max_bytes, source))
        except Exception as exc:  # a bug of ours must not stall the stream: dead-letter and count it
            _LOGGER.warning("validation failed unexpectedly: %s", type(exc).__name__)  # never the payload
            rejected = Rejected(R.INTERNAL_ERROR, "", f"internal error: {type(exc).__name__}")
            _counter("dead_letter", R.INTERNAL_ERROR).inc()
            yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(rejected, raw, self._max_bytes, source))


class ParsePayloads(beam.PTransform):
    """Parses and validates payloads. Outputs: main (validated payloads) and `dead_letter`."""

    def __init__(self, config: PlatformConfig, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 validator: str = "fast"):
        super().__init__()
        self._fn = _ParseFn(config, max_bytes, validator)

    def expand(self, raw):
        return raw | "Validate" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="valid")


def _ingest_disabled_row(occ: Occurrence) -> dict:
    return occurrence_row(
        occurrence_id=occ.id, project_id=occ.project_id, fingerprint=occ.fingerprint, type_id=occ.type,
        event_id=occ.event_id, display=Display(occ.issue_title, occ.subtitle, occ.culprit, occ.level,
                                               occ.environment),
        priority=occ.priority if occ.priority is not None else occ.initial_priority,
        resource_id=occ.resource_id, detection_time=occ.detection_time, group_id=None,
        outcome=R.INGEST_DISABLED)


class _GateIngestFn(beam.DoFn):
    """Decides each payload's `Admission` from the project's settings and flags in the config side
    input (every version seen so far; the newest `loaded_at` wins), or, with `refresh_seconds`,
    from the process-wide config cache, which re-reads `--config` when its copy is older than that.
    Flag results are cached per config version, type and project."""

    def __init__(self, config: PlatformConfig, refresh_seconds: Optional[float] = None):
        self._config, self._refresh_seconds = config, refresh_seconds
        self._dropped = _counter("occurrences", R.INGEST_DISABLED)

    def setup(self):
        self._types = self._config.registry()
        self._cache, self._versions, self._current = {}, None, self._config

    def process(self, payload, versions: list):
        if versions is not self._versions:  # a new side-input value: pick the newest config
            self._versions, self._cache = versions, {}
            self._current = max(versions, key=lambda c: c.loaded_at, default=self._config)
        if self._refresh_seconds:
            self._refresh()
        config = self._current
        project = config.project(payload.project_id)
        if not isinstance(payload, Occurrence):  # status changes are never gated (as in Sentry)
            yield payload, Admission(resolve_age_hours=project.resolve_age_hours)
            return
        cache_key = (payload.type, payload.project_id)
        admission = self._cache.get(cache_key)
        if admission is None:
            gtype = self._types.get_by_type_id(payload.type)
            admission = self._cache[cache_key] = (
                config.allows(gtype, "ingest", project.project_id),
                Admission(config.allows(gtype, "post_process", project.project_id),
                          config.allows(gtype, "visible", project.project_id), project.resolve_age_hours))
        if admission[0]:
            yield payload, admission[1]
        else:
            self._dropped.inc()
            yield pvalue.TaggedOutput(OCCURRENCES, _ingest_disabled_row(payload))


    def _refresh(self):
        config, outcome = CONFIG_CACHE.get(self._current, self._refresh_seconds, FileSystems.open, _file_stamp)
        if outcome:
            _counter("config", outcome).inc()
        if config is not self._current:
            self._current, self._cache = config, {}


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
            _GateIngestFn(self._config, self._refresh_seconds), beam.pvalue.AsList(updates)).with_outputs(OCCURRENCES, main="allowed")


KeyedRecord = Tuple[str, Tuple[bytes, bytes]]


@beam.typehints.with_output_types(KeyedRecord)
class _KeyByGroupFn(beam.DoFn):
    def __init__(self, received_at: Optional[float]):
        self._received_at = received_at

    def process(self, admitted):
        payload, admission = admitted
        key = group_key(payload.project_id, payload.fingerprint[0])
        if isinstance(payload, Occurrence):
            record, _, display = encode_occurrence(payload, admission)
            yield pvalue.TaggedOutput(EVIDENCE, evidence_row(payload))
            yield TimestampedValue((key, (record, display)), payload.detection_time)
        else:
            change: StatusChange = payload
            received_at = self._received_at if self._received_at is not None else time.time()
            record = encode_status_change(change, received_at, admission)
            yield TimestampedValue((key, (record, b"")), change.update_date or received_at)


class KeyByGroup(beam.PTransform):
    """Keys each payload by `"<project_id>:<md5(fingerprint[0])>"`, stamps its event time and encodes
    it compactly for the group's buffer. Event time: `detection_time`; a status change's
    `update_date`, else `received_at` when given (file replays pass their as-of time), else the
    time we received it. Output `evidence` carries each occurrence's evidence and event."""

    def __init__(self, received_at: Optional[float] = None):
        super().__init__()
        self._received_at = received_at

    def expand(self, admitted):
        return admitted | "EncodeAndKey" >> beam.ParDo(_KeyByGroupFn(self._received_at)).with_outputs(
            EVIDENCE, main="keyed")


__all__ = ["SourcedPayload", "ParsePayloads", "GateIngest", "KeyByGroup", "KeyedRecord"]
