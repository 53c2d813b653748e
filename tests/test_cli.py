"""The `issue-platform` command line, run as a user would (a subprocess of the installed script)."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson

from tests.pipeline_support import occurrence, read_tables, write_jsonl

CLI = [sys.executable, "-m", "pipelines.cli"]


def cli(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_run_on_the_bundled_sample_prints_a_summary(tmp_path):
    result = cli("run", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    for label in ("records in:", "groups created:", "occurrences grouped:", "held back by noise:",
                  "dead-lettered:", "top groups by times_seen:"):
        assert label in result.stdout
    tables = read_tables(tmp_path / "out")
    records_in = int(result.stdout.split("records in:")[1].split()[0])
    assert records_in == len(tables["occurrences"]) + len(tables["status_changes"]) + len(tables["dead_letter"])
    assert tables["groups"] and tables["dead_letter"]
    assert {r["outcome"] for r in tables["occurrences"]} >= {"grouped", "noise_suppressed"}


def test_types_lists_builtins_and_config_types(tmp_path):
    config = tmp_path / "t.json"
    config.write_text('{"group_types": [{"type_id": 990002, "slug": "my_type", "description": "Mine",'
                      ' "category": 4, "noise_config": {"ignore_limit": 5, "expiry_time": "90m"}}]}')
    result = cli("types", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "performance_slow_db_query" in result.stdout and "100/1d" in result.stdout
    line = next(l for l in result.stdout.splitlines() if "my_type" in l)
    assert "CRON" in line and "5/90m" in line and " no " in line


def test_validate_reports_line_numbers_and_exits_1(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [occurrence(), b"{bad json", occurrence(type_id=5)])
    result = cli("validate", path)
    assert result.returncode == 1
    assert f"{path}:2: invalid_json" in result.stdout
    assert f"{path}:3: unknown_group_type" in result.stdout
    assert cli("validate", write_jsonl(tmp_path / "ok.jsonl", [occurrence()])).returncode == 0


def test_generate_is_deterministic_and_valid(tmp_path):
    first = cli("generate", "--count", "300", "--seed", "9").stdout
    assert first == cli("generate", "--count", "300", "--seed", "9").stdout
    lines = first.splitlines()
    assert len(lines) == 300 and all(orjson.loads(l) is not None for l in lines[:10])


def test_argument_and_config_errors_exit_2_with_one_line(tmp_path):
    missing = cli("types", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "nope.yaml" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("group_types:\n  - {type_id: 1001, slug: dup, description: d, category: CRON}\n")
    duplicate = cli("run", "--config", str(bad), "--output", str(tmp_path / "o"))
    assert duplicate.returncode == 2 and "1001" in duplicate.stderr and "Traceback" not in duplicate.stderr
    assert cli("generate").returncode == 2
