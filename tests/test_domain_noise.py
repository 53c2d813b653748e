"""Noise reduction (reference §4.3) and the per-key RulesEngine (§4.2, §4.4; issue_platform/rules_engine.py)."""
import itertools
import random
from datetime import timedelta

import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform import outcomes
from issue_platform import pending
from issue_platform.fingerprint import group_id_for
from issue_platform.rules_engine import RulesEngine, KeyState
from issue_platform.tables import GROUPS, OCCURRENCES, POST_PROCESS, group_row
from issue_platform.grouptype import NoiseConfig, registry
from issue_platform.noise import NoiseCounter, is_expired, should_create_group
from issue_platform.pending import Display, PendingOccurrence, PendingStatusChange, display_digest
from issue_platform.validation import PayloadValidator, occurrence_priority

H = 3600.0
DAY = 24 * H
T0 = 1_793_491_200.0
KEY = "42:" + "ab" * 16
NOISY, QUIET = 1006, 2001  # NoiseConfig(3, 24h) / no noise config; both released, LOW
_ids = itertools.count(1)


# --- should_create_group -------------------------------------------------------------------------

def sightings(times, config):
    """Feed sightings to should_create_group; the list of decisions and the final counter."""
    counter, decisions = None, []
    for t in times:
        create, counter = should_create_group(counter, t, config)
        decisions.append(create)
    return decisions, counter


@pytest.mark.parametrize("limit", [2, 3, 5, 100, 2000])
def test_first_n_minus_1_held_back_nth_creates_and_counter_is_gone(limit):
    config = NoiseConfig(limit)
    counter = None
    for i in range(1, limit):
        create, counter = should_create_group(counter, T0 + i, config)
        assert create is False
        assert counter == NoiseCounter(i, T0 + i + DAY)
    assert should_create_group(counter, T0 + limit, config) == (True, None)


@pytest.mark.parametrize("limit", [0, 1])
def test_limit_0_and_1_create_at_once(limit):
    assert should_create_group(None, T0, NoiseConfig(limit)) == (True, None)


def test_no_config_creates_at_once_and_keeps_no_counter():
    assert should_create_group(None, T0, None) == (True, None)
    assert should_create_group(NoiseCounter(5, T0 + DAY), T0, None) == (True, None)


def test_window_slides_on_each_sighting():
    # 0h, 20h, 43h: each gap < 24h though 43h is past 24h after the first sighting -> created.
    decisions, _ = sightings([T0, T0 + 20 * H, T0 + 43 * H], NoiseConfig(3))
    assert decisions == [False, False, True]
    _, counter = sightings([T0, T0 + 20 * H], NoiseConfig(3))
    assert counter == NoiseCounter(2, T0 + 44 * H)  # the TTL was refreshed by the second sighting


def test_counter_resets_after_an_idle_expiry():
    decisions, counter = sightings([T0, T0 + DAY, T0 + DAY + 1, T0 + DAY + 2], NoiseConfig(3))
    assert decisions == [False, False, False, True]  # exactly at expires_at counts as expired


@pytest.mark.parametrize("gap, count", [(DAY - 0.001, 2), (DAY, 1), (DAY + 1, 1)])
def test_expiry_boundary(gap, count):
    _, counter = sightings([T0, T0 + gap], NoiseConfig(3))
    assert counter == NoiseCounter(count, T0 + gap + DAY)


def test_custom_expiry():
    config = NoiseConfig(2, timedelta(minutes=90))
    assert sightings([T0, T0 + 89 * 60], config)[0] == [False, True]
    assert sightings([T0, T0 + 90 * 60], config)[0] == [False, False]


def test_is_expired():
    counter = NoiseCounter(1, T0 + DAY)
    assert not is_expired(counter, T0 + DAY - 1)
    assert is_expired(counter, T0 + DAY)
    assert not is_expired(None, T0)


# --- RulesEngine harness ----------------------------------------------------------------------

class Key:
    """One key's processor plus the display map its occurrences reference."""

    def __init__(self, state=None, dedupe_window=None):
        self.displays = {}
        kwargs = {} if dedupe_window is None else {"dedupe_window": dedupe_window}
        self.proc = RulesEngine(KEY, state if state is not None else KeyState(), self.displays, registry,
                                   **kwargs)

    @property
    def state(self):
        return self.proc.state

    def occ(self, t, *, id=None, event_id=None, type=NOISY, priority=None, initial=None, title="N+1 Query", subtitle="SELECT 1",
            culprit="/api/0/users/", level="warning", env="production"):
        display = Display(title, subtitle, culprit, level, env)
        digest = display_digest(display.encode())
        self.displays[digest] = display
        priority = occurrence_priority(priority, initial, registry.get_by_type_id(type))  # as validation fills it
        event = PendingOccurrence(float(t), id or f"{next(_ids):032x}", event_id or f"{next(_ids):032x}", type, priority,
                                  digest, (), None)
        return self.proc.apply(event)

    def change(self, t, status, substatus=None, *, id=None):
        return self.proc.apply(PendingStatusChange(float(t), id or f"{next(_ids):032x}", status, substatus, True,
                                                   None, None))


def rows(out, table):
    return [row for name, row in out if name == table]


def outcome(out):
    (row,) = rows(out, OCCURRENCES)
    return row["outcome"]


def post(out):
    found = rows(out, POST_PROCESS)
    return found[0] if found else None


# --- noise through the processor ---------------------------------------------------------------

@pytest.mark.parametrize("type_id, limit", [(1006, 3), (1009, 5), (1007, 15), (1001, 100)])
def test_noisy_group_created_on_the_nth_occurrence(type_id, limit):
    key = Key()
    outs = [key.occ(T0 + i * 60, type=type_id) for i in range(limit + 2)]
    assert [outcome(o) for o in outs] == [outcomes.NOISE_SUPPRESSED] * (limit - 1) + [outcomes.GROUPED] * 3
    assert all(rows(o, OCCURRENCES)[0]["group_id"] is None and post(o) is None for o in outs[:limit - 1])
    assert post(outs[limit - 1])["is_new"] is True
    group = key.state.group
    assert group.times_seen == 3  # held-back occurrences are never attached to the group
    assert group.first_seen == T0 + (limit - 1) * 60
    assert key.state.noise is None


def test_noise_not_consulted_once_the_group_exists():
    key = Key()
    for i in range(3):
        key.occ(T0 + i)
    assert key.state.group is not None
    for t in (T0 + 3 * DAY, T0 + 10 * DAY):  # long idle gaps no longer matter
        assert outcome(key.occ(t)) == outcomes.GROUPED
        assert key.state.noise is None
    assert key.state.group.times_seen == 3


def test_noise_counter_resets_after_idle_expiry_in_the_processor():
    key = Key()
    outs = [key.occ(t) for t in (T0, T0 + DAY, T0 + DAY + 1, T0 + DAY + 2)]
    assert [outcome(o) for o in outs] == [outcomes.NOISE_SUPPRESSED] * 3 + [outcomes.GROUPED]


def test_quiet_type_creates_at_once_without_a_counter():
    key = Key()
    out = key.occ(T0, type=QUIET)
    assert outcome(out) == outcomes.GROUPED and post(out)["is_new"] is True
    assert key.state.noise is None


def test_validated_payloads_through_pending_records():
    """validation -> pending.encode_occurrence -> pending.decode -> RulesEngine."""
    validator = PayloadValidator("fast")
    displays, proc = {}, None
    results = []
    for i in range(4):
        occurrence = validator.validate({
            "id": f"{i + 1:032x}", "project_id": 42, "fingerprint": ["n+1-users", "extra"],
            "issue_title": "N+1 Query", "subtitle": f"SELECT {i}", "culprit": "/api/0/users/",
            "evidence_data": {}, "evidence_display": [], "type": NOISY, "detection_time": T0 + i,
            "level": "warning", "event_id": f"{100 + i:032x}",
        })
        record, digest, display_bytes = pending.encode_occurrence(occurrence)
        displays[digest] = Display.decode(display_bytes)
        if proc is None:
            proc = RulesEngine(f"42:{occurrence.fingerprint[0]}", KeyState(), displays, registry)
        results.append(proc.apply(pending.decode(record)))
    assert [outcome(o) for o in results] == [outcomes.NOISE_SUPPRESSED, outcomes.NOISE_SUPPRESSED, outcomes.GROUPED, outcomes.GROUPED]
    grouped = rows(results[2], OCCURRENCES)[0]
    assert grouped["fingerprint"] == list(occurrence.fingerprint)
    assert grouped["group_id"] == proc.state.group.group_id == group_id_for(proc.key)
    assert proc.state.group.subtitle == "SELECT 3"


# --- dedupe ------------------------------------------------------------------------------------

def test_duplicate_within_the_window_is_not_counted():
    key = Key()
    key.occ(T0, type=QUIET, id="d" * 32)
    out = key.occ(T0 + 299, type=QUIET, id="d" * 32)
    assert outcome(out) == outcomes.DUPLICATE and post(out) is None
    assert rows(out, OCCURRENCES)[0]["group_id"] is None
    assert key.state.group.times_seen == 1 and key.state.group.version == 1


def test_duplicates_do_not_count_towards_noise():
    key = Key()
    outs = [key.occ(T0 + i, id="e" * 32) for i in range(5)] + [key.occ(T0 + 10)]
    assert [outcome(o) for o in outs] == [outcomes.NOISE_SUPPRESSED] + [outcomes.DUPLICATE] * 4 + [outcomes.NOISE_SUPPRESSED]
    assert key.state.noise.count == 2


def test_same_id_beyond_the_window_is_processed_again():
    key = Key()
    key.occ(T0, type=QUIET, id="f" * 32)
    out = key.occ(T0 + 301, type=QUIET, id="f" * 32)
    assert outcome(out) == outcomes.GROUPED
    assert key.state.group.times_seen == 2


def test_custom_dedupe_window():
    key = Key(dedupe_window=10)
    key.occ(T0, type=QUIET, id="1" * 32)
    assert outcome(key.occ(T0 + 10, type=QUIET, id="1" * 32)) == outcomes.DUPLICATE
    assert outcome(key.occ(T0 + 11, type=QUIET, id="1" * 32)) == outcomes.GROUPED



def test_a_long_flush_forgets_old_ids_as_it_goes_and_decides_the_same(monkeypatch):
    """A hot key's batch flush applies days of events in one pass: the ids it keeps stay bounded by
    what the window needs, and every outcome, the group and the final ids equal those of a processor
    that forgets only at `finish`."""
    import issue_platform.rules_engine as rules_engine
    rng = random.Random(3)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(3000)]
    events = [(T0 + 20 * i, ids[i] if rng.random() < 0.9 else rng.choice(ids[:i + 1])) for i in range(3000)]

    def run():
        key, decided, largest = Key(), [], 0
        for t, ident in events:
            decided.append(outcome(key.occ(t, type=QUIET, id=ident)))
            largest = max(largest, len(key.state.seen))
        key.proc.finish()
        return decided, key.state.group.times_seen, key.state.seen, largest

    decided, times_seen, seen, largest = run()
    monkeypatch.setattr(rules_engine, "_MIN_IDS_TO_FORGET", 10 ** 9)
    expected_decided, expected_times_seen, expected_seen, never_forgot = run()
    assert (decided, times_seen, seen) == (expected_decided, expected_times_seen, expected_seen)
    assert outcomes.DUPLICATE in decided and outcomes.GROUPED in decided
    assert never_forgot > 2500 and largest <= 2 * rules_engine._MIN_IDS_TO_FORGET

# --- group updates -----------------------------------------------------------------------------

def test_type_mismatch_leaves_the_group_alone():
    key = Key()
    key.occ(T0, type=QUIET, title="File I/O")
    before = (key.state.group.times_seen, key.state.group.version, key.state.group.title)
    out = key.occ(T0 + 60, type=2003, title="JSON decoding")
    assert outcome(out) == outcomes.TYPE_MISMATCH and post(out) is None
    assert rows(out, OCCURRENCES)[0]["group_id"] is None
    assert (key.state.group.times_seen, key.state.group.version, key.state.group.title) == before


def test_display_fields_follow_the_latest_occurrence():
    key = Key()
    key.occ(T0, type=QUIET, title="A", subtitle="a", culprit="ca", level="info")
    key.occ(T0 + 60, type=QUIET, title="B", subtitle="b", culprit="cb", level="error")
    group = key.state.group
    assert (group.title, group.subtitle, group.culprit, group.level) == ("B", "b", "cb", "error")
    row = group_row(group)
    assert (row["title"], row["subtitle"], row["culprit"], row["level"]) == ("B", "b", "cb", "error")


@pytest.mark.parametrize("type_id, priority, initial, expected", [
    (QUIET, 75, 25, 75),    # `priority` wins
    (QUIET, None, 75, 75),  # else initial_issue_priority
    (QUIET, None, None, 25),  # else the type default (LOW)
    (5002, None, None, 50),   # MEDIUM
    (4001, None, None, 75),   # HIGH
    (NOISY, None, 50, 50),    # on the Nth occurrence of a noisy type
])
def test_priority_on_creation(type_id, priority, initial, expected):
    key = Key()
    for i in range(3):
        key.occ(T0 + i, type=type_id, priority=priority, initial=initial)
    assert key.state.group.priority == expected
    assert group_row(key.state.group)["priority"] == expected


def test_priority_follows_every_occurrence():
    """`save_issue_from_occurrence`: `priority or type default` on every occurrence
    (`initial_issue_priority` is the older name of the same field)."""
    key = Key()
    key.occ(T0, type=QUIET)
    assert key.state.group.priority == 25
    key.occ(T0 + 1, type=QUIET, initial=75)
    assert key.state.group.priority == 75
    key.occ(T0 + 2, type=QUIET, priority=50)
    assert key.state.group.priority == 50
    key.occ(T0 + 3, type=QUIET)  # none given: back to the type default
    assert key.state.group.priority == 25


def test_counters_and_times():
    key = Key()
    outs = [key.occ(T0 + t, type=QUIET) for t in (0, 60, 3600)]
    group = key.state.group
    assert (group.times_seen, group.first_seen, group.last_seen, group.version) == (3, T0, T0 + 3600, 3)
    assert [post(o)["is_new"] for o in outs] == [True, False, False]
    row = group_row(group)
    assert row["first_seen"] == "2026-11-01T00:00:00Z" and row["last_seen"] == "2026-11-01T01:00:00Z"
    assert row["times_seen"] == 3 and row["version"] == 3
    assert row["group_id"] == group_id_for(KEY) and row["project_id"] == 42 and row["fingerprint"] == "ab" * 16
    assert (row["status"], row["substatus"], row["type"]) == (0, 7, QUIET)  # UNRESOLVED / NEW


def test_is_new_group_environment_once_per_environment():
    key = Key()
    envs = ["production", "production", "staging", "production", "staging", ""]
    flags = [post(key.occ(T0 + i, type=QUIET, env=env))["is_new_group_environment"] for i, env in enumerate(envs)]
    assert flags == [True, False, True, False, False, True]


def test_post_process_row():
    key = Key()
    out = key.occ(T0, type=QUIET, id="9" * 32)
    assert post(out) == {
        "group_id": group_id_for(KEY), "occurrence_id": "9" * 32, "project_id": 42,
        "event_id": rows(out, OCCURRENCES)[0]["event_id"], "primary_hash": "ab" * 16, "group_type": QUIET,
        "is_new": True, "is_regression": False, "is_new_group_environment": True,
    }


# --- state and flushes ---------------------------------------------------------------------------

def test_key_state_round_trip():
    assert KeyState.decode(None) == KeyState() == KeyState.decode(b"")
    assert KeyState.decode(KeyState().encode()) == KeyState()
    held = Key()
    held.occ(T0)  # a noise counter, no group
    assert KeyState.decode(held.state.encode()) == held.state
    key = Key()
    for i, env in enumerate(["production", "staging"]):
        key.occ(T0 + i, type=QUIET, env=env, priority=75)
    key.change(T0 + 5, 2, 5)
    restored = KeyState.decode(key.state.encode())
    assert restored == key.state
    # Processing continues identically from the restored state.
    twin = Key(state=restored)
    again = dict(type=QUIET, id="7" * 32, event_id="8" * 32, env="staging")
    assert twin.occ(T0 + 9, **again) == key.occ(T0 + 9, **again)
    assert twin.proc.finish() == key.proc.finish() != []


def test_finish_emits_one_snapshot_only_when_the_group_changed():
    key = Key()
    key.occ(T0)  # noise-suppressed: no group yet
    assert key.proc.finish() == []
    for i in range(1, 5):
        key.occ(T0 + i)
    snapshot = key.proc.finish()
    assert snapshot == [(GROUPS, group_row(key.state.group))] and snapshot[0][1]["times_seen"] == 3
    assert key.proc.finish() == []
    later = Key(state=key.state)  # the next flush starts from the stored state
    assert later.proc.finish() == []
    later.occ(T0 + 10)
    later.change(T0 + 11, 1)
    later.occ(T0 + 12)
    assert later.proc.finish() == [(GROUPS, group_row(later.state.group))]
    assert later.state.group.version == 7  # +1 occurrence, +1 resolve, +1 occurrence, +1 regression


def test_finish_after_only_duplicates_or_mismatches_emits_nothing():
    key = Key()
    key.occ(T0, type=QUIET, id="2" * 32)
    key.proc.finish()
    follow = Key(state=key.state)
    follow.occ(T0 + 1, type=QUIET, id="2" * 32)
    follow.occ(T0 + 2, type=2003)
    assert follow.proc.finish() == []


def test_finish_forgets_ids_older_than_twice_the_window():
    """Ids are kept 2 x 300 s behind the key's clock, so a late event still meets those within 300 s of it."""
    key = Key()
    key.occ(T0, type=QUIET, id="3" * 32)
    key.occ(T0 + 550, type=QUIET, id="4" * 32)
    key.occ(T0 + 700, type=QUIET, id="5" * 32)
    key.proc.finish()
    assert set(key.state.seen) == {"4" * 32, "5" * 32}


def test_a_one_off_noisy_fingerprint_ends_holding_nothing():
    """What a live stream keeps of a fingerprint seen once: its id until 600 s, its count until 24 h."""
    key = Key()
    key.occ(T0, type=NOISY, id="6" * 32)
    assert key.proc.next_wakeup() == T0 + 600
    key.proc.finish(T0 + 600)
    assert not key.state.seen and key.state.noise is not None
    assert key.proc.next_wakeup() == T0 + 24 * 3600
    key.proc.finish(T0 + 24 * 3600)
    assert key.state.is_empty() and key.proc.next_wakeup() is None


# --- order independence --------------------------------------------------------------------------

def random_stream(rng, n=300):
    """One key's events: occurrences of two types (so mismatches happen), exact redeliveries,
    reused ids at later times, sparse early sightings (noise resets) and status changes."""
    displays, events = {}, []
    t = T0
    for i in range(n):
        t += rng.choice([0, 0, 1, 30, 200, 400]) if i > 6 else rng.choice([DAY, 2 * DAY, H])
        roll = rng.random() if i > 6 else 0.99  # the first sightings are new, noisy occurrences
        if roll < 0.1 and events:
            events.append(rng.choice(events))  # exact redelivery
            continue
        if roll < 0.18:
            events.append(PendingStatusChange(t, f"{rng.getrandbits(128):032x}", rng.choice([0, 1, 2, 3]),
                                              rng.choice([None, 1, 2, 3, 5, 6, 7]), True, None, None))
            continue
        display = Display(rng.choice("ABC"), rng.choice("xyz"), "c", rng.choice(["info", "error"]),
                          rng.choice(["production", "staging"]))
        digest = display_digest(display.encode())
        displays[digest] = display
        reuse = [e.id for e in events if isinstance(e, PendingOccurrence)]
        oid = rng.choice(reuse) if reuse and roll < 0.25 else f"{rng.getrandbits(128):032x}"
        type_id = NOISY if i <= 6 else rng.choice([NOISY] * 9 + [2003])
        priority = occurrence_priority(rng.choice([None, None, 25, 75]), rng.choice([None, 50]),
                                       registry.get_by_type_id(type_id))
        events.append(PendingOccurrence(t, oid, f"{rng.getrandbits(128):032x}", type_id, priority, digest, (), None))
    return displays, events


def run(displays, events, flush_every=50):
    key = Key()
    key.displays.update(displays)
    out = []
    for i, event in enumerate(events, 1):
        out.extend(key.proc.apply(event))
        if i % flush_every == 0:
            out.extend(key.proc.finish())
    out.extend(key.proc.finish())
    return out, key.state.encode()


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_then_sorted_streams_give_identical_outputs(seed):
    rng = random.Random(seed)
    displays, events = random_stream(rng)
    expected = run(displays, sorted(events, key=pending.sort_key))
    assert any(row["outcome"] == outcomes.NOISE_SUPPRESSED for name, row in expected[0] if name == OCCURRENCES)
    assert any(row["outcome"] == outcomes.DUPLICATE for name, row in expected[0] if name == OCCURRENCES)
    for _ in range(10):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert run(displays, sorted(shuffled, key=pending.sort_key)) == expected


def test_sort_key_orders_by_time_then_occurrences_before_status_changes_then_id():
    occ = PendingOccurrence(T0, "b" * 32, "0" * 32, NOISY, None, None, b"x" * 12, (), None)
    earlier = occ._replace(time=T0 - 1, id="c" * 32)
    other = occ._replace(id="a" * 32)
    change = PendingStatusChange(T0, "0" * 32, 1, None, True, None, None)
    assert sorted([change, occ, other, earlier], key=pending.sort_key) == [earlier, other, occ, change]
