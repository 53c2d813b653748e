"""User configuration: extra issue types from a YAML/JSON file or from a Python module.

A config file looks like::

    group_types:
      - type_id: 900001
        slug: cron_job_late
        description: Cron job ran late
        category: CRON            # a GroupCategory name or number
        released: true
        default_priority: high    # low/medium/high or 25/50/75
        noise_config: {ignore_limit: 2, expiry_time: 90m}   # seconds, "90m", "24h", "2d"; or null
    projects:
      "1": {resolve_age: 24, organization: {id: 10, slug: acme, early_adopter: true}}
    features:                     # flagpole features, as `issue-platform createissueflag` prints them
      feature.organizations:issue-cron-job-late-ingest: {...}

Every error is a `ConfigError` whose message names the file, the entry and the field.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import time
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

from issue_platform.enums import GroupCategory, PriorityLevel
from issue_platform.flagpole import EvaluationContext, FeatureConfigError, context_for, parse_features
from issue_platform.grouptype import GroupType, GroupTypeRegistry, InvalidGroupTypeError, NoiseConfig, registry


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TYPE_FIELDS = {
    "type_id", "slug", "description", "category", "category_v2", "released", "noise_config",
    "enable_auto_resolve", "enable_escalation_detection", "default_priority",
}
_TOP_LEVEL = {"group_types", "projects", "features"}
_PROJECT_FIELDS = {"resolve_age", "organization", "slug", "name"}
_ORGANIZATION_FIELDS = {"id", "slug", "name", "early_adopter"}


def parse_duration(value: Any, where: str) -> timedelta:
    """Seconds (a number or numeric string) or a string like "90m", "24h", "2d"."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected seconds or a duration like '24h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ConfigError(f"{where}: expected seconds or a duration like '90m', '24h', '2d', got {value!r}")
    if seconds < 1:
        raise ConfigError(f"{where}: duration must be at least 1 second, got {value!r}")
    return timedelta(seconds=seconds)


def _enum_value(enum: type, value: Any, where: str) -> int:
    if isinstance(value, str) and value.upper() in enum.__members__:
        return int(enum[value.upper()])
    if isinstance(value, int) and not isinstance(value, bool) and value in enum._value2member_map_:
        return value
    names = ", ".join(m.lower() for m in enum.__members__)
    raise ConfigError(f"{where}: {value!r} is not one of {names} (or their numbers)")


def _noise_config(value: Any, where: str) -> Optional[NoiseConfig]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping {{ignore_limit, expiry_time}} or null")
    unknown = set(value) - {"ignore_limit", "expiry_time"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    limit = value.get("ignore_limit", 3)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigError(f"{where}.ignore_limit: expected a non-negative integer, got {limit!r}")
    expiry = value.get("expiry_time")
    return NoiseConfig(limit, parse_duration(expiry, f"{where}.expiry_time") if expiry is not None
                       else NoiseConfig().expiry_time)


def group_type_attributes(spec: Any, where: str) -> dict[str, Any]:
    """Validate one `group_types` entry and turn it into GroupType class attributes."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(spec) - _TYPE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for required in ("type_id", "slug", "description", "category"):
        if required not in spec:
            raise ConfigError(f"{where}: `{required}` is required")
    attrs: dict[str, Any] = {
        "type_id": spec["type_id"],
        "slug": spec["slug"],
        "description": spec["description"],
        "category": _enum_value(GroupCategory, spec["category"], f"{where}.category"),
        "noise_config": _noise_config(spec.get("noise_config"), f"{where}.noise_config"),
    }
    if spec.get("category_v2") is not None:
        attrs["category_v2"] = _enum_value(GroupCategory, spec["category_v2"], f"{where}.category_v2")
    if "default_priority" in spec:
        attrs["default_priority"] = _enum_value(PriorityLevel, spec["default_priority"], f"{where}.default_priority")
    for flag in ("released", "enable_auto_resolve", "enable_escalation_detection"):
        if flag in spec:
            attrs[flag] = spec[flag]
    return attrs


@dataclass(frozen=True)
class ProjectSettings:
    """Per-project settings: Sentry's `sentry:resolve_age` (hours; 0 = off) and the organization
    that feature flags are evaluated for (None: unreleased types are off for the project)."""

    project_id: int
    resolve_age_hours: int = 0
    organization: Optional[dict] = None
    slug: Optional[str] = None
    name: Optional[str] = None

    def flag_context(self) -> EvaluationContext:
        return context_for(self.organization, self.project_id,
                           {k: v for k, v in (("slug", self.slug), ("name", self.name)) if v is not None})


@dataclass(frozen=True)
class PlatformConfig:
    """Everything the pipeline needs on a worker: extra types, project settings and flags (picklable)."""

    group_types: tuple[tuple[str, dict[str, Any]], ...] = ()  # (where, attributes)
    group_types_modules: tuple[str, ...] = ()
    projects: dict = field(default_factory=dict)  # project id -> ProjectSettings
    features: dict = field(default_factory=dict)  # flag name -> flagpole Feature
    source: Optional[str] = None
    loaded_at: float = 0.0  # when the file was read: the newest of several versions wins

    def project(self, project_id: int) -> ProjectSettings:
        return self.projects.get(project_id) or ProjectSettings(project_id)

    def flag(self, name: str, project_id: int) -> bool:
        """Whether flag `name` is on for the project's organization (off without an organization)."""
        feature = self.features.get(name)
        context = self.project(project_id).flag_context()
        return feature is not None and bool(context.data) and feature.match(context)

    def allows(self, group_type: type[GroupType], flag: str, project_id: int) -> bool:
        """Sentry's allow_ingest / allow_post_process_group / visibility: released types bypass flags.
        `flag` is "ingest", "post_process" or "visible"."""
        if group_type.released:
            return True
        name = {"ingest": group_type.ingest_flag, "post_process": group_type.post_process_flag,
                "visible": group_type.visible_flag}[flag]()
        return self.flag(name, project_id)

    def registry(self) -> GroupTypeRegistry:
        """The types this config runs with, in a registry of its own: the built-in types, those its
        modules register on import (as in Sentry), and its `group_types`. The process-wide registry
        is not changed. Workers build it once in `setup` and pass it to what needs it."""
        self._import_modules()
        types = registry.copy()
        for where, attrs in self.group_types:
            if not _holds(types, attrs):
                with _reported_at(where):
                    types.add(_config_type(attrs, register=False))
        self._check_features(types)
        return types

    def install(self) -> None:
        """Register the configured types in this process's registry (the CLI's commands). Idempotent."""
        self._import_modules()
        for where, attrs in self.group_types:
            if not _holds(registry, attrs):
                with _reported_at(where):
                    _config_type(attrs, register=True)
        self._check_features(registry)

    def _check_features(self, types: GroupTypeRegistry) -> None:
        """Every feature must be a flag of a type: a misspelt one would leave the type's flag off."""
        if not self.features:
            return
        flags = {flag() for t in types.all() for flag in (t.ingest_flag, t.post_process_flag, t.visible_flag)}
        for name in sorted(set(self.features) - flags):
            close = difflib.get_close_matches(name, sorted(flags), n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}?" if close else "see `issue-platform types` for the types' slugs"
            raise ConfigError(f"--config {self.source}: features: {name} is not the flag of any issue type; {hint}")

    def _import_modules(self) -> None:
        for module in self.group_types_modules:
            try:
                importlib.import_module(module)
            except SystemExit as exc:
                raise ConfigError(f"--group_types_module {module}: the module called sys.exit({exc.code!r}) "
                                  "while being imported") from None
            except Exception as exc:  # the user's module: report any failure as config
                raise ConfigError(f"--group_types_module {module}: cannot import it ({exc})") from exc


def _holds(types: GroupTypeRegistry, attrs: dict[str, Any]) -> bool:
    """Whether `types` already holds this config type (installed before in this process)."""
    existing = types.find(attrs["type_id"]) if isinstance(attrs["type_id"], int) else None
    return existing is not None and getattr(existing, "_config_attrs", None) == attrs


def _config_type(attrs: dict[str, Any], register: bool) -> type[GroupType]:
    return type(f"ConfigGroupType_{attrs['slug']}", (GroupType,),
                {**attrs, "_config_attrs": attrs, "_label": repr(attrs["slug"]), "__module__": __name__},
                register=register)


@contextlib.contextmanager
def _reported_at(where: str) -> Iterator[None]:
    try:
        yield
    except InvalidGroupTypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _read_document(path: str, opener: Callable[[str], Any]) -> Any:
    try:
        with opener(path) as handle:
            text = handle.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not UTF-8 text") from exc
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--config {path}: invalid YAML{where}: {reason}") from exc


def _open_local(path: str):
    return open(path, "rb")


def load_config(path: Optional[str] = None, modules: tuple[str, ...] = (),
                opener: Callable[[str], Any] = _open_local) -> PlatformConfig:
    """Read and validate a config file (YAML, or JSON by extension). Nothing is registered yet.
    `opener` opens `path` for binary reading (the pipeline passes one that understands gs://)."""
    specs: list[tuple[str, dict[str, Any]]] = []
    if path:
        document = _read_document(path, opener) or {}
        if not isinstance(document, dict):
            raise ConfigError(f"--config {path}: the top level must be a mapping")
        # `createissueflag` output can be appended to the file as it is: top-level `feature.*` keys.
        pasted = {k: document.pop(k) for k in list(document) if isinstance(k, str) and k.startswith("feature.")}
        unknown = set(document) - _TOP_LEVEL
        if unknown:
            raise ConfigError(f"--config {path}: unknown section(s) {', '.join(sorted(unknown))}")
        entries = document.get("group_types") or []
        if not isinstance(entries, list):
            raise ConfigError(f"--config {path}: group_types must be a list")
        name = f"--config {path}"
        specs = [(f"{name}: group_types[{i}]", group_type_attributes(spec, f"{name}: group_types[{i}]"))
                 for i, spec in enumerate(entries)]
        projects = _projects(document.get("projects") or {}, f"{name}: projects")
        try:
            features = parse_features({**(document.get("features") or {}), **pasted})
        except FeatureConfigError as exc:
            raise ConfigError(f"{name}: features: {exc}") from exc
        return PlatformConfig(tuple(specs), tuple(modules), projects, features, path, time.time())
    return PlatformConfig(group_types_modules=tuple(modules))


def _projects(section: Any, where: str) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping of project id to settings")
    projects = {}
    for key, spec in section.items():
        here = f"{where}.{key}"
        try:
            project_id = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"{here}: project ids must be integers") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"{here}: expected a mapping")
        unknown = set(spec) - _PROJECT_FIELDS
        if unknown:
            raise ConfigError(f"{here}: unknown field(s) {', '.join(sorted(unknown))}")
        age = spec.get("resolve_age") or 0
        if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 0xFFFF:
            raise ConfigError(f"{here}.resolve_age: expected whole hours (an integer 0..65535), got {age!r}")
        organization = spec.get("organization")
        if organization is not None:
            if not isinstance(organization, dict):
                raise ConfigError(f"{here}.organization: expected a mapping {{id, slug, early_adopter}}")
            unknown = set(organization) - _ORGANIZATION_FIELDS
            if unknown:
                raise ConfigError(f"{here}.organization: unknown field(s) {', '.join(sorted(unknown))}")
            for required, kind in (("id", int), ("slug", str)):
                if not isinstance(organization.get(required), kind) or isinstance(organization.get(required), bool):
                    raise ConfigError(f"{here}.organization.{required}: required, a {kind.__name__}")
            if not isinstance(organization.get("early_adopter", False), bool):
                raise ConfigError(f"{here}.organization.early_adopter: expected true or false")
        projects[project_id] = ProjectSettings(project_id, age, organization, spec.get("slug"),
                                               spec.get("name"))
    return projects
