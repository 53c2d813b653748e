"""Helpers shared by the pipeline tests: payload builders and a runner that reads tables back."""
from __future__ import annotations

import uuid
from typing import Iterable

import orjson

from issue_platform.tables import ALL_TABLES, read_jsonl

BASE = 1793491200.0  # 2026-11-01T00:00:00Z


def occurrence(fingerprint: str = "fp-1", *, project_id: int = 1, type_id: int = 2001, t: float = BASE,
               title: str = "File I/O on Main Thread", **extra) -> dict:
    payload = {
        "payload_type": "occurrence", "id": str(uuid.uuid4()), "project_id": project_id,
        "fingerprint": [fingerprint], "issue_title": title, "subtitle": "open()", "culprit": "app.io.load",
        "evidence_data": {"k": 1}, "evidence_display": [{"name": "n", "value": "v", "important": True}],
        "type": type_id, "detection_time": t, "level": "warning", "event_id": uuid.uuid4().hex,
    }
    payload.update(extra)
    return payload


def status_change(fingerprint: str = "fp-1", *, project_id: int = 1, status: int = 1, substatus=None,
                  t: float = BASE) -> dict:
    return {"payload_type": "status_change", "id": str(uuid.uuid4()), "fingerprint": [fingerprint],
            "project_id": project_id, "new_status": status, "new_substatus": substatus, "update_date": t}


def write_jsonl(path, payloads: Iterable) -> str:
    with open(path, "wb") as handle:
        for p in payloads:
            handle.write((p if isinstance(p, bytes) else orjson.dumps(p)) + b"\n")
    return str(path)


def read_tables(output_dir) -> dict[str, list[dict]]:
    return {name: list(read_jsonl(str(output_dir), name)) for name in ALL_TABLES}


def canonical(rows: list[dict]) -> list[bytes]:
    """Order-free comparison form of a table."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in rows)


def canonical_tables(tables: dict[str, list[dict]]) -> dict[str, list[bytes]]:
    """Order-free comparison form of every table of a run (`read_tables`)."""
    return {name: canonical(rows) for name, rows in tables.items()}


def latest_groups(rows: list[dict]) -> dict[int, dict]:
    latest = {}
    for row in rows:
        if row["version"] >= latest.get(row["group_id"], {"version": -1})["version"]:
            latest[row["group_id"]] = row
    return latest


def latest_states(rows: list[dict]) -> dict[str, dict]:
    """Each key's current `state` row: the highest (snapshot_at, revision)."""
    latest = {}
    for row in rows:
        best = latest.get(row["key"])
        if best is None or (row["snapshot_at"], row["revision"]) > (best["snapshot_at"], best["revision"]):
            latest[row["key"]] = row
    return latest
