"""`issue-platform live --runner flink` (`make flink`): the local stack on Apache Flink, end to end.

Starts a real Apache Kafka broker (KRaft, 127.0.0.1, from `make jars`' jars), sends generated payloads
through the detector producer, runs the live stream `--source kafka --streaming --runner FlinkRunner`
(an embedded Flink cluster; Beam's Java KafkaIO inside its TaskManager, the Python steps in an SDK
worker pool in this process) with checkpoints every 5 s, tables to JSON Lines under `--output` and the
post-process messages to a Kafka topic; waits until every payload has its outcome row and every
post-process message is on the topic, prints what arrived, cancels the job and stops what it started.

Event times are set just ahead of the wall clock, so each key's events wait for the watermark and are
applied in event-time order, as a batch run applies them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

from issue_platform.config import ConfigError

TOPIC, POST_PROCESS_TOPIC = "ingest-occurrences", "post-process"
AHEAD_SECONDS, SPAN_SECONDS = 25.0, 20.0


def cmd_live_flink(args: argparse.Namespace) -> int:
    from issue_platform.config import load_config
    from issue_platform.tables import DEAD_LETTER, OCCURRENCES, POST_PROCESS, STATUS_CHANGES, read_jsonl
    from pipelines import jars
    from pipelines.issue_pipeline import running
    from pipelines.live import _send, recent_payloads
    from pipelines.local_stack import KAFKA_CONSUMER_DEFAULTS, create_kafka_topic, start_kafka
    from pipelines.summary import counts_from_outputs, latest_groups, render
    from transforms.delivery import close_producers

    if args.count < 1:
        raise ConfigError("--count must be >= 1")
    jars.ensure(log=lambda line: print(line, flush=True))
    out = os.path.join(args.output, "flink")
    shutil.rmtree(out, ignore_errors=True)  # the stream appends: start from no tables (out/live/flink only)
    lines = recent_payloads(args.count, args.seed, time.time() + AHEAD_SECONDS, window=SPAN_SECONDS)
    kafka = start_kafka(jars.KAFKA_BROKER.classpath())
    consumer = None
    try:
        print(f"Kafka {jars.KAFKA} (KRaft) on {kafka.address}")
        create_kafka_topic(kafka.address, TOPIC, partitions=2)
        create_kafka_topic(kafka.address, POST_PROCESS_TOPIC, partitions=2)
        sent, refused = _send(f"kafka:{kafka.address}/{TOPIC}", lines)
        print(f"producer: {sent} sent to Kafka, {refused} refused (invalid, never sent)", flush=True)
        consumer = _reader(kafka.address, KAFKA_CONSUMER_DEFAULTS)
        started, posted, arrived = time.monotonic(), [], 0
        argv = ["--runner", "FlinkRunner", "--streaming", "--parallelism", str(args.parallelism),
                "--source", "kafka", "--bootstrap_servers", kafka.address, "--topic", TOPIC, "--output", out,
                "--post_process_topic", f"kafka:{kafka.address}/{POST_PROCESS_TOPIC}", "--checkpointing_interval", "5000"]
        with running(argv, load_config(None)):
            print("stream submitted to an embedded Flink cluster; waiting for every outcome", flush=True)
            deadline, seen = time.monotonic() + args.timeout, None
            while time.monotonic() < deadline:
                arrived = sum(1 for table in (OCCURRENCES, STATUS_CHANGES, DEAD_LETTER) for _ in read_jsonl(out, table))
                rows = sum(1 for _ in read_jsonl(out, POST_PROCESS))
                posted += consumer.consume(1000, timeout=1.0)
                done = arrived >= sent and len(posted) == rows
                if done and seen == (arrived, rows):
                    break
                seen = (arrived, rows) if done else None
        rows = sum(1 for _ in read_jsonl(out, POST_PROCESS))
        print(f"\n== streaming pipeline on Flink, Kafka {TOPIC} -> JSON Lines {out}: {arrived} of {sent} payloads "
              f"have an outcome ==")
        print(render(counts_from_outputs(out), latest_groups(out), out, time.monotonic() - started))
        print(f"post-process messages: {rows} rows in {POST_PROCESS}; {len(posted)} on Kafka {POST_PROCESS_TOPIC}")
    finally:
        if consumer is not None:
            consumer.close()
        close_producers()
        kafka.stop()
        print(f"stopped {kafka.name} (pid {kafka.process.pid}); the Flink job server and worker pool went with the job")
    return 0 if arrived >= sent and len(posted) == rows else 1


def _reader(bootstrap: str, defaults: dict):
    """Every partition of the post-process topic from its beginning (no group join)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "make-flink", "enable.auto.commit": False,
                         **defaults})
    partitions = consumer.list_topics(POST_PROCESS_TOPIC, timeout=10).topics[POST_PROCESS_TOPIC].partitions
    consumer.assign([TopicPartition(POST_PROCESS_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
    return consumer
