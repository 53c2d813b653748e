"""The issue platform pipeline: payloads in; groups, occurrences, status changes, post-process
messages, evidence and dead letters out.

Run it locally on its embedded default (the bundled sample, output in ./out)::

    issue-platform run

or over your own files, on the DirectRunner's FnApiRunner (pinned for batch)::

    issue-platform run --input 'data/*.jsonl.gz' --output out/ --config types.yaml
"""
from __future__ import annotations

import contextlib
import gc
import glob
import inspect
import math
import os
import shutil
import tempfile
import time
import weakref
from importlib import resources
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import KafkaStreamsRunnerOptions, PipelineOptions, StandardOptions

from issue_platform.config import ConfigError, PlatformConfig, load_config
from issue_platform.validation import TIME_EXPECTED, PayloadValidator, Rejected, bounded_time
from pipelines.replay import event_time_range, latest_valid_time, replay_stream, timed
from pipelines.options import ConfigRefreshOptions, IssuePlatformOptions, SinkOptions, SourceOptions
from transforms.groups import REPLAY_FLUSH_SECONDS, ProcessGroups, sharded_seed
from issue_platform.tables import (ALL_TABLES, DEAD_LETTER, EVIDENCE, OCCURRENCES, PART_GATE, PART_GROUP, PART_KEY,
                                   PART_PARSE, jsonl_glob)
from transforms.parse import Ingest
from transforms.read import Progress, ReadPayloads, input_files
from transforms.sinks import WriteOutputs
from transforms.snapshot import ReadSnapshot, check, locate
from transforms.sources import source_transform

BATCH_RUNNER = "FnApiRunner"
STREAMING_RUNNER = "BundleBasedDirectRunner"


def sample_path() -> str:
    return str(resources.files("issue_platform").joinpath("data", "sample.jsonl"))


def build_pipeline(pipeline: beam.Pipeline, opts: IssuePlatformOptions, config: PlatformConfig,
                   raw: Optional[beam.PCollection] = None, as_of: float = math.inf,
                   received_at: Optional[float] = None, config_updates: Optional[beam.PCollection] = None,
                   seeds: Optional[beam.PCollection] = None, bounded: bool = True,
                   flush_seconds: float = 1.0) -> dict:
    """Builds the graph on `pipeline` (writing nothing) and returns every table as
    its parts, `{table: {part: PCollection of row batches}}`, a part per step that produces the table's
    rows (`issue_platform.tables.PART_*`; each element is a list of rows from one step invocation); the
    sinks (transforms/sinks.py) decide how to combine them.

    `raw` replaces the file read (tests pass `beam.Create` or a `TestStream`); `as_of` bounds the
    time-driven transitions; `received_at` stamps status changes that carry no `update_date`;
    `config_updates` is a PCollection of `PlatformConfig` versions (default: `config`, once); `seeds`
    are a previous run's key states (`ReadSnapshot`), applied ahead of each key's events; `bounded`
    is False for a live stream (no end of time); `flush_seconds`: see `ProcessGroups` (a replay in
    event-time order passes `REPLAY_FLUSH_SECONDS`)."""
    if raw is None:
        raw = pipeline | "ReadPayloads" >> ReadPayloads(opts.input or [sample_path()])
    streaming = bool(opts.view_as(StandardOptions).streaming)
    # One step from raw payload to keyed record; in batch, a key's records of one bundle travel together,
    # under the key's shard (the batch stateful step only buffers them; a stream's needs each event's
    # timestamp).
    ingested = raw | "Ingest" >> Ingest(config, opts.max_payload_bytes, opts.validator, opts.progress, config_updates,
                                        opts.view_as(ConfigRefreshOptions).config_refresh_seconds, received_at,
                                        per_key=not streaming)
    events = ingested.keyed
    if seeds is not None:
        if not streaming:  # the batch step's state is keyed by shard
            seeds = seeds | "ShardSnapshot" >> beam.Map(sharded_seed)
        events = (events, seeds) | "WithSnapshot" >> beam.Flatten()
    tables = events | "ProcessGroups" >> ProcessGroups(
        config, opts.dedupe_window_seconds, as_of, opts.allowed_lateness_seconds,
        streaming=streaming, bounded=bounded, flush_seconds=flush_seconds)
    parts = {table: {PART_GROUP: rows} for table, rows in tables.items()}
    parts[OCCURRENCES][PART_GATE] = ingested[OCCURRENCES]
    parts[DEAD_LETTER].update({part: ingested[part] for part in (PART_PARSE, PART_GATE, PART_KEY)})
    parts[EVIDENCE] = {PART_KEY: ingested[EVIDENCE]}
    return parts


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
        for table in ALL_TABLES:
            for path in glob.glob(jsonl_glob(target, table)):
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
def imports_frozen() -> Iterator[None]:
    """Moves every object alive before the run (Beam's modules, protos and the built pipeline: some
    hundreds of thousands) out of the garbage collector's reach for the run: a full collection would
    otherwise walk them all again and again while the run allocates (measured: ~6% of a batch run)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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


@contextlib.contextmanager
def dofn_signatures_cached() -> Iterator[None]:
    """Beam's runners re-read a DoFn's method parameters (`inspect.signature`) each time they build a
    DoFnSignature or look for its state and timers: several times per bundle on the streaming
    DirectRunner, ~0.8 ms each and most of a replay's time (reference: performance-anchors.md). They
    are fixed by the DoFn's class, so for the run we remember them, and the state and timer specs, per
    class, or per object for one with a function set on the instance (a Map or FlatMap: its `process`
    is the mapped function), which the runners keep for the whole run; an `_inspect_<method>` override
    is read as before. Results are identical either way (tests/test_performance.py checks)."""
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import core, userstate

    arguments, specs = core.get_function_arguments, userstate.get_dofn_specs
    cache = weakref.WeakKeyDictionary()  # class -> {method name or None (the specs): result}
    by_object = {}  # id(obj) -> (obj, {...}): obj is held so that its id is not reused during the run

    def remembered(obj) -> dict:
        if any(inspect.ismethod(v) or inspect.isfunction(v) for v in getattr(obj, "__dict__", {}).values()):
            return by_object.setdefault(id(obj), (obj, {}))[1]
        return cache.setdefault(type(obj), {})

    def get_function_arguments(obj, func):
        known = remembered(obj)
        if hasattr(obj, f"_inspect_{func}"):
            return arguments(obj, func)
        if func not in known:
            known[func] = arguments(obj, func)
        args, defaults = known[func]
        return list(args), list(defaults)

    def get_dofn_specs(dofn):
        known = remembered(dofn)
        if None not in known:
            known[None] = specs(dofn)
        state_specs, timer_specs = known[None]
        return set(state_specs), set(timer_specs)

    patched = [(core, "get_function_arguments", get_function_arguments), (userstate, "get_dofn_specs", get_dofn_specs),
               (transform_evaluator, "get_dofn_specs", get_dofn_specs)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _prepare(argv, config: Optional[PlatformConfig], output_dir: Optional[str] = None,
             facts: Optional[dict] = None):
    """Checks options and inputs, resolves `as_of` and builds the pipeline writing to `output_dir`
    (default: `--output`). `facts` (if given) receives `as_of`, the valid events' `earliest` time
    when the input was scanned, and `blank_lines` of a replay."""
    options = PipelineOptions(argv)
    opts = options.view_as(IssuePlatformOptions)
    standard = options.view_as(StandardOptions)
    check_options(opts)
    if standard.runner is None:
        standard.runner = STREAMING_RUNNER if standard.streaming else BATCH_RUNNER
    if config is None:
        config = load_config(opts.config, tuple(opts.group_types_module or ()), opener=_open_any)
    types = config.registry()  # a bad type definition fails here, before the job starts
    sinks = WriteOutputs(options, output_dir or opts.output, opts.max_payload_bytes)
    source = options.view_as(SourceOptions)
    live = source.source != "files"
    # A missing input fails here, before anything.
    inputs = None if live else input_files(opts.input or [sample_path()])
    if opts.resume_from:
        snapshot = locate(opts.resume_from, options.view_as(SinkOptions).bigquery_endpoint)
        check(snapshot)
    as_of = parse_as_of(opts.as_of)
    facts = {} if facts is None else facts
    replay = None
    validator = PayloadValidator(opts.validator, types)
    if live:  # never read up front: a live stream has no as_of, a Kafka backfill's default is its start
        as_of = as_of if as_of is not None or standard.streaming else time.time()
    elif standard.streaming:  # a replay reads its files once, for its own order and for the default as_of
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
        kafka = options.view_as(KafkaStreamsRunnerOptions)  # Beam owns --bootstrap_servers
        raw = pipeline | "ReadPayloads" >> source_transform(source, kafka.bootstrap_servers, standard.streaming,
                                                             inputs)
    seeds = pipeline | "ReadSnapshot" >> ReadSnapshot(snapshot) if opts.resume_from else None
    # Status changes without update_date take as_of (with no valid time in the input, the start time);
    # in a live stream, the time they arrive.
    unbounded = live and standard.streaming
    received_at = None if unbounded else as_of if math.isfinite(as_of) else time.time()
    tables = build_pipeline(pipeline, opts, config, raw=raw, as_of=as_of, received_at=received_at, seeds=seeds,
                            bounded=not unbounded, flush_seconds=1.0 if replay is None else REPLAY_FLUSH_SECONDS)
    tables | "WriteOutputs" >> sinks
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
    """Runs the pipeline to completion and returns its `PipelineResult`. With JSON Lines output its
    tables replace those of the previous run in `--output` only if it succeeds (`replacing_output`)."""
    options = PipelineOptions(argv)
    output = options.view_as(IssuePlatformOptions).output
    staged = replacing_output(output) if options.view_as(SinkOptions).sink == "jsonl" else contextlib.nullcontext(output)
    with staged as output_dir:
        pipeline, runner = _prepare(argv, config, output_dir, facts)
        with fnapi_state_cache_off(runner), dofn_signatures_cached(), imports_frozen():
            result = pipeline.run()
            result.wait_until_finish()
    return result
