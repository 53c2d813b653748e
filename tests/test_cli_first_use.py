"""What a new user hits first (issue #20), through the `issue-platform` entry point in a subprocess:
exit code, one line on stderr, no traceback, and previous results untouched where a run was involved."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipelines.local_stack import free_port
from tests.pipeline_support import occurrence, write_jsonl

CLI = [sys.executable, "-m", "pipelines.cli"]
ENV = {**os.environ, "PYTHONPATH": os.getcwd()}


def cli(*args, env=None, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


def one_line_error(result, code=2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.fixture
def previous(tmp_path):
    """An output directory holding a previous run's tables, and its contents."""
    out = tmp_path / "out"
    out.mkdir()
    for table in ("groups", "occurrences"):
        (out / f"{table}.group-00000-of-00001.jsonl").write_bytes(b'{"previous": true}\n')
    return out, {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


def untouched(out, before) -> bool:
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))} == before


# ---- 2. an unreachable Kafka broker: the time bound given, one line, librdkafka's log only on request

def test_produce_to_a_kafka_port_nobody_listens_on_gives_up_within_its_timeout(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence(f"fp-{i}") for i in range(20)])
    started = time.monotonic()
    result = cli("produce", path, "--to", f"kafka:127.0.0.1:{free_port()}/t", "--timeout", 2)
    elapsed = time.monotonic() - started
    assert "no broker answered within 2 s" in one_line_error(result)
    assert elapsed < 2 + 10, elapsed  # the bound, plus the interpreter's start-up on a busy machine


def test_the_kafka_clients_own_log_shows_only_with_verbose(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence()])
    result = cli("produce", path, "--to", f"kafka:127.0.0.1:{free_port()}/t", "--timeout", 1, "--verbose")
    assert result.returncode == 2
    assert "issue_platform.kafka" in result.stderr and "Connection refused" in result.stderr


def test_a_kafka_backfill_from_an_unreachable_broker_is_one_line_and_keeps_results(previous):
    out, before = previous
    started = time.monotonic()
    result = cli("run", "--source", "kafka", "--bootstrap_servers", f"127.0.0.1:{free_port()}",
                 "--output", out)
    elapsed = time.monotonic() - started
    assert "no Kafka broker answered within 10 s" in one_line_error(result)
    assert elapsed < 10 + 15, elapsed
    assert untouched(out, before)


# ---- 3. Pub/Sub without an emulator or credentials

def test_produce_to_pubsub_without_credentials_says_how_to_get_them(tmp_path):
    """No emulator, no credential file, and (NO_GCE_CHECK) no metadata server to ask: what a laptop has."""
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence()])
    env = {k: v for k, v in ENV.items() if k not in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true")
    line = one_line_error(cli("produce", path, "--to", "pubsub:projects/abcdefg/topics/t", env=env))
    assert "no Google credentials found" in line and "PUBSUB_EMULATOR_HOST" in line


def test_produce_to_a_pubsub_emulator_nobody_runs_reports_unconfirmed_sends_within_its_timeout(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence(f"fp-{i}") for i in range(5)])
    started = time.monotonic()
    result = cli("produce", path, "--to", "pubsub:projects/abcdefg/topics/t", "--timeout", 2,
                 env={**ENV, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"})
    assert one_line_error(result, code=1).endswith("0 failed, 5 unconfirmed")
    assert time.monotonic() - started < 2 + 10


# ---- 5. ids that survive JSON tools: below 2**53, stable, collision-checked; older state still resumes

def _generated(path, count, seed):
    from issue_platform.generate import generate

    path.write_bytes(b"".join(line + b"\n" for line in generate(count, seed=seed)))
    return path


def _integer_ids(tables):
    return [(table, name, value) for table, rows in tables.items() for row in rows
            for name, value in row.items() if name.endswith("_id") and isinstance(value, int)]


def test_every_id_in_the_tables_reads_back_exactly_as_a_double(tmp_path):
    """What jq or JavaScript do: read every number as a double. No id may change on the way."""
    import json

    from issue_platform.fingerprint import group_id_for, group_key
    from tests.pipeline_support import read_tables

    out = tmp_path / "out"
    assert cli("run", "--input", _generated(tmp_path / "in.jsonl", 3000, 4), "--output", out).returncode == 0
    tables = read_tables(out)
    ids = _integer_ids(tables)
    assert {name for _, name, _ in ids} >= {"group_id", "project_id"} and len(ids) > 3000
    assert all(0 <= value < 2 ** 53 for _, _, value in ids)
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            assert json.loads(line, parse_int=float) == json.loads(line)
    for row in tables["groups"]:
        assert row["group_id"] == group_id_for(group_key(row["project_id"], row["fingerprint"]))


def _as_version_2(state_dir, target):
    """The `state` rows of `state_dir` as the release before 53-bit ids wrote them: key state version 2,
    the 63-bit group id (low 8 bytes of the key's sha1, top bit cleared) inside and in the row."""
    import base64
    import hashlib

    import orjson

    target.mkdir()
    for path in state_dir.glob("state.*.jsonl"):
        rows = []
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            state = orjson.loads(base64.b64decode(row["state"])[1:])
            if state["group"]:
                wide = int.from_bytes(hashlib.sha1(row["key"].encode()).digest()[:8], "big") & ((1 << 63) - 1)
                state["group"]["group_id"] = row["group_id"] = wide
            row["state"] = base64.b64encode(b"\x02" + orjson.dumps(state)).decode()
            rows.append(orjson.dumps(row) + b"\n")
        (target / path.name).write_bytes(b"".join(rows))


def test_resuming_from_a_snapshot_with_63_bit_ids_continues_every_group_under_its_new_id(tmp_path):
    from tests.pipeline_support import canonical_tables, read_tables

    first = tmp_path / "first"
    assert cli("run", "--input", _generated(tmp_path / "a.jsonl", 1500, 5), "--output", first).returncode == 0
    _as_version_2(first, tmp_path / "old")
    later = _generated(tmp_path / "b.jsonl", 1500, 6)
    for source, out in ((first, tmp_path / "from_new"), (tmp_path / "old", tmp_path / "from_old")):
        result = cli("run", "--input", later, "--resume_from", source, "--output", out)
        assert result.returncode == 0, result.stderr[-2000:]
    from_old, from_new = read_tables(tmp_path / "from_old"), read_tables(tmp_path / "from_new")
    assert any(row["times_seen"] > 1 for row in from_old["groups"])
    assert canonical_tables(from_old) == canonical_tables(from_new)


def test_two_keys_sharing_a_group_id_are_reported_and_kept_apart(tmp_path, monkeypatch, capsys):
    """A 53-bit collision cannot be found by search in a test's time (about 2**27 hashes and their
    memory), so the id function is replaced with one that collides; the run is in this process."""
    from pipelines.cli import main
    from tests.pipeline_support import occurrence, write_jsonl

    monkeypatch.setattr("issue_platform.rules_engine.group_id_for", lambda key: 7)
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence("a", type_id=4001), occurrence("b", type_id=4001)])
    assert main(["run", "--input", path, "--output", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    [warning] = [line for line in err.splitlines() if "collision" in line]
    assert warning.startswith("issue-platform: warning: group_id 7 is shared by the groups of keys 1:")
    assert "groups created:        2" in out


# ---- 7. config mistakes say what is wrong, where, and in the user's words

_TYPE = {"type_id": 990007, "slug": "my_type", "description": "Mine", "category": "CRON", "released": False}
_FEATURE = {"owner": {"team": "mine"}, "created_at": "2026-12-01", "segments": []}


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _yaml(document) -> str:
    import yaml

    return yaml.safe_dump(document)


@pytest.mark.parametrize("args, expected", [
    # a misspelt feature name: the type's flags would stay off without a word
    (lambda c: ["flags", "--config", c(_yaml({"group_types": [_TYPE], "projects": {"1": {}},
                                              "features": {"feature.organizations:issue-my-tpye-ingest": _FEATURE}}))],
     ["features: organizations:issue-my-tpye-ingest is not the flag of any issue type",
      "did you mean organizations:issue-my-type-ingest?"]),
    (lambda c: ["flags", "--config", c(_yaml({"projects": {"1": {}}})), "--project", "99"],
     ["--project 99: not configured in --config", "(configured: 1)"]),
    (lambda c: ["flags"], ["the following arguments are required: --config"]),
    (lambda c: ["types", "--config", c("group_types:\n  - type_id: 1\n    slug: x: y\n")],
     ["invalid YAML at line 3, column 12: mapping values are not allowed here"]),
    (lambda c: ["types", "--config", c(_yaml({"group_types": [{**_TYPE, "type_id": 0}]}))],
     ["--config ", "group_types[0]: group type 'my_type': `type_id` must be between 1 and 2**31-1"]),
])
def test_config_mistakes_are_one_line_in_the_users_words(tmp_path, args, expected):
    line = one_line_error(cli(*args(lambda text: _config(tmp_path, text))))
    assert all(part in line for part in expected), line
    assert "ConfigGroupType" not in line and "None" not in line


def test_a_misspelt_feature_stops_a_run_before_it_starts(tmp_path, previous):
    out, before = previous
    config = _config(tmp_path, _yaml({"group_types": [_TYPE],
                                      "features": {"feature.organizations:issue-my-type-ingets": _FEATURE}}))
    line = one_line_error(cli("run", "--config", config, "--output", out))
    assert line.endswith("did you mean organizations:issue-my-type-ingest?")
    assert untouched(out, before)


def test_a_type_module_calling_sys_exit_is_named(tmp_path):
    (tmp_path / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    line = one_line_error(cli("types", "--group_types_module", "quitter",
                              env={**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}))
    assert line == ("issue-platform: error: --group_types_module quitter: the module called sys.exit(3) "
                    "while being imported")


# ---- 6. seeing results without BigQuery

def _sh_block(after: str) -> list[list[str]]:
    """The commands of the first ```sh block after the heading `after` in the README."""
    import re
    import shlex
    from pathlib import Path

    section = (Path(__file__).parent.parent / "README.md").read_text().split(after, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_a_streaming_runs_current_groups_through_query_and_the_readme_examples(tmp_path):
    """A stream writes a groups row per flush; `groups_current` has one per group, its latest version;
    the summary's last line and the README's commands run as printed."""
    import re
    import shlex
    from pathlib import Path

    import orjson
    from tests.pipeline_support import latest_groups, read_tables

    out = tmp_path / "out"
    result = cli("run", "--streaming", "--input", _generated(tmp_path / "in.jsonl", 600, 8), "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    groups = read_tables(out)["groups"]
    latest = latest_groups(groups)
    assert len(groups) > len(latest) > 5
    [next_step] = [line for line in result.stdout.splitlines() if line.startswith("look at them:")]
    suggested = shlex.split(next_step.split(":", 1)[1])
    assert suggested[:4] == ["issue-platform", "query", "--output", str(out)]
    shown = cli(*suggested[1:], "--format", "jsonl")
    assert shown.returncode == 0, shown.stderr
    rows = [orjson.loads(line) for line in shown.stdout.splitlines()]
    expected = sorted(latest.values(), key=lambda g: (-g["times_seen"], g["group_id"]))[:10]
    assert [(r["group_id"], r["times_seen"]) for r in rows] == [(g["group_id"], g["times_seen"]) for g in expected]

    commands = _sh_block("### Query them locally")
    assert len(commands) == 2
    for command in commands:
        assert command[:4] == [".venv/bin/issue-platform", "query", "--output", "out"]
        printed = cli(command[1], "--output", out, *command[4:])
        assert printed.returncode == 0 and printed.stdout and "Traceback" not in printed.stderr, printed.stderr
    current = cli("query", "--output", out, "--format", "jsonl", "SELECT * FROM groups_current")
    assert sorted(orjson.loads(line)["version"] for line in current.stdout.splitlines()) == sorted(
        g["version"] for g in latest.values())
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    plain = re.search(r"DuckDB alone reads the files as they are:\n\n```sh\n(.*?)```", readme, re.S).group(1)
    shown = subprocess.run(plain.replace(".venv/bin/python", sys.executable), shell=True, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout and not shown.stderr, shown.stderr


@pytest.mark.parametrize("args, expected", [
    (lambda d: ["query", "--output", d / "none", "SELECT 1"], "no tables there"),
    (lambda d: ["query", "--output", d, "SELECT nope FROM groups_current"], "query: Binder Error"),
])
def test_query_mistakes_are_one_line(tmp_path, args, expected):
    (tmp_path / "groups.group-00000-of-00001.jsonl").write_text("")
    assert expected in one_line_error(cli(*args(tmp_path)))


def test_query_without_duckdb_says_how_to_install_it(tmp_path):
    (tmp_path / "shadow" / "duckdb").mkdir(parents=True)  # an import of duckdb that fails, as if not installed
    (tmp_path / "shadow" / "duckdb" / "__init__.py").write_text("raise ImportError('no duckdb')\n")
    (tmp_path / "groups.group-00000-of-00001.jsonl").write_text("")
    env = {**ENV, "PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{os.getcwd()}"}
    line = one_line_error(cli("query", "--output", tmp_path, "SELECT 1", env=env))
    assert "pip install 'issue-platform[query]'" in line


# ---- 9. the small ones

def test_types_names_its_columns_in_words_with_a_legend():
    result = cli("types")
    assert result.returncode == 0
    header = result.stdout.splitlines()[0].split()
    assert header[-3:] == ["priority", "auto_resolve", "escalation"] and "AR" not in header
    assert result.stderr.startswith("noise N/T: ") and result.stderr.count("\n") == 1


def test_help_names_every_table_and_every_command_describes_itself():
    from issue_platform.tables import ALL_TABLES

    run_help = " ".join(cli("run", "--help").stdout.split())
    assert f"Directory for the output tables ({', '.join(ALL_TABLES)})" in run_help
    for command in ("produce", "live", "query"):
        usage, _, rest = cli(command, "--help").stdout.partition("\n\n")
        assert rest.split("\n\n")[0].strip(), f"{command} --help has no description"
    assert "(default 180)" in cli("live", "--help").stdout


def test_a_glob_that_matches_nothing_says_so(tmp_path):
    assert one_line_error(cli("validate", tmp_path / "*.nomatch")).endswith("*.nomatch: no file matches")
    assert one_line_error(cli("validate", tmp_path / "a.nomatch")).endswith("a.nomatch: no such file")


@pytest.mark.parametrize("mode", [[], ["--streaming"]])
def test_a_dead_letter_from_a_file_names_its_file_and_line_and_no_field_is_null(tmp_path, mode):
    import fastavro

    from tests.pipeline_support import read_tables

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b"\n".join([b'{"payload_type": "occurrence"', b"", b"[1, 2]", b""]))
    avro = tmp_path / "in.avro"
    with open(avro, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "string"}]},
                        [{"payload": "{}"}, {"payload": "not json"}])
    out = tmp_path / "out"
    result = cli("run", "--input", jsonl, "--input", avro, "--output", out, *mode)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top groups by times_seen: none" in result.stdout
    dead = {row["source"]: row for row in read_tables(out)["dead_letter"]}
    assert sorted(dead) == sorted([f"{jsonl}:1", f"{jsonl}:3", f"{avro}:1", f"{avro}:2"])
    assert dead[f"{jsonl}:1"]["reason"] == "invalid_json" and dead[f"{jsonl}:1"]["field"] is None
    assert dead[f"{avro}:2"]["payload"] == "not json"


# ---- 8. progress that tells the whole story

def test_progress_names_the_phase_and_the_share_of_the_input_read(tmp_path):
    data = _generated(tmp_path / "in.jsonl", 80000, 9)  # a few seconds of reading: at least one report
    result = cli("run", "--input", data, "--output", tmp_path / "out", "--progress")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("done: 80,000 records read in ")
    reports = [line.removeprefix("progress: ") for line in lines[:-1]]
    assert reports and all(line.startswith(("scanning for --as_of: ", "starting: ", "reading: ", "grouping: ",
                                            "writing: ")) for line in reports), reports
    size = f"{data.stat().st_size / 1e6:,.1f} MB"
    reading = [line for line in reports if line.startswith("reading: ")]
    assert reading and all(f"% of {size} (" in line for line in reading), reports
    phases = [line.split(":")[0] for line in reports]
    assert phases == sorted(phases, key=["scanning for --as_of", "starting", "reading", "grouping", "writing"].index)


# ---- 1. Ctrl-C at any point of a job: exit 130, "interrupted", previous results kept

def test_ctrl_c_while_groups_are_applied_is_an_interrupt_not_a_failure(tmp_path, previous):
    """The runner re-raises a KeyboardInterrupt that reaches a step as its own failure; here it
    reaches the group step, after every record was read (progress says when)."""
    import signal
    import threading

    out, before = previous
    data = _generated(tmp_path / "in.jsonl", 120000, 10)
    proc = subprocess.Popen([*CLI, "run", "--input", str(data), "--output", str(out), "--progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, grouping = [], threading.Event()

    def watch():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("progress: grouping: "):
                grouping.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert grouping.wait(180), "".join(lines)[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        proc.kill()
    watcher.join(10)
    errors = [line for line in lines if not line.startswith("progress: ")]
    assert proc.returncode == 130, "".join(lines)[-2000:]
    assert errors == [f"issue-platform: interrupted; the previous results in {out} are untouched\n"]
    assert untouched(out, before)
    assert not [name for name in os.listdir(tmp_path) if "staging" in name]


# ---- 4. usage errors: one whole line, exit 2, before any job starts

@pytest.mark.parametrize("args, expected", [
    (["--direct_num_workers=two"], "run: argument --direct_num_workers: invalid int value: 'two'"),
    (["--runner", "NoSuchRunner"], "--runner NoSuchRunner: not a Beam runner; known: DataflowRunner, "),
    (["--runner", "DirectRuner"], "--runner DirectRuner: not a Beam runner; did you mean DirectRunner?"),
    (["--streaming", "--source", "pubsub", "--subscription", "projects/x!/subscriptions/s"],
     "--subscription projects/x!/subscriptions/s: Invalid PubSub project name: 'x!' (a project id is "),
    (["--post_process_topic", "pubsub:projects/x/topics/t"], "Invalid PubSub project name: 'x'"),
])
def test_usage_errors_of_run_are_one_whole_line_before_the_job(previous, args, expected):
    out, before = previous
    line = one_line_error(cli("run", *args, "--output", out))
    assert line.startswith("issue-platform: error: ") and expected in line, line
    assert untouched(out, before)


def test_createissueflag_with_an_unknown_slug_names_the_closest():
    line = one_line_error(cli("createissueflag", "--slug", "profile_file_io_main_thred", "--owner", "me"))
    assert line.endswith("--slug profile_file_io_main_thred: no issue type has this slug; "
                         "did you mean profile_file_io_main_thread?")
    assert one_line_error(cli("createissueflag", "--slug", "nope", "--owner", "me")).endswith(
        "see issue-platform types")
