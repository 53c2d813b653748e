"""A BigQuery server for the tests: `bqemulator` (PyPI; DuckDB behind BigQuery's REST API) in a
subprocess on 127.0.0.1, stopped by its process id in teardown.

As shipped it downloads DuckDB's `spatial` extension at start-up, which fails offline; the launcher
below makes that load best-effort (only GEOGRAPHY is lost). Run this file to try the sinks locally:

    .venv/bin/python tests/bigquery_server.py --port 9050    # then --bigquery_endpoint http://127.0.0.1:9050
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Iterator

import pytest

from servers import HOST, Server, _start, free_port

PROJECT = "test-project"
_LAUNCHER = """
import sys
from bqemulator.storage import engine

_load_spatial = engine.DuckDBEngine._load_spatial
def _best_effort(self):
    try:
        _load_spatial(self)
    except Exception:  # offline: no spatial extension, no GEOGRAPHY
        pass
engine.DuckDBEngine._load_spatial = _best_effort

from bqemulator.cli import main
main(sys.argv[1:])
"""


def _argv(port: int, grpc_port: int, project: str) -> list[str]:
    return [sys.executable, "-c", _LAUNCHER, "start", "--rest-host", HOST, "--rest-port", str(port),
            "--grpc-host", HOST, "--grpc-port", str(grpc_port), "--ephemeral", "--project", project,
            "--log-level", "warning"]


def _ready(address: str) -> bool:
    import urllib.request

    url = f"http://{address}/bigquery/v2/projects/{PROJECT}/datasets"
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def start_bigquery_emulator() -> Server:
    port = free_port()
    return _start("bqemulator", _argv(port, free_port(), PROJECT), port, _ready)


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[Server]:
    """The emulator for the session; `address` is "127.0.0.1:PORT" (endpoint `http://` + address).
    Tests isolate themselves by dataset."""
    server = start_bigquery_emulator()
    try:
        yield server
    finally:
        server.stop()


def bigquery_client(server: Server, project: str = PROJECT):
    """The official client pointed at the emulator, anonymous."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=f"http://{server.address}"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run bqemulator on 127.0.0.1 (offline-safe) until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9050)
    parser.add_argument("--project", default=PROJECT)
    args = parser.parse_args()
    try:
        subprocess.run(_argv(args.port, free_port(), args.project), check=False)
    except KeyboardInterrupt:
        pass
