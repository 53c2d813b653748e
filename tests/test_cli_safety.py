"""The command line never destroys results and explains itself (issue #7): each case runs the real
`issue-platform` entry point in a subprocess, as a user would."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import fastavro
import orjson
import pytest
import yaml

from issue_platform.generate import generate
from tests.pipeline_support import BASE, occurrence, read_tables, write_jsonl

CLI = [sys.executable, "-m", "pipelines.cli"]
ENV = {**os.environ, "PYTHONPATH": os.getcwd()}


def cli(*args, cwd=None, env=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env or ENV)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def main(capsys, *args) -> Result:
    """The same entry point in this process: for errors that stop it before any job starts (fast)."""
    from pipelines.cli import main as cli_main

    code = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def one_line_error(result, code=2) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def snapshot(directory) -> dict:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.fixture
def previous(tmp_path):
    """An output directory holding a previous run's tables (and a user's own file), and its contents."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for table in ("groups", "occurrences", "dead_letter"):
        (out / f"{table}.group-00000-of-00001.jsonl").write_bytes(b'{"previous": true}\n')
    return out, snapshot(out)


def assert_untouched(out, before):
    assert snapshot(out) == before
    litter = [n for n in os.listdir(out.parent) if "staging" in n or n.startswith("beam-temp")]
    assert litter == [] and not [n for n in os.listdir(out) if n.startswith("beam-temp")]


@pytest.mark.parametrize("typo, meant", [("--inptu", "--input"), ("--ouput", "--output"), ("--as-of", "--as_of"),
                                         ("--streming", "--streaming"), ("--max_payload_byte", "--max_payload_bytes")])
def test_a_mistyped_option_is_an_error_naming_the_closest_and_runs_nothing(tmp_path, previous, typo, meant, capsys):
    out, before = previous
    line = one_line_error(main(capsys, "run", typo, "x", "--output", out))
    assert typo in line and f"did you mean {meant}?" in line
    assert_untouched(out, before)


def test_beam_options_pass_through_and_a_stray_word_does_not(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [occurrence("beam")])
    ok = cli("run", "--input", data, "--output", tmp_path / "o", "--direct_num_workers", "1",
             "--runner=FnApiRunner", "--experiments=foo")
    assert ok.returncode == 0, ok.stderr
    assert "occurrences grouped:   1" in ok.stdout
    assert "unexpected argument 'stray'" in one_line_error(cli("run", "stray", "--output", tmp_path / "p"))


@pytest.mark.parametrize("args, expected", [
    (["--input", "{missing}"], "no such file"),
    (["--input", "{missing}", "--streaming"], "no such file"),
    (["--input", "{dir}"], "is a directory"),
    (["--max_payload_bytes", "0"], "--max_payload_bytes must be a positive number"),
    (["--max_payload_bytes", "-3"], "--max_payload_bytes must be a positive number"),
    (["--allowed_lateness_seconds", "-5"], "--allowed_lateness_seconds must be a number of seconds >= 0"),
    (["--dedupe_window_seconds", "nan"], "--dedupe_window_seconds must be a number of seconds >= 0"),
    (["--as_of", "1e300"], "--as_of '1e300': expected an RFC 3339 time or a number of unix seconds"),
    (["--as_of", "yesterday"], "--as_of 'yesterday'"),
], ids=["missing", "missing-streaming", "directory", "payload-0", "payload-negative", "lateness", "dedupe-nan",
        "as_of-huge", "as_of-garbage"])
def test_bad_inputs_and_nonsense_values_fail_before_anything_happens(tmp_path, previous, args, expected, capsys):
    out, before = previous
    args = [a.format(missing=tmp_path / "nope.jsonl", dir=tmp_path) for a in args]
    assert expected in one_line_error(main(capsys, "run", *args, "--output", out))
    assert_untouched(out, before)


@pytest.mark.parametrize("args", [["generate"], ["generate", "--count", "x"], ["validate"], ["types", "--nope"],
                                  ["run", "--input"], ["frobnicate"], ["types", "--conf", "x"]])
def test_usage_errors_are_one_line(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(capsys, *args)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], lines


def test_output_that_is_a_file_under_a_file_or_unwritable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file" in one_line_error(main(capsys, "run", "--output", blocker))
    assert "is a file" in one_line_error(main(capsys, "run", "--output", blocker / "sub"))
    assert "cannot write there" in one_line_error(main(capsys, "run", "--output", "/proc/issue-platform-out"))
    assert blocker.read_text() == "x"


def test_a_truncated_gzip_or_corrupt_avro_fails_the_run_and_keeps_previous_results(tmp_path, previous, capsys):
    out, before = previous
    whole = b"".join(line + b"\n" for line in generate(300, seed=1))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(whole)[:-200])
    corrupt = tmp_path / "bad.avro"
    corrupt.write_bytes(b"Obj\x01 not really avro")
    in_job = ["--as_of", "2026-11-02T00:00:00Z"]  # no scan for the default as_of: the job meets the damage
    for path, extra in ((truncated, []), (truncated, in_job), (truncated, ["--streaming"]), (corrupt, in_job)):
        line = one_line_error(main(capsys, "run", "--input", path, "--output", out, *extra))
        assert str(path) in line and ("truncated" in line or "Avro" in line), line
        assert_untouched(out, before)
    assert "truncated" in one_line_error(cli("validate", truncated))  # and from the installed entry point


def test_ctrl_c_keeps_previous_results_and_leaves_no_litter(tmp_path, previous):
    out, before = previous
    data = tmp_path / "big.jsonl"
    data.write_bytes(b"".join(line + b"\n" for line in generate(40000, seed=2)))
    proc = subprocess.Popen([*CLI, "run", "--input", str(data), "--output", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not [n for n in os.listdir(tmp_path) if "staging" in n] and time.monotonic() < deadline:
        time.sleep(0.05)  # interrupt once the run has started writing
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    assert_untouched(out, before)


def test_a_successful_run_replaces_only_its_own_tables(tmp_path, previous):
    out, before = previous
    data = write_jsonl(tmp_path / "new.jsonl", [occurrence("next", t=BASE), occurrence("next", t=BASE + 1)])
    assert cli("run", "--input", data, "--output", out).returncode == 0
    assert (out / "notes.txt").read_text() == "mine"
    tables = read_tables(out)  # the previous run's rows are gone, the new ones are there
    assert [r["times_seen"] for r in tables["groups"]] == [2] and tables["dead_letter"] == []
    assert not [n for n in os.listdir(tmp_path) if "staging" in n]


def test_closed_pipe_is_not_an_error_nor_a_traceback(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [b"{nope"] * 20000)
    for args in (["generate", "--count", "20000"], ["validate", bad]):
        proc = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 141, err
        assert "Traceback" not in err and "BrokenPipe" not in err


def test_generate_into_a_missing_directory(tmp_path, capsys):
    assert "cannot write it" in one_line_error(main(capsys, "generate", "--count", "3", "--output",
                                                    tmp_path / "no" / "x.jsonl"))


def test_a_type_module_that_exits_on_import_is_an_error(tmp_path):
    (tmp_path / "quitter.py").write_text("import sys\nsys.exit(0)\n")
    env = {**ENV, "PYTHONPATH": f"{os.getcwd()}{os.pathsep}{tmp_path}"}
    for command in ("types", "run"):
        line = one_line_error(cli(command, "--group_types_module", "quitter", "--output", tmp_path / "o", env=env)
                              if command == "run" else cli(command, "--group_types_module", "quitter", env=env))
        assert "quitter" in line or "sys.exit" in line


def test_as_of_before_all_data_warns(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", [occurrence("early", t=BASE)])
    for extra in ([], ["--streaming"]):
        result = main(capsys, "run", "--input", data, "--output", tmp_path / "o", "--as_of", "2020-01-01T00:00:00Z",
                      *extra)
        assert result.returncode == 0, result.stderr
        assert "warning: --as_of" in result.stderr and "before every event" in result.stderr
    quiet = main(capsys, "run", "--input", data, "--output", tmp_path / "o", "--as_of", str(BASE + 10))
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a terminal, no --progress: nothing on stderr


def test_progress_on_request_and_summary_figures(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [occurrence("p", t=BASE), b"", occurrence("p", t=BASE + 1), b" "])
    result = cli("run", "--input", data, "--output", tmp_path / "o", "--progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("done: 2 records read in ")
    assert "blank lines skipped:   2" in result.stdout and "records in:            2" in result.stdout
    assert "groups created:        1" in result.stdout
    assert "elapsed:" in result.stdout and "groups (1 row)" in result.stdout and "occurrences (2 rows)" in result.stdout


def test_run_help_lists_every_job_option_with_defaults_and_how_to_pass_beam_options():
    text = cli("run", "--help").stdout
    for option in ("--streaming", "--as_of", "--allowed_lateness_seconds", "--dedupe_window_seconds",
                   "--max_payload_bytes", "--validator", "--runner", "--config", "--group_types_module",
                   "--input", "--output", "--progress"):
        assert option in text, option
    assert "Default: 600" in text and "Default: 1048576" in text and "seconds" in text
    assert "Apache Beam pipeline option passes through" in text


def test_every_subcommand_argument_has_help():
    from pipelines.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_validate_reads_avro_like_run(tmp_path):
    path = tmp_path / "in.avro"
    with open(path, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "bytes"}]},
                        [{"payload": orjson.dumps(occurrence("a"))}, {"payload": b""},
                         {"payload": orjson.dumps(occurrence("b", detection_time="soon"))}])
    result = cli("validate", path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [l.split(": ")[:2] for l in lines] == [[f"{path}:2", "invalid_json"], [f"{path}:3", "invalid_type"]]
    assert "'detection_time' must be a number of unix seconds" in lines[1]
    assert "1 valid, 2 invalid" in result.stderr


def flag_states(flags_output: str, slug: str) -> list[str]:
    (line,) = [l for l in flags_output.splitlines() if l.startswith(slug + " ")]
    return line.split()[-3:]


def test_createissueflag_appended_to_a_config_is_the_documented_release_workflow(tmp_path, capsys):
    """README: `createissueflag --slug S --owner T >> config.yaml`, raise a rollout, check with `flags`, run."""
    config = tmp_path / "config.yaml"
    config.write_text('projects:\n  "1": {organization: {id: 1, slug: acme, early_adopter: false}}\n')
    slug = "performance_n_plus_one_db_queries_experimental"  # type 1906, unreleased
    shell = subprocess.run(f"{sys.executable} -m pipelines.cli createissueflag --slug {slug} --owner perf "
                           f">> {config}", shell=True, env=ENV, capture_output=True, text=True)
    assert shell.returncode == 0 and "GENERATED YAML" in shell.stderr
    flags = main(capsys, "flags", "--config", config)
    assert flags.returncode == 0, flags.stderr
    assert flag_states(flags.stdout, slug) == ["off", "off", "off"]
    document = yaml.safe_load(config.read_text())
    for name, body in document.items():  # release ingest (only) to everyone: GA rollout 100
        if name.endswith("-ingest"):
            next(s for s in body["segments"] if s["name"] == "GA")["rollout"] = 100
    config.write_text(yaml.safe_dump(document))
    assert flag_states(main(capsys, "flags", "--config", config).stdout, slug) == ["on", "off", "off"]
    data = write_jsonl(tmp_path / "in.jsonl", [occurrence("n1", type_id=1906, t=BASE + i) for i in range(3)])
    result = main(capsys, "run", "--config", config, "--input", data, "--output", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "groups created:        1" in result.stdout  # post-process is off: no is_new message, still a group
    assert read_tables(tmp_path / "o")["post_process"] == []
    bad = cli("createissueflag", "--slug", "nope", "--owner", "perf")
    assert bad.returncode == 2 and bad.stdout == "" and "--slug nope: no issue type has this slug" in bad.stderr


def test_progress_reports_the_phase_share_and_rate_since_reading_began(monkeypatch):
    from transforms.read import Progress

    clock = iter([99.0, 100.0, 104.0, 106.0, 108.0, 110.0])
    monkeypatch.setattr("transforms.read.time.monotonic", lambda: next(clock))
    monkeypatch.setattr(Progress, "total_bytes", 0)
    Progress.start()
    Progress.total_bytes = 50_000_000
    Progress.tick(False, 500)  # a run without the report counts nothing
    assert Progress.count == 0 and Progress.started is None
    Progress.tick(True, 1000)  # the first record read, at 100 s: rates start here, not at start-up
    Progress.bytes_read = 20_000_000
    Progress.tick(True, 39_000)
    assert Progress.line() == "reading: 40,000 records, 40% of 50.0 MB (10,000/s, 4 s)"
    Progress.bytes_read = 50_000_000
    Progress.applied(1200)
    assert Progress.line() == "grouping: 1,200 keys applied, 40,000 records read (6 s)"
    Progress.wrote(7000)
    assert Progress.line() == "writing: 7,000 rows written, 1,200 keys applied (8 s)"


@pytest.mark.parametrize("failure, code, words", [
    (RuntimeError("worker died\nTraceback ...\n..."), 1, "the run failed (RuntimeError: worker died)"),
    (RuntimeError("Pipeline failed:\ntransforms.read.InputError: x.jsonl.gz: truncated or corrupt gzip file (EOF)"
                  " [while running 'ReadPayloads/ReadFiles']"), 2, "x.jsonl.gz: truncated or corrupt gzip file (EOF)"),
], ids=["job", "input-as-text"])
def test_a_failed_job_is_one_line_and_keeps_previous_results(tmp_path, previous, capsys, monkeypatch, failure,
                                                             code, words):
    """A boundary we cannot provoke honestly here (a worker dying, or a runner that hands back only the
    text of our InputError): `execute` is replaced by one raising what such a runner raises."""
    import pipelines.issue_pipeline

    def failing_execute(plan):
        raise failure

    monkeypatch.setattr(pipelines.issue_pipeline, "execute", failing_execute)
    out, before = previous
    line = one_line_error(main(capsys, "run", "--output", out), code=code)
    assert line == f"issue-platform: error: {words}" + (
        f"; the previous results in {out} are untouched" if code == 1 else "")
    assert_untouched(out, before)
