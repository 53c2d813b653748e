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


def test_a_live_job_on_an_earlier_jobs_state_must_resume_or_start_fresh_and_versions_go_on(
        pubsub_emulator, bigquery_emulator, tmp_path, capsys):
    """Job 1 writes groups a and b to BigQuery. Job 2 on the same dataset without --resume_from is
    refused (one line, exit 2). With --start_fresh, a is created again above job 1's versions; then
    with --resume_from, b goes on from its state (not new again). Nothing lost, nothing doubled."""
    import uuid

    from bigquery_server import PROJECT as BQ_PROJECT, bigquery_client
    from pipelines.cli import main

    dataset = f"restart_{uuid.uuid4().hex[:8]}"
    sink = ["--sink", "bigquery", "--bigquery_dataset", f"{BQ_PROJECT}:{dataset}",
            "--bigquery_endpoint", f"http://{bigquery_emulator.address}"]
    client = bigquery_client(bigquery_emulator)

    def rows(table: str) -> list:
        return [dict(r) for r in client.query(f"SELECT * FROM `{BQ_PROJECT}.{dataset}.{table}` "
                                              f"WHERE project_id = {PROJECT_ID}").result()]

    def current() -> dict:
        return {g["culprit"]: g for g in rows("groups_current")}

    with live_stream(tmp_path) as stream:
        now = time.time()

        def occur(culprit: str, age: float) -> None:
            stream.producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
                project_id=PROJECT_ID, fingerprint=[culprit], issue_title="t", subtitle="s", culprit=culprit,
                type=4001, detection_time=now - age))
            stream.producer.flush(10)

        for culprit, age in (("a", 200), ("b", 199), ("a", 198)):
            occur(culprit, age)
        stream.start(*sink)
        stream.wait_for(lambda g: sum(x["times_seen"] for x in g.values()) == 3, read=current)
        stream.stop()
        first = current()
        assert {c: (g["times_seen"], g["version"]) for c, g in first.items()} == {"a": (2, 2), "b": (1, 1)}

        argv = ["run", "--source", "pubsub", "--subscription", stream.subscription, "--streaming",
                "--output", str(stream.out), *sink]
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds the state of an earlier job" in err[0]
        assert f"--resume_from bigquery:{BQ_PROJECT}:{dataset}.state" in err[0] and "--start_fresh" in err[0]
        assert main([*argv, "--start_fresh", "--resume_from", "x"]) == 2

        occur("a", 100)
        stream.start(*sink, "--start_fresh")
        stream.wait_for(lambda g: g["a"]["times_seen"] == 1, read=current)
        stream.stop()
        fresh = current()["a"]
        assert fresh["version"] > first["a"]["version"]  # shown by groups_current, not job 1's row

        occur("b", 90)
        stream.start(*sink, "--resume_from", f"bigquery:{BQ_PROJECT}:{dataset}.state")
        stream.wait_for(lambda g: g["b"]["times_seen"] == 2, read=current)
        stream.stop()
    final = current()
    assert (final["b"]["times_seen"], final["b"]["version"]) == (2, 2)
    assert final["a"] == fresh
    occurrences = rows("occurrences")
    assert len(occurrences) == len({r["occurrence_id"] for r in occurrences}) == 5  # none lost, none doubled
    new = sorted(r["group_id"] == final["b"]["group_id"] for r in rows("post_process") if r["is_new"])
    assert new == [False, False, True]  # a twice (job 1, and the fresh start), b once


def test_a_live_job_on_json_lines_with_an_earlier_state_is_refused(tmp_path, capsys):
    """The same rule for the JSON Lines sink: refused before anything is read (no server needed)."""
    from pipelines.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "state.group-1.jsonl").write_text('{"key": "1:x"}\n')
    (out / "groups.group-1.jsonl").write_text('{"group_id": 1, "version": 7}\n')
    argv = ["run", "--source", "pubsub", "--subscription", "projects/p/subscriptions/s", "--streaming",
            "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--resume_from {out}" in err[0]
    from pipelines.restart import sink_history
    from pipelines.options import SinkOptions
    from apache_beam.options.pipeline_options import PipelineOptions

    assert sink_history(PipelineOptions([]).view_as(SinkOptions), str(out)).max_version == 7


def _project_messages(messages: list) -> dict:
    """Kafka messages of the test's project, by occurrence id -> how many times each arrived."""
    import collections

    import orjson

    return collections.Counter(orjson.loads(m.value())["occurrence_id"] for m in messages
                               if dict(m.headers())["project_id"] == str(PROJECT_ID).encode())


def test_a_kafka_outage_keeps_messages_undelivered_and_resend_delivers_them(pubsub_emulator, tmp_path, capsys):
    """The post-process broker stops mid-stream: the tables go on, the messages of the outage are
    retried with backoff, then kept in `undelivered`; the broker comes back (same port, topic made
    again: it keeps topics in memory) and delivery resumes; `issue-platform resend` delivers the
    kept ones, once. Every post-process row reaches the topic exactly once."""
    from issue_platform.tables import read_jsonl
    from pipelines.cli import main
    from pipelines.local_stack import start_tansu
    from servers import consume_kafka, create_kafka_topic

    broker = start_tansu()
    port, topic = int(broker.address.rsplit(":", 1)[1]), "post-process"
    try:
        create_kafka_topic(broker.address, topic)
        with live_stream(tmp_path) as stream:
            now = time.time()

            def occur(prefix: str, count: int, age: float) -> None:
                for i in range(count):
                    stream.producer.produce(PayloadType.OCCURRENCE, occurrence=_occurrence(f"{prefix}-{i}", now - age + i))
                stream.producer.flush(10)

            def rows(table: str) -> list:
                return _mine([{**r, "project_id": r.get("project_id", int((r.get("attributes") or {}).get(
                    "project_id", 0)))} for r in read_jsonl(str(stream.out), table)])

            occur("before", 3, 200)
            stream.start("--post_process_topic", f"kafka:{broker.address}/{topic}")
            stream.wait_for(lambda _: len(_project_messages(consume_kafka(broker.address, topic, 10**6, 2))) == 3,
                            read=dict)
            before = _project_messages(consume_kafka(broker.address, topic, 10**6, 2))

            broker.stop()
            occur("during", 3, 150)
            stream.wait_for(lambda _: len(rows("undelivered")) >= 3, read=dict, timeout=120)
            assert len(rows("occurrences")) == 6  # the tables went on during the outage

            broker = start_tansu(port)  # the job's producer reconnects and, Tansu auto-creating, makes the topic
            occur("after", 3, 100)
            stream.wait_for(lambda _: len(_project_messages(consume_kafka(broker.address, topic, 10**6, 2))) == 3,
                            read=dict, timeout=60)
        capsys.readouterr()
        kept = len(list(read_jsonl(str(stream.out), "undelivered")))  # the filler's messages too
        assert main(["resend", "--output", str(stream.out)]) == 0
        assert f"resent {kept} of {kept} undelivered message(s); 0 still undeliverable" in capsys.readouterr().out
        assert main(["resend", "--output", str(stream.out)]) == 0
        assert "resent 0 of 0" in capsys.readouterr().out
        after = _project_messages(consume_kafka(broker.address, topic, 10**6, 3))
    finally:
        broker.stop()
    posted = {r["occurrence_id"] for r in rows("post_process")}
    assert len(posted) == 9 and not set(before) & set(after)
    assert before + after == dict.fromkeys(posted, 1)  # none lost, none doubled


@pytest.mark.parametrize("kind", ["pubsub", "kafka"])
def test_a_missing_post_process_topic_is_one_line_and_exit_2_before_the_job_starts(
        kind, pubsub_emulator, kafka_broker, tmp_path, capsys):
    from pipelines.cli import main
    from servers import free_port

    topic = {"pubsub": "pubsub:projects/live-test/topics/no-such-topic",
             "kafka": f"kafka:{kafka_broker.address}/no-such-topic"}[kind]
    argv = ["run", "--output", str(tmp_path / "out"), "--post_process_topic", topic]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"issue-platform: error: --post_process_topic {topic}: ") and "not found" in line
    assert not (tmp_path / "out").exists()  # nothing was run, nothing written
    if kind == "kafka":  # no broker at all: the same, within the check's bound
        unreachable = f"kafka:127.0.0.1:{free_port()}/t"
        assert main(["run", "--output", str(tmp_path / "out"), "--post_process_topic", unreachable]) == 2
        assert "cannot reach the Kafka broker" in capsys.readouterr().err
