"""ParsePayloads, GateIngest and KeyByGroup: the stateless steps before a group's stateful step."""
from __future__ import annotations

import time
from typing import Tuple

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from issue_platform import outcomes as R
from issue_platform.config import PlatformConfig
from issue_platform.fingerprint import group_key
from issue_platform.groups import OCCURRENCES, occurrence_row
from issue_platform.grouptype import registry
from issue_platform.pending import Display, encode_occurrence, encode_status_change
from issue_platform.validation import (DEFAULT_MAX_PAYLOAD_BYTES, Occurrence, PayloadValidator, Rejected,
                                       StatusChange, parse)

DEAD_LETTER, EVIDENCE = "dead_letter", "evidence"
NAMESPACE = "issue_platform"


def _counter(group: str, name: str):
    return Metrics.counter(NAMESPACE, f"{group}.{name}")


def dead_letter_row(rejected: Rejected, raw, max_bytes: int) -> dict:
    """The dead-letter row: stage, reason, field, message and the raw payload (capped)."""
    if isinstance(raw, dict):
        raw = orjson.dumps(raw, default=str)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {"stage": rejected.stage, "reason": rejected.reason, "field": rejected.field,
            "error": rejected.message, "payload": text[:max_bytes], "payload_truncated": len(text) > max_bytes}


class _ParseFn(beam.DoFn):
    """Raw payload -> Occurrence / StatusChange, or a dead-letter row. Never raises on input."""

    def __init__(self, config: PlatformConfig, max_bytes: int, validator: str):
        self._config, self._max_bytes, self._mode = config, max_bytes, validator
        self._records_in = _counter("records", "in")
        self._blank = _counter("records", "blank_lines")

    def setup(self):
        self._config.install()
        self._validator = PayloadValidator(self._mode, registry)

    def process(self, raw):
        if isinstance(raw, (bytes, str)) and not raw.strip():
            self._blank.inc()
            return
        self._records_in.inc()
        try:
            yield self._validator.validate(parse(raw, self._max_bytes))
        except Rejected as rejected:
            _counter("dead_letter", rejected.reason).inc()
            yield pvalue.TaggedOutput(DEAD_LETTER, dead_letter_row(rejected, raw, self._max_bytes))


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
    def __init__(self, config: PlatformConfig):
        self._config = config
        self._dropped = _counter("occurrences", R.INGEST_DISABLED)

    def setup(self):
        self._config.install()

    def process(self, payload):
        if isinstance(payload, Occurrence) and not registry.get_by_type_id(payload.type).released:
            # Unreleased types are off until their ingest flag is on (flag configuration: issue #4).
            self._dropped.inc()
            yield pvalue.TaggedOutput(OCCURRENCES, _ingest_disabled_row(payload))
        else:
            yield payload


class GateIngest(beam.PTransform):
    """Sentry's `allow_ingest`: occurrences of types not allowed to ingest become `ingest_disabled`
    rows (output `occurrences`); status changes are never gated."""

    def __init__(self, config: PlatformConfig):
        super().__init__()
        self._config = config

    def expand(self, payloads):
        return payloads | "AllowIngest" >> beam.ParDo(_GateIngestFn(self._config)).with_outputs(
            OCCURRENCES, main="allowed")


KeyedRecord = Tuple[str, Tuple[bytes, bytes]]


@beam.typehints.with_output_types(KeyedRecord)
class _KeyByGroupFn(beam.DoFn):
    def process(self, payload):
        key = group_key(payload.project_id, payload.fingerprint[0])
        if isinstance(payload, Occurrence):
            record, _, display = encode_occurrence(payload)
            yield pvalue.TaggedOutput(EVIDENCE, {
                "occurrence_id": payload.id, "project_id": payload.project_id,
                "evidence_data": payload.evidence_data, "evidence_display": payload.evidence_display,
                "event": payload.event})
            yield TimestampedValue((key, (record, display)), payload.detection_time)
        else:
            change: StatusChange = payload
            received_at = time.time()
            record = encode_status_change(change, received_at)
            yield TimestampedValue((key, (record, b"")), change.update_date or received_at)


class KeyByGroup(beam.PTransform):
    """Keys each payload by `"<project_id>:<md5(fingerprint[0])>"`, stamps its event time
    (`detection_time`; a status change's `update_date`, else the time we received it) and encodes
    it compactly for the group's buffer. Output `evidence` carries each occurrence's evidence."""

    def expand(self, payloads):
        return (payloads | "EncodeAndKey" >> beam.ParDo(_KeyByGroupFn()).with_outputs(EVIDENCE, main="keyed"))


__all__ = ["ParsePayloads", "GateIngest", "KeyByGroup", "DEAD_LETTER", "EVIDENCE", "KeyedRecord"]
