"""Escalating issues (archived "until escalating" -> ESCALATING), in event time.

Sentry's pieces and where they live here:

* hourly counts (`escalating.py`): Snuba `count()` grouped by `toStartOfHour(timestamp)` over
  `[now - 168 h, now)`; only hours with at least one event come back. Here: `HourlyCounts`, a
  {hour start: count} map of the non-empty hours, pruned to the last 7 days so it fits in a state
  blob (at most 168 hours of history + the current hour = 169 buckets).
* the forecast (`escalating_issues_alg.generate_issue_forecast`): `generate_issue_forecast`, the
  same arithmetic, fed with (hour start, count) pairs instead of Snuba's interval strings.
* storage (`escalating_group_forecast.EscalatingGroupForecast`): `Forecast`, the 14 values and
  `date_added`; `Forecast.todays` is `fetch_todays_forecast`'s index arithmetic.
* detection (`post_process.process_snoozes` / `escalating.is_escalating`): `is_escalating`,
  `uses_new_escalation_logic` (groups younger than 24 h skip the forecast check).
* priority bump (`priority.get_priority_for_escalating_group`): `escalated_priority`.

Every time is event time: unix seconds, UTC. "Now" is always an argument, never the wall clock;
days and weekdays are UTC days (Sentry uses the server's local time, which is UTC in production).

Differences from Sentry that come from keeping hour buckets instead of raw timestamps:
`series(now)` is the 168 whole hours before the current clock hour, whereas Sentry's window
`[now - 168 h, now)` also holds a partial oldest hour and the partial current hour (up to 169
buckets). The "fewer than 168 non-empty hours" test therefore needs every one of the 168 whole hours
to be non-empty here.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Iterable, Optional, Sequence

from issue_platform.enums import PriorityLevel

HOUR = 3600
DAY = 24 * HOUR

BUCKETS_PER_GROUP = 7 * 24  # 168 hours of history feed a forecast
FORECAST_DAYS = 14  # one forecast value per day; also the nodestore TTL (GROUP_FORECAST_TTL)
MAX_NEW_ESCALATION_AGE_HOURS = 24  # younger groups skip the forecast check
ONE_EVENT_FORECAST = [10] * FORECAST_DAYS  # Sentry's stand-in when no forecast is stored

# Literals of Sentry's bursty ("regression") multiplier, 5 * e^(-0.65 * cv); not ThresholdVariables.
_BURSTY_SCALE = 5
_BURSTY_DECAY = -0.65
# Fewer non-empty hours than this is a "new issue": every day's forecast is max(x) * 10.
_NEW_ISSUE_MULTIPLIER = 10


@dataclass(frozen=True)
class ThresholdVariables:
    """Sentry's `ThresholdVariables` (the defaults are its `standard_version`)."""

    std_multiplier: int = 5
    min_spike_multiplier: int = 5
    max_spike_multiplier: int = 8
    min_bursty_multiplier: int = 2
    max_bursty_multiplier: int = 5


STANDARD = ThresholdVariables()


def hour_start(ts: float) -> int:
    """Start of the UTC clock hour holding `ts` (Snuba's `toStartOfHour`)."""
    return int(math.floor(ts / HOUR)) * HOUR


def utc_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, tz=timezone.utc).date()


def utc_weekday(ts: float) -> int:
    """Monday = 0 ... Sunday = 6, in UTC."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).weekday()


# --------------------------------------------------------------------------------------------
# Hourly counts
# --------------------------------------------------------------------------------------------


@dataclass
class HourlyCounts:
    """Event counts per UTC clock hour, non-empty hours only: {hour start: count}."""

    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, ts: float, count: int = 1) -> None:
        hour = hour_start(ts)
        self.buckets[hour] = self.buckets.get(hour, 0) + count

    def prune(self, now: float) -> None:
        """Keep only the hours in [hour_start(now) - 168 h, hour_start(now)].

        That is at most 168 hours of history plus the current hour (169 buckets). Hours after the
        current one are dropped too, so `now` should be the latest event time seen for the key.
        """
        current = hour_start(now)
        oldest = current - BUCKETS_PER_GROUP * HOUR
        self.buckets = {h: c for h, c in self.buckets.items() if oldest <= h <= current}

    def series(self, now: float) -> list[tuple[int, int]]:
        """(hour start, count) for the non-empty hours among the 168 before the current hour.

        Sorted by hour, as Snuba orders them. The current clock hour is excluded.
        """
        current = hour_start(now)
        oldest = current - BUCKETS_PER_GROUP * HOUR
        return sorted((h, c) for h, c in self.buckets.items() if oldest <= h < current)

    def in_current_hour(self, now: float) -> int:
        """Events in the clock hour holding `now` (Sentry: count over [start of hour, now))."""
        return self.buckets.get(hour_start(now), 0)

    def __len__(self) -> int:
        return len(self.buckets)

    def to_json(self) -> list[list[int]]:
        return [[h, c] for h, c in sorted(self.buckets.items())]

    @classmethod
    def from_json(cls, data: Optional[Iterable[Sequence[int]]]) -> "HourlyCounts":
        return cls({int(h): int(c) for h, c in (data or ())})


# --------------------------------------------------------------------------------------------
# Forecast
# --------------------------------------------------------------------------------------------


def generate_issue_forecast(
    series: Sequence[tuple[int, int]], start: float, variables: ThresholdVariables = STANDARD
) -> list[int]:
    """Sentry's `generate_issue_forecast`: 14 daily ceilings for the days start + k days, k = 0..13.

    `series` holds (hour start, count) pairs of the non-empty hours of the past week.
    """
    data = [count for _, count in series]
    n = len(data)
    if n == 0:
        return []

    ts_max = max(data)
    if n < BUCKETS_PER_GROUP:
        return [ts_max * _NEW_ISSUE_MULTIPLIER] * FORECAST_DAYS

    ts_avg = statistics.mean(data)
    ts_std_dev = statistics.stdev(data)
    ts_cv = ts_std_dev / ts_avg

    regression_multiplier = min(
        max(variables.min_bursty_multiplier, _BURSTY_SCALE * (math.e ** (_BURSTY_DECAY * ts_cv))),
        variables.max_bursty_multiplier,
    )
    limit_v1 = ts_max * regression_multiplier

    ts_multiplier = min(
        max((ts_avg + variables.std_multiplier * ts_std_dev) / ts_avg, variables.min_spike_multiplier),
        variables.max_spike_multiplier,
    )
    baseline = ts_multiplier * ts_avg

    # Sentry weighs every interval 1, or 2 when it falls on the output day's weekday:
    # sum(x_i * w_i) = total + (sum of x on that weekday); sum(w_i) = n + (intervals on that weekday).
    # Both are integer sums, so the division is the same float Sentry computes.
    total = sum(data)
    sum_by_weekday = [0] * 7
    n_by_weekday = [0] * 7
    for hour, count in series:
        weekday = utc_weekday(hour)
        sum_by_weekday[weekday] += count
        n_by_weekday[weekday] += 1

    output = []
    for k in range(FORECAST_DAYS):
        weekday = utc_weekday(start + k * DAY)
        wavg_limit = (total + sum_by_weekday[weekday]) / (n + n_by_weekday[weekday])
        limit_v2 = wavg_limit + baseline
        output.append(int(max(limit_v1, limit_v2)))
    return output


@dataclass(frozen=True)
class Forecast:
    """A stored forecast (Sentry's `EscalatingGroupForecast`): generated at `date_added`."""

    date_added: float
    values: list[int]

    def todays(self, now: float) -> int:
        """`fetch_todays_forecast`: the value for the UTC day of `now`.

        index = (UTC date of now - UTC date of date_added).days; past the end -> the last value
        (Sentry logs an error beyond 14); before date_added (an older event) -> the first value.
        An empty forecast gives 0, which never escalates.
        """
        if not self.values:
            return 0
        index = (utc_date(now) - utc_date(self.date_added)).days
        if index >= len(self.values):
            return self.values[-1]
        if index < 0:
            return self.values[0]
        return self.values[index]

    def to_json(self) -> dict:
        return {"date_added": self.date_added, "forecast": list(self.values)}

    @classmethod
    def from_json(cls, data: dict) -> "Forecast":
        return cls(float(data["date_added"]), [int(v) for v in data["forecast"]])


def forecast_for(counts: HourlyCounts, now: float, variables: ThresholdVariables = STANDARD
                 ) -> Optional[Forecast]:
    """Generate the forecast a (re)generation at `now` would store, or None without any past counts.

    Sentry saves forecasts only for groups its hourly query returned, i.e. with at least one event
    in the past week; `fetch` then falls back to ONE_EVENT_FORECAST.
    """
    values = generate_issue_forecast(counts.series(now), now, variables)
    return Forecast(now, values) if values else None


def default_forecast(now: float) -> Forecast:
    """What Sentry's `fetch` returns when no forecast is stored: ONE_EVENT_FORECAST added now."""
    return Forecast(now, list(ONE_EVENT_FORECAST))


# --------------------------------------------------------------------------------------------
# Detection and priority
# --------------------------------------------------------------------------------------------


def uses_new_escalation_logic(first_seen: float, now: float) -> bool:
    """Groups under 24 h old skip the forecast check (`process_snoozes`)."""
    return (now - first_seen) / HOUR < MAX_NEW_ESCALATION_AGE_HOURS


def is_escalating(hourly_now: int, forecast_today: Optional[int]) -> bool:
    """Escalating iff there is a (truthy) forecast for today and this hour's count is above it."""
    return bool(forecast_today) and hourly_now > forecast_today


def escalated_priority(priority: Optional[int]) -> int:
    """`get_priority_for_escalating_group`: LOW -> MEDIUM; MEDIUM, HIGH or none -> HIGH."""
    if priority == PriorityLevel.LOW:
        return int(PriorityLevel.MEDIUM)
    return int(PriorityLevel.HIGH)
