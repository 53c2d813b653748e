"""The run plan: one place where a run's options are checked, before any data is read or any job is
built; the inputs are listed once; the plan's graph is what `run` executes."""
from __future__ import annotations

import math

import pytest

from issue_platform.config import ConfigError
from pipelines import plan
from pipelines.runner_tuning import STREAMING_RUNNER
from tests.pipeline_support import BASE, occurrence, write_jsonl
from transforms import read
from transforms.read import InputError


@pytest.fixture
def no_input_read(monkeypatch):
    """Planning must fail before it reads any record."""
    def read_file(*_):
        raise AssertionError("a record was read before every check had run")

    monkeypatch.setattr(plan, "latest_valid_time", read_file)
    monkeypatch.setattr(plan, "timed", read_file)


@pytest.mark.parametrize("args, error", [
    (["--post_process_topic", "sqs:q"], "--post_process_topic"),
    (["--sink", "bigquery"], "--bigquery_dataset"),
    (["--sink", "bigquery", "--bigquery_dataset", "nodataset"], "PROJECT:DATASET"),
    (["--resume_from", "{tmp}/nothing-here"], "--resume_from"),
    (["--output", "{tmp}/file"], "is a file"),
    (["--source", "pubsub"], "--subscription"),
    (["--input", "{tmp}/missing.jsonl"], "no such file"),
    (["--inptu", "x"], "did you mean --input?"),
    (["--config", "{tmp}/missing.yaml"], "--config"),
], ids=["topic", "dataset", "dataset-form", "resume", "output", "pubsub", "input", "typo", "config"])
def test_every_check_runs_before_any_record_is_read(tmp_path, no_input_read, args, error):
    (tmp_path / "file").write_text("x")
    with pytest.raises((ConfigError, InputError), match=error):
        plan.plan_run([a.format(tmp=tmp_path) for a in args])


def test_the_inputs_are_listed_once(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "in.jsonl", [occurrence("once", t=BASE), occurrence("once", t=BASE + 5)])
    listed = []
    match = read.FileSystems.match

    def counted(patterns, *args, **kwargs):
        listed.extend(patterns)
        return match(patterns, *args, **kwargs)

    monkeypatch.setattr(read.FileSystems, "match", counted)
    for streaming in ([], ["--streaming"]):
        listed.clear()
        run_plan = plan.plan_run(["--input", str(tmp_path / "*.jsonl"), "--output", str(tmp_path / "o"), *streaming])
        assert listed == [str(tmp_path / "*.jsonl")]
        assert run_plan.as_of == BASE + 5 and run_plan.received_at == BASE + 5
        assert run_plan.streaming == bool(streaming) and run_plan.bounded
    assert path


def test_a_live_source_is_planned_without_reading_anything(no_input_read):
    run_plan = plan.plan_run(["--source", "pubsub", "--subscription", "projects/my-project/subscriptions/s",
                              "--streaming"])
    assert run_plan.as_of == math.inf and not run_plan.bounded and run_plan.received_at is None
    assert run_plan.runner == STREAMING_RUNNER


@pytest.mark.parametrize("args, bundle_millis", [
    (["--streaming"], 100), (["--streaming", "--checkpointing_interval", "1000"], 100),
    (["--streaming", "--max_bundle_time_mills", "1000"], 1000), ([], None)])
def test_a_stream_on_flink_closes_its_bundles_after_100_ms_unless_told(args, bundle_millis):
    """Beam's 1 s bundles are paid at every step of a stream (docs/scaling.md); a batch keeps Beam's."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.runners import FlinkStreamOptions, choose_runner

    options = PipelineOptions(["--runner", "FlinkRunner", "--job_endpoint", "localhost:1", *args])
    choose_runner(options, [])
    assert options.view_as(FlinkStreamOptions).max_bundle_time_mills == bundle_millis
