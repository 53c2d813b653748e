"""What the launching process shows of Beam's SDK workers on a portable runner (pipelines/runners.py)."""
from __future__ import annotations

import logging
import threading

import grpc

from pipelines.runners import _one_line_for_lost_runner


def _in_thread(name: str, target) -> None:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(30)


def test_an_sdk_worker_thread_that_loses_the_runner_says_so_in_one_line(monkeypatch, caplog):
    """A real gRPC call to a port nobody listens on fails as the SDK harness's reads do when Flink
    closes their connection: in one of Beam's worker threads that is one warning line, not a traceback;
    in any other thread, and any other exception, is reported by the previous hook as before."""
    reported = []
    monkeypatch.setattr(threading, "excepthook", _one_line_for_lost_runner(previous=reported.append))
    channel = grpc.insecure_channel("127.0.0.1:1")
    lost = lambda: channel.unary_unary("/org.apache.beam.Nothing/Read")(b"", timeout=10)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="pipelines.runners"):
        _in_thread("read_grpc_client_inputs", lost)
        _in_thread("run_worker_3-1", lost)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "SDK worker: the runner closed its connection"] * 2
    assert reported == []

    _in_thread("our_own_thread", lost)
    _in_thread("read_state", lambda: 1 / 0)
    assert [(args.thread.name, type(args.exc_value).__name__) for args in reported] == [
        ("our_own_thread", "_InactiveRpcError"), ("read_state", "ZeroDivisionError")]
    channel.close()
