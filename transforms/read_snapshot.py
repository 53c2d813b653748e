"""ReadSnapshot: a previous run's `state` table (JSON Lines files or BigQuery) -> one seed record per
key for ApplyRules; `locate` and `check` resolve and pre-flight `--resume_from`."""
from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import TimestampedValue

from issue_platform.config import ConfigError
from issue_platform.snapshot_codec import SnapshotError, seed_from_row, snapshot_time
from issue_platform.tables import CURRENT_STATE_SQL, STATE, iso, jsonl_glob

BIGQUERY = "bigquery:"


class Snapshot(NamedTuple):
    """Where `--resume_from` points: a run's output directory (its `state` files), or a BigQuery
    `state` table (`bigquery:PROJECT:DATASET.TABLE`, read through `endpoint` when given)."""

    value: str  # as given
    directory: Optional[str] = None
    project: Optional[str] = None
    table: Optional[str] = None  # PROJECT.DATASET.TABLE
    endpoint: Optional[str] = None


def locate(value: str, endpoint: Optional[str] = None) -> Snapshot:
    if not value.startswith(BIGQUERY):
        return Snapshot(value, directory=value)
    project, _, table = value[len(BIGQUERY):].partition(":")
    if not project or table.count(".") != 1 or not all(table.split(".")):
        raise ConfigError(f"--resume_from {value}: expected bigquery:PROJECT:DATASET.TABLE (the state table)")
    return Snapshot(value, project=project, table=f"{project}.{table}", endpoint=endpoint)


def _match(pattern: str):
    return [metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list]


def _file_rows(path: str):
    with FileSystems.open(path) as handle:
        yield from (orjson.loads(line) for line in handle if line.strip())


def _table_rows(snapshot: Snapshot, limit: Optional[int] = None):
    """Each key's current row of a BigQuery state table, shaped as the JSON Lines rows are."""
    from transforms.sinks import bigquery_client

    sql = CURRENT_STATE_SQL.format(state=snapshot.table) + (f" LIMIT {limit}" if limit else "")
    for row in bigquery_client(snapshot.project, snapshot.endpoint).query(sql).result():
        row = dict(row)
        row["snapshot_at"] = iso(row["snapshot_at"].timestamp())
        yield row


def _seed(row: dict):
    key, seed = seed_from_row(row)
    return TimestampedValue((key, (seed, b"")), snapshot_time(row))


def check(snapshot: Snapshot) -> None:
    """Before the job starts: the snapshot exists and its first rows are readable by this release."""
    where = snapshot.value
    try:
        if snapshot.table:
            rows = list(_table_rows(snapshot, limit=1))
        else:
            paths = sorted(_match(jsonl_glob(snapshot.directory, STATE)))
            if not paths:
                raise ConfigError(f"--resume_from {where}: no {STATE} table files (the output directory of a "
                                  "previous run holds them)")
            rows = [row for path in paths for row in itertools.islice(_file_rows(path), 1)]
        for row in rows:
            seed_from_row(row)
    except (SnapshotError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"--resume_from {where}: {exc}") from exc
    except ConfigError:
        raise
    except Exception as exc:  # the table is missing, or the service refused: one line, not a traceback
        raise ConfigError(f"--resume_from {where}: cannot read it ({type(exc).__name__})") from exc


class ReadSnapshot(beam.PTransform):
    """Reads the `state` rows of a `Snapshot` and emits each as `(key, (seed record, b""))`
    timestamped at the snapshot's clock, to be flattened with the keyed events ahead of the stateful
    step, which adopts a key's newest seed (a stream writes several snapshots of a key; from BigQuery
    only each key's current row is read). A row this release cannot read fails the run
    (issue_platform.snapshot_codec.SnapshotError): a snapshot is never misread or skipped. Plain DoFns do the
    reading: the local streaming runner can run neither a splittable DoFn (ReadFromText) nor a
    GroupByKey next to a TestStream."""

    def __init__(self, snapshot: Snapshot):
        super().__init__()
        self._snapshot = snapshot

    def expand(self, pbegin):
        snapshot = self._snapshot
        if snapshot.table:
            rows = (pbegin | "Table" >> beam.Create([snapshot])
                    | "QueryCurrentStateRows" >> beam.FlatMap(_table_rows))
        else:
            rows = (pbegin | "Pattern" >> beam.Create([jsonl_glob(snapshot.directory, STATE)])
                    | "MatchStateFiles" >> beam.FlatMap(_match)
                    | "ReadStateRows" >> beam.FlatMap(_file_rows))
        return rows | "ToSeedRecords" >> beam.Map(_seed)
