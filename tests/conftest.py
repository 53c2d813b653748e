"""Session-scoped fixtures for the local servers (see servers.py)."""
from servers import kafka_broker, pubsub_emulator  # noqa: F401  (registers the fixtures)
