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

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import psutil
import pytest
from apache_beam.runners.runner import PipelineState

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


class _CheckpointLog(logging.Handler):
    """Flink's checkpoint coordinator lines from the job servers' output (Beam logs each line of a job
    server it started through `apache_beam.utils.subprocess_server`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.completed, self.failed = 0, []

    def emit(self, record):
        line = record.getMessage()
        if "Completed checkpoint" in line:
            self.completed += 1
        if "Failed to trigger or complete checkpoint" in line or "Could not complete snapshot" in line:
            self.failed.append(line)


@pytest.fixture
def checkpoint_log():
    logger, log = logging.getLogger("apache_beam.utils.subprocess_server"), _CheckpointLog()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(log)
    try:
        yield log
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)


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


def _mid_stream(kafka, topic: str, tail: list[bytes], out, storage, pacing: ThreadPoolExecutor):
    """A backlog drains in a few rounds: so that an interruption lands mid-stream, once the job has
    written its first rows `tail` is sent at 40/s (a future of the payloads sent); returns when it has
    been sending for 2 s and a checkpoint is complete."""
    deadline = time.monotonic() + STREAM_TIMEOUT_SECONDS
    while not _outcome_rows(out):
        assert time.monotonic() < deadline, "no output in time"
        time.sleep(0.5)
    paced, started = pacing.submit(_produce, kafka.address, topic, tail, 40.0), time.monotonic()
    while not (_latest_checkpoint(storage) and time.monotonic() - started > 2.0):
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
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


# A job run by a new Python process until it is interrupted, its job server's output logged (`running`).
_RESTORED_JOB = """
import logging, sys, time
from issue_platform.config import load_config
from pipelines.issue_pipeline import running
logging.basicConfig(level=logging.WARNING)
logging.getLogger("apache_beam.utils.subprocess_server").setLevel(logging.INFO)
with running(sys.argv[1:], load_config(None)):
    time.sleep(3600)
"""


def _resumed_in_a_new_process(argv: list, restore_from: str, out, expected: int) -> dict:
    """The stream of ARGV with `--savepoint_path RESTORE_FROM`, started in a new process as a user restarts
    a job (in this process the Kafka read's operators would get other uids: docs/flink-streaming.md); the
    tables once every outcome is written, then the process is interrupted (it cancels the job).
    Every checkpoint the restored job takes completes (its Flink log, read from its output)."""
    log = out.parent / "restored.log"
    with open(log, "wb") as sink:
        process = psutil.Popen([sys.executable, "-c", _RESTORED_JOB, *argv, "--savepoint_path", restore_from],
                               stdout=sink, stderr=subprocess.STDOUT)
        try:
            stream = _wait_for_outcomes(out, expected)
            text = log.read_text(errors="replace")  # before the interrupt, which fails a checkpoint due then
        finally:
            started = process.children(recursive=True)  # the job server and the IO expansion service
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except psutil.TimeoutExpired:
                process.kill()
            for child in started:  # stopped with the process as a rule; by pid if not
                if child.is_running():
                    child.kill()
                    child.wait(30)
    assert "from savepoint" in text, text[-3000:]  # Flink's "Starting job ... from savepoint PATH"
    assert "Failed to trigger or complete checkpoint" not in text and "Could not complete snapshot" not in text
    return stream


def test_a_backlog_checkpoints_and_a_killed_job_resumes_from_the_last_checkpoint(apache_kafka, tmp_path,
                                                                               checkpoint_log):
    """A backlog of 2,000 records, then 500 more at 40/s, with a checkpoint every second: every
    checkpoint completes (Beam 2.62 failed those of a step with a side input: docs/flink-streaming.md).
    Job-level failure injection on the embedded cluster: the job server's JVM (JobManager and
    TaskManager in one) is killed mid-stream; a new job starts from the last retained checkpoint (Kafka offsets and every
    key's state) and the tables end as a files run's."""
    lines = _payloads(2500, seed=23)
    topic, sent, argv = _checkpointed_stream(apache_kafka, tmp_path, lines[:2000])
    out, storage = tmp_path / "stream", tmp_path / "checkpoints"
    before, killed = set(_job_server_pids()), False
    with ThreadPoolExecutor(1) as pacing:
        try:
            with running(argv, load_config(None)):
                paced = _mid_stream(apache_kafka, topic, lines[2000:], out, storage, pacing)
                [job_server] = set(_job_server_pids()) - before
                psutil.Process(job_server).kill()  # the whole embedded cluster, mid-stream
                psutil.Process(job_server).wait(30)
                killed = True
        except Exception:  # leaving the block cancels the job, whose job server is gone
            if not killed:
                raise
        sent += paced.result(timeout=60)
    partial, checkpoint = _outcome_rows(out), _latest_checkpoint(storage)
    assert 0 < partial < len(sent)
    first_job = (checkpoint_log.completed, list(checkpoint_log.failed))

    stream = _resumed_in_a_new_process(argv, checkpoint, out, len(sent))
    assert first_job[0] >= 1 and first_job[1] == [], first_job[1][:1]
    _assert_resumed_like_a_files_run(stream, sent, tmp_path)
    print(f"killed after {partial} of {len(sent)} outcomes; resumed from {checkpoint}; "
          f"{first_job[0]} checkpoints completed before; {_outcomes(stream) - len(sent)} outcome rows "
          f"written twice (byte-identical)")


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
    running job; the savepoint's location once it is complete."""
    [job] = [j["id"] for j in _rest(f"{rest}/jobs")["jobs"] if j["status"] == "RUNNING"]
    trigger = _rest(f"{rest}/jobs/{job}/stop", {"targetDirectory": target.as_uri(), "drain": False})["request-id"]
    deadline = time.monotonic() + 120
    while (status := _rest(f"{rest}/jobs/{job}/savepoints/{trigger}"))["status"]["id"] != "COMPLETED":
        assert time.monotonic() < deadline, "no savepoint in time"
        time.sleep(0.5)
    assert "location" in status["operation"], status["operation"]
    return status["operation"]["location"]


def test_stopped_with_a_savepoint_a_new_job_continues_from_it(apache_kafka, tmp_path, monkeypatch, checkpoint_log):
    """The Flink analogue of Dataflow's `--update`: the stream is stopped mid-stream with a savepoint
    (through the embedded cluster's REST API), then a new job with `--savepoint_path` reads the rest of
    the topic with the state carried over: the tables end as a files run's, one `is_new` per group."""
    monkeypatch.setenv("FLINK_CONF_DIR", str(tmp_path / "flink-conf"))
    rest = _flink_rest_on(tmp_path / "flink-conf", free_port())
    lines = _payloads(1000, seed=29)
    topic, sent, argv = _checkpointed_stream(apache_kafka, tmp_path, lines[:600])
    out = tmp_path / "stream"
    with ThreadPoolExecutor(1) as pacing:
        with running(argv, load_config(None)) as result:
            paced = _mid_stream(apache_kafka, topic, lines[600:], out, tmp_path / "checkpoints", pacing)
            failed = list(checkpoint_log.failed)  # (a periodic checkpoint due while the job stops fails)
            savepoint = _stop_with_savepoint(rest, tmp_path / "savepoints")
            result.wait_until_finish()
            stopped = result.state
        sent += paced.result(timeout=60)
    partial = _outcome_rows(out)
    assert stopped == PipelineState.DONE and 0 < partial < len(sent)

    _flink_rest_on(tmp_path / "flink-conf", free_port())  # the new job's cluster: a port of its own
    assert failed == [] and checkpoint_log.completed >= 1, failed[:1]
    stream = _resumed_in_a_new_process(argv, savepoint, out, len(sent))
    _assert_resumed_like_a_files_run(stream, sent, tmp_path)
    print(f"stopped after {partial} of {len(sent)} outcomes; resumed from {savepoint}; "
          f"{_outcomes(stream) - len(sent)} outcome rows written twice")
