"""A detector's path, live, end to end: the producer sends to the Pub/Sub emulator, the streaming
pipeline (`--source pubsub --streaming`, BundleBasedDirectRunner) writes to the BigQuery emulator and
posts to a post-process topic on Pub/Sub and on Kafka (Tansu); the test reads BigQuery (the
`groups_current` view, the occurrence and status-change rows) and both topics, sends a resolve and
then a new occurrence (a regression) through the producer, and stops the pipeline within a bound.
Every server is real and started by the fixtures."""
from __future__ import annotations

import time
import uuid

import orjson
import pytest

from issue_platform.enums import GroupStatus, GroupSubStatus, PayloadType
from issue_platform.producer import IssueOccurrence, StatusChangeMessage
from issue_platform.tables import GROUPS_CURRENT, OCCURRENCES, POST_PROCESS, STATUS_CHANGES, post_process_message
from bigquery_server import PROJECT as BQ_PROJECT, bigquery_client
from live_support import PROJECT, live_stream
from pipelines.local_stack import TopicReader
from servers import create_kafka_topic, create_pubsub_topic

pytestmark = pytest.mark.timeout(300)
DETECTOR_PROJECT = 1  # the filler messages of live_support are in project 99
STOP_BOUND_SECONDS = 10.0


def _mine(topics: TopicReader) -> tuple[list, list]:
    """The messages of the detector's project (not the filler's)."""
    project = str(DETECTOR_PROJECT)
    return ([m for m in topics.pubsub if m.attributes["project_id"] == project],
            [m for m in topics.kafka if dict(m.headers())["project_id"] == project.encode()])


def test_a_detector_sends_through_pubsub_and_sees_its_issue_in_bigquery_and_on_the_topics(
        tmp_path, pubsub_emulator, kafka_broker, bigquery_emulator):
    dataset, topic = f"live_{uuid.uuid4().hex[:8]}", f"pp-{uuid.uuid4().hex[:8]}"
    create_pubsub_topic(PROJECT, topic, (f"{topic}-sub",), ordering=True)
    create_kafka_topic(kafka_broker.address, topic, partitions=2)
    client = bigquery_client(bigquery_emulator)

    def bigquery() -> dict:
        """The detector's rows in BigQuery: the current groups by culprit (= the fingerprint sent; the
        table holds its hash), and the other tables' rows."""
        def rows(table):
            return [dict(r) for r in client.query(
                f"SELECT * FROM `{BQ_PROJECT}.{dataset}.{table}` WHERE project_id = {DETECTOR_PROJECT}").result()]
        return {"current": {g["culprit"]: g for g in rows(GROUPS_CURRENT)},
                **{table: rows(table) for table in (OCCURRENCES, STATUS_CHANGES, POST_PROCESS)}}

    def occur(fingerprint: str, age: float):
        stream.producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
            project_id=DETECTOR_PROJECT, fingerprint=[fingerprint], issue_title=f"Cron {fingerprint} failed",
            subtitle="exit 1", culprit=fingerprint, type=4001, detection_time=time.time() - age))
        stream.producer.flush(10)

    topics = TopicReader(f"projects/{PROJECT}/subscriptions/{topic}-sub", kafka_broker.address, topic)
    try:
        with live_stream(tmp_path) as stream:
            # Dated in the past (the local reader's watermark is the wall clock); the regression below
            # comes > 5 s after cron-b was created, else Sentry's guard would skip it.
            for i, fingerprint in enumerate(("cron-a", "cron-b", "cron-a")):
                occur(fingerprint, age=120 - i)
            stream.start("--sink", "bigquery", "--bigquery_dataset", f"{BQ_PROJECT}:{dataset}",
                         "--bigquery_endpoint", f"http://{bigquery_emulator.address}",
                         "--post_process_topic", f"pubsub:projects/{PROJECT}/topics/{topic}",
                         "--post_process_topic", f"kafka:{kafka_broker.address}/{topic}")
            # Each table has its own writer: wait until the groups have caught up with the occurrences.
            seen = stream.wait_for(lambda t: len(t[OCCURRENCES]) == 3 and sum(
                g["times_seen"] for g in t["current"].values()) == 3, read=bigquery)
            assert {f: (g["times_seen"], g["status"]) for f, g in seen["current"].items()} == {
                "cron-a": (2, GroupStatus.UNRESOLVED), "cron-b": (1, GroupStatus.UNRESOLVED)}
            assert sorted((r["culprit"], r["outcome"], r["group_id"]) for r in seen[OCCURRENCES]) == sorted(
                (f, "grouped", seen["current"][f]["group_id"]) for f in ("cron-a", "cron-a", "cron-b"))

            # The detector resolves cron-b: the view shows it resolved, the status change is applied.
            stream.producer.produce(PayloadType.STATUS_CHANGE, status_change=StatusChangeMessage(
                project_id=DETECTOR_PROJECT, fingerprint=["cron-b"], new_status=GroupStatus.RESOLVED,
                update_date=time.time() - 60))
            stream.producer.flush(10)
            seen = stream.wait_for(lambda t: t["current"]["cron-b"]["status"] == GroupStatus.RESOLVED, read=bigquery)
            assert seen["current"]["cron-b"]["status"] == GroupStatus.RESOLVED
            assert [(r["group_id"], r["new_status"], r["outcome"]) for r in seen[STATUS_CHANGES]] == [
                (seen["current"]["cron-b"]["group_id"], GroupStatus.RESOLVED, "applied")]
            assert seen["current"]["cron-a"]["status"] == GroupStatus.UNRESOLVED

            # cron-b fails again: a regression, unresolved again, posted with is_regression.
            occur("cron-b", age=30)
            seen = stream.wait_for(lambda t: t["current"]["cron-b"]["times_seen"] == 2, read=bigquery)
            assert (seen["current"]["cron-b"]["status"], seen["current"]["cron-b"]["substatus"]) == (
                GroupStatus.UNRESOLVED, GroupSubStatus.REGRESSED)
            expected = seen[POST_PROCESS]
            assert len(expected) == 4

            def delivered(_):
                topics.read()
                return all(len(got) >= len(expected) for got in _mine(topics))

            stream.wait_for(delivered, read=dict)
            assert stream.stop() < STOP_BOUND_SECONDS
        pubsub, kafka = _mine(topics)
    finally:
        topics.close()

    def by_occurrence(messages):
        return sorted(messages, key=lambda m: m[1]["occurrence_id"])

    want = by_occurrence((key, orjson.loads(body), attributes)
                         for key, body, attributes in map(post_process_message, expected))
    assert by_occurrence((m.ordering_key, orjson.loads(m.data), dict(m.attributes)) for m in pubsub) == want
    assert by_occurrence((m.key().decode(), orjson.loads(m.value()), {k: v.decode() for k, v in m.headers()})
                         for m in kafka) == want
    group_b = str(seen["current"]["cron-b"]["group_id"])
    flags = [(m.attributes["is_new"], m.attributes["is_regression"]) for m in pubsub if m.ordering_key == group_b]
    assert flags == [("true", "false"), ("false", "true")]  # in order: created, then regressed
