"""The report's charts: Vega-Lite specs rendered to static SVG by vl-convert (no JavaScript, no
network when the page opens; Vega escapes every label it draws)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Optional

import vl_convert

from issue_platform import outcomes as R
from pipelines.report_data import CREATED, LATE_OUTCOME

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # names the spec version; never fetched
# Vega sizes each chart by measuring its labels in the first font it finds here (DejaVu Sans on Debian);
# Verdana has nearly the same widths, so labels fit wherever the page is opened.
FONT = "DejaVu Sans, Verdana, sans-serif"
CONFIG = {"aria": False, "font": FONT, "view": {"stroke": None},
          "axis": {"labelColor": "#4b5563", "titleColor": "#374151", "gridColor": "#eef0f3",
                   "domainColor": "#d1d5db", "tickColor": "#d1d5db", "labelFontSize": 11},
          "legend": {"labelFontSize": 11, "titleFontSize": 11, "orient": "top", "title": None}}
COLORS = {R.GROUPED: "#4c78a8", R.NOISE_SUPPRESSED: "#b8bec9", R.DUPLICATE: "#f2a541",
          R.INGEST_DISABLED: "#9d755d", R.TYPE_MISMATCH: "#b279a2", LATE_OUTCOME: "#e45756",
          CREATED: "#4c78a8", "set_regression": "#e45756", "set_escalating": "#f58518",
          "set_resolved": "#54a24b", "set_resolved_by_age": "#88d27a", "set_ignored": "#9d755d",
          "set_unresolved": "#b279a2", "auto_set_ongoing": "#b8bec9", "set_priority": "#eeca3b"}
OTHER_COLORS = ["#72b7b2", "#ff9da6", "#79706e", "#d67195", "#439894"]


def _svg(spec: dict) -> str:
    return vl_convert.vegalite_to_svg({"$schema": SCHEMA, "config": CONFIG, "padding": 6, **spec},
                                      allowed_base_urls=[])  # inline data only: never fetch


def _colors(names, name_of) -> dict:
    spare = iter(OTHER_COLORS * (1 + len(names) // len(OTHER_COLORS)))
    return {"domain": [name_of(n) for n in names], "range": [COLORS.get(n) or next(spare) for n in names]}


def _after(label: str, hours: int) -> str:
    end = datetime.strptime(label, "%Y-%m-%dT%H:00Z") + timedelta(hours=hours)
    return end.strftime("%Y-%m-%dT%H:00Z")


def stacked_over_time(series: dict[str, list[int]], bins: list[str], bin_hours: int, what: str,
                      labels: Optional[dict[str, str]] = None, width: int = 680, height: int = 220) -> str:
    """Counts per time bin, one colour per series (named by `labels`), stacked, on the run's whole time
    axis (so every time chart lines up). Empty: no chart."""
    name_of = lambda s: (labels or {}).get(s, s.replace("_", " "))
    values = [{"t": bins[i], "s": name_of(name), "n": n}
              for name, counts in series.items() for i, n in enumerate(counts) if n]
    if not values:
        return ""
    return _svg({
        "width": width, "height": height, "data": {"values": values},
        "mark": {"type": "bar", "width": {"band": 0.9}},
        "encoding": {
            "x": {"field": "t", "type": "temporal", "timeUnit": "utcyearmonthdatehours",
                  "title": "UTC, per hour" if bin_hours == 1 else f"UTC, per {bin_hours} hours",
                  "scale": {"domain": [bins[0], _after(bins[-1], bin_hours)]},
                  "axis": {"format": "%b %d %H:%M", "labelAngle": 0, "labelOverlap": True, "grid": False}},
            "y": {"field": "n", "type": "quantitative", "aggregate": "sum", "title": what},
            "color": {"field": "s", "type": "nominal", "scale": _colors(series, name_of), "sort": [
                name_of(s) for s in series]},
            "order": {"field": "s", "type": "nominal"}}})


def dead_letter_bars(dead_letters: list[dict], width: int = 240) -> str:
    """Dead letters per stage and reason, the largest first."""
    if not dead_letters:
        return ""
    values = [{"r": f"{d['stage']} / {d['reason']}", "n": d["count"]} for d in dead_letters]
    return _svg({
        "width": width, "height": {"step": 22}, "data": {"values": values},
        "mark": {"type": "bar", "color": "#e45756", "cornerRadiusEnd": 2},
        "encoding": {"y": {"field": "r", "type": "nominal", "sort": "-x", "title": None,
                           "axis": {"labelLimit": 220}},
                     "x": {"field": "n", "type": "quantitative", "title": "dead letters",
                           "axis": {"format": "d", "tickCount": min(5, max(v["n"] for v in values))}}}})


_DECIMALS = re.compile(r"(\d\.\d)\d+")  # a sparkline's path needs no sub-pixel precision: a third the size


class Sparklines:
    """One small line chart per group, all on the run's time axis. The Vega-Lite spec is compiled
    to Vega once; each chart only swaps its data (a whole compile per row costs twice as much)."""

    def __init__(self, bins: int, width: int = 120, height: int = 26):
        self._vega = vl_convert.vegalite_to_vega({
            "$schema": SCHEMA, "config": {**CONFIG, "axis": {"disable": True}}, "background": None,
            "width": width, "height": height,
            "padding": 1, "data": {"name": "counts"},
            "mark": {"type": "line", "color": "#4c78a8", "strokeWidth": 1.3, "interpolate": "linear"},
            "encoding": {"x": {"field": "i", "type": "quantitative", "scale": {"domain": [0, max(bins - 1, 1)]}},
                         "y": {"field": "n", "type": "quantitative"}}})
        self._data = next(d for d in self._vega["data"] if d["name"] == "counts")

    def render(self, counts: list[int]) -> str:
        self._data["values"] = [{"i": i, "n": n} for i, n in enumerate(counts)]
        return _DECIMALS.sub(r"\1", vl_convert.vega_to_svg(self._vega, allowed_base_urls=[]))
