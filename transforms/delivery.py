"""Delivering post-process messages to a topic without stalling the stream or losing a message.

Each bundle's messages are sent together; the ones not delivered are retried with backoff a bounded
number of times, then kept as `undelivered` rows (their topic, key, body, attributes and the
error), which `issue-platform resend` sends again. While a topic is failing (an outage), later
bundles try once and keep what fails, so the step never waits more than one attempt per bundle;
the first success ends the outage. An outage is logged once when it starts and once when it ends,
with the number of retries and of messages kept (transforms.outages).

`check_topic` finds a missing topic or an unreachable broker before the job starts.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from issue_platform.tables import post_process_message, undelivered_row
from transforms import outages
from transforms.parse import NAMESPACE

ATTEMPTS = 4  # per bundle, outside an outage: the first try and three retries
BACKOFF_SECONDS = 1.0  # before the first retry; doubled before each next one
ATTEMPT_SECONDS = 5.0  # how long one attempt waits for its deliveries
_THEN = "retrying with backoff, then keeping undelivered messages in table undelivered (issue-platform resend)"


class DeliverFn(beam.DoFn):
    """Batches of `post_process` rows -> delivered to `topic` (the `--post_process_topic` value);
    outputs batches of `undelivered` rows for the messages that could not be. Subclasses send."""

    def __init__(self, topic: str):
        self._topic = topic
        self._attempts, self._backoff, self._attempt_seconds = ATTEMPTS, BACKOFF_SECONDS, ATTEMPT_SECONDS
        self._delivered = Metrics.counter(NAMESPACE, "post_process.delivered")
        self._kept = Metrics.counter(NAMESPACE, "post_process.undelivered")
        self._retried = Metrics.counter(NAMESPACE, "post_process.retries")

    def start_bundle(self):
        self._messages = []

    def process(self, rows):
        self._messages.extend(map(post_process_message, rows))
        return ()  # sent in finish_bundle (an explicit empty result: Beam warns about a process without one)

    def finish_bundle(self):
        messages, self._messages = self._messages, []
        if not messages:
            return
        name = f"post-process topic {self._topic}"
        failed, errors, attempt = messages, [], 0
        attempts = 1 if outages.in_outage(name) else self._attempts  # in an outage, no bundle waits on it
        while failed and attempt < attempts:
            if attempt:
                self._retried.inc()
                outages.failing(name, errors[0], retries=1, then=_THEN)
                time.sleep(self._backoff * 2 ** (attempt - 1))
            sent = self.send(failed, self._attempt_seconds)
            errors, failed = [e for e in sent if e is not None], [m for m, e in zip(failed, sent) if e is not None]
            attempt += 1
        self._delivered.inc(len(messages) - len(failed))
        if not failed:
            outages.recovered(name)
            return
        outages.failing(name, errors[0], kept=len(failed), then=_THEN)
        self._kept.inc(len(failed))
        rows = [undelivered_row(self._topic, key, body, attributes, error, attempt)
                for (key, body, attributes), error in zip(failed, errors)]
        yield GlobalWindows.windowed_value(rows, timestamp=Timestamp.now())

    def send(self, messages: list, timeout: float) -> list[Optional[str]]:
        """Sends `(key, body, attributes)` messages; per message None (delivered) or the error."""
        raise NotImplementedError


# --- Kafka ----------------------------------------------------------------------------------------

_PRODUCERS: dict = {}
_PRODUCERS_LOCK = threading.Lock()


def _cached(cache: dict, key, make: Callable):
    with _PRODUCERS_LOCK:
        if key not in cache:
            cache[key] = make()
        return cache[key]


def _dropped(cache: dict, key) -> None:
    with _PRODUCERS_LOCK:
        cache.pop(key, None)


def close_producers() -> None:
    """Flush and close the process's cached Kafka producers (when the brokers they talk to go away)."""
    with _PRODUCERS_LOCK:
        for producer in _PRODUCERS.values():
            producer.flush(5)
            producer.close()
        _PRODUCERS.clear()


def kafka_config(servers: str, **overrides) -> dict:
    """An idempotent producer (no duplicates from its own retries), batching (`linger.ms`); a message
    not delivered within `message.timeout.ms` fails, and our retry takes over. librdkafka logs only
    critical errors: an outage is logged once by `DeliverFn`, not once per reconnect."""
    return {"bootstrap.servers": servers, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
            "compression.type": "lz4", "message.timeout.ms": int(ATTEMPT_SECONDS * 1000), "log_level": 2,
            **overrides}


class KafkaDeliverFn(DeliverFn):
    """To `kafka:HOST:PORT/TOPIC`: message key = the group id (hence one partition per group),
    headers = the attributes."""

    def __init__(self, topic_flag: str, servers: str, topic: str, **producer_config):
        super().__init__(topic_flag)
        self._topic_name, self._config = topic, kafka_config(servers, **producer_config)

    def send(self, messages, timeout):
        key = tuple(sorted(self._config.items()))
        producer = _cached(_PRODUCERS, key, lambda: _kafka_producer(self._config))
        errors: list = [""] * len(messages)  # "": no delivery report yet

        def report(i):
            def delivered(error, _):
                errors[i] = None if error is None else str(error)
            return delivered

        for i, (message_key, body, attributes) in enumerate(messages):
            headers = [(k, v.encode()) for k, v in attributes.items()]
            while True:
                try:
                    producer.produce(self._topic_name, value=body, key=message_key.encode(), headers=headers,
                                     on_delivery=report(i))
                    break
                except BufferError:  # the local queue is full: let deliveries drain, then retry
                    producer.poll(0.1)
                except Exception as exc:  # a fatal producer error: this attempt fails whole
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    break
            producer.poll(0)
        producer.flush(timeout + 1)
        if any(e is not None for e in errors):  # a failed producer may stay failed: the next attempt starts anew
            _dropped(_PRODUCERS, key)
            producer.purge()
            producer.flush(0)
        return [e if e != "" else f"not delivered within {timeout:.0f} s" for e in errors]


def _kafka_producer(config: dict):
    from confluent_kafka import Producer

    return Producer(config)


# --- Pub/Sub --------------------------------------------------------------------------------------

_PUBLISHERS: dict = {}  # one per process and emulator host (tests and `issue-platform live` start their own)


def _publisher():
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))


class PubSubDeliverFn(DeliverFn):
    """To `pubsub:projects/P/topics/T`: ordering key = the group id, attributes as they are."""

    def __init__(self, topic_flag: str, topic: str):
        super().__init__(topic_flag)
        self._topic_path = topic

    def send(self, messages, timeout):
        from google.api_core.retry import Retry

        publisher = _cached(_PUBLISHERS, os.environ.get("PUBSUB_EMULATOR_HOST"), _publisher)
        retry = Retry(initial=0.2, maximum=1.0, timeout=timeout)
        futures = [publisher.publish(self._topic_path, body, ordering_key=key, retry=retry, timeout=timeout,
                                     **attributes) for key, body, attributes in messages]
        errors, deadline = [], time.monotonic() + timeout + 1
        for (key, _, _), future in zip(messages, futures):
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
                errors.append(None)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
                publisher.resume_publish(self._topic_path, key)  # a failed ordering key stays paused otherwise
        return errors


# --- Before the job starts --------------------------------------------------------------------------

def check_topic(kind: str, topic: str, servers: Optional[str], timeout: float = 10.0) -> Optional[str]:
    """Why a post-process topic cannot be used (the topic is missing, its server unreachable),
    or None."""
    if kind == "kafka":
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        try:
            # Every topic's metadata: asking for one by name lets a broker that auto-creates topics create it.
            metadata = AdminClient({"bootstrap.servers": servers, "log_level": 0}).list_topics(timeout=timeout)
        except KafkaException as exc:
            return f"cannot reach the Kafka broker at {servers} ({exc.args[0].str() if exc.args else exc})"
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return f"Kafka topic {topic} not found on {servers}"
        return None
    from google.api_core.exceptions import GoogleAPICallError, NotFound

    try:
        publisher = _cached(_PUBLISHERS, os.environ.get("PUBSUB_EMULATOR_HOST"), _publisher)
        publisher.get_topic(request={"topic": topic}, timeout=timeout)
    except NotFound:
        return f"Pub/Sub topic {topic} not found"
    except (GoogleAPICallError, Exception) as exc:  # unreachable, refused, no credentials
        return f"cannot reach Pub/Sub ({type(exc).__name__})"
    return None


__all__ = ["DeliverFn", "KafkaDeliverFn", "PubSubDeliverFn", "check_topic", "close_producers", "kafka_config",
           "ATTEMPTS", "BACKOFF_SECONDS", "ATTEMPT_SECONDS"]
