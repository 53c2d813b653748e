"""What the run report shows, computed from a run's tables in one pass (plain functions, no Beam).

`collect(rows_of)` reads each table once through `rows_of(table)` (JSON Lines files or BigQuery
rows, timestamps as RFC 3339 strings) and returns a `RunReport`: every number in the report comes
from these rows; the headline counts are the CLI summary's own (`summary.counts_from_rows`).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, Optional

import orjson

from issue_platform import outcomes as R
from issue_platform.enums import GroupCategory, GroupStatus, GroupSubStatus, PriorityLevel
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.key_state import KeyState
from issue_platform.snapshot_codec import SnapshotError, seed_from_row, split_seed_record
from issue_platform.tables import (
    ACTIVITY, DEAD_LETTER, EVIDENCE, GROUPS, OCCURRENCES, POST_PROCESS, STATE, STATUS_CHANGES)
from pipelines.summary import counts_from_rows

MAX_BINS = 1000  # time charts: one bar per hour, or per several hours when the run spans longer
EXAMPLES_PER_REASON = 3
EXCERPT_CHARS = 120
NOISE_ROWS = 100
RECENT_LIFECYCLE = 30
LATE_OUTCOME = "late (dead letter)"  # late records sit in the dead-letter table, at their detection_time
CREATED = "created"  # a group's first_seen; the other lifecycle kinds are `activity` types
PRIORITY = "set_priority"  # counted, but not a lifecycle step
LIFECYCLE_WORDS = {CREATED: "created", "set_regression": "regressed", "set_escalating": "escalating",
                   "set_resolved": "resolved", "set_resolved_by_age": "auto-resolved", "set_ignored": "archived",
                   "set_unresolved": "unresolved", "auto_set_ongoing": "ongoing", PRIORITY: "priority"}


class TableError(ValueError):
    """A table's rows are not what `run` writes (damaged or another program's)."""


@dataclass
class RunReport:
    totals: dict[str, int]
    bins: list[str]  # start of each time bin, "YYYY-MM-DDTHH:00Z"
    bin_hours: int
    first_seen: Optional[str]
    last_seen: Optional[str]
    groups: list[dict]  # the top groups by times seen, current state, each with `hourly` counts per bin
    groups_total: int
    groups_new: int  # created by this run (post_process is_new)
    groups_rest_events: int  # times seen of the groups beyond the top
    volume: dict[str, list[int]]  # outcome -> count per bin
    lifecycle: dict[str, list[int]]  # created / activity type -> count per bin
    recent_lifecycle: list[dict]
    noise: list[dict]
    noise_total: int
    dead_letters: list[dict]  # per (stage, reason): count and a few examples
    dead_letter_total: int


def _words(enum, value) -> str:
    try:
        return enum(value).name.lower().replace("_", " ")
    except (ValueError, TypeError):
        return "-" if value is None else str(value)


class _Hours:
    """Counts per hour, kept by the hour's RFC 3339 prefix ("2026-11-01T09") while reading."""

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def add(self, series, timestamp: Optional[str]) -> None:
        if isinstance(timestamp, str) and len(timestamp) >= 13:
            self.counts[series][timestamp[:13]] += 1


def _hour(prefix: str) -> Optional[datetime]:
    try:
        return datetime.strptime(prefix, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


class _Bins:
    """Maps hour prefixes onto at most MAX_BINS bins of whole hours spanning the run."""

    def __init__(self, prefixes: Iterable[str]):
        hours = sorted(h for h in {_hour(p) for p in prefixes} if h is not None)
        self.start = hours[0] if hours else None
        span = int((hours[-1] - hours[0]).total_seconds() // 3600) + 1 if hours else 0
        self.width = max(1, math.ceil(span / MAX_BINS))
        self.count = math.ceil(span / self.width)
        self._index: dict[str, Optional[int]] = {}

    def labels(self) -> list[str]:
        return [(self.start + timedelta(hours=i * self.width)).strftime("%Y-%m-%dT%H:00Z")
                for i in range(self.count)]

    def index(self, prefix: str) -> Optional[int]:
        if prefix not in self._index:
            hour = _hour(prefix)
            self._index[prefix] = (None if hour is None else
                                   int((hour - self.start).total_seconds() // 3600) // self.width)
        return self._index[prefix]

    def series(self, counts: Counter) -> list[int]:
        out = [0] * self.count
        for prefix, n in counts.items():
            i = self.index(prefix)
            if i is not None:
                out[i] += n
        return out


def _payload_fields(payload: Optional[str]) -> dict:
    """The dead-lettered record's own `id` and `detection_time`, when it is a JSON object."""
    try:
        record = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _iso(seconds) -> Optional[str]:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


class _Collector:
    """Sees every row of every table once (the summary's recount reads through it)."""

    def __init__(self, registry: GroupTypeRegistry):
        self.registry = registry
        self.latest: dict[int, dict] = {}
        self.new_groups: set[int] = set()
        self.hours = _Hours()  # series: outcomes, late records, lifecycle kinds
        self.group_hours = _Hours()  # series: group ids (grouped occurrences)
        self.outcomes: set[str] = set()
        self.first: Optional[str] = None  # the earliest and latest detection or change time
        self.last: Optional[str] = None
        self.held: dict[str, dict] = {}  # group key -> noise-suppressed sightings
        self.noise_state: dict[str, tuple] = {}  # group key -> (clock, revision, count, expires_at)
        self.activity: list[dict] = []
        self.dead: dict[tuple[str, str], dict] = {}

    def observe(self, table: str, rows: Iterable[dict]) -> Iterator[dict]:
        """Yields `rows` after reading each; a row unlike what `run` writes is one clear error."""
        handle = {GROUPS: self._group, OCCURRENCES: self._occurrence, STATUS_CHANGES: self._status_change,
                  POST_PROCESS: self._post_process, ACTIVITY: self._activity, DEAD_LETTER: self._dead_letter,
                  STATE: self._state}.get(table)
        try:
            for row in rows:
                if handle is not None:
                    handle(row)
                yield row
        except (ValueError, KeyError, TypeError) as exc:
            raise TableError(f"table {table}: a row is not what `run` writes ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None

    def _span(self, timestamp) -> None:
        if isinstance(timestamp, str):
            self.first = timestamp if self.first is None else min(self.first, timestamp)
            self.last = timestamp if self.last is None else max(self.last, timestamp)

    def _group(self, row: dict) -> None:
        if row["version"] >= self.latest.get(row["group_id"], {"version": -1})["version"]:
            self.latest[row["group_id"]] = row

    def _occurrence(self, row: dict) -> None:
        time, outcome = row["detection_time"], row["outcome"]
        self._span(time)
        self.hours.add(outcome, time)
        self.outcomes.add(outcome)
        if outcome == R.GROUPED and row["group_id"] is not None:
            self.group_hours.add(row["group_id"], time)
        elif outcome == R.NOISE_SUPPRESSED and row["fingerprint"]:
            key = f"{row['project_id']}:{row['fingerprint'][0]}"
            held = self.held.setdefault(key, {"key": key, "project_id": row["project_id"], "type": row["type"],
                                              "title": row["issue_title"], "culprit": row["culprit"],
                                              "held": 0, "first": time, "last": time})
            held["held"] += 1
            held["first"], held["last"] = min(held["first"], time), max(held["last"], time)

    def _status_change(self, row: dict) -> None:
        self._span(row["timestamp"])

    def _post_process(self, row: dict) -> None:
        if row["is_new"]:
            self.new_groups.add(row["group_id"])

    def _activity(self, row: dict) -> None:
        self.hours.add(row["type"], row["timestamp"])
        self.activity.append(row)

    def _dead_letter(self, row: dict) -> None:
        entry = self.dead.setdefault((row["stage"], row["reason"]), {
            "stage": row["stage"], "reason": row["reason"], "count": 0, "examples": []})
        entry["count"] += 1
        late = row["reason"] == R.LATE
        if late or len(entry["examples"]) < EXAMPLES_PER_REASON:
            record = _payload_fields(row.get("payload"))
            if late:
                self.hours.add(LATE_OUTCOME, _iso(record.get("detection_time")))
                self.outcomes.add(LATE_OUTCOME)
            if len(entry["examples"]) < EXAMPLES_PER_REASON:
                record_id = record.get("id")
                entry["examples"].append({
                    "field": row.get("field") or "", "error": row["error"], "source": row.get("source") or "",
                    "id": record_id if isinstance(record_id, (str, int)) else "",
                    "excerpt": (row.get("payload") or "")[:EXCERPT_CHARS],
                    "truncated": len(row.get("payload") or "") > EXCERPT_CHARS or row.get("payload_truncated")})

    def _state(self, row: dict) -> None:
        """The noise counter of each key that has no group yet, from its current snapshot."""
        try:
            _, seed = seed_from_row(row)
        except SnapshotError:
            return
        encoded, clock, revision = split_seed_record(seed)
        state = KeyState.decode(encoded)
        current = self.noise_state.get(row["key"])
        if current is None or (clock, revision) >= current[:2]:
            noise = state.noise if state.group is None else None
            self.noise_state[row["key"]] = (clock, revision, noise.count if noise else None,
                                            noise.expires_at if noise else None)

    # -- after the pass

    def group_rows(self, bins: _Bins, top: int) -> tuple[list[dict], int]:
        ranked = sorted(self.latest.values(), key=lambda r: (-r["times_seen"], r["group_id"]))
        rows = []
        for row in ranked[:top]:
            group_type = self.registry.find(row["type"])
            rows.append({
                **row, "slug": group_type.slug if group_type else f"type {row['type']}",
                "category": _words(GroupCategory, group_type.category) if group_type else "unregistered type",
                "status_words": _words(GroupStatus, row["status"]),
                "substatus_words": _words(GroupSubStatus, row["substatus"]),
                "priority_words": _words(PriorityLevel, row["priority"]),
                "hourly": bins.series(self.group_hours.counts.get(row["group_id"], Counter()))})
        return rows, sum(r["times_seen"] for r in ranked[top:])

    def noise_rows(self) -> list[dict]:
        grouped = {f"{g['project_id']}:{g['fingerprint']}" for g in self.latest.values()}
        rows = []
        for key, held in self.held.items():
            if key in grouped:
                continue
            group_type = self.registry.find(held["type"])
            limit = group_type.noise_config.ignore_limit if group_type and group_type.noise_config else None
            # From the key's snapshot: its counter now (None: expired); without a snapshot, this run's sightings.
            _, _, count, expires = self.noise_state.get(key, (None, None, held["held"], None))
            rows.append({**held, "slug": group_type.slug if group_type else f"type {held['type']}",
                         "limit": limit, "counter": count, "expires": _iso(expires),
                         "closeness": (count or 0) / limit if limit else 0})
        return sorted(rows, key=lambda r: (-r["closeness"], -r["held"], r["key"]))

    def lifecycle_rows(self) -> list[dict]:
        """The latest status changes (creations are in the chart and the issue stream's first seen)."""
        groups = self.latest
        events = [{"timestamp": a["timestamp"], "kind": a["type"], "group_id": a["group_id"],
                    "title": groups.get(a["group_id"], {}).get("title", ""),
                    "culprit": groups.get(a["group_id"], {}).get("culprit", ""),
                    "data": ", ".join(f"{k} {v}" for k, v in sorted((a.get("data") or {}).items()))
                    if isinstance(a.get("data"), dict) else str(a.get("data") or "")}
                   for a in self.activity if a["type"] != PRIORITY]
        return sorted(events, key=lambda e: e["timestamp"], reverse=True)[:RECENT_LIFECYCLE]


def collect(rows_of: Callable[[str], Iterable[dict]], registry: GroupTypeRegistry, top: int = 500) -> RunReport:
    """The report's data from `rows_of(table)`; the evidence table (event payloads) is never read."""
    seen = _Collector(registry)
    totals = counts_from_rows(lambda table: () if table == EVIDENCE else seen.observe(table, rows_of(table)))
    for group in seen.latest.values():
        if group["group_id"] in seen.new_groups:
            seen.hours.add(CREATED, group["first_seen"])
    bins = _Bins(p for hours in (seen.hours, seen.group_hours) for counts in hours.counts.values() for p in counts)
    groups, rest_events = seen.group_rows(bins, top)
    noise = seen.noise_rows()
    series = {name: bins.series(counts) for name, counts in seen.hours.counts.items()}
    order = [R.GROUPED, R.NOISE_SUPPRESSED, R.DUPLICATE, R.INGEST_DISABLED, R.TYPE_MISMATCH, LATE_OUTCOME]
    outcomes = sorted(seen.outcomes, key=lambda o: (order.index(o) if o in order else len(order), o))
    kinds = [CREATED] + sorted({a["type"] for a in seen.activity} - {PRIORITY})
    dead = sorted(seen.dead.values(), key=lambda d: (-d["count"], d["stage"], d["reason"]))
    return RunReport(
        totals=totals, bins=bins.labels(), bin_hours=bins.width, first_seen=seen.first, last_seen=seen.last,
        groups=groups, groups_total=len(seen.latest), groups_new=len(seen.new_groups), groups_rest_events=rest_events,
        volume={o: series[o] for o in outcomes if o in series},
        lifecycle={k: series[k] for k in kinds if k in series},
        recent_lifecycle=seen.lifecycle_rows(), noise=noise[:NOISE_ROWS], noise_total=len(noise),
        dead_letters=dead, dead_letter_total=sum(d["count"] for d in dead))
