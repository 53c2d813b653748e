"""State that outlives a job: a run writes every key's state to the `state` table, and a later run
started with --resume_from continues from it as if the two were one run."""
from __future__ import annotations

import base64
import random
import uuid

import orjson
import pytest

from bigquery_server import PROJECT
from issue_platform.config import ConfigError, load_config
from pipelines.issue_pipeline import run
from tests.lifecycle_fixture import CONFIG, H, lifecycle_payloads
from tests.pipeline_support import (BASE, canonical, latest_groups, latest_states, occurrence, read_tables,
                                    write_jsonl)

SPLIT = BASE + 100 * H
COMPARED = ("occurrences", "status_changes", "post_process", "activity", "evidence", "dead_letter")


def _payloads() -> list[dict]:
    """The lifecycle fixture plus events that straddle SPLIT: a noisy fingerprint whose count crosses
    it, a group created before it and seen after it, a redelivery on both sides, an auto-resolve due
    after it."""
    p = lifecycle_payloads()
    p += [occurrence("noise-across", project_id=1, type_id=1006, t=SPLIT + h * H) for h in (-2, -1, 1, 2)]
    p += [occurrence("seen-across", project_id=2, type_id=2001, t=SPLIT + h * H) for h in (-5, 3)]
    p.append(occurrence("resolve-across", project_id=1, type_id=2001, t=SPLIT - 2 * H))
    dup = occurrence("dup-across", project_id=2, type_id=2001, t=SPLIT - 10)
    p += [dup, occurrence("dup-across", project_id=2, type_id=2001, t=SPLIT + 20)]
    return p, dup


def _time(payload):
    return payload.get("detection_time", payload.get("update_date"))


def _union(*runs) -> dict:
    return {name: [row for tables in runs for row in tables[name]] for name in runs[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    payloads, dup = _payloads()
    random.Random(5).shuffle(payloads)
    (tmp / "config.yaml").write_text(CONFIG)
    config = load_config(str(tmp / "config.yaml"))
    whole = write_jsonl(tmp / "whole.jsonl", payloads)
    first = write_jsonl(tmp / "first.jsonl", [p for p in payloads if _time(p) <= SPLIT])
    # The second part also carries a redelivery of an event the first run applied.
    second = write_jsonl(tmp / "second.jsonl", [p for p in payloads if _time(p) > SPLIT] + [dup])
    run(["--input", whole, "--output", str(tmp / "whole")], config)
    run(["--input", first, "--output", str(tmp / "first")], config)
    run(["--input", second, "--output", str(tmp / "second"), "--resume_from", str(tmp / "first")], config)
    run(["--input", second, "--output", str(tmp / "second-stream"), "--resume_from", str(tmp / "first"),
         "--streaming"], config)
    tables = {name: read_tables(tmp / name) for name in ("whole", "first", "second", "second-stream")}
    return tables, dup, {"first": first, "second": second, "config": config, "tmp": tmp}


def _without_redelivery(tables, dup):
    """The whole run never sees the extra redelivery; the resumed run reports it as a duplicate."""
    dup_id = dup["id"].replace("-", "")
    extra = [r for r in tables["occurrences"] if r["occurrence_id"] == dup_id and r["outcome"] == "duplicate"]
    assert len(extra) == 1
    evidence = [r for r in tables["evidence"] if r["occurrence_id"] == dup_id]
    return {**tables, "occurrences": [r for r in tables["occurrences"] if r is not extra[0]],
            "evidence": [r for r in tables["evidence"] if r is not evidence[-1]]}


@pytest.mark.parametrize("second", ["second", "second-stream"])
def test_a_resumed_run_continues_as_if_it_were_one_run(runs, second):
    tables, dup, _ = runs
    whole = tables["whole"]
    resumed = _without_redelivery(_union(tables["first"], tables[second]), dup)
    for name in COMPARED:
        assert canonical(resumed[name]) == canonical(whole[name]), name
    assert canonical(list(latest_groups(resumed["groups"]).values())) == canonical(
        list(latest_groups(whole["groups"]).values()))
    # No group is created twice, and the split really cut through live state.
    created = [m["group_id"] for m in resumed["post_process"] if m["is_new"]]
    assert len(created) == len(set(created))
    first_keys = {row["key"] for row in tables["first"]["state"]}
    assert len(first_keys) == len(tables["first"]["state"])  # batch: one snapshot row per key
    noise_only = [r for r in tables["first"]["state"] if r["group_id"] is None]
    assert noise_only, "a key with only a noise count must be carried over too"


def test_snapshots_of_batch_and_stream_agree(runs):
    """The current snapshot of every key is the same whether the second part ran in batch or streaming."""
    tables, _, _ = runs

    def current(rows):
        return {key: (row["snapshot_at"], row["state"]) for key, row in latest_states(rows).items()}

    assert current(tables["second"]["state"]) == current(tables["second-stream"]["state"])


def test_resume_from_a_bigquery_state_table(runs, bigquery_emulator):
    """The first part written to BigQuery (the emulator); the second resumed from that state table
    gives exactly what resuming from the first part's files gave."""
    tables, _, paths = runs
    endpoint, dataset = f"http://{bigquery_emulator.address}", f"resume_{uuid.uuid4().hex[:8]}"
    tmp = paths["tmp"]
    run(["--input", paths["first"], "--sink", "bigquery", "--bigquery_dataset", f"{PROJECT}:{dataset}",
         "--bigquery_endpoint", endpoint, "--temp_location", str(tmp)], paths["config"])
    run(["--input", paths["second"], "--output", str(tmp / "second-bq"), "--bigquery_endpoint", endpoint,
         "--resume_from", f"bigquery:{PROJECT}:{dataset}.state"], paths["config"])
    resumed = read_tables(tmp / "second-bq")
    for name, rows in tables["second"].items():
        assert canonical(resumed[name]) == canonical(rows), name


def test_resume_from_a_missing_bigquery_table_is_one_line_before_the_job(tmp_path, bigquery_emulator):
    with pytest.raises(ConfigError, match="--resume_from bigquery:test-project:nowhere.state: cannot read it"):
        run(["--input", write_jsonl(tmp_path / "b.jsonl", [occurrence("x", t=BASE)]), "--output", str(tmp_path),
             "--bigquery_endpoint", f"http://{bigquery_emulator.address}",
             "--resume_from", f"bigquery:{PROJECT}:nowhere.state"], load_config(None))
    with pytest.raises(ConfigError, match="expected bigquery:PROJECT:DATASET.TABLE"):
        run(["--input", write_jsonl(tmp_path / "c.jsonl", [occurrence("x", t=BASE)]), "--output", str(tmp_path),
             "--resume_from", "bigquery:just-a-project"], load_config(None))


def test_events_far_behind_the_snapshot_are_late_not_double_counted(tmp_path):
    config = load_config(None)
    before = [occurrence("old", project_id=3, type_id=2001, t=BASE + i * H) for i in range(3)]
    run(["--input", write_jsonl(tmp_path / "a.jsonl", before), "--output", str(tmp_path / "a")], config)
    replayed = before[0]  # two hours behind the snapshot: beyond the 600 s allowed lateness
    fresh = occurrence("old", project_id=3, type_id=2001, t=BASE + 3 * H)
    run(["--input", write_jsonl(tmp_path / "b.jsonl", [replayed, fresh]), "--output", str(tmp_path / "b"),
         "--resume_from", str(tmp_path / "a")], config)
    tables = read_tables(tmp_path / "b")
    (late,) = tables["dead_letter"]
    assert (late["reason"], late["stage"]) == ("late", "group")
    assert replayed["id"].replace("-", "") in late["payload"]
    group = latest_groups(tables["groups"]).popitem()[1]
    assert group["times_seen"] == 4 and group["version"] == 4


def _snapshot_dir(tmp_path, row_change) -> str:
    config = load_config(None)
    run(["--input", write_jsonl(tmp_path / "a.jsonl", [occurrence("x", t=BASE)]), "--output", str(tmp_path / "a")],
        config)
    (path,) = (tmp_path / "a").glob("state.*.jsonl")
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    path.write_bytes(b"".join(orjson.dumps(row_change(r)) + b"\n" for r in rows))
    return str(tmp_path / "a")


@pytest.mark.parametrize("change, message", [
    (lambda r: {**r, "format": 99}, "format 99 is not readable by this release"),
    (lambda r: {**r, "state": "not base64!"}, "field `state`: expected base64"),
    (lambda r: {**r, "snapshot_at": 7}, "field `snapshot_at`"),
    (lambda r: {**r, "state": base64.b64encode(b"\x07" + base64.b64decode(r["state"])[1:]).decode()},
     "key state encoding version 7 is not readable"),
    (lambda r: {**r, "state": base64.b64encode(b"\x01{not json").decode()}, "not an encoded key state"),
])
def test_a_snapshot_this_release_cannot_read_is_refused_before_the_job_starts(tmp_path, change, message):
    directory = _snapshot_dir(tmp_path, change)
    with pytest.raises(ConfigError, match=message):
        run(["--input", write_jsonl(tmp_path / "b.jsonl", [occurrence("x", t=BASE + H)]),
             "--output", str(tmp_path / "b"), "--resume_from", directory], load_config(None))


def test_resume_from_a_directory_without_a_snapshot_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no state table files"):
        run(["--input", write_jsonl(tmp_path / "b.jsonl", [occurrence("x", t=BASE)]),
             "--output", str(tmp_path / "b"), "--resume_from", str(tmp_path)], load_config(None))
