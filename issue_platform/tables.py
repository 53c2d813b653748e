"""The output contract: every table the pipeline writes, by name, and the builder of its rows.

Everything that writes, reads or counts a table (the domain rules, the Beam sinks, the benchmark's
plain loop, the CLI summary, the tests) takes the name and the row shape from here.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Optional

GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, EVIDENCE, DEAD_LETTER, STATE = (
    "groups", "occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter", "state")
ALL_TABLES = (GROUPS, OCCURRENCES, STATUS_CHANGES, POST_PROCESS, ACTIVITY, EVIDENCE, DEAD_LETTER, STATE)


def iso(ts: float) -> str:
    """Event time as an RFC 3339 UTC string (BigQuery TIMESTAMP-compatible)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def group_row(group) -> dict:
    """A snapshot of a group (`issue_platform.groups.Group`); the highest `version` is current."""
    return {
        "group_id": group.group_id, "project_id": group.project_id, "type": group.type,
        "fingerprint": group.primary_hash, "title": group.title, "subtitle": group.subtitle,
        "culprit": group.culprit, "level": group.level, "priority": group.priority,
        "status": group.status, "substatus": group.substatus, "first_seen": iso(group.first_seen),
        "last_seen": iso(group.last_seen), "times_seen": group.times_seen, "version": group.version,
        "visible": group.visible,
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
    """A key's whole state as of `snapshot_at` (see issue_platform.snapshot); per key, the row with the
    highest (snapshot_at, revision) is current."""
    return {"key": key, "project_id": project_id, "group_id": group_id, "format": snapshot_format,
            "snapshot_at": iso(snapshot_at), "revision": revision, "state": state}
