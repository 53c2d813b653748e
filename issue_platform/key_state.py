"""What we remember per key, and its versioned encoding (plain Python).

A key is `(project_id, md5(fingerprint[0]))`. `KeyState` is everything kept for it: the group (once
created), the noise counter (until then), the item ids seen recently (for de-duplication) and the
key's clock. The stateful step stores `KeyState.encode()` between flushes, and a job may snapshot it
to resume in the next release, so the encoding is explicit: one version byte, then a JSON object with
the fields named below. A release reads the versions it knows and refuses any other with
`StateVersionError` (one clear line) rather than guessing; a change to the fields bumps
`STATE_VERSION` and teaches `decode` the older layout.

Versions: 1 had no `resolved_at`, `platform` or `assignee`. A version-1 group resolved at the time
of its snapshot gets `resolved_at` = when it entered RESOLVED (its `substatus_since`); any other
gets null, as do `platform` and `assignee` (the version-1 state never held them). Versions 1 and 2
held 63-bit group ids: a group read from them takes this release's id, the low 53 bits of the old.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

import orjson

from issue_platform import escalation as esc
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.fingerprint import narrowed_group_id
from issue_platform.noise import NoiseCounter

# 1: 63-bit group ids. 2: adds the group's resolved_at, platform and assignee. 3: group ids below 2**53,
# so every JSON reader keeps them exact; an earlier version's id is narrowed when read.
STATE_VERSION = 3
_ADDED_IN_2 = frozenset(("resolved_at", "platform", "assignee"))


class StateVersionError(ValueError):
    """Key state written in an encoding this release cannot read."""


@dataclass
class Group:
    group_id: int
    project_id: int
    primary_hash: str
    type: int
    title: str
    subtitle: str
    culprit: str  # cut to MAX_CULPRIT_LENGTH (ingest_rules)
    level: str
    priority: int
    initial_priority: Optional[int]  # Sentry's data.metadata.initial_priority (restored after escalating)
    status: int
    substatus: Optional[int]
    first_seen: float  # the embedded event's timestamp (PendingOccurrence.event_datetime)
    last_seen: float
    active_at: float  # creation or the last regression (Sentry's `active_at`)
    times_seen: int
    version: int
    environments: list = field(default_factory=list)
    substatus_since: float = 0.0  # event time (detection) at which the group entered its substatus
    resolve_age_hours: int = 0  # the project's setting, as of the latest item
    visible: bool = True
    hourly: esc.HourlyCounts = field(default_factory=esc.HourlyCounts)  # occurrences per clock hour
    forecast: Optional[dict] = None  # escalation.Forecast.to_json(): the stored forecast, until its TTL
    forecast_checked_at: float = 0.0  # the last daily forecast run (or archive time)
    # The last time the group was resolved. Sentry sets it when resolving (`update_group_status`,
    # `auto_resolve_project_issues`) and never clears it: `Group.get_status` reads it.
    resolved_at: Optional[float] = None
    platform: Optional[str] = None  # the creating event's (`_create_issue_kwargs`)
    assignee: Optional[str] = None  # the creating occurrence's actor identifier (`save_issue_from_occurrence`)

    def set_status(self, status: int, substatus: Optional[int], when: float) -> None:
        self.status, self.substatus, self.substatus_since = status, substatus, when
        if status == S.RESOLVED:
            self.resolved_at = when
        self.version += 1

    def is_archived_until_escalating(self) -> bool:
        return self.status == S.IGNORED and self.substatus == Sub.UNTIL_ESCALATING

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["hourly"] = self.hourly.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict, version: int = STATE_VERSION) -> "Group":
        names = {f.name for f in fields(cls)} - (_ADDED_IN_2 if version == 1 else set())
        if set(data) != names:
            raise StateVersionError(f"key state: group fields {sorted(set(data) ^ names)} do not match "
                                    f"version {version}")
        if version == 1:
            resolved = data["status"] == S.RESOLVED
            data = {**data, "resolved_at": data["substatus_since"] if resolved else None, "platform": None,
                    "assignee": None}
        return cls(**{**data, "hourly": esc.HourlyCounts.from_json(data["hourly"])})


@dataclass
class KeyState:
    group: Optional[Group] = None
    noise: Optional[NoiseCounter] = None
    seen: dict = field(default_factory=dict)  # occurrence or status-change id (hex) -> event time
    cursor: float = float("-inf")  # latest event time applied

    def encode(self) -> bytes:
        body = orjson.dumps({
            "group": self.group.to_json() if self.group else None,
            "noise": list(self.noise) if self.noise else None, "seen": self.seen,
            "cursor": None if self.cursor == float("-inf") else self.cursor})
        return bytes((STATE_VERSION,)) + body

    @classmethod
    def decode(cls, data: Optional[bytes]) -> "KeyState":
        if not data:
            return cls()
        if not 1 <= data[0] <= STATE_VERSION:
            raise StateVersionError(f"key state encoding version {data[0]} is not readable by this release "
                                    f"(it reads versions 1 to {STATE_VERSION}); drain or migrate the state first")
        raw = orjson.loads(data[1:])
        if data[0] < 3 and raw["group"]:
            raw["group"]["group_id"] = narrowed_group_id(raw["group"]["group_id"])
        return cls(Group.from_json(raw["group"], data[0]) if raw["group"] else None,
                   NoiseCounter(*raw["noise"]) if raw["noise"] else None, raw["seen"],
                   float("-inf") if raw["cursor"] is None else raw["cursor"])

    def is_empty(self) -> bool:
        return self.group is None and self.noise is None and not self.seen
