"""The run plan: `plan_run` turns a run's argv into a `RunPlan`, everything the run needs decided in one
place, and `pipelines.issue_pipeline.build_graph` builds the job from it.

Planning parses the options once, then runs every pre-flight check before any data is read or any job
is built (unknown options, nonsense values, the config and its types, the output directory, the sinks'
options and BigQuery tables, the inputs, the snapshot to resume from); only then does it read what
the run needs up front: the default `--as_of` of a batch run (the latest valid event time in its
input), or a `--streaming` replay's input in event-time order. It chooses the source and the sinks
(`pipelines.sources_and_sinks`) and the runner.
"""
from __future__ import annotations

import difflib
import importlib
import math
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from issue_platform.config import ConfigError, PlatformConfig, load_config
from issue_platform.flush import DEFAULT_ALLOWED_LATENESS_SECONDS, REPLAY_FLUSH_SECONDS
from issue_platform.rules_engine import DEFAULT_DEDUPE_WINDOW_SECONDS
from issue_platform.validation import (DEFAULT_MAX_PAYLOAD_BYTES, TIME_EXPECTED, PayloadValidator, Rejected,
                                       bounded_time)
from pipelines.options import InputOptions, OutputOptions, SinkOptions, SourceOptions, StateOptions, TimeOptions
from pipelines.restart import check_restart
from pipelines.replay import event_time_range, latest_valid_time, replay_stream, timed
from pipelines.runners import RUNNER_NAMES, FlinkStreamOptions, choose_runner, is_flink
from pipelines.sources_and_sinks import SinkPlan, check_kafka_source, choose_sinks, choose_source
from transforms.read import input_files, open_config
from transforms.read_snapshot import Snapshot, check, locate


@dataclass
class RunPlan:
    """Everything a run needs, as plain values and the transforms chosen for it. Tests build one
    directly (a `TestStream` as `source`, `sinks=None` to apply their own)."""

    config: PlatformConfig
    source: beam.PTransform  # -> raw payloads
    options: PipelineOptions = field(default_factory=lambda: PipelineOptions([]))  # Beam's: runner, streaming
    sinks: Optional[SinkPlan] = SinkPlan()
    output: str = "out"  # the JSON Lines sink's directory
    bounded: bool = True  # False: a live stream (no end of time)
    as_of: float = math.inf
    received_at: Optional[float] = None  # the time of status changes without update_date (None: arrival)
    flush_seconds: float = 1.0
    snapshot: Optional[Snapshot] = None  # --resume_from
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    validator: str = "fast"
    progress: bool = False
    dedupe_window_seconds: float = DEFAULT_DEDUPE_WINDOW_SECONDS
    allowed_lateness_seconds: float = DEFAULT_ALLOWED_LATENESS_SECONDS
    config_refresh_seconds: Optional[float] = None
    version_floor: int = 0  # a live job's new groups start above it (pipelines.restart)
    # What planning learned from the input, for the run's summary:
    as_of_given: Optional[str] = None  # --as_of as given
    earliest: Optional[float] = None  # a replay's earliest valid event time
    blank_lines: int = 0  # a replay's blank JSON lines

    @property
    def streaming(self) -> bool:
        return bool(self.options.view_as(StandardOptions).streaming)

    @property
    def runner(self) -> Optional[str]:
        return self.options.view_as(StandardOptions).runner


def plan_run(argv: Optional[Sequence[str]] = None, config: Optional[PlatformConfig] = None) -> RunPlan:
    """The plan for `issue-platform run ARGV` (see the module docstring). Every error is a
    `ConfigError` or `transforms.read.InputError` of one line, raised before any data is read."""
    argv = list(argv or [])
    check_known(argv)
    options = PipelineOptions(argv)
    inputs, output, source, state, when = (options.view_as(c) for c in (
        InputOptions, OutputOptions, SourceOptions, StateOptions, TimeOptions))
    standard = options.view_as(StandardOptions)
    check_values(inputs, when)
    check_runner(standard.runner)
    as_of = parse_as_of(when.as_of)
    choose_runner(options, argv)
    if config is None:
        config = read_config(inputs.config, inputs.group_types_module)
    types = config.registry()  # a bad type definition fails here, before the job starts
    sinks = choose_sinks(options.view_as(SinkOptions))
    if sinks.files:
        check_output(output.output)
    live = source.source != "files"
    files = [] if live else input_files(inputs.input or [sample_path()])
    read = choose_source(source, source.bootstrap_servers, standard.streaming, files,
                         flink=is_flink(standard.runner))
    check_kafka_source(source, source.bootstrap_servers, standard.streaming, standard.runner)
    snapshot = None
    if state.resume_from:
        snapshot = locate(state.resume_from, options.view_as(SinkOptions).bigquery_endpoint)
        check(snapshot)
    sinks.check()
    # A live job on an earlier job's sink must say whether it continues it; its groups' versions go on.
    # A Flink job restored from a savepoint or retained checkpoint continues that job's own state
    # (its versions included): nothing to refuse, no floor to raise.
    restored = is_flink(standard.runner) and options.view_as(FlinkStreamOptions).savepoint_path
    version_floor = check_restart(options.view_as(SinkOptions), output.output, state.resume_from,
                                  state.start_fresh) if live and standard.streaming and not restored else 0
    plan = RunPlan(config, read, options, sinks, output.output, max_payload_bytes=inputs.max_payload_bytes,
                   validator=inputs.validator, progress=output.progress, snapshot=snapshot,
                   dedupe_window_seconds=when.dedupe_window_seconds,
                   allowed_lateness_seconds=when.allowed_lateness_seconds,
                   config_refresh_seconds=state.config_refresh_seconds, as_of_given=when.as_of,
                   version_floor=version_floor)
    # Checked; from here on the input is read where the run needs it up front.
    validator = PayloadValidator(inputs.validator, types)
    if live:  # never read up front: a live stream has no as_of, a Kafka backfill's default is its start
        as_of = as_of if as_of is not None or standard.streaming else time.time()
    elif standard.streaming:  # a replay reads its files once, for its own order and for the default as_of
        blank = [0]
        replay = list(timed(files, validator, inputs.max_payload_bytes, output.progress,
                            lambda: blank.__setitem__(0, blank[0] + 1)))
        plan.earliest, latest = event_time_range(replay)
        plan.blank_lines = blank[0]
        plan.source, plan.flush_seconds = replay_stream(replay), REPLAY_FLUSH_SECONDS
        as_of = latest if as_of is None else as_of
    elif as_of is None:
        as_of = latest_valid_time(files, validator, inputs.max_payload_bytes, output.progress)
    plan.as_of = math.inf if as_of is None else as_of
    # Status changes without update_date take as_of (with no valid time in the input, the start time);
    # in a live stream, the time they arrive.
    plan.bounded = not (live and standard.streaming)
    plan.received_at = None if not plan.bounded else plan.as_of if math.isfinite(plan.as_of) else time.time()
    return plan


def read_config(path: Optional[str], modules: Optional[Sequence[str]], install: bool = False) -> PlatformConfig:
    """`--config` through the one reader of config files (`transforms.read.open_config`: any Beam
    filesystem), for the CLI and the job alike; `install` registers its types in this process (the
    CLI's commands)."""
    config = load_config(path, tuple(modules or ()), opener=open_config)
    if install:
        config.install()
    return config


def sample_path() -> str:
    return str(resources.files("issue_platform").joinpath("data", "sample.jsonl"))


def _beam_parser():
    """The parser Beam builds from every PipelineOptions subclass (PipelineOptions.get_all_options):
    Beam's options and ours."""
    captured = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    return captured[0]


def check_known(argv: Sequence[str]) -> None:
    """Every option must be ours or Beam's; otherwise one line naming the closest."""
    parser = _beam_parser()

    def error(message):  # an option with a value it refuses: one line, not Beam's whole usage
        raise ConfigError(f"run: {message} (see issue-platform run --help)")

    parser.error = error
    _, unknown = parser.parse_known_args(list(argv))
    if not unknown:
        return
    arg = unknown[0]
    if not arg.startswith("-"):
        raise ConfigError(f"run: unexpected argument {arg!r} (options take the form --name value)")
    known = {o.replace("-", "_"): o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    name = arg.split("=", 1)[0]
    close = difflib.get_close_matches(name.replace("-", "_"), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {known[close[0]]}?" if close else ""
    raise ConfigError(f"run: unknown option {name}{hint} (see issue-platform run --help)")


def check_runner(name: Optional[str]) -> None:
    """`--runner`: a runner Beam knows by name (as Beam matches them: any case, "Runner" optional) or
    the importable dotted name of a runner class, else one line naming the closest."""
    if name is None or name in RUNNER_NAMES:
        return
    known = {n.lower(): n for n in StandardOptions.KNOWN_RUNNER_NAMES}
    if name.lower() in known or f"{name.lower()}runner" in known:
        return
    if "." in name:
        module, _, cls = name.rpartition(".")
        try:
            getattr(importlib.import_module(module), cls)
            return
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(f"--runner {name}: no such runner class can be imported") from None
    stems = {n.removesuffix("runner"): n for n in known}  # every name ends in Runner: compare the rest
    close = difflib.get_close_matches(name.lower().removesuffix("runner"), list(stems), n=1, cutoff=0.6)
    hint = (f"did you mean {known[stems[close[0]]]}?" if close
            else f"known: {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}")
    raise ConfigError(f"--runner {name}: not a Beam runner; {hint}")


def check_values(inputs: InputOptions, when: TimeOptions) -> None:
    """Refuse values that make no sense, each with one line."""
    if inputs.max_payload_bytes <= 0:
        raise ConfigError(f"--max_payload_bytes must be a positive number of bytes, got {inputs.max_payload_bytes}")
    for name, value in (("allowed_lateness_seconds", when.allowed_lateness_seconds),
                        ("dedupe_window_seconds", when.dedupe_window_seconds)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be a number of seconds >= 0, got {value:g}")


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
