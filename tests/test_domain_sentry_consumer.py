"""Issue #21: the rules of Sentry's current consumer, in the domain layer.

1. titles (`event_manager._get_updated_group_title`), 2. the stored event (`occurrence_consumer._get_kwargs`),
3. the default priority (`_get_kwargs`, `materialize_metadata`, `get_priority_for_ongoing_group`; the
lifecycle case is in test_domain_lifecycle.py), 4. a status change's `activity_type`
(`status_change_consumer.update_status`), 5. integral numbers (jsonschema's `integer`), 6. the group's
`resolved_at`, `platform` and `assignee` (`update_group_status`, `auto_resolve_project_issues`,
`_create_issue_kwargs`, `save_issue_from_occurrence`), with state version 2.
"""
import itertools

import orjson
import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import ingest_rules
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.grouptype import registry
from issue_platform.ingest_rules import updated_title
from issue_platform.key_state import KeyState, StateVersionError
from issue_platform.pending import Admission, Display, PendingOccurrence, PendingStatusChange, display_digest
from issue_platform.rules_engine import RulesEngine
from issue_platform.snapshot_codec import seed_from_row, snapshot_row, split_seed_record
from issue_platform.tables import ACTIVITY, GROUPS, STATUS_CHANGES, group_row, iso, schema_problem
from issue_platform.validation import PayloadValidator, assignee_identifier

T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
H = 3600.0
KEY = "42:" + "ab" * 16
AUTO = 2001  # LOW, auto-resolve on
EVENT_ID = "a3c1bd1e-5d4c-4b1d-9d7f-3f6d6a0b1c2d"
_ids = itertools.count(0x5000)


class Key:
    def __init__(self):
        self.displays = {}
        self.proc = RulesEngine(KEY, KeyState(), self.displays, registry)

    @property
    def group(self):
        return self.proc.state.group

    def occ(self, t, title="Slow DB", *, platform=None, assignee=None, age=0):
        display = Display(title, "SELECT 1", "app.load", "warning", "production", platform, assignee)
        digest = display_digest(display.encode())
        self.displays[digest] = display
        return self.proc.apply(PendingOccurrence(float(t), f"{next(_ids):032x}", f"{next(_ids):032x}", AUTO, 25,
                                                 digest, (), None, Admission(resolve_age_hours=age)))

    def change(self, t, status, substatus=None, *, activity_type=None, data=None):
        return self.proc.apply(PendingStatusChange(float(t), f"{next(_ids):032x}", status, substatus, True, None,
                                                   data, 0, activity_type))


def rows(out, table):
    return [row for name, row in out if name == table]


def occurrence(**fields):
    """A valid occurrence (with `event`: without `event_id`); `fields` override."""
    payload = {"id": "0f1e2d3c4b5a49788695a4b3c2d1e0f9", "project_id": 42, "fingerprint": ["a"],
               "issue_title": "t", "subtitle": "s", "culprit": "c", "evidence_data": {}, "evidence_display": [],
               "type": 1006, "detection_time": T0, "level": "Warning", "event_id": EVENT_ID}
    if "event" in fields:
        del payload["event_id"]
    return {**payload, **fields}


def event(**fields):
    return {"event_id": EVENT_ID, "project_id": 42, "platform": "python", "environment": "production",
            "received": T0, "tags": {"k": "v"}, "timestamp": T0, **fields}


# --- 1. titles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("existing, incoming, expected", [
    # Sentry's test_get_updated_group_title table, with "" for a missing title (ours is a string)
    ("Dogs are great!", "Adopt don't shop", "Adopt don't shop"),
    ("Dogs are great!", "<untitled>", "Dogs are great!"),
    ("Dogs are great!", "", "Dogs are great!"),
    ("<unlabeled event>", "Adopt don't shop", "Adopt don't shop"),
    ("<unlabeled event>", "<untitled>", "<untitled>"),
    ("<unlabeled event>", "", ""),
    ("", "Adopt don't shop", "Adopt don't shop"),
    ("", "<untitled>", ""),
    ("Real", "Error", "Real"),  # "Error" is one of PLACEHOLDER_EVENT_TITLES
    ("Real", "<unknown>", "Real"),
])
def test_updated_title(existing, incoming, expected):
    assert updated_title(existing, incoming) == expected


def test_an_empty_or_placeholder_title_does_not_overwrite_the_groups_title():
    key = Key()
    key.occ(T0, "N+1 Query")
    key.occ(T0 + 1, "")
    key.occ(T0 + 2, "<untitled>")
    assert key.group.title == "N+1 Query" and key.group.times_seen == 3
    key.occ(T0 + 3, "N+1 Query in /users")
    assert key.group.title == "N+1 Query in /users"


# --- 2. the stored event ----------------------------------------------------------------------------

def test_the_stored_event_is_sentrys_event():
    occ = PayloadValidator("fast").validate(occurrence(event=event(
        secret_key="dropped", exception={"values": []}, contexts={"trace": {"trace_id": "t"}}, release="1.0",
        level="debug", metadata={"title": "sent"})))
    assert occ.event == {
        "event_id": EVENT_ID.replace("-", ""), "level": "warning", "project_id": 42, "platform": "python",
        "received": T0, "tags": {"k": "v"}, "timestamp": T0, "contexts": {"trace": {"trace_id": "t"}},
        "environment": "production", "release": "1.0", "metadata": {"title": "t"}}


def test_an_occurrence_without_an_event_stores_none():
    assert PayloadValidator("fast").validate(occurrence()).event is None


# --- 3. the default priority --------------------------------------------------------------------------

@pytest.mark.parametrize("fields, expected", [
    ({}, 25),  # N+1 (1006): its type's default, LOW
    ({"type": 4001}, 75),  # a HIGH type's default
    ({"priority": 50}, 50),
    ({"initial_issue_priority": 75}, 75),  # the older field, before the default (a deliberate difference)
    ({"priority": 50, "initial_issue_priority": 75}, 50),
    ({"priority": None, "initial_issue_priority": None}, 25),
])
def test_a_missing_priority_is_the_types_default(fields, expected):
    assert PayloadValidator("fast").validate(occurrence(**fields)).priority == expected


# --- 4. activity_type ----------------------------------------------------------------------------------

def test_an_unknown_activity_type_drops_the_status_change():
    key = Key()
    key.occ(T0)
    version = key.group.version
    out = key.change(T0 + 1, S.RESOLVED, activity_type=999)
    assert [(r["outcome"], r["reason"]) for r in rows(out, STATUS_CHANGES)] == [("unknown_activity_type", None)]
    assert rows(out, ACTIVITY) == [] and key.group.status == S.UNRESOLVED and key.group.version == version


@pytest.mark.parametrize("status, substatus", [(S.RESOLVED, None), (S.UNRESOLVED, Sub.NEW), (S.PENDING_DELETION, None)])
def test_an_event_only_activity_type_records_the_activity_and_keeps_the_status(status, substatus):
    """`_record_event_activity`, before the same-status and unsupported-status checks."""
    key = Key()
    key.occ(T0)
    version = key.group.version
    out = key.change(T0 + 1, status, substatus, activity_type=29, data={"run_id": 7})
    assert [r["outcome"] for r in rows(out, STATUS_CHANGES)] == ["activity_recorded"]
    assert [(r["type"], r["data"], r["timestamp"]) for r in rows(out, ACTIVITY)] == [
        ("seer_rca_started", {"run_id": 7}, iso(T0 + 1))]
    assert (key.group.status, key.group.substatus, key.group.version) == (S.UNRESOLVED, Sub.NEW, version)


def test_a_known_status_activity_type_is_not_read():
    """A known type outside the event-only set falls through: the status decides the activity."""
    key = Key()
    key.occ(T0)
    out = key.change(T0 + 1, S.RESOLVED, activity_type=3)  # SET_IGNORED, for a resolve
    assert [r["outcome"] for r in rows(out, STATUS_CHANGES)] == ["applied"]
    assert [r["type"] for r in rows(out, ACTIVITY)] == ["set_resolved"] and key.group.status == S.RESOLVED


def test_without_a_group_the_activity_type_is_not_looked_at():
    out = Key().change(T0, S.RESOLVED, activity_type=999)
    assert [r["outcome"] for r in rows(out, STATUS_CHANGES)] == ["group_not_found"]


# --- 5. integral numbers --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fast", "spec"])
def test_integral_floats_are_accepted_as_integers(mode):
    validator = PayloadValidator(mode)
    occ = validator.validate(occurrence(project_id=42.0, type=1006.0, priority=50.0,
                                        event=event(project_id=42.0)))
    assert (occ.project_id, occ.type, occ.priority, occ.event["project_id"]) == (42, 1006, 50, 42)
    assert all(type(v) is int for v in (occ.project_id, occ.type, occ.priority, occ.event["project_id"]))
    change = validator.validate({"payload_type": "status_change", "fingerprint": ["a"], "project_id": 42.0,
                                 "new_status": 2.0, "new_substatus": 5.0, "detector_id": -7.0,
                                 "activity_type": 29.0})
    assert (change.project_id, change.new_status, change.new_substatus, change.detector_id, change.activity_type) \
        == (42, 2, 5, -7, 29)
    assert all(type(v) is int for v in (change.project_id, change.new_status, change.new_substatus,
                                        change.detector_id, change.activity_type))


def test_an_integral_float_and_its_integer_give_the_same_status_change_id():
    validator = PayloadValidator("fast")
    change = {"payload_type": "status_change", "fingerprint": ["a"], "project_id": 42, "new_status": 1}
    assert validator.validate({**change, "project_id": 42.0}).id == validator.validate(change).id


# --- 6. resolved_at, platform, assignee -------------------------------------------------------------------

def test_resolved_at_is_the_status_changes_time_and_is_kept_after_a_regression():
    key = Key()
    key.occ(T0)
    assert key.group.resolved_at is None
    key.change(T0 + H, S.RESOLVED)
    assert key.group.resolved_at == T0 + H
    out = key.occ(T0 + 2 * H)  # regresses
    assert (key.group.status, key.group.substatus) == (S.UNRESOLVED, Sub.REGRESSED)
    assert key.group.resolved_at == T0 + H  # Sentry never clears it
    assert rows(out, GROUPS) == [] and group_row(key.group)["resolved_at"] == iso(T0 + H)


def test_resolved_at_is_the_auto_resolve_time():
    key = Key()
    key.occ(T0, age=24)
    key.proc.advance_to(T0 + 30 * H)
    assert key.group.status == S.RESOLVED and key.group.resolved_at == T0 + 24 * H


def test_a_group_resolved_once_is_not_resolved_by_age():
    """`Group.get_status`: an UNRESOLVED group past its resolve age reports RESOLVED (and so regresses)
    only if it has never been resolved (`not resolved_at`)."""
    key = Key()
    key.occ(T0, age=24)
    key.change(T0 + 1, S.RESOLVED)
    key.occ(T0 + H, age=24)  # regresses
    gtype = registry.get_by_type_id(AUTO)
    assert not ingest_rules._reports_resolved(key.group, gtype, T0 + 100 * H)
    key.group.resolved_at = None
    assert ingest_rules._reports_resolved(key.group, gtype, T0 + 100 * H)


def test_platform_and_assignee_come_from_the_creating_occurrence():
    key = Key()
    key.occ(T0, platform="python", assignee="team:7")
    key.occ(T0 + 1, platform="java", assignee="user:9")  # an existing group is not reassigned
    assert (key.group.platform, key.group.assignee) == ("python", "team:7")
    row = group_row(key.group)
    assert (row["platform"], row["assignee"], row["resolved_at"]) == ("python", "team:7", None)
    assert schema_problem(GROUPS, row) is None


@pytest.mark.parametrize("value, expected", [
    ("user:12", "user:12"), ("team:3", "team:3"), ("user:007", "user:7"), (12, "user:12"), ("12", "user:12"),
    ("jane@example.com", "jane@example.com"), ("jane", "jane"),  # a user named by e-mail or username
    ("user:abc", None), ("team:", None), ("", None), (None, None), (0, None), (True, None), ([1], None),
])
def test_assignee_identifier(value, expected):
    assert assignee_identifier(value) == expected


def test_an_occurrence_carries_its_events_platform_and_its_assignee():
    occ = PayloadValidator("fast").validate(occurrence(event=event(), assignee="team:7"))
    assert (occ.platform, occ.assignee) == ("python", "team:7")
    assert PayloadValidator("fast").validate(occurrence(assignee={"id": 1})).assignee is None  # still accepted


def test_version_1_state_resumes_with_resolved_at_from_its_status():
    key = Key()
    key.occ(T0, platform="python", assignee="team:7")
    key.change(T0 + H, S.RESOLVED)
    body = orjson.loads(key.proc.state.encode()[1:])
    for name in ("resolved_at", "platform", "assignee"):
        del body["group"][name]
    resumed = KeyState.decode(bytes((1,)) + orjson.dumps(body))
    assert (resumed.group.resolved_at, resumed.group.platform, resumed.group.assignee) == (T0 + H, None, None)
    body["group"]["status"], body["group"]["substatus"] = int(S.UNRESOLVED), int(Sub.ONGOING)
    assert KeyState.decode(bytes((1,)) + orjson.dumps(body)).group.resolved_at is None
    with pytest.raises(StateVersionError, match="do not match version 1"):
        KeyState.decode(bytes((1,)) + key.proc.state.encode()[1:])  # a version-2 body labelled 1


def test_a_version_1_snapshot_row_still_seeds_a_resumed_key():
    """A `state` row written by the previous release (key state version 1) is read, not refused."""
    key = Key()
    key.occ(T0)
    body = orjson.loads(key.proc.state.encode()[1:])
    for name in ("resolved_at", "platform", "assignee"):
        del body["group"][name]
    row = snapshot_row(KEY, bytes((1,)) + orjson.dumps(body), T0, 0, key.group.group_id)
    seeded_key, seed = seed_from_row(row)
    state = KeyState.decode(split_seed_record(seed)[0])
    assert seeded_key == KEY and state.group.times_seen == 1 and state.group.resolved_at is None
