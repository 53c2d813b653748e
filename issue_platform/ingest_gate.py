"""The ingest gate: Sentry's `allow_ingest`, plus the post-process and visible flags and the project's
resolve_age that the rules engine needs later (plain Python; `transforms.parse.Ingest` and the
benchmark's plain loop both use it).

Status changes are never gated (as in Sentry). Flag results are cached per config version, type and
project: a config is immutable, so a new version (a reload) starts a fresh cache.
"""
from __future__ import annotations

from typing import Optional, Union

from issue_platform import outcomes
from issue_platform.config import PlatformConfig
from issue_platform.grouptype import GroupTypeRegistry
from issue_platform.pending import Admission, Display
from issue_platform.tables import occurrence_row
from issue_platform.validation import Occurrence, StatusChange


class IngestGate:
    def __init__(self, config: PlatformConfig, types: GroupTypeRegistry):
        self.config, self._types, self._cache = config, types, {}

    def use(self, config: PlatformConfig) -> None:
        """Decide from now on by `config` (a newer version of the same file)."""
        if config is not self.config:
            self.config, self._cache = config, {}

    def admit(self, payload: Union[Occurrence, StatusChange]) -> Optional[Admission]:
        """The payload's `Admission`, or None if it is an occurrence whose type's ingest flag is off
        for its project (it then ends as an `ingest_disabled_row`)."""
        project = self.config.project(payload.project_id)
        if not isinstance(payload, Occurrence):
            return Admission(resolve_age_hours=project.resolve_age_hours)
        cache_key = (payload.type, payload.project_id)
        admission = self._cache.get(cache_key, False)
        if admission is False:
            config, gtype = self.config, self._types.get_by_type_id(payload.type)
            admission = self._cache[cache_key] = (
                Admission(config.allows(gtype, "post_process", project.project_id),
                          config.allows(gtype, "visible", project.project_id), project.resolve_age_hours)
                if config.allows(gtype, "ingest", project.project_id) else None)
        return admission


def ingest_disabled_row(occ: Occurrence) -> dict:
    """The `occurrences` row of an occurrence the gate turned away."""
    return occurrence_row(
        occurrence_id=occ.id, project_id=occ.project_id, fingerprint=occ.fingerprint, type_id=occ.type,
        event_id=occ.event_id, display=Display(occ.issue_title, occ.subtitle, occ.culprit, occ.level,
                                               occ.environment),
        priority=occ.priority,
        resource_id=occ.resource_id, detection_time=occ.detection_time, group_id=None,
        outcome=outcomes.INGEST_DISABLED)
