"""The live path under faults, through the real servers (Pub/Sub emulator, Tansu, BigQuery emulator):
each test counts what was lost or doubled."""
from __future__ import annotations

import time

import pytest

from issue_platform.enums import PayloadType
from issue_platform.producer import IssueOccurrence
from live_support import live_stream
from transforms.sources import attribute_time

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]
PROJECT_ID = 1  # the filler messages of live_support are in project 99


def _occurrence(fingerprint: str, detection_time: float) -> IssueOccurrence:
    return IssueOccurrence(project_id=PROJECT_ID, fingerprint=[fingerprint], issue_title="Cron late", subtitle="s",
                           culprit="job", type=4001, detection_time=detection_time)


def _mine(rows: list) -> list:
    return [r for r in rows if r.get("project_id") == PROJECT_ID]


@pytest.mark.parametrize("value", ["yesterday-ish", "0", "-5", "3000-01-01T00:00:01Z", "99999999999999999", ""])
def test_an_event_time_attribute_out_of_range_or_unparsable_is_refused(value):
    from issue_platform.validation import Rejected

    with pytest.raises(Rejected) as refused:
        attribute_time(value, "event_time")
    assert (refused.value.reason, refused.value.field) == ("invalid_value", "event_time")


def test_an_event_time_attribute_in_range_is_unix_milliseconds_or_rfc_3339():
    assert attribute_time("1700000000123", "event_time") == 1700000000.123
    assert attribute_time("2023-11-14T22:13:20Z", "event_time") == 1700000000.0


def test_a_bad_event_time_attribute_is_dead_lettered_and_the_stream_goes_on(pubsub_emulator, tmp_path):
    """Messages whose `event_time` attribute does not parse, or lies outside the accepted range, are
    dead-lettered with their message id; the good messages before and after them all land once."""
    from google.cloud import pubsub_v1

    bad_values = ["yesterday-ish", "0", "3001-01-01T00:00:00Z"]
    with live_stream(tmp_path) as stream:
        publisher, now = pubsub_v1.PublisherClient(), time.time()
        topic = stream.producer.transport.topic

        def good(fingerprint: str, i: int) -> None:
            stream.producer.produce(PayloadType.OCCURRENCE, occurrence=_occurrence(fingerprint, now - 120 + i))
            stream.producer.flush(10)

        for i in range(5):
            good(f"before-{i}", i)
        payload = b'{"payload_type": "occurrence"}'
        bad_ids = {publisher.publish(topic, payload, event_time=value).result(10): value for value in bad_values}
        stream.start()
        for i in range(5):
            good(f"after-{i}", 10 + i)
        tables = stream.wait_for(lambda t: len(_mine(t["occurrences"])) >= 10 and len(t["dead_letter"]) >= 3)
    dead = {row["source"].rsplit(":", 1)[1]: row for row in tables["dead_letter"]}
    assert set(dead) == set(bad_ids)
    assert {(r["stage"], r["reason"], r["field"]) for r in dead.values()} == {("parse", "invalid_value", "event_time")}
    assert all(r["source"] == f"pubsub:{stream.subscription}:{i}" for i, r in dead.items())
    landed = _mine(tables["occurrences"])
    assert len(landed) == len({r["occurrence_id"] for r in landed}) == 10  # none lost, none doubled
