"""The output contract: every table the pipeline writes, in one place.

Per table: its name, the builder of its rows (below), its BigQuery schema file
(`schemas/bigquery/<table>.json`, with field descriptions), its day partitioning (an event-time
column, or ingestion time for tables without one), its clustering, and the Beam counter each row
feeds. The JSON Lines file naming, the `groups_current` view and its example queries live here too.
Everything that writes, reads or counts a table (the domain rules, the Beam sinks, the benchmark's
plain loop, the CLI summary, the tests) takes it from here. Plain Python: no Beam import.
"""
from __future__ import annotations

import glob
import hashlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Optional

import orjson

import schemas

GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, EVIDENCE, DEAD_LETTER, STATE, UNDELIVERED = (
    "groups", "occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter", "state",
    "undelivered")
ALL_TABLES = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, EVIDENCE, DEAD_LETTER, STATE, UNDELIVERED)
UNDELIVERED_STATUS, RESENT_STATUS = "undelivered", "resent"

# A table is written in parts, one per step that produces its rows (the dead-letter `stage` names).
PART_PARSE, PART_GATE, PART_KEY, PART_GROUP, PART_SINK = "parse", "gate", "key", "group", "sink"


@dataclass(frozen=True)
class Table:
    """One output table. `partition_field` None: partitioned by ingestion time (no event-time column)."""

    name: str
    partition_field: Optional[str]
    clustering: tuple[str, ...]
    counter: Optional[Callable[[dict], Optional[str]]] = None  # the counter a row feeds, if any

    def schema(self) -> list[dict]:
        """BigQuery fields: name, type, mode, description."""
        return schemas.load(f"bigquery/{self.name}.json")


def _by(field: str, table: str) -> Callable[[dict], str]:
    return lambda row: f"{table}.{row[field]}"


TABLES = {t.name: t for t in (
    Table(GROUPS, "last_seen", ("project_id", "group_id")),
    Table(OCCURRENCES, "detection_time", ("project_id", "group_id"), _by("outcome", OCCURRENCES)),
    Table(STATUS_CHANGES, "timestamp", ("project_id", "group_id"), _by("outcome", STATUS_CHANGES)),
    Table(POST_PROCESS, None, ("project_id", "group_id")),  # groups.created: counted by the group step itself
    Table(ACTIVITY, "timestamp", ("project_id", "group_id"), _by("type", ACTIVITY)),
    Table(EVIDENCE, None, ("project_id",)),
    Table(DEAD_LETTER, None, ("stage", "reason"), _by("reason", DEAD_LETTER)),
    Table(STATE, "snapshot_at", ("project_id", "group_id"), lambda row: "snapshot.rows"),
    Table(UNDELIVERED, "at", ("topic", "status")),  # counted by the delivering step itself
)}


def counter_name(table: str, row: dict) -> Optional[str]:
    """The `issue_platform` counter that `row` of `table` increments (None: no counter)."""
    counter = TABLES[table].counter
    return counter(row) if counter else None


_BIGQUERY_TYPES = {"STRING": (str,), "INTEGER": (int,), "BOOLEAN": (bool,), "TIMESTAMP": (str,),
                   "FLOAT": (int, float), "JSON": (dict, list, str, int, float, bool)}


def schema_problem(table: str, row: dict) -> Optional[tuple[str, str]]:
    """(field, message) for the first way `row` breaks the table's BigQuery schema (an unknown or
    missing field, a null in a REQUIRED field, a wrong type), else None: what BigQuery would reject."""
    fields = TABLES[table].schema()
    unknown = set(row) - {f["name"] for f in fields}
    if unknown:
        name = sorted(unknown)[0]
        return name, f"'{name}' is not a column of {table}"
    for field in fields:
        name, value, kinds = field["name"], row.get(field["name"]), _BIGQUERY_TYPES[field["type"]]
        if value is None:
            if field["mode"] == "REQUIRED":
                return name, f"'{name}' is REQUIRED in {table}"
            continue
        values = value if field["mode"] == "REPEATED" else [value]
        if field["mode"] == "REPEATED" and not isinstance(value, list):
            return name, f"'{name}' must be a list ({field['type']} REPEATED)"
        if any(not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds) for v in values):
            return name, f"'{name}' must be {field['type']}"
    return None


# JSON Lines files: `<table>.<part>-SSSSS-of-NNNNN.jsonl` (batch) or `<table>.<part>-<uuid>.jsonl`
# (streaming). Table and part names never contain "." or "-", so the glob a writer's finalisation
# deletes with (`<table>.<part>-*-of-NNNNN.jsonl`) matches no other table's or part's files.
JSONL_SUFFIX = ".jsonl"


def jsonl_prefix(output_dir: str, table: str, part: str) -> str:
    return os.path.join(output_dir, f"{table}.{part}")


def jsonl_glob(output_dir: str, table: str) -> str:
    """Every file of every part of `table`."""
    return os.path.join(output_dir, f"{table}.*{JSONL_SUFFIX}")


def read_jsonl(output_dir: str, table: str) -> Iterator[dict]:
    """The rows of `table` under a local `output_dir`, all parts."""
    for path in sorted(glob.glob(jsonl_glob(output_dir, table))):
        with open(path, "rb") as handle:
            yield from (orjson.loads(line) for line in handle if line.strip())


# One row per group, its latest version: users never write the QUALIFY themselves.
GROUPS_CURRENT = "groups_current"
GROUPS_CURRENT_SQL = ("SELECT * FROM `{groups}` WHERE TRUE "
                      "QUALIFY ROW_NUMBER() OVER (PARTITION BY group_id ORDER BY version DESC) = 1")
# Each key's current snapshot (what --resume_from bigquery:... reads); `{state}` is the state table.
CURRENT_STATE_SQL = ("SELECT `key`, format, snapshot_at, revision, state FROM `{state}` WHERE TRUE "
                     "QUALIFY ROW_NUMBER() OVER (PARTITION BY `key` ORDER BY snapshot_at DESC, revision DESC) = 1")
# Documented in the README and run by the tests against the emulator; `{view}` is groups_current.
EXAMPLE_QUERIES = {
    "top_issues": "SELECT group_id, project_id, title, culprit, times_seen FROM `{view}` "
                  "ORDER BY times_seen DESC, group_id LIMIT 10",
    "unresolved_per_project": "SELECT project_id, COUNT(*) AS unresolved FROM `{view}` "
                              "WHERE status = 0 GROUP BY project_id ORDER BY project_id",
    "escalating": "SELECT group_id, project_id, title, priority, last_seen FROM `{view}` "
                  "WHERE status = 0 AND substatus = 2 ORDER BY last_seen DESC",
}


def iso(ts: float) -> str:
    """Event time as an RFC 3339 UTC string (BigQuery TIMESTAMP-compatible)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def group_row(group) -> dict:
    """A snapshot of a group (`issue_platform.key_state.Group`); the highest `version` is current."""
    return {
        "group_id": group.group_id, "project_id": group.project_id, "type": group.type,
        "fingerprint": group.primary_hash, "title": group.title, "subtitle": group.subtitle,
        "culprit": group.culprit, "level": group.level, "priority": group.priority,
        "status": group.status, "substatus": group.substatus, "first_seen": iso(group.first_seen),
        "last_seen": iso(group.last_seen), "times_seen": group.times_seen, "version": group.version,
        "visible": group.visible, "resolved_at": None if group.resolved_at is None else iso(group.resolved_at),
        "platform": group.platform, "assignee": group.assignee,
    }


def occurrence_row(*, occurrence_id: str, project_id: int, fingerprint: Iterable[str], type_id: int,
                   event_id: str, display, priority: Optional[int], resource_id: Optional[str],
                   detection_time: float, group_id: Optional[int], outcome: str) -> dict:
    """One row of the occurrences table (evidence and the event go to the evidence table)."""
    return {
        "occurrence_id": occurrence_id, "project_id": project_id, "group_id": group_id, "outcome": outcome,
        "type": type_id, "fingerprint": list(fingerprint), "event_id": event_id,
        "issue_title": display.title, "subtitle": display.subtitle, "culprit": display.culprit,
        "level": display.level, "environment": display.environment, "priority": priority,
        "resource_id": resource_id, "detection_time": iso(detection_time),
    }


def status_change_row(*, status_change_id: str, project_id: int, fingerprint: str, group_id: Optional[int],
                      new_status: int, new_substatus: Optional[int], outcome: str, reason: Optional[str],
                      timestamp: float) -> dict:
    return {
        "status_change_id": status_change_id, "project_id": project_id, "fingerprint": fingerprint,
        "group_id": group_id, "new_status": new_status, "new_substatus": new_substatus, "outcome": outcome,
        "reason": reason, "timestamp": iso(timestamp),
    }


def post_process_row(*, group_id: int, occurrence_id: str, project_id: int, event_id: str, primary_hash: str,
                     group_type: int, is_new: bool, is_regression: bool, is_new_group_environment: bool) -> dict:
    return {
        "group_id": group_id, "occurrence_id": occurrence_id, "project_id": project_id, "event_id": event_id,
        "primary_hash": primary_hash, "group_type": group_type, "is_new": is_new, "is_regression": is_regression,
        "is_new_group_environment": is_new_group_environment,
    }


def activity_row(*, group_id: int, project_id: int, kind: str, timestamp: float, data: dict) -> dict:
    return {"group_id": group_id, "project_id": project_id, "type": kind, "timestamp": iso(timestamp),
            "data": data}


def evidence_row(occurrence) -> dict:
    """An occurrence's evidence and embedded event (`issue_platform.validation.Occurrence`)."""
    return {"occurrence_id": occurrence.id, "project_id": occurrence.project_id,
            "evidence_data": occurrence.evidence_data, "evidence_display": occurrence.evidence_display,
            "event": occurrence.event}


def state_row(*, key: str, project_id: int, group_id: Optional[int], snapshot_format: int, snapshot_at: float,
              revision: int, state: str) -> dict:
    """A key's whole state as of `snapshot_at` (see issue_platform.snapshot_codec); per key, the row with the
    highest (snapshot_at, revision) is current."""
    return {"key": key, "project_id": project_id, "group_id": group_id, "format": snapshot_format,
            "snapshot_at": iso(snapshot_at), "revision": revision, "state": state}


def post_process_message(row: dict) -> tuple[str, bytes, dict[str, str]]:
    """A `post_process` row as a topic message: (key = the group id, which orders one group's
    messages; the row as a JSON body; attributes/headers)."""
    attributes = {"group_id": str(row["group_id"]), "project_id": str(row["project_id"]),
                  "group_type": str(row["group_type"]), "is_new": "true" if row["is_new"] else "false",
                  "is_regression": "true" if row["is_regression"] else "false"}
    return attributes["group_id"], orjson.dumps(row), attributes


def undelivered_row(topic: str, key: str, body: bytes, attributes: dict, error: Optional[str], attempts: int,
                    status: str = UNDELIVERED_STATUS, at: Optional[float] = None) -> dict:
    """A post-process message for `topic` (the `--post_process_topic` value) that was not delivered
    (`status` undelivered), or was delivered later by `issue-platform resend` (`resent`)."""
    digest = hashlib.sha256(b"\0".join((topic.encode(), key.encode(), body))).hexdigest()[:32]
    return {"topic": topic, "message_id": digest, "key": key, "body": body.decode(), "attributes": attributes,
            "status": status, "error": error, "attempts": attempts, "at": iso(time.time() if at is None else at)}
