"""The JSON Lines sink's file naming (no part's finalisation can delete another part's files), the
Kafka producer step's failure handling against a real client, and the sink options."""
from __future__ import annotations

import os

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from issue_platform.config import ConfigError
from issue_platform.tables import OCCURRENCES, PART_GATE, PART_GROUP, jsonl_prefix, read_jsonl
from pipelines.issue_pipeline import run
from pipelines.runner_tuning import BATCH_RUNNER
from servers import free_port
from tests.pipeline_support import occurrence, write_jsonl
from pipelines.options import SinkOptions
from pipelines.sources_and_sinks import choose_sinks
from transforms import delivery
from transforms.delivery import KafkaDeliverFn
from transforms.sinks import SinkError, WriteJsonLines, parse_topic

pytestmark = pytest.mark.timeout(120)


def test_writing_one_part_never_deletes_another_parts_files(tmp_path):
    """The data-loss bug this naming removes: WriteToText's finalisation deletes the files matching
    `<prefix>-*-of-NNNNN.jsonl`, which once matched the gated part of `occurrences` too."""
    gated = tmp_path / f"{os.path.basename(jsonl_prefix(str(tmp_path), OCCURRENCES, PART_GATE))}-00000-of-00001.jsonl"
    gated.write_bytes(orjson.dumps({"occurrence_id": "gated"}) + b"\n")
    with beam.Pipeline(options=PipelineOptions([f"--runner={BATCH_RUNNER}"])) as p:
        {OCCURRENCES: {PART_GROUP: p | beam.Create([[{"occurrence_id": "grouped"}]])}} | WriteJsonLines(str(tmp_path))
    assert gated.exists()
    assert sorted(r["occurrence_id"] for r in read_jsonl(str(tmp_path), OCCURRENCES)) == ["gated", "grouped"]


def test_a_run_writes_each_table_in_parts_that_read_back_whole(tmp_path):
    payloads = [occurrence("a", t=1793491200.0 + i) for i in range(3)] + [b"{bad"]
    run(["--input", write_jsonl(tmp_path / "in.jsonl", payloads), "--output", str(tmp_path / "out")])
    names = sorted(os.listdir(tmp_path / "out"))
    assert "occurrences.group-00000-of-00001.jsonl" in names and "dead_letter.parse-00000-of-00001.jsonl" in names
    assert all("." in name.split("-")[0] for name in names)  # <table>.<part>-...: no name is another's prefix
    assert len(list(read_jsonl(str(tmp_path / "out"), OCCURRENCES))) == 3


def test_a_message_kafka_cannot_take_is_retried_then_kept_undelivered(tmp_path, monkeypatch):
    """No broker on the port: each attempt's delivery times out; after the bounded retries the
    message is an `undelivered` row (nothing dropped, nothing raised)."""
    port, topic = free_port(), f"kafka:127.0.0.1:{free_port()}/post_process"
    for name, value in (("ATTEMPTS", 2), ("BACKOFF_SECONDS", 0.1), ("ATTEMPT_SECONDS", 1.0)):
        monkeypatch.setattr(delivery, name, value)
    fn = KafkaDeliverFn(topic, f"127.0.0.1:{port}", "post_process", **{"log_level": 0})
    row = {"group_id": 1, "project_id": 2, "group_type": 1, "is_new": True, "is_regression": False}
    with beam.Pipeline(options=PipelineOptions([f"--runner={BATCH_RUNNER}"])) as p:
        (p | beam.Create([[row]]) | beam.ParDo(fn) | beam.FlatMap(lambda rows: rows)
         | beam.Map(orjson.dumps) | beam.io.WriteToText(str(tmp_path / "kept")))
    [kept] = [orjson.loads(line) for path in tmp_path.glob("kept*") for line in path.read_bytes().splitlines()]
    assert (kept["topic"], kept["status"], kept["attempts"], kept["key"]) == (topic, "undelivered", 2, "1")
    assert orjson.loads(kept["body"]) == row and kept["attributes"]["is_new"] == "true"
    assert kept["error"]


def test_topic_and_sink_options_are_checked_before_the_job_starts():
    assert parse_topic("pubsub:projects/my-project/topics/t") == ("pubsub", "projects/my-project/topics/t", None)
    with pytest.raises(ConfigError, match="Invalid PubSub project name: 'p'"):  # Beam's own rule, checked early
        parse_topic("pubsub:projects/p/topics/t")
    assert parse_topic("kafka:127.0.0.1:9092/post_process") == ("kafka", "post_process", "127.0.0.1:9092")
    for bad in ("pubsub:topics/t", "kafka:host:1", "sqs:q", ""):
        with pytest.raises(SinkError, match="--post_process_topic"):
            parse_topic(bad)
    with pytest.raises(SinkError, match="--bigquery_dataset"):
        choose_sinks(PipelineOptions(["--sink", "bigquery"]).view_as(SinkOptions))
    with pytest.raises(SinkError, match="PROJECT:DATASET"):
        choose_sinks(PipelineOptions(["--sink", "bigquery", "--bigquery_dataset", "nodataset"]).view_as(SinkOptions))
