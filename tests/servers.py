"""Pytest fixtures for the local servers (started by `pipelines/local_stack.py`: loopback, free ports,
bounded readiness waits, stopped by process id) and helpers to read back what tests sent.

The fixtures are session scoped: one emulator and one broker serve the whole run; tests isolate
themselves by topic name.

    def test_something(pubsub_emulator, kafka_broker):
        pubsub_emulator.address   # "127.0.0.1:PORT", also in PUBSUB_EMULATOR_HOST during the session
        kafka_broker.address      # bootstrap servers, "127.0.0.1:PORT"
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import pytest

from pipelines.local_stack import (HOST, KAFKA_CONSUMER_DEFAULTS, Server, create_kafka_topic,  # noqa: F401
                                   create_pubsub_topic, free_port, pull_acknowledged, start_pubsub_emulator,
                                   start_server, start_tansu)


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[Server]:
    """The Pub/Sub emulator for the session, with PUBSUB_EMULATOR_HOST pointing at it (the Google
    client libraries, Beam's Pub/Sub IO included, then talk to it without credentials)."""
    server = start_pubsub_emulator()
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = server.address
    try:
        yield server
    finally:
        if saved is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = saved
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Server]:
    """A Tansu broker for the session; `address` is the bootstrap servers string."""
    server = start_tansu()
    try:
        yield server
    finally:
        from transforms.delivery import close_producers

        close_producers()  # else librdkafka keeps reconnecting to the stopped broker for the rest of the run
        server.stop()


def consume_kafka(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list:
    """The first `count` messages of every partition of `topic`, read from the beginning without a
    consumer group join (partitions assigned directly)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, **KAFKA_CONSUMER_DEFAULTS})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages, deadline = [], time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                messages.append(message)
        return messages
    finally:
        consumer.close()


def pull_pubsub(project: str, subscription: str, count: int, timeout: float = 20.0) -> list:
    """Pulls and acks until `count` messages arrived or `timeout` passed; returns the messages."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < count and time.monotonic() < deadline:
            messages += pull_acknowledged(subscriber, path, timeout=2)
        return messages
    finally:
        subscriber.close()
