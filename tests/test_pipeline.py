"""The batch pipeline end to end on the FnApiRunner: composites with assert_that, and whole runs
over files whose output tables are read back."""
from __future__ import annotations

import contextlib
import random
import re

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from issue_platform.config import PlatformConfig
from issue_platform.generate import generate
from pipelines.issue_pipeline import run
from pipelines.runner_tuning import BATCH_RUNNER
from pipelines.summary import counters
from transforms.parse import GateIngest, ParsePayloads
from tests.pipeline_support import (BASE, canonical, latest_groups, occurrence, read_tables, status_change,
                                    write_jsonl)

CONFIG = PlatformConfig()


def _runner_options():
    return PipelineOptions([f"--runner={BATCH_RUNNER}"])


def run_files(tmp_path, payloads, name="in.jsonl", extra=()):
    path = write_jsonl(tmp_path / name, payloads)
    out = tmp_path / f"out-{name}"
    result = run(["--input", path, "--output", str(out), *extra], CONFIG)
    return read_tables(out), counters(result)


# ---- composites -------------------------------------------------------------------------------

def test_parse_payloads_splits_valid_and_dead_letter():
    good = occurrence()
    with BeamTestPipeline(options=_runner_options()) as p:
        parsed = p | beam.Create([orjson.dumps(good), b"{nope", b"[1]"]) | ParsePayloads(CONFIG)
        assert_that(parsed.valid | beam.Map(lambda o: o.id), equal_to([good["id"].replace("-", "")]), label="Valid")
        assert_that(parsed.dead_letter | beam.Map(lambda r: (r["stage"], r["reason"])),
                    equal_to([("parse", "invalid_json"), ("parse", "not_an_object")]), label="Dead")


def test_gate_ingest_drops_unreleased_types_but_not_status_changes():
    from issue_platform.validation import PayloadValidator

    validator = PayloadValidator()
    unreleased = validator.validate(occurrence(type_id=1906))
    released = validator.validate(occurrence(type_id=2001))
    change = validator.validate(status_change())
    with BeamTestPipeline(options=_runner_options()) as p:
        gated = p | beam.Create([unreleased, released, change]) | GateIngest(CONFIG)
        assert_that(gated.allowed | beam.Map(lambda x: x[0].id), equal_to([released.id, change.id]), label="Allowed")
        assert_that(gated.occurrences | beam.Map(lambda r: (r["occurrence_id"], r["outcome"], r["group_id"])),
                    equal_to([(unreleased.id, "ingest_disabled", None)]), label="Dropped")


# ---- whole runs -------------------------------------------------------------------------------

def test_noise_threshold_creates_group_on_nth_occurrence(tmp_path):
    # 1006 (N+1 queries) has NoiseConfig(3, 24h): the 3rd sighting creates the group.
    payloads = [occurrence("noisy", type_id=1006, t=BASE + 60 * i) for i in range(5)]
    tables, _ = run_files(tmp_path, reversed(payloads))
    outcome = {r["occurrence_id"]: r["outcome"] for r in tables["occurrences"]}
    assert [outcome[p["id"].replace("-", "")] for p in payloads] == [
        "noise_suppressed", "noise_suppressed", "grouped", "grouped", "grouped"]
    (group,) = latest_groups(tables["groups"]).values()
    assert (group["times_seen"], group["status"], group["substatus"]) == (3, 0, 7)
    assert group["first_seen"] == "2026-11-01T00:02:00Z"
    assert [m["is_new"] for m in sorted(tables["post_process"], key=lambda m: m["occurrence_id"])].count(True) == 1


def test_noise_counter_resets_after_idle_expiry(tmp_path):
    day = 86400
    # Two sightings, then a gap of exactly expiry_time after the last one: the count restarts, so
    # three more are needed (without the reset the 3rd sighting would have created the group).
    payloads = [occurrence("idle", type_id=1006, t=BASE + t) for t in (0, 100, day + 100, day + 200, day + 300)]
    tables, _ = run_files(tmp_path, payloads)
    by_time = sorted(tables["occurrences"], key=lambda r: r["detection_time"])
    assert [r["outcome"] for r in by_time] == ["noise_suppressed"] * 4 + ["grouped"]


def test_shuffled_input_gives_identical_outputs(tmp_path):
    lines = list(generate(3000, seed=11))
    first, _ = run_files(tmp_path, lines, "ordered.jsonl")
    random.Random(5).shuffle(lines)
    second, _ = run_files(tmp_path, lines, "shuffled.jsonl")
    for name, tables in (("ordered.jsonl", first), ("shuffled.jsonl", second)):  # file and line differ
        sources = [row.pop("source") for row in tables["dead_letter"]]
        assert sources and all(re.fullmatch(rf".*{name}:\d+", source) for source in sources)
    for table in ("groups", "occurrences", "status_changes", "post_process", "evidence", "dead_letter"):
        assert canonical(first[table]) == canonical(second[table]), table
    assert first["groups"], "the fixture must create groups"


def test_every_record_lands_in_exactly_one_outcome_table(tmp_path):
    lines = list(generate(4000, seed=2, invalid_share=0.02, duplicate_share=0.02, status_change_share=0.01))
    tables, totals = run_files(tmp_path, lines)
    landed = len(tables["occurrences"]) + len(tables["status_changes"]) + len(tables["dead_letter"])
    assert landed == len(lines) == totals["records.in"]
    ids = [r["occurrence_id"] for r in tables["occurrences"]]
    outcomes = {r["outcome"] for r in tables["occurrences"]}
    assert {"grouped", "noise_suppressed", "duplicate", "ingest_disabled"} <= outcomes
    assert sum(v for k, v in totals.items() if k.startswith("occurrences.")) == len(ids)
    assert sum(v for k, v in totals.items() if k.startswith("dead_letter.")) == len(tables["dead_letter"])
    grouped = [r for r in tables["occurrences"] if r["outcome"] == "grouped"]
    assert len(tables["post_process"]) == len(grouped) == totals["occurrences.grouped"]
    groups = latest_groups(tables["groups"])
    assert sum(g["times_seen"] for g in groups.values()) == len(grouped)


def test_output_contract(tmp_path):
    payloads = [occurrence("contract", t=BASE + i, title=f"title {i}") for i in range(3)]
    payloads.append(b'{"broken"')
    tables, _ = run_files(tmp_path, payloads)
    group = latest_groups(tables["groups"]).popitem()[1]
    assert set(group) >= {"group_id", "project_id", "type", "fingerprint", "title", "subtitle", "culprit",
                          "level", "priority", "status", "substatus", "first_seen", "last_seen", "times_seen",
                          "version"}
    assert group["title"] == "title 2"  # follows the latest occurrence
    assert group["priority"] == 25  # 2001's default (LOW)
    occ = tables["occurrences"][0]
    assert set(occ) >= {"occurrence_id", "project_id", "group_id", "outcome", "type", "fingerprint",
                        "detection_time"}
    message = tables["post_process"][0]
    assert set(message) == {"group_id", "occurrence_id", "project_id", "event_id", "primary_hash", "group_type",
                            "is_new", "is_regression", "is_new_group_environment"}
    (dead,) = tables["dead_letter"]
    assert (dead["stage"], dead["reason"], dead["payload"]) == ("parse", "invalid_json", '{"broken"')
    evidence = {e["occurrence_id"] for e in tables["evidence"]}
    assert evidence == {r["occurrence_id"] for r in tables["occurrences"]}


def test_group_ids_are_stable_across_runs(tmp_path):
    payloads = [occurrence("stable", project_id=7, t=BASE)]
    first, _ = run_files(tmp_path, payloads, "a.jsonl")
    second, _ = run_files(tmp_path, [occurrence("stable", project_id=7, t=BASE + 5)], "b.jsonl")
    assert first["groups"][0]["group_id"] == second["groups"][0]["group_id"]


def test_duplicates_never_double_count(tmp_path):
    payload = occurrence("dup", t=BASE)
    tables, totals = run_files(tmp_path, [payload, payload, payload])
    assert sorted(r["outcome"] for r in tables["occurrences"]) == ["duplicate", "duplicate", "grouped"]
    assert latest_groups(tables["groups"]).popitem()[1]["times_seen"] == 1
    assert totals["occurrences.duplicate"] == 2


def test_type_mismatch_is_dropped(tmp_path):
    payloads = [occurrence("mixed", type_id=2001, t=BASE), occurrence("mixed", type_id=2003, t=BASE + 1)]
    tables, _ = run_files(tmp_path, payloads)
    assert sorted(r["outcome"] for r in tables["occurrences"]) == ["grouped", "type_mismatch"]


def test_state_cache_workaround_does_not_change_results(tmp_path, monkeypatch):
    from pipelines import runner_tuning

    lines = list(generate(1500, seed=4))
    off, _ = run_files(tmp_path, lines, "off.jsonl")
    monkeypatch.setattr(runner_tuning, "fnapi_state_cache_off", lambda runner: contextlib.nullcontext())
    on, _ = run_files(tmp_path, lines, "on.jsonl")
    for table in ("groups", "occurrences", "post_process"):
        assert canonical(off[table]) == canonical(on[table]), table


def test_avro_and_gzip_inputs(tmp_path):
    import gzip

    import fastavro

    payloads = [occurrence("formats", t=BASE + i) for i in range(3)]
    gz_path = tmp_path / "in.jsonl.gz"
    with gzip.open(gz_path, "wb") as handle:
        handle.write(orjson.dumps(payloads[0]) + b"\n")
    wrapped = tmp_path / "wrapped.avro"
    with open(wrapped, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "bytes"}]},
                        [{"payload": orjson.dumps(payloads[1])}])
    flat = tmp_path / "flat.avro"
    schema = {"type": "record", "name": "Occ", "fields": [
        {"name": k, "type": t} for k, t in [
            ("id", "string"), ("project_id", "long"), ("fingerprint", {"type": "array", "items": "string"}),
            ("issue_title", "string"), ("subtitle", "string"), ("culprit", "string"), ("type", "long"),
            ("detection_time", "double"), ("level", "string"), ("event_id", "string"),
            ("evidence_data", {"type": "map", "values": "long"}),
            ("evidence_display", {"type": "array", "items": {"type": "record", "name": "Ev", "fields": [
                {"name": "name", "type": "string"}, {"name": "value", "type": "string"},
                {"name": "important", "type": "boolean"}]}}),
            ("resource_id", ["null", "string"])]]}
    with open(flat, "wb") as handle:
        fastavro.writer(handle, schema, [{**payloads[2], "resource_id": None}])
    out = tmp_path / "out"
    run(["--input", str(gz_path), "--input", str(wrapped), "--input", str(flat), "--output", str(out)], CONFIG)
    tables = read_tables(out)
    assert sorted(r["outcome"] for r in tables["occurrences"]) == ["grouped"] * 3
    assert not tables["dead_letter"]


def test_config_type_is_used_by_the_pipeline(tmp_path):
    from issue_platform.config import load_config
    from issue_platform.grouptype import registry

    config_file = tmp_path / "types.yaml"
    config_file.write_text("group_types:\n  - {type_id: 990001, slug: cron_late, description: Late cron,"
                           " category: CRON, released: true, noise_config: {ignore_limit: 2, expiry_time: 1h}}\n")
    with registry.scoped():
        payloads = [occurrence("late", type_id=990001, t=BASE + i * 60) for i in range(3)]
        path = write_jsonl(tmp_path / "in.jsonl", payloads)
        run(["--input", path, "--output", str(tmp_path / "out")], load_config(str(config_file)))
        tables = read_tables(tmp_path / "out")
    assert [r["outcome"] for r in sorted(tables["occurrences"], key=lambda r: r["detection_time"])] == [
        "noise_suppressed", "grouped", "grouped"]


@pytest.mark.parametrize("bad, reason", [(b"\xff\xfe not utf-8", "invalid_json"),
                                         (b"x" * 3000, "payload_too_large"),
                                         (b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep")])
def test_hostile_lines_are_dead_lettered_not_fatal(tmp_path, bad, reason):
    tables, _ = run_files(tmp_path, [bad, occurrence("ok")], extra=["--max_payload_bytes", "2000"])
    assert [r["reason"] for r in tables["dead_letter"]] == [reason]
    assert [r["outcome"] for r in tables["occurrences"]] == ["grouped"]
