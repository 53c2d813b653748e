"""Reading payload files outside the pipeline: the default `--as_of` (the latest event time in the
input) and the event-time-ordered stream that `run --streaming` replays."""
from __future__ import annotations

import gzip
from typing import Iterator, Optional, Sequence, Union

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


def latest_event_time(patterns: Sequence[str]) -> Optional[float]:
    times = [t for t in map(event_time, read_raw(patterns)) if t is not None]
    return max(times, default=None)
