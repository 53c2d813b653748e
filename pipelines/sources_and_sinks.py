"""Source and sink selection by option: `--source` and its options -> the read transform,
`--sink` and its options -> a `SinkPlan`. Every option error is a `ConfigError` (one line), raised
while the run is planned, before any data is read or any job is built."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import apache_beam as beam

from issue_platform.config import ConfigError
from issue_platform.validation import Rejected, parse_time
from pipelines.options import SinkOptions, SourceOptions
from transforms.delivery import check_topic
from pipelines.runner_tuning import BATCH_RUNNER, STREAMING_RUNNER
from transforms.read import ReadPayloads
from transforms.sinks import (SinkError, WriteBigQuery, WriteJsonLines, WriteOutputs, bigquery_client,
                              check_pubsub_path, ensure_tables, parse_dataset, parse_topic)
from transforms.sources import (ReadFromKafkaTopic, ReadFromPubSubSubscription, ReadKafkaBackfill,
                               check_kafka_reachable, kafka_expansion_service)

LOCAL_RUNNERS = {BATCH_RUNNER, STREAMING_RUNNER, "DirectRunner", "SwitchingDirectRunner"}  # run on this machine


def choose_source(options: SourceOptions, bootstrap_servers: str, streaming: bool, files: Sequence[str],
                  flink: bool = False) -> beam.PTransform:
    """The read transform for `options` and its `--bootstrap_servers`; `files`: the listed inputs of
    `--source files`; `flink`: the job runs on Flink."""
    if options.source == "files":
        return ReadPayloads(files)
    if options.source == "pubsub":
        if not options.subscription or "/subscriptions/" not in options.subscription:
            raise ConfigError("--source pubsub needs --subscription projects/P/subscriptions/S")
        check_pubsub_path(options.subscription, f"--subscription {options.subscription}")
        if not streaming:
            raise ConfigError("--source pubsub is unbounded: add --streaming")
        if flink:  # Beam's Python Pub/Sub source runs on the DirectRunner and Dataflow only
            raise ConfigError("--source pubsub does not run on Flink (no Pub/Sub source for it: see README, "
                              "Running on Flink); read Kafka there, or run Pub/Sub on the default runner or Dataflow")
        return ReadFromPubSubSubscription(options.subscription, options.timestamp_attribute)
    config = _key_values(options.kafka_consumer_config, "--kafka_consumer_config")
    if streaming:
        return ReadFromKafkaTopic(bootstrap_servers, options.topic, config,
                                  kafka_expansion_service() if flink else None)
    start_time = _time(options.kafka_start_time, "--kafka_start_time")
    offsets = _start_offsets(options.kafka_start_offsets)
    if start_time is not None and offsets:
        raise ConfigError("--kafka_start_time and --kafka_start_offsets: give one of them")
    return ReadKafkaBackfill(bootstrap_servers, options.topic, config, start_time, offsets)


def check_kafka_source(options: SourceOptions, bootstrap_servers: str, streaming: bool, runner: str) -> None:
    """A Kafka backfill on a local runner reads from this machine: a broker must answer here, now."""
    if options.source == "kafka" and not streaming and runner in LOCAL_RUNNERS:
        check_kafka_reachable(bootstrap_servers, options.topic,
                              _key_values(options.kafka_consumer_config, "--kafka_consumer_config"))


@dataclass(frozen=True)
class SinkPlan:
    """Where the tables go (JSON Lines under a directory, or a BigQuery dataset) and the post-process
    topics, as plain values checked when the run is planned."""

    bigquery_dataset: Optional[str] = None  # PROJECT:DATASET; None: JSON Lines files
    bigquery_table_prefix: str = ""
    bigquery_endpoint: Optional[str] = None
    post_process_topics: tuple[str, ...] = ()

    @property
    def files(self) -> bool:
        return self.bigquery_dataset is None

    def check(self) -> None:
        """BigQuery: the dataset's tables and view exist as `issue_platform.tables` defines them (absent
        ones are created; one that differs is an error, never altered). Each post-process topic exists
        and its server answers."""
        for topic in self.post_process_topics:
            problem = check_topic(*parse_topic(topic))
            if problem:
                raise SinkError(f"--post_process_topic {topic}: {problem}")
        if not self.files:
            project, dataset = parse_dataset(self.bigquery_dataset)
            ensure_tables(bigquery_client(project, self.bigquery_endpoint), project, dataset,
                          self.bigquery_table_prefix)

    def transform(self, output_dir: str, max_bytes: int) -> WriteOutputs:
        tables = (WriteJsonLines(output_dir) if self.files else
                  WriteBigQuery(self.bigquery_dataset, self.bigquery_table_prefix, self.bigquery_endpoint, max_bytes))
        return WriteOutputs(tables, self.post_process_topics)


def choose_sinks(options: SinkOptions) -> SinkPlan:
    topics = tuple(options.post_process_topic or ())
    for topic in topics:
        parse_topic(topic)
    if options.sink != "bigquery":
        return SinkPlan(post_process_topics=topics)
    if not options.bigquery_dataset:
        raise SinkError("--sink bigquery needs --bigquery_dataset PROJECT:DATASET")
    parse_dataset(options.bigquery_dataset)
    return SinkPlan(options.bigquery_dataset, options.bigquery_table_prefix or "", options.bigquery_endpoint, topics)


def _key_values(items: Optional[Sequence[str]], flag: str) -> dict:
    pairs = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _start_offsets(value: Optional[str]) -> dict:
    try:
        return {int(p): int(o) for p, o in (item.split(":") for item in value.split(","))} if value else {}
    except ValueError:
        raise ConfigError(f"--kafka_start_offsets {value!r}: expected PARTITION:OFFSET[,PARTITION:OFFSET...]") \
            from None


def _time(value: Optional[str], flag: str) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_time(value, flag)
    except Rejected:
        raise ConfigError(f"{flag} {value!r}: expected RFC 3339 or unix seconds") from None
