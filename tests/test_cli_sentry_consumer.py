"""Issue #21 through the command line, batch and streaming: one input exercises the six rules of Sentry's
current consumer; `issue-platform run` and `issue-platform run --streaming` must give the same
tables, and each rule is checked on both (the domain cases are in test_domain_sentry_consumer.py)."""
from __future__ import annotations

import hashlib

import pytest

from tests.pipeline_support import BASE, canonical, latest_groups, occurrence, read_tables, status_change, write_jsonl
from tests.test_cli import cli

H = 3600.0
EVENT_ID = "a3c1bd1e-5d4c-4b1d-9d7f-3f6d6a0b1c2d"
COMPARED = ("occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter")
MODES = ("batch", "streaming")


def _change(fingerprint, t, status, substatus=None, **extra):
    return {**status_change(fingerprint, status=status, substatus=substatus, t=t), **extra}


def _payloads() -> list:
    event = {"event_id": EVENT_ID, "project_id": 1, "platform": "python", "environment": "production",
             "received": BASE, "tags": {}, "timestamp": BASE, "release": "1.0", "secret_key": "dropped"}
    with_event = occurrence("event", level="Error", event=event, assignee="team:7")
    del with_event["event_id"]
    without_priority = occurrence("prio", t=BASE + 60)
    return [
        # 1. titles
        occurrence("title", title="Real title"), occurrence("title", t=BASE + 60, title=""),
        occurrence("title", t=BASE + 120, title="<untitled>"),
        # 2. the stored event; 6. platform and assignee from the creating occurrence
        with_event, occurrence("event", t=BASE + 60, assignee="user:9"),
        # 3. a group whose latest occurrence had no priority goes back to its type's default (LOW)
        occurrence("prio", priority=75), without_priority,
        _change("prio", BASE + 120, 2, 5), _change("prio", BASE + 180, 0, 2), _change("prio", BASE + 240, 0, 3),
        # 4. activity_type: an event-only type, an unknown one
        occurrence("activity"), _change("activity", BASE + 60, 1, activity_type=29, activity_data={"run": 1}),
        _change("activity", BASE + 120, 1, activity_type=999),
        # 5. integral numbers
        occurrence("integral", project_id=2.0, type_id=2001.0, priority=50.0),
        _change("integral", BASE + 60, 1.0, project_id=2.0), occurrence("integral", t=BASE + 120, type_id=2001.5),
        # 6. resolved_at: set by the status change, kept by the regression
        occurrence("resolved"), _change("resolved", BASE + H, 1), occurrence("resolved", t=BASE + 2 * H),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{mode: tables} for one batch and one streaming CLI run of the same input."""
    tmp = tmp_path_factory.mktemp("sentry-consumer")
    path = write_jsonl(tmp / "in.jsonl", _payloads())
    tables = {}
    for mode in MODES:
        streaming = ["--streaming"] if mode == "streaming" else []
        result = cli("run", "--input", path, "--output", str(tmp / mode), *streaming)
        assert result.returncode == 0, result.stderr[-2000:]
        tables[mode] = read_tables(tmp / mode)
    return tables


def _group(tables, name, project_id=1):
    fingerprint = hashlib.md5(name.encode()).hexdigest()
    return next(g for g in latest_groups(tables["groups"]).values()
                if g["fingerprint"] == fingerprint and g["project_id"] == project_id)


def _rows(tables, table, group):
    return [r for r in tables[table] if r["group_id"] == group["group_id"]]


def test_batch_and_streaming_agree(runs):
    for table in COMPARED:
        assert canonical(runs["batch"][table]) == canonical(runs["streaming"][table]), table
    assert canonical(list(latest_groups(runs["batch"]["groups"]).values())) == canonical(
        list(latest_groups(runs["streaming"]["groups"]).values()))


@pytest.mark.parametrize("mode", MODES)
def test_rule_1_empty_and_placeholder_titles_keep_the_groups_title(runs, mode):
    group = _group(runs[mode], "title")
    assert (group["title"], group["times_seen"]) == ("Real title", 3)


@pytest.mark.parametrize("mode", MODES)
def test_rule_2_the_stored_event_is_sentrys_event(runs, mode):
    (evidence,) = [r for r in runs[mode]["evidence"] if r["event"] is not None]
    assert evidence["event"] == {
        "event_id": EVENT_ID.replace("-", ""), "level": "error", "project_id": 1, "platform": "python",
        "received": BASE, "tags": {}, "timestamp": BASE, "environment": "production", "release": "1.0",
        "metadata": {"title": "File I/O on Main Thread"}}


@pytest.mark.parametrize("mode", MODES)
def test_rule_3_leaving_escalating_restores_the_default_priority(runs, mode):
    tables = runs[mode]
    group = _group(tables, "prio")
    assert (group["status"], group["substatus"], group["priority"]) == (0, 3, 25)
    assert [r["priority"] for r in _rows(tables, "occurrences", group)] in ([75, 25], [25, 75])
    priority_changes = sorted(_rows(tables, "activity", group), key=lambda r: r["timestamp"])
    assert [r["data"] for r in priority_changes if r["type"] == "set_priority"] == [
        {"priority": "low", "reason": "issue_platform"}, {"priority": "medium", "reason": "escalating"},
        {"priority": "low", "reason": "ongoing"}]


@pytest.mark.parametrize("mode", MODES)
def test_rule_4_activity_types(runs, mode):
    tables = runs[mode]
    group = _group(tables, "activity")
    assert sorted(r["outcome"] for r in _rows(tables, "status_changes", group)) == [
        "activity_recorded", "unknown_activity_type"]
    assert [(r["type"], r["data"]) for r in _rows(tables, "activity", group)] == [("seer_rca_started", {"run": 1})]
    assert (group["status"], group["resolved_at"]) == (0, None)


@pytest.mark.parametrize("mode", MODES)
def test_rule_5_integral_numbers_are_integers(runs, mode):
    tables = runs[mode]
    group = _group(tables, "integral", project_id=2)
    assert (group["type"], group["priority"], group["status"]) == (2001, 50, 1)
    assert [r["outcome"] for r in _rows(tables, "status_changes", group)] == ["applied"]
    assert [(r["reason"], r["field"]) for r in tables["dead_letter"]] == [("invalid_type", "type")]


@pytest.mark.parametrize("mode", MODES)
def test_rule_6_resolved_at_platform_and_assignee(runs, mode):
    tables = runs[mode]
    resolved = _group(tables, "resolved")
    assert (resolved["status"], resolved["substatus"]) == (0, 6)  # regressed
    assert resolved["resolved_at"] == "2026-11-01T01:00:00Z"
    assert (resolved["platform"], resolved["assignee"]) == (None, None)  # only an event_id, no assignee
    created = _group(tables, "event")
    assert (created["platform"], created["assignee"], created["resolved_at"]) == ("python", "team:7", None)
