"""Sources: a Kafka backfill against a real Kafka-protocol broker (Tansu) gives what the same records
give from files; a live Pub/Sub stream on the streaming DirectRunner against the Pub/Sub emulator; the
cross-language Kafka read's construction (it runs end to end on Flink in test_flink_streaming.py: the
DirectRunner cannot run Java transforms)."""
import time
import uuid

import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import external_transforms_pb2

from issue_platform.config import ConfigError
from issue_platform.generate import generate
from issue_platform.producer import IssueOccurrence, PayloadType, StatusChangeMessage
from pipelines.issue_pipeline import run
from pipelines.options import SourceOptions
from pipeline_support import canonical, latest_groups, read_tables, write_jsonl
from live_support import live_stream
from servers import consume_kafka, create_kafka_topic
from transforms.parse import SourcedPayload
from pipelines.sources_and_sinks import choose_source
from transforms.sources import ReadFromKafkaTopic, ReadKafkaBackfill, kafka_row_payload

COMPARED = ("occurrences", "status_changes", "post_process", "activity", "evidence")


def _produce_raw(bootstrap: str, topic: str, lines, partitions: int = 2) -> None:
    """Lines as they are, invalid ones included (the detector-side producer would refuse those)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for i, line in enumerate(lines):
        producer.produce(topic, line, partition=i % partitions)
    assert producer.flush(20) == 0
    producer.close()


def _watermarks(bootstrap: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in range(partitions)]
    finally:
        consumer.close()


def test_kafka_backfill_gives_the_same_tables_as_the_files(kafka_broker, tmp_path):
    lines = list(generate(600, seed=11, invalid_share=0.03, status_change_share=0.02))
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    topic = f"ingest-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(kafka_broker.address, topic, partitions=2)
    _produce_raw(kafka_broker.address, topic, lines)
    # The broker under-reports its end (the base offset of its last batch + 1): the read must go past it.
    assert sum(_watermarks(kafka_broker.address, topic, 2)) < len(lines)
    as_of = "1793750400"  # 2026-11-04T00:00:00Z, after the generated span
    run(["--input", path, "--output", str(tmp_path / "files"), "--as_of", as_of])
    run(["--source", "kafka", "--bootstrap_servers", kafka_broker.address, "--topic", topic,
         "--output", str(tmp_path / "kafka"), "--as_of", as_of])
    files, kafka = read_tables(tmp_path / "files"), read_tables(tmp_path / "kafka")
    for table in COMPARED:
        assert canonical(files[table]) == canonical(kafka[table]), table
    assert canonical(list(latest_groups(files["groups"]).values())) == canonical(
        list(latest_groups(kafka["groups"]).values()))
    assert len(files["occurrences"]) + len(files["status_changes"]) + len(files["dead_letter"]) == len(lines)
    # Dead letters are the same, and each names the record it came from, which can be read back there.
    sources = [row.pop("source") for row in kafka["dead_letter"]]
    for row in files["dead_letter"]:  # FILE:LINE
        number = int(row.pop("source").removeprefix(f"{path}:"))
        assert lines[number - 1].decode("utf-8", "replace")[:len(row["payload"])] == row["payload"]
    assert canonical(files["dead_letter"]) == canonical(kafka["dead_letter"]) and len(sources) > 10
    by_coordinates = {f"kafka:{topic}:{m.partition()}:{m.offset()}": m.value()
                      for m in consume_kafka(kafka_broker.address, topic, len(lines))}
    for source, row in zip(sources, kafka["dead_letter"]):
        assert by_coordinates[source].decode("utf-8", "replace")[:len(row["payload"])] == row["payload"]


def _occurrence_line(fingerprint: str, t: float) -> bytes:
    return orjson.dumps(IssueOccurrence(
        project_id=1, fingerprint=[fingerprint], issue_title="t", subtitle="s", culprit="c", type=4001,
        detection_time=t).to_dict())


def test_kafka_backfill_from_offsets_and_from_a_start_time(kafka_broker, tmp_path):
    topic = f"ingest-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(kafka_broker.address, topic, partitions=2)
    early = [_occurrence_line(f"early-{i}", 1793491200.0 + i) for i in range(6)]
    late = [_occurrence_line(f"late-{i}", 1793491300.0 + i) for i in range(4)]
    _produce_raw(kafka_broker.address, topic, early)
    time.sleep(0.05)
    start = time.time()
    time.sleep(0.05)
    _produce_raw(kafka_broker.address, topic, late)

    def occurrence_ids(*flags):
        out = tmp_path / uuid.uuid4().hex
        run(["--source", "kafka", "--bootstrap_servers", kafka_broker.address, "--topic", topic,
             "--output", str(out), *flags])
        return sorted(row["occurrence_id"] for row in read_tables(out)["occurrences"])

    ids = {line: orjson.loads(line)["id"] for line in early + late}
    assert occurrence_ids("--kafka_start_time", str(start)) == sorted(ids[line] for line in late)
    # Partition 0 holds early 0, 2, 4 then late 0, 2; partition 1 early 1, 3, 5 then late 1, 3.
    assert occurrence_ids("--kafka_start_offsets", "0:3,1:2") == sorted(
        ids[line] for line in [late[0], late[2], early[5], late[1], late[3]])


def test_live_kafka_read_is_beams_cross_language_read_with_offsets_and_create_time():
    """Construction only (no expansion service started): what the read asks KafkaIO for."""
    options = PipelineOptions(["--source", "kafka", "--topic", "ingest-occurrences",
                               "--kafka_consumer_config", "group.id=issue-platform"]).view_as(SourceOptions)
    transform = choose_source(options, "broker:9092", streaming=True, files=[])
    assert isinstance(transform, ReadFromKafkaTopic)
    read = transform.read
    assert read._urn == "beam:transform:org.apache.beam:kafka_read_with_metadata:v1"
    payload = external_transforms_pb2.ExternalConfigurationPayload.FromString(read._payload)
    from apache_beam.coders import RowCoder

    row = RowCoder(payload.schema).decode(payload.payload)
    assert row.topics == ["ingest-occurrences"] and row.timestamp_policy == "CreateTime"
    assert dict(row.consumer_config) == {"bootstrap.servers": "broker:9092", "auto.offset.reset": "earliest",
                                         "group.id": "issue-platform"}
    assert row.commit_offset_in_finalize is True
    batch = choose_source(options, "broker:9092", streaming=False, files=[])
    assert isinstance(batch, ReadKafkaBackfill)


def test_a_kafka_record_keeps_its_coordinates():
    import apache_beam as beam

    record = beam.Row(topic="ingest-occurrences", partition=3, offset=1200, timestamp=0, key=None, value=None,
                      headers=None, timestampTypeId=0, timestampTypeName="CreateTime")
    assert kafka_row_payload(record) == SourcedPayload(b"", "kafka:ingest-occurrences:3:1200")


@pytest.mark.parametrize("flags, streaming, message", [
    (["--source", "pubsub"], True, "--source pubsub needs --subscription"),
    (["--source", "pubsub", "--subscription", "projects/my-project/subscriptions/s"], False, "add --streaming"),
    (["--source", "pubsub", "--subscription", "projects/p/subscriptions/s"], True, "Invalid PubSub project name"),
    (["--source", "kafka", "--kafka_start_offsets", "0=5"], False, "expected PARTITION:OFFSET"),
    (["--source", "kafka", "--kafka_start_time", "yesterday"], False, "expected RFC 3339"),
    (["--source", "kafka", "--kafka_start_time", "0", "--kafka_start_offsets", "0:1"], False, "give one"),
    (["--source", "kafka", "--kafka_consumer_config", "novalue"], False, "expected KEY=VALUE"),
])
def test_source_option_errors_are_one_line(flags, streaming, message):
    with pytest.raises(ConfigError, match=message):
        choose_source(PipelineOptions(flags).view_as(SourceOptions), "b:1", streaming, files=[])


def test_pubsub_on_flink_is_refused_with_one_line(capsys):
    """Beam's Python Pub/Sub source has no implementation on Flink (docs/flink-streaming.md): refused
    before anything starts, exit 2."""
    from pipelines.cli import main

    code = main(["run", "--runner", "FlinkRunner", "--streaming", "--source", "pubsub",
                 "--subscription", "projects/my-project/subscriptions/s"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--source pubsub does not run on Flink" in err[0]


def test_live_pubsub_stream_groups_occurrences_and_applies_status_changes(pubsub_emulator, tmp_path):
    """Publish with the producer, run the streaming pipeline on the Pub/Sub emulator, poll the output
    files for the expected groups, then cancel. Redelivery cannot be observed locally (the runner
    acks each pull before processing)."""
    from google.cloud import pubsub_v1

    with live_stream(tmp_path) as stream:
        now = time.time()
        for i, fingerprint in enumerate(["cron-a", "cron-b", "cron-a"]):
            stream.producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
                project_id=1, fingerprint=[fingerprint], issue_title="Cron late", subtitle="s", culprit="job",
                type=4001, detection_time=now - 120 + i))
        stream.producer.produce(PayloadType.STATUS_CHANGE, status_change=StatusChangeMessage(
            project_id=1, fingerprint=["cron-b"], new_status=1, update_date=now - 60))
        stream.producer.flush(10)
        publisher = pubsub_v1.PublisherClient()
        bad_id = publisher.publish(stream.producer.transport.topic, b"{not json").result(10)
        stream.start()
        tables = stream.wait_for(lambda t: len(_groups(t)) == 2 and t["status_changes"] and t["dead_letter"])
    groups = _groups(tables)
    assert sorted(g["times_seen"] for g in groups.values()) == [1, 2]
    assert sorted(g["status"] for g in groups.values()) == [0, 1]  # cron-b resolved by its status change
    assert [r["outcome"] for r in tables["status_changes"]] == ["applied"]
    [dead] = tables["dead_letter"]
    assert (dead["reason"], dead["payload"]) == ("invalid_json", "{not json")
    assert dead["source"] == f"pubsub:{stream.subscription}:{bad_id}"
    assert len([r for r in tables["post_process"] if r["project_id"] == 1]) == 3


def _groups(tables) -> dict:
    return {g["fingerprint"]: g for g in latest_groups(tables["groups"]).values() if g["project_id"] == 1}
