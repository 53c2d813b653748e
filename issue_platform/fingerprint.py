"""Fingerprint hashing and the group key, as Sentry does it (md5 hex per part)."""
from __future__ import annotations

import hashlib
from typing import Iterable

GROUP_ID_BITS = 53  # every JSON reader keeps such an integer exact (JavaScript and jq read numbers as doubles)
_GROUP_ID_MASK = (1 << GROUP_ID_BITS) - 1


def hash_fingerprint(parts: Iterable[str]) -> list[str]:
    """Sentry's `hash_fingerprint`: each part becomes `md5(part.encode("utf-8")).hexdigest()`."""
    return [hashlib.md5(part.encode("utf-8")).hexdigest() for part in parts]


def group_key(project_id: int, primary_hash: str) -> str:
    """The key a group lives under: `"<project_id>:<md5 of fingerprint[0]>"` (a canonical string,
    so it is deterministic on every runner and safe to hash)."""
    return f"{project_id}:{primary_hash}"


def split_group_key(key: str) -> tuple[int, str]:
    project_id, primary_hash = key.split(":", 1)
    return int(project_id), primary_hash


def group_id_for(key: str) -> int:
    """A stable positive id for a group key, below 2**53, so re-runs and backfills give the same ids
    and no JSON reader rounds them. It is the low 53 bits of the 63-bit id of earlier releases
    (`narrowed_group_id`)."""
    return narrowed_group_id(int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big"))


def narrowed_group_id(group_id: int) -> int:
    """A group id of an earlier release (63 bits) as this release derives it (key state version 1)."""
    return group_id & _GROUP_ID_MASK


def id_collisions(groups: Iterable[dict]) -> dict[int, list[str]]:
    """Group ids that two different keys share in `groups` (rows of the groups table), with the keys.
    A hash of 53 bits makes this unlikely (about n**2 / 2**54 for n groups: 1 in 18,000 for a million)
    but not impossible, so runs check their tables."""
    keys: dict[int, set[str]] = {}
    for row in groups:
        keys.setdefault(row["group_id"], set()).add(group_key(row["project_id"], row["fingerprint"]))
    return {group_id: sorted(found) for group_id, found in keys.items() if len(found) > 1}
