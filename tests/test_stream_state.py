"""A live stream must not keep state or a timer for every fingerprint it ever saw.

Driven through the real stateful step on the streaming runner with a TestStream: many one-off
fingerprints, then the watermark moves on. What each key still holds is read from the `state` table,
whose newest row per key is the key's state (an empty `state` once the key holds nothing). That the
released key also keeps no timer (a live stream arms no end-of-time timer, `bounded=False`) is not
observable through this runner: it keeps timers internal, and its metric counters under-report
(`keys.released` counts releases on Dataflow and Flink)."""
from __future__ import annotations

import time

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms.window import TimestampedValue

from issue_platform.config import load_config
from issue_platform.tables import iso
from pipelines.issue_pipeline import build_graph
from pipelines.plan import RunPlan
from tests.pipeline_support import BASE, latest_states, occurrence, read_tables
from transforms.sinks import WriteJsonLines

H = 3600.0
NOISY, QUIET = 1006, 2001  # NoiseConfig(3, 24 h) / none: a sighting creates a group


def _live(tmp_path, payloads, watermarks, bounded, config_text=None):
    stream = BeamTestStream().add_elements(
        [TimestampedValue(orjson.dumps(p), p["detection_time"]) for p in payloads])
    for mark in watermarks:
        stream = stream.advance_watermark_to(mark)
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    config = load_config(None)
    if config_text is not None:
        (tmp_path / "config.yaml").write_text(config_text)
        config = load_config(str(tmp_path / "config.yaml"))
    with beam.Pipeline(options=options) as p:
        tables = build_graph(p, RunPlan(config, stream, options, sinks=None, bounded=bounded))
        tables | WriteJsonLines(str(tmp_path))
    return read_tables(tmp_path)


def test_one_off_fingerprints_leave_nothing_behind_in_a_live_stream(tmp_path):
    noisy = [occurrence(f"once-{i}", type_id=NOISY, t=BASE + i) for i in range(60)]
    grouped = [occurrence(f"group-{i}", type_id=QUIET, t=BASE + i) for i in range(5)]
    # No end of time: the watermark only moves past the ids' retention and the noise counters' expiry.
    tables = _live(tmp_path, noisy + grouped, [BASE + 30 * H], bounded=False)
    current = latest_states(tables["state"])
    assert len(current) == 65
    held = {key: row for key, row in current.items() if row["state"]}
    # Only the groups are held (bounded: their recent ids were pruned); every noise-only key is released.
    assert {row["group_id"] for row in held.values()} == {
        row["group_id"] for row in tables["groups"]} and len(held) == 5
    released = [row for row in current.values() if not row["state"]]
    assert len(released) == 60 and all(row["group_id"] is None for row in released)
    # Released when the noise counter expired (24 h after the sighting), not before: until then the
    # key's snapshot holds its count.
    assert all(iso(BASE + 24 * H) <= row["snapshot_at"] <= iso(BASE + 24 * H + 60) for row in released)
    held_counts = [r for r in tables["state"] if r["group_id"] is None and r["state"]]
    assert all(r["snapshot_at"] < iso(BASE + 24 * H) for r in held_counts) and len(held_counts) >= 60
    assert {o["outcome"] for o in tables["occurrences"] if o["type"] == NOISY} == {"noise_suppressed"}


def test_a_drained_live_stream_applies_no_transition_ahead_of_the_wall_clock(tmp_path):
    """Draining moves the watermark to infinity and fires every timer (the TestStream's end does the
    same here). A group seen an hour ago in a project that auto-resolves after 24 h must not come out
    resolved, and its snapshot (what the next job resumes from) must be the unresolved group."""
    now = time.time()
    seen = occurrence("drain", project_id=1, type_id=QUIET, t=now - H)
    tables = _live(tmp_path, [seen], [now - H / 2], bounded=False,
                   config_text='projects:\n  "1": {resolve_age: 24}\n')
    assert [row["type"] for row in tables["activity"]] == []
    assert {row["status"] for row in tables["groups"]} == {0}
    (current,) = latest_states(tables["state"]).values()
    assert current["state"] and current["snapshot_at"] <= iso(now + 60)
