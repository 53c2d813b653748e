"""Flagpole features: evaluation, contexts, parsing and `createissueflag` (issue_platform/flagpole.py;
reference §1.5 and §9)."""
import datetime
import hashlib
import pickle

import pytest
import yaml

from issue_platform.flagpole import (
    Condition,
    ConditionTypeMismatch,
    EvaluationContext,
    Feature,
    FeatureConfigError,
    Owner,
    Segment,
    context_for,
    glob_star_match,
    issue_flag_features,
    parse_feature,
    parse_features,
    render_createissueflag,
)

TODAY = datetime.date(2025, 4, 9)
FLAG = "organizations:issue-cron-job-late-ingest"
KEY = f"feature.{FLAG}"


def sha1_id(text: str) -> int:
    """flagpole's context id, computed independently: big-endian int of SHA-1 of the text."""
    return int.from_bytes(hashlib.sha1(text.encode("utf8")).digest(), "big")


def org_context(org_id: int, slug="acme", early_adopter=False, project=None) -> EvaluationContext:
    return context_for({"id": org_id, "slug": slug, "early_adopter": early_adopter}, 7, project)


def feature(*segments, enabled=True) -> Feature:
    return Feature(FLAG, Owner("crons"), enabled, tuple(segments), "2025-04-09")


def condition_holds(operator, value, data):
    return Condition("p", operator, value).match(EvaluationContext(data))


# --- operators ------------------------------------------------------------------------------------

@pytest.mark.parametrize("operator, value, data, expected", [
    # in / not_in: scalar property in a list; strings case-insensitive; no str/int coercion
    ("in", ["bar", "baz"], {"p": "bar"}, True),
    ("in", ["bar", "baz"], {"p": "qux"}, False),
    ("in", ["bAr", "baz"], {"p": "BaR"}, True),
    ("in", [1, 2], {"p": 2}, True),
    ("in", [1, 2], {"p": 3}, False),
    ("in", ["123"], {"p": 123}, False),
    ("in", ["123"], {"p": "123"}, True),
    ("in", ["bar"], {}, False),                    # missing property: None is in nothing
    ("not_in", ["bar", "baz"], {"p": "bar"}, False),
    ("not_in", ["bar", "baz"], {"p": "qux"}, True),
    ("not_in", ["bAr"], {"p": "BAR"}, False),
    ("not_in", ["bar"], {}, True),
    # contains / not_contains: list property holds the value; case-insensitive
    ("contains", "bar", {"p": ["foo", "bar"]}, True),
    ("contains", "baz", {"p": ["foo", "bar"]}, False),
    ("contains", "BAR", {"p": ["foo", "bAr"]}, True),
    ("contains", 1, {"p": [1, 2]}, True),
    ("contains", 1, {"p": [3, 4]}, False),
    ("not_contains", "bar", {"p": ["foo", "bar"]}, False),
    ("not_contains", "baz", {"p": ["foo", "bar"]}, True),
    # equals / not_equals: same type; strings case-insensitive; missing property is never equal
    ("equals", "foo", {"p": "foo"}, True),
    ("equals", "bAr", {"p": "BaR"}, True),
    ("equals", "bar", {"p": "foo"}, False),
    ("equals", True, {"p": True}, True),
    ("equals", True, {"p": False}, False),
    ("equals", 5, {"p": 5}, True),
    ("equals", ["a", "b"], {"p": ["a", "b"]}, True),
    ("equals", ["a", "b"], {"p": ["A", "b"]}, False),   # only plain strings are lowered
    ("equals", "foo", {}, False),
    ("not_equals", "foo", {"p": "FOO"}, False),
    ("not_equals", "bar", {"p": "foo"}, True),
    ("not_equals", "foo", {}, True),
    # matches / not_matches: any glob pattern, case-insensitive
    ("matches", ["acme-*"], {"p": "ACME-eu"}, True),
    ("matches", ["*@sentry.io", "x"], {"p": "jane@sentry.io"}, True),
    ("matches", ["*@sentry.io"], {"p": "jane@example.com"}, False),
    ("matches", ["a*"], {}, False),
    ("not_matches", ["acme-*"], {"p": "acme-us"}, False),
    ("not_matches", ["acme-*"], {"p": "other"}, True),
])
def test_operator(operator, value, data, expected):
    assert condition_holds(operator, value, data) is expected


@pytest.mark.parametrize("operator, value, data", [
    ("in", ["bar"], {"p": []}),            # `in` needs a single value
    ("not_in", ["bar"], {"p": ["bar"]}),
    ("in", ["bar"], {"p": {"a": 1}}),
    ("contains", "bar", {"p": "bar"}),     # `contains` needs a list ...
    ("not_contains", "bar", {"p": "bar"}),
    ("contains", "bar", {}),               # ... and a missing property is not one
    ("equals", ["foo"], {"p": "foo"}),     # `equals` needs the value's type
    ("not_equals", "foo", {"p": 1}),
    ("equals", True, {"p": 1}),
    ("equals", 1.0, {"p": 1}),
    ("matches", ["a*"], {"p": ["a"]}),
    ("not_matches", ["a*"], {"p": {"a": 1}}),
])
def test_type_mismatch_raises_at_condition_level(operator, value, data):
    with pytest.raises(ConditionTypeMismatch):
        condition_holds(operator, value, data)


@pytest.mark.parametrize("pattern, value, expected", [
    ("sentry", "sentry", True), ("sentry", "getsentry", False), ("acme*", "acme", True),
    ("acme*", "ACME42", True), ("*@sentry.io", "a@sentry.io", True), ("a*b*c", "aXbYc", True),
    ("a*b*c", "aXc", False), ("a**b", "ab", True), ("*", "", True), ("a*a", "a", False),
    ("a*a", "aa", True), ("ab*ab", "ab", False), ("a?c", "abc", False), ("[ab]", "a", False),
])
def test_glob_only_star_is_special(pattern, value, expected):
    assert glob_star_match(pattern, value) is expected


# --- features: segments, rollout, enabled -----------------------------------------------------------

def seg(name, rollout, *conditions):
    return Segment(name, tuple(conditions), rollout)


IS_ACME = Condition("organization_slug", "in", ["acme"])
IS_EA = Condition("organization_is-early-adopter", "equals", True)


def bucket_of(org_id: int) -> int:
    return sha1_id(f"organization_id:{org_id}") % 100


# An organization whose bucket leaves room on both sides of the `<=` boundary.
ORG = next(i for i in range(1, 1000) if 2 <= bucket_of(i) <= 98)
B = bucket_of(ORG)


@pytest.mark.parametrize("segments, context, expected", [
    ((), org_context(ORG), False),                                     # no segments: off
    ((seg("GA", 100),), org_context(ORG), True),                       # empty conditions: everyone
    ((seg("GA", 0),), org_context(ORG), False),
    ((seg("LA", 100, IS_ACME),), org_context(ORG, slug="ACME"), True),
    ((seg("LA", 100, IS_ACME),), org_context(ORG, slug="other"), False),
    ((seg("LA", 100, IS_ACME), seg("GA", 0)), org_context(ORG), True),  # first match decides
    ((seg("LA", 0, IS_ACME), seg("GA", 100)), org_context(ORG), False),  # rollout 0 blocks later ones
    ((seg("LA", 0, IS_ACME), seg("GA", 100)), org_context(ORG, slug="other"), True),
    ((seg("EA", 100, IS_EA),), org_context(ORG, early_adopter=True), True),
    ((seg("EA", 100, IS_EA),), org_context(ORG, early_adopter=False), False),
    ((seg("both", 100, IS_ACME, IS_EA),), org_context(ORG, early_adopter=False), False),  # all must hold
    ((seg("GA", B),), org_context(ORG), True),                         # id % 100 <= rollout
    ((seg("GA", B - 1),), org_context(ORG), False),
    ((seg("GA", B + 1),), org_context(ORG), True),
    ((seg("GA", 1),), EvaluationContext({}), False),                   # sha1("") % 100 == 5
    ((seg("GA", 5),), EvaluationContext({}), True),
    ((seg("p", 100, Condition("project_slug", "in", ["web"])),), org_context(ORG, project={"slug": "Web"}), True),
    ((seg("p", 100, Condition("project_slug", "in", ["web"])),), org_context(ORG), False),
])
def test_feature_match(segments, context, expected):
    assert feature(*segments).match(context) is expected


def test_partial_rollout_buckets_by_organization_not_project():
    one = context_for({"id": ORG, "slug": "acme"}, 1, {"slug": "web"})
    other = context_for({"id": ORG, "slug": "renamed", "name": "X", "early_adopter": True}, 2)
    assert one.id == other.id == sha1_id(f"organization_id:{ORG}")


def test_disabled_feature_is_off():
    assert feature(seg("GA", 100)).match(org_context(ORG))
    assert not feature(seg("GA", 100), enabled=False).match(org_context(ORG))


def test_type_mismatch_switches_the_whole_feature_off_like_features_has():
    mismatching = seg("bad", 100, Condition("organization_slug", "contains", "acme"))  # slug is no list
    flag = feature(mismatching, seg("GA", 100))
    assert flag.match(org_context(ORG)) is False                       # GA is never reached
    with pytest.raises(ConditionTypeMismatch):
        flag.match(org_context(ORG), strict=True)                      # flagpole's own Feature.match
    # a mismatch in a segment after the deciding one is never evaluated
    assert feature(seg("GA", 100), mismatching).match(org_context(ORG)) is True


# --- evaluation context ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, identity, expected", [
    # Vectors from Sentry's tests/flagpole/test_evaluation_context.py
    ({}, None, 1245845410931227995499360226027473197403882391305),
    ({"foo": "bar", "baz": "barfoo"}, None, 1249805218608667754842212156585681631068251083301),
    ({"foo": "bar", "baz": "barfoo", "test": "property"}, None,
     1395427532315258482176540981434194664973697472186),
    ({"foo": "bar", "baz": "barfoo"}, {"foo"}, 484477975355580460928302712356218993825269143262),
    ({"foo": "bar", "baz": "barfoo"}, {"foo", "whoops"}, 484477975355580460928302712356218993825269143262),
    ({"foo": "bar", "baz": "barfoo"}, {"whoops"}, 1249805218608667754842212156585681631068251083301),
    # the formula: sorted keys, key:str(value) joined by ":"
    ({"b": True, "a": 1, "c": 1.0}, None, sha1_id("a:1:b:True:c:1.0")),
    ({"a": ["x", "y"]}, None, sha1_id("a:['x', 'y']")),
])
def test_context_id(data, identity, expected):
    context = EvaluationContext(data, identity)
    assert context.id == expected


def test_context_copies_its_data_and_pickles():
    data = {"organization_slug": "acme"}
    context = EvaluationContext(data)
    data["organization_slug"] = "changed"
    assert context.get("organization_slug") == "acme" and context.has("organization_slug")
    assert not context.has("nope") and context.get("nope") is None
    assert pickle.loads(pickle.dumps(context)) == context
    assert pickle.loads(pickle.dumps(context)).id == context.id
    assert context.identity_fields == frozenset({"organization_slug"})


@pytest.mark.parametrize("organization, project, expected", [
    ({"id": 10, "slug": "acme"}, None,
     {"organization_id": 10, "organization_slug": "acme", "organization_is-early-adopter": False,
      "project_id": 7}),
    ({"id": 10, "slug": "acme", "name": "Acme", "early_adopter": True}, {"slug": "web", "name": "Web"},
     {"organization_id": 10, "organization_slug": "acme", "organization_name": "Acme",
      "organization_is-early-adopter": True, "project_id": 7, "project_slug": "web", "project_name": "Web"}),
    (None, {"slug": "web"}, {}),
])
def test_context_for(organization, project, expected):
    context = context_for(organization, 7, project)
    assert dict(context.data) == expected
    if organization is not None:
        assert context.identity_fields == frozenset({"organization_id"})


@pytest.mark.parametrize("organization, project, message", [
    ({"slug": "acme"}, None, "organization.id: required"),
    ({"id": 1, "slug": 5}, None, "organization.slug: required"),
    ({"id": True, "slug": "a"}, None, "organization.id"),
    ({"id": 1, "slug": "a", "early-adopter": True}, None, "organization: unknown field(s) early-adopter"),
    ({"id": 1, "slug": "a"}, {"platform": "python"}, "project: unknown field(s) platform"),
])
def test_context_for_refuses_bad_input(organization, project, message):
    with pytest.raises(FeatureConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        context_for(organization, 7, project)


# --- parsing -----------------------------------------------------------------------------------------

def body(**overrides):
    spec = {"created_at": "2025-04-09", "enabled": True, "owner": {"team": "crons", "email": None},
            "segments": [{"name": "GA", "rollout": 100, "conditions": []}]}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not ...}


def segment_with(condition=None, **overrides):
    spec = {"name": "LA", "rollout": 100,
            "conditions": [condition or {"property": "organization_slug", "operator": "in", "value": ["a"]}]}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not ...}


def test_parse_features_strips_the_prefix_and_builds_frozen_objects():
    features = parse_features({KEY: body(segments=[segment_with(), {"name": "GA", "conditions": []}])})
    assert list(features) == [FLAG]
    flag = features[FLAG]
    assert flag == Feature(FLAG, Owner("crons", None), True, (
        Segment("LA", (Condition("organization_slug", "in", ["a"]),), 100),
        Segment("GA", (), 100),                       # rollout absent: 100, as Segment.from_dict
    ), "2025-04-09")
    assert flag.match(org_context(ORG, slug="a"))
    assert parse_features(None) == {} and parse_features({}) == {}


@pytest.mark.parametrize("overrides, expected_owner, expected_created", [
    ({"owner": "crons"}, Owner("crons"), "2025-04-09"),                            # older string owner
    ({"owner": {"team": "crons"}}, Owner("crons"), "2025-04-09"),
    ({"owner": {"team": "c", "email": "c@x.io"}}, Owner("c", "c@x.io"), "2025-04-09"),
    ({"created_at": datetime.date(2025, 4, 9)}, Owner("crons"), "2025-04-09"),     # unquoted YAML date
    ({"created_at": "2024-05-14T10:11:12.123"}, Owner("crons"), "2024-05-14T10:11:12.123"),
    ({"enabled": ...}, Owner("crons"), "2025-04-09"),                              # enabled defaults true
])
def test_parse_accepts(overrides, expected_owner, expected_created):
    flag = parse_feature(KEY, body(**overrides))
    assert flag.owner == expected_owner and flag.created_at == expected_created and flag.enabled


@pytest.mark.parametrize("key, spec, message", [
    ("organizations:x", body(), "'organizations:x': keys must look like 'feature.<flag name>'"),
    ("feature.", body(), "'feature.': keys must look like"),
    (KEY, [], f"{KEY}: expected a mapping"),
    (KEY, body(owner=...), f"{KEY}: owner: required"),
    (KEY, body(segments=...), f"{KEY}: segments: required"),
    (KEY, body(created_at=...), f"{KEY}: created_at: required"),
    (KEY, body(color="red"), f"{KEY}: unknown field(s) color"),
    (KEY, body(name="x"), f"{KEY}: name: not allowed, the name comes from the key"),
    (KEY, body(enabled="false"), f"{KEY}: enabled: expected true or false"),
    (KEY, body(owner=""), f"{KEY}: owner: expected"),
    (KEY, body(owner={"team": ""}), f"{KEY}: owner.team: required"),
    (KEY, body(owner={"team": "a", "slack": "#a"}), f"{KEY}: owner: unknown field(s) slack"),
    (KEY, body(owner={"team": "a", "email": 5}), f"{KEY}: owner.email: expected a string or null"),
    (KEY, body(created_at="09/04/2025"), f"{KEY}: created_at: expected YYYY-MM-DD"),
    (KEY, body(created_at="2023-10-12T00:00:00.000Z"), f"{KEY}: created_at: expected YYYY-MM-DD"),
    (KEY, body(created_at="2025-13-45"), f"{KEY}: created_at: '2025-13-45' is not a valid date"),
    (KEY, body(experiment_mode="ab"), f"{KEY}: experiment_mode: expected 'simple' or null"),
    (KEY, body(segments={"GA": {}}), f"{KEY}: segments: expected a list"),
    (KEY, body(segments=["GA"]), f"{KEY}: segments[0]: expected a mapping"),
    (KEY, body(segments=[segment_with(), segment_with(name="")]), f"{KEY}: segments[1].name: required"),
    (KEY, body(segments=[segment_with(name=...)]), f"{KEY}: segments[0].name: required"),
    (KEY, body(segments=[segment_with(rollout=101)]), f"{KEY}: segments[0].rollout: expected a whole percentage"),
    (KEY, body(segments=[segment_with(rollout=-1)]), f"{KEY}: segments[0].rollout"),
    (KEY, body(segments=[segment_with(rollout=50.5)]), f"{KEY}: segments[0].rollout"),
    (KEY, body(segments=[segment_with(rollout=True)]), f"{KEY}: segments[0].rollout"),
    (KEY, body(segments=[segment_with(rollout=None)]), f"{KEY}: segments[0].rollout"),
    (KEY, body(segments=[segment_with(conditions=...)]), f"{KEY}: segments[0].conditions: required"),
    (KEY, body(segments=[segment_with(conditions={})]), f"{KEY}: segments[0].conditions: expected a list"),
    (KEY, body(segments=[segment_with(when="now")]), f"{KEY}: segments[0]: unknown field(s) when"),
    (KEY, body(segments=[segment_with(), segment_with({"property": "p", "operator": "like", "value": "x"})]),
     f"{KEY}: segments[1].conditions[0].operator: unknown operator 'like'"),
    (KEY, body(segments=[segment_with({"operator": "in", "value": ["x"]})]),
     f"{KEY}: segments[0].conditions[0].property: required"),
    (KEY, body(segments=[segment_with({"property": "p", "value": ["x"]})]),
     f"{KEY}: segments[0].conditions[0].operator: required"),
    (KEY, body(segments=[segment_with({"property": "p", "operator": "in"})]),
     f"{KEY}: segments[0].conditions[0].value: required"),
    (KEY, body(segments=[segment_with({"property": "", "operator": "in", "value": []})]),
     f"{KEY}: segments[0].conditions[0].property: expected a non-empty string"),
    (KEY, body(segments=[segment_with({"property": "p", "operator": "in", "value": ["x"], "kind": 1})]),
     f"{KEY}: segments[0].conditions[0]: unknown field(s) kind"),
    (KEY, body(segments=[segment_with("in")]), f"{KEY}: segments[0].conditions[0]: expected a mapping"),
])
def test_parse_refuses_and_names_the_field(key, spec, message):
    with pytest.raises(FeatureConfigError) as error:
        parse_features({key: spec})
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("operator, value, ok", [
    ("in", ["a", "b"], True), ("in", [1, 2.5], True), ("in", [], True),
    ("in", "a", False), ("in", ["a", 1], False), ("in", [True], False), ("in", [["a"]], False),
    ("not_in", [1], True), ("not_in", None, False),
    ("contains", "a", True), ("contains", 1, True), ("contains", 2.5, True),
    ("contains", ["a"], False), ("contains", True, False), ("contains", None, False),
    ("not_contains", {"a": 1}, False),
    ("equals", "a", True), ("equals", 1, True), ("equals", True, True), ("equals", [], True),
    ("equals", ["a"], True), ("equals", [1], True),
    ("equals", None, False), ("equals", {"a": 1}, False), ("equals", [True], False),
    ("not_equals", ["a", 1], False),
    ("matches", ["a*", "b"], True), ("matches", "a*", False), ("matches", [1], False),
    ("not_matches", ["*x"], True), ("not_matches", None, False),
])
def test_condition_value_types(operator, value, ok):
    spec = body(segments=[segment_with({"property": "p", "operator": operator, "value": value})])
    if ok:
        assert parse_feature(KEY, spec).segments[0].conditions[0].value == value
    else:
        with pytest.raises(FeatureConfigError, match=rf"segments\[0\]\.conditions\[0\]\.value: '{operator}' needs"):
            parse_feature(KEY, spec)


def test_condition_name_label_is_accepted():
    spec = body(segments=[segment_with({"name": "internal", "property": "p", "operator": "in", "value": ["a"]})])
    assert parse_feature(KEY, spec).segments[0].conditions[0] == Condition("p", "in", ["a"])


def test_feature_config_error_is_a_value_error():
    assert issubclass(FeatureConfigError, ValueError)


# --- createissueflag ---------------------------------------------------------------------------------

def expected_issue_flag_body():
    return {
        "created_at": "2025-04-09",
        "enabled": True,
        "owner": {"team": "Test Owner", "email": None},
        "segments": [
            {"name": "LA", "rollout": 0, "conditions": [
                {"property": "organization_slug", "operator": "in",
                 "value": ["sentry", "sentry-eu", "sentry-sdks", "sentry-st"]}]},
            {"name": "EA", "rollout": 0, "conditions": [
                {"property": "organization_is-early-adopter", "operator": "equals", "value": True}]},
            {"name": "GA", "rollout": 0, "conditions": []},
        ],
    }


def test_issue_flag_features_matches_sentrys_test():
    features = issue_flag_features("uptime_domain_failure", "Test Owner", TODAY)
    assert list(features) == [
        "feature.organizations:issue-uptime-domain-failure-visible",
        "feature.organizations:issue-uptime-domain-failure-ingest",
        "feature.organizations:issue-uptime-domain-failure-post-process-group",
    ]
    for flag_body in features.values():
        assert flag_body == expected_issue_flag_body()
        assert list(flag_body) == ["created_at", "enabled", "owner", "segments"]
    bodies = list(features.values())
    assert bodies[0] is not bodies[1] and bodies[0]["segments"] is not bodies[1]["segments"]


@pytest.mark.parametrize("slug, owner", [("", "team"), (None, "team"), ("x", ""), ("x", "  ")])
def test_issue_flag_features_refuses_empty_input(slug, owner):
    with pytest.raises(FeatureConfigError):
        issue_flag_features(slug, owner, TODAY)


def generated_yaml(output: str) -> dict:
    head, tail = output.split("=== GENERATED YAML ===\n")  # as Sentry's test splits it
    assert head == "\n"
    return yaml.safe_load(tail)


def test_render_createissueflag_output_shape():
    features = issue_flag_features("uptime_domain_failure", "Test Owner", TODAY)
    output = render_createissueflag(features)
    assert output.startswith("\n=== GENERATED YAML ===\n\n")
    assert output.endswith("\n\n")
    assert "&id" not in output and "*id" not in output            # no YAML anchors/aliases
    assert "created_at: '2025-04-09'" in output                    # stays a string when re-read
    loaded = generated_yaml(output)
    assert loaded == {key: expected_issue_flag_body() for key in features}
    assert output.index("-ingest:") < output.index("-post-process-group:") < output.index("-visible:")  # sorted


def test_paste_back_round_trip():
    output = render_createissueflag(issue_flag_features("cron_job_late", "crons", TODAY))
    pasted = generated_yaml(output)
    features = parse_features(pasted)
    assert set(features) == {FLAG, "organizations:issue-cron-job-late-visible",
                             "organizations:issue-cron-job-late-post-process-group"}
    sentry_org = org_context(ORG, slug="Sentry", early_adopter=True)
    acme = org_context(ORG, slug="acme")
    # As generated every segment is at 0: off for everyone, including the LA organizations.
    assert not any(f.match(ctx) for f in features.values() for ctx in (sentry_org, acme))

    pasted[KEY]["segments"][2]["rollout"] = 100                     # GA
    ingest = parse_features(pasted)[FLAG]
    assert ingest.match(acme)
    assert not ingest.match(sentry_org)                              # LA at 0 still blocks sentry orgs
    assert not parse_features(pasted)["organizations:issue-cron-job-late-visible"].match(acme)

    pasted[KEY]["segments"][0]["rollout"] = 100                     # LA
    assert parse_features(pasted)[FLAG].match(sentry_org)
    pasted[KEY]["segments"][2]["rollout"] = 0
    assert not parse_features(pasted)[FLAG].match(acme)


def test_flagpole_module_does_not_import_beam():
    import subprocess
    import sys

    code = "import sys, issue_platform.flagpole; assert 'apache_beam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
