"""Sentry's noise algorithm (`should_create_group`), in event time.

Sentry counts sightings of a not-yet-grouped fingerprint in Redis: `INCR`, then either `DEL` once the
count reaches `ignore_limit` (create the group) or `EXPIRE expiry_seconds` (hold this occurrence
back). The TTL is refreshed on every held-back sighting, so the window slides: the count only
restarts after `expiry_time` passes with no sighting. We keep the same counter per key, with the
TTL as an explicit `expires_at` in event time (`detection_time`), and we use Sentry's corrected
behaviour (PR #94754 deletes the counter it incremented; PR #122042 keeps no counter for types
without a noise config).

Timeline for `NoiseConfig(ignore_limit=3, expiry_time=24h)`:
    t=0h   sighting 1 -> held back, count 1, expires 24h
    t=20h  sighting 2 -> held back, count 2, expires 44h   (the window slid)
    t=43h  sighting 3 -> count 3 reaches the limit: group created, counter gone
and with a gap instead:
    t=0h   sighting 1 -> held back, count 1, expires 24h
    t=24h  sighting 2 -> the counter expired at 24h: count restarts at 1, expires 48h
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from issue_platform.grouptype import NoiseConfig


class NoiseCounter(NamedTuple):
    count: int
    expires_at: float  # event time (unix seconds) at which the counter is forgotten


def should_create_group(
    counter: Optional[NoiseCounter], detection_time: float, config: Optional[NoiseConfig]
) -> tuple[bool, Optional[NoiseCounter]]:
    """One sighting of a fingerprint that has no group yet: (create the group?, the new counter)."""
    if config is None:
        return True, None
    if counter is not None and detection_time >= counter.expires_at:
        counter = None
    count = (counter.count if counter is not None else 0) + 1
    if count >= config.ignore_limit:
        return True, None
    return False, NoiseCounter(count, detection_time + config.expiry_seconds)


def is_expired(counter: Optional[NoiseCounter], now: float) -> bool:
    """Whether an event-time clock at `now` has passed the counter's expiry (state may be cleared)."""
    return counter is not None and now >= counter.expires_at
