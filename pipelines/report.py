"""`issue-platform report`: one self-contained HTML page over a run's tables (JSON Lines or BigQuery).

    issue-platform report [OUTPUT_DIR] [--to FILE] [--top N]
    issue-platform report --from bigquery:PROJECT:DATASET [--bigquery_endpoint URL] [--to FILE]

The page needs nothing but itself: styles, the sort script and the charts (SVG) are inline, and its
Content-Security-Policy forbids every request and any script but its own.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import tempfile
import time
from datetime import datetime, timezone
from importlib import resources
from typing import Callable, Iterable, Iterator, Optional

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from issue_platform.config import ConfigError
from issue_platform.grouptype import GroupTypeRegistry, registry as default_registry
from issue_platform.tables import ALL_TABLES, jsonl_glob, read_jsonl

REPORT_FILE = "report.html"
BIGQUERY_SOURCE = re.compile(r"bigquery:([a-z0-9.:-]+):(\w+)$", re.IGNORECASE)


def jsonl_source(output_dir: str) -> Callable[[str], Iterable[dict]]:
    """The tables of a run's output directory."""
    if not os.path.isdir(output_dir):
        raise ConfigError(f"{output_dir}: no such directory (the --output of a run)")
    if not any(glob.glob(jsonl_glob(output_dir, table)) for table in ALL_TABLES):  # (a stream may write no groups)
        raise ConfigError(f"{output_dir}: no run's tables there (no <table>.*.jsonl)")
    return lambda table: read_jsonl(output_dir, table)


def bigquery_source(spec: str, endpoint: Optional[str] = None, prefix: str = "") -> Callable[[str], Iterable[dict]]:
    """The tables of a BigQuery dataset written by `--sink bigquery`, read with SELECT *; times as
    RFC 3339 strings, like the JSON Lines tables."""
    match = BIGQUERY_SOURCE.match(spec)
    if not match:
        raise ConfigError(f"--from {spec}: expected bigquery:PROJECT:DATASET")
    project, dataset = match.groups()
    if not re.fullmatch(r"\w*", prefix):
        raise ConfigError(f"--bigquery_table_prefix {prefix!r}: letters, digits and underscores only")
    from google.api_core.exceptions import GoogleAPICallError, NotFound

    from transforms.sinks import bigquery_client

    client = bigquery_client(project, endpoint)

    def rows_of(table: str) -> Iterator[dict]:
        try:
            rows = client.query(f"SELECT * FROM `{project}.{dataset}.{prefix}{table}`").result(page_size=50_000)
        except NotFound:
            raise ConfigError(f"--from {spec}: table {prefix}{table} not found (a dataset written by "
                              "`run --sink bigquery`?)") from None
        except GoogleAPICallError as exc:
            raise ConfigError(f"--from {spec}: BigQuery refused the query ({type(exc).__name__})") from None
        for row in rows:
            yield {k: _rfc3339(v) if isinstance(v, datetime) else v for k, v in row.items()}

    return rows_of


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")  # as tables.iso writes it


# -- the page

def _when(iso: Optional[str]) -> str:
    """"2026-11-03T23:33:42.598Z" -> "Nov 03 23:33"."""
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%b %d %H:%M")
    except (AttributeError, ValueError):
        return "–" if iso is None else str(iso)


def _epoch(iso: Optional[str]) -> int:
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except (AttributeError, ValueError):
        return 0


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("pipelines", "templates"), autoescape=True, undefined=StrictUndefined)
    env.filters.update(
        n=lambda v: f"{v:,}", when=_when, epoch=_epoch, words=lambda s: str(s).replace("_", " "),
        slug=lambda s: re.sub(r"[^a-z0-9]+", "-", str(s).lower()))
    return env


def render(report, source: str) -> str:
    """The page for a `report_data.RunReport`. Every value passes through Jinja's escaping; the
    charts are Vega's own SVG (it escapes the labels it draws) and carry no script."""
    from pipelines import report_charts as charts
    from pipelines.report_data import LIFECYCLE_WORDS

    script = resources.files("pipelines").joinpath("templates/report.js").read_text()
    css = resources.files("pipelines").joinpath("templates/report.css").read_text()
    totals = report.totals
    part = lambda prefix: {k.split(".", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith(prefix)}
    sparks = charts.Sparklines(len(report.bins))
    by_reason: dict[str, int] = {}
    for d in report.dead_letters:
        by_reason[d["reason"]] = by_reason.get(d["reason"], 0) + d["count"]
    bin_words = "hour" if report.bin_hours == 1 else f"{report.bin_hours} hours"
    return _environment().get_template("report.html.j2").render(
        r=report, source=source, t=lambda name: totals.get(name, 0), bin_words=bin_words,
        other_outcomes={k: v for k, v in part("occurrences.").items() if k not in ("grouped", "noise_suppressed")},
        status_changes=part("status_changes."), dead_by_reason=sorted(by_reason.items(), key=lambda kv: -kv[1]),
        sparklines=[Markup(sparks.render(g["hourly"])) for g in report.groups],
        volume_chart=Markup(charts.stacked_over_time(report.volume, report.bins, report.bin_hours, "occurrences")),
        lifecycle_chart=Markup(charts.stacked_over_time(report.lifecycle, report.bins, report.bin_hours, "groups",
                                                        labels=LIFECYCLE_WORDS, height=160)),
        lifecycle_words=LIFECYCLE_WORDS,
        dead_chart=Markup(charts.dead_letter_bars(report.dead_letters)),
        css=Markup(css), script=Markup(script),
        script_hash="sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode())


def write_report(rows_of: Callable[[str], Iterable[dict]], to: str, source: str,
                 registry: Optional[GroupTypeRegistry] = None, top: int = 500) -> str:
    """Collects, renders and writes the page to `to` (whole or not at all: a failure keeps the
    previous file). Returns the path written."""
    from pipelines.report_data import TableError, collect

    try:
        page = render(collect(rows_of, registry or default_registry, top), source)
    except TableError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    directory = os.path.dirname(os.path.abspath(to))
    try:
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=directory, prefix=".report-",
                                         suffix=".html", delete=False) as handle:
            handle.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # as `open` would create it (the temporary file is 0600)
        os.replace(handle.name, to)
    except OSError as exc:
        raise ConfigError(f"--to {to}: cannot write it ({exc.strerror or exc})") from None
    return to


def report_of_run(plan) -> Optional[str]:
    """After `run`: the report of what its `RunPlan` wrote (its output directory or its BigQuery
    dataset), or None where there is nothing local to read (gs:// output)."""
    sinks = plan.sinks
    if not sinks.files:
        spec = f"bigquery:{sinks.bigquery_dataset}"
        return write_report(bigquery_source(spec, sinks.bigquery_endpoint, sinks.bigquery_table_prefix),
                            REPORT_FILE, spec, plan.config.registry())
    if "://" in plan.output:
        return None
    return write_report(jsonl_source(plan.output), os.path.join(plan.output, REPORT_FILE), plan.output,
                        plan.config.registry())


def cmd_report(args) -> int:
    from pipelines.cli import _load

    _load(args)
    if args.top < 1:
        raise ConfigError("--top must be >= 1")
    if (args.output_dir is None) == (args.source is None):
        raise ConfigError("report: give either OUTPUT_DIR (a run's JSON Lines tables) or --from "
                          "bigquery:PROJECT:DATASET")
    started = time.monotonic()
    if args.source is not None:
        rows_of, source, to = (bigquery_source(args.source, args.bigquery_endpoint, args.bigquery_table_prefix),
                               args.source, args.to or REPORT_FILE)
    else:
        rows_of, source = jsonl_source(args.output_dir), args.output_dir
        to = args.to or os.path.join(args.output_dir, REPORT_FILE)
    path = write_report(rows_of, to, source, top=args.top)
    print(f"report: {path} ({os.path.getsize(path) / 1e6:.2f} MB, {time.monotonic() - started:.1f} s)")
    return 0


def register(sub) -> None:
    from pipelines.options import add_config_args

    parser = sub.add_parser("report", help="write one self-contained HTML report of a run's tables",
                            description="Write one self-contained HTML page (no network request when opened) "
                                        "over a run's tables: the issue stream, volumes, lifecycle, noise and "
                                        "dead letters.")
    parser.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR", help="a run's --output directory")
    parser.add_argument("--from", dest="source", metavar="bigquery:PROJECT:DATASET",
                        help="read the tables of `run --sink bigquery` instead")
    parser.add_argument("--bigquery_endpoint", help="BigQuery API endpoint (an emulator); default: Google's")
    parser.add_argument("--bigquery_table_prefix", default="", help="the run's --bigquery_table_prefix")
    parser.add_argument("--to", help=f"the HTML file to write. Default: OUTPUT_DIR/{REPORT_FILE}, or "
                                     f"./{REPORT_FILE} with --from")
    parser.add_argument("--top", type=int, default=500, help="groups listed in the issue stream (the rest are "
                                                             "counted). Default: 500")
    add_config_args(parser)
    parser.set_defaults(handler=cmd_report)

