"""`issue-platform`: run the pipeline, list types, validate files, generate payloads.

    issue-platform run [--input PATH ...] [--output DIR] [--config FILE] [beam options]
    issue-platform types [--config FILE]
    issue-platform validate FILE... [--config FILE]
    issue-platform generate --count N [--seed S] [--output FILE]
    issue-platform createissueflag --slug SLUG --owner TEAM [--config FILE]
    issue-platform flags --config FILE [--project ID]
    issue-platform produce FILE... --to pubsub:projects/P/topics/T | kafka:HOST:PORT/TOPIC
    issue-platform live [--count N]
"""
from __future__ import annotations

import argparse
import gzip
import sys
from typing import Optional, Sequence

from issue_platform.config import ConfigError, load_config
from issue_platform.enums import GroupCategory, PriorityLevel
from issue_platform.grouptype import registry

_EXIT_USAGE = 2


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON file with extra group_types")
    parser.add_argument("--group_types_module", action="append", default=[],
                        help="module defining GroupType subclasses (repeatable)")


def _load(args) -> None:
    load_config(args.config, tuple(args.group_types_module)).install()


def cmd_types(args) -> int:
    _load(args)
    header = f"{'id':>6}  {'slug':<48} {'category':<18} {'released':<8} {'noise':<12} {'prio':<6} AR  ESC"
    print(header)
    for t in registry.all():
        noise = (f"{t.noise_config.ignore_limit}/{_duration(t.noise_config.expiry_seconds)}"
                 if t.noise_config else "-")
        print(f"{t.type_id:>6}  {t.slug:<48} {GroupCategory(t.category).name:<18} "
              f"{'yes' if t.released else 'no':<8} {noise:<12} "
              f"{PriorityLevel(t.default_priority).name.lower():<6} {'yes' if t.enable_auto_resolve else 'no':<3} "
              f"{'yes' if t.enable_escalation_detection else 'no'}")
    return 0


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_validate(args) -> int:
    from issue_platform.validation import PayloadValidator, Rejected, parse

    _load(args)
    validator = PayloadValidator("fast", registry)
    bad = total = 0
    for path in args.files:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    line = line.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    total += 1
                    try:
                        validator.validate(parse(line, args.max_payload_bytes))
                    except Rejected as rejected:
                        bad += 1
                        print(f"{path}:{number}: {rejected.reason}: {rejected.message}")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    print(f"{total - bad} valid, {bad} invalid", file=sys.stderr)
    return 1 if bad else 0


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
    with opener(args.output, "wb") as out:
        for line in lines:
            out.write(line + b"\n")
    return 0


def cmd_createissueflag(args) -> int:
    """Sentry's `createissueflag`: flagpole YAML for a type's three flags, every segment at rollout 0."""
    import datetime

    from issue_platform.flagpole import issue_flag_features, render_createissueflag

    _load(args)
    if registry.get_by_slug(args.slug) is None:
        print("Error: Invalid GroupType slug. Valid grouptypes:")
        for t in registry.all():
            print(f"  {t.slug}")
        return 1
    sys.stdout.write(render_createissueflag(issue_flag_features(args.slug, args.owner, datetime.date.today())))
    return 0


def cmd_flags(args) -> int:
    """Per unreleased type and configured project: is each of the three flags on?"""
    config = load_config(args.config, tuple(args.group_types_module))
    config.install()
    projects = [config.project(args.project)] if args.project is not None else list(config.projects.values())
    if not projects:
        raise ConfigError(f"--config {args.config}: no projects configured (add a `projects:` section)")
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


def cmd_run(args, beam_args: Sequence[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.issue_pipeline import run
    from pipelines.options import SinkOptions
    from pipelines.summary import counters, counts_from_outputs, latest_groups, render

    argv = list(beam_args)
    for path in args.input:
        argv += ["--input", path]
    argv += ["--output", args.output]
    for module in args.group_types_module:
        argv += ["--group_types_module", module]
    config = load_config(args.config, tuple(args.group_types_module))
    result = run(argv, config)
    sink = PipelineOptions(argv).view_as(SinkOptions)
    files = sink.sink == "jsonl"
    totals = counts_from_outputs(args.output) if "--streaming" in argv and files else counters(result)
    print(render(totals, latest_groups(args.output) if files else []))
    print(f"output: {args.output}/" if files else f"output: BigQuery {sink.bigquery_dataset} (see its groups_current view)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="issue-platform", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="run the batch pipeline (default input: the bundled sample)")
    run_p.add_argument("--input", action="append", default=[], help="path or glob (repeatable)")
    run_p.add_argument("--output", default="out", help="output directory (default: out)")
    _config_args(run_p)

    types_p = sub.add_parser("types", help="list the registered issue types")
    _config_args(types_p)

    validate_p = sub.add_parser("validate", help="validate JSON Lines files; exit 1 if any record is bad")
    validate_p.add_argument("files", nargs="+")
    validate_p.add_argument("--max_payload_bytes", type=int, default=1 << 20)
    _config_args(validate_p)

    flag_p = sub.add_parser("createissueflag", help="print flagpole YAML for an issue type's release flags")
    flag_p.add_argument("--slug", required=True, help="the group type's slug")
    flag_p.add_argument("--owner", required=True, help="owning team")
    _config_args(flag_p)

    flags_p = sub.add_parser("flags", help="show which release flags are on for each configured project")
    flags_p.add_argument("--project", type=int, help="only this project id")
    _config_args(flags_p)

    generate_p = sub.add_parser("generate", help="write realistic synthetic payloads as JSON Lines")
    generate_p.add_argument("--count", type=int, required=True)
    generate_p.add_argument("--seed", type=int, default=0)
    generate_p.add_argument("--output", help="file (.jsonl or .jsonl.gz); default stdout")

    from pipelines import live, produce_cli
    produce_cli.register(sub)
    live.register(sub)

    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "run":
            return cmd_run(args, rest)
        if args.command in ("produce", "live"):
            return args.handler(args)
        return {"types": cmd_types, "validate": cmd_validate, "generate": cmd_generate,
                "createissueflag": cmd_createissueflag, "flags": cmd_flags}[args.command](args)
    except ConfigError as exc:
        print(f"issue-platform: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
