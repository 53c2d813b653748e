"""Realistic synthetic payloads for demos, the bundled sample and benchmarks.

Zipf-skewed fingerprints over many projects and several issue types (quiet ones that group at
once, noisy ones held back by their NoiseConfig), arriving out of event-time order, with a small
share of exact redeliveries (duplicates), status changes and invalid records of every kind.
Deterministic for a given seed.
"""
from __future__ import annotations

import bisect
import random
import uuid
from typing import Iterator

import orjson

BASE_TIME = 1793491200.0  # 2026-11-01T00:00:00Z
SPAN_SECONDS = 3 * 86400.0
# (type_id, level, culprit kind, title) — released types with and without noise configs, plus
# 1906, which is unreleased (ingest disabled).
_TYPES = (
    (1006, "warning", "transaction", "N+1 Query"),
    (1007, "warning", "transaction", "Consecutive DB Queries"),
    (1001, "info", "transaction", "Slow DB Query"),
    (1009, "warning", "transaction", "Consecutive HTTP"),
    (2001, "warning", "function", "File I/O on Main Thread"),
    (2003, "warning", "function", "JSON Decoding on Main Thread"),
    (2011, "error", "function", "Function Regression"),
    (4001, "error", "monitor", "Cron monitor missed a check-in"),
    (5002, "info", "url", "Rage Click Detected"),
    (1906, "warning", "transaction", "N+1 Query (Experimental)"),
)
_TYPE_WEIGHTS = (30, 8, 6, 6, 12, 10, 6, 10, 8, 4)
_PLATFORMS = ("python", "javascript", "cocoa", "java", "go")
_ENVIRONMENTS = ("production", "production", "production", "staging")
_WORDS = ("users", "orders", "invoices", "cart", "search", "profile", "feed", "settings", "auth", "billing")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Fingerprint:
    __slots__ = ("project_id", "type_id", "level", "title", "subtitle", "culprit", "part", "platform")

    def __init__(self, rng: random.Random, index: int, projects: int):
        type_id, level, kind, title = rng.choices(_TYPES, weights=_TYPE_WEIGHTS)[0]
        a, b = rng.choice(_WORDS), rng.choice(_WORDS)
        self.project_id = 1 + int(projects * rng.random() ** 2)  # a few big projects, many small
        self.type_id, self.level, self.title = type_id, level, title
        self.culprit = {"transaction": f"/api/0/{a}/{{id}}/{b}/", "function": f"app.{a}.{b}.load_{index}",
                        "monitor": f"cron:{a}-{b}-sync", "url": f"https://app.example.com/{a}/{b}"}[kind]
        self.subtitle = f"SELECT * FROM {a}_{b} WHERE id = %s" if kind == "transaction" else f"{a}.{b} ({index})"
        self.part = f"{type_id}-{self.project_id}-{a}-{b}-{index}"
        self.platform = rng.choice(_PLATFORMS)


def _occurrence(rng: random.Random, fp: _Fingerprint, detection_time: float) -> dict:
    event_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
    spans = [{"op": "db", "description": fp.subtitle, "duration_ms": round(rng.uniform(1, 400), 2)}
             for _ in range(rng.randint(1, 4))]
    payload = {
        "payload_type": "occurrence", "id": _uuid(rng), "project_id": fp.project_id, "fingerprint": [fp.part],
        "issue_title": fp.title, "subtitle": fp.subtitle, "culprit": fp.culprit, "type": fp.type_id,
        "detection_time": round(detection_time, 3), "level": fp.level,
        "evidence_data": {"op": "db", "offender_span_ids": [f"{rng.getrandbits(64):016x}" for _ in spans],
                          "spans": spans, "transaction_name": fp.culprit},
        "evidence_display": [
            {"name": "Offending Spans", "value": fp.subtitle, "important": True},
            {"name": "Transaction", "value": fp.culprit, "important": False},
        ],
        "resource_id": None,
    }
    if rng.random() < 0.2:
        payload["event_id"] = event_id
    else:
        payload["event"] = {
            "event_id": event_id, "project_id": fp.project_id, "platform": fp.platform,
            "environment": rng.choice(_ENVIRONMENTS), "received": round(detection_time + rng.uniform(0, 2), 3),
            "timestamp": round(detection_time, 3), "tags": {"release": f"app@1.{rng.randint(0, 9)}.0"},
            "release": f"app@1.{rng.randint(0, 9)}.0",
        }
    if rng.random() < 0.05:
        payload["priority"] = rng.choice((25, 50, 75))
    return payload


def _status_change(rng: random.Random, fp: _Fingerprint, update_date: float) -> dict:
    status, substatus = rng.choice(((1, None), (2, 1), (2, 5), (0, 3)))
    return {"payload_type": "status_change", "id": _uuid(rng), "fingerprint": [fp.part],
            "project_id": fp.project_id, "new_status": status, "new_substatus": substatus,
            "update_date": round(update_date, 3)}


def _invalid(rng: random.Random, valid: dict) -> bytes:
    """One of the ways a payload can be wrong (each maps to a dead-letter reason)."""
    bad = dict(valid)
    fault = rng.randrange(10)
    if fault == 0:
        return orjson.dumps(valid)[:-7]  # truncated JSON
    if fault == 1:
        return b'["not", "an", "object"]'
    if fault == 2:
        del bad["issue_title"]
    elif fault == 3:
        bad["project_id"] = str(bad["project_id"])
    elif fault == 4:
        bad["fingerprint"] = []
    elif fault == 5:
        bad["id"] = "not-a-uuid"
    elif fault == 6:
        bad["type"] = 424242
    elif fault == 7:
        bad["payload_type"] = "transaction"
    elif fault == 8:
        bad.pop("event", None)
        bad.pop("event_id", None)
    else:
        bad["fingerprint"] = [17]
    return orjson.dumps(bad)


def generate(count: int, seed: int = 0, invalid_share: float = 0.005, duplicate_share: float = 0.005,
             status_change_share: float = 0.003) -> Iterator[bytes]:
    """`count` JSON lines (bytes, no newline)."""
    rng = random.Random(seed)
    projects = max(5, count // 2000)
    fingerprints = [_Fingerprint(rng, i, projects) for i in range(max(20, count // 25))]
    cumulative, total = [], 0.0
    for rank in range(len(fingerprints)):
        total += 1.0 / (rank + 1) ** 1.1
        cumulative.append(total)
    recent: list[bytes] = []
    for i in range(count):
        fp = fingerprints[bisect.bisect(cumulative, rng.random() * total)]
        # Event time advances with the record index, give or take a few minutes of disorder.
        detection_time = BASE_TIME + SPAN_SECONDS * i / max(count, 1) + rng.uniform(-300, 300)
        roll = rng.random()
        if roll < invalid_share:
            line = _invalid(rng, _occurrence(rng, fp, detection_time))
        elif roll < invalid_share + duplicate_share and recent:
            line = rng.choice(recent)
        elif roll < invalid_share + duplicate_share + status_change_share:
            line = orjson.dumps(_status_change(rng, fp, detection_time))
        else:
            line = orjson.dumps(_occurrence(rng, fp, detection_time))
            recent.append(line)
            if len(recent) > 64:
                recent.pop(0)
        yield line
