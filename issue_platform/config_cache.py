"""A process-wide cache of config files, so a long-running stream sees flag and project changes.

Side inputs that refresh cannot be tested on any local runner, so the ingest gate asks this cache
instead: `cache.get(path, ...)` returns the cached `PlatformConfig` while its copy is younger than
`ttl` seconds; after that it compares the file's (mtime, size) with the copy's and re-reads the file
only if they changed. A new version that does not load (a syntax error, a bad field, a changed
`group_types` section, an unreadable file) is refused: the last good version stays in use, the
refusal is logged without the file's content and reported to the caller so it can count it, once
per version (the same bad file is not read, logged or counted again). Nothing here raises on a bad
file.

One cache per process (`CACHE`) serves every DoFn instance and thread: runners re-create DoFns per
bundle, and a per-instance copy would re-read the file each time.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from issue_platform.config import ConfigError, PlatformConfig, load_config

_LOGGER = logging.getLogger(__name__)

RELOADED, REFUSED = "reloaded", "refused"
Stamp = tuple[float, int]  # (modification time, size in bytes)


@dataclass
class _Entry:
    config: PlatformConfig
    stamp: Optional[Stamp]
    checked_at: float
    refused: object = None  # the stamp of the version last refused ("missing": no file): refused once


class ConfigCache:
    """`clock` returns seconds (monotonic by default; tests inject their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._entries: dict[tuple[str, tuple[str, ...]], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, current: PlatformConfig, ttl: float, opener: Callable[[str], Any],
            stat: Callable[[str], Stamp]) -> tuple[PlatformConfig, Optional[str]]:
        """The newest good version of `current`'s file and what this call did (`RELOADED`,
        `REFUSED` or None). `current` (the version loaded at start) seeds the cache; it is checked
        against the file on the first call. `opener` opens the path for binary reading and `stat`
        returns its (mtime, size): the pipeline passes Beam's FileSystems, so any Beam path works."""
        path = current.source
        if path is None:
            return current, None
        key = (path, current.group_types_modules)
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(current, None, now - ttl)
            if now - entry.checked_at < ttl:
                return entry.config, None
            entry.checked_at = now
            try:
                stamp = stat(path)
            except Exception:  # removed or unreadable: refused below, once while it stays so
                stamp = "missing"
            if stamp == entry.stamp or stamp == entry.refused:
                return entry.config, None
            try:
                if stamp == "missing":
                    stat(path)  # raises again, with its own error
                config = load_config(path, current.group_types_modules, opener)
                if config.group_types != entry.config.group_types:
                    raise ConfigError("group_types changed (types are fixed while a job runs)")
            except Exception as exc:  # a bad or unreadable file must never stop the stream
                _LOGGER.warning("config %s: new version refused (%s); keeping the version loaded at %s",
                                path, type(exc).__name__, time.strftime(
                                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.config.loaded_at)))
                entry.refused = stamp
                return entry.config, REFUSED
            previous = entry.stamp
            entry.config, entry.stamp = config, stamp
            # The first check only learns the stamp of the version we already have.
            return config, (RELOADED if previous is not None else None)


CACHE = ConfigCache()
