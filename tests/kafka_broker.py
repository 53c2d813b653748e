"""A real Apache Kafka broker for the session (KRaft mode, one node, loopback only), from the Maven jars
`make jars` caches (`pipelines.jars.KAFKA_BROKER`). It starts in ~6 s, so tests that only need the Kafka
protocol keep using Tansu (`kafka_broker` in servers.py, ~0.2 s); those that need Kafka's own
semantics (transactions, offsets committed by a consumer group, what Beam's Java KafkaIO expects of a
broker) use this one.

    def test_something(apache_kafka):
        apache_kafka.address   # bootstrap servers, "127.0.0.1:PORT"
"""
from __future__ import annotations

from typing import Iterator

import pytest

from pipelines.local_stack import Server, start_kafka


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[Server]:
    from pipelines.jars import KAFKA_BROKER, ensure

    ensure([KAFKA_BROKER])
    server = start_kafka(KAFKA_BROKER.classpath())
    try:
        yield server
    finally:
        from transforms.delivery import close_producers

        close_producers()  # else librdkafka keeps reconnecting to the stopped broker for the rest of the run
        server.stop()
