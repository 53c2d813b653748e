"""The issue platform pipeline: payloads in; groups, occurrences, status changes, post-process
messages, evidence and dead letters out.

Run it locally on its embedded default (the bundled sample, output in ./out)::

    issue-platform run

or over your own files, on the DirectRunner's FnApiRunner (pinned for batch)::

    issue-platform run --input 'data/*.jsonl.gz' --output out/ --config types.yaml
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import tempfile
import time
from importlib import resources
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from issue_platform.config import ConfigError, PlatformConfig, load_config
from issue_platform.groups import OCCURRENCES
from issue_platform.grouptype import registry
from issue_platform.validation import TIME_EXPECTED, PayloadValidator, Rejected, bounded_time
from pipelines.options import IssuePlatformOptions
from pipelines.replay import event_time_range, latest_valid_time, replay_stream, timed
from transforms.groups import TABLES, ProcessGroups
from transforms.parse import DEAD_LETTER, EVIDENCE, GateIngest, KeyByGroup, ParsePayloads
from transforms.read import Progress, ReadPayloads, input_files
from transforms.write import WriteTables

BATCH_RUNNER = "FnApiRunner"
STREAMING_RUNNER = "BundleBasedDirectRunner"
TABLE_FILES = (*TABLES, EVIDENCE, DEAD_LETTER)  # `<table>-*.jsonl` also covers the -gated/-late parts


def sample_path() -> str:
    return str(resources.files("issue_platform").joinpath("data", "sample.jsonl"))


def build_pipeline(pipeline: beam.Pipeline, opts: IssuePlatformOptions, config: PlatformConfig,
                   raw: Optional[beam.PCollection] = None, as_of: float = math.inf,
                   received_at: Optional[float] = None, config_updates: Optional[beam.PCollection] = None) -> dict:
    """Builds the graph on `pipeline` and returns its outputs by file-set name: each table's rows,
    where `occurrences-gated` is a further part of `occurrences` (not flattened: the FnApiRunner
    holds a Flatten of inputs from different stages entirely in memory).

    `raw` replaces the file read (tests pass `beam.Create` or a `TestStream`); `as_of` bounds the
    time-driven transitions; `received_at` stamps status changes that carry no `update_date`;
    `config_updates` is a PCollection of `PlatformConfig` versions (default: `config`, once)."""
    if raw is None:
        raw = pipeline | "ReadPayloads" >> ReadPayloads(opts.input or [sample_path()])
    parsed = raw | "ParsePayloads" >> ParsePayloads(config, opts.max_payload_bytes, opts.validator, opts.progress)
    gated = parsed.valid | "GateIngest" >> GateIngest(config, config_updates)
    keyed = gated.allowed | "KeyByGroup" >> KeyByGroup(received_at)
    tables = keyed.keyed | "ProcessGroups" >> ProcessGroups(
        config, opts.dedupe_window_seconds, as_of, opts.allowed_lateness_seconds,
        streaming=bool(opts.view_as(StandardOptions).streaming))
    tables[f"{OCCURRENCES}-gated"] = gated[OCCURRENCES]
    # One file set for every step's dead letters (few rows, so the Flatten holds little): a second
    # `dead_letter-*` set would be deleted by the first one's batch sink, whose glob matches it.
    tables[DEAD_LETTER] = (parsed[DEAD_LETTER], gated[DEAD_LETTER], keyed[DEAD_LETTER], tables[DEAD_LETTER]) \
        | "DeadLetters" >> beam.Flatten()
    tables[EVIDENCE] = keyed[EVIDENCE]
    return tables


def _open_any(path: str):
    """Local paths and any filesystem Beam knows (gs://, s3://, ...)."""
    return FileSystems.open(path) if "://" in path else open(path, "rb")


def check_output(output_dir: str) -> None:
    """`--output` must be a directory or creatable as one (not a file, nor under a file)."""
    if "://" in output_dir:
        return
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--output {output_dir}: is a file, not a directory")
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ConfigError(f"--output {output_dir}: {path} is a file, so no directory can be made under it")


@contextlib.contextmanager
def replacing_output(output_dir: str) -> Iterator[str]:
    """Yields a fresh staging directory beside `output_dir` for the run to write into. Only when the
    run succeeds do its tables replace the previous run's (our table files only; other files stay);
    a failure or Ctrl-C leaves the previous results as they were, and no staging or beam-temp files.
    Remote outputs (gs://...) are written in place."""
    if "://" in output_dir:
        yield output_dir
        return
    check_output(output_dir)
    target = os.path.abspath(output_dir)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.staging-", dir=os.path.dirname(target))
    except OSError as exc:
        raise ConfigError(f"--output {output_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        yield staging
        os.makedirs(target, exist_ok=True)
        for table in TABLE_FILES:
            for path in glob.glob(os.path.join(target, f"{table}-*.jsonl")):
                os.remove(path)
        for path in glob.glob(os.path.join(staging, "*.jsonl")):
            os.replace(path, os.path.join(target, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_options(opts: IssuePlatformOptions) -> None:
    """Refuse values that make no sense, each with one line."""
    if opts.max_payload_bytes <= 0:
        raise ConfigError(f"--max_payload_bytes must be a positive number of bytes, got {opts.max_payload_bytes}")
    for name in ("allowed_lateness_seconds", "dedupe_window_seconds"):
        value = getattr(opts, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be a number of seconds >= 0, got {value:g}")


@contextlib.contextmanager
def fnapi_state_cache_off(runner: Optional[str]) -> Iterator[None]:
    """The in-process FnApiRunner hard-codes a 100 MB SDK state cache and ignores
    --max_cache_memory_usage_mb; sizing each cached value walks every loaded module (objsize), which
    costs ~1.5 ms per key per bundle (reference: performance-anchors.md). Our stateful step reads
    each key's state once per flush, so the cache saves nothing; we set its size to 0 for the run.
    Results are identical either way (tests/test_pipeline.py checks)."""
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    if runner != BATCH_RUNNER:
        yield
        return
    saved = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = saved


def _prepare(argv, config: Optional[PlatformConfig], output_dir: Optional[str] = None,
             facts: Optional[dict] = None):
    """Checks options and inputs, installs the config, resolves `as_of` and builds the pipeline writing
    to `output_dir` (default: `--output`). `facts` (if given) receives `as_of`, the valid events'
    `earliest` time when the input was scanned, and `blank_lines` of a replay."""
    options = PipelineOptions(argv)
    opts = options.view_as(IssuePlatformOptions)
    standard = options.view_as(StandardOptions)
    check_options(opts)
    if standard.runner is None:
        standard.runner = STREAMING_RUNNER if standard.streaming else BATCH_RUNNER
    if config is None:
        config = load_config(opts.config, tuple(opts.group_types_module or ()), opener=_open_any)
    config.install()
    inputs = input_files(opts.input or [sample_path()])  # a missing input fails here, before anything
    as_of = parse_as_of(opts.as_of)
    facts = {} if facts is None else facts
    replay = None
    validator = PayloadValidator(opts.validator, registry)
    if standard.streaming:  # a replay reads its files once, for its own order and for the default as_of
        blank = [0]
        replay = list(timed(inputs, validator, opts.max_payload_bytes, opts.progress,
                            lambda: blank.__setitem__(0, blank[0] + 1)))
        earliest, latest = event_time_range(replay)
        facts.update(earliest=earliest, blank_lines=blank[0])
        as_of = latest if as_of is None else as_of
    elif as_of is None:
        as_of = latest_valid_time(inputs, validator, opts.max_payload_bytes, opts.progress)
    Progress.start()  # from here on, count what the job takes in
    as_of = math.inf if as_of is None else as_of
    facts["as_of"] = as_of
    pipeline = beam.Pipeline(options=options)
    if replay is not None:
        raw = pipeline | "ReplayInEventTimeOrder" >> replay_stream(replay)
    else:
        raw = pipeline | "ReadPayloads" >> ReadPayloads(inputs)
    # Status changes without update_date take as_of; with no valid time in the input, the start time.
    received_at = as_of if math.isfinite(as_of) else time.time()
    tables = build_pipeline(pipeline, opts, config, raw=raw, as_of=as_of, received_at=received_at)
    tables | "WriteTables" >> WriteTables(output_dir or opts.output, streaming=standard.streaming)
    return pipeline, standard.runner


def parse_as_of(value: Optional[str]) -> Optional[float]:
    """`--as_of` (RFC 3339 or unix seconds, inside the range every event time must lie in) as unix
    seconds; None when not given."""
    if value is None:
        return None
    try:
        return bounded_time(float(value) if _is_number(value) else value, "--as_of")
    except Rejected as exc:
        raise ConfigError(f"--as_of {value!r}: expected an RFC 3339 time or {TIME_EXPECTED}") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def submit(argv=None, config: Optional[PlatformConfig] = None):
    """Builds and submits the pipeline and returns at once (Flex Template launchers must not wait);
    it writes into `--output` directly (a remote location: nothing there to replace)."""
    pipeline, _ = _prepare(argv, config)
    return pipeline.run()


def run(argv=None, config: Optional[PlatformConfig] = None, facts: Optional[dict] = None):
    """Runs the pipeline to completion and returns its `PipelineResult`. Its tables replace those of
    the previous run in `--output` only if it succeeds (see `replacing_output`)."""
    output = PipelineOptions(argv).view_as(IssuePlatformOptions).output
    with replacing_output(output) as staging:
        pipeline, runner = _prepare(argv, config, staging, facts)
        with fnapi_state_cache_off(runner):
            result = pipeline.run()
            result.wait_until_finish()
    return result
