"""Session-scoped fixtures for the local servers (see servers.py and bigquery_server.py)."""
from bigquery_server import bigquery_emulator  # noqa: F401  (registers the fixtures)
from servers import kafka_broker, pubsub_emulator  # noqa: F401
