"""Compact encodings of events waiting in a key's event-time buffer.

A batch run buffers every event of a key until the watermark passes it (see
transforms/apply_rules.py), so what is buffered must be small: a fixed 65-byte head plus the extra
fingerprint hashes and the resource id. The strings an occurrence shares with its neighbours
(title, subtitle, culprit, level, environment) are interned: stored once per key as a
`Display`, referenced by an 8-byte digest (collisions would need two of a key's few displays to
share 64 bits).
"""
from __future__ import annotations

import hashlib
import math
import operator
import struct
import threading
import zlib
from typing import Iterable, Iterator, NamedTuple, Optional, Union

import orjson
import zstandard

from issue_platform.validation import Occurrence, Rejected, StatusChange, parse_time

OCCURRENCE, STATUS_CHANGE, DISPLAY, SEED, BATCH = 0, 1, 2, 3, 4  # SEED: a resumed key's state (issue_platform.snapshot_codec)
_NONE = 0xFF
# kind | admission flags, time, id, event id, type, priority, display digest,
# n extra fingerprint parts, resolve age (hours), the event's timestamp
_OCC_HEAD = struct.Struct("<Bd16s16sIB8sBHd")
# kind, time, id, new status, new substatus, has update_date, resolve age
_SC_HEAD = struct.Struct("<Bd16sBBBH")
_KIND_MASK, _POST_PROCESS, _VISIBLE = 0x0F, 0x10, 0x20
_PRIORITY_CODES = {25: 1, 50: 2, 75: 3}
_PRIORITIES = (None, 25, 50, 75)
DIGEST_SIZE = 8
MAX_RESOLVE_AGE_HOURS = 0xFFFF


class Admission(NamedTuple):
    """What the ingest gate decided for an event from the project's settings and flags at the time:
    whether post-processing and the UI flag are on, and the project's resolve_age (hours, 0 = off)."""

    post_process: bool = True
    visible: bool = True
    resolve_age_hours: int = 0


class Display(NamedTuple):
    title: str
    subtitle: str
    culprit: str
    level: str
    environment: str
    platform: Optional[str] = None  # the event's; a new group takes it
    assignee: Optional[str] = None  # an actor identifier; a new group takes it

    def encode(self) -> bytes:
        return orjson.dumps(tuple(self))

    @classmethod
    def decode(cls, data: bytes) -> "Display":
        return cls(*orjson.loads(data))


def display_digest(display_bytes: bytes) -> bytes:
    return hashlib.blake2b(display_bytes, digest_size=DIGEST_SIZE).digest()


class PendingOccurrence(NamedTuple):
    time: float
    id: str
    event_id: str
    type: int
    priority: int  # validation.Occurrence.priority (never None once validated)
    display: bytes  # digest
    extra_fingerprint: tuple[str, ...]
    resource_id: Optional[str]
    admission: Admission = Admission()
    event_time: Optional[float] = None  # the embedded event's timestamp; None: `time`

    @property
    def event_datetime(self) -> float:
        """Sentry's `event.datetime`: what the group's first_seen/last_seen record."""
        return self.time if self.event_time is None else self.event_time


class PendingStatusChange(NamedTuple):
    time: float
    id: str
    new_status: int
    new_substatus: Optional[int]
    explicit_time: bool  # False: `time` is when we received it (no update_date)
    detector_id: Optional[int]
    activity_data: Optional[dict]
    resolve_age_hours: int = 0
    activity_type: Optional[int] = None


Pending = Union[PendingOccurrence, PendingStatusChange]


def _opt(value: Optional[int]) -> int:
    return _NONE if value is None else value


_EARLIEST, _LATEST = 0.0, 253402300799.0  # 1970-01-01 .. 9999-12-31T23:59:59Z


def event_timestamp(occ: Occurrence) -> float:
    """The embedded event's `timestamp` (unix seconds or RFC 3339), else `detection_time`.

    Without an embedded event (only `event_id`), or when its timestamp cannot be parsed or lies
    outside 1970..9999, the group's times fall back to `detection_time`.
    """
    raw = None if occ.event is None else occ.event.get("timestamp")
    if raw is None:
        return occ.detection_time
    try:
        value = parse_time(raw, "event.timestamp")
    except (Rejected, OverflowError, ValueError):
        return occ.detection_time
    return value if math.isfinite(value) and _EARLIEST <= value <= _LATEST else occ.detection_time


def encode_occurrence(occ: Occurrence, admission: Admission = Admission()) -> tuple[bytes, bytes, bytes]:
    """(record, display digest, display bytes) for one validated occurrence."""
    display = Display(occ.issue_title, occ.subtitle, occ.culprit, occ.level, occ.environment, occ.platform,
                      occ.assignee).encode()
    digest = display_digest(display)
    extra = occ.fingerprint[1:]
    kind = OCCURRENCE | _POST_PROCESS * admission.post_process | _VISIBLE * admission.visible
    head = _OCC_HEAD.pack(kind, occ.detection_time, bytes.fromhex(occ.id), bytes.fromhex(occ.event_id),
                          occ.type, _PRIORITY_CODES[occ.priority], digest, len(extra), admission.resolve_age_hours,
                          event_timestamp(occ))
    tail = b"".join(bytes.fromhex(h) for h in extra)
    if occ.resource_id is not None:
        tail += b"\x01" + occ.resource_id.encode("utf-8")
    return head + tail, digest, display


def encode_status_change(change: StatusChange, received_at: float, admission: Admission = Admission()) -> bytes:
    """The record for a status change; its event time is `update_date`, else `received_at`."""
    explicit = change.update_date is not None
    head = _SC_HEAD.pack(STATUS_CHANGE, change.update_date if explicit else received_at,
                         bytes.fromhex(change.id), change.new_status, _opt(change.new_substatus), explicit,
                         admission.resolve_age_hours)
    if change.detector_id is None and change.activity_data is None and change.activity_type is None:
        return head
    return head + orjson.dumps([change.detector_id, change.activity_data, change.activity_type])


def decode(record: bytes) -> Pending:
    if record[0] & _KIND_MASK == OCCURRENCE:
        flags, t, oid, eid, type_id, priority, digest, n_extra, age, event_time = _OCC_HEAD.unpack_from(record)
        offset = _OCC_HEAD.size + 16 * n_extra
        extra = tuple(record[i:i + 16].hex() for i in range(_OCC_HEAD.size, offset, 16))
        resource = record[offset + 1:].decode("utf-8") if len(record) > offset else None
        return PendingOccurrence(t, oid.hex(), eid.hex(), type_id, _PRIORITIES[priority], digest, extra, resource,
                                 Admission(bool(flags & _POST_PROCESS), bool(flags & _VISIBLE), age), event_time)
    _, t, cid, status, substatus, explicit, age = _SC_HEAD.unpack_from(record)
    detector_id, activity_data, activity_type = orjson.loads(record[_SC_HEAD.size:]) \
        if len(record) > _SC_HEAD.size else (None, None, None)
    return PendingStatusChange(t, cid.hex(), status, None if substatus == _NONE else substatus, bool(explicit),
                               detector_id, activity_data, age, activity_type)


def sort_key(event: Pending) -> tuple:
    """Event-time order; ties broken by kind (occurrences first) then id, so order is total."""
    return (event.time, isinstance(event, PendingStatusChange), event.id)


_TIME_AND_ID = struct.Struct("<d16s")  # at offset 1 of both heads: the event time, then the id


def record_time(record: bytes) -> float:
    """The event time of an occurrence or status-change record, without decoding it."""
    return _TIME_AND_ID.unpack_from(record, 1)[0]


_ID_AT = slice(9, 25)  # the id in both heads: an id's bytes sort as its hex does


def _is_status_change(record: bytes) -> bool:
    return record[0] & _KIND_MASK == STATUS_CHANGE


def sort_records(records: list) -> None:
    """Sorts event records in place into `sort_key` order, without decoding them.

    Three stable sorts, least significant key first, instead of one sort by a (time, kind, id) tuple:
    a sort holds every key at once, and a hot key's flush sorts 100k+ records, whose tuples would take
    more memory than the records themselves (~145 bytes each against at most ~57 here)."""
    records.sort(key=operator.itemgetter(_ID_AT))
    records.sort(key=_is_status_change)
    records.sort(key=record_time)


_DISPLAY_AT = slice(46, 46 + DIGEST_SIZE)  # the display digest in an occurrence record's head


def record_display_digest(record: bytes) -> Optional[bytes]:
    """The display digest an occurrence record references (None for status changes)."""
    return record[_DISPLAY_AT] if record[0] & _KIND_MASK == OCCURRENCE else None


def display_record(digest: bytes, display: bytes) -> bytes:
    """An interned display, stored in the same buffer as the events that reference it."""
    return bytes((DISPLAY,)) + digest + display


def is_display_record(record: bytes) -> bool:
    return record[0] & _KIND_MASK == DISPLAY


def split_display_record(record: bytes) -> tuple[bytes, bytes]:
    return record[1:1 + DIGEST_SIZE], record[1 + DIGEST_SIZE:]


_FRAME = struct.Struct("<I")
_KEY_LENGTH = struct.Struct("<H")
BATCH_SHARDS = 4096  # how many state cells a batch run spreads its keys over (see shard_of)


def shard_of(key: str) -> int:
    """The shard a group key's records travel under to a batch run's stateful step: a runner keeps some
    objects per state cell and timer (a kilobyte or so), which a cell per shard pays once for the
    keys it holds (the same on every worker and in every Python process)."""
    return zlib.crc32(key.encode("utf-8")) % BATCH_SHARDS


def keyed(key: str, record: bytes) -> bytes:
    """`record` after its group key: what a shard holds (many keys' records)."""
    encoded = key.encode("utf-8")
    return _KEY_LENGTH.pack(len(encoded)) + encoded + record


def split_keyed(value: bytes) -> tuple[str, bytes]:
    (length,) = _KEY_LENGTH.unpack_from(value)
    end = _KEY_LENGTH.size + length
    return value[_KEY_LENGTH.size:end].decode("utf-8"), value[end:]


def new_batch() -> bytearray:
    """An empty batch to `add_to_batch` to: many records of one key, each after its length, which
    `sealed_batch` makes one record of (a batch run buffers one object per key and bundle, not one per
    event)."""
    return bytearray()


def add_to_batch(batch: bytearray, record: bytes) -> int:
    """Appends `record` to `batch`; returns the bytes that added."""
    batch += _FRAME.pack(len(record))
    batch += record
    return _FRAME.size + len(record)


class _Codec(threading.local):
    """A thread's zstd contexts: making one costs more than compressing a typical batch, and one context
    must not be used by two threads at once."""

    def __init__(self):
        self.compress = zstandard.ZstdCompressor(level=1).compress
        self.decompress = zstandard.ZstdDecompressor().decompress


_CODEC = _Codec()


def sealed_batch(batch: bytearray) -> bytes:
    """The batch as one record, compressed: a key's events share their type, times and display digests,
    so a batch run's buffer (held by the runner until the end of the input) takes about 2/3 of the bytes.
    zstd level 1: as small as zlib level 1 and ~4x faster to compress and to decompress (200k payloads:
    0.07 s against 0.31 s, docs/performance.md)."""
    return bytes((BATCH,)) + _CODEC.compress(batch)


def unbatched(records: Iterable[bytes]) -> Iterator[bytes]:
    """`records` with every batch record replaced by the records it holds."""
    unpack, size = _FRAME.unpack_from, _FRAME.size
    for record in records:
        if record[0] != BATCH:
            yield record
            continue
        held = _CODEC.decompress(memoryview(record)[1:])
        at, end = 0, len(held)
        while at < end:
            (length,) = unpack(held, at)
            at += size + length
            yield held[at - length:at]
