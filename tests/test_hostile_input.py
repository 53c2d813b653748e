"""Hostile input through the real pipeline (FnApiRunner batch and the streaming replay on the
BundleBasedDirectRunner): nothing crashes a run, every record lands in exactly one table, and
rejected records never influence valid ones (issue #7)."""
from __future__ import annotations

import math

import fastavro
import orjson
import pytest

from issue_platform.config import PlatformConfig
from issue_platform.enums import GroupCategory
from issue_platform.grouptype import GroupType, registry
from pipelines.issue_pipeline import run
from pipelines.summary import counters
from tests.pipeline_support import (BASE, canonical, latest_groups, occurrence, read_tables, status_change,
                                    write_jsonl)

CONFIG = PlatformConfig()
COMPARED = ("occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter")


def run_tables(tmp_path, inputs, name, extra=()):
    out = tmp_path / f"out-{name}"
    args = [a for path in inputs for a in ("--input", str(path))]
    result = run([*args, "--output", str(out), *extra], CONFIG)
    return read_tables(out), result


def landed(tables) -> int:
    return len(tables["occurrences"]) + len(tables["status_changes"]) + len(tables["dead_letter"])


def dead_by_field(tables) -> list[tuple[str, str]]:
    return sorted((r["reason"], r["field"] or "") for r in tables["dead_letter"])


# Lines that each crashed a run before issue #7, plus their relatives nobody listed.
HOSTILE_LINES = [
    orjson.dumps(occurrence("big70", project_id=0)).replace(b'"project_id":0', b'"project_id":%d' % 2 ** 70),
    orjson.dumps(occurrence("big-id", project_id=1e300)),
    orjson.dumps(occurrence("u64-id", project_id=2 ** 64 - 1)),
    orjson.dumps(occurrence("u64-evidence", evidence_data={"n": 2 ** 64 - 1})),
    orjson.dumps(status_change("sc-huge", t=1e300)),
    orjson.dumps(status_change("sc-tiny", t=-1e300)),
    orjson.dumps(status_change("sc-9999", t=253402214400)),
    orjson.dumps(occurrence("far", t=1e15)),
    orjson.dumps(occurrence("negative", t=-1e300)),
    orjson.dumps(occurrence("year-9999", t=253402214400)),
]
HOSTILE_FIELDS = [("invalid_value", f) for f in (
    "project_id", "project_id", "project_id", "evidence_data.n", "update_date", "update_date", "update_date",
    "detection_time", "detection_time", "detection_time")]


def _avro_file(path, records, schema):
    with open(path, "wb") as handle:
        fastavro.writer(handle, schema, records)
    return path


def hostile_inputs(tmp_path):
    """A JSON Lines file and two Avro files full of hostile records, and the valid records among them."""
    valid = [occurrence("ok-a", t=BASE + i) for i in range(3)] + [occurrence("ok-b", project_id=2, t=BASE + 50)]
    jsonl = write_jsonl(tmp_path / "hostile.jsonl", [*HOSTILE_LINES, *valid, b"", b"   "])
    wrapped = _avro_file(tmp_path / "wrapped.avro", [{"payload": b""}, {"payload": b"  \n"}],
                         {"type": "record", "name": "P", "fields": [{"name": "payload", "type": "bytes"}]})
    nan = {**occurrence("nan"), "evidence_data": {}, "evidence_display": [], "detection_time": math.nan}
    flat = _avro_file(tmp_path / "flat.avro", [nan], {"type": "record", "name": "Occ", "fields": [
        {"name": k, "type": t} for k, t in [
            ("payload_type", "string"), ("id", "string"), ("project_id", "long"),
            ("fingerprint", {"type": "array", "items": "string"}), ("issue_title", "string"),
            ("subtitle", "string"), ("culprit", "string"), ("type", "long"), ("detection_time", "double"),
            ("level", "string"), ("event_id", "string"), ("evidence_data", {"type": "map", "values": "long"}),
            ("evidence_display", {"type": "array", "items": "string"})]]})
    raw_bytes = _avro_file(tmp_path / "bytes.avro", [{"payload_type": "occurrence", "evidence_data": {"b": b"\x00"}}],
                           {"type": "record", "name": "B", "fields": [
                               {"name": "payload_type", "type": "string"},
                               {"name": "evidence_data", "type": {"type": "map", "values": "bytes"}}]})
    return [jsonl, wrapped, flat, raw_bytes], valid


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_hostile_records_are_dead_lettered_and_change_nothing_else(tmp_path, mode):
    inputs, valid = hostile_inputs(tmp_path)
    extra = ["--streaming"] if mode == "streaming" else []
    tables, result = run_tables(tmp_path, inputs, mode, extra)
    expected = sorted(HOSTILE_FIELDS + [("invalid_json", ""), ("invalid_json", ""),  # the empty Avro payloads
                                        ("invalid_value", "detection_time"),  # the NaN from Avro
                                        ("invalid_type", "evidence_data.b")])  # Avro bytes: not JSON
    assert dead_by_field(tables) == expected
    assert landed(tables) == len(HOSTILE_LINES) + len(valid) + 4  # blank JSON lines are not records
    assert sorted(r["outcome"] for r in tables["occurrences"]) == ["grouped"] * len(valid)
    groups = latest_groups(tables["groups"])
    assert sorted(g["times_seen"] for g in groups.values()) == [1, 3]
    # The default as_of is the latest VALID event (BASE + 50): far-future rejects do not age the groups.
    assert {(g["status"], g["substatus"]) for g in groups.values()} == {(0, 7)}  # unresolved, new
    if mode == "batch":
        totals = counters(result)
        assert totals["records.in"] == landed(tables) and totals["records.blank_lines"] == 2
        assert totals["groups.created"] == 2


def test_batch_and_streaming_agree_on_hostile_input(tmp_path):
    inputs, _ = hostile_inputs(tmp_path)
    batch, _ = run_tables(tmp_path, inputs, "batch")
    stream, _ = run_tables(tmp_path, inputs, "stream", ["--streaming"])
    for table in COMPARED:  # groups: a stream writes a row per flush, so compare the final rows
        assert canonical(batch[table]) == canonical(stream[table]), table
    assert canonical(list(latest_groups(batch["groups"]).values())) == canonical(
        list(latest_groups(stream["groups"]).values()))


def test_rejected_and_far_future_records_do_not_move_the_default_as_of(tmp_path):
    """A dead-lettered record dated 30 days later (rejected for another reason) and a status change
    dated year 9999 must not carry every group past its 7-day NEW -> ONGOING transition."""
    payloads = [occurrence("fresh", t=BASE),
                {**occurrence("bad", t=BASE + 30 * 86400), "issue_title": None},
                status_change("other", t=253402214400.0)]
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], "asof")
    (group,) = latest_groups(tables["groups"]).values()
    assert (group["status"], group["substatus"]) == (0, 7)
    assert not tables["activity"]
    assert dead_by_field(tables) == [("invalid_type", "issue_title"), ("invalid_value", "update_date")]


def test_the_batch_scan_for_as_of_equals_the_latest_valid_event(tmp_path):
    """`latest_valid_time` validates only records that would raise the maximum; it must equal the max
    over every valid record, whatever the invalid ones claim."""
    from issue_platform.generate import generate
    from issue_platform.validation import PayloadValidator
    from pipelines.replay import event_time_range, latest_valid_time, timed

    lines = [*generate(3000, seed=8, invalid_share=0.05, status_change_share=0.02), *HOSTILE_LINES,
             orjson.dumps({**occurrence("late-but-bad", t=BASE + 10 * 86400), "level": 3}),
             orjson.dumps({**status_change("sc-extra", t=BASE + 9 * 86400), "detection_time": BASE + 11 * 86400})]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    validator = PayloadValidator()
    latest = latest_valid_time([path], validator, 1 << 20)
    assert latest == event_time_range(timed([path], validator, 1 << 20))[1] == BASE + 9 * 86400


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_an_input_without_any_event_time_still_runs(tmp_path, mode):
    """Only a status change without update_date: no default as_of to stamp it with."""
    change = {k: v for k, v in status_change("timeless").items() if k != "update_date"}
    extra = ["--streaming"] if mode == "streaming" else []
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", [change])], mode, extra)
    assert [r["outcome"] for r in tables["status_changes"]] == ["group_not_found"]
    assert tables["dead_letter"] == []


def test_dead_letter_errors_never_echo_payload_content(tmp_path):
    secret = 987654321987
    mismatch = occurrence("echo", project_id=secret, event={
        "event_id": "a3c1bd1e5d4c4b1d9d7f3f6d6a0b1c2d", "project_id": secret + 1, "platform": "python",
        "environment": "prod", "received": BASE, "tags": {}, "timestamp": BASE})
    del mismatch["event_id"]
    payloads = [mismatch,
                occurrence("echo", type_id=secret), occurrence("echo", project_id=secret + 0.5),
                status_change("echo", t=secret * 1e3)]
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], "echo")
    assert sorted(r["reason"] for r in tables["dead_letter"]) == [
        "invalid_type", "invalid_value", "project_mismatch", "unknown_group_type"]
    for row in tables["dead_letter"]:
        assert str(secret)[:6] not in row["error"], row["error"]


# ---- a failure of ours inside any step dead-letters the element, never stops the run ---------------

class _Explodes:
    """A group-type setting that raises whenever the pipeline looks at it: a registry entry that breaks."""

    def __bool__(self):
        raise RuntimeError("injected failure")


@pytest.fixture
def fragile_type():
    """A registered, released type whose escalation setting breaks once the group step consults it
    (registered valid, then broken, as a buggy plugin or a bad refresh could)."""
    with registry.scoped():
        fragile = type("Fragile", (GroupType,), {"type_id": 990077, "slug": "fragile_type", "description": "d",
                                                 "category": int(GroupCategory.PERFORMANCE), "released": True})
        fragile.enable_escalation_detection = _Explodes()
        yield fragile


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_a_failure_in_the_group_step_dead_letters_only_the_failing_events(tmp_path, mode, fragile_type):
    payloads = [occurrence("shared", type_id=990077, t=BASE),  # fails: dead-lettered, the key stays empty
                occurrence("shared", type_id=2001, t=BASE + 100),  # then creates the group normally
                occurrence("shared", type_id=2001, t=BASE + 200),
                occurrence("other", type_id=2001, t=BASE + 50)]
    extra = ["--streaming"] if mode == "streaming" else []
    tables, result = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], mode, extra)
    (dead,) = tables["dead_letter"]
    assert (dead["stage"], dead["reason"]) == ("group", "internal_error")
    assert "RuntimeError" in dead["error"] and payloads[0]["id"].replace("-", "") in dead["payload"]
    assert landed(tables) == len(payloads)
    groups = latest_groups(tables["groups"])
    assert sorted((g["type"], g["times_seen"]) for g in groups.values()) == [(2001, 1), (2001, 2)]
    if mode == "batch":
        totals = counters(result)
        assert totals["dead_letter.internal_error"] == 1 and totals["groups.created"] == 2


@pytest.mark.parametrize("mode", ["batch", "streaming"])
def test_a_failure_mid_flush_keeps_the_state_from_just_before_it_and_each_row_once(tmp_path, mode, monkeypatch):
    """The failing event sits between two that succeed in the same flush: the group goes on from its
    state after the first (times_seen 2 in the end, not 3 and not 1), and the first event's rows, emitted
    before the failure, are neither lost nor written again when the step rebuilds the state."""
    from issue_platform import rules_engine

    payloads = [occurrence("mid", type_id=2001, t=BASE), occurrence("mid", type_id=2001, t=BASE + 1),
                occurrence("mid", type_id=2001, t=BASE + 2)]
    failing = payloads[1]["id"].replace("-", "")
    apply = rules_engine.RulesEngine.apply

    def fragile_apply(self, event):
        if event.id == failing:
            self.state.group.times_seen += 100  # half-updated before it fails: must not survive
            raise RuntimeError("injected failure")
        return apply(self, event)

    monkeypatch.setattr(rules_engine.RulesEngine, "apply", fragile_apply)
    extra = ["--streaming"] if mode == "streaming" else []
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], mode, extra)
    (dead,) = tables["dead_letter"]
    assert (dead["stage"], dead["reason"]) == ("group", "internal_error") and failing in dead["payload"]
    assert sorted(r["occurrence_id"] for r in tables["occurrences"]) == sorted(
        p["id"].replace("-", "") for p in (payloads[0], payloads[2]))
    (group,) = latest_groups(tables["groups"]).values()
    assert group["times_seen"] == 2
    assert len([r for r in tables["post_process"] if r["is_new"]]) == 1


def test_several_failures_in_one_flush_each_go_on_from_the_state_just_before_them(tmp_path, monkeypatch):
    """Two of five events fail (the second and the fourth): after each, the group goes on from its state
    just before it (rebuilt from the previous failure's checkpoint), so it counts the other three."""
    from issue_platform import rules_engine

    payloads = [occurrence("twice", type_id=2001, t=BASE + i) for i in range(5)]
    failing = {payloads[i]["id"].replace("-", "") for i in (1, 3)}
    apply = rules_engine.RulesEngine.apply

    def fragile_apply(self, event):
        if event.id in failing:
            self.state.group.times_seen += 100
            raise RuntimeError("injected failure")
        return apply(self, event)

    monkeypatch.setattr(rules_engine.RulesEngine, "apply", fragile_apply)
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], "batch", [])
    assert {failing_id for failing_id in failing if any(failing_id in d["payload"] for d in tables["dead_letter"])} \
        == failing and len(tables["dead_letter"]) == 2
    assert sorted(r["occurrence_id"] for r in tables["occurrences"]) == sorted(
        payloads[i]["id"].replace("-", "") for i in (0, 2, 4))
    (group,) = latest_groups(tables["groups"]).values()
    assert group["times_seen"] == 3


def test_a_failure_in_the_gate_dead_letters_the_element(tmp_path):
    """An unreleased type whose flag name cannot be computed breaks the ingest gate for its events."""
    def broken_flag(cls):
        raise KeyError("injected failure")

    with registry.scoped():
        type("Gated", (GroupType,), {"type_id": 990078, "slug": "gated_type", "description": "d",
                                     "category": int(GroupCategory.PERFORMANCE), "released": False,
                                     "ingest_flag": classmethod(broken_flag)})
        payloads = [occurrence("gated", type_id=990078), occurrence("fine", type_id=2001)]
        tables, result = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], "gate")
    (dead,) = tables["dead_letter"]
    assert (dead["stage"], dead["reason"], dead["field"]) == ("gate", "internal_error", None)
    assert payloads[0]["id"].replace("-", "") in dead["payload"]
    assert [r["outcome"] for r in tables["occurrences"]] == ["grouped"]
    assert counters(result)["dead_letter.internal_error"] == 1


def test_a_failure_while_keying_dead_letters_the_element(tmp_path, monkeypatch):
    """Fault injection: the compact encoder fails for one title (a bug of ours in `KeyByGroup`)."""
    import transforms.parse

    real = transforms.parse.encode_occurrence

    def encode(occ, admission):
        if occ.issue_title == "poison":
            raise ValueError("injected failure")
        return real(occ, admission)

    monkeypatch.setattr(transforms.parse, "encode_occurrence", encode)
    payloads = [occurrence("k", title="poison"), occurrence("k", title="fine", t=BASE + 1)]
    tables, _ = run_tables(tmp_path, [write_jsonl(tmp_path / "in.jsonl", payloads)], "key")
    (dead,) = tables["dead_letter"]
    assert (dead["stage"], dead["reason"]) == ("key", "internal_error")
    assert [r["outcome"] for r in tables["occurrences"]] == ["grouped"]
    assert len(tables["evidence"]) == 1  # the failed element left no half of itself behind
