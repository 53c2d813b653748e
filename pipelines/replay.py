"""Reading payload files outside the pipeline: the default `--as_of` (the latest time of a valid
event in the input) and the event-time-ordered stream that `run --streaming` replays."""
from __future__ import annotations

import math
import re
from itertools import islice
from typing import Callable, Iterable, Iterator, Optional, Sequence

import orjson

from issue_platform.validation import (EARLIEST_TIME, LATEST_TIME, Occurrence, PayloadValidator, Rejected, parse,
                                       parse_time)
from transforms.read import Progress, Raw, SourcedPayload, numbered_records, read_file


def timed(files: Sequence[str], validator: PayloadValidator, max_bytes: int, progress: bool = False,
          on_blank: Callable[[], None] = lambda: None) -> Iterator[tuple[Optional[float], Raw]]:
    """Every record of the files (as `input_files` lists them; each a `SourcedPayload` naming its file
    and line) with its event time if it is a valid event that has one, else None.
    Validating here means a record the pipeline will reject neither moves the default `--as_of` nor
    gets a place in the replay's order (its time may be anything: NaN, 1e300)."""
    Progress.start("reading for the replay's order", files)
    for path in files:
        for number, raw in numbered_records(path, on_blank):
            Progress.tick(progress)
            yield _valid_time(raw, validator, max_bytes), SourcedPayload(raw, f"{path}:{number}")


def latest_valid_time(files: Sequence[str], validator: PayloadValidator, max_bytes: int,
                      progress: bool = False) -> Optional[float]:
    """The latest time of a valid event in the files (the default `--as_of` of a batch run). Exactly
    `max` over the valid events of `timed`, but a record is decoded and validated only if an upper
    bound of its time, read off its bytes in blocks of records, could raise the maximum."""
    latest = -math.inf
    Progress.start("scanning for --as_of", files)
    for path in files:
        records = read_file(path)
        for block in iter(lambda: list(islice(records, _BLOCK)), []):
            if progress:  # (only shown counts matter: the job's own count starts after this scan)
                for _ in block:
                    Progress.tick(progress)
            latest = _block_latest(block, latest, validator, max_bytes)
    return None if latest == -math.inf else latest


_BLOCK = 1000  # records bounded together
# A time field's key spelled without escapes, and the start of its value: a number, a string without
# escapes, else one character (null, true, false, an object, an array, something invalid). It starts
# at the '_' (checking the rest of the key behind it) because re scans fast for a leading literal.
_TIME_VALUES = re.compile(rb'_(?:time"(?<="detection_time")|date"(?<="update_date"))[ \t\n\r]*:[ \t\n\r]*'
                          rb'(-?[0-9][0-9.eE+-]*|"[^"\\]*"|.?)', re.DOTALL)
# The escapes that could spell a time key: \u escapes of '_' or a lowercase letter (no other JSON
# escape yields one). A key spelled with one is a key `_TIME_VALUES` cannot see.
_KEY_ESCAPE = re.compile(rb"\\u00(?:5[fF]|[67][0-9a-fA-F])")


def _block_latest(block: list, latest: float, validator: PayloadValidator, max_bytes: int) -> float:
    """`latest` raised by the valid times of a block of records. A plain block is bounded by its
    largest time value (`_top`); if that could raise `latest`, the record holding it is checked
    first: in input ordered by time it is the block's latest event and settles the block. Otherwise
    every record is bounded, and those whose bound exceeds `latest` are checked, highest first."""
    top, likely = _top(block)
    if top <= latest:
        return latest
    if likely is not None:
        latest = _raise(latest, likely, validator, max_bytes)
        if top <= latest:
            return latest
    for bound, i in sorted(zip(map(_bound, block), range(len(block))), reverse=True):
        if bound <= latest:
            break
        latest = _raise(latest, block[i], validator, max_bytes)
    return latest


def _top(block: list) -> tuple[float, Optional[bytes]]:
    """At least every `_bound` of the block, and a record likely to hold it. For a plain block
    (records of bytes with no escape `_KEY_ESCAPE` finds and only numbers as time values) that is
    its largest time value, decoded as the full decode does, for one regex scan; any other block
    gets +inf."""
    try:
        joined = b"\n".join(block)  # TypeError: Avro records (dicts, str)
        if b"\\" in joined and _KEY_ESCAPE.search(joined):
            return math.inf, None
        # ValueError: a value that is not JSON; TypeError: numbers and strings
        text = max(_TIME_VALUES.findall(joined), key=orjson.loads, default=None)
    except (TypeError, ValueError):
        return math.inf, None
    if text is None:
        return -math.inf, None
    top = orjson.loads(text)
    if not isinstance(top, (int, float)):  # strings only
        return math.inf, None
    return top, next(raw for raw in reversed(block) if text in raw)


def _bound(raw: Raw) -> float:
    """A number at least the time `raw` has if it is valid (-inf: it has none). A valid record's time
    is its last top-level `detection_time` or `update_date` (which one depends on payload_type), so
    it is one of the values `_TIME_VALUES` finds, unless a key is spelled with an escape
    (`_KEY_ESCAPE`). Values that cannot be a valid time are left out; anything not certainly
    bounded (a possibly escaped key, a string with escapes, an odd value, a record that is not
    bytes) bounds it by +inf."""
    if not isinstance(raw, bytes) or b"\\" in raw and _KEY_ESCAPE.search(raw):
        return math.inf
    bound = -math.inf
    for token in _TIME_VALUES.findall(raw):
        if token[:1] in (b"n", b"t", b"f", b"{", b"["):  # null, true, false, object, array: no time
            continue
        try:
            value = parse_time(orjson.loads(token), "")  # the value the full decode has
        except Rejected:  # a string that is not a time: no valid record has it as its time
            continue
        except orjson.JSONDecodeError:
            return math.inf
        if EARLIEST_TIME < value <= LATEST_TIME:
            bound = max(bound, value)
    return bound


def _raise(latest: float, raw: Raw, validator: PayloadValidator, max_bytes: int) -> float:
    """`latest`, or the record's time if it is valid and later (validated only if its raw time is)."""
    candidate = _raw_time(raw)
    if candidate is not None and candidate > latest:
        valid = _valid_time(raw, validator, max_bytes)
        return valid if valid is not None and valid > latest else latest
    return latest


def _raw_time(raw: Raw) -> Optional[float]:
    """The time a record would have if it is valid (its validated time always equals this)."""
    try:
        payload = raw if isinstance(raw, dict) else orjson.loads(raw)
        field = "update_date" if payload.get("payload_type") == "status_change" else "detection_time"
        value = payload.get(field)
        return None if value is None else parse_time(value, field)
    except Exception:  # not JSON, not an object, not a time: invalid, so never the latest valid time
        return None


def _valid_time(raw: Raw, validator: PayloadValidator, max_bytes: int) -> Optional[float]:
    try:
        payload = validator.validate(parse(raw, max_bytes))
    except Exception:  # rejected (or worse): the pipeline dead-letters it; it has no time here
        return None
    return payload.detection_time if isinstance(payload, Occurrence) else payload.update_date


def event_time_range(records: Iterable[tuple[Optional[float], Raw]]) -> tuple[Optional[float], Optional[float]]:
    """(earliest, latest) event time of the valid events, (None, None) if there are none."""
    earliest = latest = None
    for t, _ in records:
        if t is not None:
            earliest = t if earliest is None else min(earliest, t)
            latest = t if latest is None else max(latest, t)
    return earliest, latest


def replay_stream(records: Sequence[tuple[Optional[float], Raw]], batch_size: int = 1000):
    """Timed records (see `timed`) as a `TestStream` in event-time order: elements in batches, each followed by a
    watermark advance to just before the next batch's earliest event, then to +infinity. Records
    without a time (invalid ones, to be dead-lettered, and status changes without update_date, stamped
    later) come first, at the earliest valid time. The stream holds its input in memory; it is for
    replays and tests, not for live traffic."""
    from apache_beam import coders
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.transforms.window import TimestampedValue

    first = min((t for t, _ in records if t is not None), default=0.0)
    ordered = sorted(((first if t is None else t, i, raw) for i, (t, raw) in enumerate(records)),
                     key=lambda r: (r[0], r[1]))
    stream = TestStream(coder=coders.FastPrimitivesCoder())
    watermark = -math.inf
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        stream.add_elements([TimestampedValue(raw, t) for t, _, raw in batch])
        if start + batch_size < len(ordered):
            target = ordered[start + batch_size][0] - 0.001
            if target > watermark:
                stream.advance_watermark_to(target)
                watermark = target
    return stream.advance_watermark_to_infinity()
