"""Parse and validate payloads: raw bytes -> `Occurrence` / `StatusChange`, or `Rejected`.

The JSON Schema files in `schemas/` are the single source of truth. Two validators read them:
`fast` (fastjsonschema, compiled once, ~10 µs a payload) and `spec` (jsonschema's Draft7Validator,
~200 µs). Both map their first error to the same stable reason code through `_reason`, and
tests/test_validation.py checks that they agree on every accept/reject and reason. The checks a
schema cannot express (UUID syntax, the type registry, event/project cross-checks) are below.
Every payload is treated as hostile: size and nesting depth are bounded, nothing is evaluated.
"""
from __future__ import annotations

import copy
import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Union

import fastjsonschema
import jsonschema
import orjson

import schemas
from issue_platform import outcomes
from issue_platform.enums import PayloadType
from issue_platform.fingerprint import hash_fingerprint
from issue_platform.grouptype import GroupTypeRegistry, registry as default_registry

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32
_MESSAGE_LIMIT = 240
# Every time we accept (detection_time, update_date, --as_of) lies in (EARLIEST_TIME, LATEST_TIME]:
# unix seconds after 1970-01-01 and up to 3000-01-01, far inside what Beam timestamps can hold.
EARLIEST_TIME, LATEST_TIME = 0.0, 32503680000.0
TIME_EXPECTED = (f"a number of unix seconds greater than {EARLIEST_TIME:.0f} and at most {LATEST_TIME:.0f} "
                 "(3000-01-01T00:00:00Z)")
# Integers inside a payload must fit a signed 64-bit integer (our coders and BigQuery's INT64).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_JSON_SCALARS = (str, int, float, type(None))  # bool is an int


class Rejected(Exception):
    """A payload we will not process: a stable `reason`, the `field` at fault and a message."""

    def __init__(self, reason: str, field: str, message: str, stage: str = outcomes.STAGE_VALIDATE):
        super().__init__(message)
        self.reason, self.field, self.stage = reason, field, stage
        self.message = message[:_MESSAGE_LIMIT]


@dataclass(frozen=True)
class Occurrence:
    id: str  # 32 lowercase hex chars (Sentry stores UUID.hex)
    project_id: int
    fingerprint: tuple[str, ...]  # md5 hex per part; [0] is the primary hash
    issue_title: str
    subtitle: str
    culprit: str
    level: str
    type: int
    detection_time: float
    event_id: str
    resource_id: Optional[str]
    priority: int  # `priority`, else `initial_issue_priority`, else the type's default (`_get_kwargs`)
    environment: str
    evidence_data: dict
    evidence_display: list
    event: Optional[dict]  # the event as Sentry stores it (`stored_event`), or None without one
    platform: Optional[str] = None  # the event's platform (a group takes its creator's)
    assignee: Optional[str] = None  # an actor identifier (`assignee_identifier`)


@dataclass(frozen=True)
class StatusChange:
    id: str
    project_id: int
    fingerprint: tuple[str, ...]
    new_status: int
    new_substatus: Optional[int]
    update_date: Optional[float]  # event time when the detector gave one
    detector_id: Optional[int]
    activity_data: Optional[dict]
    activity_type: Optional[int] = None  # an `ActivityType` value (status_rules decides what it does)


Payload = Union[Occurrence, StatusChange]


def _compile(name: str) -> tuple[Any, jsonschema.Draft7Validator]:
    schema = schemas.load(name)
    # fastjsonschema rewrites `$ref`s in place; give it its own copy of the shared schema.
    return fastjsonschema.compile(copy.deepcopy(schema)), jsonschema.Draft7Validator(schema)


_SCHEMAS = {name: _compile(f"{name}.schema.json") for name in ("occurrence", "event", "status_change")}


def _reason(keyword: str, path: list, definition: Any, instance: Any) -> tuple[str, str]:
    """(reason, field) for a schema failure, identical for both validators."""
    field = ".".join(str(p) for p in path)
    if keyword == "required":
        missing = next((f for f in definition if not (isinstance(instance, dict) and f in instance)), "")
        return outcomes.MISSING_FIELD, ".".join(str(p) for p in [*path, missing])
    if keyword == "anyOf" and not path:
        return outcomes.MISSING_EVENT, "event_id"
    if keyword == "minItems" and path == ["fingerprint"]:
        return outcomes.EMPTY_FINGERPRINT, field
    if keyword == "type" and len(path) == 2 and path[0] == "fingerprint":
        return outcomes.INVALID_FINGERPRINT, field
    if keyword == "type":
        return outcomes.INVALID_TYPE, field
    return outcomes.INVALID_VALUE, field


def _schema_check(name: str, payload: dict, mode: str) -> Optional[tuple[str, str]]:
    """None if valid, else (reason, field)."""
    fast, spec = _SCHEMAS[name]
    if mode == "fast":
        try:
            fast(payload)
            return None
        except fastjsonschema.JsonSchemaValueException as exc:
            path = list(exc.path[1:])
            definition = exc.rule_definition
            return _reason(exc.rule, path, definition, exc.value)
    errors = list(spec.iter_errors(payload))
    if not errors:
        return None
    error = min(errors, key=lambda e: _fast_order(e, spec.schema))
    return _reason(error.validator, list(error.absolute_path), error.validator_value, error.instance)


# One message per reason, naming the field and what was expected; never echoing payload content.
_MESSAGES = {
    outcomes.MISSING_FIELD: "missing required field '{field}'",
    outcomes.MISSING_EVENT: "payload must contain either 'event_id' or 'event'",
    outcomes.EMPTY_FINGERPRINT: "'{field}' must contain at least one part",
    outcomes.INVALID_FINGERPRINT: "'{field}': fingerprint parts must be strings",
    outcomes.INVALID_TYPE: "'{field}' must be {expected}",
    outcomes.INVALID_VALUE: "'{field}' must be {expected}",
}
_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "object": "an object",
               "array": "an array", "boolean": "true or false", "null": "null"}


def _schema_node(schema: dict, path: list) -> dict:
    """The (sub)schema that describes the value at `path`, following local `$ref`s."""
    node = schema
    for part in [*path, None]:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if part is None:
            return node
        node = node.get("items", {}) if isinstance(part, int) or part.isdigit() else \
            node.get("properties", {}).get(part, {})
    return node


def expected(name: str, path: list) -> str:
    """What the schema `name` expects at `path`, in words: its `description`, else its type and range."""
    node = _schema_node(schemas.load(f"{name}.schema.json"), path)
    if "description" in node:
        return node["description"]
    if "enum" in node:
        values = [("null" if v is None else str(v)) for v in node["enum"]]
        return "one of " + ", ".join(values[:-1]) + " or " + values[-1]
    types = node.get("type", [])
    words = " or ".join(_TYPE_NAMES[t] for t in ([types] if isinstance(types, str) else types)) or "a valid value"
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        words += f" between {low} and {high}"
    elif low is not None:
        words += f" of at least {low}"
    return words

# The order in which fastjsonschema (draft-07) checks keywords within one schema; it checks
# `properties` one by one in schema order and depth-first, stopping at the first failure.
_FAST_KEYWORD_ORDER = {k: i for i, k in enumerate((
    "type", "enum", "allOf", "anyOf", "oneOf", "not", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "multipleOf", "minItems", "maxItems", "uniqueItems", "items", "minProperties",
    "maxProperties", "required", "dependencies", "properties", "patternProperties", "additionalProperties",
    "exclusiveMinimum", "exclusiveMaximum", "propertyNames", "contains", "const", "if"))}


def _fast_order(error: jsonschema.ValidationError, schema: dict) -> tuple:
    """Sort key putting first the error fastjsonschema would meet first, so both validators report
    the same reason for payloads with several faults."""

    def deref(node):  # local refs only ("#/definitions/...")
        while isinstance(node, dict) and "$ref" in node:
            target = schema
            for step in node["$ref"].removeprefix("#/").split("/"):
                target = target[step]
            node = target
        return node

    key, node, after_properties = [], deref(schema), False
    for part in error.schema_path:
        if part == "$ref":
            continue
        if after_properties:
            key.append(list(node).index(part))
            after_properties = False
        else:
            key.append(part if isinstance(part, int) else _FAST_KEYWORD_ORDER.get(part, len(_FAST_KEYWORD_ORDER)))
            after_properties = part == "properties"
        node = deref(node[part]) if isinstance(node, (dict, list)) else node
    return tuple(key), [str(p) for p in error.absolute_path]


def parse(raw: Union[bytes, str, dict], max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> dict:
    """Bytes/str of one JSON document (or an already decoded dict) -> dict, or `Rejected`."""
    if isinstance(raw, dict):
        return raw
    if len(raw) > max_bytes:
        raise Rejected(outcomes.PAYLOAD_TOO_LARGE, "", f"payload is {len(raw)} bytes, limit {max_bytes}", outcomes.STAGE_PARSE)
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected(outcomes.INVALID_JSON, "", f"not valid JSON: {exc}", outcomes.STAGE_PARSE) from None
    if not isinstance(payload, dict):
        raise Rejected(outcomes.NOT_AN_OBJECT, "", f"payload must be a JSON object, got {type(payload).__name__}",
                       outcomes.STAGE_PARSE)
    return payload


def check_depth(value: Any, limit: int = DEFAULT_MAX_DEPTH) -> None:
    """Reject containers nested deeper than `limit`, integers beyond 64 bits and values JSON cannot
    hold (bytes, dates, decimals: Avro can carry them) anywhere, iteratively (no recursion to
    exhaust). Free-form content (evidence, event, activity data) is stored as is, so a value no
    table can hold must not reach the writers."""
    stack = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            raise Rejected(outcomes.TOO_DEEP, "", f"payload nests deeper than {limit} levels")
        for name, child in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, (*path, name)))
            elif isinstance(child, int) and not INT64_MIN <= child <= INT64_MAX:
                field = ".".join(str(p) for p in (*path, name))
                raise Rejected(outcomes.INVALID_VALUE, field,
                               f"'{field}' must be an integer between {INT64_MIN} and {INT64_MAX}")
            elif not isinstance(child, _JSON_SCALARS):
                field = ".".join(str(p) for p in (*path, name))
                raise Rejected(outcomes.INVALID_TYPE, field, f"'{field}' must be a JSON value (a string, number, "
                                                      "true/false, null, object or array)")


def _uuid_hex(value: str, field: str) -> str:
    try:
        return uuid.UUID(value).hex
    except (ValueError, AttributeError, TypeError):
        raise Rejected(outcomes.INVALID_UUID, field, f"{field} must be a UUID") from None


def parse_time(value: Any, field: str) -> float:
    """Unix seconds (number) or an RFC 3339 string -> unix seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # may be NaN or infinite: `bounded_time` rejects those
    if isinstance(value, str):
        from datetime import datetime, timezone

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise Rejected(outcomes.INVALID_VALUE, field, f"'{field}' must be an RFC 3339 time or unix seconds") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    raise Rejected(outcomes.INVALID_TYPE, field, f"'{field}' must be an RFC 3339 time or unix seconds")


def bounded_time(value: Any, field: str) -> float:
    """`parse_time`, then the one range every accepted time must lie in (finite: NaN fails too)."""
    seconds = parse_time(value, field)
    if not (EARLIEST_TIME < seconds <= LATEST_TIME):  # also false for NaN
        raise Rejected(outcomes.INVALID_VALUE, field, f"'{field}' must be {TIME_EXPECTED}"
                       + (", or an RFC 3339 time in that range" if field == "update_date" else ""))
    return seconds


def _integer_fields(name: str) -> tuple[str, ...]:
    schema = schemas.load(f"{name}.schema.json")
    return tuple(f for f, node in schema["properties"].items()
                 if "integer" in ([node.get("type")] if isinstance(node.get("type"), str) else node.get("type", []))
                 or all(isinstance(v, int) or v is None for v in node.get("enum", [1.5])))


_INTEGER_FIELDS = {name: _integer_fields(name) for name in _SCHEMAS}


def _integral(name: str, payload: dict) -> dict:
    """`payload` with its integer fields as ints. JSON Schema's `integer` (and an enum of integers)
    admits 9001.0, and so does Sentry's validator (jsonschema, draft 7, on the same schemas), so an
    integral float is accepted and stored as the integer it is; the schema has already rejected 4.2,
    NaN, infinities and anything outside its range (signed 64-bit at most, so 1e300 too)."""
    floats = [f for f in _INTEGER_FIELDS[name] if isinstance(payload.get(f), float)]
    return {**payload, **{f: int(payload[f]) for f in floats}} if floats else payload


def occurrence_priority(priority: Optional[int], initial_issue_priority: Optional[int], gtype) -> int:
    """`occurrence_consumer._get_kwargs`: the occurrence's `priority`, else its type's default
    priority. The older `initial_issue_priority`, which producers still send, is read before that
    default (Sentry's current consumer ignores it; see README)."""
    for value in (priority, initial_issue_priority):
        if value is not None:
            return value
    return int(gtype.default_priority)


# `_get_kwargs` builds the stored event from these keys of the sent one (after the required ones).
_OPTIONAL_EVENT_KEYS = ("breadcrumbs", "contexts", "debug_meta", "dist", "environment", "extra", "modules",
                        "release", "request", "sdk", "server_name", "stacktrace", "trace_id", "transaction", "user")


def stored_event(event: dict, event_id: str, level: str, title: str) -> dict:
    """The event as Sentry's `occurrence_consumer._get_kwargs` builds it: the required keys (its id as
    UUID hex, the occurrence's level), the optional keys that were sent, every other key dropped,
    and `metadata.title` = the issue title. Sentry then adds a random trace context when the event
    has none; a random value would make re-runs differ, so none is added here."""
    stored = {"event_id": event_id, "level": level, "project_id": event["project_id"], "platform": event["platform"],
              "received": event["received"], "tags": event["tags"], "timestamp": event["timestamp"]}
    stored.update((key, event[key]) for key in _OPTIONAL_EVENT_KEYS if key in event)
    stored["metadata"] = {"title": title}
    return stored


_ACTOR = re.compile(r"(user|team):([0-9]+)")


def assignee_identifier(value: Any) -> Optional[str]:
    """An occurrence's `assignee` as the actor identifier Sentry stores (`_get_kwargs`,
    `parse_and_validate_actor`, `Actor.from_identifier`): a user id (number or digits) is
    "user:<id>", "user:<id>" and "team:<id>" are themselves; any other non-empty string names a user
    by username or e-mail, kept as given (no user directory here). What Sentry cannot parse, and
    every other value, is no assignee (Sentry logs it and still processes the occurrence).
    Membership of the organisation is not checked (see README)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"user:{value}" if value > 0 else None
    if not isinstance(value, str) or not value:
        return None
    if value.isascii() and value.isdigit():
        return f"user:{int(value)}"
    if value.startswith(("user:", "team:")):
        actor = _ACTOR.fullmatch(value)
        return f"{actor[1]}:{int(actor[2])}" if actor else None
    return value


class PayloadValidator:
    """Validates decoded payloads against the schemas and the type registry."""

    def __init__(self, mode: str = "fast", types: GroupTypeRegistry = default_registry,
                 max_depth: int = DEFAULT_MAX_DEPTH):
        if mode not in ("fast", "spec"):
            raise ValueError(f"validator mode must be 'fast' or 'spec', got {mode!r}")
        self.mode, self.types, self.max_depth = mode, types, max_depth

    def validate(self, payload: dict) -> Payload:
        check_depth(payload, self.max_depth)
        payload_type = payload.get("payload_type")  # absent or null: an occurrence, as in Sentry
        if payload_type is None or payload_type == PayloadType.OCCURRENCE.value:
            return self._occurrence(payload)
        if payload_type == PayloadType.STATUS_CHANGE.value:
            return self._status_change(payload)
        raise Rejected(outcomes.UNKNOWN_PAYLOAD_TYPE, "payload_type", "payload_type must be 'occurrence' or 'status_change'")

    def _schema(self, name: str, payload: dict, prefix: str = "", reason: Optional[str] = None) -> dict:
        """`payload` with integral numbers as ints, or `Rejected`."""
        failure = _schema_check(name, payload, self.mode)
        if failure:
            code, field = failure
            words = expected(name, field.split(".") if field else []) if code in (
                outcomes.INVALID_TYPE, outcomes.INVALID_VALUE) else ""
            field = f"{prefix}{field}" if field else prefix.rstrip(".")
            raise Rejected(reason or code, field, _MESSAGES[code].format(field=field or "payload", expected=words))
        return _integral(name, payload)

    def _occurrence(self, p: dict) -> Occurrence:
        p = self._schema("occurrence", p)
        occurrence_id = _uuid_hex(p["id"], "id")
        project_id, type_id, level = p["project_id"], p["type"], p["level"].lower()
        gtype = self.types.find(type_id)
        if gtype is None:
            raise Rejected(outcomes.UNKNOWN_GROUP_TYPE, "type",
                           "'type' must be the id of a registered group type (list them: issue-platform types)")
        event = p.get("event")
        event_id = p.get("event_id")
        environment, platform = "", None
        if event is not None:
            event = self._schema("event", event, "event.", outcomes.INVALID_EVENT)
            if event["project_id"] != project_id:
                raise Rejected(outcomes.PROJECT_MISMATCH, "event.project_id", "'event.project_id' must equal 'project_id'")
            event_hex = _uuid_hex(event["event_id"], "event.event_id")
            if event_id is not None and _uuid_hex(event_id, "event_id") != event_hex:
                raise Rejected(outcomes.INVALID_VALUE, "event_id", "event_id differs from event.event_id")
            event_id, environment, platform = event_hex, event["environment"], event["platform"]
            event = stored_event(event, event_hex, level, p["issue_title"])
        else:
            event_id = _uuid_hex(event_id, "event_id")
        priority = occurrence_priority(p.get("priority"), p.get("initial_issue_priority"), gtype)
        return Occurrence(
            id=occurrence_id, project_id=project_id, fingerprint=tuple(hash_fingerprint(p["fingerprint"])),
            issue_title=p["issue_title"], subtitle=p["subtitle"], culprit=p["culprit"],
            level=level, type=type_id, detection_time=bounded_time(p["detection_time"], "detection_time"),
            event_id=event_id, resource_id=p.get("resource_id"), priority=priority, environment=environment,
            evidence_data=p["evidence_data"], evidence_display=p["evidence_display"], event=event,
            platform=platform, assignee=assignee_identifier(p.get("assignee")),
        )

    def _status_change(self, p: dict) -> StatusChange:
        p = self._schema("status_change", p)
        raw_id = p.get("id")
        # Sentry defaults a missing id to uuid4(); a content digest keeps re-runs deterministic.
        change_id = _uuid_hex(raw_id, "id") if raw_id else hashlib.md5(orjson.dumps(
            p, option=orjson.OPT_SORT_KEYS)).hexdigest()
        update_date = p.get("update_date")
        return StatusChange(
            id=change_id, project_id=p["project_id"], fingerprint=tuple(hash_fingerprint(p["fingerprint"])),
            new_status=p["new_status"], new_substatus=p.get("new_substatus"),
            update_date=None if update_date is None else bounded_time(update_date, "update_date"),
            detector_id=p.get("detector_id"), activity_data=p.get("activity_data"),
            activity_type=p.get("activity_type"),
        )
