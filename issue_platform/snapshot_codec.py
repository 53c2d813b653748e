"""State snapshots: everything a key remembers (`KeyState`), written as rows of the `state` table so
that a later job resumes where this one stopped instead of forgetting every group.

A row carries the key, the snapshot `format`, the key's clock `snapshot_at` (every event at or before
it is in the state; a batch run snapshots at its `as_of`), a `revision` that orders a stream's
snapshots of one key at the same clock, and `state`, the base64 of `KeyState.encode()`.

A resumed job turns each key's current row into a *seed record* and puts it in the key's event
buffer ahead of its events; the stateful step adopts it as the key's state before applying anything.
Timeline for one key resumed from a snapshot at 10:00:00 (allowed lateness 600 s):

    seed 10:00:00 buffered                 the group, noise count and recent ids of the last job
    event 10:00:30 buffered
    event  9:55:00 buffered                behind the snapshot, within the allowed lateness
    event  9:00:00 buffered                behind the snapshot by more than the allowed lateness
    watermark passes 10:00:30 -> flush:    adopt the seed; 9:00:00 is dead-lettered `late`; 9:55:00 is
                                           applied (a redelivery of an event the last job saw is a
                                           `duplicate` through the recent ids); then 10:00:30
"""
from __future__ import annotations

import base64
import binascii
import struct
from datetime import datetime
from typing import Optional

from issue_platform.fingerprint import split_group_key
from issue_platform.key_state import KeyState, StateVersionError
from issue_platform.pending import SEED

FORMAT = 1  # the row layout; KeyState's own encoding carries its own version
_SEED_HEAD = struct.Struct("<Bdq")  # SEED, snapshot_at, revision; then the encoded KeyState


class SnapshotError(ValueError):
    """A snapshot row this release cannot read; the message names the field, never the content."""


def snapshot_row(key: str, state: bytes, snapshot_at: float, revision: int, group_id: Optional[int]) -> dict:
    from issue_platform.tables import state_row

    project_id, _ = split_group_key(key)
    return state_row(key=key, project_id=project_id, group_id=group_id, snapshot_format=FORMAT,
                     snapshot_at=snapshot_at, revision=revision, state=base64.b64encode(state).decode("ascii"))


def seed_from_row(row: dict) -> tuple[str, bytes]:
    """(key, seed record) for one `state` row; SnapshotError if this release cannot read it."""
    if not isinstance(row, dict):
        raise SnapshotError("a state row is not a JSON object")
    version = row.get("format")
    if version != FORMAT:
        raise SnapshotError(f"state row format {version!r} is not readable by this release (it reads format "
                            f"{FORMAT}); resume with the release that wrote it, or start without --resume_from")
    key, revision, state = (row.get(f) for f in ("key", "revision", "state"))
    if not isinstance(key, str) or ":" not in key:
        raise SnapshotError("state row field `key`: expected '<project_id>:<hash>'")
    at = snapshot_time(row)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise SnapshotError("state row field `revision`: expected a whole number >= 0")
    try:
        encoded = base64.b64decode(state, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise SnapshotError("state row field `state`: expected base64") from exc
    try:
        KeyState.decode(encoded)
    except StateVersionError as exc:
        raise SnapshotError(f"state row field `state`: {exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise SnapshotError("state row field `state`: not an encoded key state") from exc
    return key, seed_record(encoded, at, revision)


def snapshot_time(row: dict) -> float:
    try:
        return datetime.fromisoformat(row["snapshot_at"].replace("Z", "+00:00")).timestamp()
    except (KeyError, AttributeError, ValueError) as exc:
        raise SnapshotError("state row field `snapshot_at`: expected an RFC 3339 UTC time") from exc


def seed_record(state: bytes, snapshot_at: float, revision: int) -> bytes:
    return _SEED_HEAD.pack(SEED, snapshot_at, revision) + state


def is_seed_record(record: bytes) -> bool:
    return record[0] == SEED


def split_seed_record(record: bytes) -> tuple[bytes, float, int]:
    """(encoded KeyState, snapshot_at, revision)."""
    _, snapshot_at, revision = _SEED_HEAD.unpack_from(record)
    return record[_SEED_HEAD.size:], snapshot_at, revision


def newer_seed(a: bytes, b: bytes) -> bytes:
    """Of two seed records of one key, the current one (the latest clock, then the latest revision)."""
    return a if _SEED_HEAD.unpack_from(a)[1:] >= _SEED_HEAD.unpack_from(b)[1:] else b
