"""Reading payload files outside the pipeline: the default `--as_of` (the latest time of a valid
event in the input) and the event-time-ordered stream that `run --streaming` replays."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import orjson

from issue_platform.validation import Occurrence, PayloadValidator, parse, parse_time
from transforms.read import Progress, Raw, input_files, read_file


def timed(patterns: Sequence[str], validator: PayloadValidator, max_bytes: int, progress: bool = False,
          on_blank: Callable[[], None] = lambda: None) -> Iterator[tuple[Optional[float], Raw]]:
    """Every record of the files with its event time if it is a valid event that has one, else None.
    Validating here means a record the pipeline will reject neither moves the default `--as_of` nor
    gets a place in the replay's order (its time may be anything: NaN, 1e300)."""
    for path in input_files(patterns):
        for raw in read_file(path, on_blank):
            Progress.tick(progress)
            yield _valid_time(raw, validator, max_bytes), raw


def latest_valid_time(patterns: Sequence[str], validator: PayloadValidator, max_bytes: int,
                      progress: bool = False) -> Optional[float]:
    """The latest time of a valid event in the files (the default `--as_of` of a batch run). Exactly
    `max` over the valid events of `timed`, but only a record whose raw time would raise the maximum
    is validated, so the scan costs about one JSON decode a record."""
    latest = None
    for path in input_files(patterns):
        for raw in read_file(path):
            Progress.tick(progress)
            candidate = _raw_time(raw)
            if candidate is not None and (latest is None or candidate > latest):
                valid = _valid_time(raw, validator, max_bytes)
                latest = valid if valid is not None and (latest is None or valid > latest) else latest
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
