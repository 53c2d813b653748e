"""The issue platform pipeline: payloads in; groups, occurrences, status changes, post-process
messages, evidence and dead letters out.

`pipelines.plan.plan_run` turns argv into a `RunPlan`; `build_graph` builds the job from a plan;
`execute` runs it to completion (`run` does both), `submit` starts it and returns. Run it locally on
its embedded default (the bundled sample, output in ./out)::

    issue-platform run

or over your own files, on the DirectRunner's FnApiRunner (pinned for batch)::

    issue-platform run --input 'data/*.jsonl.gz' --output out/ --config types.yaml
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import shutil
import signal
import tempfile
import threading
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.runners.runner import PipelineState

from issue_platform.config import ConfigError, PlatformConfig
from issue_platform.tables import (ALL_TABLES, DEAD_LETTER, EVIDENCE, OCCURRENCES, PART_GATE, PART_GROUP, PART_KEY,
                                   PART_PARSE, jsonl_glob)
from pipelines import local_runner, runner_tuning
from pipelines.plan import RunPlan, plan_run
from pipelines.runners import runner_services
from transforms.apply_rules import ApplyRules, sharded_seed
from transforms.parse import Ingest
from transforms.read import Progress
from transforms.read_snapshot import ReadSnapshot


def build_graph(pipeline: beam.Pipeline, plan: RunPlan) -> dict:
    """Builds the job of `plan` on `pipeline`: source -> Ingest -> ApplyRules -> the plan's sinks (none
    if `plan.sinks` is None). Returns every table as its parts, `{table: {part: PCollection of row
    batches}}`, a part per step that produces the table's rows (`issue_platform.tables.PART_*`; each
    element is a list of rows from one step invocation); the sinks decide how to combine them."""
    raw = pipeline | "ReadPayloads" >> plan.source
    # One step from raw payload to keyed record; in batch, a key's records of one bundle travel together,
    # under the key's shard (the batch stateful step only buffers them; a stream's needs each event's
    # timestamp).
    ingested = raw | "Ingest" >> Ingest(plan.config, plan.max_payload_bytes, plan.validator, plan.progress,
                                        refresh_seconds=plan.config_refresh_seconds, received_at=plan.received_at,
                                        per_key=not plan.streaming)
    events = ingested.keyed
    if plan.snapshot is not None:  # a previous run's key states, applied ahead of each key's events
        seeds = pipeline | "ReadSnapshot" >> ReadSnapshot(plan.snapshot)
        if not plan.streaming:  # the batch step's state is keyed by shard
            seeds = seeds | "ShardSnapshot" >> beam.Map(sharded_seed)
        events = (events, seeds) | "WithSnapshot" >> beam.Flatten()
    tables = events | "ApplyRules" >> ApplyRules(
        plan.config, plan.dedupe_window_seconds, plan.as_of, plan.allowed_lateness_seconds,
        streaming=plan.streaming, bounded=plan.bounded, flush_seconds=plan.flush_seconds,
        version_floor=plan.version_floor)
    parts = {table: {PART_GROUP: rows} for table, rows in tables.items()}
    parts[OCCURRENCES][PART_GATE] = ingested[OCCURRENCES]
    parts[DEAD_LETTER].update({part: ingested[part] for part in (PART_PARSE, PART_GATE, PART_KEY)})
    parts[EVIDENCE] = {PART_KEY: ingested[EVIDENCE]}
    if plan.sinks is not None:
        parts | "WriteOutputs" >> plan.sinks.transform(plan.output, plan.max_payload_bytes)
    return parts


@contextlib.contextmanager
def replacing_output(output_dir: str) -> Iterator[str]:
    """Yields a fresh staging directory beside `output_dir` for the run to write into. Only when the
    run succeeds do its tables replace the previous run's (our table files only; other files stay);
    a failure or Ctrl-C leaves the previous results as they were, and no staging or beam-temp files.
    Remote outputs (gs://...) are written in place."""
    if "://" in output_dir:
        yield output_dir
        return
    target = os.path.abspath(output_dir)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.staging-", dir=os.path.dirname(target))
    except OSError as exc:
        raise ConfigError(f"--output {output_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        yield staging
        with ctrl_c_held_off():  # the run has succeeded: a Ctrl-C now would leave some tables of each run
            os.makedirs(target, exist_ok=True)
            for table in ALL_TABLES:
                for path in glob.glob(jsonl_glob(target, table)):
                    os.remove(path)
            for path in glob.glob(os.path.join(staging, "*.jsonl")):
                os.replace(path, os.path.join(target, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def ctrl_c_held_off() -> Iterator[None]:
    """Ctrl-C ignored for the block (a few file renames), where the main thread can set that."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def execute(plan: RunPlan):
    """Runs the plan's job to completion and returns its `PipelineResult`. With JSON Lines output its
    tables replace those of the previous run in `plan.output` only if it succeeds (`replacing_output`)."""
    staged = replacing_output(plan.output) if plan.sinks is not None and plan.sinks.files else \
        contextlib.nullcontext(plan.output)
    with staged as output_dir:
        Progress.start()  # from here on, count what the job takes in (its files' size: ReadPayloads)
        pipeline = beam.Pipeline(options=plan.options)
        build_graph(pipeline, dataclasses.replace(plan, output=output_dir))
        local_runner.install_for(plan)
        with runner_tuning.tuned(plan.runner), runner_services(plan.options, plan.runner):
            result = pipeline.run()
            result.wait_until_finish()
    return result


def run(argv=None, config: Optional[PlatformConfig] = None):
    """`plan_run` then `execute`: the job of `issue-platform run ARGV`, to completion."""
    return execute(plan_run(argv, config))


@contextlib.contextmanager
def running(argv=None, config: Optional[PlatformConfig] = None):
    """Plans, builds and submits the job (a stream: it writes into `--output` directly) and yields its
    `PipelineResult` while it runs; on exit cancels the job if it still runs and stops what the runner
    needed beside it (`runner_services`: on Flink, the SDK worker pool)."""
    plan = plan_run(argv, config)
    pipeline = beam.Pipeline(options=plan.options)
    build_graph(pipeline, plan)
    local_runner.install_for(plan)
    with runner_services(plan.options, plan.runner):
        result = pipeline.run()
        try:
            yield result
        finally:
            if not PipelineState.is_terminal(result.state):
                result.cancel()


def submit(argv=None, config: Optional[PlatformConfig] = None):
    """Plans, builds and submits the job and returns at once (Flex Template launchers must not wait);
    it writes into `--output` directly (a remote location: nothing there to replace)."""
    plan = plan_run(argv, config)
    pipeline = beam.Pipeline(options=plan.options)
    build_graph(pipeline, plan)
    local_runner.install_for(plan)
    return pipeline.run()
