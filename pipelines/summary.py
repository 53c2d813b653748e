"""The end-of-run summary: outcome counts from Beam metrics, top groups from the groups table."""
from __future__ import annotations

import glob
import shlex
from typing import Callable, Iterable, Optional

from apache_beam.metrics.metric import MetricsFilter

from issue_platform import outcomes
from issue_platform.tables import ALL_TABLES, DEAD_LETTER, GROUPS, OCCURRENCES, STATUS_CHANGES, counter_name, jsonl_glob, read_jsonl
from transforms.parse import EVENT_TIMES, NAMESPACE


# What the summary suggests running next: the current groups, most seen first.
NEXT_QUERY = ("SELECT group_id, project_id, title, status, times_seen FROM groups_current "
              "ORDER BY times_seen DESC, group_id LIMIT 10")


def counters(result) -> dict[str, int]:
    """Every `issue_platform` counter of a finished run, by name."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + value
    return totals


def counts_from_outputs(output_dir: str) -> dict[str, int]:
    """The same counters, recounted from the output tables (the streaming DirectRunner under-reports
    its metric counters; the rows are what was written)."""
    return counts_from_rows(lambda table: read_jsonl(output_dir, table))


def counts_from_rows(rows_of: Callable[[str], Iterable[dict]]) -> dict[str, int]:
    """The counters recounted from each table's rows, `rows_of(table)` (JSON Lines files, BigQuery)."""
    totals: dict[str, int] = {}

    def bump(name: str) -> None:
        totals[name] = totals.get(name, 0) + 1

    group_ids = set()
    for table in ALL_TABLES:
        for row in rows_of(table):
            name = counter_name(table, row)
            if name is not None:
                bump(name)
            # Every input record ends in exactly one of these (a sink's rejects are output rows).
            if table in (OCCURRENCES, STATUS_CHANGES) or (table == DEAD_LETTER and row["stage"] != outcomes.STAGE_SINK):
                bump("records.in")
            if table == GROUPS:
                group_ids.add(row["group_id"])
    totals["groups.created"] = len(group_ids)
    return totals


def latest_groups(output_dir: str) -> list[dict]:
    """The current state of every group: its row with the highest version (by key and id, so that
    two keys sharing an id, see `id_collisions`, stay two groups)."""
    latest: dict[tuple, dict] = {}
    for row in read_jsonl(output_dir, GROUPS):
        group = (row["group_id"], row["project_id"], row["fingerprint"])
        if row["version"] >= latest.get(group, {"version": -1})["version"]:
            latest[group] = row
    return list(latest.values())


def earliest_event_time(result) -> Optional[float]:
    """The earliest valid event time of a finished run (from the `events.time` distribution)."""
    for dist in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(EVENT_TIMES))[
            "distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is not None and value.count:
            return float(value.min)
    return None


def tables_written(output_dir: str) -> dict[str, int]:
    """Rows per table in `output_dir`, all its parts (`<table>.<part>-...jsonl`) together."""
    rows: dict[str, int] = {}
    for table in ALL_TABLES:
        for path in sorted(glob.glob(jsonl_glob(output_dir, table))):
            with open(path, "rb") as handle:
                rows[table] = rows.get(table, 0) + sum(
                    chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return rows


def render(totals: dict[str, int], groups: list[dict], output_dir: Optional[str], elapsed: float,
           top: int = 5, files: bool = True) -> str:
    """The summary; `output_dir` None: the tables went elsewhere (BigQuery); `files`: the input was
    files (a live source has no blank lines to skip)."""
    dead = sum(v for k, v in totals.items() if k.startswith("dead_letter."))
    occ = {k.split(".", 1)[1]: v for k, v in totals.items() if k.startswith("occurrences.")}
    changes = {k.split(".", 1)[1]: v for k, v in totals.items() if k.startswith("status_changes.")}
    lines = [
        f"records in:            {totals.get('records.in', 0)}",
        *([f"blank lines skipped:   {totals.get('records.blank_lines', 0)} (JSON Lines; not records)"] if files
          else []),
        f"groups created:        {totals.get('groups.created', 0)}",
        f"occurrences grouped:   {occ.get('grouped', 0)}",
        f"held back by noise:    {occ.get('noise_suppressed', 0)}",
        "other outcomes:        " + (", ".join(f"{k} {v}" for k, v in sorted(occ.items())
                                               if k not in ("grouped", "noise_suppressed")) or "none"),
        "status changes:        " + (", ".join(f"{k} {v}" for k, v in sorted(changes.items())) or "none"),
        f"dead-lettered:         {dead}" + (" (" + ", ".join(
            f"{k.split('.', 1)[1]} {v}" for k, v in sorted(totals.items()) if k.startswith("dead_letter.")) + ")"
            if dead else ""),
        "top groups by times_seen:" + ("" if groups else " none"),
    ]
    for row in sorted(groups, key=lambda r: (-r["times_seen"], r["group_id"]))[:top]:
        lines.append(f"  {row['times_seen']:>7}  project {row['project_id']:<5} type {row['type']:<6} "
                     f"{row['title'][:40]} — {row['culprit'][:40]}")
    if output_dir is not None:
        lines.append(f"tables written to {output_dir}/: " + ", ".join(
            f"{t} ({n} row{'' if n == 1 else 's'})" for t, n in tables_written(output_dir).items()))
    lines.append(f"elapsed:               {elapsed:.1f} s")
    if output_dir is not None:
        lines.append(f"look at them:          issue-platform query --output {shlex.quote(output_dir)} "
                     f"{shlex.quote(NEXT_QUERY)}")
    return "\n".join(lines)
