"""One input that exercises every lifecycle rule (used by the batch/streaming parity test)."""
from __future__ import annotations

from issue_platform.tables import iso
from tests.pipeline_support import BASE, occurrence, status_change

H, D = 3600.0, 86400.0
CONFIG = """
projects:
  "1": {resolve_age: 24}
  "2": {resolve_age: 0}
  "3": {organization: {id: 3, slug: initech, early_adopter: false}}
features:  # type 1906: ingest on, post-processing off
  feature.organizations:issue-performance-n-plus-one-db-queries-experimental-ingest:
    created_at: '2026-11-01'
    enabled: true
    owner: {team: perf}
    segments: [{name: GA, conditions: [], rollout: 100}]
"""
LONG_CULPRIT = "app.views." + "x" * 240


def _with_event(payload: dict, timestamp) -> dict:
    """`payload` with an embedded event whose timestamp is `timestamp` (unix seconds or RFC 3339)."""
    payload["event"] = {"event_id": payload["event_id"], "environment": "production", "platform": "python",
                        "project_id": payload["project_id"], "received": payload["detection_time"], "tags": {},
                        "timestamp": timestamp}
    return payload


def lifecycle_payloads() -> list[dict]:
    p: list[dict] = []
    # Auto-resolve after 24 h idle, then a regression, then auto-resolved again.
    p += [occurrence("auto", project_id=1, type_id=2001, t=BASE + h * H) for h in (0, 1, 30)]
    # NEW -> ONGOING after 7 days (a type without auto-resolve).
    p += [occurrence("ongoing", project_id=2, type_id=2011, t=BASE + h * H) for h in (0, 2)]
    # Without auto-resolve, 30 idle hours past a 24 h resolve age are no regression.
    p += [occurrence("noauto", project_id=1, type_id=2011, t=BASE + h * H) for h in (0, 30)]
    # Archived until escalating at 30.5 h (no forecast yet); the first check in hour 40 uses the
    # one-event forecast (10/day), so the 11th occurrence escalates it (priority LOW -> MEDIUM) and the
    # 12th sets the type default back; 7 days later it is ONGOING.
    p += [occurrence("escalate", project_id=2, type_id=2003, t=BASE + h * H + 60) for h in range(30)]
    p.append(status_change("escalate", project_id=2, status=2, substatus=1, t=BASE + 30.5 * H))
    p += [occurrence("escalate", project_id=2, type_id=2003, t=BASE + 40 * H + 60 * i) for i in range(12)]
    # The same, but post-processing is off for the type: no escalation.
    p += [occurrence("ppoff", project_id=3, type_id=1906, t=BASE + h * H + 60) for h in range(30)]
    p.append(status_change("ppoff", project_id=3, status=2, substatus=1, t=BASE + 30.5 * H))
    p += [occurrence("ppoff", project_id=3, type_id=1906, t=BASE + 40 * H + 60 * i) for i in range(12)]
    # Archived until escalating across a midnight (daily forecast), too quiet to escalate.
    p += [occurrence("archived", project_id=2, type_id=2007, t=BASE + h * H + 30) for h in range(26)]
    p.append(status_change("archived", project_id=2, status=2, substatus=1, t=BASE + 26 * H))
    p += [occurrence("archived", project_id=2, type_id=2007, t=BASE + 50 * H + i) for i in range(2)]
    # Forecast TTL: 5 in hour 29 make the forecast 50/day; the daily job renews it until 7 days after
    # the last sighting (day 8); 14 days later it has expired, so 11 in an hour escalate against 10.
    p += [occurrence("ttl", project_id=2, type_id=2001, t=BASE + h * H + 30) for h in range(29)]
    p += [occurrence("ttl", project_id=2, type_id=2001, t=BASE + 29 * H + 60 * i) for i in range(5)]
    p.append(status_change("ttl", project_id=2, status=2, substatus=1, t=BASE + 30 * H))
    p.append(occurrence("ttl", project_id=2, type_id=2001, t=BASE + 31 * H))
    p += [occurrence("ttl", project_id=2, type_id=2001, t=BASE + 530 * H + 60 * i) for i in range(11)]
    # Status changes of every outcome (one redelivered), activity data passed through, and
    # regressions from RESOLVED but not from IGNORED.
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE))
    p.append({**status_change("status", project_id=2, status=1, t=BASE + 5 * H), "activity_data": {"by": "detector"}})
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE + 6 * H))
    p.append(status_change("status", project_id=2, status=2, substatus=5, t=BASE + 7 * H))
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE + 8 * H))
    p.append(status_change("status", project_id=2, status=0, substatus=7, t=BASE + 9 * H))
    p.append(status_change("status", project_id=2, status=4, t=BASE + 9.2 * H))
    resolved = status_change("status", project_id=2, status=1, t=BASE + 9.5 * H)
    p += [resolved, dict(resolved)]
    p.append(status_change("status", project_id=2, status=1, t=BASE + 9.6 * H))
    p.append(status_change("status", project_id=2, status=0, substatus=3, t=BASE + 10 * H))
    p.append(status_change("nobody", project_id=2, status=1, t=BASE + 10 * H))
    # Regression guard: an occurrence 3 s after the group became active does not regress it.
    p.append(occurrence("guard", project_id=2, type_id=5003, t=BASE + H))
    p.append(status_change("guard", project_id=2, status=1, t=BASE + H + 1))
    p.append(occurrence("guard", project_id=2, type_id=5003, t=BASE + H + 3))
    p.append(occurrence("guard", project_id=2, type_id=5003, t=BASE + 2 * H))
    # Group times come from the embedded event; detection_time orders; the culprit is cut to 200.
    p.append(_with_event(occurrence("times", project_id=2, type_id=5003, t=BASE + 5 * H), iso(BASE + 4 * H)))
    p.append(_with_event(occurrence("times", project_id=2, type_id=5003, t=BASE + 6 * H, culprit=LONG_CULPRIT),
                         BASE + 3 * H))
    # Noise: two sightings, a gap past the 24 h expiry, one more: still held back.
    p += [occurrence("noisy", project_id=1, type_id=1006, t=BASE + h * H) for h in (0, 1, 30)]
    # The priority follows every occurrence: explicit, then the type default again.
    p.append(occurrence("prio", project_id=2, type_id=2001, t=BASE, priority=75))
    p.append(occurrence("prio", project_id=2, type_id=2001, t=BASE + H, priority=50))
    p.append(occurrence("prio", project_id=2, type_id=2001, t=BASE + 2 * H))
    # A redelivery.
    dup = occurrence("dup", project_id=2, type_id=5003, t=BASE + 3 * H)
    p += [dup, dict(dup)]
    return p
