"""The process-wide config cache: real files, an injected clock. Re-read only when the copy is older
than the TTL and the file's (mtime, size) changed; a bad new version is refused (logged without its
content, reported) and the last good one stays."""
import logging
import os

import pytest

from issue_platform.config import load_config
from issue_platform.config_cache import REFUSED, RELOADED, ConfigCache

FLAG = "feature.organizations:issue-performance-n-plus-one-db-queries-experimental-ingest"
TTL = 60.0


def _config_text(resolve_age: int, rollout: int = 0) -> str:
    return f"""
projects:
  "1": {{resolve_age: {resolve_age}, organization: {{id: 1, slug: acme}}}}
features:
  {FLAG}:
    created_at: "2026-11-01"
    enabled: true
    owner: {{team: perf}}
    segments: [{{name: GA, conditions: [], rollout: {rollout}}}]
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Files:
    """Real files; counts the opens so a test can tell whether the cache re-read one."""

    def __init__(self):
        self.opens = 0

    def open(self, path):
        self.opens += 1
        return open(path, "rb")

    @staticmethod
    def stat(path):
        info = os.stat(path)
        return info.st_mtime, info.st_size


def _write(path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))  # explicit: two writes within one clock tick must still differ


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "config.yaml"
    _write(path, _config_text(24), 1_000_000)
    clock, files = Clock(), Files()
    cache = ConfigCache(clock)
    launched = load_config(str(path))

    def get():
        return cache.get(launched, TTL, files.open, files.stat)

    return path, clock, files, get


def test_reads_again_only_after_the_ttl_and_only_if_the_file_changed(setup):
    path, clock, files, get = setup
    config, outcome = get()  # first look in this process: loads the file it was given
    assert (config.project(1).resolve_age_hours, outcome, files.opens) == (24, None, 1)
    _write(path, _config_text(48), 1_000_010)
    clock.now += TTL - 1
    assert get()[0].project(1).resolve_age_hours == 24 and files.opens == 1  # copy still fresh
    clock.now += 1
    config, outcome = get()
    assert (config.project(1).resolve_age_hours, outcome, files.opens) == (48, RELOADED, 2)
    clock.now += TTL
    assert get() == (config, None) and files.opens == 2  # same mtime and size: not read


def test_flags_change_with_the_file(setup):
    path, clock, files, get = setup
    from issue_platform.grouptype import registry

    gtype = registry.get_by_type_id(1906)  # unreleased: gated by its flags
    assert not get()[0].allows(gtype, "ingest", 1)
    _write(path, _config_text(24, rollout=100), 1_000_010)
    clock.now += TTL
    config, outcome = get()
    assert outcome == RELOADED and config.allows(gtype, "ingest", 1)


@pytest.mark.parametrize("bad", [
    "projects: [unclosed",                                              # YAML syntax
    'projects: {"1": {resolve_age: "SECRET-VALUE"}}',                   # invalid field
    "group_types: [{type_id: 900001, slug: t, description: d, category: CRON}]",  # types are fixed
    None,                                                               # file removed
])
def test_a_bad_new_version_is_refused_and_the_last_good_one_kept(setup, caplog, bad):
    path, clock, files, get = setup
    good, _ = get()
    if bad is None:
        path.unlink()
    else:
        _write(path, bad, 1_000_010)
    clock.now += TTL
    with caplog.at_level(logging.WARNING):
        assert get() == (good, REFUSED)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "new version refused" in caplog.text and "SECRET" not in caplog.text
    clock.now += 1
    assert get() == (good, None)  # within the TTL: no second attempt, no second log line
    clock.now += TTL
    with caplog.at_level(logging.WARNING):
        assert get() == (good, None)  # the same bad version: not refused (nor logged) again
    assert len(caplog.records) == 1
    _write(path, _config_text(72), 1_000_020)  # fixed: picked up at the next check
    clock.now += TTL
    config, outcome = get()
    assert (config.project(1).resolve_age_hours, outcome) == (72, RELOADED)


def test_without_a_config_file_nothing_is_read():
    files, launched = Files(), load_config(None)
    assert ConfigCache(Clock()).get(launched, TTL, files.open, files.stat) == (launched, None)
    assert files.opens == 0


def test_live_stream_sees_a_config_rewritten_mid_stream(pubsub_emulator, tmp_path):
    """Streaming pipeline on the Pub/Sub emulator with --config_refresh_seconds 1: type 1906 is
    unreleased; its ingest flag is off, then the file is rewritten with the flag at 100 %. Messages
    sent before are `ingest_disabled`; messages sent after the refresh are ingested."""
    import time

    from issue_platform.producer import IssueOccurrence, PayloadType
    from live_support import live_stream

    path = tmp_path / "config.yaml"
    _write(path, _config_text(24, rollout=0), 1_000_000)

    def send(fingerprint: str, count: int) -> None:
        for i in range(count):
            stream.producer.produce(PayloadType.OCCURRENCE, occurrence=IssueOccurrence(
                project_id=1, fingerprint=[fingerprint], issue_title="N+1", subtitle="s", culprit="c", type=1906,
                detection_time=time.time() - 60 + i))
        stream.producer.flush(10)

    def outcomes(tables, fingerprint: str) -> list[str]:
        from issue_platform.fingerprint import hash_fingerprint

        primary = hash_fingerprint([fingerprint])[0]
        return [r["outcome"] for r in tables["occurrences"] if r["fingerprint"][0] == primary]

    with live_stream(tmp_path) as stream:
        send("before", 2)
        stream.start("--config_refresh_seconds", "1", config_path=path)
        tables = stream.wait_for(lambda t: len(outcomes(t, "before")) == 2)
        assert outcomes(tables, "before") == ["ingest_disabled"] * 2
        _write(path, _config_text(24, rollout=100), 1_000_010)
        time.sleep(1.5)  # older than the refresh interval: the next message's gate re-reads the file
        send("after", 3)  # 1906's noise config holds 3 sightings back: the third creates the group
        tables = stream.wait_for(lambda t: len(outcomes(t, "after")) == 3)
    assert sorted(outcomes(tables, "after")) == ["grouped", "noise_suppressed", "noise_suppressed"]
    assert outcomes(tables, "before") == ["ingest_disabled"] * 2  # nothing flipped back
