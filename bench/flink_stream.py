"""The live Kafka stream on Flink, measured end to end: a real Kafka broker (KRaft, loopback), the
embedded Flink cluster, tables as JSON Lines.

  throughput  `--count` generated payloads (event times in the last four minutes) are in the topic
              before the job starts; records/s = outcomes / (time the last outcome row appeared - time
              the first did), so the job's start-up (~25 s) is left out. Run at each `--parallelism`.
  latency     with the job running and caught up, payloads are produced at `--rate`/s for `--seconds`,
              each dated when it is sent; produce-to-row = when its occurrence row is first seen (files
              polled every 0.2 s) - when it was sent; p50 and p99.
  hot key     `--count` occurrences of one fingerprint (one key: one core), backlog mode.
  CPU         each throughput run also reports the CPU (user + system) per record of this process (the
              Python SDK workers) and of the JVMs it started, from the first outcome row to the last.

    make bench-flink ARGS='[--count 20000] [--parallelism 1 2] [--rate 500] [--seconds 20]
        [--hot_key_count N (0: skip)] [--extra "--max_bundle_time_mills 20"]'
    (--parallelism with no value and --rate 0 skip those parts; make runs it in a private network
    namespace, as `make flink`: Beam's Java servers listen on every interface)

The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import glob
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

from issue_platform.config import load_config
from issue_platform.generate import generate
from issue_platform.tables import DEAD_LETTER, OCCURRENCES, STATUS_CHANGES, jsonl_glob, read_jsonl
from pipelines import jars
from pipelines.issue_pipeline import running
from pipelines.live import recent_payloads
from pipelines.local_stack import create_kafka_topic, start_kafka

PARTITIONS = 2
OUTCOMES = (OCCURRENCES, STATUS_CHANGES, DEAD_LETTER)


def _produce(bootstrap: str, topic: str, lines, rate: float = 0.0) -> dict:
    """Sends raw lines (invalid ones too: they become dead letters); with `rate`, paced and each
    occurrence re-dated to its send time. Returns {occurrence id: send time}."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent, started = {}, time.time()
    for i, line in enumerate(lines):
        if rate:
            wait = started + i / rate - time.time()
            if wait > 0:
                time.sleep(wait)
            payload = orjson.loads(line)
            payload["detection_time"] = now = time.time()
            sent[uuid.UUID(payload["id"]).hex] = now  # as the occurrence row spells it
            line = orjson.dumps(payload)
        producer.produce(topic, line, key=str(i % 997).encode())
        producer.poll(0)
    producer.flush(60)
    return sent


def _count(out: str) -> int:
    """Outcome rows so far, by counting lines (the poll shares the process with the SDK worker)."""
    return sum(open(path, "rb").read().count(b"\n") for table in OUTCOMES for path in glob.glob(jsonl_glob(out, table)))


EXTRA: list = []  # --extra: more pipeline flags for every job


def _stream(bootstrap: str, topic: str, out: str, parallelism: int):
    return running(["--runner", "FlinkRunner", "--streaming", "--parallelism", str(parallelism), "--source", "kafka",
                    "--bootstrap_servers", bootstrap, "--topic", topic, "--output", out, *EXTRA], load_config(None))


def _cpu_seconds(broker_pid: int) -> dict:
    """CPU seconds (user + system) so far of this process (the SDK workers, Python) and of its JVM
    children other than the broker (the job server with the embedded Flink, the expansion service)."""
    import psutil

    me = psutil.Process()
    seconds = {"python": sum(me.cpu_times()[:2]), "jvm": 0.0}
    for child in me.children(recursive=True):
        try:
            if child.pid != broker_pid and child.name() == "java":
                seconds["jvm"] += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return seconds


def throughput(broker, lines: list, parallelism: int, timeout: float = 600.0) -> dict:
    """Records/s from the first outcome row to the last, and the CPU each side spent per record meanwhile."""
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(broker.address, topic, partitions=PARTITIONS)
    _produce(broker.address, topic, lines)
    with tempfile.TemporaryDirectory() as out, _stream(broker.address, topic, out, parallelism):
        deadline, first, seen = time.monotonic() + timeout, None, 0
        while seen < len(lines) and time.monotonic() < deadline:
            seen = _count(out)
            if seen and first is None:
                first, cpu_at_first = time.monotonic(), _cpu_seconds(broker.process.pid)
            time.sleep(0.5)
        last, cpu = time.monotonic(), _cpu_seconds(broker.process.pid)
    per_record = {f"{side}_cpu_us": round((cpu[side] - cpu_at_first[side]) / max(seen, 1) * 1e6)
                  for side in cpu}
    return {"records": seen, "per_s": round(seen / max(last - first, 1e-9)), "seconds": round(last - first, 1),
            **per_record}


def latency(bootstrap: str, rate: float, seconds: float, parallelism: int) -> dict:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(bootstrap, topic, partitions=PARTITIONS)
    lines = [line for line in generate(int(rate * seconds) + 50, seed=5, invalid_share=0, duplicate_share=0,
                                       status_change_share=0)]
    with tempfile.TemporaryDirectory() as out, _stream(bootstrap, topic, out, parallelism):
        _produce(bootstrap, topic, lines[:50], rate=50)  # dated now: wait until the job reads and writes
        deadline = time.monotonic() + 180
        while _count(out) < 50 and time.monotonic() < deadline:
            time.sleep(0.5)
        sent: dict = {}
        producer = threading.Thread(target=lambda: sent.update(_produce(bootstrap, topic, lines[50:], rate)))
        producer.start()
        seen_at: dict = {}
        deadline = time.monotonic() + seconds + 120
        while time.monotonic() < deadline:
            now = time.time()
            for row in read_jsonl(out, OCCURRENCES):
                seen_at.setdefault(row["occurrence_id"], now)
            if not producer.is_alive() and all(i in seen_at for i in sent):
                break
            time.sleep(0.2)
        producer.join()
    delays = sorted(seen_at[i] - t for i, t in sent.items() if i in seen_at)
    pick = lambda q: round(delays[min(len(delays) - 1, int(q * len(delays)))], 2)  # noqa: E731
    return {"rate": rate, "sent": len(sent), "seen": len(delays), "p50_s": pick(0.5), "p99_s": pick(0.99)}


def hot_key(count: int) -> list:
    now = time.time()
    base = orjson.loads(next(line for line in generate(50, seed=3) if b'"occurrence"' in line))
    lines = []
    for i in range(count):
        event_id = uuid.uuid4().hex
        base.update(id=uuid.uuid4().hex, event_id=event_id, detection_time=now - 200 + i * 180 / count)
        if isinstance(base.get("event"), dict):
            base["event"]["event_id"] = event_id
        lines.append(orjson.dumps(base))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--parallelism", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hot_key_count", type=int, default=None, help="default: --count; 0: skip")
    parser.add_argument("--extra", default="", help="more pipeline flags for every job, e.g. '--max_bundle_time_mills 100'")
    args = parser.parse_args()
    EXTRA.extend(args.extra.split())
    jars.ensure()
    broker = start_kafka(jars.KAFKA_BROKER.classpath())
    figures = {}
    try:
        lines = recent_payloads(args.count, 7, time.time() - 30)
        for parallelism in args.parallelism:
            figures[f"throughput_p{parallelism}"] = throughput(broker, lines, parallelism)
            print(figures, flush=True)
        hot = args.count if args.hot_key_count is None else args.hot_key_count
        if hot:
            figures["hot_key_p1"] = throughput(broker, hot_key(hot), 1)
            print(figures, flush=True)
        if args.rate:
            figures["latency_p1"] = latency(broker.address, args.rate, args.seconds, 1)
    finally:
        broker.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
