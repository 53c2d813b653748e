"""Payload parsing and validation (issue_platform/validation.py, schemas/*.json; reference §2.4, §2.5, §6.4)."""
import copy
import hashlib
import uuid

import orjson
import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import outcomes
from issue_platform.generate import generate
from issue_platform.validation import Occurrence, PayloadValidator, Rejected, StatusChange, parse

MODES = ["fast", "spec"]
T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
OCC_ID = "0F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9"
EVENT_ID = "a3c1bd1e-5d4c-4b1d-9d7f-3f6d6a0b1c2d"
SECRET = "s3cr3t-TOKEN-do-not-echo"


def build(base, overrides):
    payload = copy.deepcopy(base)
    for name, value in overrides.items():
        target, field = (payload["event"], name[6:]) if name.startswith("event_") and name != "event_id" \
            else (payload, name)
        if value is ...:
            target.pop(field, None)
        else:
            target[field] = value
    return payload


OCCURRENCE = {
    "payload_type": "occurrence", "id": OCC_ID, "project_id": 42, "fingerprint": ["n+1-users", "ünïcode part"],
    "issue_title": "N+1 Query", "subtitle": "SELECT * FROM users", "culprit": "/api/0/users/",
    "evidence_data": {"op": "db"}, "evidence_display": [{"name": "Span", "value": "SELECT", "important": True}],
    "type": 1006, "detection_time": T0, "level": "warning",
    "event": {"event_id": EVENT_ID, "project_id": 42, "platform": "python", "environment": "production",
              "received": T0, "tags": {}, "timestamp": T0},
}
STATUS_CHANGE = {"payload_type": "status_change", "id": OCC_ID, "fingerprint": ["n+1-users"], "project_id": 42,
                 "new_status": 2, "new_substatus": 5}


def occurrence(**overrides):
    """A valid occurrence with an embedded event; `event_<field>` overrides the event's field; `...` drops."""
    return build(OCCURRENCE, overrides)


def occurrence_with_event_id(**overrides):
    return build(OCCURRENCE, {"event": ..., "event_id": EVENT_ID, **overrides})


def status_change(**overrides):
    return build(STATUS_CHANGE, overrides)


def nested(depth):
    value = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def verdict(mode, raw):
    """("ok", payload) or (reason, field, message, stage)."""
    try:
        return "ok", PayloadValidator(mode).validate(parse(raw if isinstance(raw, (bytes, dict)) else orjson.dumps(raw)))
    except Rejected as rejected:
        return rejected.reason, rejected.field, rejected.message, rejected.stage


# --- every rejection reason, with the field it names --------------------------------------------

REJECTIONS = [
    ("truncated json", b'{"id": "x", "project_id": ', outcomes.INVALID_JSON, ""),
    ("not json", b"occurrence", outcomes.INVALID_JSON, ""),
    ("array", b"[1, 2]", outcomes.NOT_AN_OBJECT, ""),
    ("string", b'"text"', outcomes.NOT_AN_OBJECT, ""),
    ("null", b"null", outcomes.NOT_AN_OBJECT, ""),
    ("too large", orjson.dumps(occurrence(evidence_data={"pad": "x" * (1 << 20)})), outcomes.PAYLOAD_TOO_LARGE, ""),
    ("too deep", occurrence(evidence_data=nested(40)), outcomes.TOO_DEEP, ""),
    ("too deep status change", status_change(activity_data=nested(40)), outcomes.TOO_DEEP, ""),
    ("no issue_title", occurrence(issue_title=...), outcomes.MISSING_FIELD, "issue_title"),
    ("no id", occurrence(id=...), outcomes.MISSING_FIELD, "id"),
    ("no detection_time", occurrence(detection_time=...), outcomes.MISSING_FIELD, "detection_time"),
    ("evidence without important", occurrence(evidence_display=[{"name": "a", "value": "b"}]),
     outcomes.MISSING_FIELD, "evidence_display.0.important"),
    ("project_id string", occurrence(project_id="42"), outcomes.INVALID_TYPE, "project_id"),
    ("issue_title number", occurrence(issue_title=1), outcomes.INVALID_TYPE, "issue_title"),
    ("evidence_data list", occurrence(evidence_data=[]), outcomes.INVALID_TYPE, "evidence_data"),
    ("detection_time string", occurrence(detection_time="2026-11-01"), outcomes.INVALID_TYPE, "detection_time"),
    ("type bool", occurrence(type=True), outcomes.INVALID_TYPE, "type"),
    ("level null", occurrence(level=None), outcomes.INVALID_TYPE, "level"),
    ("event not an object", occurrence(event="x"), outcomes.INVALID_TYPE, "event"),
    ("evidence name number", occurrence(evidence_display=[{"name": 1, "value": "b", "important": True}]),
     outcomes.INVALID_TYPE, "evidence_display.0.name"),
    ("project_id 0", occurrence(project_id=0, event_project_id=0), outcomes.INVALID_VALUE, "project_id"),
    ("priority 30", occurrence(priority=30), outcomes.INVALID_VALUE, "priority"),
    ("initial priority 1", occurrence(initial_issue_priority=1), outcomes.INVALID_VALUE, "initial_issue_priority"),
    ("detection_time 0", occurrence(detection_time=0), outcomes.INVALID_VALUE, "detection_time"),
    ("detection_time year 3000", occurrence(detection_time=32503680001), outcomes.INVALID_VALUE, "detection_time"),
    ("event_id differs", occurrence(event_id=str(uuid.UUID(int=7))), outcomes.INVALID_VALUE, "event_id"),
    ("fingerprint empty", occurrence(fingerprint=[]), outcomes.EMPTY_FINGERPRINT, "fingerprint"),
    ("fingerprint number", occurrence(fingerprint=[17]), outcomes.INVALID_FINGERPRINT, "fingerprint.0"),
    ("fingerprint null part", occurrence(fingerprint=["a", None]), outcomes.INVALID_FINGERPRINT, "fingerprint.1"),
    ("id not a uuid", occurrence(id="not-a-uuid"), outcomes.INVALID_UUID, "id"),
    ("event_id not a uuid", occurrence_with_event_id(event_id="nope"), outcomes.INVALID_UUID, "event_id"),
    ("event.event_id not a uuid", occurrence(event_event_id="nope"), outcomes.INVALID_UUID, "event.event_id"),
    ("unknown type", occurrence(type=424242), outcomes.UNKNOWN_GROUP_TYPE, "type"),
    ("event in another project", occurrence(event_project_id=43), outcomes.PROJECT_MISMATCH, "event.project_id"),
    ("neither event nor event_id", occurrence(event=...), outcomes.MISSING_EVENT, "event_id"),
    ("event without platform", occurrence(event_platform=...), outcomes.INVALID_EVENT, "event.platform"),
    ("event without environment", occurrence(event_environment=...), outcomes.INVALID_EVENT, "event.environment"),
    ("event project_id string", occurrence(event_project_id="42"), outcomes.INVALID_EVENT, "event.project_id"),
    ("event tags string", occurrence(event_tags="a=b"), outcomes.INVALID_EVENT, "event.tags"),
    ("payload_type transaction", occurrence(payload_type="transaction"), outcomes.UNKNOWN_PAYLOAD_TYPE, "payload_type"),
    ("payload_type number", occurrence(payload_type=1), outcomes.UNKNOWN_PAYLOAD_TYPE, "payload_type"),
    # status changes
    ("sc no new_status", status_change(new_status=...), outcomes.MISSING_FIELD, "new_status"),
    ("sc no fingerprint", status_change(fingerprint=...), outcomes.MISSING_FIELD, "fingerprint"),
    ("sc no project_id", status_change(project_id=...), outcomes.MISSING_FIELD, "project_id"),
    ("sc new_status 9", status_change(new_status=9), outcomes.INVALID_VALUE, "new_status"),
    ("sc new_status -1", status_change(new_status=-1), outcomes.INVALID_VALUE, "new_status"),
    ("sc new_substatus 0", status_change(new_substatus=0), outcomes.INVALID_VALUE, "new_substatus"),
    ("sc new_substatus 8", status_change(new_substatus=8), outcomes.INVALID_VALUE, "new_substatus"),
    ("sc new_status string", status_change(new_status="resolved"), outcomes.INVALID_TYPE, "new_status"),
    ("sc update_date bool", status_change(update_date=True), outcomes.INVALID_TYPE, "update_date"),
    ("sc update_date garbage", status_change(update_date="yesterday"), outcomes.INVALID_VALUE, "update_date"),
    ("sc fingerprint empty", status_change(fingerprint=[]), outcomes.EMPTY_FINGERPRINT, "fingerprint"),
    ("sc fingerprint number", status_change(fingerprint=[1]), outcomes.INVALID_FINGERPRINT, "fingerprint.0"),
    ("sc id not a uuid", status_change(id="nope"), outcomes.INVALID_UUID, "id"),
    # issue #7: every accepted time is finite and in one range; ids and codes are 64-bit integers
    ("detection_time NaN", occurrence(detection_time=float("nan")), outcomes.INVALID_VALUE, "detection_time"),
    ("detection_time inf", occurrence(detection_time=float("inf")), outcomes.INVALID_VALUE, "detection_time"),
    ("detection_time -1e300", occurrence(detection_time=-1e300), outcomes.INVALID_VALUE, "detection_time"),
    ("detection_time year 9999", occurrence(detection_time=253402214400), outcomes.INVALID_VALUE, "detection_time"),
    ("sc update_date 1e300", status_change(update_date=1e300), outcomes.INVALID_VALUE, "update_date"),
    ("sc update_date -1e300", status_change(update_date=-1e300), outcomes.INVALID_VALUE, "update_date"),
    ("sc update_date NaN", status_change(update_date=float("nan")), outcomes.INVALID_VALUE, "update_date"),
    ("sc update_date 0", status_change(update_date=0), outcomes.INVALID_VALUE, "update_date"),
    ("sc update_date year 9999", status_change(update_date="9999-12-31T00:00:00Z"), outcomes.INVALID_VALUE, "update_date"),
    ("sc update_date year 1", status_change(update_date="0001-01-01T00:00:00Z"), outcomes.INVALID_VALUE, "update_date"),
    ("project_id 2**70", occurrence(project_id=2 ** 70, event_project_id=2 ** 70), outcomes.INVALID_VALUE, "project_id"),
    ("project_id 2**63", occurrence(project_id=2 ** 63), outcomes.INVALID_VALUE, "project_id"),
    ("project_id 1e300", occurrence(project_id=1e300), outcomes.INVALID_VALUE, "project_id"),
    ("type 1e300", occurrence(type=1e300), outcomes.INVALID_VALUE, "type"),
    ("type 4.2", occurrence(type=4.2), outcomes.INVALID_TYPE, "type"),
    ("priority 25.5", occurrence(priority=25.5), outcomes.INVALID_VALUE, "priority"),
    ("event project_id 1e300", occurrence(event_project_id=1e300), outcomes.INVALID_EVENT, "event.project_id"),
    ("event project_id 42.5", occurrence(event_project_id=42.5), outcomes.INVALID_EVENT, "event.project_id"),
    ("evidence integer beyond 64 bits", occurrence(evidence_data={"n": [1, {"big": 2 ** 70}]}),
     outcomes.INVALID_VALUE, "evidence_data.n.1.big"),
    ("evidence bytes (Avro)", occurrence(evidence_data={"raw": b"\x00"}), outcomes.INVALID_TYPE, "evidence_data.raw"),
    ("event tag decimal (Avro)", occurrence(event_tags={"n": __import__("decimal").Decimal("1.5")}),
     outcomes.INVALID_TYPE, "event.tags.n"),
    ("issue_title bytes (Avro)", occurrence(issue_title=b"t"), outcomes.INVALID_TYPE, "issue_title"),
    ("sc project_id 2**70", status_change(project_id=2 ** 70), outcomes.INVALID_VALUE, "project_id"),
    ("sc new_status 1.5", status_change(new_status=1.5), outcomes.INVALID_TYPE, "new_status"),
    ("sc new_status NaN", status_change(new_status=float("nan")), outcomes.INVALID_TYPE, "new_status"),
    ("sc activity_type inf", status_change(activity_type=float("inf")), outcomes.INVALID_TYPE, "activity_type"),
    ("sc detector_id 2.0**63", status_change(detector_id=2.0 ** 63), outcomes.INVALID_VALUE, "detector_id"),
    ("sc new_substatus 1e300", status_change(new_substatus=1e300), outcomes.INVALID_VALUE, "new_substatus"),
    ("sc detector_id 2**70", status_change(detector_id=2 ** 70), outcomes.INVALID_VALUE, "detector_id"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw, reason, field", [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_rejection_reason_and_field(mode, raw, reason, field):
    result = verdict(mode, raw)
    assert result[:2] == (reason, field)
    parse_stage = reason in (outcomes.INVALID_JSON, outcomes.NOT_AN_OBJECT, outcomes.PAYLOAD_TOO_LARGE)
    assert result[3] == (outcomes.STAGE_PARSE if parse_stage else outcomes.STAGE_VALIDATE)
    assert result[2] and len(result[2]) <= 240


def test_every_dead_letter_reason_is_covered():
    covered = {reason for _, _, reason, _ in REJECTIONS}
    assert covered == set(outcomes.DEAD_LETTER_REASONS) - {outcomes.INTERNAL_ERROR, outcomes.LATE}  # late: tests/test_streaming.py


def test_payload_size_limit_is_configurable():
    raw = orjson.dumps(occurrence())
    assert verdict("fast", raw)[0] == "ok"
    with pytest.raises(Rejected) as err:
        parse(raw, max_bytes=len(raw) - 1)
    assert err.value.reason == outcomes.PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("mode", MODES)
def test_depth_limit_is_configurable(mode):
    payload = occurrence(evidence_data=nested(10))
    assert verdict(mode, payload)[0] == "ok"
    with pytest.raises(Rejected, match="deeper than 5"):
        PayloadValidator(mode, max_depth=5).validate(payload)


def test_unknown_validator_mode():
    with pytest.raises(ValueError):
        PayloadValidator("strict")


# --- accepted payloads -------------------------------------------------------------------------

def md5(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("mode", MODES)
def test_valid_occurrence_with_event(mode):
    result, occ = verdict(mode, occurrence(resource_id="res-1", priority=75, initial_issue_priority=25,
                                           level="WARNING", event_release="app@1.0"))
    assert result == "ok" and isinstance(occ, Occurrence)
    assert occ.id == "0f1e2d3c4b5a49788695a4b3c2d1e0f9"
    assert occ.event_id == EVENT_ID.replace("-", "")
    assert occ.fingerprint == (md5("n+1-users"), md5("ünïcode part"))
    assert (occ.project_id, occ.type, occ.detection_time) == (42, 1006, T0)
    assert (occ.issue_title, occ.subtitle, occ.culprit, occ.level) == (
        "N+1 Query", "SELECT * FROM users", "/api/0/users/", "warning")
    assert (occ.priority, occ.resource_id) == (75, "res-1")
    assert (occ.environment, occ.platform, occ.assignee) == ("production", "python", None)
    assert occ.event["release"] == "app@1.0" and occ.evidence_data == {"op": "db"}
    assert occ.evidence_display == [{"name": "Span", "value": "SELECT", "important": True}]


@pytest.mark.parametrize("mode", MODES)
def test_valid_occurrence_with_event_id(mode):
    result, occ = verdict(mode, occurrence_with_event_id(payload_type=..., event_id=EVENT_ID.upper()))
    assert result == "ok" and isinstance(occ, Occurrence)  # no payload_type means occurrence
    assert occ.event_id == EVENT_ID.replace("-", "")
    assert occ.event is None and (occ.environment, occ.platform) == ("", None)
    assert (occ.priority, occ.resource_id) == (25, None)  # N+1 (1006): the type's default, LOW


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("event_id", [EVENT_ID, EVENT_ID.replace("-", ""), EVENT_ID.upper(), f"urn:uuid:{EVENT_ID}"])
def test_event_id_and_event_event_id_may_both_be_given_in_any_uuid_spelling(mode, event_id):
    result, occ = verdict(mode, occurrence(event_id=event_id))
    assert result == "ok" and occ.event_id == EVENT_ID.replace("-", "")


@pytest.mark.parametrize("spelling", [OCC_ID, OCC_ID.lower(), OCC_ID.replace("-", ""), "{" + OCC_ID + "}"])
def test_uuid_normalised_to_hex(spelling):
    assert verdict("fast", occurrence(id=spelling))[1].id == "0f1e2d3c4b5a49788695a4b3c2d1e0f9"


@pytest.mark.parametrize("parts", [["a"], ["a", "b", "c"], ["", "中文"], ["same", "same"]])
def test_fingerprint_md5_hashed_per_part(parts):
    occ = verdict("fast", occurrence(fingerprint=parts))[1]
    assert occ.fingerprint == tuple(hashlib.md5(p.encode("utf-8")).hexdigest() for p in parts)


# --- status changes ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("update_date, expected", [
    ("2026-11-01T00:00:00Z", T0), ("2026-11-01T00:00:00.250Z", T0 + 0.25), ("2026-11-01T01:00:00+01:00", T0),
    ("2026-11-01T00:00:00", T0), (1793491200, T0), (1793491200.5, T0 + 0.5), (None, None), (..., None),
])
def test_status_change_update_date(mode, update_date, expected):
    result, change = verdict(mode, status_change(update_date=update_date))
    assert result == "ok" and isinstance(change, StatusChange)
    assert change.update_date == expected


@pytest.mark.parametrize("mode", MODES)
def test_valid_status_change(mode):
    result, change = verdict(mode, status_change(detector_id=7, activity_data={"reason": "auto"}, activity_type=3))
    assert result == "ok"
    assert change == StatusChange(id="0f1e2d3c4b5a49788695a4b3c2d1e0f9", project_id=42,
                                  fingerprint=(md5("n+1-users"),), new_status=2, new_substatus=5, update_date=None,
                                  detector_id=7, activity_data={"reason": "auto"}, activity_type=3)


@pytest.mark.parametrize("substatus", [None, ...])
def test_status_change_without_substatus(substatus):
    assert verdict("fast", status_change(new_status=1, new_substatus=substatus))[1].new_substatus is None


def test_status_change_without_id_gets_a_deterministic_id():
    first = verdict("fast", status_change(id=...))[1].id
    assert first == verdict("spec", status_change(id=...))[1].id
    assert verdict("fast", status_change(id=None))[1].id == verdict("spec", status_change(id=None))[1].id
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != verdict("fast", status_change(id=..., new_substatus=1))[1].id


# --- messages never echo payload content ---------------------------------------------------------

ECHO_CASES = [
    ("id", occurrence(id=SECRET)),
    ("event_id", occurrence_with_event_id(event_id=SECRET)),
    ("event.event_id", occurrence(event_event_id=SECRET)),
    ("payload_type", occurrence(payload_type=SECRET)),
    ("project_id", occurrence(project_id=SECRET)),
    ("type", occurrence(type=SECRET)),
    ("detection_time", occurrence(detection_time=SECRET)),
    ("priority", occurrence(priority=SECRET)),
    ("fingerprint", occurrence(fingerprint=[SECRET, 1])),
    ("event.platform", occurrence(event_platform=[SECRET])),
    ("other field bad", occurrence(issue_title=SECRET, subtitle=SECRET, project_id=[SECRET])),
    ("json", b'{"id": "' + SECRET.encode() + b'", oops}'),
    ("sc id", status_change(id=SECRET)),
    ("sc update_date", status_change(update_date=SECRET)),
    ("sc new_status", status_change(new_status=SECRET)),
]


SECRET_NUMBER = 987654321987
NUMBER_ECHO_CASES = [
    ("project mismatch", occurrence(project_id=SECRET_NUMBER, event_project_id=SECRET_NUMBER + 1)),
    ("unknown type", occurrence(type=SECRET_NUMBER)),
    ("project_id float", occurrence(project_id=SECRET_NUMBER + 0.5)),
    ("project_id too big", occurrence(project_id=SECRET_NUMBER * 10 ** 10)),
    ("detection_time", occurrence(detection_time=SECRET_NUMBER * 1e3)),
    ("sc update_date", status_change(update_date=SECRET_NUMBER * 1e3)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw", [c[1] for c in NUMBER_ECHO_CASES], ids=[c[0] for c in NUMBER_ECHO_CASES])
def test_messages_never_echo_numbers_from_the_payload(mode, raw):
    result = verdict(mode, raw)
    assert result[0] != "ok"
    assert str(SECRET_NUMBER)[:6] not in result[2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw, words", [
    (occurrence(detection_time="2026-11-01"), "a number of unix seconds greater than 0 and at most 32503680000"),
    (occurrence(detection_time=0), "a number of unix seconds greater than 0 and at most 32503680000"),
    (occurrence(detection_time=float("nan")), "a number of unix seconds"),
    (occurrence(priority=30), "25 (low), 50 (medium), 75 (high) or null"),
    (occurrence(project_id="42"), "an integer between 1 and 9223372036854775807"),
    (occurrence(project_id=42.5), "an integer between 1 and 9223372036854775807"),
    (occurrence(issue_title=1), "a string"),
    (status_change(new_status=9), "0 unresolved, 1 resolved, 2 ignored"),
    (status_change(new_substatus=0), "1 archived until escalating"),
    (status_change(update_date=1e300), "RFC 3339"),
    (occurrence(evidence_display=[{"name": 1, "value": "b", "important": True}]), "a string"),
])
def test_messages_say_what_was_expected(mode, raw, words):
    result = verdict(mode, raw)
    assert words in result[2], result
    assert "schemas/" not in result[2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("raw", [c[1] for c in ECHO_CASES], ids=[c[0] for c in ECHO_CASES])
def test_messages_never_echo_payload_content(mode, raw):
    result = verdict(mode, raw)
    assert result[0] != "ok"
    assert SECRET not in result[2]
    assert SECRET[:8] not in result[2]


# --- the two validators agree ------------------------------------------------------------------

WRONG_VALUES = ["x", 1, None, [], {}, 1.5, True, 0, -1, 25.0, "", [1], {"a": 1}]


def mutations(payload):
    """Drop each top-level (and event) field; set each to each wrong-typed value."""
    for field in payload:
        yield {k: v for k, v in payload.items() if k != field}
        for value in WRONG_VALUES:
            yield {**payload, field: value}
    if isinstance(payload.get("event"), dict):
        for sub in mutations(payload["event"]):
            yield {**payload, "event": sub}


def corpus():
    lines = list(generate(3000, seed=3))
    bases = [occurrence(), occurrence_with_event_id(), occurrence(priority=50, resource_id="r"), status_change(),
             status_change(update_date="2026-11-01T00:00:00Z", detector_id=1, activity_data={})]
    for line in lines[:400]:
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict) and payload.get("payload_type") == "status_change":
            bases.append(payload)
    return lines + [orjson.dumps(m) for base in bases for m in mutations(base)]


def outcome(mode, raw):
    result = verdict(mode, raw)
    return ("ok", type(result[1]).__name__) if result[0] == "ok" else result[:2]


def test_fast_and_spec_agree_on_generated_and_mutated_payloads():
    payloads = corpus()
    assert len(payloads) > 3500
    disagreements = [(raw[:120], outcome("fast", raw), outcome("spec", raw)) for raw in payloads
                     if outcome("fast", raw) != outcome("spec", raw)]
    assert disagreements == [], f"{len(disagreements)} disagreements, e.g. {disagreements[:3]}"


@pytest.mark.parametrize("payload", [
    occurrence(event=..., issue_title=...),  # the anyOf (event/event_id) and `required` both fail
    {k: v for k, v in STATUS_CHANGE.items() if k != "payload_type"},  # a status change read as an occurrence
    occurrence(fingerprint=[], issue_title=1),  # an earlier property's minItems vs a later property's type
    occurrence(fingerprint=[17], issue_title=1),  # a deeper error in an earlier property
    occurrence(evidence_display=[{}], type="x"),
], ids=["anyOf+required", "status change without payload_type", "minItems+type", "items+type",
        "nested required+type"])
def test_fast_and_spec_agree_on_payloads_with_several_faults(payload):
    assert outcome("fast", payload) == outcome("spec", payload)
