"""`issue-platform report`: every number from the run's tables, detector strings escaped, the page
self-contained; then the page itself in headless Chromium (tests/browser.py), and the same report
read back from BigQuery (the emulator)."""
from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from html.parser import HTMLParser
from importlib import resources

import pytest

from issue_platform import outcomes as R
from issue_platform.grouptype import registry
from issue_platform.tables import DEAD_LETTER, OCCURRENCES, STATUS_CHANGES, read_jsonl
from pipelines.report import jsonl_source
from pipelines.report_data import LATE_OUTCOME, collect
from pipelines.summary import latest_groups
from tests.pipeline_support import BASE, occurrence, write_jsonl
from tests.test_cli import cli

SAMPLE = str(resources.files("issue_platform").joinpath("data/sample.jsonl"))
SCRIPT_TITLE = "<script>alert(1)</script>"
IMG_CULPRIT = '"><img src=x onerror=alert(2)>'
IMG_TITLE = "\"><img src=x onerror=alert('title')>"
SUBTITLE = "{{7*7}}</td><svg onload=alert(3)>"
NOISE_TITLE = "<img src=x onerror=alert(5)>"
BAD_LINE = b"<img src=x onerror=alert(6)>"
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "out", "test-artifacts"))


def hostile_payloads() -> list:
    """Detector strings written to break out of HTML, attributes and templates: two groups (type 2001
    has no noise threshold), one fingerprint held by noise (type 1006 needs 3), one unparsable line."""
    return ([occurrence("hostile-script", title=SCRIPT_TITLE, culprit=IMG_CULPRIT, subtitle=SUBTITLE,
                        t=BASE + 3600 * i) for i in range(4)]
            + [occurrence("hostile-img", title=IMG_TITLE, t=BASE + 7200 * i) for i in range(2)]
            + [occurrence("hostile-noise", type_id=1006, title=NOISE_TITLE, t=BASE + 60), BAD_LINE])


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """The bundled sample plus the hostile payloads, run as a user would: `run` writes the report."""
    directory = tmp_path_factory.mktemp("known_run")
    hostile = write_jsonl(directory / "hostile.jsonl", hostile_payloads())
    out = directory / "out"
    result = cli("run", "--input", SAMPLE, "--input", hostile, "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = out / "report.html"
    assert f"report: {report}" in result.stdout.splitlines()
    return out, report


def test_every_number_comes_from_the_tables(known_run):
    out, _ = known_run
    data = collect(jsonl_source(str(out)), registry)
    occurrences = list(read_jsonl(str(out), OCCURRENCES))
    dead = list(read_jsonl(str(out), DEAD_LETTER))
    groups = sorted(latest_groups(str(out)), key=lambda g: (-g["times_seen"], g["group_id"]))

    assert data.totals["records.in"] == 2000 + len(hostile_payloads())
    assert [(g["group_id"], g["times_seen"]) for g in data.groups] == [(g["group_id"], g["times_seen"]) for g in groups]
    grouped = Counter(o["group_id"] for o in occurrences if o["outcome"] == R.GROUPED)
    assert {g["group_id"]: sum(g["hourly"]) for g in data.groups} == grouped  # each sparkline, all its events
    assert {o: sum(v) for o, v in data.volume.items()} == Counter(o["outcome"] for o in occurrences)
    assert {(d["stage"], d["reason"]): d["count"] for d in data.dead_letters} == Counter(
        (d["stage"], d["reason"]) for d in dead)
    times = [o["detection_time"] for o in occurrences] + [c["timestamp"] for c in read_jsonl(str(out), STATUS_CHANGES)]
    assert (data.first_seen, data.last_seen) == (min(times), max(times))
    noise = next(n for n in data.noise if n["title"] == NOISE_TITLE)
    assert (noise["held"], noise["counter"], noise["limit"]) == (1, 1, 3)  # 1 of the 3 sightings type 1006 needs
    assert all(n["key"] not in {f"{g['project_id']}:{g['fingerprint']}" for g in groups} for n in data.noise)
    script = next(g for g in data.groups if g["title"] == SCRIPT_TITLE)
    assert (script["slug"], script["category"], script["status_words"], script["substatus_words"],
            script["priority_words"]) == ("profile_file_io_main_thread", "performance", "unresolved", "new", "low")


def test_detector_strings_are_text_in_the_page(known_run):
    _, report = known_run
    page = report.read_text()
    assert len(re.findall(r"<script\b", page)) == 1 and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "{{7*7}}" in page  # data, never a template
    assert "&lt;img src=x onerror=alert(6)&gt;" in page  # the unparsable line's excerpt


def test_the_page_names_no_other_resource(known_run):
    """Self-contained: nothing to load (links only to its own sections; SVG namespace names are not
    requests) and a policy that forbids every request but inline styles and the page's own script."""
    _, report = known_run
    page = report.read_text()
    links = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            links.extend(v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data", "poster"))

    Links().feed(page)
    assert links and all(link.startswith("#") for link in links)
    assert not re.search(r"@import|url\((?!#)", page)
    assert "default-src 'none'" in page and "script-src 'sha256-" in page


def test_top_n_lists_the_loudest_and_counts_the_rest(known_run, tmp_path):
    out, _ = known_run
    to = tmp_path / "top.html"
    result = cli("report", str(out), "--to", str(to), "--top", "5")
    assert result.returncode == 0, result.stderr
    groups = sorted(latest_groups(str(out)), key=lambda g: (-g["times_seen"], g["group_id"]))
    page = to.read_text()
    assert len(re.findall(r"<tr data-rank=", page)) == 5
    rest = sum(g["times_seen"] for g in groups[5:])
    assert f"5 of {len(groups)} groups" in page and f"{len(groups) - 5} more groups with {rest:,} events" in page


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/run"], "no such directory"),
    (["--from", "bigquery:just-a-project"], "expected bigquery:PROJECT:DATASET"),
    ([], "give either OUTPUT_DIR"),
    (["--top", "0", "x"], "--top must be >= 1"),
    (["--from", "bigquery:p:d", "--bigquery_table_prefix", "x`; DROP"], "letters, digits and underscores only"),
])
def test_usage_errors_are_one_line(args, message):
    result = cli("report", *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_report_skips_it_and_a_failed_report_keeps_the_previous_one(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [occurrence()])
    out = tmp_path / "out"
    result = cli("run", "--input", data, "--output", str(out), "--no-report")
    assert result.returncode == 0 and "report:" not in result.stdout and not (out / "report.html").exists()
    (out / "report.html").write_text("previous")
    with open(next(out.glob("groups.*.jsonl")), "ab") as table:
        table.write(b'{"group_id": \n')  # a damaged table
    failed = cli("report", str(out))
    assert failed.returncode == 2 and "groups" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert (out / "report.html").read_text() == "previous"


def _rows(**tables):
    return lambda table: tables.get(table, [])


def _occurrence_row(t: str, outcome: str = R.GROUPED, group_id=7) -> dict:
    return {"occurrence_id": uuid.uuid4().hex, "project_id": 1, "group_id": group_id if outcome == R.GROUPED else None,
            "outcome": outcome, "type": 2001, "fingerprint": ["f" * 32], "event_id": "e" * 32, "issue_title": "t",
            "subtitle": "s", "culprit": "c", "level": "warning", "environment": None, "priority": None,
            "resource_id": None, "detection_time": t}


def test_late_records_are_placed_at_their_detection_time():
    late = {"stage": "group", "reason": R.LATE, "field": "detection_time", "error": "behind the clock",
            "payload": '{"id": "abc", "detection_time": 1793494800.5}', "payload_truncated": False, "source": None}
    data = collect(_rows(occurrences=[_occurrence_row("2026-11-01T00:10:00Z")], dead_letter=[late]), registry)
    assert data.bins == ["2026-11-01T00:00Z", "2026-11-01T01:00Z"]
    assert data.volume == {R.GROUPED: [1, 0], LATE_OUTCOME: [0, 1]}  # 1793494800.5 is 01:00:00.5
    assert data.dead_letters[0]["examples"][0]["id"] == "abc"


def test_a_long_run_is_charted_in_wider_bins():
    times = ["2026-01-01T00:00:00Z", "2026-03-01T05:00:00Z"]  # 1,421 hours apart
    data = collect(_rows(occurrences=[_occurrence_row(t) for t in times]), registry)
    assert data.bin_hours == 2 and len(data.bins) <= 1000
    assert sum(data.volume[R.GROUPED]) == 2 and data.volume[R.GROUPED][0] == data.volume[R.GROUPED][-1] == 1


# -- in a real browser

@pytest.fixture(scope="module")
def browser():
    from tests.browser import Browser, chromium_path

    assert chromium_path(), "chromium is not installed (make test installs it: apt-get install chromium)"
    started = Browser()
    try:
        yield started
    finally:
        started.close()


ROWS_JS = """Array.from(document.querySelectorAll('#issue-stream tbody tr')).map(tr => ({
  group: tr.dataset.group, events: Number(tr.querySelector('td.events').textContent.replace(/,/g, '')),
  title: tr.querySelector('.title').textContent, culprit: tr.querySelector('.sub').textContent,
  last: Number(tr.dataset.last), spark: tr.querySelectorAll('td.spark svg path').length}))"""


@pytest.mark.servers
def test_the_report_in_chromium(known_run, browser):
    """Loads the report of the known run: the issue stream shows the groups and counts of the groups
    table, sorting works, nothing is requested but the file, no console error, no dialog, no element
    from detector strings; a screenshot is kept as an artefact."""
    out, report = known_run
    url = "file://" + str(report)
    load = browser.open(url)
    assert load.requests == [url] and load.errors == [] and load.dialogs == []

    groups = sorted(latest_groups(str(out)), key=lambda g: (-g["times_seen"], g["group_id"]))
    rows = browser.evaluate(ROWS_JS)
    assert [(int(r["group"]), r["events"]) for r in rows] == [(g["group_id"], g["times_seen"]) for g in groups]
    assert all(r["spark"] for r in rows)
    records_in = browser.evaluate("document.getElementById('records-in').textContent")
    assert records_in == f"{2000 + len(hostile_payloads()):,}"

    hostile = {r["title"]: r for r in rows}
    assert hostile[SCRIPT_TITLE]["culprit"] == IMG_CULPRIT and IMG_TITLE in hostile
    assert browser.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert browser.evaluate("document.scripts.length") == 1
    assert browser.evaluate("Array.from(document.querySelectorAll('*')).filter(e => Array.from(e.attributes)"
                            ".some(a => a.name.startsWith('on'))).length") == 0

    browser.evaluate("document.querySelector('#issue-sort button[data-sort=last]').click()")
    lasts = [r["last"] for r in browser.evaluate(ROWS_JS)]
    assert lasts == sorted(lasts, reverse=True) and lasts != [r["last"] for r in rows]
    after = browser._page_load()
    assert after.errors == [] and after.dialogs == [] and after.requests == [url]

    browser.evaluate("document.querySelector('#issue-sort button[data-sort=events]').click()")
    shot = browser.screenshot(os.path.join(ARTIFACTS, "report.png"))
    assert os.path.getsize(shot) > 10_000
    browser.evaluate(f"document.querySelector('tr[data-group=\"{hostile[SCRIPT_TITLE]['group']}\"]')"
                     ".scrollIntoView({block: 'center'})")
    browser.screenshot(os.path.join(ARTIFACTS, "report-hostile-titles.png"))  # shown as text


@pytest.mark.servers
def test_the_browser_checks_see_requests_errors_and_dialogs(browser, tmp_path):
    """The harness would notice: a page that requests, errs and alerts is reported as doing so."""
    page = tmp_path / "bad.html"
    page.write_text('<img src="http://example.invalid/x.png"><script>alert("hi"); console.error("boom")</script>')
    load = browser.open("file://" + str(page))
    assert "http://example.invalid/x.png" in load.requests
    assert load.dialogs == ["hi"] and any("boom" in e for e in load.errors)


# -- from BigQuery

@pytest.mark.servers
@pytest.mark.timeout(600)
def test_the_report_from_bigquery_equals_the_report_from_files(known_run, bigquery_emulator, tmp_path):
    from bigquery_server import PROJECT

    out, _ = known_run
    dataset = f"report_{uuid.uuid4().hex[:8]}"
    hostile = write_jsonl(tmp_path / "hostile.jsonl", hostile_payloads())
    endpoint = f"http://{bigquery_emulator.address}"
    run = cli("run", "--input", SAMPLE, "--input", hostile, "--sink", "bigquery", "--bigquery_dataset",
              f"{PROJECT}:{dataset}", "--bigquery_endpoint", endpoint, "--temp_location", str(tmp_path),
              "--no-report")
    assert run.returncode == 0, run.stderr[-2000:]
    to = tmp_path / "bq.html"
    result = cli("report", "--from", f"bigquery:{PROJECT}:{dataset}", "--bigquery_endpoint", endpoint,
                 "--to", str(to))
    assert result.returncode == 0, result.stderr[-2000:]

    from pipelines.report import bigquery_source

    files = collect(jsonl_source(str(out)), registry)
    tables = collect(bigquery_source(f"bigquery:{PROJECT}:{dataset}", endpoint), registry)
    assert tables.totals == files.totals
    assert tables.groups == files.groups and tables.volume == files.volume and tables.lifecycle == files.lifecycle
    assert (tables.first_seen, tables.last_seen, tables.bins) == (files.first_seen, files.last_seen, files.bins)
    assert tables.noise == files.noise
    assert [(d["stage"], d["reason"], d["count"]) for d in tables.dead_letters] == [
        (d["stage"], d["reason"], d["count"]) for d in files.dead_letters]
    page = to.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and len(re.findall(r"<script\b", page)) == 1
