"""Reading payload files: `input_files` (what the patterns name), `read_file` (one file's records; the
same code for `run`, the `--streaming` replay and `validate`) and the ReadPayloads transform.

JSON Lines (`.jsonl`, `.jsonl.gz`, any other extension) is read as bytes, so invalid UTF-8 reaches the
dead-letter output instead of failing the read; blank lines separate nothing and are counted, not
processed. Every Avro record is a record, even an empty one. A file that cannot be read to its end
(a truncated or corrupt gzip stream or Avro file) raises `InputError`: the run fails rather than
report a partial result as a success.
"""
from __future__ import annotations

import gzip
import os
import sys
import time
import zlib
from typing import Callable, Iterator, Sequence, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

Raw = Union[bytes, dict]
NAMESPACE = "issue_platform"  # of every Beam metric of the job


class Lines(list):
    """Raw payloads read together (consecutive records of one file): one element for many, so the
    runner's per-element cost is paid per batch of lines."""


class InputError(Exception):
    """An input that is missing or cannot be read completely; the message is one line naming it."""


def input_files(patterns: Sequence[str], option: str = "--input ") -> list[str]:
    """The files the paths or globs name, in order; `InputError` if one names nothing or a directory."""
    files = []
    for pattern in patterns:
        if "://" not in pattern and os.path.isdir(pattern):
            raise InputError(f"{option}{pattern}: is a directory; name its files, e.g. '{pattern.rstrip('/')}/*.jsonl'")
        try:
            found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        except Exception as exc:  # Beam wraps every filesystem failure in BeamIOError
            raise InputError(f"{option}{pattern}: cannot list it ({type(exc).__name__})") from exc
        if not found:
            raise InputError(f"{option}{pattern}: no such file")
        files += sorted(found)
    return files


def open_config(path: str):
    """Opens a `--config` file for binary reading through Beam's filesystems (local paths, gs://, and
    any other scheme Beam knows): the one reader of config files, for the CLI, the job and its
    refreshes alike."""
    return FileSystems.open(path, compression_type="uncompressed")


def avro_payload(record: dict):
    """An Avro record is either `{"payload": <JSON bytes/str>}` or the payload itself, where a null
    field means the field is absent (Avro's way of writing an optional field)."""
    if set(record) == {"payload"}:
        return record["payload"]
    return {k: v for k, v in record.items() if v is not None}


def read_file(path: str, on_blank: Callable[[], None] = lambda: None) -> Iterator[Raw]:
    """Every record of one file (`on_blank` is called for each blank JSON line); `InputError` if the
    file cannot be read to its end."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            if path.endswith(".avro"):
                import fastavro

                yield from (avro_payload(r) for r in fastavro.reader(handle))
                return
            stream = gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle
            for line in stream:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line
                else:
                    on_blank()
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    except Exception as exc:  # fastavro and filesystems raise many kinds; all mean "cannot read it"
        what = "Avro file" if path.endswith(".avro") else "file"
        raise InputError(f"{path}: unreadable {what} ({type(exc).__name__}: {str(exc)[:120]})") from None


def numbered_records(path: str) -> Iterator[tuple[int, Raw]]:
    """`read_file` with each record's number in its file: the line (blank lines counted, so it is the
    line an editor shows) or the Avro record, for messages that point a user at a record."""
    number = 0

    def blank():
        nonlocal number
        number += 1

    for raw in read_file(path, blank):
        number += 1
        yield number, raw


class Progress:
    """Records handled so far in this process (read by a scan, or taken in by the job), reported on
    stderr every few seconds when enabled: a slow run must not look hung. Process-wide: every
    reader in the process adds to one count."""

    count, started, _last = 0, time.monotonic(), 0.0
    INTERVAL = 2.0

    @classmethod
    def start(cls) -> None:
        cls.count, cls.started = 0, time.monotonic()
        cls._last = cls.started

    @classmethod
    def tick(cls, enabled: bool, records: int = 1) -> None:
        before, cls.count = cls.count, cls.count + records
        if not enabled or before >> 10 == cls.count >> 10:  # the clock is read once per 1,024 records
            return
        now = time.monotonic()
        if now - cls._last >= cls.INTERVAL:
            cls._last = now
            elapsed = now - cls.started
            print(f"progress: {cls.count:,} records ({cls.count / max(elapsed, 1e-9):,.0f}/s, "
                  f"{elapsed:.0f} s)", file=sys.stderr, flush=True)


class _ReadFileFn(beam.DoFn):
    """A file's records in `Lines` of up to LINES_PER_ELEMENT (Avro records one by one)."""

    LINES_PER_ELEMENT = 1000

    def __init__(self):
        self._blank = Metrics.counter(NAMESPACE, "records.blank_lines")

    def process(self, path: str):
        if path.endswith(".avro"):
            yield from read_file(path, self._blank.inc)
            return
        lines = Lines()
        for line in read_file(path, self._blank.inc):
            lines.append(line)
            if len(lines) == self.LINES_PER_ELEMENT:
                yield lines
                lines = Lines()
        if lines:
            yield lines


class ReadPayloads(beam.PTransform):
    """Reads files (as `input_files` lists them, before the job is built) -> raw payloads (`Lines` of
    JSON Lines records, each bytes; Avro records one by one, bytes or dicts for records that are the
    payload itself)."""

    def __init__(self, files: Sequence[str]):
        super().__init__()
        if not files:
            raise ValueError("ReadPayloads needs at least one input file")
        self._files = list(files)

    def expand(self, pbegin):
        return (pbegin
                | "ListFiles" >> beam.Create(self._files)
                | "ReadFiles" >> beam.ParDo(_ReadFileFn()))
