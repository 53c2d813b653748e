"""Running the streaming pipeline live against the Pub/Sub emulator in a test: submit it, poll its
output files until a condition holds, stop it.

The local Pub/Sub reader's watermark is the wall clock at each pull, and a pull on an idle
subscription blocks ~30 s; so events are dated in the past, a filler message (project 99) keeps
pulls coming while we poll, and one more is published just before `cancel()` so that the cancel
does not wait out an idle pull.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from typing import Callable, Iterator, Optional

from issue_platform.config import load_config
from issue_platform.producer import IssueOccurrence, IssueProducer, PayloadType, connect
from pipelines.issue_pipeline import submit
from pipeline_support import read_tables
from servers import create_pubsub_topic

PROJECT = "live-test"
FILLER_PROJECT = 99


class LiveStream:
    def __init__(self, producer: IssueProducer, subscription: str, out):
        self.producer, self.subscription, self.out = producer, subscription, out
        self.result = None

    def filler(self) -> None:
        self.producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
            project_id=FILLER_PROJECT, fingerprint=["filler"], issue_title="f", subtitle="f", culprit="f",
            type=4001, detection_time=time.time() - 30))
        self.producer.flush(10)

    def start(self, *flags: str, config_path=None) -> None:
        argv = ["--source", "pubsub", "--subscription", self.subscription, "--streaming",
                "--output", str(self.out), *flags]
        if config_path is not None:
            argv += ["--config", str(config_path)]
        self.result = submit(argv, load_config(str(config_path) if config_path else None))

    def wait_for(self, condition: Callable[[dict], bool], timeout: float = 90.0,
                 read: Optional[Callable[[], dict]] = None) -> dict:
        """The output tables (or what `read()` returns) once `condition(tables)` holds (the last read
        on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            tables = read_tables(self.out) if read is None else read()
            if condition(tables) or time.monotonic() > deadline:
                return tables
            self.filler()
            time.sleep(1.0)

    def stop(self) -> float:
        """Cancels the pipeline after one more message (so no idle pull is waited out); the seconds
        it took."""
        started = time.monotonic()
        self.filler()
        self.result.cancel()
        self.result = None
        return time.monotonic() - started


@contextlib.contextmanager
def live_stream(tmp_path) -> Iterator[LiveStream]:
    """A fresh topic and ordered subscription on the emulator (PUBSUB_EMULATOR_HOST set by the
    `pubsub_emulator` fixture), a producer for it; the pipeline is cancelled on exit."""
    topic, sub = f"ingest-{uuid.uuid4().hex[:8]}", f"sub-{uuid.uuid4().hex[:8]}"
    create_pubsub_topic(PROJECT, topic, (sub,), ordering=True)  # a group's messages arrive in order
    producer = connect(f"pubsub:projects/{PROJECT}/topics/{topic}")
    stream = LiveStream(producer, f"projects/{PROJECT}/subscriptions/{sub}", tmp_path / "out")
    try:
        yield stream
    finally:
        if stream.result is not None:
            stream.stop()
        producer.close()
