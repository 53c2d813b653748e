"""Every dead-letter row is built here: a rejected record, a step of ours that failed on one, an event
too late to apply, a row a sink could not write. Plain Python (the Beam steps count and route them).

A row keeps the stage, the stable reason code (issue_platform.outcomes), the field, a one-line
message and the raw record (capped at `max_bytes` characters), so that nothing is lost silently.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import orjson

from issue_platform import outcomes
from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES, Rejected

SUMMARY_BYTES = 1024  # a late event's payload is its summary (kind, key, id, time)
_LOGGER = logging.getLogger(__name__)


def dead_letter_row(rejected: Rejected, raw, max_bytes: int, source: Optional[str] = None) -> dict:
    """The dead-letter row of a `validation.Rejected` (stage, reason, field: null when no field is at
    fault, message) and the raw record (bytes, str or dict), capped at `max_bytes` characters;
    `source`: where the record can be found again: a file's `FILE:LINE` (the Avro record's number),
    a live message's coordinates (`kafka:TOPIC:PARTITION:OFFSET`, `pubsub:SUBSCRIPTION:MESSAGE_ID`)."""
    if isinstance(raw, dict):
        raw = orjson.dumps(raw, default=str)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {"stage": rejected.stage, "reason": rejected.reason, "field": rejected.field or None,
            "error": rejected.message, "payload": text[:max_bytes], "payload_truncated": len(text) > max_bytes,
            "source": source}


def internal_error_row(stage: str, exc: Exception, payload, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                       source: Optional[str] = None) -> dict:
    """The dead-letter row for an element a step of ours failed on: a bug must not stop the pipeline
    (a stream would retry the element forever). The log names the exception type, never the payload."""
    _LOGGER.warning("%s step failed unexpectedly on one element: %s", stage, type(exc).__name__)
    if dataclasses.is_dataclass(payload):
        try:
            payload = orjson.dumps(dataclasses.asdict(payload), default=str, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            payload = orjson.dumps({"id": payload.id})
    rejected = Rejected(outcomes.INTERNAL_ERROR, "", f"internal error in the {stage} step: {type(exc).__name__}",
                        stage)
    return dead_letter_row(rejected, payload, max_bytes, source)


def late_row(summary: dict, behind: float, allowed_lateness: float) -> dict:
    """An event `behind` seconds behind its key's clock, beyond the allowed lateness: its summary only
    (the raw payload is long gone by the stateful step)."""
    late = Rejected(outcomes.LATE, "detection_time", f"{behind:.0f}s behind the key's clock; "
                    f"allowed lateness {allowed_lateness:.0f}s", stage=outcomes.STAGE_GROUP)
    return dead_letter_row(late, orjson.dumps(summary), SUMMARY_BYTES)


def sink_rejected_row(table: str, field: str, message: str, row: dict, max_bytes: int) -> dict:
    """A row of `table` that BigQuery rejects (or would): the row itself is the payload."""
    rejected = Rejected(outcomes.BIGQUERY_REJECTED, field, f"{table}: {message}", stage=outcomes.STAGE_SINK)
    return dead_letter_row(rejected, {"table": table, "row": row}, max_bytes)
