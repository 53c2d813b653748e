"""`issue-platform`: run the pipeline, list types, validate files, generate payloads.

    issue-platform run [--input PATH ...] [--output DIR] [--config FILE] [options] [Beam options]
    issue-platform types [--config FILE]
    issue-platform validate FILE... [--config FILE]
    issue-platform generate --count N [--seed S] [--output FILE]
    issue-platform createissueflag --slug SLUG --owner TEAM [--config FILE]
    issue-platform flags --config FILE [--project ID]
    issue-platform produce FILE... --to pubsub:projects/P/topics/T | kafka:HOST:PORT/TOPIC
    issue-platform query SQL [--output DIR]
    issue-platform live [--count N]
    issue-platform report [OUTPUT_DIR | --from bigquery:PROJECT:DATASET] [--to FILE]
    issue-platform resend --output DIR | --bigquery_dataset PROJECT:DATASET

Exit codes: 0 success; 1 invalid records (`validate`), a failed run, or messages `resend` could not
deliver; 2 a usage, config or input error (one line on stderr); 130 interrupted (Ctrl-C); 141 stdout
closed early (`... | head`); 143 stopped by SIGTERM (the default action: no cleanup, see the README on
what a stopped live job can lose).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import gzip
import logging
import os
import re
import signal
import sys
import time
import warnings
from typing import Iterator, Optional, Sequence

# The Google client libraries that Beam 2.62 pins warn on import about their own future (grpcio < 1.83,
# Python 3.11): nothing a user of this command can act on, and it would break the one-line errors.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

from issue_platform.config import ConfigError, PlatformConfig
from issue_platform.enums import GroupCategory, PriorityLevel
from issue_platform.fingerprint import id_collisions
from issue_platform.grouptype import registry
from pipelines.options import RUN_OPTIONS, add_config_args
from pipelines.plan import read_config
from transforms.read import InputError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141
NO_REPORT = "--no-report"


def _load(args) -> PlatformConfig:
    """The config (read as the job reads it), installed: its types registered in this process."""
    return read_config(args.config, args.group_types_module, install=True)


def cmd_types(args) -> int:
    _load(args)
    print(f"{'id':>6}  {'slug':<48} {'category':<18} {'released':<8} {'noise':<12} {'priority':<8} "
          "auto_resolve  escalation")
    for t in registry.all():
        noise = (f"{t.noise_config.ignore_limit}/{_duration(t.noise_config.expiry_seconds)}"
                 if t.noise_config else "-")
        print(f"{t.type_id:>6}  {t.slug:<48} {GroupCategory(t.category).name:<18} "
              f"{'yes' if t.released else 'no':<8} {noise:<12} "
              f"{PriorityLevel(t.default_priority).name.lower():<8} {'yes' if t.enable_auto_resolve else 'no':<13} "
              f"{'yes' if t.enable_escalation_detection else 'no'}")
    print("noise N/T: the group is created at the Nth occurrence within T; auto_resolve: resolved after the "
          "project's resolve_age without events; escalation: archived-until-escalating groups escalate on a "
          "spike", file=sys.stderr)  # a legend, off stdout so the table stays a table
    return 0


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_validate(args) -> int:
    """Every record of every file through the pipeline's own reader and validator."""
    from issue_platform.validation import PayloadValidator, Rejected, parse
    from transforms.read import input_files, numbered_records

    _load(args)
    if args.max_payload_bytes <= 0:
        raise ConfigError(f"--max_payload_bytes must be a positive number of bytes, got {args.max_payload_bytes}")
    validator = PayloadValidator(args.validator, registry)
    bad = total = 0
    for path in input_files(args.files, option=""):
        for number, raw in numbered_records(path):
            total += 1
            try:
                validator.validate(parse(raw, args.max_payload_bytes))
            except Rejected as rejected:
                bad += 1
                print(f"{path}:{number}: {rejected.reason}: {rejected.message}")
    print(f"{total - bad} valid, {bad} invalid", file=sys.stderr)
    return EXIT_FAILED if bad else 0


def cmd_generate(args) -> int:
    from issue_platform.generate import generate

    if args.count < 0:
        raise ConfigError("--count must be >= 0")
    lines = generate(args.count, args.seed)
    if args.output in (None, "-"):
        out = sys.stdout.buffer
        for line in lines:
            out.write(line + b"\n")
        return 0
    opener = gzip.open if args.output.endswith(".gz") else open
    try:
        with opener(args.output, "wb") as out:
            for line in lines:
                out.write(line + b"\n")
    except OSError as exc:
        raise ConfigError(f"--output {args.output}: cannot write it ({exc.strerror or exc})") from None
    return 0


def cmd_createissueflag(args) -> int:
    """Sentry's `createissueflag`: flagpole YAML for a type's three flags, every segment at rollout 0.
    Sentry's output, split so that `>> config.yaml` works: the YAML on stdout, the rest on stderr."""
    import datetime

    from issue_platform.flagpole import GENERATED_YAML_HEADER, issue_flag_features, render_createissueflag

    _load(args)
    if registry.get_by_slug(args.slug) is None:
        slugs = [t.slug for t in registry.all()]
        close = difflib.get_close_matches(args.slug, slugs, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see issue-platform types"
        raise ConfigError(f"--slug {args.slug}: no issue type has this slug; {hint}")
    rendered = render_createissueflag(issue_flag_features(args.slug, args.owner, datetime.date.today()))
    banner, header, yaml_text = rendered.partition(GENERATED_YAML_HEADER + "\n")
    sys.stderr.write(banner + header)
    sys.stdout.write(yaml_text)
    return 0


def cmd_flags(args) -> int:
    """Per unreleased type and configured project: is each of the three flags on?"""
    config = _load(args)
    if not config.projects:
        raise ConfigError(f"--config {args.config}: no projects configured (add a `projects:` section)")
    if args.project is not None and args.project not in config.projects:
        raise ConfigError(f"--project {args.project}: not configured in --config {args.config} (configured: "
                          f"{', '.join(map(str, sorted(config.projects)))})")
    projects = [config.project(args.project)] if args.project is not None else list(config.projects.values())
    print(f"{'type':<48} {'project':>8} {'organization':<20} ingest  post-process  visible")
    for t in registry.all():
        if t.released:
            continue
        for project in projects:
            org = (project.organization or {}).get("slug", "-")
            on = ["on" if config.allows(t, flag, project.project_id) else "off"
                  for flag in ("ingest", "post_process", "visible")]
            print(f"{t.slug:<48} {project.project_id:>8} {org:<20} {on[0]:<7} {on[1]:<13} {on[2]}")
    return 0


def _run_args(parser: argparse.ArgumentParser) -> None:
    """`run`'s options, generated from the option classes the run plan reads (one help group each),
    then Beam's runner options."""
    for options in RUN_OPTIONS:
        options._add_argparse_args(parser.add_argument_group(options.TITLE))
    runner = parser.add_argument_group("runner (Beam's own options)")
    runner.add_argument("--streaming", action="store_true",
                        help="replay the input as a stream in event-time order (BundleBasedDirectRunner); "
                             "the results equal a batch run's. Default: batch (FnApiRunner)")
    runner.add_argument("--runner", help="Beam runner. Default: FnApiRunner, or BundleBasedDirectRunner "
                                         "with --streaming")
    parser.add_argument_group("after the run").add_argument(
        NO_REPORT, dest="no_report", action="store_true",
        help="skip the HTML report of the run (see `issue-platform report`). Default: write it")


RUN_EPILOG = """\
Beam options: any Apache Beam pipeline option passes through to Beam as --name value or --name=value;
any other option is an error. Those this guide relies on:
  --temp_location DIR        where batch BigQuery load jobs and Dataflow stage files (e.g. gs://bucket/tmp)
  --bootstrap_servers H:P    Kafka brokers of --source kafka. Default: localhost:9092
  --direct_num_workers N     worker threads or processes of the local runners. Default: 1
e.g. --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp"""


def cmd_run(args, argv: Sequence[str]) -> int:
    from pipelines.summary import counters, counts_from_outputs, earliest_event_time, latest_groups, render
    from transforms.read import Progress, reporting

    argv = [a for a in argv if a != NO_REPORT]  # the command's, not the job's
    if (args.progress or sys.stderr.isatty()) and "--progress" not in argv:
        argv.append("--progress")
    started = time.monotonic()
    kept = (f"the previous results in {args.output} are untouched" if args.sink == "jsonl" else
            f"rows written to BigQuery {args.bigquery_dataset} before that stay (it only appends)")
    Progress.start()
    with reporting("--progress" in argv):
        ran = _run_job(argv, kept)
    if ran is None:
        return EXIT_INTERRUPTED
    plan, result = ran
    elapsed = time.monotonic() - started
    files = plan.sinks.files
    totals = counts_from_outputs(plan.output) if plan.streaming and files else counters(result)
    if plan.streaming:
        totals["records.blank_lines"] = plan.blank_lines
    groups = latest_groups(plan.output) if files else []
    print(render(totals, groups, plan.output if files else None, elapsed, files=args.source == "files"))
    for group_id, keys in id_collisions(groups).items():
        print(f"issue-platform: warning: group_id {group_id} is shared by the groups of keys {' and '.join(keys)} "
              "(a 53-bit hash collision): tell them apart by project_id and fingerprint", file=sys.stderr)
    if not files:
        print(f"output: BigQuery {plan.sinks.bigquery_dataset} (see its groups_current view)")
    earliest = plan.earliest if plan.earliest is not None else earliest_event_time(result)
    if plan.as_of_given is not None and earliest is not None and plan.as_of < earliest:
        print(f"issue-platform: warning: --as_of {plan.as_of_given} is before every event in the input: no "
              "time-driven transition (auto-resolve, back to ongoing) was applied", file=sys.stderr)
    if not args.no_report:
        from pipelines.report import report_of_run

        path = report_of_run(plan)
        print(f"report: {path}" if path else "report: none (the output is not a local directory)")
    if plan.progress:
        print(f"done: {Progress.count:,} records read in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _run_job(argv: list, kept: str):
    """(the `RunPlan`, its `PipelineResult`), or None if interrupted; a failure inside the job becomes
    one line (an `InputError` if a file was the cause) ending with `kept`, what became of earlier
    results. Beam's own logging is muted meanwhile (unless --verbose): it would print the traceback
    this replaces."""
    from pipelines import issue_pipeline
    from pipelines.plan import plan_run

    beam_logger = logging.getLogger("apache_beam")
    level = beam_logger.level
    if "--verbose" not in argv:
        beam_logger.setLevel(logging.CRITICAL)
    interrupts = []
    try:
        with _noting(interrupts):
            plan = plan_run(argv)
            return plan, issue_pipeline.execute(plan)
    except (ConfigError, InputError):
        raise
    except Exception as exc:  # the runner wraps what failed inside the job; find our own error in it
        if interrupts:  # Ctrl-C reached a step of the job, which failed with it
            return _interrupted(kept)
        cause = _input_error(exc)
        if cause:
            raise InputError(cause) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise JobFailed(f"the run failed ({type(exc).__name__}: {first}); {kept}") from None
    except KeyboardInterrupt:
        return _interrupted(kept)
    finally:
        beam_logger.setLevel(level)


@contextlib.contextmanager
def _noting(interrupts: list) -> Iterator[None]:
    """Ctrl-C as usual (KeyboardInterrupt where the main thread is), noted in `interrupts`: the runner
    re-raises it from a step of the job as its own failure."""
    def interrupt(signum, _frame):
        interrupts.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(kept: str) -> None:
    print(f"issue-platform: interrupted; {kept}", file=sys.stderr)


class JobFailed(Exception):
    """The job itself failed (not its input): exit 1."""


def _input_error(exc: BaseException) -> Optional[str]:
    """The message of an `InputError` raised inside the job, if that is what failed it."""
    seen, message = exc, None
    while seen is not None and message is None:
        message = str(seen) if isinstance(seen, InputError) else None
        seen = seen.__cause__ or seen.__context__
    if message is None:
        match = re.search(r"InputError: (.+)", str(exc))
        message = match.group(1) if match else None
    return message.split(" [while running")[0].strip() if message else None


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block) and no abbreviated options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="issue-platform", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, **kwargs)

    run_p = command("run", "run the pipeline (default input: the bundled sample)",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RUN_EPILOG)
    _run_args(run_p)

    types_p = command("types", "list the registered issue types")
    add_config_args(types_p)

    validate_p = command("validate", "validate payload files (JSON Lines, .jsonl.gz, Avro) as `run` would; "
                                     "exit 1 if any record is invalid")
    validate_p.add_argument("files", nargs="+", metavar="FILE", help="payload file or glob (several allowed)")
    validate_p.add_argument("--max_payload_bytes", type=int, default=1 << 20,
                            help="payloads larger than this many bytes are invalid. Default: 1048576")
    validate_p.add_argument("--validator", choices=("fast", "spec"), default="fast",
                            help="schema validator; both decide alike. Default: fast")
    add_config_args(validate_p)

    flag_p = command("createissueflag", "print flagpole YAML for an issue type's release flags "
                                        "(YAML on stdout, so `>> config.yaml` works)")
    flag_p.add_argument("--slug", required=True, help="the group type's slug (see `issue-platform types`)")
    flag_p.add_argument("--owner", required=True, help="owning team")
    add_config_args(flag_p)

    flags_p = command("flags", "show which release flags are on for each configured project")
    flags_p.add_argument("--project", type=int, help="only this project id")
    add_config_args(flags_p, required=True)

    generate_p = command("generate", "write realistic synthetic payloads as JSON Lines")
    generate_p.add_argument("--count", type=int, required=True, help="number of payloads to write")
    generate_p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same "
                                                                "payloads. Default: 0")
    generate_p.add_argument("--output", help="file (.jsonl, or .jsonl.gz to compress); default: stdout")

    from pipelines import live, produce_cli, query_cli, report, resend

    produce_cli.register(sub)
    query_cli.register(sub)
    live.register(sub)
    report.register(sub)
    resend.register(sub)
    return parser


COMMANDS = {"types": cmd_types, "validate": cmd_validate, "generate": cmd_generate,
            "createissueflag": cmd_createissueflag, "flags": cmd_flags}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "verbose", False):  # else libraries' logs (Beam's, librdkafka's) stay off the terminal
        from issue_platform.producer import KAFKA_LOG

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        KAFKA_LOG.setLevel(logging.INFO)
    try:
        if args.command == "run":  # the run plan checks the options argparse leaves (`rest`): Beam's
            code = cmd_run(args, argv[argv.index("run") + 1:])
            if code == EXIT_INTERRUPTED:  # now, not once the runner's threads have run the job to its end
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            return code
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        code = COMMANDS[args.command](args) if args.command in COMMANDS else args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try
        return code
    except (ConfigError, InputError) as exc:
        print(f"issue-platform: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailed as exc:
        print(f"issue-platform: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("issue-platform: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; not an input error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
