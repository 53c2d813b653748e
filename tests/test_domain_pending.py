"""Compact pending-event records (issue_platform/pending.py)."""
import hashlib

import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import pending
from issue_platform.pending import Display, PendingOccurrence, PendingStatusChange, display_digest
from issue_platform.validation import Occurrence, PayloadValidator, Rejected, StatusChange

T0 = 1_793_491_200.123


def md5(text):
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def occurrence(fingerprint=("n+1-users",), resource_id=None, priority=50, environment="production",
               title="N+1 Query", event=None, platform=None, assignee=None):
    return Occurrence(
        id="0f1e2d3c4b5a49788695a4b3c2d1e0f9", project_id=42, fingerprint=tuple(md5(p) for p in fingerprint),
        issue_title=title, subtitle="SELECT * FROM users", culprit="/api/0/users/", level="warning", type=1006,
        detection_time=T0, event_id="a3c1bd1e5d4c4b1d9d7f3f6d6a0b1c2d", resource_id=resource_id, priority=priority,
        environment=environment, evidence_data={}, evidence_display=[], event=event, platform=platform,
        assignee=assignee)


def status_change(new_status=2, new_substatus=5, update_date=None, detector_id=None, activity_data=None,
                  activity_type=None):
    return StatusChange(id="11112222333344445555666677778888", project_id=42, fingerprint=(md5("a"),),
                        new_status=new_status, new_substatus=new_substatus, update_date=update_date,
                        detector_id=detector_id, activity_data=activity_data, activity_type=activity_type)


@pytest.mark.parametrize("fingerprint", [("a",), ("a", "b"), ("a", "b", "c", "d", "e")])
@pytest.mark.parametrize("resource_id", [None, "", "res-1", "ünïcode/リソース" * 20])
@pytest.mark.parametrize("priority", [25, 50, 75])
@pytest.mark.parametrize("platform, assignee", [(None, None), ("python", "team:7")])
def test_occurrence_round_trip(fingerprint, resource_id, priority, platform, assignee):
    occ = occurrence(fingerprint, resource_id, priority, platform=platform, assignee=assignee)
    record, digest, display_bytes = pending.encode_occurrence(occ)
    assert pending.decode(record) == PendingOccurrence(
        time=T0, id=occ.id, event_id=occ.event_id, type=1006, priority=priority,
        display=digest, extra_fingerprint=occ.fingerprint[1:], resource_id=resource_id, event_time=T0)
    assert Display.decode(display_bytes) == Display("N+1 Query", "SELECT * FROM users", "/api/0/users/",
                                                    "warning", "production", platform, assignee)
    assert digest == display_digest(display_bytes) and len(digest) == pending.DIGEST_SIZE == 8


def test_resource_id_none_and_empty_string_stay_distinct():
    none = pending.decode(pending.encode_occurrence(occurrence(resource_id=None))[0])
    empty = pending.decode(pending.encode_occurrence(occurrence(resource_id=""))[0])
    assert (none.resource_id, empty.resource_id) == (None, "")


@pytest.mark.parametrize("update_date, explicit", [(T0, True), (None, False)])
@pytest.mark.parametrize("detector_id, activity_data", [
    (None, None), (7, None), (None, {"reason": "auto", "n": [1, 2]}), (7, {})])
@pytest.mark.parametrize("new_status, new_substatus", [(1, None), (2, 5), (0, 3)])
@pytest.mark.parametrize("activity_type", [None, 29, 2 ** 62])
def test_status_change_round_trip(update_date, explicit, detector_id, activity_data, new_status, new_substatus,
                                  activity_type):
    change = status_change(new_status, new_substatus, update_date, detector_id, activity_data, activity_type)
    record = pending.encode_status_change(change, received_at=T0 + 99)
    assert pending.decode(record) == PendingStatusChange(
        time=T0 if explicit else T0 + 99, id=change.id, new_status=new_status, new_substatus=new_substatus,
        explicit_time=explicit, detector_id=detector_id, activity_data=activity_data, activity_type=activity_type)
    assert pending.record_display_digest(record) is None


@pytest.mark.parametrize("resource_id", [None, "res-1"])
def test_record_display_digest_matches_encode_occurrence(resource_id):
    for title in ("A", "B" * 500):
        record, digest, _ = pending.encode_occurrence(occurrence(("a", "b"), resource_id, title=title))
        assert pending.record_display_digest(record) == digest


def test_same_display_same_digest_different_display_different_digest():
    a = pending.encode_occurrence(occurrence(priority=25))[1]
    assert pending.encode_occurrence(occurrence(fingerprint=("x", "y"), resource_id="r"))[1] == a
    assert pending.encode_occurrence(occurrence(environment="staging"))[1] != a
    assert pending.encode_occurrence(occurrence(title="Other"))[1] != a


def test_records_are_compact():
    record = pending.encode_occurrence(occurrence())[0]
    assert len(record) == 65  # the fixed head: no extra parts, no resource id
    assert len(pending.encode_occurrence(occurrence(("a", "b", "c")))[0]) == len(record) + 2 * 16
    assert len(pending.encode_occurrence(occurrence(resource_id="r"))[0]) == len(record) + 2
    assert len(pending.encode_status_change(status_change(), received_at=T0)) <= 32


def test_display_is_interned_outside_the_record():
    long_title = "x" * 10_000
    record = pending.encode_occurrence(occurrence(title=long_title))[0]
    assert len(record) <= 80


@pytest.mark.parametrize("field", ["priority", "initial_issue_priority"])
@pytest.mark.parametrize("value", [25, 25.0])
def test_every_validated_occurrence_can_be_encoded(field, value):
    """JSON `25.0` passes the schema's `enum: [25, 50, 75, null]` (25.0 == 25), as in Sentry; it is
    stored as the integer (issue #21), and either field becomes the priority that encodes."""
    payload = {"id": "0f1e2d3c4b5a49788695a4b3c2d1e0f9", "project_id": 42, "fingerprint": ["a"],
               "issue_title": "t", "subtitle": "s", "culprit": "c", "evidence_data": {}, "evidence_display": [],
               "type": 1006, "detection_time": T0, "level": "info", "event_id": "a" * 32, field: value}
    occ = PayloadValidator("fast").validate(payload)
    decoded = pending.decode(pending.encode_occurrence(occ)[0])
    assert decoded.priority == 25 and type(decoded.priority) is int


def test_many_fingerprint_parts_are_rejected_or_round_trip():
    """The schema puts no cap on fingerprint parts; whatever validation accepts must encode."""
    payload = {"id": "0f1e2d3c4b5a49788695a4b3c2d1e0f9", "project_id": 42, "fingerprint": [str(i) for i in range(300)],
               "issue_title": "t", "subtitle": "s", "culprit": "c", "evidence_data": {}, "evidence_display": [],
               "type": 1006, "detection_time": T0, "level": "info", "event_id": "a" * 32}
    try:
        occ = PayloadValidator("fast").validate(payload)
    except Rejected:
        return  # a clean dead letter is fine too
    assert pending.decode(pending.encode_occurrence(occ)[0]).extra_fingerprint == occ.fingerprint[1:]


@pytest.mark.parametrize("timestamp, expected", [
    (T0 - 3600, T0 - 3600),  # unix seconds
    ("2026-11-01T00:00:00Z", 1_793_491_200.0),  # RFC 3339
    ("2026-11-01T01:00:00+01:00", 1_793_491_200.0),
    ("2026-11-01T00:00:00", 1_793_491_200.0),  # no offset: UTC
    ("yesterday", T0),  # unparsable: detection_time
    ("2026-13-01T00:00:00Z", T0),
    (-1.0, T0),  # out of range: detection_time
    (1e300, T0),
    (None, T0),
])
def test_the_event_timestamp_is_carried_in_the_record(timestamp, expected):
    """Sentry sets a group's first_seen/last_seen from `event.datetime`; the record carries it."""
    occ = occurrence(event={"event_id": "a3c1bd1e5d4c4b1d9d7f3f6d6a0b1c2d", "timestamp": timestamp})
    decoded = pending.decode(pending.encode_occurrence(occ)[0])
    assert decoded.event_time == expected and decoded.event_datetime == expected
    assert decoded.time == T0  # detection_time still orders events


def test_without_an_embedded_event_the_event_time_is_detection_time():
    decoded = pending.decode(pending.encode_occurrence(occurrence())[0])
    assert decoded.event_datetime == decoded.time == T0
    hand_built = PendingOccurrence(T0, "1" * 32, "2" * 32, 1006, 50, b"d" * 8, (), None)
    assert hand_built.event_datetime == T0


def test_a_sealed_batch_gives_back_its_records_in_order_among_plain_ones():
    import dataclasses
    records = [pending.encode_occurrence(dataclasses.replace(occurrence(), detection_time=T0 + i,
                                                             id=md5(str(i))))[0] for i in range(50)]
    records.append(pending.encode_status_change(status_change(activity_data={"n": 1}), received_at=T0))
    batch = pending.new_batch()
    added = sum(pending.add_to_batch(batch, record) for record in records)
    assert added == len(batch) == sum(len(record) + 4 for record in records)
    sealed = pending.sealed_batch(batch)
    plain = pending.display_record(b"d" * pending.DIGEST_SIZE, b"display")
    assert list(pending.unbatched([plain, sealed, plain])) == [plain, *records, plain]
    assert len(sealed) < len(batch) * 0.75  # one key's events share most of their bytes


def test_an_empty_batch_holds_nothing():
    assert list(pending.unbatched([pending.sealed_batch(pending.new_batch())])) == []


def test_sort_records_orders_as_sort_key_orders_the_decoded_events():
    """Ties in time go occurrences first, then by id; flags in an occurrence's kind byte do not matter."""
    import dataclasses
    import random
    rng = random.Random(7)
    records = []
    for i in range(300):
        at = T0 + rng.choice([0, 1, 2.5])  # few distinct times: many ties
        if rng.random() < 0.3:
            change = dataclasses.replace(status_change(update_date=at), id=md5(f"c{i}"))
            records.append(pending.encode_status_change(change, received_at=T0))
        else:
            admission = pending.Admission(post_process=rng.random() < 0.5, visible=rng.random() < 0.5)
            occ = dataclasses.replace(occurrence(), detection_time=at, id=md5(f"o{i}"))
            records.append(pending.encode_occurrence(occ, admission)[0])
    rng.shuffle(records)
    expected = sorted(records, key=lambda record: pending.sort_key(pending.decode(record)))
    pending.sort_records(records)
    assert records == expected
    assert len({pending.record_time(r) for r in records}) == 3


@pytest.mark.parametrize("key", ["42:" + "a" * 32, "9223372036854775807:ünï:cödé", ""])
def test_a_keyed_record_gives_back_its_key_and_record(key):
    record = pending.sealed_batch(pending.new_batch())
    assert pending.split_keyed(pending.keyed(key, record)) == (key, record)
    assert 0 <= pending.shard_of(key) < pending.BATCH_SHARDS
