"""The live Kafka stream on Apache Flink: a real Kafka broker (KRaft, tests/kafka_broker.py), Beam's
cross-language `ReadFromKafka` expanded by Beam's IO expansion service and run inside Flink's
TaskManager, the Python steps in an SDK worker pool in this process on 127.0.0.1, an embedded Flink
cluster (the job server's). Payloads go in through the project's producer; the tables come out as JSON
Lines, the post-process messages on a Kafka topic.

Event times are set a few seconds ahead of the wall clock, so every event waits for the watermark
(Kafka CreateTime, then the wall clock once the partitions are idle) and each key's events are
applied in event-time order, as a batch run applies them: the stream's tables then equal a files
run's over the same payloads.
"""
from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import psutil
import pytest

from issue_platform.config import load_config
from issue_platform.tables import DEAD_LETTER, OCCURRENCES, STATUS_CHANGES
from pipelines.issue_pipeline import run, running
from pipelines.live import EVENT_TIME_FIELDS, recent_payloads
from pipeline_support import canonical, latest_groups, read_tables, write_jsonl
from servers import consume_kafka, create_kafka_topic

pytestmark = pytest.mark.servers
COMPARED = ("occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter")
AHEAD_SECONDS, SPAN_SECONDS = 25.0, 20.0  # event times: from now + 5 s to now + 25 s
STREAM_TIMEOUT_SECONDS = 240.0
FLINK = ["--runner", "FlinkRunner", "--streaming", "--parallelism", "1"]


def _payloads(count: int, seed: int) -> list[bytes]:
    return recent_payloads(count, seed, time.time() + AHEAD_SECONDS, window=SPAN_SECONDS)


def _produce(bootstrap: str, topic: str, lines: list[bytes], rate: float = 0.0) -> list[bytes]:
    """Through the project's producer (`issue-platform produce`'s); the lines it sent (it refuses
    those the pipeline would dead-letter as invalid). With `rate`, paced at `rate` per second and each
    payload re-dated to a few seconds after it is sent, so that it still waits for the watermark."""
    from issue_platform.producer import connect
    from issue_platform.validation import Rejected

    producer, sent, started = connect(f"kafka:{bootstrap}/{topic}"), [], time.monotonic()
    try:
        for i, line in enumerate(lines):
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
                line = _redated(line, time.time() + 3.0)
            try:
                producer.send_raw(line)
                sent.append(line)
            except Rejected:
                pass
        producer.flush(30)
    finally:
        producer.close()
    return sent


def _redated(line: bytes, at: float) -> bytes:
    try:
        payload = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(payload, dict):
        payload.update({name: at for name in EVENT_TIME_FIELDS if name in payload})
    return orjson.dumps(payload)


def _outcomes(tables: dict) -> int:
    return sum(len(tables[name]) for name in (OCCURRENCES, STATUS_CHANGES, DEAD_LETTER))


def _wait_for_outcomes(out, expected: int, timeout: float = STREAM_TIMEOUT_SECONDS) -> dict:
    """The tables once every payload has its outcome row and one more second passed with no new
    row (a post-process or group row may trail its occurrence row); the last read on timeout."""
    deadline, previous = time.monotonic() + timeout, None
    while True:
        tables = read_tables(out)
        counts = {name: len(rows) for name, rows in tables.items()}
        if (_outcomes(tables) >= expected and counts == previous) or time.monotonic() > deadline:
            return tables
        previous = counts if _outcomes(tables) >= expected else None
        time.sleep(1.0)


def _listening(pids: set[int]) -> set[str]:
    """The addresses `pids` listen on (TCP)."""
    return {c.laddr.ip.removeprefix("::ffff:") for c in psutil.net_connections("tcp")
            if c.pid in pids and c.status == psutil.CONN_LISTEN}


def test_kafka_stream_on_flink_gives_the_files_run_tables(apache_kafka, tmp_path):
    lines = _payloads(300, seed=21)
    topic, post_topic = f"ingest-{uuid.uuid4().hex[:8]}", f"post-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(apache_kafka.address, topic, partitions=2)
    create_kafka_topic(apache_kafka.address, post_topic, partitions=2)
    sent = _produce(apache_kafka.address, topic, lines)
    assert 0 < len(sent) < len(lines)  # some generated payloads are invalid: refused, never sent
    out = tmp_path / "stream"
    argv = [*FLINK, "--source", "kafka", "--bootstrap_servers", apache_kafka.address, "--topic", topic,
            "--output", str(out), "--post_process_topic", f"kafka:{apache_kafka.address}/{post_topic}"]
    with running(argv, load_config(None)):
        # While the job runs: the broker and this process (the SDK worker pool) listen on loopback only.
        # (The job server's embedded Flink cannot be told: docs/flink.md, "What listens".)
        assert _listening({apache_kafka.process.pid, os.getpid()}) <= {"127.0.0.1"}
        stream = _wait_for_outcomes(out, len(sent))
    assert _outcomes(stream) == len(sent)

    run(["--input", write_jsonl(tmp_path / "sent.jsonl", sent), "--output", str(tmp_path / "files")], load_config(None))
    files = read_tables(tmp_path / "files")
    for row in stream[DEAD_LETTER]:
        row.pop("source")  # kafka:TOPIC:PARTITION:OFFSET in the stream, none from files
    for row in files[DEAD_LETTER]:
        row.pop("source")
    for table in COMPARED:
        assert canonical(stream[table]) == canonical(files[table]), table
    assert canonical(list(latest_groups(stream["groups"]).values())) == canonical(
        list(latest_groups(files["groups"]).values()))
    posted = consume_kafka(apache_kafka.address, post_topic, len(files["post_process"]), timeout=30)
    assert sorted(orjson.loads(m.value())["group_id"] for m in posted) == sorted(
        r["group_id"] for r in files["post_process"])
    new = [r["group_id"] for r in stream["post_process"] if r["is_new"]]
    assert len(new) == len(set(new)) == len(latest_groups(files["groups"]))



def _job_server_pids() -> list[int]:
    """The Flink job servers this process started (each holds an embedded Flink cluster)."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if "java" in p.name() and any("flink" in part and "job-server" in part for part in p.cmdline())]


def _latest_checkpoint(storage) -> str | None:
    """The newest completed checkpoint under `storage` (`<job id>/chk-N/_metadata`), or None."""
    done = sorted(storage.glob("*/chk-*/_metadata"), key=lambda p: int(p.parent.name.split("-")[1]))
    return str(done[-1].parent) if done else None


def _distinct(tables: dict) -> dict:
    """Each table without exact repeats: what a sink that writes at least once shows once deduplicated."""
    return {name: [orjson.loads(r) for r in sorted(set(canonical(rows)))] for name, rows in tables.items()}


def test_killed_mid_stream_a_new_job_resumes_from_the_last_checkpoint(apache_kafka, tmp_path):
    """Job-level failure injection on the embedded cluster: the job server's JVM (JobManager and
    TaskManager in one) is killed mid-stream; a new job starts from the last retained checkpoint
    (Kafka offsets and every key's state). Nothing is lost, nothing is counted twice: every group's
    latest row (`times_seen` included) and the distinct rows of every table equal a files run's, and
    each group has one `is_new` post-process row. The JSON Lines sink writes at least once: rows
    written after the checkpoint are written again, byte-identical."""
    lines = _payloads(400, seed=23)
    topic = f"ingest-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(apache_kafka.address, topic, partitions=2)
    # A backlog drains in a few rounds: so that the kill lands mid-stream, the first payloads wait in
    # the topic and the rest are sent at 40/s once the job has written its first rows.
    sent, pacing = _produce(apache_kafka.address, topic, lines[:20]), ThreadPoolExecutor(1)
    out, storage = tmp_path / "stream", tmp_path / "checkpoints"
    argv = [*FLINK, "--source", "kafka", "--bootstrap_servers", apache_kafka.address, "--topic", topic,
            "--output", str(out), "--checkpointing_interval", "1000", "--state_backend", "filesystem",
            "--state_backend_storage_path", storage.as_uri(), "--retain_externalized_checkpoints_on_cancellation"]
    before, killed = set(_job_server_pids()), False
    try:
        with running(argv, load_config(None)):
            deadline = time.monotonic() + STREAM_TIMEOUT_SECONDS
            while not _outcomes(read_tables(out)) and time.monotonic() < deadline:
                time.sleep(0.5)
            paced = pacing.submit(_produce, apache_kafka.address, topic, lines[20:], 40.0)
            # Kill once a checkpoint is complete and between a quarter and half of the outcomes are written.
            while not (_latest_checkpoint(storage)
                       and len(lines) // 4 <= _outcomes(read_tables(out)) < len(lines) // 2):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            else:
                [job_server] = set(_job_server_pids()) - before
                psutil.Process(job_server).kill()  # the whole embedded cluster, mid-stream
                psutil.Process(job_server).wait(30)
                killed = True
    except Exception:  # leaving the block cancels the job, whose job server is gone
        if not killed:
            raise
    assert killed, "no checkpoint and partial output in time"
    sent += paced.result(timeout=60)
    partial = _outcomes(read_tables(out))
    checkpoint = _latest_checkpoint(storage)
    assert 0 < partial < len(sent)

    with running([*argv, "--savepoint_path", checkpoint], load_config(None)):
        stream = _wait_for_outcomes(out, len(sent))
    run(["--input", write_jsonl(tmp_path / "sent.jsonl", sent), "--output", str(tmp_path / "files")],
        load_config(None))
    # A payload sent twice gives identical evidence rows in the files run too: compare distinct rows.
    files, once = _distinct(read_tables(tmp_path / "files")), _distinct(stream)
    for rows in (files[DEAD_LETTER], once[DEAD_LETTER]):
        for row in rows:
            row.pop("source")
    for table in COMPARED:
        assert canonical(once[table]) == canonical(files[table]), table
    groups = latest_groups(files["groups"])
    assert canonical(list(latest_groups(once["groups"]).values())) == canonical(list(groups.values()))
    new = [r["group_id"] for r in once["post_process"] if r["is_new"]]
    assert sorted(new) == sorted(groups)  # one is_new per group: no group created twice
    replayed = _outcomes(stream) - len(sent)
    print(f"killed after {partial} of {len(sent)} outcomes; resumed from {checkpoint}; "
          f"{replayed} outcome rows written twice (byte-identical)")
