"""The issue platform's domain rules, in plain Python (no Beam import anywhere in this package)."""
from issue_platform import builtin_types  # noqa: F401  (registers Sentry's built-in types)
from issue_platform.grouptype import GroupType, NoiseConfig, registry  # noqa: F401
