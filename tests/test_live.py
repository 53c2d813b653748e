"""`issue-platform live` (what `make live` runs): starts its own Pub/Sub emulator, Kafka broker and
BigQuery emulator on loopback, streams generated payloads through the pipeline into BigQuery and the
post-process topics, backfills them from Kafka, prints both summaries and stops what it started."""
import re

import psutil
import pytest

from pipelines.cli import main


@pytest.mark.servers
def test_live_runs_the_local_stack_end_to_end_and_stops_it(tmp_path, capsys):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["live", "--count", "60", "--output", str(tmp_path), "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert "producer: 60 sent to Pub/Sub and to Kafka, 0 refused" in out
    stream, backfill = out.split("== Kafka backfill of ingest-occurrences ==")
    assert "60 of 60 payloads have an outcome" in stream
    assert "\nrecords in:            60\n" in stream  # recounted from the BigQuery tables
    groups = int(re.search(r"groups in live\.groups_current: (\d+)", stream).group(1))
    assert groups > 0 and f"\ngroups created:        {groups}\n" in backfill
    posted = re.search(r"post-process messages: (\d+) rows in live\.post_process; (\d+) on Pub/Sub \S+, "
                       r"(\d+) on Kafka ", stream).groups()
    assert int(posted[0]) > 0 and len(set(posted)) == 1
    assert f"post_process ({posted[0]} rows)" in backfill  # the backfill's table has as many rows
    assert backfill.startswith("\nrecords in:            60\n")
    assert "groups: the stream's in BigQuery and the backfill's are the same" in backfill
    assert "stopped bqemulator" in out and "stopped tansu" in out and "stopped pubsub-emulator" in out
    left = {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    assert left <= before
