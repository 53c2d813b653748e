"""The BigQuery sink against a real BigQuery server (bqemulator on loopback): rejected rows become
dead letters without stalling the job, existing tables are never altered, and the schema check
names the field at fault."""
from __future__ import annotations

import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from bigquery_server import PROJECT, bigquery_client
from issue_platform import outcomes
from issue_platform.tables import ACTIVITY, ALL_TABLES, DEAD_LETTER, GROUPS, PART_GROUP, schema_problem
from pipelines.runner_tuning import BATCH_RUNNER
from transforms.sinks import SinkError, WriteBigQuery, _failed_insert, ensure_tables

pytestmark = pytest.mark.timeout(300)

GOOD = {"group_id": 7, "project_id": 1, "type": 1006, "fingerprint": "a" * 32, "title": "N+1 Query",
        "subtitle": "SELECT 1", "culprit": "app", "level": "warning", "priority": 50, "status": 0,
        "substatus": 7, "first_seen": "2026-11-01T00:00:00Z", "last_seen": "2026-11-01T00:00:01.500000Z",
        "times_seen": 1, "version": 1, "visible": True}
BAD = {**GOOD, "group_id": 8, "times_seen": "many"}  # a bug of ours: BigQuery would reject the row
ACTIVITY_ROW = {"group_id": 7, "project_id": 1, "type": "set_priority", "timestamp": "2026-11-01T00:00:02Z",
                "data": {"priority": 50, "reason": "escalating"}}


@pytest.mark.parametrize("streaming", [False, True], ids=["file_loads", "streaming_inserts"])
def test_rejected_rows_go_to_dead_letter_and_the_rest_is_written(streaming, bigquery_emulator, tmp_path):
    dataset = f"reject_{uuid.uuid4().hex[:8]}"
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"] if streaming else
                              [f"--runner={BATCH_RUNNER}", f"--temp_location={tmp_path}"])
    ensure_tables(bigquery_client(bigquery_emulator), PROJECT, dataset)  # the run plan's pre-flight
    with beam.Pipeline(options=options) as p:
        tables = {GROUPS: {PART_GROUP: p | "Groups" >> beam.Create([[GOOD, BAD]])},
                  ACTIVITY: {PART_GROUP: p | "Activity" >> beam.Create([[ACTIVITY_ROW]])}}
        tables | WriteBigQuery(f"{PROJECT}:{dataset}", endpoint=f"http://{bigquery_emulator.address}")
    client = bigquery_client(bigquery_emulator)
    groups = [dict(r) for r in client.query(f"SELECT group_id FROM `{PROJECT}.{dataset}.{GROUPS}`").result()]
    assert groups == [{"group_id": 7}]
    (activity,) = client.query(f"SELECT data FROM `{PROJECT}.{dataset}.{ACTIVITY}`").result()
    assert dict(activity)["data"] == {"priority": 50, "reason": "escalating"}  # a JSON column, either method
    (dead,) = [dict(r) for r in client.query(f"SELECT * FROM `{PROJECT}.{dataset}.{DEAD_LETTER}`").result()]
    assert (dead["stage"], dead["reason"], dead["field"]) == (outcomes.STAGE_SINK, outcomes.BIGQUERY_REJECTED, "times_seen")
    assert '"group_id":8' in dead["payload"] and '"table":"groups"' in dead["payload"]
    assert "many" not in dead["error"]  # the message names the field, never the content


def test_the_emulator_listens_on_loopback_only(bigquery_emulator):
    import psutil

    listening = {c.laddr.ip.removeprefix("::ffff:") for c in psutil.net_connections("tcp")  # gRPC: v4-mapped
                 if c.pid == bigquery_emulator.process.pid and c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_an_existing_table_that_differs_is_never_altered(bigquery_emulator):
    from google.cloud import bigquery

    client, dataset = bigquery_client(bigquery_emulator), f"keep_{uuid.uuid4().hex[:8]}"
    client.create_dataset(f"{PROJECT}.{dataset}")
    client.create_table(bigquery.Table(f"{PROJECT}.{dataset}.{GROUPS}",
                                       schema=[bigquery.SchemaField("group_id", "INTEGER")]))
    with pytest.raises(SinkError, match=f"{dataset}.groups exists with another schema"):
        ensure_tables(client, PROJECT, dataset)
    assert [f.name for f in client.get_table(f"{PROJECT}.{dataset}.{GROUPS}").schema] == ["group_id"]
    ensure_tables(client, PROJECT, dataset, prefix="v2_")  # a prefix gives a fresh set beside it
    assert {t.table_id for t in client.list_tables(f"{PROJECT}.{dataset}")} >= {f"v2_{t}" for t in ALL_TABLES}
    ensure_tables(client, PROJECT, dataset, prefix="v2_")  # idempotent once created


def test_schema_problem_names_the_field():
    assert schema_problem(GROUPS, GOOD) is None
    assert schema_problem(GROUPS, BAD) == ("times_seen", "'times_seen' must be INTEGER")
    assert schema_problem(GROUPS, {**GOOD, "extra": 1})[0] == "extra"
    assert schema_problem(GROUPS, {**GOOD, "title": None})[0] == "title"
    assert schema_problem(GROUPS, {**GOOD, "visible": 1})[0] == "visible"
    assert schema_problem(GROUPS, {**GOOD, "version": True})[0] == "version"


def test_a_streaming_insert_error_becomes_a_dead_letter_row():
    """BigQuery's per-row insertAll errors (which the emulator does not produce: it answers HTTP 500
    instead) mapped to a dead-letter row; the error's reason and location, never the value."""
    failed = ("p:d.groups", GOOD, [{"reason": "invalid", "location": "times_seen", "message": "bad value 12"}])
    row = _failed_insert(GROUPS, 1000)(failed)
    assert (row["stage"], row["reason"], row["field"]) == (outcomes.STAGE_SINK, outcomes.BIGQUERY_REJECTED, "times_seen")
    assert "invalid" in row["error"] and "12" not in row["error"]
