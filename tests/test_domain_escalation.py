"""Escalating issues (issue_platform/escalation.py): hourly counts, forecast, detection, priority."""
import json
import math
import random
import statistics
from datetime import datetime, timedelta, timezone

import pytest

from issue_platform import escalation
from issue_platform.escalation import (
    BUCKETS_PER_GROUP,
    FORECAST_DAYS,
    HOUR,
    ONE_EVENT_FORECAST,
    STANDARD,
    Forecast,
    HourlyCounts,
    ThresholdVariables,
    escalated_priority,
    forecast_for,
    generate_issue_forecast,
    hour_start,
    is_escalating,
    uses_new_escalation_logic,
)

DAY = 24 * HOUR
MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
NEXT_MONDAY = MONDAY + 7 * DAY  # 2024-01-08T00:00:00Z


def hours(start, counts):
    """(hour start, count) pairs for consecutive hours from `start`."""
    return [(start + i * HOUR, c) for i, c in enumerate(counts)]


def weekday(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc).weekday()


# ---------------------------------------------------------------------------- constants, hours


def test_constants():
    assert BUCKETS_PER_GROUP == 168
    assert FORECAST_DAYS == 14
    assert escalation.MAX_NEW_ESCALATION_AGE_HOURS == 24
    assert ONE_EVENT_FORECAST == [10] * 14
    assert STANDARD == ThresholdVariables(5, 5, 8, 2, 5)
    with pytest.raises(Exception):
        STANDARD.std_multiplier = 6  # frozen


def test_hour_start():
    assert weekday(MONDAY) == 0
    assert hour_start(MONDAY) == MONDAY
    assert hour_start(MONDAY + 3599.999) == MONDAY
    assert hour_start(MONDAY + 3600) == MONDAY + HOUR
    assert hour_start(MONDAY + 5 * HOUR + 59 * 60 + 0.5) == MONDAY + 5 * HOUR
    assert isinstance(hour_start(MONDAY + 0.5), int)


# ---------------------------------------------------------------------------- forecast


def test_forecast_empty_series():
    assert generate_issue_forecast([], NEXT_MONDAY) == []


def test_forecast_new_issue_fewer_than_168_hours():
    # n = 3 < 168 -> every day is max(x) * 10 = 9 * 10 = 90.
    assert generate_issue_forecast(hours(MONDAY, [4, 9, 2]), NEXT_MONDAY) == [90] * 14
    # n = 167 (one hour short of a full week): still the "new issue" rule, max 7 -> 70.
    assert generate_issue_forecast(hours(MONDAY, [1] * 166 + [7]), NEXT_MONDAY) == [70] * 14


def test_forecast_flat_week():
    # x = 3 in all 168 hours: avg = 3, sd = 0, cv = 0.
    # regression multiplier = min(max(2, 5 * e^0), 5) = 5 -> limit_v1 = max 3 * 5 = 15.
    # ts_multiplier = min(max((3 + 5*0)/3 = 1, 5), 8) = 5 -> baseline = 5 * 3 = 15.
    # wavg = 3 whatever the weights -> limit_v2 = 3 + 15 = 18.  forecast = int(max(15, 18)) = 18.
    assert generate_issue_forecast(hours(MONDAY, [3] * 168), NEXT_MONDAY) == [18] * 14


def test_forecast_flat_week_with_other_variables():
    # Same series, min_spike 6, max_bursty 3:
    # regression multiplier = min(max(2, 5), 3) = 3 -> limit_v1 = 3 * 3 = 9.
    # ts_multiplier = min(max(1, 6), 8) = 6 -> baseline = 18; limit_v2 = 3 + 18 = 21 -> 21.
    variables = ThresholdVariables(min_spike_multiplier=6, max_bursty_multiplier=3)
    assert generate_issue_forecast(hours(MONDAY, [3] * 168), NEXT_MONDAY, variables) == [21] * 14


def test_forecast_with_variance():
    # Each day: hours 0-17 have 1 event, hours 18-23 have 5 -> 126 ones and 42 fives in the week,
    # 6 fives and 18 ones on every weekday.
    counts = ([1] * 18 + [5] * 6) * 7
    # avg = (126*1 + 42*5) / 168 = 336 / 168 = 2
    # squared deviations: 126 * (1-2)^2 + 42 * (5-2)^2 = 126 + 378 = 504
    # sample stdev = sqrt(504 / 167) = sqrt(3.017964) = 1.737229
    # cv = 1.737229 / 2 = 0.868614
    # regression multiplier = 5 * e^(-0.65 * 0.868614) = 5 * e^(-0.564599) = 5 * 0.568588 = 2.842939
    #   (inside [2, 5]) -> limit_v1 = max 5 * 2.842939 = 14.214697
    # ts_multiplier = (2 + 5 * 1.737229) / 2 = 10.686144 / 2 = 5.343072 (inside [5, 8])
    #   -> baseline = 5.343072 * 2 = 10.686144
    # every weekday has the same sum (6*5 + 18*1 = 48 over 24 hours):
    #   wavg = (336 + 48) / (168 + 24) = 384 / 192 = 2 -> limit_v2 = 12.686144
    # forecast = int(max(14.214697, 12.686144)) = 14: the bursty limit wins.
    assert generate_issue_forecast(hours(MONDAY, counts), NEXT_MONDAY) == [14] * 14


def test_forecast_clamped_multipliers():
    # 167 hours of 1 and one hour of 100: avg = 267/168 = 1.589286,
    # squared deviations = 167 * 0.589286^2 + 98.410714^2 = 57.991 + 9684.668 = 9742.659,
    # sd = sqrt(9742.659 / 167) = 7.638, cv = 4.806:
    # regression multiplier = max(2, 5 * e^(-3.124) = 0.22) = 2 -> limit_v1 = 100 * 2 = 200;
    # ts_multiplier = min((1.589 + 5 * 7.638) / 1.589 = 25.0, 8) = 8 -> baseline = 12.714;
    # largest wavg is on the spike's weekday (hour 100 = Friday 04:00; Friday's 24 hours sum to 123):
    #   (267 + 123) / (168 + 24) = 390/192 = 2.03 -> limit_v2 = 14.75 < 200 -> forecast 200 every day.
    counts = [1] * 100 + [100] + [1] * 67
    assert generate_issue_forecast(hours(MONDAY, counts), NEXT_MONDAY) == [200] * 14


def test_forecast_weekday_weights():
    # Monday (2024-01-01) hours have 10 events, Tuesday..Sunday hours 1 event:
    # total = 24*10 + 144*1 = 384, avg = 384/168 = 16/7 = 2.285714
    # squared deviations = 24 * (10 - 16/7)^2 + 144 * (1 - 16/7)^2 = 24 * 2916/49 + 144 * 81/49
    #                    = 81648/49 = 1666.2857; sd = sqrt(1666.2857 / 167) = sqrt(9.977759) = 3.158759
    # cv = 3.158759 / 2.285714 = 1.381957
    # regression multiplier = 5 * e^(-0.65 * 1.381957) = 5 * e^(-0.898272) = 5 * 0.407273 = 2.036364
    #   -> limit_v1 = 10 * 2.036364 = 20.363639
    # ts_multiplier = (2.285714 + 5 * 3.158759) / 2.285714 = 18.079510 / 2.285714 = 7.909785 (< 8)
    #   -> baseline = 18.079510
    # output Monday: wavg = (384 + 240) / (168 + 24) = 624/192 = 3.25 -> limit_v2 = 21.329510 -> 21
    # other days:    wavg = (384 + 24) / (168 + 24) = 408/192 = 2.125 -> limit_v2 = 20.204510
    #   -> max(20.363639, 20.204510) = 20.363639 -> 20
    series = hours(MONDAY, [10] * 24 + [1] * 144)
    start = NEXT_MONDAY + 30 * 60  # Monday 2024-01-08 00:30 UTC
    forecast = generate_issue_forecast(series, start)
    assert len(forecast) == 14
    assert forecast[0] == 21 and forecast[7] == 21  # Mondays 2024-01-08 and 2024-01-15
    assert forecast[1] == 20  # Tuesday
    assert forecast[6] == 20  # Sunday
    assert forecast == [21, 20, 20, 20, 20, 20, 20] * 2

    # Starting Sunday 23:30 UTC: day 0 is Sunday, day 1 Monday (weekdays are UTC days of start + k days).
    forecast = generate_issue_forecast(series, NEXT_MONDAY - 30 * 60)
    assert forecast == [20, 21, 20, 20, 20, 20, 20] * 2


def sentry_generate_issue_forecast(intervals, data, start_time, alg_params=STANDARD):
    """Literal transcription of Sentry's loop (datetime objects, interval strings), for comparison."""
    input_dates = [datetime.strptime(x, "%Y-%m-%dT%H:%M:%S%f%z") for x in intervals]
    output_dates = [start_time + timedelta(days=x) for x in range(14)]
    if len(data) == 0:
        return []
    ts_max = max(data)
    if len(data) < 168:
        return [ts_max * 10 for _ in output_dates]
    ts_avg = statistics.mean(data)
    ts_std_dev = statistics.stdev(data)
    ts_cv = ts_std_dev / ts_avg
    regression_multiplier = min(max(alg_params.min_bursty_multiplier, 5 * ((math.e) ** (-0.65 * ts_cv))),
                                alg_params.max_bursty_multiplier)
    limit_v1 = ts_max * regression_multiplier
    ts_multiplier = min(max((ts_avg + (alg_params.std_multiplier * ts_std_dev)) / ts_avg,
                            alg_params.min_spike_multiplier), alg_params.max_spike_multiplier)
    baseline = ts_multiplier * ts_avg
    output = []
    for output_ts in output_dates:
        weights = [(1 + (input_ts.weekday() == output_ts.weekday())) for input_ts in input_dates]
        numerator = sum([datum * weight for datum, weight in zip(data, weights)])
        wavg_limit = numerator / sum(weights)
        output.append(int(max(limit_v1, wavg_limit + baseline)))
    return output


@pytest.mark.parametrize("seed", range(20))
def test_forecast_matches_sentry_transcription(seed):
    rng = random.Random(seed)
    now = NEXT_MONDAY + rng.randrange(7 * DAY)
    current = hour_start(now)
    n = 168 if seed % 2 else rng.randrange(1, 169)
    all_hours = [current - (i + 1) * HOUR for i in range(168)]
    chosen = sorted(rng.sample(all_hours, n))
    scale = rng.choice([1, 5, 50, 1000])
    series = [(h, rng.randint(1, scale) if rng.random() > 0.05 else rng.randint(1, 50 * scale)) for h in chosen]
    intervals = [datetime.fromtimestamp(h, tz=timezone.utc).isoformat() for h, _ in series]
    start_dt = datetime.fromtimestamp(now, tz=timezone.utc)
    variables = rng.choice([STANDARD, ThresholdVariables(6, 5, 9, 2, 6), ThresholdVariables(4, 4, 7, 2, 4)])
    expected = sentry_generate_issue_forecast(intervals, [c for _, c in series], start_dt, variables)
    assert generate_issue_forecast(series, now, variables) == expected


# ---------------------------------------------------------------------------- hourly counts


def test_hourly_counts_add_and_current_hour():
    counts = HourlyCounts()
    now = NEXT_MONDAY + 10 * HOUR + 20 * 60
    counts.add(now - 15 * 60)  # 10:05
    counts.add(now)  # 10:20
    counts.add(now - 30 * 60)  # 09:50
    assert counts.buckets == {NEXT_MONDAY + 9 * HOUR: 1, NEXT_MONDAY + 10 * HOUR: 2}
    assert counts.in_current_hour(now) == 2
    assert counts.in_current_hour(now + HOUR) == 0  # 11:20: nothing yet in that hour
    counts.add(now, 5)
    assert counts.in_current_hour(now) == 7


def test_series_excludes_current_hour_and_older_than_168_hours():
    now = NEXT_MONDAY + 10 * HOUR + 20 * 60
    current = hour_start(now)
    counts = HourlyCounts()
    counts.add(current - 169 * HOUR + 1)  # too old
    counts.add(current - 168 * HOUR)  # oldest hour of the window
    counts.add(current - 168 * HOUR + 3599)
    counts.add(current - HOUR + 10)  # the hour just before the current one
    counts.add(current + 5)  # current hour: excluded
    assert counts.series(now) == [(current - 168 * HOUR, 2), (current - HOUR, 1)]
    assert counts.in_current_hour(now) == 1


def test_series_is_sorted_and_skips_empty_hours():
    now = NEXT_MONDAY
    counts = HourlyCounts()
    for offset in (5, 1, 3, 3):
        counts.add(now - offset * HOUR)
    assert counts.series(now) == [(now - 5 * HOUR, 1), (now - 3 * HOUR, 2), (now - HOUR, 1)]


def test_prune_bounds():
    now = NEXT_MONDAY + 10 * HOUR + 20 * 60
    current = hour_start(now)
    counts = HourlyCounts()
    for offset in (-1, 0, 1, 167, 168, 169, 500):
        counts.add(current - offset * HOUR)
    counts.prune(now)
    # kept: the current hour and hours back to exactly 168 h before it; dropped: older and later ones
    assert sorted(counts.buckets) == [current - 168 * HOUR, current - 167 * HOUR, current - HOUR, current]


def test_prune_keeps_state_bounded_over_a_month():
    counts = HourlyCounts()
    max_len = 0
    for i in range(30 * 24):
        ts = MONDAY + i * HOUR + 17 * 60
        counts.add(ts)
        counts.add(ts + 60)
        counts.prune(ts)
        max_len = max(max_len, len(counts))
    assert max_len == 169
    assert len(counts) == 169
    now = MONDAY + (30 * 24 - 1) * HOUR + 17 * 60
    series = counts.series(now)
    assert len(series) == 168 and all(c == 2 for _, c in series)
    assert counts.in_current_hour(now) == 2


def test_hourly_counts_serialization_round_trip():
    counts = HourlyCounts()
    for offset in (3, 1, 1, 7):
        counts.add(NEXT_MONDAY - offset * HOUR + 42)
    blob = json.dumps(counts.to_json())
    assert json.loads(blob) == [[NEXT_MONDAY - 7 * HOUR, 1], [NEXT_MONDAY - 3 * HOUR, 1], [NEXT_MONDAY - HOUR, 2]]
    restored = HourlyCounts.from_json(json.loads(blob))
    assert restored == counts
    assert restored.series(NEXT_MONDAY) == counts.series(NEXT_MONDAY)
    assert HourlyCounts.from_json(None) == HourlyCounts()
    assert HourlyCounts.from_json([]).to_json() == []


def test_forecast_for_uses_the_week_before_the_current_hour():
    counts = HourlyCounts()
    for i in range(168):
        for _ in range(3):
            counts.add(MONDAY + i * HOUR + 100)
    now = NEXT_MONDAY + 30 * 60
    counts.add(now)  # current hour: not part of the series
    forecast = forecast_for(counts, now)
    assert forecast == Forecast(now, [18] * 14)  # the flat-week case above
    assert forecast_for(HourlyCounts(), now) is None
    assert escalation.default_forecast(now) == Forecast(now, [10] * 14)


# ---------------------------------------------------------------------------- Forecast.todays


def test_todays_index():
    added = NEXT_MONDAY + 12 * HOUR  # 2024-01-08 12:00 UTC
    forecast = Forecast(added, list(range(100, 114)))
    assert forecast.todays(added) == 100  # index 0
    assert forecast.todays(NEXT_MONDAY + DAY - 1) == 100  # 2024-01-08 23:59:59, still day 0
    assert forecast.todays(NEXT_MONDAY + DAY) == 101  # 2024-01-09 00:00, index 1
    assert forecast.todays(added + 13 * DAY) == 113  # index 13, the last value
    assert forecast.todays(added + 14 * DAY) == 113  # index 14 -> the last value
    assert forecast.todays(added + 40 * DAY) == 113  # > 14 -> still the last value
    assert forecast.todays(added - DAY) == 100  # before date_added -> the first value
    assert forecast.todays(added - 30 * DAY) == 100


def test_todays_index_across_utc_midnight():
    # Added at 23:59 UTC; two minutes later it is the next UTC day: index 1.
    added = NEXT_MONDAY + DAY - 60
    forecast = Forecast(added, list(range(14)))
    assert forecast.todays(added + 59) == 0
    assert forecast.todays(added + 120) == 1
    # Added at 00:01 UTC, 47 hours later is 23:01 the next day: still index 1.
    added = NEXT_MONDAY + 60
    forecast = Forecast(added, list(range(14)))
    assert forecast.todays(added + 47 * HOUR) == 1
    assert forecast.todays(added + 48 * HOUR) == 2


def test_todays_empty_and_serialization():
    assert Forecast(NEXT_MONDAY, []).todays(NEXT_MONDAY) == 0
    forecast = Forecast(NEXT_MONDAY + 0.25, [5] * 14)
    assert Forecast.from_json(json.loads(json.dumps(forecast.to_json()))) == forecast


# ---------------------------------------------------------------------------- detection, priority


def test_is_escalating_is_strict():
    assert is_escalating(11, 10) is True
    assert is_escalating(10, 10) is False
    assert is_escalating(9, 10) is False
    assert is_escalating(5, 0) is False  # a falsy forecast never escalates
    assert is_escalating(5, None) is False


def test_new_escalation_age():
    first_seen = NEXT_MONDAY
    assert uses_new_escalation_logic(first_seen, first_seen + 24 * HOUR - 1) is True
    assert uses_new_escalation_logic(first_seen, first_seen + 24 * HOUR) is False


@pytest.mark.parametrize("before, after", [(25, 50), (50, 75), (75, 75), (None, 75)])
def test_escalated_priority(before, after):
    assert escalated_priority(before) == after
