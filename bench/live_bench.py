"""Latency and throughput of the local live path: the streaming pipeline on the Pub/Sub emulator,
tables to the BigQuery emulator, post-process messages to a Pub/Sub and a Kafka (Tansu) topic, as
`make live` runs it, with no heartbeat.

  idle   one occurrence every `--idle-gap` seconds (`--idle` of them), each on a new group
  burst  `--burst` occurrences published at once (over `--groups` groups), then nothing

For each message: publish -> its occurrence row visible in BigQuery, and publish -> its post-process
message received on Kafka (the Pub/Sub topic's is checked to arrive too). Prints p50/p99/max of both,
per phase, and the burst's throughput (messages landed per second, from the first publish to the last
row). The last line is one JSON object.

    .venv/bin/python bench/live_bench.py [--burst 500] [--idle 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

PROJECT, DATASET, TOPIC, POST = "live-bench", "bench", "ingest", "post-process"


def percentile(values: list, p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


class Watch:
    """When each occurrence id's row became visible in BigQuery and its message arrived on Kafka and Pub/Sub."""

    def __init__(self, client, kafka: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        from google.cloud import pubsub_v1

        self.client, self.rows, self.kafka, self.pubsub = client, {}, {}, {}
        self.consumer = Consumer({"bootstrap.servers": kafka, "group.id": uuid.uuid4().hex, "log_level": 0,
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(POST, 0, OFFSET_BEGINNING)])
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = f"projects/{PROJECT}/subscriptions/{POST}-reader"

    def poll(self) -> None:
        from pipelines.local_stack import pull_acknowledged

        now = time.time()
        for row in self.client.query(f"SELECT occurrence_id FROM `{PROJECT}.{DATASET}.occurrences`").result():
            self.rows.setdefault(row["occurrence_id"], now)
        for message in self.consumer.consume(10000, timeout=0.2):
            if message.error() is None:
                self.kafka.setdefault(orjson.loads(message.value())["occurrence_id"], time.time())
        for message in pull_acknowledged(self.subscriber, self.subscription, timeout=1):
            self.pubsub.setdefault(orjson.loads(message.data)["occurrence_id"], time.time())

    def wait(self, ids: set, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if ids <= set(self.rows) and ids <= set(self.kafka) and ids <= set(self.pubsub):
                return True
            time.sleep(0.2)
        return False


def summary(sent: dict, seen: dict) -> dict:
    latencies = [seen[i] - t for i, t in sent.items() if i in seen]
    return {"n": len(latencies), "missing": len(sent) - len(latencies), "p50": round(percentile(latencies, 50), 2),
            "p99": round(percentile(latencies, 99), 2), "max": round(max(latencies, default=float("nan")), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--groups", type=int, default=50)
    parser.add_argument("--idle", type=int, default=10)
    parser.add_argument("--idle-gap", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    from issue_platform.config import load_config
    from issue_platform.producer import IssueOccurrence, PayloadType, connect
    from pipelines.issue_pipeline import submit
    from pipelines.local_stack import (create_kafka_topic, create_pubsub_topic, start_bigquery_emulator,
                                       start_pubsub_emulator, start_tansu)
    from transforms.delivery import close_producers
    from transforms.sinks import bigquery_client

    servers = []
    try:
        for start in (start_pubsub_emulator, start_tansu, lambda: start_bigquery_emulator(PROJECT)):
            servers.append(start())
        pubsub, kafka, bigquery = servers
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.address
        create_pubsub_topic(PROJECT, TOPIC, ("pipeline",), ordering=True)
        create_pubsub_topic(PROJECT, POST, (f"{POST}-reader",), ordering=True)
        create_kafka_topic(kafka.address, POST)
        endpoint = f"http://{bigquery.address}"
        result = submit(["--source", "pubsub", "--subscription", f"projects/{PROJECT}/subscriptions/pipeline",
                         "--streaming", "--sink", "bigquery", "--bigquery_dataset", f"{PROJECT}:{DATASET}",
                         "--bigquery_endpoint", endpoint,
                         "--post_process_topic", f"pubsub:projects/{PROJECT}/topics/{POST}",
                         "--post_process_topic", f"kafka:{kafka.address}/{POST}"], load_config(None))
        producer = connect(f"pubsub:projects/{PROJECT}/topics/{TOPIC}")
        watch = Watch(bigquery_client(PROJECT, endpoint), kafka.address)

        def send(fingerprint: str) -> str:
            occurrence = IssueOccurrence(project_id=1, fingerprint=[fingerprint], issue_title="t", subtitle="s",
                                         culprit="c", type=4001, detection_time=time.time())
            producer.produce(PayloadType.OCCURRENCE, occurrence=occurrence)
            return occurrence.id

        time.sleep(5)  # the job's first pull
        idle = {}
        for i in range(args.idle):
            occurrence_id = send(f"idle-{i}")
            producer.flush(10)
            idle[occurrence_id] = time.time()
            watch.wait({occurrence_id}, args.idle_gap)
        watch.wait(set(idle), args.timeout)

        burst, started = {}, time.time()
        for i in range(args.burst):
            burst[send(f"burst-{i % args.groups}")] = time.time()
        producer.flush(30)
        complete = watch.wait(set(burst), args.timeout)
        landed = max((watch.rows[i] for i in burst if i in watch.rows), default=started)
        figures = {"idle": {"row": summary(idle, watch.rows), "kafka": summary(idle, watch.kafka),
                            "pubsub": summary(idle, watch.pubsub)},
                   "burst": {"row": summary(burst, watch.rows), "kafka": summary(burst, watch.kafka),
                             "pubsub": summary(burst, watch.pubsub),
                             "per_s": round(len(burst) / max(landed - started, 1e-9), 1), "complete": complete}}
        for phase in ("idle", "burst"):
            for what in ("row", "kafka", "pubsub"):
                f = figures[phase][what]
                print(f"{phase:5} publish -> {what:6}: p50 {f['p50']:6.2f} s  p99 {f['p99']:6.2f} s  "
                      f"max {f['max']:6.2f} s  ({f['n']} seen, {f['missing']} missing)")
        print(f"burst: {args.burst} messages landed at {figures['burst']['per_s']} /s")
        producer.close()
        result.cancel()
        print(json.dumps(figures))
        return 0 if complete else 1
    finally:
        close_producers()
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
