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

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import orjson
import psutil
import pytest

from issue_platform.config import load_config
from issue_platform.tables import DEAD_LETTER, OCCURRENCES, STATUS_CHANGES
from pipelines.issue_pipeline import run, running
from pipelines.live import EVENT_TIME_FIELDS, recent_payloads
from pipelines.local_stack import free_port
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


def _outcome_rows(out) -> int:
    """Outcome rows written so far, counted as lines (cheap enough to poll a backlog of thousands)."""
    return sum(path.read_bytes().count(b"\n") for table in (OCCURRENCES, STATUS_CHANGES, DEAD_LETTER)
               for path in out.glob(f"{table}.*.jsonl"))


def _checkpoints(log) -> tuple[int, list[str]]:
    """(completed, failed) checkpoints in a job process's log (Flink's checkpoint coordinator lines)."""
    lines = log.read_text(errors="replace").splitlines()
    return (sum("Completed checkpoint" in line for line in lines),
            [line for line in lines if "Failed to trigger or complete checkpoint" in line
             or "Could not complete snapshot" in line])


def _checkpointed_stream(kafka, tmp_path, backlog: list[bytes]):
    """A topic holding `backlog` (the payloads the producer sent), and the argv of a stream over it with a
    checkpoint every second, retained when the job ends."""
    topic = f"ingest-{uuid.uuid4().hex[:8]}"
    create_kafka_topic(kafka.address, topic, partitions=2)
    sent = _produce(kafka.address, topic, backlog)
    argv = [*FLINK, "--source", "kafka", "--bootstrap_servers", kafka.address, "--topic", topic,
            "--output", str(tmp_path / "stream"), "--checkpointing_interval", "1000", "--state_backend", "filesystem",
            "--state_backend_storage_path", (tmp_path / "checkpoints").as_uri(),
            "--retain_externalized_checkpoints_on_cancellation"]
    return topic, sent, argv


def _mid_stream(kafka, topic: str, tail: list[bytes], out, storage, pacing: ThreadPoolExecutor,
                at_least: int = 1):
    """A backlog drains in a few rounds: so that an interruption lands mid-stream, once the job has
    written `at_least` outcome rows `tail` is sent at 40/s (a future of the payloads sent); returns when
    it has been sending for 2 s, a checkpoint is complete, and it is still sending."""
    deadline = time.monotonic() + STREAM_TIMEOUT_SECONDS
    while _outcome_rows(out) < at_least:
        assert time.monotonic() < deadline, "no output in time"
        time.sleep(0.5)
    paced, started = pacing.submit(_produce, kafka.address, topic, tail, 40.0), time.monotonic()
    while not (_latest_checkpoint(storage) and time.monotonic() - started > 2.0):
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    assert not paced.done(), "the tail was sent before a checkpoint completed"
    return paced


def _assert_resumed_like_a_files_run(stream: dict, sent: list, tmp_path) -> None:
    """Nothing lost, nothing counted twice: the distinct rows of every table and every group's latest row
    (`times_seen` included) equal a files run's over the same payloads, and each group has one `is_new`
    post-process row (no group created twice). Distinct rows: the JSON Lines sink writes at least once."""
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
    assert sorted(new) == sorted(groups)


# A stream run by a Python process of its own until it is interrupted, its job server's output logged.
_JOB = """
import logging, sys, time
from issue_platform.config import load_config
from pipelines.issue_pipeline import running
logging.basicConfig(level=logging.WARNING)
logging.getLogger("apache_beam.utils.subprocess_server").setLevel(logging.INFO)
with running(sys.argv[1:], load_config(None)):
    time.sleep(3600)
"""


@contextlib.contextmanager
def _job_process(argv: list, log) -> Iterator[psutil.Popen]:
    """The stream of ARGV run by a new Python process, as `issue-platform run` runs it (a job built by a
    process that built other jobs before gets other Flink operator uids, and a savepoint would not map
    onto a job of a fresh process: docs/flink-streaming.md), its job server's output in `log`. On exit
    the process is interrupted (it cancels the job) and what it started is stopped by pid."""
    with open(log, "wb") as sink:
        process = psutil.Popen([sys.executable, "-c", _JOB, *argv], stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            try:
                started = process.children(recursive=True)  # the job server and the IO expansion service
                process.send_signal(signal.SIGINT)
                process.wait(60)
            except psutil.NoSuchProcess:  # it ended by itself (its job server was killed)
                started = []
            except psutil.TimeoutExpired:
                process.kill()
            for child in started:  # stopped with the process as a rule
                if child.is_running():
                    child.kill()
                    child.wait(30)


def _wait_gone(process: psutil.Process, timeout: float = 30.0) -> None:
    """Until `process` (not our child: its parent reaps it) has exited."""
    deadline = time.monotonic() + timeout
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"pid {process.pid} still runs"
        time.sleep(0.2)


def _resumed(argv: list, restore_from: str, out, expected: int, log) -> dict:
    """The tables once a new job from `restore_from` has written every outcome; it started from it and
    every checkpoint it took completed."""
    with _job_process([*argv, "--savepoint_path", restore_from], log):
        stream = _wait_for_outcomes(out, expected)
        text, (completed, failed) = log.read_text(errors="replace"), _checkpoints(log)
    assert "from savepoint" in text, text[-3000:]  # Flink's "Starting job ... from savepoint PATH"
    assert failed == [], failed[:1]
    return stream


def test_a_backlog_checkpoints_and_a_killed_job_resumes_from_the_last_checkpoint(apache_kafka, tmp_path):
    """A backlog of 2,000 records, then (once 500 outcomes are written) 500 more at 40/s, with a
    checkpoint every second: every checkpoint completes (Beam 2.62 failed those of a step with a side
    input: docs/flink-streaming.md).
    Job-level failure injection on the embedded cluster: the job server's JVM (JobManager and
    TaskManager in one) is killed mid-stream; a new job starts from the last retained checkpoint (Kafka
    offsets and every key's state) and the tables end as a files run's."""
    lines = _payloads(2500, seed=23)
    topic, sent, argv = _checkpointed_stream(apache_kafka, tmp_path, lines[:2000])
    out, storage = tmp_path / "stream", tmp_path / "checkpoints"
    before = set(_job_server_pids())
    with ThreadPoolExecutor(1) as pacing, _job_process(argv, tmp_path / "killed.log"):
        paced = _mid_stream(apache_kafka, topic, lines[2000:], out, storage, pacing, at_least=500)
        [job_server] = set(_job_server_pids()) - before
        psutil.Process(job_server).kill()  # the whole embedded cluster, mid-stream
        _wait_gone(psutil.Process(job_server))
        sent += paced.result(timeout=60)
    partial, checkpoint = _outcome_rows(out), _latest_checkpoint(storage)
    completed, failed = _checkpoints(tmp_path / "killed.log")
    assert 0 < partial < len(sent) and completed >= 1 and failed == [], failed[:1]

    stream = _resumed(argv, checkpoint, out, len(sent), tmp_path / "resumed.log")
    _assert_resumed_like_a_files_run(stream, sent, tmp_path)
    print(f"killed after {partial} of {len(sent)} outcomes and {completed} checkpoints; resumed from "
          f"{checkpoint}; {_outcomes(stream) - len(sent)} outcome rows written twice (byte-identical)")


def _flink_rest_on(conf_dir, port: int) -> str:
    """A Flink configuration directory (read through FLINK_CONF_DIR by the job server's embedded cluster)
    whose REST endpoint listens on 127.0.0.1:`port` (otherwise a random port on every interface)."""
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "flink-conf.yaml").write_text(f"rest.address: 127.0.0.1\nrest.bind-address: 127.0.0.1\n"
                                              f"rest.port: {port}\nrest.bind-port: {port}\n")
    return f"http://127.0.0.1:{port}"


def _rest(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=None if body is None else orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def _stop_with_savepoint(rest: str, target) -> str:
    """Flink's stop-with-savepoint (`flink stop --savepointPath`, REST `POST /jobs/:id/stop`) of the one
    running job: (the savepoint's location once it is complete, the job's id)."""
    [job] = [j["id"] for j in _rest(f"{rest}/jobs")["jobs"] if j["status"] == "RUNNING"]
    trigger = _rest(f"{rest}/jobs/{job}/stop", {"targetDirectory": target.as_uri(), "drain": False})["request-id"]
    deadline = time.monotonic() + 120
    while (status := _rest(f"{rest}/jobs/{job}/savepoints/{trigger}"))["status"]["id"] != "COMPLETED":
        assert time.monotonic() < deadline, "no savepoint in time"
        time.sleep(0.5)
    assert "location" in status["operation"], status["operation"]
    return status["operation"]["location"], job


def _finished(rest: str, job: str, timeout: float = 60.0) -> bool:
    """Whether the job ends (FINISHED) within `timeout` seconds: the embedded cluster, one per job, stops
    serving once it has."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _rest(f"{rest}/jobs/{job}")["state"] == "FINISHED":
                return True
        except urllib.error.URLError:  # the job's cluster is gone: it ended
            return True
        time.sleep(0.5)
    return False


def test_stopped_with_a_savepoint_a_new_job_continues_from_it(apache_kafka, tmp_path, monkeypatch):
    """The Flink analogue of Dataflow's `--update`: the stream is stopped mid-stream with a savepoint
    (through the embedded cluster's REST API), then a new job with `--savepoint_path` reads the rest of
    the topic with the state carried over: the tables end as a files run's, one `is_new` per group."""
    monkeypatch.setenv("FLINK_CONF_DIR", str(tmp_path / "flink-conf"))  # the job processes' Flink configuration
    rest = _flink_rest_on(tmp_path / "flink-conf", free_port())
    lines = _payloads(1000, seed=29)
    topic, sent, argv = _checkpointed_stream(apache_kafka, tmp_path, lines[:600])
    out = tmp_path / "stream"
    with ThreadPoolExecutor(1) as pacing, _job_process(argv, tmp_path / "stopped.log"):
        paced = _mid_stream(apache_kafka, topic, lines[600:], out, tmp_path / "checkpoints", pacing)
        completed, failed = _checkpoints(tmp_path / "stopped.log")  # (one due while the job stops fails)
        savepoint, job = _stop_with_savepoint(rest, tmp_path / "savepoints")
        assert _finished(rest, job)
        sent += paced.result(timeout=60)
    partial = _outcome_rows(out)
    assert 0 < partial < len(sent) and completed >= 1 and failed == [], failed[:1]

    _flink_rest_on(tmp_path / "flink-conf", free_port())  # the new job's cluster: a port of its own
    stream = _resumed(argv, savepoint, out, len(sent), tmp_path / "resumed.log")
    _assert_resumed_like_a_files_run(stream, sent, tmp_path)
    print(f"stopped after {partial} of {len(sent)} outcomes; resumed from {savepoint}; "
          f"{_outcomes(stream) - len(sent)} outcome rows written twice")
