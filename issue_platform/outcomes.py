"""Stable outcome and dead-letter reason codes (snake_case; never renamed)."""

# Occurrence outcomes (the `outcome` column of the occurrences table).
GROUPED = "grouped"
NOISE_SUPPRESSED = "noise_suppressed"
INGEST_DISABLED = "ingest_disabled"
TYPE_MISMATCH = "type_mismatch"
DUPLICATE = "duplicate"

# Dead-letter reasons.
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
PAYLOAD_TOO_LARGE = "payload_too_large"
TOO_DEEP = "too_deep"
MISSING_FIELD = "missing_field"
INVALID_TYPE = "invalid_type"
INVALID_VALUE = "invalid_value"
EMPTY_FINGERPRINT = "empty_fingerprint"
INVALID_FINGERPRINT = "invalid_fingerprint"
INVALID_UUID = "invalid_uuid"
UNKNOWN_GROUP_TYPE = "unknown_group_type"
PROJECT_MISMATCH = "project_mismatch"
MISSING_EVENT = "missing_event"
INVALID_EVENT = "invalid_event"
UNKNOWN_PAYLOAD_TYPE = "unknown_payload_type"
INTERNAL_ERROR = "internal_error"
LATE = "late"
DEAD_LETTER_REASONS = (
    INVALID_JSON, NOT_AN_OBJECT, PAYLOAD_TOO_LARGE, TOO_DEEP, MISSING_FIELD, INVALID_TYPE,
    INVALID_VALUE, EMPTY_FINGERPRINT, INVALID_FINGERPRINT, INVALID_UUID, UNKNOWN_GROUP_TYPE,
    PROJECT_MISMATCH, MISSING_EVENT, INVALID_EVENT, UNKNOWN_PAYLOAD_TYPE, INTERNAL_ERROR, LATE,
)

# Dead-letter stages.
STAGE_PARSE = "parse"
STAGE_VALIDATE = "validate"
STAGE_GATE = "gate"
STAGE_KEY = "key"
STAGE_GROUP = "group"

# A row a sink could not write (stage "sink"; the payload column holds the row). Not an input
# record's reason: the record's own outcome was already counted.
STAGE_SINK = "sink"
BIGQUERY_REJECTED = "bigquery_rejected"
