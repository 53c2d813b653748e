"""Release flags end to end: createissueflag output pasted into the config gates a type's ingest,
post-processing and visibility per organization (batch pipeline on the FnApiRunner)."""
from __future__ import annotations

import functools
import subprocess
import sys

import pytest
import yaml

from issue_platform.config import ConfigError, load_config
from pipelines.issue_pipeline import run
from tests.pipeline_support import BASE, latest_groups, occurrence, read_tables, write_jsonl

UNRELEASED = 1906  # performance_n_plus_one_db_queries_experimental, noise (3, 24h)
SLUG = "performance_n_plus_one_db_queries_experimental"
PROJECTS = """
projects:
  "1": {organization: {id: 1, slug: sentry, early_adopter: false}}
  "2": {organization: {id: 2, slug: acme, early_adopter: false}}
  "3": {}
  "4": {organization: {id: 4, slug: globex, early_adopter: true}}
"""


@functools.lru_cache(maxsize=None)
def createissueflag() -> str:
    """The command's output, as a user gets it (a subprocess); once per session: it depends only on
    the slug, the owner and the date."""
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "createissueflag", "--slug", SLUG,
                             "--owner", "perf"], capture_output=True, text=True, check=True)
    assert result.stderr == "\n=== GENERATED YAML ===\n"  # Sentry's banner, kept off stdout (issue #7)
    return result.stdout


def with_rollouts(flag_yaml: str, **rollouts) -> str:
    """The pasted YAML with some segments' rollout raised (e.g. GA=100), per flag suffix or all."""
    features = yaml.safe_load(flag_yaml)
    for name, body in features.items():
        for segment in body["segments"]:
            for key, rollout in rollouts.items():
                flag, _, segment_name = key.rpartition("_")
                if segment["name"] == segment_name and (not flag or name.endswith(flag.replace("_", "-"))):
                    segment["rollout"] = rollout
    return yaml.safe_dump(features)


def run_with(tmp_path, config_text: str):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_text)
    payloads = [occurrence(f"fp-{project}", project_id=project, type_id=UNRELEASED, t=BASE + i * 60)
                for project in (1, 2, 3, 4) for i in range(4)]
    out = tmp_path / "out"
    run(["--input", write_jsonl(tmp_path / "in.jsonl", payloads), "--output", str(out)],
        load_config(str(config_file)))
    return read_tables(out)


def outcomes_by_project(tables) -> dict[int, set]:
    result: dict[int, set] = {}
    for row in tables["occurrences"]:
        result.setdefault(row["project_id"], set()).add(row["outcome"])
    return result


def test_as_generated_every_flag_is_off(tmp_path):
    tables = run_with(tmp_path, PROJECTS + createissueflag())
    assert outcomes_by_project(tables) == {p: {"ingest_disabled"} for p in (1, 2, 3, 4)}
    assert not tables["groups"] and not tables["post_process"]


def test_raising_ga_releases_to_every_configured_organization(tmp_path):
    tables = run_with(tmp_path, PROJECTS + with_rollouts(createissueflag(), GA=100))
    by_project = outcomes_by_project(tables)
    # LA matches sentry first and its rollout 0 blocks later segments: still off for project 1.
    assert by_project[1] == {"ingest_disabled"}
    assert by_project[2] == {"noise_suppressed", "grouped"}
    assert by_project[3] == {"ingest_disabled"}  # no organization: empty context, always off
    assert by_project[4] == {"ingest_disabled"}  # early adopter: EA matches first, rollout 0 blocks
    (group,) = latest_groups(tables["groups"]).values()
    assert group["project_id"] == 2 and group["visible"] is True
    assert {m["project_id"] for m in tables["post_process"]} == {2}


def test_early_adopters_segment(tmp_path):
    by_project = outcomes_by_project(run_with(tmp_path, PROJECTS + with_rollouts(createissueflag(), EA=100)))
    assert by_project[4] == {"noise_suppressed", "grouped"}
    assert by_project[1] == by_project[2] == {"ingest_disabled"}


def test_post_process_and_visible_flags_gate_messages_and_visibility(tmp_path):
    flags = with_rollouts(createissueflag(), ingest_GA=100)  # ingest on; post-process and visible off
    tables = run_with(tmp_path, PROJECTS + flags)
    (group,) = latest_groups(tables["groups"]).values()
    assert group["visible"] is False and group["times_seen"] == 2
    assert not tables["post_process"]  # groups created, but nothing sent to post-processing


def test_a_group_created_while_post_process_was_off_never_sends_is_new():
    """The post-process flag is decided per occurrence at ingest; flipping it on later sends messages
    for later occurrences, none of them `is_new` (the seed's note)."""
    from issue_platform.grouptype import registry
    from issue_platform.rules_engine import RulesEngine, KeyState
    from issue_platform.tables import POST_PROCESS
    from issue_platform.pending import Admission, Display, PendingOccurrence, display_digest

    display = Display("t", "s", "c", "warning", "production")
    digest = display_digest(display.encode())
    processor = RulesEngine("2:" + "a" * 32, KeyState(), {digest: display}, registry)
    messages = []
    for i, post_process in enumerate([False, False, False, True, True]):
        event = PendingOccurrence(BASE + i, f"{i:032x}", f"{i:032x}", UNRELEASED, 50, digest, (), None,
                                  Admission(post_process=post_process))
        messages += [row for table, row in processor.apply(event) if table == POST_PROCESS]
    assert processor.state.group.times_seen == 3  # created by the 3rd (noise limit 3), flag off
    assert [m["is_new"] for m in messages] == [False, False]


def test_status_changes_are_not_gated(tmp_path):
    config_text = PROJECTS + with_rollouts(createissueflag(), ingest_GA=100)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(config_text)
    payloads = [occurrence("fp", project_id=2, type_id=UNRELEASED, t=BASE + i) for i in range(3)]
    payloads.append({"payload_type": "status_change", "fingerprint": ["fp"], "project_id": 2, "new_status": 1,
                     "new_substatus": None, "update_date": BASE + 10})
    out = tmp_path / "out"
    run(["--input", write_jsonl(tmp_path / "in.jsonl", payloads), "--output", str(out)], load_config(str(config_file)))
    (change,) = read_tables(out)["status_changes"]
    assert change["outcome"] == "applied"


@pytest.mark.parametrize("mutation, message", [
    (lambda f: f.__setitem__("enabled", "yes"), "enabled"),
    (lambda f: f["segments"][0].__setitem__("rollout", 101), "segments[0].rollout"),
    (lambda f: f["segments"][1]["conditions"][0].__setitem__("operator", "like"), "segments[1].conditions[0].operator"),
    (lambda f: f.pop("owner"), "owner"),
])
def test_malformed_features_are_config_errors_naming_feature_and_field(tmp_path, mutation, message):
    features = yaml.safe_load(createissueflag())
    name = next(iter(features))
    mutation(features[name])
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(PROJECTS + yaml.safe_dump(features))
    with pytest.raises(ConfigError) as error:
        load_config(str(config_file))
    assert name in str(error.value) and message in str(error.value)


def test_flags_command_shows_each_flag_per_project(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(PROJECTS + with_rollouts(createissueflag(), ingest_GA=100))
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "flags", "--config", str(config_file)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(SLUG)]
    assert [r[1:] for r in rows] == [["1", "sentry", "off", "off", "off"], ["2", "acme", "on", "off", "off"],
                                     ["3", "-", "off", "off", "off"], ["4", "globex", "off", "off", "off"]]
