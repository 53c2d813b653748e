"""Fingerprint hashing and the group key, as Sentry does it (md5 hex per part)."""
from __future__ import annotations

import hashlib
from typing import Iterable

_GROUP_ID_MASK = (1 << 63) - 1


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
    """A stable positive 63-bit id for a group key, so re-runs and backfills give the same ids."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") & _GROUP_ID_MASK
