"""Sources of raw payloads (chosen from `--source` by `pipelines.sources_and_sinks`): files (`ReadPayloads`), a Pub/Sub subscription, a
Kafka topic read live (Beam's cross-language `ReadFromKafka`) or backfilled (a bounded read in Python
that runs on every runner).

Live sources yield `SourcedPayload(payload, source)`: the message body, unparsed, and its coordinates
(`pubsub:SUBSCRIPTION:MESSAGE_ID`, `kafka:TOPIC:PARTITION:OFFSET`), so that a message that cannot be
parsed reaches the dead-letter table naming where it can be found again.
"""
from __future__ import annotations

import time
from typing import Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from apache_beam.transforms.window import TimestampedValue

from issue_platform import outcomes
from issue_platform.config import ConfigError
from issue_platform.producer import CONNECT_TIMEOUT_SECONDS, KAFKA_LOG
from issue_platform.validation import EARLIEST_TIME, LATEST_TIME, Rejected, parse_time
from transforms.read import NAMESPACE, SourcedPayload

# A backfill's end is found by reading until two polls of this long return nothing: Tansu (and any
# broker whose high watermark lags its log) reports fewer records than it serves.
EMPTY_POLL_SECONDS = 1.0
_BATCH = 500


class ReadFromPubSubSubscription(beam.PTransform):
    """Messages of a subscription as `SourcedPayload`s, timestamped from `timestamp_attribute` where
    the producer set it (issue_platform.producer does), else from the publish time.

    The attribute is read here, not by Beam's reader: that one raises on a value it cannot parse,
    which stops the job and loses the messages of its pull. A value that does not parse or lies
    outside the accepted range makes the message a dead letter (`invalid_value`, field the
    attribute's name) and the stream goes on."""

    def __init__(self, subscription: str, timestamp_attribute: Optional[str] = "event_time"):
        super().__init__()
        self._subscription, self._timestamp_attribute = subscription, timestamp_attribute or None

    def expand(self, pbegin):
        return (pbegin
                | "ReadFromPubSub" >> beam.io.ReadFromPubSub(subscription=self._subscription, with_attributes=True)
                | "WithMessageId" >> beam.ParDo(_StampFn(self._subscription, self._timestamp_attribute)))


class _StampFn(beam.DoFn):
    """A Pub/Sub message -> its `SourcedPayload`, timestamped from the attribute when it is valid."""

    def __init__(self, subscription: str, attribute: Optional[str]):
        self._subscription, self._attribute = subscription, attribute

    def process(self, message):
        sourced = SourcedPayload(message.data, f"pubsub:{self._subscription}:{message.message_id}")
        value = (message.attributes or {}).get(self._attribute) if self._attribute else None
        if value is None:
            yield sourced
            return
        try:
            yield TimestampedValue(sourced, attribute_time(value, self._attribute))
        except Rejected as rejected:
            yield sourced._replace(problem=(rejected.reason, rejected.field, rejected.message))


def attribute_time(value: str, name: str) -> float:
    """A timestamp attribute as Beam's Pub/Sub IO reads it (unix milliseconds, or RFC 3339) -> unix
    seconds, in the range every accepted time lies in; else `Rejected` (`invalid_value`)."""
    try:
        seconds = int(value) / 1000 if value.strip().lstrip("-").isdigit() else parse_time(value, name)
        if EARLIEST_TIME < seconds <= LATEST_TIME:
            return seconds
    except (Rejected, ValueError, OverflowError):
        pass
    raise Rejected(outcomes.INVALID_VALUE, name, f"attribute '{name}' must be unix milliseconds or an RFC 3339 "
                   f"time after 1970-01-01 and at most 3000-01-01T00:00:00Z, got {value[:40]!r}",
                   stage=outcomes.STAGE_PARSE)


def _kafka_coordinates(topic: str, partition: int, offset: int) -> str:
    return f"kafka:{topic}:{partition}:{offset}"


# How Beam's Java KafkaIO runs inside a portable job: in the runner's own JVM (Flink's TaskManager, whose
# classpath, the job server's, holds Beam's Java SDK harness and KafkaIO; no Docker container per worker),
# as the classic unbounded source (Flink snapshots its partition offsets in each checkpoint and restores
# them on recovery; the splittable-DoFn read emits nothing on Flink 1.19's portable runner: measured).
KAFKA_EXPANSION_ARGS = ("--defaultEnvironmentType=EMBEDDED", "--experiments=use_deprecated_read")


def kafka_expansion_service():
    """Beam's IO expansion service (from its jar cache: `make jars`), expanding KafkaIO for Flink."""
    from apache_beam.io.kafka import default_io_expansion_service

    return default_io_expansion_service(append_args=list(KAFKA_EXPANSION_ARGS))


class ReadFromKafkaTopic(beam.PTransform):
    """A live read with Beam's standard `ReadFromKafka` (Java, expanded through Beam's IO expansion
    service: Java must be installed where the pipeline is built, and the runner must run Java
    transforms: Flink or Dataflow, not the local DirectRunner). Records are timestamped with their
    Kafka CreateTime, and the watermark follows it (an idle partition's advances with the wall
    clock); the pipeline re-stamps each payload with its own event time after parsing."""

    def __init__(self, bootstrap_servers: str, topic: str, consumer_config: Optional[Mapping[str, str]] = None,
                 expansion_service=None):
        super().__init__()
        from apache_beam.io.kafka import ReadFromKafka

        self.consumer_config = {"bootstrap.servers": bootstrap_servers, "auto.offset.reset": "earliest",
                                **(consumer_config or {})}
        self.topic = topic
        self.read = ReadFromKafka(consumer_config=self.consumer_config, topics=[topic], with_metadata=True,
                                  timestamp_policy=ReadFromKafka.create_time_policy,
                                  commit_offset_in_finalize="group.id" in self.consumer_config,
                                  expansion_service=expansion_service)

    def expand(self, pbegin):
        return pbegin | "ReadFromKafka" >> self.read | "WithOffsets" >> beam.Map(kafka_row_payload)


def kafka_row_payload(row) -> SourcedPayload:
    """A record of `ReadFromKafka(with_metadata=True)` (Beam's ByteArrayKafkaRecord schema: topic,
    partition, offset, timestamp, key, value, headers, ...) as a payload with its coordinates."""
    return SourcedPayload(row.value or b"", _kafka_coordinates(row.topic, row.partition, row.offset))


def _consumer(bootstrap_servers: str, config: Mapping[str, str]):
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "issue-platform-backfill",
                     "enable.auto.commit": False, "enable.partition.eof": False, "logger": KAFKA_LOG, **config})


def check_kafka_reachable(bootstrap_servers: str, topic: str, config: Mapping[str, str],
                          timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Before a job on a local runner reads Kafka from this machine: a `ConfigError` (one line) unless
    a broker answers within `timeout` seconds."""
    from confluent_kafka import KafkaException

    consumer = _consumer(bootstrap_servers, config)
    try:
        consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise ConfigError(f"--bootstrap_servers {bootstrap_servers}: no Kafka broker answered within {timeout:g} s "
                          f"({exc.args[0].str()})") from None
    finally:
        consumer.close()


class _PlanPartitionsFn(beam.DoFn):
    """One task per partition: (partition, start offset, reported end offset, stop time in ms). Runs
    inside the job, so nothing is read before it is submitted."""

    def __init__(self, servers, topic, config, start_time, start_offsets):
        self._servers, self._topic, self._config = servers, topic, config
        self._start_time, self._start_offsets = start_time, start_offsets

    def process(self, _):
        from confluent_kafka import TopicPartition

        stop_ms = int(time.time() * 1000)
        consumer = _consumer(self._servers, self._config)
        try:
            topic = consumer.list_topics(self._topic, timeout=30).topics.get(self._topic)
            if topic is None or topic.error is not None:
                raise RuntimeError(f"kafka topic {self._topic}: not found ({topic.error if topic else 'no metadata'})")
            partitions = sorted(topic.partitions)
            starts = {}
            if self._start_time is not None:
                found = consumer.offsets_for_times(
                    [TopicPartition(self._topic, p, int(self._start_time * 1000)) for p in partitions], timeout=30)
                starts = {tp.partition: tp.offset for tp in found}
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, partition), timeout=30,
                                                           cached=False)
                start = self._start_offsets.get(partition, starts.get(partition, low))
                yield partition, high if start < 0 else max(start, low), high, stop_ms
        finally:
            consumer.close()


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition from its start offset to the end it had when the job started. Records
    below the reported high watermark are all read; past it (a lagging watermark), records are read
    while they are older than the job's start, until two polls return nothing."""

    def __init__(self, servers, topic, config, start_time):
        self._servers, self._topic, self._config = servers, topic, config
        self._start_ms = None if start_time is None else int(start_time * 1000)
        self._read = Metrics.counter(NAMESPACE, "kafka.records_read")

    def process(self, task):
        from confluent_kafka import KafkaException, TopicPartition

        partition, start, reported_end, stop_ms = task
        consumer = _consumer(self._servers, self._config)
        try:
            consumer.assign([TopicPartition(self._topic, partition, start)])
            empty, ended = 0, False
            while empty < 2 and not ended:
                batch = consumer.consume(_BATCH, timeout=EMPTY_POLL_SECONDS)
                empty = 0 if batch else empty + 1
                for message in batch:
                    if message.error():
                        raise KafkaException(message.error())
                    offset, (_, timestamp) = message.offset(), message.timestamp()
                    if offset >= reported_end and timestamp > stop_ms:
                        ended = True  # appended after the job started: the backfill ends here
                        break
                    if self._start_ms is not None and 0 <= timestamp < self._start_ms:
                        continue  # before --kafka_start_time (a lagging watermark can return these)
                    self._read.inc()
                    yield SourcedPayload(message.value() or b"", _kafka_coordinates(self._topic, partition, offset))
        finally:
            consumer.close()


class ReadKafkaBackfill(beam.PTransform):
    """A bounded read of what `topic` retains, from `start_offsets` ({partition: offset}) or records
    appended since `start_time` (unix seconds), else from the earliest retained record, up to the
    end the topic had when the job started. One task per partition, so runners that parallelise
    (Dataflow, Flink) read the partitions side by side."""

    def __init__(self, bootstrap_servers: str, topic: str, consumer_config: Optional[Mapping[str, str]] = None,
                 start_time: Optional[float] = None, start_offsets: Optional[Mapping[int, int]] = None):
        super().__init__()
        self._args = (bootstrap_servers, topic, dict(consumer_config or {}))
        self._start_time, self._start_offsets = start_time, dict(start_offsets or {})

    def expand(self, pbegin):
        return (pbegin
                | "Start" >> beam.Impulse()
                | "PlanPartitions" >> beam.ParDo(_PlanPartitionsFn(*self._args, self._start_time,
                                                                   self._start_offsets))
                | "SpreadPartitions" >> beam.Reshuffle()
                | "ReadPartitions" >> beam.ParDo(_ReadPartitionFn(*self._args, self._start_time)))


__all__ = ["ReadFromPubSubSubscription", "attribute_time", "ReadFromKafkaTopic", "kafka_expansion_service",
           "ReadKafkaBackfill", "kafka_row_payload", "check_kafka_reachable", "EMPTY_POLL_SECONDS"]
