"""Sinks: where the tables and the post-process messages go (chosen from the options by
`pipelines.sources_and_sinks`; these composites take plain values).

The graph (`pipelines.issue_pipeline.build_graph`) makes every table as its parts, `{table: {part: PCollection of row batches}}` (one
part per step that produces rows of that table; each element a list of rows, one per step invocation,
so that a sink pays the runner's per-element cost per batch); each sink decides how to combine them.
None flattens them: the FnApiRunner holds a Flatten of inputs from different stages entirely in memory.

- `WriteJsonLines`: `<table>.<part>-*.jsonl` files under a directory (the local default).
- `WriteBigQuery`: the BigQuery tables of `issue_platform.tables` (FILE_LOADS in batch,
  STREAMING_INSERTS with insert ids derived from each row when streaming).
- `WritePostProcessTopic`: one message per `post_process` row to Pub/Sub or Kafka (transforms.delivery:
  bounded retries, then the message is kept in the `undelivered` table).
- `WriteOutputs`: the composite the graph applies: one tables sink, plus the topics.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import logging
import threading
import uuid
from typing import Optional, Sequence

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.window import GlobalWindows

from issue_platform import outcomes
from issue_platform.config import ConfigError
from issue_platform.dead_letters import sink_rejected_row
from issue_platform.tables import (DEAD_LETTER, GROUPS, GROUPS_CURRENT, GROUPS_CURRENT_SQL, JSONL_SUFFIX, PART_SINK,
                                   POST_PROCESS, TABLES, UNDELIVERED, jsonl_prefix, schema_problem)
from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES
from apache_beam.io.gcp.bigquery import BigQueryWriteFn

from transforms import outages
from transforms.delivery import KafkaDeliverFn, PubSubDeliverFn
from transforms.read import NAMESPACE, Progress

_LOGGER = logging.getLogger(__name__)


class SinkError(ConfigError):
    """A sink that cannot be used as configured (one line and exit 2, before the job starts)."""


def _label(*names: str) -> str:
    return "".join(n.title().replace("_", "") for n in names)


def to_json_line(row: dict) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)


# --- JSON Lines -----------------------------------------------------------------------------------

class _AppendJsonLinesFn(beam.DoFn):
    """Streaming: each bundle's rows go to a new `<table>.<part>-<uuid>.jsonl` (local replays and
    tests; a production stream writes to BigQuery and the post-process topic instead)."""

    def __init__(self, prefix: str):
        self._prefix = prefix

    def start_bundle(self):
        self._lines = []

    def process(self, rows):
        Progress.wrote(len(rows))
        self._lines.extend(map(to_json_line, rows))
        return ()  # written in finish_bundle (an explicit empty result: Beam warns about a process without one)

    def finish_bundle(self):
        if self._lines:
            with FileSystems.create(f"{self._prefix}-{uuid.uuid4().hex}{JSONL_SUFFIX}") as handle:
                handle.write(b"\n".join(self._lines) + b"\n")
        self._lines = []


class _WriteBundleFn(beam.DoFn):
    """Batch: each bundle's rows of one table part go to one temporary file under `temp_dir`, written as
    they arrive; the bundle then yields `(name, path)` for `_finalise` to rename. A bundle the runner
    retries writes a new file, and only the paths of committed bundles reach `_finalise`."""

    def __init__(self, temp_dir: str, name: str):
        self._temp_dir, self._name = temp_dir, name

    def start_bundle(self):
        self._handle = self._path = None

    def process(self, rows):
        if not rows:
            return
        if self._handle is None:
            self._path = FileSystems.join(self._temp_dir, f"{self._name}-{uuid.uuid4().hex}{JSONL_SUFFIX}")
            self._handle = FileSystems.create(self._path)
        Progress.wrote(len(rows))
        self._handle.write(b"\n".join(map(to_json_line, rows)) + b"\n")

    def finish_bundle(self):
        if self._handle is not None:
            self._handle.close()
            yield GlobalWindows.windowed_value((self._name, self._path))
        self._handle = self._path = None


def _finalise(_, written: list, names: Sequence[str], output_dir: str, temp_dir: str) -> None:
    """Gives each part's files their final names, `<table>.<part>-SSSSS-of-NNNNN.jsonl` (an empty
    `-00000-of-00001` file for a part without rows), and removes the temporary directory."""
    by_name = collections.defaultdict(list)
    for name, path in written:
        by_name[name].append(path)
    for name in names:
        paths = sorted(by_name[name])
        final = [FileSystems.join(output_dir, f"{name}-{i:05d}-of-{max(len(paths), 1):05d}{JSONL_SUFFIX}")
                 for i in range(max(len(paths), 1))]
        if paths:
            FileSystems.rename(paths, final)
        else:
            FileSystems.create(final[0]).close()
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])


class WriteJsonLines(beam.PTransform):
    """Writes each part of each table to `<output_dir>/<table>.<part>-SSSSS-of-NNNNN.jsonl` (batch), or
    `<table>.<part>-<uuid>.jsonl` per bundle (streaming). Read a table as `<table>.*.jsonl`
    (`issue_platform.tables.read_jsonl`): no table's or part's files match another's.

    In batch, each part is written inside the step that produces it (a file per bundle, under a
    temporary directory) and one final step renames the committed files: the same bytes as Beam's
    transactional `WriteToText`, whose initialise, write, pre-finalise and finalise stages per part
    cost the FnApiRunner ~0.1 s each of 12 parts (docs/performance.md)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, tables: dict):
        pipeline = _pipeline_of(tables)
        streaming = pipeline.options.view_as(StandardOptions).streaming
        temp_dir = FileSystems.join(self._output_dir, f".temp-{uuid.uuid4().hex}")
        written, names = [], []
        for table, parts in sorted(tables.items()):
            for part, rows in sorted(parts.items()):
                label, prefix = _label(table, part), jsonl_prefix(self._output_dir, table, part)
                if streaming:
                    rows | f"Append{label}" >> beam.ParDo(_AppendJsonLinesFn(prefix))
                else:
                    names.append(f"{table}.{part}")
                    written.append(rows | f"Write{label}" >> beam.ParDo(_WriteBundleFn(temp_dir, names[-1])))
        if written:
            files = written | "WrittenFiles" >> beam.Flatten()
            (pipeline | "AfterWrites" >> beam.Create([None])
             | "NameFiles" >> beam.Map(_finalise, beam.pvalue.AsList(files), names, self._output_dir, temp_dir))
        return pvalue.PDone(pipeline)


def _pipeline_of(tables: dict) -> beam.Pipeline:
    return next(iter(next(iter(tables.values())).values())).pipeline


# --- BigQuery -------------------------------------------------------------------------------------

def parse_dataset(value: str) -> tuple[str, str]:
    project, sep, dataset = (value or "").partition(":")
    if not sep or not project or not dataset or "." in dataset:
        raise SinkError(f"--bigquery_dataset {value!r}: expected PROJECT:DATASET")
    return project, dataset


def bigquery_client(project: str, endpoint: Optional[str]):
    """google-cloud-bigquery's client; with `endpoint` (an emulator), anonymous."""
    from google.cloud import bigquery

    if endpoint is None:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


class EndpointClient:
    """Beam's BigQuery client for another server (an emulator), anonymous: what `WriteToBigQuery`'s
    and `BigQueryWriteFn`'s documented `test_client` argument takes. That one object stands for both
    clients Beam uses: the apitools services (tables, jobs, ...) and google-cloud-bigquery's
    `insert_rows_json` (streaming inserts). It pickles as its two strings; the clients behind it are
    built once per process."""

    def __init__(self, project: str, endpoint: str):
        self._project, self._endpoint = project, endpoint.rstrip("/")

    def __getstate__(self):
        return {"_project": self._project, "_endpoint": self._endpoint}

    @property
    def _apitools(self):
        return _apitools_client(self._endpoint)

    @property
    def _cloud(self):
        return _cloud_client(self._project, self._endpoint)

    def insert_rows_json(self, *args, **kwargs):
        return self._cloud.insert_rows_json(*args, **kwargs)

    def __getattr__(self, name):  # datasets, tables, jobs, tabledata: apitools
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._apitools, name)


@functools.lru_cache(maxsize=None)
def _apitools_client(endpoint: str):
    """One per process: the local runner unpickles a fresh copy of every DoFn (and its client) per bundle."""
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

    return bigquery_v2_client.BigqueryV2(url=f"{endpoint}/bigquery/v2/", get_credentials=False)


@functools.lru_cache(maxsize=None)
def _cloud_client(project: str, endpoint: str):
    return bigquery_client(project, endpoint)


def _table_definition(bigquery, ref: str, table: str):
    spec = TABLES[table]
    definition = bigquery.Table(ref, schema=[
        bigquery.SchemaField(f["name"], f["type"], f["mode"], description=f["description"]) for f in spec.schema()])
    definition.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY,
                                                             field=spec.partition_field)
    definition.clustering_fields = list(spec.clustering)
    return definition


def _shape(table) -> tuple:
    partitioning = table.time_partitioning
    return ([(f.name, f.field_type, f.mode) for f in table.schema],
            partitioning and (partitioning.type_, partitioning.field), list(table.clustering_fields or []))


def ensure_tables(client, project: str, dataset: str, prefix: str = "") -> None:
    """Creates the dataset, every table and the `groups_current` view where absent (through the tables
    API: schema with descriptions, day partitioning, clustering). An existing table or view that
    differs is never altered: that is an error naming it."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    client.create_dataset(f"{project}.{dataset}", exists_ok=True)
    for table in TABLES:
        ref = f"{project}.{dataset}.{prefix}{table}"
        wanted = _table_definition(bigquery, ref, table)
        try:
            existing = client.get_table(ref)
        except NotFound:
            client.create_table(wanted)
            continue
        if _shape(existing) != _shape(wanted):
            raise SinkError(f"BigQuery table {ref} exists with another schema, partitioning or clustering "
                            f"than schemas/bigquery/{table}.json; it is not altered: migrate or drop it")
    view_ref = f"{project}.{dataset}.{prefix}{GROUPS_CURRENT}"
    query = GROUPS_CURRENT_SQL.format(groups=f"{project}.{dataset}.{prefix}{GROUPS}")
    try:
        existing = client.get_table(view_ref)
    except NotFound:
        view = bigquery.Table(view_ref)
        view.view_query = query
        client.create_table(view)
        return
    if existing.view_query not in (query, None):  # None: bqemulator does not report a view's query
        raise SinkError(f"BigQuery view {view_ref} exists with another query; it is not altered")


def bigquery_row(row: dict, table: str, streaming: bool) -> dict:
    """A row as BigQuery takes it: JSON columns as text for streaming inserts (load jobs take the
    value itself)."""
    if not streaming:
        return row
    json_fields = _json_fields(table)
    return {k: orjson.dumps(v).decode() if k in json_fields and v is not None else v for k, v in row.items()}


@functools.lru_cache(maxsize=None)
def _json_fields(table: str) -> frozenset:
    return frozenset(f["name"] for f in TABLES[table].schema() if f["type"] == "JSON")


class _CheckRowsFn(beam.DoFn):
    """Batches of rows -> rows: those that break their table's schema (BigQuery would reject them: in
    a load job, the whole job) become dead-letter rows; the rest go on, encoded for BigQuery."""

    REJECTED = "rejected"

    def __init__(self, table: str, streaming: bool, max_bytes: int):
        self._table, self._streaming, self._max_bytes = table, streaming, max_bytes

    def process(self, rows):
        Progress.wrote(len(rows))
        for row in rows:
            problem = schema_problem(self._table, row)
            if problem is None:
                yield bigquery_row(row, self._table, self._streaming)
            else:
                yield pvalue.TaggedOutput(self.REJECTED, _rejected_row(self._table, problem[0], problem[1], row,
                                                                       self._max_bytes))


def _rejected_row(table: str, field: str, message: str, row: dict, max_bytes: int) -> dict:
    Metrics.counter(NAMESPACE, f"dead_letter.{outcomes.BIGQUERY_REJECTED}").inc()
    return sink_rejected_row(table, field, message, row, max_bytes)


class _InsertIdFn(beam.DoFn):
    """(table ref, (row, insert id)) with the id derived from the row itself: a retried bundle sends
    the same ids, so BigQuery's best-effort de-duplication drops the repeat. Identical rows within a
    bundle are told apart by their ordinal; identical rows in different bundles share an id (see the
    README)."""

    def __init__(self, ref: str, table: str):
        self._ref, self._table = ref, table

    def start_bundle(self):
        self._seen = collections.Counter()

    def process(self, row):
        digest = hashlib.sha256(self._table.encode() + orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
        ordinal = self._seen[digest]
        self._seen[digest] += 1
        yield self._ref, (row, f"{digest[:40]}-{ordinal}")


def _failed_insert(table: str, max_bytes: int):
    def to_dead_letter(failed):
        _, row, errors = failed
        first = (errors or [{}])[0]
        where = first.get("location") or ""
        message = f"BigQuery rejected the row ({first.get('reason', 'unknown')}{' at ' + where if where else ''})"
        return _rejected_row(table, where, message, row, max_bytes)
    return to_dead_letter


class WriteBigQuery(beam.PTransform):
    """Writes every part of every table to `PROJECT:DATASET.<prefix><table>`, which must exist:
    `ensure_tables` creates them and the `groups_current` view where absent, before the job is built
    (the run plan's pre-flight; like Beam's CREATE_IF_NEEDED, but with the partitioning and clustering
    of `issue_platform.tables`); writes use CREATE_NEVER.

    Batch: FILE_LOADS. Streaming: STREAMING_INSERTS with insert ids from each row's content. Rows
    BigQuery rejects (a schema check before the write, and the per-row errors of streaming inserts)
    become `dead_letter` rows (stage `sink`, reason `bigquery_rejected`, the row as payload),
    written as its part `sink`; they never stall the job. `endpoint` points at another server (an
    emulator); nothing else changes. On Dataflow, STORAGE_WRITE_API is the better streaming method
    (exactly-once, cheaper); it is cross-language and cannot run locally (see the README)."""

    def __init__(self, dataset: str, prefix: str = "", endpoint: Optional[str] = None,
                 max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        super().__init__()
        self._project, self._dataset = parse_dataset(dataset)
        self._prefix, self._endpoint, self._max_bytes = prefix, endpoint, max_bytes

    def _ref(self, table: str) -> str:
        return f"{self._project}:{self._dataset}.{self._prefix}{table}"

    def expand(self, tables: dict):
        pipeline = _pipeline_of(tables)
        streaming = bool(pipeline.options.view_as(StandardOptions).streaming)
        test_client = EndpointClient(self._project, self._endpoint) if self._endpoint else None
        rejected = []
        for table, parts in sorted(tables.items()):
            for part, rows in sorted(parts.items()):
                label = _label(table, part)
                checked = rows | f"Check{label}" >> beam.ParDo(
                    _CheckRowsFn(table, streaming, self._max_bytes)).with_outputs(_CheckRowsFn.REJECTED, main="rows")
                rejected.append(checked[_CheckRowsFn.REJECTED])
                failed = self._write(checked.rows, table, label, streaming, test_client)
                if failed is not None:
                    rejected.append(failed | f"Rejected{label}" >> beam.Map(_failed_insert(table, self._max_bytes)))
        sink_dead_letters = (rejected | "SinkDeadLetters" >> beam.Flatten()
                             | "EncodeSinkDeadLetters" >> beam.Map(bigquery_row, DEAD_LETTER, streaming))
        failed = self._write(sink_dead_letters, DEAD_LETTER, _label(DEAD_LETTER, PART_SINK), streaming, test_client)
        if failed is not None:  # a dead-letter row rejected in turn: logged and counted, not looped
            failed | "LostSinkDeadLetters" >> beam.Map(_lost)
        return pvalue.PDone(pipeline)

    def _write(self, rows, table: str, label: str, streaming: bool, test_client):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, BigQueryWriteFn, RetryStrategy, WriteToBigQuery

        schema = {"fields": TABLES[table].schema()}
        if not streaming:
            rows | f"Load{label}" >> WriteToBigQuery(
                self._ref(table), schema=schema, method=WriteToBigQuery.Method.FILE_LOADS,
                create_disposition=BigQueryDisposition.CREATE_NEVER,
                write_disposition=BigQueryDisposition.WRITE_APPEND, test_client=test_client,
                validate=test_client is None)
            return None
        written = (rows
                   | f"InsertIds{label}" >> beam.ParDo(_InsertIdFn(self._ref(table), table))
                   | f"Insert{label}" >> beam.ParDo(WatchedBigQueryWriteFn(
                       batch_size=None, schema=schema, create_disposition=BigQueryDisposition.CREATE_NEVER,
                       write_disposition=BigQueryDisposition.WRITE_APPEND, test_client=test_client,
                       retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR)).with_outputs(
                       BigQueryWriteFn.FAILED_ROWS_WITH_ERRORS, BigQueryWriteFn.FAILED_ROWS, main="written"))
        return written[BigQueryWriteFn.FAILED_ROWS_WITH_ERRORS]


class WatchedBigQueryWriteFn(BigQueryWriteFn):
    """Beam's streaming-insert step, its outages logged once at start and end (transforms.outages):
    an insert that gets no answer within STALL_SECONDS (the client retries a refused connection
    quietly for minutes) or returns errors Beam retries starts one; the next success ends it.

    A row's size is its JSON's length: Beam measures it with objsize, which walks every loaded
    module per row (16 % of a local stream's time, measured with py-spy; docs/live-path.md)."""

    def _check_row_size(self, row_and_insert_id):
        row, insert_id = row_and_insert_id
        size = len(orjson.dumps(row, default=str)) + len(insert_id or "")
        if size < self._max_insert_payload_size:
            return size, None
        return size, (f"Received row with size {size / 1e6}MB that exceeds the maximum insert payload size "
                      f"set ({self._max_insert_payload_size / 1e6}MB).")

    def start_bundle(self):
        super().start_bundle()
        wrapper = self.bigquery_wrapper
        if not getattr(wrapper, "_watched", False):
            wrapper.insert_rows, wrapper._watched = _watched_insert(wrapper.insert_rows), True



STALL_SECONDS = 5.0


def _watched_insert(insert_rows):
    def watched(*args, **kwargs):
        name = f"BigQuery dataset {kwargs.get('project_id')}:{kwargs.get('dataset_id')}"
        stalled = threading.Timer(STALL_SECONDS, outages.failing, (name, f"no answer within {STALL_SECONDS:.0f} s"))
        stalled.daemon = True
        stalled.start()
        try:
            passed, errors = insert_rows(*args, **kwargs)
        except Exception as exc:
            outages.failing(name, type(exc).__name__, retries=1)
            raise
        finally:
            stalled.cancel()
        if passed or not errors:
            outages.recovered(name)
        elif any(e["errors"][0].get("reason") not in _ROW_ERRORS for e in errors):
            outages.failing(name, str(errors[0]["errors"][0].get("reason")), retries=1)
        return passed, errors
    return watched


_ROW_ERRORS = {"invalid", "invalidQuery", "stopped"}  # a row's own fault (a dead letter), not an outage


def _lost(failed) -> None:
    Metrics.counter(NAMESPACE, "sink.dead_letter_rejected").inc()
    _LOGGER.error("BigQuery rejected a sink dead-letter row of %s", failed[0])  # never the payload


# --- The post-process topic -----------------------------------------------------------------------

def check_pubsub_path(path: str, flag: str) -> None:
    """A Pub/Sub topic or subscription path Beam's Pub/Sub transforms accept (their own check), else
    a `ConfigError` before the job starts instead of a failure inside it."""
    from apache_beam.io.gcp.pubsub import parse_subscription, parse_topic

    try:
        (parse_topic if "/topics/" in path else parse_subscription)(path)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {str(exc).rstrip('.')} (a project id is 6 to 63 lowercase letters, digits "
                          "or dashes, starting with a letter)") from None


def parse_topic(value: str) -> tuple[str, str, Optional[str]]:
    """`pubsub:projects/P/topics/T` -> ("pubsub", "projects/P/topics/T", None);
    `kafka:HOST:PORT/TOPIC` -> ("kafka", "TOPIC", "HOST:PORT")."""
    kind, _, rest = (value or "").partition(":")
    if kind == "pubsub":
        parts = rest.split("/")
        if len(parts) == 4 and parts[0] == "projects" and parts[2] == "topics" and parts[1] and parts[3]:
            check_pubsub_path(rest, f"--post_process_topic {value}")
            return kind, rest, None
    elif kind == "kafka":
        servers, _, topic = rest.partition("/")
        if servers and topic and "/" not in topic:
            return kind, topic, servers
    raise SinkError(f"--post_process_topic {value!r}: expected pubsub:projects/P/topics/T or kafka:HOST:PORT/TOPIC")


class WritePostProcessTopic(beam.PTransform):
    """`post_process` rows -> one message each on the topic: the row as a JSON body; attributes
    (Pub/Sub) or headers (Kafka) `group_id`, `project_id`, `group_type`, `is_new`, `is_regression`;
    ordering key (Pub/Sub) or message key (Kafka, hence the partition) = the group id, so one
    group's messages stay in order (the run plan checks the topic first: `check_topic`). Returns the
    `undelivered` rows (transforms.delivery), a part per part of the input."""

    def __init__(self, topic: str):
        super().__init__()
        self._flag = topic
        self._kind, self._topic, self._servers = parse_topic(topic)

    def expand(self, parts: dict):
        fn = (KafkaDeliverFn(self._flag, self._servers, self._topic) if self._kind == "kafka"
              else PubSubDeliverFn(self._flag, self._topic))
        return {part: rows | f"Deliver{_label(part)}" >> beam.ParDo(fn) for part, rows in sorted(parts.items())}


class WriteOutputs(beam.PTransform):
    """The tables to one tables sink (`WriteJsonLines` or `WriteBigQuery`), and the post-process rows
    to each topic (`parse_topic`'s forms)."""

    def __init__(self, tables_sink: beam.PTransform, post_process_topics: Sequence[str] = ()):
        super().__init__()
        self._tables = tables_sink
        self._topics = [WritePostProcessTopic(topic) for topic in post_process_topics]

    def expand(self, tables: dict):
        for i, topic in enumerate(self._topics):
            undelivered = tables[POST_PROCESS] | f"PostProcessTopic{i}" >> topic
            tables.setdefault(UNDELIVERED, {}).update({f"topic{i}{part}": rows for part, rows in undelivered.items()})
        label = "WriteBigQuery" if isinstance(self._tables, WriteBigQuery) else "WriteTables"  # stable labels
        return tables | label >> self._tables


__all__ = ["WriteOutputs", "WriteJsonLines", "WriteBigQuery", "WritePostProcessTopic",
           "SinkError", "ensure_tables", "parse_topic"]
