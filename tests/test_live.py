"""`issue-platform live` (what `make live` runs): starts its own Pub/Sub emulator and Kafka broker on
loopback, streams generated payloads through the pipeline, backfills them from Kafka, prints both
summaries and stops what it started."""
import psutil

from pipelines.cli import main


def test_live_runs_the_local_stack_end_to_end_and_stops_it(tmp_path, capsys):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["live", "--count", "60", "--output", str(tmp_path), "--timeout", "90"]) == 0
    out = capsys.readouterr().out
    assert "producer: 60 sent to Pub/Sub and to Kafka, 0 refused" in out
    assert "60 of 60 payloads have an outcome" in out
    assert "== Kafka backfill of ingest-occurrences ==\nrecords in:            60\n" in out
    assert "stopped tansu" in out and "stopped pubsub-emulator" in out
    left = {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
    assert left <= before
