"""One input that exercises every lifecycle transition (used by the batch/streaming parity test)."""
from __future__ import annotations

from tests.pipeline_support import BASE, occurrence, status_change

H, D = 3600.0, 86400.0
CONFIG = """
projects:
  "1": {resolve_age: 24}
  "2": {resolve_age: 0}
"""


def lifecycle_payloads() -> list[dict]:
    p: list[dict] = []
    # Auto-resolve after 24 h idle, then a regression, then auto-resolved again.
    p += [occurrence("auto", project_id=1, type_id=2001, t=BASE + h * H) for h in (0, 1, 30)]
    # NEW -> ONGOING after 7 days (a type without auto-resolve).
    p += [occurrence("ongoing", project_id=2, type_id=2011, t=BASE + h * H) for h in (0, 2)]
    # Archived until escalating at 30.5 h with a forecast of 10/day; a burst of 12 in hour 40
    # escalates it (priority LOW -> MEDIUM), and 7 days later it is ONGOING with LOW again.
    p += [occurrence("escalate", project_id=2, type_id=2003, t=BASE + h * H + 60) for h in range(30)]
    p.append(status_change("escalate", project_id=2, status=2, substatus=1, t=BASE + 30.5 * H))
    p += [occurrence("escalate", project_id=2, type_id=2003, t=BASE + 40 * H + 60 * i) for i in range(12)]
    # Archived until escalating across a midnight (daily forecast), too quiet to escalate.
    p += [occurrence("archived", project_id=2, type_id=2007, t=BASE + h * H + 30) for h in range(26)]
    p.append(status_change("archived", project_id=2, status=2, substatus=1, t=BASE + 26 * H))
    p += [occurrence("archived", project_id=2, type_id=2007, t=BASE + 50 * H + i) for i in range(2)]
    # Status changes of every outcome, and regressions from RESOLVED but not from IGNORED.
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE))
    p.append(status_change("status", project_id=2, status=1, t=BASE + 5 * H))
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE + 6 * H))
    p.append(status_change("status", project_id=2, status=2, substatus=5, t=BASE + 7 * H))
    p.append(occurrence("status", project_id=2, type_id=5002, t=BASE + 8 * H))
    p.append(status_change("status", project_id=2, status=0, substatus=7, t=BASE + 9 * H))
    p.append(status_change("status", project_id=2, status=4, t=BASE + 9.2 * H))
    p.append(status_change("status", project_id=2, status=1, t=BASE + 9.5 * H))
    p.append(status_change("status", project_id=2, status=1, t=BASE + 9.6 * H))
    p.append(status_change("status", project_id=2, status=0, substatus=3, t=BASE + 10 * H))
    p.append(status_change("nobody", project_id=2, status=1, t=BASE + 10 * H))
    # Noise: two sightings, a gap past the 24 h expiry, one more: still held back.
    p += [occurrence("noisy", project_id=1, type_id=1006, t=BASE + h * H) for h in (0, 1, 30)]
    # An explicit priority on a later occurrence updates the group's.
    p.append(occurrence("prio", project_id=2, type_id=2001, t=BASE, priority=75))
    p.append(occurrence("prio", project_id=2, type_id=2001, t=BASE + H, priority=25))
    # A redelivery, and the latest event (so the default as_of is 215 h).
    dup = occurrence("dup", project_id=2, type_id=5003, t=BASE + 3 * H)
    p += [dup, dict(dup), occurrence("last", project_id=2, type_id=5003, t=BASE + 215 * H)]
    return p
