"""Session-scoped fixtures for the local servers (see servers.py, kafka_broker.py and bigquery_server.py);
every test that uses one is marked `servers` (tests that start a server themselves carry the mark)."""
import pytest

from bigquery_server import bigquery_emulator  # noqa: F401  (registers the fixtures)
from kafka_broker import apache_kafka  # noqa: F401
from servers import kafka_broker, pubsub_emulator  # noqa: F401

SERVER_FIXTURES = {"apache_kafka", "bigquery_emulator", "kafka_broker", "pubsub_emulator"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
