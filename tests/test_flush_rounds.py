"""How many FLUSH rounds a key needs to drain what it buffered (issue_platform/flush.py).

A round is one firing of the key's FLUSH timer, and on a distributed runner each costs a watermark
advance plus a bundle (about a second on Flink), so a backlog must drain in few rounds. The Flusher is
plain Python; `_MemoryCells` holds a key's cells in memory the way the streaming step's Beam state
cells do (that step runs the same Flusher against real state in tests/test_streaming.py and on Flink in
tests/test_flink_streaming.py), and `_drain` fires the timer as a runner does once the watermark has
passed it."""
from __future__ import annotations

import math

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import pending
from issue_platform.flush import BundleKey, Clock, Flusher
from issue_platform.grouptype import registry
from issue_platform.tables import GROUPS, OCCURRENCES
from issue_platform.validation import PayloadValidator

T0 = 1_793_491_200.0
KEY = "42:n+1-users"
QUIET = 2001  # no noise config: the first sighting creates the group


class _MemoryCells:
    """One key's `KeyCells` in memory: a bag, two values and a timer that a new `wake_at` replaces."""

    def __init__(self):
        self.bag, self.encoded, self.clock_bytes, self.timer = [], None, None, None

    def events(self):
        return list(self.bag)

    def add_event(self, record):
        self.bag.append(record)

    def clear_events(self):
        self.bag.clear()

    def state(self):
        return self.encoded

    def write_state(self, encoded):
        self.encoded = encoded

    def clock(self):
        return Clock.decode(self.clock_bytes)

    def write_clock(self, clock):
        self.clock_bytes = None if clock is None else clock.encode()

    def wake_at(self, at):
        self.timer = at


def _records(times):
    """(record, display) of a valid occurrence of one fingerprint at each time."""
    validator = PayloadValidator("fast")
    out = []
    for i, t in enumerate(times):
        occurrence = validator.validate({
            "id": f"{i + 1:032x}", "project_id": 42, "fingerprint": ["n+1-users"], "issue_title": "N+1 Query",
            "subtitle": "SELECT 1", "culprit": "/api/0/users/", "evidence_data": {}, "evidence_display": [],
            "type": QUIET, "detection_time": t, "level": "warning", "event_id": f"{1000 + i:032x}"})
        record, _, display = pending.encode_occurrence(occurrence)
        out.append((record, display))
    return out


def _flusher():
    return Flusher(registry, lambda name: None, as_of=T0 + 3600)  # no transition after the events' hour


def _take_all(flusher, cells, records):
    seen = BundleKey(cells.clock())
    for record, display in records:
        list(flusher.take(KEY, record, display, pending.record_time(record), cells, seen))


def _drain(flusher, cells, watermark):
    """Fires FLUSH while the watermark is past it; returns (rounds, rows)."""
    rounds, rows = 0, []
    while cells.timer is not None and cells.timer <= watermark:
        at, cells.timer = cells.timer, None
        rows += list(flusher.flush(KEY, at, cells))
        rounds += 1
    return rounds, rows


def _table(rows, table):
    return [row for name, row in rows if name == table]


def test_a_backlog_behind_the_watermark_drains_a_minute_of_event_time_per_round():
    """Ten minutes of events, one per second, all already behind the watermark (a restart, a Kafka
    backlog): about ten rounds, not six hundred, with every event applied in order as one flush would."""
    records = _records([T0 + 0.5 + i for i in range(600)])
    flusher, cells = _flusher(), _MemoryCells()
    _take_all(flusher, cells, records)
    rounds, rows = _drain(flusher, cells, watermark=T0 + 3600)
    assert rounds <= 11  # 600 s of events, 60 s (CATCH_UP_SECONDS) per round
    assert cells.bag == [] and cells.timer is None
    at_once = _MemoryCells()
    _take_all(flusher, at_once, records)
    whole = list(flusher.flush(KEY, math.inf, at_once))
    assert _table(rows, OCCURRENCES) == _table(whole, OCCURRENCES)
    assert _table(rows, GROUPS)[-1] == _table(whole, GROUPS)[-1]  # the same group, version 600


def test_a_far_future_event_does_not_hold_back_the_events_before_it():
    """Events a second apart and one dated a day ahead: after the first round the next wakes for the
    second event, not for the day-ahead one."""
    flusher, cells = _flusher(), _MemoryCells()
    _take_all(flusher, cells, _records([T0 + 0.5, T0 + 1.5, T0 + 86_400.5]))
    assert cells.timer == T0 + 1
    list(flusher.flush(KEY, T0 + 1, cells))
    assert cells.timer == T0 + 2


def test_a_live_key_still_flushes_each_event_once_the_watermark_passes_it():
    """The watermark between two waiting events: the first is applied, the second waits for it."""
    flusher, cells = _flusher(), _MemoryCells()
    _take_all(flusher, cells, _records([T0 + 0.5, T0 + 3.5]))
    rounds, rows = _drain(flusher, cells, watermark=T0 + 2)
    assert rounds == 1 and len(_table(rows, OCCURRENCES)) == 1 and cells.timer == T0 + 4
    rounds, rows = _drain(flusher, cells, watermark=T0 + 4)
    assert rounds == 1 and len(_table(rows, OCCURRENCES)) == 1 and cells.bag == []


def test_events_ahead_of_the_wall_clock_in_a_live_stream_are_flushed_second_by_second():
    """A live watermark cannot have passed events the wall clock has not reached: those are not taken
    in together (a detector whose clock runs ahead keeps its latency)."""
    import time

    now = float(int(time.time()))
    flusher, cells = Flusher(registry, lambda name: None, bounded=False), _MemoryCells()
    _take_all(flusher, cells, _records([now + 30.5, now + 31.5, now + 32.5]))
    list(flusher.flush(KEY, now + 31, cells))
    assert cells.timer == now + 32
