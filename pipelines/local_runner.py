"""The local runner (BundleBasedDirectRunner), tuned for a developer's live stream.

Beam's DirectRunner reads a subscription with one synchronous pull per bundle, of at most 10
messages, that waits up to 30 s on an idle subscription, on its one worker thread; the watermark is
the wall clock at each pull. Measured on the local stack (bench/live_bench.py): a burst landed at
~5 messages/s, and a message published just after a pull returned waited out the next, idle, pull
(p99 31 s) before its key's event-time flush could fire, with nothing else running meanwhile.

For a live job on the local runner we pull up to `PULL_MESSAGES` at a time and wait at most
`PULL_SECONDS` for them, so the watermark moves at least that often and a burst travels in bundles
of that size. The runner acknowledges a pull before processing it (Beam's code, unchanged): a killed
job loses at most one pull, `PULL_MESSAGES` messages (see the README). Dataflow and Flink read Pub/Sub
their own way and are not affected.

It also copies every DoFn through pickle at the start of every bundle (a check that DoFns pickle,
which every test run already makes): a quarter of a local stream's time (py-spy), and it defeats
`dofn_signatures_cached`, which then holds each copy for the rest of the process (a leak in a long
stream). Live jobs on the local runner skip that copy.
"""
from __future__ import annotations

import threading

from pipelines import runner_tuning
from pipelines.runner_tuning import STREAMING_RUNNER

PULL_MESSAGES = 100
PULL_SECONDS = 1.0
_LOCK = threading.Lock()
_INSTALLED = []


def _read_from_pubsub(self, timestamp_attribute):
    """`_PubSubReadEvaluator._read_from_pubsub` with our pull size and wait; messages take their
    publish time (ReadFromPubSubSubscription stamps event times itself)."""
    from apache_beam.io.gcp.pubsub import PubsubMessage
    from apache_beam.utils.timestamp import Timestamp
    from google.api_core.exceptions import DeadlineExceeded

    if timestamp_attribute:  # not ours: Beam's own reading
        return _INSTALLED[0](self, timestamp_attribute)
    client = _subscriber()
    try:
        received = client.pull(subscription=self._sub_name, max_messages=PULL_MESSAGES,
                               timeout=PULL_SECONDS).received_messages
    except DeadlineExceeded:  # nothing within PULL_SECONDS: the runner moves the watermark on anyway
        return []
    if received:
        client.acknowledge(subscription=self._sub_name, ack_ids=[m.ack_id for m in received])
    return [(Timestamp.from_utc_datetime(m.message.publish_time), PubsubMessage._from_message(m.message))
            for m in received]


LOCAL_RUNNERS = ("DirectRunner", STREAMING_RUNNER)


def install_for(plan) -> None:
    """`install` if `plan` (a `pipelines.plan.RunPlan`) reads Pub/Sub on the local runner."""
    from transforms.sources import ReadFromPubSubSubscription

    if plan.runner in LOCAL_RUNNERS and isinstance(plan.source, ReadFromPubSubSubscription):
        install()


def _subscriber():
    """One subscriber client per process and emulator host (Beam 2.62 makes one per pull)."""
    import os

    from google.cloud import pubsub

    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    with _LOCK:
        if host not in _SUBSCRIBERS:
            _SUBSCRIBERS[host] = pubsub.SubscriberClient()
        return _SUBSCRIBERS[host]


_SUBSCRIBERS: dict = {}


def install() -> None:
    """Our pull, no per-bundle pickle copy of DoFns and cached DoFn signatures, for the rest of the
    process (a submitted job runs after `submit` returns)."""
    from apache_beam.runners.direct.transform_evaluator import _ParDoEvaluator, _PubSubReadEvaluator

    with _LOCK:
        if not _INSTALLED:
            _INSTALLED.append(_PubSubReadEvaluator._read_from_pubsub)
            _PubSubReadEvaluator._read_from_pubsub = _read_from_pubsub
            # `execute` caches DoFn signatures for its run; a submitted job runs on after `submit`
            # returns, so the cache stays for the process (the runner re-reads them per bundle).
            cache = runner_tuning.dofn_signatures_cached()
            cache.__enter__()
            _INSTALLED.append(cache)  # held: a collected context manager would exit and undo the patch
            init = _ParDoEvaluator.__init__

            def without_pickle_copy(self, *args, perform_dofn_pickle_test=True, **kwargs):
                init(self, *args, perform_dofn_pickle_test=False, **kwargs)

            _ParDoEvaluator.__init__ = without_pickle_copy


__all__ = ["install", "install_for", "LOCAL_RUNNERS", "PULL_MESSAGES", "PULL_SECONDS"]
