"""Sentry's flagpole feature flags: parse, evaluate, and generate the `createissueflag` YAML.

Unreleased issue types are gated by three organization flags (reference §1.5). In Sentry they live
in flagpole (`getsentry/sentry:src/flagpole/`), written in options-automator YAML like::

    feature.organizations:issue-cron-job-late-ingest:
      created_at: '2025-04-09'
      enabled: true
      owner: {team: crons, email: null}
      segments:
      - name: LA
        rollout: 100
        conditions:
        - {property: organization_slug, operator: in, value: [acme]}
      - {name: GA, rollout: 0, conditions: []}

Behaviour reproduced here, with the Sentry file each rule was read from:

* Evaluation (`flagpole/__init__.py` Feature.match, `flagpole/conditions.py` Segment): a disabled
  feature is off; segments are tried in order and the first whose conditions all hold decides
  through its rollout; an empty condition list always holds; no matching segment means off.
  Rollout 0 is off and so *blocks* later segments; 1..99 admits `context.id % 100 <= rollout`
  (note `<=`: 50 admits 51 of 100 buckets); 100 is on.
* Conditions (`flagpole/conditions.py`): strings compare case-insensitively (both sides lowered).
  `in` wants a scalar property (a list or dict raises); `contains` wants a list property (anything
  else, a missing property included, raises); `equals` is False for a missing property and raises
  when the property is not an instance of the value's type. `not_*` negate (and raise alike).
* A raised type mismatch leaves flagpole's `Feature.match`; Sentry's `FeatureManager.has`
  (`sentry/features/manager.py`) catches every exception and answers False. So `Feature.match`
  here answers False for the whole feature (later segments are not consulted);
  `Feature.match(ctx, strict=True)` raises `ConditionTypeMismatch` like flagpole itself.
* `EvaluationContext.id` (`flagpole/evaluation_context.py`): the big-endian integer of
  SHA-1(":".join([key1, str(value1), key2, str(value2), ...])) over the sorted identity fields
  that are present in the data, or over all keys when none is.

Not reproduced (sources incomplete in the store, see the module's report): newest flagpole buckets
partial rollouts by feature name as well for features created after 2026-10-15, and documents
`in` on a list property as "any entry"; the code of either was not available.

Deliberately stricter than Sentry: every field is validated (Sentry's parser coerces, e.g.
`enabled: "false"` becomes True) and unknown keys are refused, so a typo is an error rather than a
silently different flag.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from issue_platform.grouptype import feature_flag_base

FEATURE_KEY_PREFIX = "feature."
OPERATORS = ("in", "not_in", "contains", "not_contains", "equals", "not_equals", "matches", "not_matches")
LA_ORGANIZATIONS = ("sentry", "sentry-eu", "sentry-sdks", "sentry-st")
GENERATED_YAML_HEADER = "=== GENERATED YAML ==="

# flagpole-schema.json: `created_at` is a date with an optional time (no zone).
_CREATED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?)?$")
_FEATURE_KEYS = {"created_at", "enabled", "owner", "segments", "experiment_mode"}
_SEGMENT_KEYS = {"name", "rollout", "conditions"}
_CONDITION_KEYS = {"property", "operator", "value", "name"}  # `name` is a label Sentry's examples use
_OWNER_KEYS = {"team", "email"}
_ORGANIZATION_KEYS = {"id", "slug", "name", "early_adopter"}
_PROJECT_KEYS = {"slug", "name"}


class FeatureConfigError(ValueError):
    """A flag definition that cannot be used; the message names the feature key and field path."""


class ConditionTypeMismatch(Exception):
    """A condition met a context value of the wrong kind (flagpole's ConditionTypeMismatchException)."""


# --- evaluation context ------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationContext:
    """The properties a flag is evaluated against, and the identity its rollout bucket comes from.

    `identity_fields` is trimmed to the fields present in `data`; when that leaves nothing, every
    key is an identity field (flagpole's rule). `id` is computed once, as flagpole does."""

    data: Mapping[str, Any] = field(default_factory=dict, hash=False)
    identity_fields: Optional[frozenset] = None
    id: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = copy.deepcopy(dict(self.data))
        present = frozenset(f for f in (self.identity_fields or ()) if f in data) or frozenset(data)
        vector: list[str] = []
        for key in sorted(present):
            vector += [key, str(data[key])]
        digest = hashlib.sha1(":".join(vector).encode("utf8")).digest()
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "identity_fields", present)
        object.__setattr__(self, "id", int.from_bytes(digest, byteorder="big"))

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data


def context_for(organization: Optional[dict], project_id: int,
                project: Optional[dict] = None) -> EvaluationContext:
    """The context Sentry builds for an organization flag check, from our project settings.

    `organization` is `{id, slug, name?, early_adopter?}`; `project` is `{slug?, name?}`. Keys as
    Sentry's `sentry/features/flagpole_context.py`: organization_id, organization_slug,
    organization_name, organization_is-early-adopter (always present, default False), project_id,
    project_slug, project_name. Without an organization the context is empty (the caller treats
    unreleased types as off).

    The identity is `organization_id` alone. Issue flags are checked as
    `features.has(name, organization)`, whose context has no project, so Sentry buckets a partial
    rollout per organization: sha1("organization_id:<id>"). The project keys are an addition (they
    let a condition target a project); they do not move the bucket."""
    if organization is None:
        return EvaluationContext({})
    _check_keys(organization, _ORGANIZATION_KEYS, "organization")
    for key, kind in (("id", int), ("slug", str)):
        value = organization.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise FeatureConfigError(f"organization.{key}: required, a {kind.__name__}, got {value!r}")
    data: dict[str, Any] = {"organization_id": organization["id"], "organization_slug": organization["slug"]}
    if organization.get("name") is not None:
        data["organization_name"] = organization["name"]
    data["organization_is-early-adopter"] = bool(organization.get("early_adopter", False))
    data["project_id"] = project_id
    project = project or {}
    _check_keys(project, _PROJECT_KEYS, "project")
    for key in ("slug", "name"):
        if project.get(key) is not None:
            data[f"project_{key}"] = project[key]
    return EvaluationContext(data, frozenset({"organization_id"}))


def _check_keys(mapping: Any, allowed: set, where: str) -> None:
    if not isinstance(mapping, dict):
        raise FeatureConfigError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = set(mapping) - allowed
    if unknown:
        raise FeatureConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")


# --- conditions, segments, features -------------------------------------------------------------

def _lowered(values) -> set:
    return {v.lower() if isinstance(v, str) else v for v in values}


def glob_star_match(pattern: str, value: str) -> bool:
    """Case-insensitive glob where only `*` is special (any run of characters, even none)."""
    pattern, value = pattern.lower(), value.lower()
    parts = pattern.split("*")
    if len(parts) == 1:
        return value == pattern
    head, middle, tail = parts[0], parts[1:-1], parts[-1]
    if len(value) < len(head) + len(tail) or not value.startswith(head) or not value.endswith(tail):
        return False
    position, end = len(head), len(value) - len(tail)
    for part in middle:
        if part:
            found = value.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
    return True


@dataclass(frozen=True)
class Condition:
    """`property <operator> value`; see the module docstring for each operator's rules."""

    property: str
    operator: str
    value: Any

    def match(self, context: EvaluationContext) -> bool:
        """Raises ConditionTypeMismatch where flagpole raises ConditionTypeMismatchException."""
        prop = context.get(self.property)
        positive = self.operator.removeprefix("not_")
        result = getattr(self, f"_{positive}")(prop)
        return result if positive == self.operator else not result

    def _mismatch(self, prop: Any, wanted: str) -> ConditionTypeMismatch:
        return ConditionTypeMismatch(f"'{self.operator}' on {self.property!r} needs {wanted}, "
                                     f"got {type(prop).__name__} {prop!r}")

    def _in(self, prop: Any) -> bool:
        if isinstance(prop, (list, dict)):
            raise self._mismatch(prop, "a single value")
        return (prop.lower() if isinstance(prop, str) else prop) in _lowered(self.value)

    def _contains(self, prop: Any) -> bool:
        if not isinstance(prop, list):
            raise self._mismatch(prop, "a list")
        return (self.value.lower() if isinstance(self.value, str) else self.value) in _lowered(prop)

    def _equals(self, prop: Any) -> bool:
        if prop is None:
            return False
        if not isinstance(prop, type(self.value)):
            raise self._mismatch(prop, f"a {type(self.value).__name__}")
        if isinstance(prop, str):
            return prop.lower() == self.value.lower()
        return prop == self.value

    def _matches(self, prop: Any) -> bool:
        # Added to flagpole by PR #115385 (2026-05); its code was not in the store. From the PR:
        # any pattern matching wins, case-insensitively, and a list/dict property is a type
        # mismatch. Assumed here: a missing property matches nothing; other scalars match as str().
        if isinstance(prop, (list, dict)):
            raise self._mismatch(prop, "a single value")
        if prop is None:
            return False
        return any(glob_star_match(pattern, str(prop)) for pattern in self.value)


@dataclass(frozen=True)
class Segment:
    """A named audience: when all `conditions` hold, `rollout` percent of it gets the feature."""

    name: str
    conditions: tuple[Condition, ...] = ()
    rollout: int = 100

    def match(self, context: EvaluationContext) -> bool:
        """All conditions hold (an empty list always does). May raise ConditionTypeMismatch."""
        return all(condition.match(context) for condition in self.conditions)

    def in_rollout(self, context: EvaluationContext) -> bool:
        if self.rollout == 0:
            return False  # a matching segment at 0 switches the feature off, whatever follows
        if self.rollout < 100:
            return context.id % 100 <= self.rollout
        return True


@dataclass(frozen=True)
class Owner:
    team: str
    email: Optional[str] = None


@dataclass(frozen=True)
class Feature:
    """One flagpole feature. `name` is the flag name, without the `feature.` key prefix."""

    name: str
    owner: Owner
    enabled: bool = True
    segments: tuple[Segment, ...] = ()
    created_at: Optional[str] = None
    experiment_mode: Optional[str] = None  # newest flagpole; maps on/off to active/control only

    def match(self, context: EvaluationContext, *, strict: bool = False) -> bool:
        """Whether the feature is on for `context`.

        A condition type mismatch makes the answer False, as Sentry's `features.has` does (it
        catches the exception flagpole raises); `strict=True` lets the exception through."""
        if not self.enabled:
            return False
        try:
            for segment in self.segments:
                if segment.match(context):
                    return segment.in_rollout(context)
        except ConditionTypeMismatch:
            if strict:
                raise
        return False


# --- parsing -------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar_list(value: Any) -> bool:
    """flagpole-schema.json: an array of integers, of numbers or of strings (not mixed, no bools)."""
    return isinstance(value, list) and (all(isinstance(v, str) for v in value)
                                        or all(_is_number(v) for v in value))


_VALUE_RULES = {
    "in": (_is_scalar_list, "a list of strings or of numbers"),
    "contains": (lambda v: isinstance(v, str) or _is_number(v), "a single string or number"),
    "equals": (lambda v: isinstance(v, (str, bool)) or _is_number(v) or _is_scalar_list(v),
               "a string, number, boolean, or list of strings or of numbers"),
    "matches": (lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
                "a list of glob patterns (strings)"),
}


def _unknown(mapping: dict, allowed: set, fail, where: str) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        fail(f"{where}unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def _parse_condition(spec: Any, fail, where: str) -> Condition:
    if not isinstance(spec, dict):
        fail(f"{where}: expected a mapping {{property, operator, value}}, got {spec!r}")
    _unknown(spec, _CONDITION_KEYS, fail, f"{where}: ")
    for key in ("property", "operator", "value"):
        if key not in spec:
            fail(f"{where}.{key}: required")
    prop, operator, value = spec["property"], spec["operator"], spec["value"]
    if not isinstance(prop, str) or not prop:
        fail(f"{where}.property: expected a non-empty string, got {prop!r}")
    if operator not in OPERATORS:
        fail(f"{where}.operator: unknown operator {operator!r} (one of {', '.join(OPERATORS)})")
    accepts, wanted = _VALUE_RULES[operator.removeprefix("not_")]
    if not accepts(value):
        fail(f"{where}.value: '{operator}' needs {wanted}, got {value!r}")
    if "name" in spec and not isinstance(spec["name"], str):
        fail(f"{where}.name: expected a string, got {spec['name']!r}")
    return Condition(prop, operator, copy.deepcopy(value))


def _parse_segment(spec: Any, fail, where: str) -> Segment:
    if not isinstance(spec, dict):
        fail(f"{where}: expected a mapping {{name, rollout, conditions}}, got {spec!r}")
    _unknown(spec, _SEGMENT_KEYS, fail, f"{where}: ")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        fail(f"{where}.name: required, a non-empty string, got {name!r}")
    # flagpole-schema.json says `default: 0`, but Segment.from_dict (what Sentry runs) uses 100.
    rollout = spec.get("rollout", 100)
    if not isinstance(rollout, int) or isinstance(rollout, bool) or not 0 <= rollout <= 100:
        fail(f"{where}.rollout: expected a whole percentage 0..100, got {rollout!r}")
    if "conditions" not in spec:  # required by the schema; [] (match everyone) must be explicit
        fail(f"{where}.conditions: required (use [] to match everyone)")
    conditions = spec["conditions"]
    if not isinstance(conditions, list):
        fail(f"{where}.conditions: expected a list, got {conditions!r}")
    return Segment(name, tuple(_parse_condition(c, fail, f"{where}.conditions[{i}]")
                               for i, c in enumerate(conditions)), rollout)


def _parse_owner(owner: Any, fail) -> Owner:
    if isinstance(owner, str) and owner:
        return Owner(owner)  # older flagpole: a team name or email address
    if not isinstance(owner, dict):
        fail(f"owner: expected {{team, email}} or a non-empty string, got {owner!r}")
    _unknown(owner, _OWNER_KEYS, fail, "owner: ")
    team, email = owner.get("team"), owner.get("email")
    if not isinstance(team, str) or not team:
        fail(f"owner.team: required, a non-empty string, got {team!r}")
    if email is not None and not isinstance(email, str):
        fail(f"owner.email: expected a string or null, got {email!r}")
    return Owner(team, email)


def _parse_created_at(value: Any, fail) -> str:
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2025-04-09 as a date
        value = value.isoformat()
    if not isinstance(value, str) or not _CREATED_AT.match(value):
        fail(f"created_at: expected YYYY-MM-DD with an optional THH:MM:SS time, got {value!r}")
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        fail(f"created_at: {value!r} is not a valid date")
    return value


def parse_feature(key: str, body: Any) -> Feature:
    """One `feature.<flag name>: {...}` entry. Raises FeatureConfigError naming key and field."""

    def fail(message: str):
        raise FeatureConfigError(f"{key}: {message}")

    if not isinstance(key, str) or not key.startswith(FEATURE_KEY_PREFIX) or key == FEATURE_KEY_PREFIX:
        raise FeatureConfigError(f"{key!r}: keys must look like 'feature.<flag name>', "
                                 "e.g. 'feature.organizations:issue-cron-job-late-ingest'")
    if not isinstance(body, dict):
        fail(f"expected a mapping {{created_at, enabled, owner, segments}}, got {body!r}")
    if "name" in body:
        fail("name: not allowed, the name comes from the key")
    _unknown(body, _FEATURE_KEYS, fail, "")
    for required in ("owner", "segments", "created_at"):
        if required not in body:
            fail(f"{required}: required")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        fail(f"enabled: expected true or false, got {enabled!r}")
    segments = body["segments"]
    if not isinstance(segments, list):
        fail(f"segments: expected a list, got {segments!r}")
    experiment_mode = body.get("experiment_mode")
    if experiment_mode not in (None, "simple"):
        fail(f"experiment_mode: expected 'simple' or null, got {experiment_mode!r}")
    return Feature(
        name=key[len(FEATURE_KEY_PREFIX):],
        owner=_parse_owner(body["owner"], fail),
        enabled=enabled,
        segments=tuple(_parse_segment(s, fail, f"segments[{i}]") for i, s in enumerate(segments)),
        created_at=_parse_created_at(body["created_at"], fail),
        experiment_mode=experiment_mode,
    )


def parse_features(mapping: Optional[dict]) -> dict[str, Feature]:
    """The `features:` section of a config: `feature.<flag name>` -> body, as flagpole.yml and
    `createissueflag` write it. Returns flag name -> Feature."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise FeatureConfigError(f"expected a mapping of 'feature.<flag name>' to a feature, got {mapping!r}")
    features = {}
    for key, body in mapping.items():
        feature = parse_feature(key, body)
        features[feature.name] = feature
    return features


# --- createissueflag -----------------------------------------------------------------------------

def _issue_flag_body(owner: str, today: datetime.date) -> dict:
    # A fresh dict per flag: shared objects would make yaml.dump write anchors and aliases.
    return {
        "created_at": today.isoformat(),
        "enabled": True,
        "owner": {"team": owner, "email": None},
        "segments": [
            {"name": "LA", "rollout": 0, "conditions": [
                {"property": "organization_slug", "operator": "in", "value": list(LA_ORGANIZATIONS)}]},
            {"name": "EA", "rollout": 0, "conditions": [
                {"property": "organization_is-early-adopter", "operator": "equals", "value": True}]},
            {"name": "GA", "rollout": 0, "conditions": []},
        ],
    }


def issue_flag_features(slug: str, owner: str, today: datetime.date) -> dict:
    """What `sentry createissueflag --slug --owner` generates: the visible, ingest and
    post-process-group flags of the type, all with LA/EA/GA segments at rollout 0 (everything
    off). Raising a segment's rollout releases the type to that audience."""
    if not isinstance(slug, str) or not slug:
        raise FeatureConfigError(f"slug: expected a non-empty string, got {slug!r}")
    if not isinstance(owner, str) or not owner.strip():
        raise FeatureConfigError(f"owner: expected a non-empty team name, got {owner!r}")
    base = feature_flag_base(slug)
    return {f"{FEATURE_KEY_PREFIX}{base}{suffix}": _issue_flag_body(owner.strip(), today)
            for suffix in ("-visible", "-ingest", "-post-process-group")}


def render_createissueflag(features: dict) -> str:
    """Exactly what Sentry's command writes to stdout (write it with sys.stdout.write, not print):
    `click.echo("")`, `click.echo("=== GENERATED YAML ===\\n")`, `click.echo(yaml.dump(...))`,
    with yaml.dump's defaults (keys sorted, block style). Everything after the header line is
    YAML that `yaml.safe_load` + `parse_features` accept."""
    import yaml

    return f"\n{GENERATED_YAML_HEADER}\n\n{yaml.dump(features)}\n"
