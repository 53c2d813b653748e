"""Reading payload files outside the pipeline: the default `--as_of` (the latest event time in the
input) and the event-time-ordered stream that `run --streaming` replays."""
from __future__ import annotations

import gzip
import math
from typing import Iterable, Iterator, Optional, Sequence, Union

import orjson
from apache_beam.io.filesystems import FileSystems

from issue_platform.validation import Rejected, parse_time
from transforms.read import _avro_payload

Raw = Union[bytes, dict]


def read_raw(patterns: Sequence[str]) -> Iterator[Raw]:
    """Every record of the files matching `patterns`, as ReadPayloads would see it."""
    for pattern in patterns:
        for metadata in FileSystems.match([pattern])[0].metadata_list:
            path = metadata.path
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                if path.endswith(".avro"):
                    import fastavro

                    yield from (_avro_payload(r) for r in fastavro.reader(handle))
                    continue
                stream = gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle
                for line in stream:
                    line = line.rstrip(b"\r\n")
                    if line.strip():
                        yield line


def event_time(raw: Raw) -> Optional[float]:
    """A record's event time if it has a readable one (`detection_time` or `update_date`)."""
    try:
        payload = raw if isinstance(raw, dict) else orjson.loads(raw)
        value = payload.get("detection_time", payload.get("update_date"))
        return None if value is None else parse_time(value, "time")
    except (orjson.JSONDecodeError, AttributeError, Rejected):
        return None


def timed(patterns: Sequence[str]) -> Iterator[tuple[Optional[float], Raw]]:
    """Every record with its event time (None if unreadable)."""
    return ((event_time(raw), raw) for raw in read_raw(patterns))


def latest_event_time(records: Iterable[tuple[Optional[float], Raw]]) -> Optional[float]:
    return max((t for t, _ in records if t is not None), default=None)


def replay_stream(records: Sequence[tuple[Optional[float], Raw]], batch_size: int = 200):
    """Timed records (see `timed`) as a `TestStream` in event-time order: elements in batches, each followed by a
    watermark advance to just before the next batch's earliest event, then to +infinity. Records
    without a readable time (they will be dead-lettered, or stamped later) come first.
    The stream holds its input in memory; it is for replays and tests, not for live traffic."""
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
