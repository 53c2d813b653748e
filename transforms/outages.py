"""Outages of the servers a job writes to, logged once when they start and once when they end.

A sink that retries (the post-process topics, BigQuery's streaming inserts) reports each failure
with `failing(name, error)` and each success with `recovered(name)`: the first failure logs one
warning, later ones only count, and the first success after them logs how long the outage lasted,
how many retries it took and how many messages were kept aside. Shared by the process's threads.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

_LOGGER = logging.getLogger(__name__)


@dataclass
class Outage:
    since: float
    error: str
    retries: int = 0
    kept: int = 0


_OUTAGES: dict = {}
_LOCK = threading.Lock()


def in_outage(name: str) -> bool:
    return name in _OUTAGES


def failing(name: str, error: str, retries: int = 0, kept: int = 0, then: str = "retrying") -> None:
    """`name` failed (`error`, one line); count `retries` and `kept` (messages set aside)."""
    with _LOCK:
        outage = _OUTAGES.get(name)
        if outage is None:
            outage = _OUTAGES[name] = Outage(time.monotonic(), error)
            _LOGGER.warning("%s: failing (%s); %s", name, error, then)
        outage.retries += retries
        outage.kept += kept


def recovered(name: str) -> None:
    with _LOCK:
        outage = _OUTAGES.pop(name, None)
    if outage is not None:
        kept = f", {outage.kept} message(s) kept in table undelivered" if outage.kept else ""
        _LOGGER.warning("%s: working again after %.0f s; %d retries%s", name, time.monotonic() - outage.since,
                        outage.retries, kept)


__all__ = ["failing", "recovered", "in_outage", "Outage"]
