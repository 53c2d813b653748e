"""The batch job on Apache Flink gives the FnApiRunner's tables, row for row (byte-identical lines, any
order): on an embedded Flink with `--runner FlinkRunner` and no other option, and on a standalone
cluster (a JobManager and a TaskManager, separate JVMs) through `--flink_master`, with parallelism 1
and 2 (keyed state really split over two slots). Everything Flink and Beam start here runs in a
private network namespace whose only interface is loopback (tests/flink_cluster.py says why); one test
watches what listens while a job runs."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from flink_cluster import Netns, start_cluster
from issue_platform.generate import generate
from issue_platform.tables import ALL_TABLES, jsonl_glob
from pipelines import jars
from pipelines.issue_pipeline import run
from pipelines.plan import sample_path
from pipelines.summary import counters

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]
RUN_TIMEOUT_SECONDS = 420
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def netns():
    jars.ensure([jars.JOB_SERVER, jars.FLINK_CLUSTER])
    ns = Netns.start()
    yield ns
    ns.stop()


@pytest.fixture(scope="module")
def cluster(netns):
    cluster = start_cluster(netns, slots=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """What the FnApiRunner makes of (a) the sample and (b) a resumed run: a first part of generated
    payloads, then the sample, more generated payloads (duplicates, invalid records, status changes,
    noise, a few minutes of disorder) and copies of first-part occurrences under new ids, which are
    late (at or before their key's snapshot), read with `--resume_from` the first part's output.
    Returns {"sample"/"resumed": (tables, counters)} and the resumed run's arguments."""
    tmp = tmp_path_factory.mktemp("flink-reference")
    first_lines = list(generate(2000, seed=21))
    first, second, state = tmp / "first.jsonl", tmp / "second.jsonl", tmp / "first-out"
    first.write_bytes(b"\n".join(first_lines) + b"\n")
    late = [orjson.loads(line) for line in first_lines[:300] if b'"payload_type":"occurrence"' in line][::10]
    for i, payload in enumerate(late):
        payload["id"] = f"{i:08x}-1a7e-4000-8000-000000000000"
    second.write_bytes(b"\n".join(list(generate(3000, seed=22)) + [orjson.dumps(p) for p in late]) + b"\n")
    run(["--input", str(first), "--output", str(state)])
    resumed_args = ["--input", sample_path(), "--input", str(second), "--resume_from", str(state)]
    out = {"args": resumed_args}
    for name, args in (("sample", []), ("resumed", resumed_args)):
        result = run(args + ["--output", str(tmp / name)])
        out[name] = (lines_by_table(tmp / name), counters(result))
    return out


def lines_by_table(output: Path) -> dict[str, list[bytes]]:
    """Every table's lines exactly as written, sorted (row order is the runner's)."""
    import glob

    return {table: sorted(line for path in glob.glob(jsonl_glob(str(output), table))
                          for line in Path(path).read_bytes().splitlines())
            for table in ALL_TABLES}


def cli_run(ns: Netns, args: list[str], output: Path) -> subprocess.Popen:
    return subprocess.Popen(ns.command([sys.executable, "-m", "pipelines.cli", "run", "--output", str(output), *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})


def finished(process: subprocess.Popen) -> str:
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def test_the_resumed_input_exercises_duplicates_noise_status_changes_and_late_events(reference):
    _, totals = reference["resumed"]
    for counter in ("occurrences.duplicate", "dead_letter.late", "occurrences.noise_suppressed",
                    "status_changes.applied"):
        assert totals.get(counter, 0) > 0, (counter, totals)


def test_flink_runner_with_no_other_option_gives_the_fnapi_tables_and_listens_on_loopback_only(netns, reference,
                                                                                               tmp_path):
    """`--runner FlinkRunner` alone: Beam starts the job server, which runs an embedded Flink; the
    SDK workers run in the launching process. While the job runs, every process of the run lives in
    the namespace, whose only interface is loopback, and what we can configure (our SDK worker pool)
    binds 127.0.0.1 even there (Beam's LOOPBACK pool would bind every interface)."""
    import psutil

    process = cli_run(netns, ["--runner", "FlinkRunner"], tmp_path / "out")
    listening, processes, deadline = [], set(), time.monotonic() + RUN_TIMEOUT_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        listening += listeners(netns.command(["ss", "-ltnpH"]))
        with contextlib.suppress(psutil.NoSuchProcess):
            processes |= {p.pid for p in psutil.Process(process.pid).children(recursive=True)} | {process.pid}
        time.sleep(0.5)
    finished(process)
    assert lines_by_table(tmp_path / "out") == reference["sample"][0]
    links = subprocess.run(netns.command(["ip", "-o", "link"]), capture_output=True, text=True).stdout.splitlines()
    assert [link.split(":")[1].strip() for link in links] == ["lo"]
    assert any(name == "java" for _, name, _ in listening)  # the job server and Flink did listen, in there
    assert {pid for _, _, pid in listening} <= processes  # ... and nothing else did
    ours = {address for address, _, pid in listening if pid == process.pid}  # nsenter execs: the launcher
    assert ours and {address.rsplit(":", 1)[0] for address in ours} == {"127.0.0.1"}, listening


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_standalone_cluster_gives_the_fnapi_tables(netns, cluster, reference, tmp_path, parallelism):
    """`--flink_master HOST:PORT`: Beam's job server submits to the JobManager's REST endpoint and the
    TaskManager (2 slots) runs the job: the sample and generated payloads on top of a previous run's
    state (`--resume_from`), every table."""
    before = cluster.overview(netns)["jobs-finished"]
    finished(cli_run(netns, ["--runner", "FlinkRunner", "--flink_master", cluster.rest,
                             "--parallelism", str(parallelism), *reference["args"]], tmp_path / "out"))
    assert cluster.overview(netns)["jobs-finished"] == before + 1  # it ran on the cluster, not an embedded one
    assert lines_by_table(tmp_path / "out") == reference["resumed"][0]


def listeners(ss_command: list[str]) -> list[tuple[str, str, int]]:
    """(local address, process name, pid) of every listening TCP socket `ss -ltnpH` shows."""
    import re

    found = []
    for line in subprocess.run(ss_command, capture_output=True, text=True).stdout.splitlines():
        fields = line.split()
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            found.append((fields[3].replace("[::ffff:", "").replace("]", ""), name, int(pid)))
    return found
