"""A BigQuery server for the tests: `bqemulator` started by `pipelines.local_stack` (loopback, free
port, offline-safe) and stopped by its process id in teardown. Run this file to try the sinks locally:

    .venv/bin/python tests/bigquery_server.py --port 9050    # then --bigquery_endpoint http://127.0.0.1:9050
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

import pytest

from pipelines.local_stack import Server, bigquery_emulator_argv, start_bigquery_emulator

PROJECT = "test-project"


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[Server]:
    """The emulator for the session; `address` is "127.0.0.1:PORT" (endpoint `http://` + address).
    Tests isolate themselves by dataset."""
    server = start_bigquery_emulator(PROJECT)
    try:
        yield server
    finally:
        server.stop()


def bigquery_client(server: Server, project: str = PROJECT):
    """The official client pointed at the emulator, anonymous."""
    from transforms.sinks import bigquery_client as client

    return client(project, f"http://{server.address}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run bqemulator on 127.0.0.1 (offline-safe) until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9050)
    parser.add_argument("--project", default=PROJECT)
    args = parser.parse_args()
    argv = bigquery_emulator_argv(args.port, args.project)
    os.execv(argv[0], argv)  # the emulator takes this process's id: stopping it stops the emulator
