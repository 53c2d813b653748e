"""Reading payload files: `input_files` (what the patterns name), `read_file` (one file's records; the
same code for `run`, the `--streaming` replay and `validate`) and the ReadPayloads transform.

JSON Lines (`.jsonl`, `.jsonl.gz`, any other extension) is read as bytes, so invalid UTF-8 reaches the
dead-letter output instead of failing the read; blank lines separate nothing and are counted, not
processed. Every Avro record is a record, even an empty one. A file that cannot be read to its end
(a truncated or corrupt gzip stream or Avro file) raises `InputError`: the run fails rather than
report a partial result as a success.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import threading
from array import array
import sys
import time
import zlib
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

Raw = Union[bytes, dict]
NAMESPACE = "issue_platform"  # of every Beam metric of the job


class SourcedPayload(NamedTuple):
    """A raw payload and where it came from (`FILE:RECORD` of an Avro file, `kafka:TOPIC:PARTITION:OFFSET`,
    `pubsub:SUBSCRIPTION:MESSAGE_ID`), so that its dead-letter row can name it. `problem`: what the
    source found wrong with the message around the payload (reason, field, message; e.g. a bad
    event-time attribute): the payload is then dead-lettered without being parsed."""
    payload: Raw
    source: str
    problem: Optional[Tuple[str, str, str]] = None


class Lines(list):
    """Raw payloads read together (consecutive records of one file): one element for many, so the
    runner's per-element cost is paid per batch of lines. `source(i)` is where record i is in its
    file (`FILE:LINE`), for its dead-letter row."""

    def __init__(self, path: str = ""):
        super().__init__()
        self.path, self.numbers = path, array("q")

    def add(self, number: int, line: bytes) -> None:
        self.append(line)
        self.numbers.append(number)

    def source(self, i: int) -> str:
        return f"{self.path}:{self.numbers[i]}"


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
            wildcard = any(c in pattern for c in "*?[")
            raise InputError(f"{option}{pattern}: {'no file matches' if wildcard else 'no such file'}")
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

                read = 0
                for number, record in enumerate(fastavro.reader(handle)):
                    if not number & 1023:
                        read = _bytes_read(handle, read)
                    yield avro_payload(record)
                _bytes_read(handle, read)
                return
            stream = gzip.GzipFile(fileobj=handle) if path.endswith(".gz") else handle
            read = 0  # bytes of the file (compressed, if it is) counted in Progress so far
            for number, line in enumerate(stream):
                if not number & 1023:
                    read = _bytes_read(handle, read)
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield line
                else:
                    on_blank()
            _bytes_read(handle, read)
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip file ({exc})") from None
    except Exception as exc:  # fastavro and filesystems raise many kinds; all mean "cannot read it"
        what = "Avro file" if path.endswith(".avro") else "file"
        raise InputError(f"{path}: unreadable {what} ({type(exc).__name__}: {str(exc)[:120]})") from None


def _bytes_read(handle, counted: int) -> int:
    """Adds what `handle` read since `counted` to `Progress.bytes_read`; returns its position."""
    try:
        position = handle.tell()
    except (OSError, AttributeError):  # a stream that cannot tell: no percentage
        return counted
    Progress.bytes_read += position - counted
    return position


def numbered_records(path: str, on_blank: Callable[[], None] = lambda: None) -> Iterator[tuple[int, Raw]]:
    """`read_file` with each record's number in its file: the line (blank lines counted, so it is the
    line an editor shows) or the Avro record, for messages that point a user at a record."""
    number = 0

    def blank():
        nonlocal number
        number += 1
        on_blank()

    for raw in read_file(path, blank):
        number += 1
        yield number, raw


class Progress:
    """What a local run has done so far, for the report `reporting` prints on stderr every few
    seconds: the records read (and the bytes of the input files' total, when the files are known),
    the group keys applied, the rows written. Process-wide counters: the local runners run every step
    in this process (elsewhere nothing reads them). Rates count from the first record read, not
    from start-up."""

    INTERVAL = 2.0
    phase, total_bytes, writing = "reading", 0, False
    count = bytes_read = keys = rows = 0
    began = started = None  # when the pass began; when its first record was read
    _seen = (0, 0, 0)  # (count, keys, rows) at the last report

    @classmethod
    def start(cls, phase: str = "reading", paths: Sequence[str] = ()) -> None:
        """A new pass over the input (`paths`: its files, when known, for the percentage)."""
        cls.phase, cls.began, cls.started, cls._seen = phase, time.monotonic(), None, (0, 0, 0)
        cls.writing = False
        cls.count = cls.bytes_read = cls.keys = cls.rows = 0
        cls.expect(paths)

    @classmethod
    def expect(cls, paths: Sequence[str]) -> None:
        """The input's total size, from local files (listed once already: no second listing); 0, no
        percentage, for remote ones."""
        try:
            cls.total_bytes = sum(os.path.getsize(p) for p in paths) if "://" not in "".join(paths) else 0
        except OSError:
            cls.total_bytes = 0

    @classmethod
    def tick(cls, enabled: bool, records: int = 1) -> None:
        """`records` read (counted when `enabled`: a run with the report on)."""
        if enabled:
            if cls.started is None:
                cls.started = time.monotonic()
            cls.count += records

    @classmethod
    def applied(cls, keys: int = 1) -> None:
        cls.keys += keys

    @classmethod
    def wrote(cls, rows: int) -> None:
        cls.rows += rows

    @classmethod
    def line(cls) -> str:
        """The report: starting until the first record is read, reading while records still arrive
        (until the files' bytes are all read), then grouping while keys are applied, then writing."""
        now = time.monotonic()
        if cls.started is None:
            return f"starting: no record read yet ({now - (cls.began or now):.0f} s)"
        elapsed = now - cls.started
        (count, keys, _), cls._seen = cls._seen, (cls.count, cls.keys, cls.rows)
        if cls.total_bytes and cls.bytes_read < cls.total_bytes or not cls.total_bytes and cls.count > count:
            share = (f", {min(cls.bytes_read / cls.total_bytes, 1):.0%} of {cls.total_bytes / 1e6:,.1f} MB"
                     if cls.total_bytes else "")
            return (f"{cls.phase}: {cls.count:,} records{share} ({cls.count / max(elapsed, 1e-9):,.0f}/s, "
                    f"{elapsed:.0f} s)")
        if not cls.writing and (cls.keys > keys or not cls.keys):  # keys wait for the watermark: grouping
            return f"grouping: {cls.keys:,} keys applied, {cls.count:,} records read ({elapsed:.0f} s)"
        cls.writing = True  # phases only move forward: a late key applied while writing is not a new phase
        return f"writing: {cls.rows:,} rows written, {cls.keys:,} keys applied ({elapsed:.0f} s)"


@contextlib.contextmanager
def reporting(enabled: bool) -> Iterator[None]:
    """Prints `Progress.line()` on stderr every `Progress.INTERVAL` seconds while the block runs."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def report():
        while not stop.wait(Progress.INTERVAL):
            print(f"progress: {Progress.line()}", file=sys.stderr, flush=True)

    reporter = threading.Thread(target=report, name="progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


class _ReadFileFn(beam.DoFn):
    """A file's records in `Lines` of up to LINES_PER_ELEMENT (Avro records one by one).

    100 lines: the runner's cost per element is paid per 100 records, and a batch stays in the CPU's
    cache while the fused steps after it work on it: its ~110 KB of lines and the rows made from them
    (evidence, dead letters), which wait in lists until the element's sink step serialises them.
    With 1,000 they did not (200k payloads: ~1 s of CPU more, docs/performance.md)."""

    LINES_PER_ELEMENT = 100

    def __init__(self):
        self._blank = Metrics.counter(NAMESPACE, "records.blank_lines")

    def process(self, path: str):
        if path.endswith(".avro"):
            for number, record in numbered_records(path):
                yield SourcedPayload(record, f"{path}:{number}")
            return
        lines = Lines(path)
        for number, line in numbered_records(path, self._blank.inc):
            lines.add(number, line)
            if len(lines) == self.LINES_PER_ELEMENT:
                yield lines
                lines = Lines(path)
        if lines:
            yield lines


class ReadPayloads(beam.PTransform):
    """Reads files (as `input_files` lists them, before the job is built) -> raw payloads (`Lines` of
    JSON Lines records, each bytes; Avro records one by one as `SourcedPayload`s of bytes, or of dicts
    for records that are the payload itself)."""

    def __init__(self, files: Sequence[str]):
        super().__init__()
        if not files:
            raise ValueError("ReadPayloads needs at least one input file")
        self._files = list(files)

    def expand(self, pbegin):
        Progress.expect(self._files)  # for the share read, if this run reports progress
        return (pbegin
                | "ListFiles" >> beam.Create(self._files)
                | "ReadFiles" >> beam.ParDo(_ReadFileFn()))
