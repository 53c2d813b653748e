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
import time
from importlib import resources
from typing import Callable, Iterator, Optional

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import KafkaStreamsRunnerOptions, PipelineOptions, StandardOptions

from issue_platform.config import ConfigError, PlatformConfig, load_config
from issue_platform.snapshot import SnapshotError, seed_from_row
from issue_platform.validation import Rejected, parse_time
from pipelines.replay import latest_event_time, replay_stream, timed
from pipelines.options import ConfigRefreshOptions, IssuePlatformOptions, SinkOptions, SourceOptions
from transforms.groups import ProcessGroups
from issue_platform.tables import (ALL_TABLES, DEAD_LETTER, EVIDENCE, OCCURRENCES, PART_GATE, PART_GROUP, PART_KEY,
                                   PART_PARSE, STATE, jsonl_glob)
from transforms.parse import GateIngest, KeyByGroup, ParsePayloads
from transforms.read import ReadPayloads
from transforms.sinks import WriteOutputs
from transforms.snapshot import ReadSnapshot
from transforms.sources import source_transform

BATCH_RUNNER = "FnApiRunner"
STREAMING_RUNNER = "BundleBasedDirectRunner"


def sample_path() -> str:
    return str(resources.files("issue_platform").joinpath("data", "sample.jsonl"))


def build_pipeline(pipeline: beam.Pipeline, opts: IssuePlatformOptions, config: PlatformConfig,
                   raw: Optional[beam.PCollection] = None, as_of: float = math.inf,
                   received_at: Optional[float] = None, config_updates: Optional[beam.PCollection] = None,
                   seeds: Optional[beam.PCollection] = None, bounded: bool = True) -> dict:
    """Builds the graph on `pipeline` (writing nothing) and returns every table as
    its parts, `{table: {part: PCollection of rows}}`, a part per step that produces the table's
    rows (`issue_platform.tables.PART_*`); the sinks (transforms/sinks.py) decide how to combine them.

    `raw` replaces the file read (tests pass `beam.Create` or a `TestStream`); `as_of` bounds the
    time-driven transitions; `received_at` stamps status changes that carry no `update_date`;
    `config_updates` is a PCollection of `PlatformConfig` versions (default: `config`, once); `seeds`
    are a previous run's key states (`ReadSnapshot`), applied ahead of each key's events; `bounded`
    is False for a live stream (no end of time)."""
    if raw is None:
        raw = pipeline | "ReadPayloads" >> ReadPayloads(opts.input or [sample_path()])
    parsed = raw | "ParsePayloads" >> ParsePayloads(config, opts.max_payload_bytes, opts.validator)
    refresh = opts.view_as(ConfigRefreshOptions).config_refresh_seconds
    gated = parsed.valid | "GateIngest" >> GateIngest(config, config_updates, refresh)
    keyed = gated.allowed | "KeyByGroup" >> KeyByGroup(received_at)
    events = keyed.keyed
    if seeds is not None:
        events = (events, seeds) | "WithSnapshot" >> beam.Flatten()
    tables = events | "ProcessGroups" >> ProcessGroups(
        config, opts.dedupe_window_seconds, as_of, opts.allowed_lateness_seconds,
        streaming=bool(opts.view_as(StandardOptions).streaming), bounded=bounded)
    parts = {table: {PART_GROUP: rows} for table, rows in tables.items()}
    parts[OCCURRENCES][PART_GATE] = gated[OCCURRENCES]
    parts[DEAD_LETTER][PART_PARSE] = parsed[DEAD_LETTER]
    parts[EVIDENCE] = {PART_KEY: keyed[EVIDENCE]}
    return parts


def _open_any(path: str):
    """Local paths and any filesystem Beam knows (gs://, s3://, ...)."""
    return FileSystems.open(path) if "://" in path else open(path, "rb")


def _clear_previous_output(output_dir: str) -> None:
    """A run replaces the tables of the previous run in the same directory (only our own files)."""
    os.makedirs(output_dir, exist_ok=True)
    for table in ALL_TABLES:
        for path in glob.glob(jsonl_glob(output_dir, table)):
            os.remove(path)


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


def _prepare(argv, config: Optional[PlatformConfig]):
    options = PipelineOptions(argv)
    opts = options.view_as(IssuePlatformOptions)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = STREAMING_RUNNER if standard.streaming else BATCH_RUNNER
    if config is None:
        config = load_config(opts.config, tuple(opts.group_types_module or ()), opener=_open_any)
    config.registry()  # a bad type definition fails here, before the job starts
    sinks = WriteOutputs(options, opts.output, opts.max_payload_bytes)
    if "://" not in opts.output and options.view_as(SinkOptions).sink == "jsonl":
        _clear_previous_output(opts.output)
    inputs = opts.input or [sample_path()]
    source = options.view_as(SourceOptions)
    live = source.source != "files"
    # A replay reads its files once, for its own order and for the default as_of. A live stream has
    # no as_of; a Kafka backfill's default is the time it starts (its input is never read up front).
    replay = list(timed(inputs)) if standard.streaming and not live else None
    as_of = resolve_as_of(opts.as_of, (lambda: None if standard.streaming else time.time()) if live else
                          lambda: latest_event_time(replay if replay is not None else timed(inputs)))
    pipeline = beam.Pipeline(options=options)
    if replay is not None:
        raw = pipeline | "ReplayInEventTimeOrder" >> replay_stream(replay)
    else:
        kafka = options.view_as(KafkaStreamsRunnerOptions)  # Beam owns --bootstrap_servers
        raw = pipeline | "ReadPayloads" >> source_transform(source, kafka.bootstrap_servers, standard.streaming,
                                                             inputs)
    received_at = None if live and standard.streaming else as_of  # live: status changes take arrival time
    seeds = None
    if opts.resume_from:
        check_snapshot(opts.resume_from)
        seeds = pipeline | "ReadSnapshot" >> ReadSnapshot(opts.resume_from)
    tables = build_pipeline(pipeline, opts, config, raw=raw, as_of=as_of, received_at=received_at, seeds=seeds,
                            bounded=not (live and standard.streaming))
    tables | "WriteOutputs" >> sinks
    return pipeline, standard.runner


def check_snapshot(directory: str) -> None:
    """Before the job starts: --resume_from names a readable snapshot (the first row of each file)."""
    paths = sorted(glob.glob(jsonl_glob(directory, STATE)))
    if not paths:
        raise ConfigError(f"--resume_from {directory}: no {STATE} table files (the output directory of a "
                          "previous run holds them)")
    for path in paths:
        with open(path, "rb") as handle:
            line = next((line for line in handle if line.strip()), None)
        try:
            if line is not None:
                seed_from_row(orjson.loads(line))
        except (SnapshotError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"--resume_from {path}: {exc}") from exc


def resolve_as_of(value: Optional[str], latest: Callable[[], Optional[float]]) -> float:
    """`--as_of` as unix seconds; by default `latest()`, the latest event time in the input."""
    if value is None:
        found = latest()
        return found if found is not None else math.inf
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_time(value, "--as_of")
    except Rejected as exc:
        raise ConfigError(f"--as_of {value!r}: expected RFC 3339 or unix seconds") from exc


def submit(argv=None, config: Optional[PlatformConfig] = None):
    """Builds and submits the pipeline and returns at once (Flex Template launchers must not wait)."""
    pipeline, _ = _prepare(argv, config)
    return pipeline.run()


def run(argv=None, config: Optional[PlatformConfig] = None):
    """Runs the batch pipeline to completion and returns its `PipelineResult`."""
    pipeline, runner = _prepare(argv, config)
    with fnapi_state_cache_off(runner):
        result = pipeline.run()
        result.wait_until_finish()
    return result
