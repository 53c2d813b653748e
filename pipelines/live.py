"""`issue-platform live` (`make live`): the local stack on loopback, end to end.

Starts the Pub/Sub emulator, a Kafka-protocol broker (Tansu) and the BigQuery emulator, sends
generated payloads through the detector producer to Pub/Sub and Kafka, runs the streaming pipeline on
the Pub/Sub subscription (tables to BigQuery, post-process messages to a Pub/Sub and a Kafka topic)
until every sent payload has an outcome and every post-process message arrived, runs a Kafka backfill
over the same payloads (JSON Lines files), prints what arrived, and stops everything it started.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Iterator

import orjson

from issue_platform.config import ConfigError

PROJECT, TOPIC = "issue-platform-live", "ingest-occurrences"
DATASET, POST_PROCESS_TOPIC = "live", "post-process"
EVENT_TIME_FIELDS = ("detection_time", "update_date")


def register(sub) -> None:
    summary = "run the local stack (Pub/Sub, Kafka, BigQuery emulators) end to end"
    parser = sub.add_parser("live", help=summary, description=summary + ": send generated payloads, stream "
                            "them through the pipeline into BigQuery and check every one arrived")
    parser.add_argument("--count", type=int, default=300, help="generated payloads to send (default 300)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated payloads (default 7)")
    parser.add_argument("--output", default="out/live", help="output directory (default out/live)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the stream (default 180)")
    parser.add_argument("--runner", choices=("direct", "flink"), default="direct",
                        help="direct: Pub/Sub, Kafka (Tansu) and BigQuery emulators on the DirectRunner; flink: a real "
                             "Kafka broker and the Kafka stream on an embedded Flink cluster (make flink). Default: direct")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink parallelism with --runner flink (default 1)")
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
            for name in EVENT_TIME_FIELDS:
                if isinstance(payload.get(name), (int, float)) and not isinstance(payload.get(name), bool):
                    payload[name] = squeeze(payload[name])
            line = orjson.dumps(payload)
        lines.append(line)
    return lines


@contextlib.contextmanager
def _local_stack() -> Iterator[tuple]:
    from pipelines.local_stack import start_bigquery_emulator, start_pubsub_emulator, start_tansu

    started = []
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    try:
        for start in (start_pubsub_emulator, start_tansu, lambda: start_bigquery_emulator(PROJECT)):
            started.append(start())
        os.environ["PUBSUB_EMULATOR_HOST"] = started[0].address
        yield started
    finally:
        from transforms.delivery import close_producers

        close_producers()  # the post-process step's cached Kafka producer, else it retries the stopped broker
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


class _BigQueryTables:
    """The stream's tables in the BigQuery emulator."""

    def __init__(self, endpoint: str):
        from transforms.sinks import bigquery_client

        self._client = bigquery_client(PROJECT, endpoint)

    def rows(self, table: str) -> list[dict]:
        return [dict(row) for row in self._client.query(f"SELECT * FROM `{PROJECT}.{DATASET}.{table}`").result()]

    def outcomes(self) -> int:
        """Rows for the sent payloads so far (every payload ends in exactly one of these tables)."""
        from issue_platform import outcomes
        from issue_platform.tables import DEAD_LETTER, OCCURRENCES, STATUS_CHANGES

        return (len(self.rows(OCCURRENCES)) + len(self.rows(STATUS_CHANGES))
                + sum(row["stage"] != outcomes.STAGE_SINK for row in self.rows(DEAD_LETTER)))


def _group_states(groups: list[dict]) -> dict:
    return {g["group_id"]: (g["times_seen"], g["status"], g["substatus"], g["priority"]) for g in groups}


def cmd_live(args: argparse.Namespace) -> int:
    from issue_platform.config import load_config
    from issue_platform.tables import GROUPS_CURRENT, POST_PROCESS
    from pipelines.issue_pipeline import run, submit
    from pipelines.local_stack import TopicReader, create_kafka_topic, create_pubsub_topic
    from pipelines.summary import counts_from_outputs, counts_from_rows, latest_groups, render

    if args.runner == "flink":
        from pipelines.live_flink import cmd_live_flink

        return cmd_live_flink(args)
    if args.count < 1:
        raise ConfigError("--count must be >= 1")
    lines = recent_payloads(args.count, args.seed, time.time() - 30)
    backfill_out = os.path.join(args.output, "kafka-backfill")
    with _local_stack() as (pubsub, kafka, bigquery):
        endpoint = f"http://{bigquery.address}"
        print(f"Pub/Sub emulator on {pubsub.address}, Kafka broker (Tansu) on {kafka.address}, "
              f"BigQuery emulator on {endpoint}")
        create_pubsub_topic(PROJECT, TOPIC, ("pipeline",), ordering=True)
        create_pubsub_topic(PROJECT, POST_PROCESS_TOPIC, ("reader",), ordering=True)
        create_kafka_topic(kafka.address, TOPIC, partitions=2)
        create_kafka_topic(kafka.address, POST_PROCESS_TOPIC, partitions=2)
        sent, refused = _send(f"pubsub:projects/{PROJECT}/topics/{TOPIC}", lines)
        _send(f"kafka:{kafka.address}/{TOPIC}", lines)
        print(f"producer: {sent} sent to Pub/Sub and to Kafka, {refused} refused (invalid, never sent)")

        started = time.monotonic()
        post_process_topics = (f"pubsub:projects/{PROJECT}/topics/{POST_PROCESS_TOPIC}",
                               f"kafka:{kafka.address}/{POST_PROCESS_TOPIC}")
        result = submit(["--source", "pubsub", "--subscription", f"projects/{PROJECT}/subscriptions/pipeline",
                         "--streaming", "--sink", "bigquery", "--bigquery_dataset", f"{PROJECT}:{DATASET}",
                         "--bigquery_endpoint", endpoint,
                         *(flag for topic in post_process_topics for flag in ("--post_process_topic", topic))],
                        load_config(None))
        tables = _BigQueryTables(endpoint)
        topics = TopicReader(f"projects/{PROJECT}/subscriptions/reader", kafka.address, POST_PROCESS_TOPIC)

        def messages() -> tuple[list, list]:
            topics.read()
            return topics.pubsub, topics.kafka

        deadline, seen, arrived, posted, on_pubsub, on_kafka = time.monotonic() + args.timeout, None, 0, 0, [], []
        try:
            while time.monotonic() < deadline:
                arrived, posted = tables.outcomes(), len(tables.rows(POST_PROCESS))
                on_pubsub, on_kafka = messages()
                # Done when every payload has its outcome row and the counts held still for one more round
                # (a post-process row or message may trail its occurrence row: another step writes it).
                done = arrived >= sent and len(on_pubsub) == len(on_kafka) == posted
                if done and seen == (arrived, posted):
                    break
                seen = (arrived, posted) if done else None
        finally:
            result.cancel()  # within a second: the local pull waits at most that (pipelines.local_runner)
            topics.close()
        print(f"\n== streaming pipeline on Pub/Sub -> BigQuery {PROJECT}:{DATASET}: {arrived} of {sent} payloads "
              "have an outcome ==")
        current = tables.rows(GROUPS_CURRENT)
        print(render(counts_from_rows(tables.rows), current, None, time.monotonic() - started, files=False))
        print(f"groups in {DATASET}.{GROUPS_CURRENT}: {len(current)}")
        print(f"post-process messages: {posted} rows in {DATASET}.{POST_PROCESS}; {len(on_pubsub)} on Pub/Sub "
              f"{post_process_topics[0]}, {len(on_kafka)} on Kafka {post_process_topics[1]}")

        started = time.monotonic()
        run(["--source", "kafka", "--bootstrap_servers", kafka.address, "--topic", TOPIC,
             "--output", backfill_out], load_config(None))
        print(f"\n== Kafka backfill of {TOPIC} ==")
        backfilled = latest_groups(backfill_out)
        print(render(counts_from_outputs(backfill_out), backfilled, backfill_out, time.monotonic() - started,
                     files=False))
        same = _group_states(backfilled) == _group_states(current)
        print(f"groups: the stream's in BigQuery and the backfill's are {'the same' if same else 'DIFFERENT'}")
    print(f"\noutput: BigQuery {PROJECT}:{DATASET} (gone with the emulator), {backfill_out}/")
    return 0 if arrived >= sent and len(on_pubsub) == len(on_kafka) == posted else 1
