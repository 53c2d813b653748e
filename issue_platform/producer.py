"""Send occurrences and status changes to the pipeline's ingest topic, on Kafka or Pub/Sub: the
equivalent of Sentry's `produce_occurrence_to_kafka(payload_type, occurrence=..., status_change=...,
event_data=...)`, for detector authors.

    producer = connect("pubsub:projects/P/topics/ingest-occurrences")  # or "kafka:HOST:PORT/TOPIC"
    producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(...), event_data={...})
    producer.flush()

Every payload is checked by the pipeline's own validator (the schema files in `schemas/` and the type
registry) before it is sent: an invalid one raises `Rejected` with the reason code the pipeline's
dead-letter table would give it, and is not sent. Each message is keyed by the group key
`"<project_id>:<md5(fingerprint[0])>"` (Kafka message key, Pub/Sub ordering key), so one group's
messages stay in order, and carries its event time in the `event_time` attribute/header (RFC 3339):
`detection_time` for an occurrence, `update_date` (else the send time) for a status change.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Protocol, Sequence, Union

import orjson

from issue_platform.enums import PayloadType
from issue_platform.fingerprint import group_key
from issue_platform.grouptype import GroupTypeRegistry, registry as default_registry
from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES, Occurrence, PayloadValidator, parse

EVENT_TIME_ATTRIBUTE = "event_time"
PAYLOAD_TYPE_ATTRIBUTE = "payload_type"
_MAX_PENDING = 10_000  # unconfirmed sends before `send` waits for the oldest (bounded memory)
CONNECT_TIMEOUT_SECONDS = 10.0

# librdkafka's own log (a line per connection retry: hundreds while a broker is down) goes to this
# logger instead of stderr, muted unless asked for: `KAFKA_LOG.setLevel(logging.INFO)` (the CLI's --verbose).
KAFKA_LOG = logging.getLogger("issue_platform.kafka")
KAFKA_LOG.setLevel(logging.CRITICAL)

Time = Union[datetime, float, int]


def _seconds(value: Time) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return float(value)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---- Typed builders (Sentry's IssueEvidence, IssueOccurrence and StatusChangeMessage)

@dataclass(frozen=True)
class IssueEvidence:
    name: str
    value: str
    important: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "important": self.important}


@dataclass(frozen=True)
class IssueOccurrence:
    """One sighting of a problem. `type` is a type id or a `GroupType`; `detection_time` a datetime
    or unix seconds. `id` and `event_id` default to fresh uuid4 hex strings."""

    project_id: int
    fingerprint: Sequence[str]
    issue_title: str
    subtitle: str
    culprit: str
    type: Any
    detection_time: Time
    level: str = "warning"
    evidence_data: Mapping[str, Any] = field(default_factory=dict)
    evidence_display: Sequence[IssueEvidence] = ()
    resource_id: Optional[str] = None
    priority: Optional[int] = None
    initial_issue_priority: Optional[int] = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "event_id": self.event_id, "project_id": self.project_id,
            "fingerprint": list(self.fingerprint), "issue_title": self.issue_title, "subtitle": self.subtitle,
            "culprit": self.culprit, "resource_id": self.resource_id, "evidence_data": dict(self.evidence_data),
            "evidence_display": [e.to_dict() for e in self.evidence_display],
            "type": getattr(self.type, "type_id", self.type), "detection_time": _seconds(self.detection_time),
            "level": self.level, "priority": self.priority, "initial_issue_priority": self.initial_issue_priority,
        }


@dataclass(frozen=True)
class StatusChangeMessage:
    """A detector's decision about a group (`new_status`/`new_substatus` as `GroupStatus`/`GroupSubStatus`
    values). `update_date` (datetime or unix seconds) is its event time; without it the pipeline uses
    the time it received the message."""

    project_id: int
    fingerprint: Sequence[str]
    new_status: int
    new_substatus: Optional[int] = None
    update_date: Optional[Time] = None
    detector_id: Optional[int] = None
    activity_data: Optional[Mapping[str, Any]] = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "project_id": self.project_id, "fingerprint": list(self.fingerprint),
            "new_status": int(self.new_status),
            "new_substatus": None if self.new_substatus is None else int(self.new_substatus),
            "update_date": None if self.update_date is None else _seconds(self.update_date),
            "detector_id": self.detector_id,
            "activity_data": None if self.activity_data is None else dict(self.activity_data),
        }


# ---- The message on the wire

@dataclass(frozen=True)
class Message:
    body: bytes  # the payload's JSON, Sentry's wire format
    key: str  # the group key: Kafka message key, Pub/Sub ordering key
    attributes: dict  # event_time (RFC 3339) and payload_type: Pub/Sub attributes, Kafka headers


def prepare(body: bytes, validator: PayloadValidator, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Message:
    """Validates `body` exactly as the pipeline does (raising `Rejected` with its reason code) and
    wraps it with its key and attributes."""
    payload = validator.validate(parse(body, max_bytes))
    if isinstance(payload, Occurrence):
        kind, event_time = PayloadType.OCCURRENCE, payload.detection_time
    else:
        kind = PayloadType.STATUS_CHANGE
        event_time = payload.update_date if payload.update_date is not None else time.time()
    return Message(body, group_key(payload.project_id, payload.fingerprint[0]),
                   {EVENT_TIME_ATTRIBUTE: rfc3339(event_time), PAYLOAD_TYPE_ATTRIBUTE: kind.value})


def payload_for(payload_type: PayloadType, occurrence: Optional[IssueOccurrence] = None,
                status_change: Optional[StatusChangeMessage] = None,
                event_data: Optional[Mapping[str, Any]] = None) -> dict:
    """Sentry's `_prepare_occurrence_message` / `_prepare_status_change_message`."""
    payload_type = PayloadType(payload_type)
    if payload_type is PayloadType.OCCURRENCE:
        if occurrence is None:
            raise ValueError("occurrence must be provided")
        if event_data and occurrence.event_id != event_data.get("event_id"):
            raise ValueError("Event id on occurrence and event_data must be the same")
        payload = occurrence.to_dict()
        if event_data:
            payload["event"] = dict(event_data)
    else:
        if status_change is None:
            raise ValueError("status_change must be provided")
        payload = status_change.to_dict()
    payload["payload_type"] = payload_type.value
    return payload


# ---- Transports

class ProduceError(RuntimeError):
    """Messages the broker did not confirm."""


class TargetError(ValueError):
    """The target cannot be used: a malformed address, no credentials, or a broker not reachable."""


class Transport(Protocol):
    def send(self, message: Message) -> None: ...

    def flush(self, timeout: float) -> int: ...  # messages confirmed since the last flush; raises ProduceError

    def close(self, timeout: float) -> None: ...  # waits at most `timeout` for the unconfirmed ones


class KafkaTransport:
    """confluent-kafka, idempotent (no duplicates or reordering on retries within a partition). The
    brokers must answer within `connect_timeout` seconds (else `TargetError`)."""

    def __init__(self, bootstrap_servers: str, topic: str, config: Optional[Mapping[str, Any]] = None,
                 connect_timeout: float = CONNECT_TIMEOUT_SECONDS):
        from confluent_kafka import KafkaException, Producer

        self.topic = topic
        self._producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
                                   "linger.ms": 5, "logger": KAFKA_LOG, **(config or {})})
        self._delivered, self._errors = 0, []
        try:
            self._producer.list_topics(topic, timeout=connect_timeout)
        except KafkaException as exc:
            self.close(0)
            raise TargetError(f"kafka {bootstrap_servers}: no broker answered within {connect_timeout:g} s "
                              f"({exc.args[0].str()})") from None

    def _on_delivery(self, error, _message) -> None:
        if error is None:
            self._delivered += 1
        else:
            self._errors.append(str(error))

    def send(self, message: Message) -> None:
        headers = [(k, v.encode()) for k, v in message.attributes.items()]
        while True:
            try:
                self._producer.produce(self.topic, message.body, message.key.encode(), headers=headers,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        pending = self._producer.flush(timeout)
        delivered, errors, self._delivered, self._errors = self._delivered, self._errors, 0, []
        if errors or pending:
            raise ProduceError(f"kafka topic {self.topic}: {len(errors)} failed, {pending} unconfirmed"
                               + (f"; first error: {errors[0]}" if errors else ""))
        return delivered

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)
        self._producer.purge()  # what is still unconfirmed is given up (closing would wait for it)
        self._producer.flush(0)
        self._producer.close()


class PubSubTransport:
    """google-cloud-pubsub with message ordering on (ordering key = group key)."""

    def __init__(self, topic_path: str, publisher=None):
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import pubsub_v1

        self.topic = topic_path
        try:
            self._publisher = publisher or pubsub_v1.PublisherClient(
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
        except DefaultCredentialsError:
            raise TargetError("pubsub: no Google credentials found; for the Pub/Sub emulator set "
                              "PUBSUB_EMULATOR_HOST=HOST:PORT, for Google Cloud run `gcloud auth "
                              "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from None
        self._futures: deque = deque()
        self._errors: list = []  # failures seen before flush(), reported by it
        self._unconfirmed = 0  # sends not confirmed in time (neither failed nor delivered yet)

    def send(self, message: Message) -> None:
        if len(self._futures) >= _MAX_PENDING:
            self._settle(self._futures.popleft(), 60.0)
        self._futures.append((message.key, self._publisher.publish(
            self.topic, message.body, ordering_key=message.key, **message.attributes)))

    def _settle(self, item, timeout: float) -> bool:
        key, future = item
        try:
            future.result(timeout)
            return True
        except concurrent.futures.TimeoutError:  # still in flight: its key is not paused
            self._unconfirmed += 1
            return False
        except Exception as exc:  # a failed key stays paused until resumed: resume it, report the failure
            self._errors.append(f"{type(exc).__name__}: {exc}")
            self._publisher.resume_publish(self.topic, key)
            return False

    def flush(self, timeout: float) -> int:
        deadline, delivered = time.monotonic() + timeout, 0
        while self._futures:
            delivered += self._settle(self._futures.popleft(), max(0.0, deadline - time.monotonic()))
        errors, unconfirmed, self._errors, self._unconfirmed = self._errors, self._unconfirmed, [], 0
        if errors or unconfirmed:
            raise ProduceError(f"pubsub topic {self.topic}: {len(errors)} failed, {unconfirmed} unconfirmed"
                               + (f"; first error: {errors[0][:200]}" if errors else ""))
        return delivered

    def close(self, timeout: float) -> None:
        try:
            self.flush(timeout)
        finally:
            self._futures.clear()
            self._publisher.stop()


# ---- The producer

class IssueProducer:
    """Validates, keys and sends payloads through a transport. Not thread-safe; one per thread."""

    def __init__(self, transport: Transport, types: GroupTypeRegistry = default_registry,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        self.transport = transport
        self._validator = PayloadValidator("fast", types)
        self._max_bytes = max_payload_bytes

    def produce(self, payload_type: PayloadType = PayloadType.OCCURRENCE,
                occurrence: Optional[IssueOccurrence] = None, status_change: Optional[StatusChangeMessage] = None,
                event_data: Optional[Mapping[str, Any]] = None) -> Message:
        """Sentry's `produce_occurrence_to_kafka`: raises `Rejected` (nothing sent) if the pipeline
        would dead-letter the payload; otherwise queues it and returns the message."""
        return self.send_raw(orjson.dumps(payload_for(payload_type, occurrence, status_change, event_data)))

    def send_raw(self, body: bytes) -> Message:
        """A payload already in the wire format (e.g. a line of a JSON Lines file)."""
        message = prepare(body, self._validator, self._max_bytes)
        self.transport.send(message)
        return message

    def flush(self, timeout: float = 30.0) -> int:
        """Waits for confirmations; returns how many arrived, raises `ProduceError` on any failure."""
        return self.transport.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Waits at most `timeout` seconds for unconfirmed messages, then closes the connection."""
        self.transport.close(timeout)


def connect(target: str, types: GroupTypeRegistry = default_registry,
            kafka_config: Optional[Mapping[str, Any]] = None,
            connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> IssueProducer:
    """`pubsub:projects/P/topics/T` or `kafka:HOST:PORT[,HOST:PORT...]/TOPIC`; `kafka_config` adds
    librdkafka settings (e.g. {"security.protocol": "SASL_SSL"}). `TargetError` (one line) if the
    target is malformed, has no credentials (Pub/Sub) or no broker answers in `connect_timeout` (Kafka)."""
    scheme, _, rest = target.partition(":")
    if scheme == "pubsub" and rest.startswith("projects/") and "/topics/" in rest:
        return IssueProducer(PubSubTransport(rest), types)
    if scheme == "kafka" and "/" in rest:
        servers, _, topic = rest.rpartition("/")
        if servers and topic:
            return IssueProducer(KafkaTransport(servers, topic, kafka_config, connect_timeout), types)
    raise TargetError(f"target {target!r}: expected pubsub:projects/P/topics/T or kafka:HOST:PORT/TOPIC")


# ---- Sentry's module-level function over a process-wide producer

_default: Optional[IssueProducer] = None


def configure(target: str, types: GroupTypeRegistry = default_registry,
              kafka_config: Optional[Mapping[str, Any]] = None) -> IssueProducer:
    """Sets the process-wide producer used by `produce_occurrence_to_kafka` (flushed at exit)."""
    global _default
    shutdown()
    _default = connect(target, types, kafka_config)
    return _default


def produce_occurrence_to_kafka(payload_type: PayloadType = PayloadType.OCCURRENCE,
                                occurrence: Optional[IssueOccurrence] = None,
                                status_change: Optional[StatusChangeMessage] = None,
                                event_data: Optional[Mapping[str, Any]] = None) -> Message:
    """Sentry's signature, through the producer set by `configure` (Kafka or Pub/Sub)."""
    if _default is None:
        raise RuntimeError("call issue_platform.producer.configure(target) first")
    return _default.produce(payload_type, occurrence, status_change, event_data)


@atexit.register
def shutdown() -> None:
    """Flushes and closes the process-wide producer (also run at exit)."""
    global _default
    if _default is not None:
        _default.close()
        _default = None
