"""Status changes through RulesEngine: the rules table of reference §6.5."""
import itertools

import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.rules_engine import RulesEngine, KeyState
from issue_platform.status_rules import APPLIED, GROUP_NOT_FOUND, INVALID_TRANSITION, NO_OP, UNSUPPORTED_STATUS
from issue_platform.grouptype import registry
from issue_platform.pending import Display, PendingOccurrence, PendingStatusChange, display_digest
from issue_platform.tables import ACTIVITY, STATUS_CHANGES, group_row

T0 = 1_793_491_200.0
KEY = "42:" + "cd" * 16
QUIET = 2001  # no noise config: the first occurrence creates the group
DISPLAY = Display("File I/O on Main Thread", "open()", "app.load", "warning", "production")
DIGEST = display_digest(DISPLAY.encode())
NEW_GROUP = (S.UNRESOLVED, Sub.NEW)


def processor(initial=None):
    """A processor for a key with a group in state `initial` (status, substatus), or no group."""
    proc = RulesEngine(KEY, KeyState(), {DIGEST: DISPLAY}, registry)
    if initial is not None:
        proc.apply(PendingOccurrence(T0, "1" * 32, "2" * 32, QUIET, 25, DIGEST, (), None))
        group = proc.state.group
        group.status, group.substatus = initial
    return proc


_ids = itertools.count(0x3000)


def change(proc, status, substatus=None, t=T0 + 60, change_id=None):
    rows = proc.apply(PendingStatusChange(t, change_id or f"{next(_ids):032x}", status, substatus, True, None, None))
    (row,) = [row for table, row in rows if table == STATUS_CHANGES]
    assert all(table == ACTIVITY for table, _ in rows if table != STATUS_CHANGES)
    return row


IGNORED_SUBSTATUSES = [Sub.UNTIL_ESCALATING, Sub.UNTIL_CONDITION_MET, Sub.FOREVER]
UNRESOLVED_STATES = [(S.UNRESOLVED, s) for s in (Sub.NEW, Sub.ONGOING, Sub.ESCALATING, Sub.REGRESSED)]
IGNORED_STATES = [(S.IGNORED, s) for s in IGNORED_SUBSTATUSES]
ALL_STATES = UNRESOLVED_STATES + IGNORED_STATES + [(S.RESOLVED, None)]


@pytest.mark.parametrize("status, substatus", [(0, 3), (1, None), (2, 5), (0, 2), (3, None), (0, 7)])
def test_group_not_found_never_creates_a_group(status, substatus):
    proc = processor()
    row = change(proc, status, substatus)
    assert row["outcome"] == GROUP_NOT_FOUND and row["group_id"] is None
    assert proc.state.group is None
    assert proc.finish() == []


@pytest.mark.parametrize("initial", [s for s in ALL_STATES if s[0] != S.RESOLVED])
def test_resolved_without_substatus_is_applied(initial):
    proc = processor(initial)
    row = change(proc, S.RESOLVED)
    assert row["outcome"] == APPLIED
    assert (proc.state.group.status, proc.state.group.substatus) == (S.RESOLVED, None)


@pytest.mark.parametrize("substatus", list(Sub))
def test_resolved_with_a_substatus_is_invalid(substatus):
    proc = processor(NEW_GROUP)
    assert change(proc, S.RESOLVED, substatus)["outcome"] == INVALID_TRANSITION
    assert (proc.state.group.status, proc.state.group.substatus) == NEW_GROUP


@pytest.mark.parametrize("substatus", IGNORED_SUBSTATUSES)
@pytest.mark.parametrize("initial", UNRESOLVED_STATES + [(S.RESOLVED, None)])
def test_ignored_with_1_4_5_is_applied(initial, substatus):
    proc = processor(initial)
    assert change(proc, S.IGNORED, substatus)["outcome"] == APPLIED
    assert (proc.state.group.status, proc.state.group.substatus) == (S.IGNORED, substatus)


@pytest.mark.parametrize("substatus", [None, Sub.ESCALATING, Sub.ONGOING, Sub.REGRESSED, Sub.NEW])
def test_ignored_with_another_substatus_is_invalid(substatus):
    proc = processor(NEW_GROUP)
    assert change(proc, S.IGNORED, substatus)["outcome"] == INVALID_TRANSITION
    assert (proc.state.group.status, proc.state.group.substatus) == NEW_GROUP


@pytest.mark.parametrize("initial", IGNORED_STATES)
def test_escalating_applies_to_an_ignored_group(initial):
    proc = processor(initial)
    assert change(proc, S.UNRESOLVED, Sub.ESCALATING)["outcome"] == APPLIED
    assert (proc.state.group.status, proc.state.group.substatus) == (S.UNRESOLVED, Sub.ESCALATING)


@pytest.mark.parametrize("initial", [(S.UNRESOLVED, Sub.NEW), (S.UNRESOLVED, Sub.ONGOING),
                                     (S.UNRESOLVED, Sub.REGRESSED), (S.RESOLVED, None)])
def test_escalating_does_nothing_unless_the_group_is_ignored(initial):
    proc = processor(initial)
    version = proc.state.group.version
    assert change(proc, S.UNRESOLVED, Sub.ESCALATING)["outcome"] != APPLIED
    assert (proc.state.group.status, proc.state.group.substatus, proc.state.group.version) == (*initial, version)


@pytest.mark.parametrize("substatus", [Sub.REGRESSED, Sub.ONGOING])
@pytest.mark.parametrize("initial", [(S.UNRESOLVED, Sub.NEW), (S.UNRESOLVED, Sub.ESCALATING),
                                     (S.IGNORED, Sub.FOREVER), (S.RESOLVED, None)])
def test_regressed_and_ongoing_are_applied(initial, substatus):
    proc = processor(initial)
    assert change(proc, S.UNRESOLVED, substatus)["outcome"] == APPLIED
    assert (proc.state.group.status, proc.state.group.substatus) == (S.UNRESOLVED, substatus)


@pytest.mark.parametrize("initial", [(S.RESOLVED, None), (S.UNRESOLVED, Sub.ONGOING), (S.IGNORED, Sub.FOREVER)])
def test_new_is_refused(initial):
    proc = processor(initial)
    assert change(proc, S.UNRESOLVED, Sub.NEW)["outcome"] == INVALID_TRANSITION
    assert (proc.state.group.status, proc.state.group.substatus) == initial


@pytest.mark.parametrize("substatus", [None, Sub.UNTIL_ESCALATING, Sub.FOREVER, Sub.UNTIL_CONDITION_MET])
def test_unresolved_with_a_missing_or_ignored_substatus_is_invalid(substatus):
    proc = processor((S.RESOLVED, None))
    assert change(proc, S.UNRESOLVED, substatus)["outcome"] == INVALID_TRANSITION
    assert proc.state.group.status == S.RESOLVED


@pytest.mark.parametrize("substatus", [None, 1, 3])
@pytest.mark.parametrize("status", [3, 4, 5, 6])
def test_statuses_3_to_6_are_unsupported(status, substatus):
    proc = processor(NEW_GROUP)
    assert change(proc, status, substatus)["outcome"] == UNSUPPORTED_STATUS
    assert (proc.state.group.status, proc.state.group.substatus) == NEW_GROUP


@pytest.mark.parametrize("state", ALL_STATES)
def test_same_state_is_a_no_op(state):
    proc = processor(state)
    version = proc.state.group.version
    assert change(proc, *state)["outcome"] == NO_OP
    assert proc.state.group.version == version


def test_applied_bumps_version_and_others_do_not():
    proc = processor(NEW_GROUP)
    proc.finish()
    versions = []
    for status, substatus in [(1, None), (1, None), (1, 5), (2, 5), (0, 7), (5, None), (0, 2), (0, 3)]:
        change(proc, status, substatus)
        versions.append(proc.state.group.version)
    #                  applied no_op invalid applied invalid unsupported applied applied
    assert versions == [2, 2, 2, 3, 3, 3, 4, 5]
    assert proc.finish() == [("groups", group_row(proc.state.group))]
    assert group_row(proc.state.group)["status"] == 0 and group_row(proc.state.group)["substatus"] == 3


def test_status_change_row():
    proc = processor(NEW_GROUP)
    row = change(proc, S.IGNORED, Sub.FOREVER, t=T0 + 3600, change_id="3" * 32)
    assert row == {
        "status_change_id": "3" * 32, "project_id": 42, "fingerprint": "cd" * 16,
        "group_id": proc.state.group.group_id, "new_status": 2, "new_substatus": 5, "outcome": APPLIED,
        "reason": None, "timestamp": "2026-11-01T01:00:00Z",
    }


def test_status_changes_do_not_touch_occurrence_counters():
    proc = processor(NEW_GROUP)
    change(proc, S.RESOLVED)
    group = proc.state.group
    assert (group.times_seen, group.first_seen, group.last_seen) == (1, T0, T0)
    assert proc.state.noise is None


# --- regression (reference §4.5): an occurrence on a resolved group ------------------------------

def occurrence_on(proc, t):
    out = proc.apply(PendingOccurrence(t, "4" * 32, "5" * 32, QUIET, 25, DIGEST, (), None))
    return {table: row for table, row in out}


def test_a_resolved_group_regresses_on_a_new_occurrence():
    proc = processor(NEW_GROUP)
    assert change(proc, S.RESOLVED)["outcome"] == APPLIED
    out = occurrence_on(proc, T0 + 3600)
    assert out["occurrences"]["outcome"] == "grouped"
    assert (proc.state.group.status, proc.state.group.substatus) == (S.UNRESOLVED, Sub.REGRESSED)
    assert out["post_process"]["is_regression"] is True


@pytest.mark.parametrize("initial", IGNORED_STATES + [(S.UNRESOLVED, Sub.ONGOING)])
def test_ignored_or_unresolved_groups_do_not_regress(initial):
    proc = processor(initial)
    out = occurrence_on(proc, T0 + 3600)
    assert (proc.state.group.status, proc.state.group.substatus) == initial
    assert out["post_process"]["is_regression"] is False
