"""Issue types: `GroupType`, `NoiseConfig` and the registry, as in Sentry's grouptype.py.

Defining a subclass registers it (Sentry's `__init_subclass__` hook)::

    @dataclass(frozen=True)
    class ProfileFileIOGroupType(GroupType):
        type_id = 2001
        slug = "profile_file_io_main_thread"
        description = "File I/O on Main Thread"
        category = GroupCategory.PROFILE.value
        noise_config = NoiseConfig(5, timedelta(days=2))

Deliberate difference from Sentry: a duplicate `slug` is refused like a duplicate `type_id`
(Sentry silently overwrites its slug index), because flag names are derived from the slug.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, Iterator, Optional

from issue_platform.enums import GroupCategory, PriorityLevel

DEFAULT_IGNORE_LIMIT = 3
DEFAULT_EXPIRY_TIME = timedelta(hours=24)


@dataclass(frozen=True)
class NoiseConfig:
    """Create a group only once its fingerprint was seen `ignore_limit` times, each sighting
    within `expiry_time` of the previous one (a sliding window; see `issue_platform.noise`)."""

    ignore_limit: int = DEFAULT_IGNORE_LIMIT
    expiry_time: timedelta = DEFAULT_EXPIRY_TIME

    def __post_init__(self) -> None:
        if not isinstance(self.ignore_limit, int) or isinstance(self.ignore_limit, bool):
            raise ValueError(f"noise_config.ignore_limit must be an integer, got {self.ignore_limit!r}")
        if self.ignore_limit < 0:
            raise ValueError(f"noise_config.ignore_limit must be >= 0, got {self.ignore_limit}")
        if not isinstance(self.expiry_time, timedelta) or self.expiry_time <= timedelta(0):
            raise ValueError(f"noise_config.expiry_time must be a positive duration, got {self.expiry_time!r}")

    @property
    def expiry_seconds(self) -> int:
        return int(self.expiry_time.total_seconds())


class InvalidGroupTypeError(ValueError):
    """An unknown type id, or a type definition that cannot be registered."""


def feature_flag_base(slug: str) -> str:
    """Sentry's newest scheme: `organizations:issue-<slug with - for _>`."""
    return f"organizations:issue-{slug.replace('_', '-')}"


@dataclass(frozen=True)
class GroupType:
    """Base class of every issue type. Subclasses set the class attributes below."""

    type_id: ClassVar[int]
    slug: ClassVar[str]
    description: ClassVar[str]
    category: ClassVar[int]
    category_v2: ClassVar[Optional[int]] = None  # newest Sentry taxonomy; defaults to `category`
    noise_config: ClassVar[Optional[NoiseConfig]] = None
    default_priority: ClassVar[int] = PriorityLevel.MEDIUM
    released: ClassVar[bool] = False
    enable_auto_resolve: ClassVar[bool] = True
    enable_escalation_detection: ClassVar[bool] = True

    def __init_subclass__(cls, register: bool = True, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if register:  # `register=False`: a config's type, added to that config's own registry
            registry.add(cls)

    @classmethod
    def ingest_flag(cls) -> str:
        return f"{feature_flag_base(cls.slug)}-ingest"

    @classmethod
    def post_process_flag(cls) -> str:
        return f"{feature_flag_base(cls.slug)}-post-process-group"

    @classmethod
    def visible_flag(cls) -> str:
        return f"{feature_flag_base(cls.slug)}-visible"


def _check_definition(cls: type[GroupType]) -> None:
    name = cls.__dict__.get("_label") or cls.__name__  # a config type's label: its slug, not its class
    for attr, kind in (("type_id", int), ("slug", str), ("description", str), ("category", int)):
        value = getattr(cls, attr, None)
        if value is None:
            raise InvalidGroupTypeError(f"group type {name}: `{attr}` is required")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidGroupTypeError(f"group type {name}: `{attr}` must be {kind.__name__}, got {value!r}")
    if not 0 < cls.type_id < 2**31:
        raise InvalidGroupTypeError(f"group type {name}: `type_id` must be between 1 and 2**31-1")
    if not cls.slug:
        raise InvalidGroupTypeError(f"group type {name}: `slug` must not be empty")
    for attr in ("category", "category_v2"):
        value = getattr(cls, attr)
        if value is not None and value not in GroupCategory._value2member_map_:
            raise InvalidGroupTypeError(f"group type {name}: `{attr}` {value!r} is not a GroupCategory")
    if cls.default_priority not in PriorityLevel._value2member_map_:
        raise InvalidGroupTypeError(
            f"group type {name}: `default_priority` {cls.default_priority!r} is not 25, 50 or 75")
    if cls.noise_config is not None and not isinstance(cls.noise_config, NoiseConfig):
        raise InvalidGroupTypeError(f"group type {name}: `noise_config` must be a NoiseConfig")
    for attr in ("released", "enable_auto_resolve", "enable_escalation_detection"):
        if not isinstance(getattr(cls, attr), bool):
            raise InvalidGroupTypeError(f"group type {name}: `{attr}` must be a boolean")


class GroupTypeRegistry:
    """Types by id and by slug; ids and slugs are unique."""

    def __init__(self) -> None:
        self._by_id: dict[int, type[GroupType]] = {}
        self._by_slug: dict[str, type[GroupType]] = {}

    def add(self, cls: type[GroupType]) -> None:
        _check_definition(cls)
        if cls.type_id in self._by_id:
            raise InvalidGroupTypeError(f"A group type with the type_id {cls.type_id} has already been registered.")
        if cls.slug in self._by_slug:
            raise InvalidGroupTypeError(f"A group type with the slug {cls.slug!r} has already been registered.")
        self._by_id[cls.type_id] = cls
        self._by_slug[cls.slug] = cls

    def get_by_type_id(self, type_id: int) -> type[GroupType]:
        try:
            return self._by_id[type_id]
        except KeyError:
            raise InvalidGroupTypeError(f"No group type with the id {type_id} is registered.") from None

    def find(self, type_id: int) -> Optional[type[GroupType]]:
        return self._by_id.get(type_id)

    def get_by_slug(self, slug: str) -> Optional[type[GroupType]]:
        return self._by_slug.get(slug)

    def get_by_category(self, category: int) -> set[int]:
        return {t.type_id for t in self._by_id.values() if category in (t.category, t.category_v2)}

    def get_all_group_type_ids(self) -> set[int]:
        return set(self._by_id)

    def all(self) -> list[type[GroupType]]:
        return sorted(self._by_id.values(), key=lambda t: t.type_id)

    def copy(self) -> "GroupTypeRegistry":
        other = GroupTypeRegistry()
        other._by_id, other._by_slug = dict(self._by_id), dict(self._by_slug)
        return other

    @contextlib.contextmanager
    def scoped(self) -> Iterator["GroupTypeRegistry"]:
        """Types registered inside the block are forgotten after it (for tests and the CLI)."""
        by_id, by_slug = dict(self._by_id), dict(self._by_slug)
        try:
            yield self
        finally:
            self._by_id, self._by_slug = by_id, by_slug


registry = GroupTypeRegistry()
