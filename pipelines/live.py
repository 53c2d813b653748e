"""`issue-platform live` (`make live`): the local stack on loopback, end to end.

Starts the Pub/Sub emulator and a Kafka-protocol broker (Tansu), sends generated payloads through
the detector producer to both, runs the streaming pipeline on the Pub/Sub subscription until every
sent payload has an outcome, runs a Kafka backfill over the same payloads, prints what arrived, and
stops everything it started.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Iterator

import orjson

from issue_platform.config import ConfigError
from issue_platform.tables import read_jsonl

PROJECT, TOPIC = "issue-platform-live", "ingest-occurrences"
HEARTBEAT_PROJECT = 999_999
_SHIFTED_FIELDS = ("detection_time", "update_date")


def register(sub) -> None:
    parser = sub.add_parser("live", help="run the local stack (Pub/Sub emulator, Kafka broker) end to end")
    parser.add_argument("--count", type=int, default=300, help="generated payloads to send (default 300)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated payloads (default 7)")
    parser.add_argument("--output", default="out/live", help="output directory (default out/live)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the stream")
    parser.set_defaults(handler=cmd_live)


def recent_payloads(count: int, seed: int, end: float, window: float = 240.0) -> list[bytes]:
    """Generated payloads with their event times squeezed into the `window` seconds before `end`:
    the local Pub/Sub reader's watermark is the wall clock, so a key's events must be recent, or
    those arriving after the key's first flush would be behind its clock by days (`late`)."""
    from issue_platform.generate import BASE_TIME, SPAN_SECONDS, generate

    def squeeze(t: float) -> float:
        return end - window + (t - BASE_TIME) * window / (SPAN_SECONDS + 600)

    lines = []
    for line in generate(count, seed):
        try:
            payload = orjson.loads(line)
        except orjson.JSONDecodeError:
            lines.append(line)
            continue
        if isinstance(payload, dict):
            for name in _SHIFTED_FIELDS:
                if isinstance(payload.get(name), (int, float)) and not isinstance(payload.get(name), bool):
                    payload[name] = squeeze(payload[name])
            line = orjson.dumps(payload)
        lines.append(line)
    return lines


@contextlib.contextmanager
def _local_stack() -> Iterator[tuple]:
    from pipelines.local_stack import start_pubsub_emulator, start_tansu

    started = []
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    try:
        pubsub = start_pubsub_emulator()
        started.append(pubsub)
        kafka = start_tansu()
        started.append(kafka)
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.address
        yield pubsub, kafka
    finally:
        for server in reversed(started):
            server.stop()
            print(f"stopped {server.name} (pid {server.process.pid})")
        if saved is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = saved


def _send(target: str, lines: list[bytes]) -> tuple[int, int]:
    from issue_platform.producer import connect
    from issue_platform.validation import Rejected

    producer, sent, refused = connect(target), 0, 0
    try:
        for line in lines:
            try:
                producer.send_raw(line)
                sent += 1
            except Rejected:
                refused += 1
        producer.flush(60)
    finally:
        producer.close()
    return sent, refused


def _outcomes(output: str) -> int:
    """Rows for the sent payloads so far (every payload ends in exactly one of these tables)."""
    count = sum(1 for table in ("occurrences", "status_changes") for row in read_jsonl(output, table)
                if row["project_id"] != HEARTBEAT_PROJECT)
    return count + sum(1 for _ in read_jsonl(output, "dead_letter"))


def cmd_live(args: argparse.Namespace) -> int:
    from issue_platform.config import load_config
    from issue_platform.producer import IssueOccurrence, PayloadType, connect
    from pipelines.issue_pipeline import run, submit
    from pipelines.local_stack import create_kafka_topic, create_pubsub_topic
    from pipelines.summary import counts_from_outputs, latest_groups, render

    if args.count < 1:
        raise ConfigError("--count must be >= 1")
    lines = recent_payloads(args.count, args.seed, time.time() - 30)
    stream_out, backfill_out = os.path.join(args.output, "stream"), os.path.join(args.output, "kafka-backfill")
    with _local_stack() as (pubsub, kafka):
        print(f"Pub/Sub emulator on {pubsub.address}, Kafka broker (Tansu) on {kafka.address}")
        create_pubsub_topic(PROJECT, TOPIC, ("pipeline",), ordering=True)
        create_kafka_topic(kafka.address, TOPIC, partitions=2)
        sent, refused = _send(f"pubsub:projects/{PROJECT}/topics/{TOPIC}", lines)
        _send(f"kafka:{kafka.address}/{TOPIC}", lines)
        print(f"producer: {sent} sent to Pub/Sub and to Kafka, {refused} refused (invalid, never sent)")

        started = time.monotonic()
        result = submit(["--source", "pubsub", "--subscription", f"projects/{PROJECT}/subscriptions/pipeline",
                         "--streaming", "--output", stream_out], load_config(None))
        heartbeat = connect(f"pubsub:projects/{PROJECT}/topics/{TOPIC}")

        def beat() -> None:  # keeps the local reader pulling, so its wall-clock watermark advances
            heartbeat.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
                project_id=HEARTBEAT_PROJECT, fingerprint=["heartbeat"], issue_title="heartbeat", subtitle="",
                culprit="live", type=4001, detection_time=time.time() - 30))
            heartbeat.flush(10)

        deadline, arrived = time.monotonic() + args.timeout, 0
        try:
            while arrived < sent and time.monotonic() < deadline:
                beat()
                time.sleep(1.0)
                arrived = _outcomes(stream_out)
        finally:
            beat()  # the pending pull returns at once: cancel() need not wait out an idle pull (~30 s)
            result.cancel()
            heartbeat.close()
        print(f"\n== streaming pipeline on Pub/Sub: {arrived} of {sent} payloads have an outcome "
              f"(plus heartbeats in project {HEARTBEAT_PROJECT}) ==")
        print(render(counts_from_outputs(stream_out), latest_groups(stream_out), stream_out,
                     time.monotonic() - started))

        started = time.monotonic()
        run(["--source", "kafka", "--bootstrap_servers", kafka.address, "--topic", TOPIC,
             "--output", backfill_out], load_config(None))
        print(f"\n== Kafka backfill of {TOPIC} ==")
        print(render(counts_from_outputs(backfill_out), latest_groups(backfill_out), backfill_out,
                     time.monotonic() - started))
    print(f"\noutput: {stream_out}/, {backfill_out}/")
    return 0 if arrived >= sent else 1
