"""Time-driven lifecycle: auto-resolve, back to ongoing, escalation and forecasts (plain Python).

Sentry runs these from cron tasks and post-processing; here each is a rule on a `Group` at an event
time, and `next_transition` says when the next time-driven one falls due, so the event-time driver
(`rules_engine.RulesEngine`) can interleave them with events:

* auto-resolve (`tasks/auto_resolve_issues.py`): UNRESOLVED groups of types with
  `enable_auto_resolve` resolve once `last_seen` is `resolve_age` hours old.
* back to ongoing (`tasks/auto_ongoing_issues.py`): NEW groups 7 days after `first_seen`, REGRESSED
  and ESCALATING ones 7 days after entering that substatus; leaving ESCALATING restores the group's
  initial priority (`priority.get_priority_for_ongoing_group`).
* the daily forecast job (`run_escalating_forecast`): at each UTC midnight, groups archived until
  escalating and seen in the last 7 days get a new forecast (none if they had no events that week).
* the escalation check (`post_process.process_snoozes`, `escalating.is_escalating`): only for an
  occurrence that is post-processed; the stored forecast is read as `EscalatingGroupForecast.fetch`
  does: after its 14-day TTL, or before any was stored, today's value is ONE_EVENT_FORECAST's 10 and
  a forecast is generated right away (`generate_and_save_missing_forecasts`) for the next check.

A due time is never earlier than the moment the group entered its substatus: the cron task that
applies it runs after that moment (this matters when an event's timestamp is older than its
detection).
"""
from __future__ import annotations

import math
from typing import Optional

from issue_platform import escalation as esc
from issue_platform.activity import (AUTO_SET_ONGOING, ESCALATING, ONGOING, SET_ESCALATING, SET_RESOLVED_BY_AGE,
                                     Row, record, update_priority)
from issue_platform.enums import GroupStatus as S
from issue_platform.enums import GroupSubStatus as Sub
from issue_platform.key_state import Group
from issue_platform.grouptype import GroupType

HOUR, DAY = 3600.0, 86400.0
TRANSITION_AFTER_DAYS = 7  # auto_ongoing_issues
TRANSITION_AFTER_SECONDS = TRANSITION_AFTER_DAYS * DAY
FORECAST_TTL_SECONDS = esc.FORECAST_DAYS * DAY  # GROUP_FORECAST_TTL
FORECAST_JOB_SEEN_WITHIN = 7 * DAY  # the daily job's `last_seen >= now - 7d`

# Time-driven transitions; at the same instant they apply in this (alphabetical) order.
AUTO_RESOLVE, FORECAST, BACK_TO_ONGOING = "auto_resolve", "forecast", "ongoing"


def _next_utc_midnight(ts: float) -> float:
    return (math.floor(ts / DAY) + 1) * DAY


def next_transition(group: Group, gtype: GroupType) -> Optional[tuple[float, str]]:
    due = []
    if group.status == S.UNRESOLVED:
        if group.substatus == Sub.NEW:
            due.append((max(group.first_seen + TRANSITION_AFTER_SECONDS, group.substatus_since), BACK_TO_ONGOING))
        elif group.substatus in (Sub.REGRESSED, Sub.ESCALATING):
            due.append((group.substatus_since + TRANSITION_AFTER_SECONDS, BACK_TO_ONGOING))
        if gtype.enable_auto_resolve and group.resolve_age_hours > 0:
            due.append((max(group.last_seen + group.resolve_age_hours * HOUR, group.substatus_since), AUTO_RESOLVE))
    elif group.is_archived_until_escalating() and gtype.enable_escalation_detection:
        midnight = _next_utc_midnight(group.forecast_checked_at)
        if midnight <= group.last_seen + FORECAST_JOB_SEEN_WITHIN:
            due.append((midnight, FORECAST))
    return min(due) if due else None


def apply_transition(group: Group, when: float, kind: str) -> list[Row]:
    if kind == FORECAST:
        group.forecast_checked_at = when
        forecast = esc.forecast_for(group.hourly, when)
        if forecast is not None:  # Sentry saves forecasts only for groups its hourly query returned
            group.forecast = forecast.to_json()
        return []
    if kind == AUTO_RESOLVE:
        group.set_status(S.RESOLVED, None, when)
        return [record(group, SET_RESOLVED_BY_AGE, when, {"age": group.resolve_age_hours})]
    return set_ongoing(group, when, AUTO_SET_ONGOING, {"after_days": TRANSITION_AFTER_DAYS})


def set_ongoing(group: Group, when: float, kind: str, data: Optional[dict]) -> list[Row]:
    """`update_group_status(UNRESOLVED, ONGOING, kind, from_substatus=...)`: the activity, then, when
    leaving ESCALATING with AUTO_SET_ONGOING, the initial priority back."""
    from_escalating = group.substatus == Sub.ESCALATING
    group.set_status(S.UNRESOLVED, Sub.ONGOING, when)
    rows = [record(group, kind, when, data)]
    if from_escalating and kind == AUTO_SET_ONGOING:
        rows += update_priority(group, group.initial_priority, ONGOING, when)
    return rows


def escalate(group: Group, when: float, data: Optional[dict]) -> list[Row]:
    """`manage_issue_states(ESCALATING)` on an IGNORED group: the status, its activity, the priority bump."""
    group.set_status(S.UNRESOLVED, Sub.ESCALATING, when)
    return [record(group, SET_ESCALATING, when, data)] + update_priority(
        group, esc.escalated_priority(group.priority), ESCALATING, when)


def fetch_forecast(group: Group, now: float) -> esc.Forecast:
    """`EscalatingGroupForecast.fetch`: the stored forecast while within its TTL; otherwise the
    one-event default for now, and a forecast generated for the next check."""
    if group.forecast is not None:
        stored = esc.Forecast.from_json(group.forecast)
        if now < stored.date_added + FORECAST_TTL_SECONDS:
            return stored
    generated = esc.forecast_for(group.hourly, now)
    group.forecast = generated.to_json() if generated else None
    return esc.default_forecast(now)


def check_escalation(group: Group, gtype: GroupType, now: float, event_id: str) -> list[Row]:
    """`process_snoozes` for a post-processed occurrence on an existing group."""
    if not gtype.enable_escalation_detection or esc.uses_new_escalation_logic(group.first_seen, now):
        return []
    if not group.is_archived_until_escalating():
        return []
    hourly = group.hourly.in_current_hour(now)
    today = fetch_forecast(group, now).todays(now)
    if not esc.is_escalating(hourly, today):
        return []
    return escalate(group, now, {"event_id": event_id, "forecast": today})


def prune(group: Group, now: float) -> None:
    """Bound the state: hourly counts to the last 7 days, no forecast past its TTL."""
    group.hourly.prune(max(now, group.last_seen))
    if group.forecast is not None and now >= group.forecast["date_added"] + FORECAST_TTL_SECONDS:
        group.forecast = None
