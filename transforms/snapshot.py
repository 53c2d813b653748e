"""ReadSnapshot: a previous run's `state` table -> one seed record per key for ProcessGroups."""
from __future__ import annotations

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import TimestampedValue

from issue_platform.snapshot import seed_from_row, snapshot_time
from issue_platform.tables import STATE, jsonl_glob


def _match(pattern: str):
    return [metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list]


def _rows(path: str):
    with FileSystems.open(path) as handle:
        yield from (orjson.loads(line) for line in handle if line.strip())


def _seed(row: dict):
    key, seed = seed_from_row(row)
    return TimestampedValue((key, (seed, b"")), snapshot_time(row))


class ReadSnapshot(beam.PTransform):
    """Reads the `state` rows under `directory` (a previous run's --output) and emits each as
    `(key, (seed record, b""))` timestamped at the snapshot's clock, to be flattened with the keyed
    events ahead of the stateful step, which adopts a key's newest seed (a stream writes several
    snapshots of a key). A row this release cannot read fails the run
    (issue_platform.snapshot.SnapshotError): a snapshot is never misread or skipped. The files are read
    by plain DoFns: the local streaming runner can run neither a splittable DoFn (ReadFromText) nor a
    GroupByKey next to a TestStream."""

    def __init__(self, directory: str):
        super().__init__()
        self._pattern = jsonl_glob(directory, STATE)

    def expand(self, pbegin):
        return (pbegin
                | "Pattern" >> beam.Create([self._pattern])
                | "MatchStateFiles" >> beam.FlatMap(_match)
                | "ReadStateRows" >> beam.FlatMap(_rows)
                | "ToSeedRecords" >> beam.Map(_seed))
