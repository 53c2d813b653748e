"""The lifecycle rules through RulesEngine, each as Sentry's code has it (issue #8).

Where Sentry has a test for the rule, the case follows it (tests/sentry/issues/test_ingest.py
test_new_group / test_existing_group: group times from `event.datetime`, display fields following the
occurrence; test_status_change_consumer.py: activity data, MEDIUM -> HIGH on escalating, the initial
priority restored on ONGOING); the others follow the code cited in each docstring.
"""
import hashlib
import itertools

import orjson
import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import escalation as esc
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.fingerprint import group_id_for
from issue_platform.key_state import STATE_VERSION, KeyState, StateVersionError
from issue_platform.rules_engine import RulesEngine
from issue_platform.grouptype import registry
from issue_platform.lifecycle import FORECAST_TTL_SECONDS
from issue_platform.pending import Admission, Display, PendingOccurrence, PendingStatusChange, display_digest
from issue_platform.tables import ACTIVITY, OCCURRENCES, POST_PROCESS, STATUS_CHANGES
from issue_platform.validation import occurrence_priority

T0 = 1_793_491_200.0  # 2026-11-01T00:00:00Z
H, D = 3600.0, 86400.0
KEY = "42:" + "ef" * 16
AUTO = 2001  # LOW, auto-resolve and escalation detection on
NO_AUTO_RESOLVE = 2011  # MEDIUM, enable_auto_resolve = False
_ids = itertools.count(1)


class Key:
    def __init__(self, **kwargs):
        self.displays = {}
        self.proc = RulesEngine(KEY, KeyState(), self.displays, registry, **kwargs)

    @property
    def group(self):
        return self.proc.state.group

    def occ(self, t, *, type=AUTO, event_time=None, priority=None, initial=None, post_process=True, age=0,
            culprit="app.load", id=None):
        display = Display("Slow DB", "SELECT 1", culprit, "warning", "production")
        digest = display_digest(display.encode())
        self.displays[digest] = display
        priority = occurrence_priority(priority, initial, registry.get_by_type_id(type))  # as validation fills it
        return self.proc.apply(PendingOccurrence(
            float(t), id or f"{next(_ids):032x}", f"{next(_ids):032x}", type, priority, digest, (), None,
            Admission(post_process, True, age), event_time))

    def change(self, t, status, substatus=None, *, id=None, data=None):
        return self.proc.apply(PendingStatusChange(float(t), id or f"{next(_ids):032x}", status, substatus, True,
                                                   None, data))

    def state(self):
        return self.group.status, self.group.substatus


def table(out, name):
    return [row for table_name, row in out if table_name == name]


def activity(out):
    return [(row["type"], row["data"]) for row in table(out, ACTIVITY)]


def archived_until_escalating(key, hours=30):
    """A group a day older than MAX_NEW_ESCALATION_AGE_HOURS, archived until escalating."""
    for h in range(hours):
        key.occ(T0 + h * H + 60)
    key.change(T0 + hours * H + 1800, S.IGNORED, Sub.UNTIL_ESCALATING)


def burst(key, start, n, **kwargs):
    return [row for i in range(n) for row in key.occ(start + 60 * i, **kwargs)]


# --- 1. priority follows every occurrence ---------------------------------------------------------

def test_priority_follows_every_occurrence_with_the_issue_platform_reason():
    key = Key()
    key.occ(T0, priority=75)
    out = key.occ(T0 + 1)  # no priority: back to the type default (LOW)
    assert key.group.priority == 25
    assert activity(out) == [("set_priority", {"priority": "low", "reason": "issue_platform"})]
    assert activity(key.occ(T0 + 2, initial=50)) == [("set_priority", {"priority": "medium",
                                                                       "reason": "issue_platform"})]
    assert activity(key.occ(T0 + 3, priority=50)) == []  # unchanged: no activity


def test_the_occurrence_after_an_escalation_undoes_its_priority_bump():
    key = Key()
    archived_until_escalating(key)
    out = burst(key, T0 + 40 * H, 11)
    assert key.state() == (S.UNRESOLVED, Sub.ESCALATING) and key.group.priority == 50  # LOW -> MEDIUM
    assert ("set_priority", {"priority": "medium", "reason": "escalating"}) in activity(out)
    assert activity(key.occ(T0 + 40 * H + 900)) == [("set_priority", {"priority": "low",
                                                                         "reason": "issue_platform"})]


# --- 2. age-based regression only with enable_auto_resolve ------------------------------------------

@pytest.mark.parametrize("type_id, regresses", [(AUTO, True), (NO_AUTO_RESOLVE, False)])
def test_age_based_regression_needs_auto_resolve(type_id, regresses):
    """`Group.get_status()` reports an UNRESOLVED group past resolve_age as RESOLVED only for types
    with `enable_auto_resolve`. as_of stops auto-resolve from running, so only get_status decides;
    the old event keeps `last_seen` (set before the check, as Sentry orders it) past the age."""
    key = Key(as_of=T0)
    key.occ(T0, type=type_id, age=24)
    out = key.occ(T0 + 30 * H, type=type_id, age=24, event_time=T0 + H)
    assert table(out, POST_PROCESS)[0]["is_regression"] is regresses
    assert key.state() == ((S.UNRESOLVED, Sub.REGRESSED) if regresses else (S.UNRESOLVED, Sub.NEW))


def test_a_fresh_event_is_never_over_the_resolve_age():
    key = Key(as_of=T0)
    key.occ(T0, age=24)
    out = key.occ(T0 + 30 * H, age=24)
    assert table(out, POST_PROCESS)[0]["is_regression"] is False


def test_types_without_auto_resolve_are_never_auto_resolved():
    key = Key()
    key.occ(T0, type=NO_AUTO_RESOLVE, age=24)
    key.occ(T0 + 30 * H, type=NO_AUTO_RESOLVE, age=24)
    assert key.state() == (S.UNRESOLVED, Sub.NEW)


# --- 3. escalation only where post-processing runs ----------------------------------------------

@pytest.mark.parametrize("post_process", [True, False])
def test_escalation_is_decided_in_post_processing(post_process):
    key = Key()
    archived_until_escalating(key)
    burst(key, T0 + 40 * H, 12, post_process=post_process)
    expected = (S.UNRESOLVED, Sub.ESCALATING) if post_process else (S.IGNORED, Sub.UNTIL_ESCALATING)
    assert key.state() == expected


# --- 4. forecasts ---------------------------------------------------------------------------------

def test_archiving_by_status_change_computes_no_forecast():
    key = Key()
    archived_until_escalating(key)
    assert key.group.forecast is None


def test_the_first_check_uses_the_one_event_forecast_and_stores_one():
    """`fetch`: no stored forecast -> ONE_EVENT_FORECAST (10) today, and one is generated at once."""
    key = Key()
    archived_until_escalating(key)
    key.occ(T0 + 31 * H)  # the check: 1 this hour, not above 10
    stored = esc.Forecast.from_json(key.group.forecast)
    assert stored.date_added == T0 + 31 * H and stored.values == [10] * 14  # 30 quiet hours: max(1) * 10
    out = burst(key, T0 + 32 * H, 11)
    assert ("set_escalating", {"event_id": table(out, OCCURRENCES)[-1]["event_id"], "forecast": 10}) in activity(out)


def test_the_daily_job_keeps_the_stored_forecast_when_the_week_was_empty():
    key = Key()
    archived_until_escalating(key)
    key.occ(T0 + 31 * H)
    stored = key.group.forecast
    key.proc.advance_to(T0 + 2 * D + 1)  # a midnight with hourly counts: regenerated
    assert key.group.forecast != stored and key.group.forecast["date_added"] == T0 + 2 * D
    key.group.hourly = esc.HourlyCounts()
    kept = key.group.forecast
    key.proc.advance_to(T0 + 3 * D + 1)  # nothing in the week: Sentry saves nothing, the old one stays
    assert key.group.forecast == kept and key.group.forecast_checked_at == T0 + 3 * D


def test_a_forecast_past_its_ttl_gives_way_to_the_default():
    """GROUP_FORECAST_TTL: 14 days after date_added the stored forecast is gone."""
    key = Key()
    archived_until_escalating(key)
    key.group.forecast = esc.Forecast(T0, [1000] * 14).to_json()
    now = T0 + FORECAST_TTL_SECONDS + 31 * H  # not seen for over 7 days: no daily job either
    out = burst(key, now, 11)
    assert ("set_escalating", {"event_id": table(out, OCCURRENCES)[-1]["event_id"], "forecast": 10}) in activity(out)


def test_a_forecast_within_its_ttl_is_used():
    key = Key()
    archived_until_escalating(key)
    key.group.forecast = esc.Forecast(T0 + 30 * H, [1000] * 14).to_json()
    burst(key, T0 + 40 * H, 12)
    assert key.state() == (S.IGNORED, Sub.UNTIL_ESCALATING)


# --- 5. status changes are de-duplicated by id ----------------------------------------------------

def test_a_redelivered_status_change_is_a_duplicate():
    key = Key()
    key.occ(T0)
    first = table(key.change(T0 + 10, S.RESOLVED, id="c" * 32), STATUS_CHANGES)[0]
    key.occ(T0 + 100)  # regresses it
    again = key.change(T0 + 200, S.RESOLVED, id="c" * 32)
    assert (first["outcome"], table(again, STATUS_CHANGES)[0]["outcome"]) == ("applied", "duplicate")
    assert activity(again) == [] and key.state() == (S.UNRESOLVED, Sub.REGRESSED)
    later = key.change(T0 + 10 + 301, S.RESOLVED, id="c" * 32)  # outside the window
    assert table(later, STATUS_CHANGES)[0]["outcome"] == "applied"


# --- 6. the regression guard ----------------------------------------------------------------------

@pytest.mark.parametrize("gap, regresses", [(5.0, False), (5.5, True)])
def test_no_regression_within_5s_of_active_at(gap, regresses):
    """`_handle_regression` excludes `active_at >= date - 5s`; the occurrence still counts."""
    key = Key()
    key.occ(T0)
    key.change(T0 + 1, S.RESOLVED)
    out = key.occ(T0 + 100, event_time=T0 + gap)
    assert table(out, OCCURRENCES)[0]["outcome"] == "grouped" and key.group.times_seen == 2
    assert table(out, POST_PROCESS)[0]["is_regression"] is regresses
    assert key.state() == ((S.UNRESOLVED, Sub.REGRESSED) if regresses else (S.RESOLVED, None))
    assert key.group.active_at == (T0 + gap if regresses else T0)


def test_a_regression_moves_active_at_for_the_next_one():
    key = Key()
    key.occ(T0)
    key.change(T0 + 10, S.RESOLVED)
    key.occ(T0 + 20)
    key.change(T0 + 21, S.RESOLVED)
    assert table(key.occ(T0 + 23), POST_PROCESS)[0]["is_regression"] is False  # active_at T0+20
    assert table(key.occ(T0 + 26), POST_PROCESS)[0]["is_regression"] is True


# --- 7. group times come from the event ----------------------------------------------------------

def test_first_and_last_seen_come_from_the_event_and_last_seen_never_moves_back():
    key = Key()
    key.occ(T0 + 100, event_time=T0 + 50)
    assert (key.group.first_seen, key.group.last_seen, key.group.active_at) == (T0 + 50, T0 + 50, T0 + 50)
    key.occ(T0 + 200, event_time=T0 + 10)  # an older event: first_seen moves earlier
    assert (key.group.first_seen, key.group.last_seen) == (T0 + 10, T0 + 50)
    key.occ(T0 + 300)  # only an event_id: detection_time
    assert key.group.last_seen == T0 + 300


def test_detection_time_still_orders_the_events():
    key = Key()
    key.occ(T0, event_time=T0 + 999)
    row = table(key.occ(T0 + 1, event_time=T0 - 999), OCCURRENCES)[0]
    assert row["detection_time"] == "2026-11-01T00:00:01Z"
    assert (key.group.first_seen, key.group.last_seen) == (T0 - 999, T0 + 999)


# --- 8. culprit -----------------------------------------------------------------------------------

def test_the_group_culprit_is_cut_to_200_characters_and_the_occurrence_keeps_it_whole():
    key = Key()
    long = "c" * 250
    out = key.occ(T0, culprit=long)
    assert key.group.culprit == "c" * 197 + "..." and len(key.group.culprit) == 200
    assert table(out, OCCURRENCES)[0]["culprit"] == long
    key.occ(T0 + 1, culprit="c" * 200)
    assert key.group.culprit == "c" * 200


# --- 9. activity data -----------------------------------------------------------------------------

@pytest.mark.parametrize("status, substatus, kind", [
    (S.RESOLVED, None, "set_resolved"), (S.IGNORED, Sub.FOREVER, "set_ignored"),
    (S.UNRESOLVED, Sub.REGRESSED, "set_regression"), (S.UNRESOLVED, Sub.ONGOING, "set_unresolved")])
def test_status_change_activity_carries_the_message_activity_data(status, substatus, kind):
    key = Key()
    key.occ(T0)
    assert activity(key.change(T0 + 1, status, substatus, data={"test": "test"})) == [(kind, {"test": "test"})]


def test_status_change_activity_without_activity_data_is_empty():
    key = Key()
    key.occ(T0)
    assert activity(key.change(T0 + 1, S.IGNORED, Sub.UNTIL_ESCALATING)) == [("set_ignored", {})]
    assert activity(key.change(T0 + 2, S.UNRESOLVED, Sub.ESCALATING)) == [
        ("set_escalating", {}), ("set_priority", {"priority": "medium", "reason": "escalating"})]


def test_ongoing_after_escalating_restores_the_initial_priority():
    """test_valid_payload_auto_ongoing: ESCALATING/HIGH with initial priority MEDIUM -> ONGOING, MEDIUM."""
    key = Key()
    key.occ(T0, priority=50)
    key.change(T0 + 1, S.IGNORED, Sub.FOREVER)
    key.change(T0 + 2, S.UNRESOLVED, Sub.ESCALATING)
    assert key.group.priority == 75
    out = key.change(T0 + 3, S.UNRESOLVED, Sub.ONGOING, data={"test": "test"})
    assert activity(out) == [("auto_set_ongoing", {"test": "test"}),
                             ("set_priority", {"priority": "medium", "reason": "ongoing"})]
    assert key.state() == (S.UNRESOLVED, Sub.ONGOING) and key.group.priority == 50


def test_without_a_priority_leaving_escalating_restores_the_type_default():
    """Issue #21 rule 3: `_get_kwargs` fills a missing priority with the type's default, which
    `materialize_metadata` stores as the initial priority that `get_priority_for_ongoing_group`
    restores (LOW for this type), 7 days after escalating."""
    key = Key()
    key.occ(T0, priority=75)
    key.occ(T0 + 1)  # no priority: metadata.initial_priority becomes the default, LOW
    assert key.group.initial_priority == 25
    key.change(T0 + 2, S.IGNORED, Sub.FOREVER)
    key.change(T0 + 3, S.UNRESOLVED, Sub.ESCALATING)
    assert key.group.priority == 50  # LOW -> MEDIUM
    assert activity(key.proc.advance_to(T0 + 3 + 7 * D)) == [
        ("auto_set_ongoing", {"after_days": 7}), ("set_priority", {"priority": "low", "reason": "ongoing"})]
    assert key.group.priority == 25


def test_initial_issue_priority_is_read_before_the_default():
    """The older field producers still send (a deliberate difference: Sentry's consumer ignores it)."""
    key = Key()
    key.occ(T0, initial=75)
    assert (key.group.priority, key.group.initial_priority) == (75, 75)
    key.occ(T0 + 1, priority=50, initial=75)
    assert (key.group.priority, key.group.initial_priority) == (50, 50)


def test_occurrence_regression_activity():
    key = Key()
    key.occ(T0)
    key.change(T0 + 10, S.RESOLVED)
    out = key.occ(T0 + 20)
    assert activity(out) == [("set_regression", {"event_id": table(out, OCCURRENCES)[0]["event_id"],
                                                 "version": ""})]


# --- state encoding -----------------------------------------------------------------------------

def test_key_state_carries_a_version_byte_and_refuses_others():
    key = Key()
    key.occ(T0, event_time=T0 - 5)
    data = key.proc.state.encode()
    assert data[0] == STATE_VERSION == 3
    assert KeyState.decode(data) == key.proc.state
    with pytest.raises(StateVersionError, match="version 4 is not readable by this release"):
        KeyState.decode(bytes((4,)) + data[1:])
    with pytest.raises(StateVersionError):  # the unversioned layout of earlier releases
        KeyState.decode(data[1:])


def test_version_2_state_held_63_bit_group_ids_and_is_read_with_this_releases_id():
    key = Key()
    key.occ(T0)
    state = key.proc.state
    wide = int.from_bytes(hashlib.sha1(key.proc.key.encode()).digest()[:8], "big") & ((1 << 63) - 1)
    assert wide >= 1 << 53 and state.group.group_id == group_id_for(key.proc.key) < 1 << 53
    body = orjson.loads(state.encode()[1:])
    body["group"]["group_id"] = wide  # as version 2 (and 1) wrote it
    assert KeyState.decode(bytes((2,)) + orjson.dumps(body)) == state


def test_occurrences_and_status_changes_share_one_id_cache():
    """`process_occurrence_group` caches every item's id under one key space."""
    key = Key()
    key.occ(T0, id="d" * 32)
    assert table(key.change(T0 + 1, S.RESOLVED, id="d" * 32), STATUS_CHANGES)[0]["outcome"] == "duplicate"
