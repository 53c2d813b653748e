"""The output contract (issue_platform/tables.py) is complete and consistent, and the type registry
the DoFns use is built from the config without touching the process-wide one."""
from __future__ import annotations

import orjson

from issue_platform.config import load_config
from issue_platform.grouptype import registry
from issue_platform.tables import (ALL_TABLES, EXAMPLE_QUERIES, GROUPS_CURRENT_SQL, TABLES, UNDELIVERED, counter_name,
                                   post_process_message, schema_problem, undelivered_row)
from tests.pipeline_support import read_tables

ROW_COUNTERS = {"occurrences": "occurrences.grouped", "status_changes": "status_changes.applied",
                "dead_letter": "dead_letter.invalid_json", "activity": "activity.set_resolved",
                "post_process": None, "groups": None, "evidence": None}  # groups.created: the group step (#7)


def test_every_table_has_a_described_schema_partitioning_and_clustering():
    assert set(TABLES) == set(ALL_TABLES)
    for name, table in TABLES.items():
        fields = {f["name"]: f for f in table.schema()}
        assert all(f["description"] and f["mode"] in ("REQUIRED", "NULLABLE", "REPEATED") for f in fields.values())
        if table.partition_field is not None:
            assert fields[table.partition_field]["type"] == "TIMESTAMP", name
        assert table.clustering and set(table.clustering) <= set(fields), name
        assert ("group_id" in table.clustering) == ("group_id" in fields), name  # clustered by it where it exists


def test_the_rows_the_pipeline_writes_fit_their_schema(tmp_path):
    """The bundled sample's rows, every table: the schema's columns in its order, and nothing the
    BigQuery sink's check (what BigQuery would reject) finds."""
    from pipelines.issue_pipeline import run

    run(["--output", str(tmp_path)])
    tables = read_tables(tmp_path)
    assert tables.pop(UNDELIVERED) == []  # no topic, nothing undelivered: the row builder's shape instead
    tables[UNDELIVERED] = [undelivered_row("kafka:h:1/t", "1", b'{"a": 1}', {"group_id": "1"}, "timed out", 4),
                           undelivered_row("kafka:h:1/t", "1", b'{"a": 1}', {"group_id": "1"}, None, 5, "resent")]
    for table, rows in tables.items():
        columns = [f["name"] for f in TABLES[table].schema()]
        assert rows and all(list(row) == columns for row in rows), table
        assert [problem for problem in (schema_problem(table, row) for row in rows) if problem] == [], table


def test_each_table_feeds_its_counter():
    rows = {"occurrences": {"outcome": "grouped"}, "status_changes": {"outcome": "applied"},
            "dead_letter": {"reason": "invalid_json"}, "activity": {"type": "set_resolved"},
            "post_process": {"is_new": True}, "groups": {}, "evidence": {}}
    assert {t: counter_name(t, row) for t, row in rows.items()} == ROW_COUNTERS
    assert counter_name("post_process", {"is_new": False}) is None


def test_a_post_process_message_carries_its_keys():
    row = {"group_id": 2**62 + 1, "occurrence_id": "o", "project_id": 3, "event_id": "e", "primary_hash": "h",
           "group_type": 1006, "is_new": True, "is_regression": False, "is_new_group_environment": True}
    key, body, attributes = post_process_message(row)
    assert key == str(2**62 + 1) and orjson.loads(body) == row  # 63-bit ids survive
    assert attributes == {"group_id": key, "project_id": "3", "group_type": "1006", "is_new": "true",
                          "is_regression": "false"}


def test_the_view_and_queries_name_their_table():
    assert "{groups}" in GROUPS_CURRENT_SQL and "ORDER BY version DESC" in GROUPS_CURRENT_SQL
    assert all("{view}" in query for query in EXAMPLE_QUERIES.values())


def test_the_config_registry_holds_the_config_types_and_leaves_the_process_registry_alone(tmp_path):
    path = tmp_path / "types.yaml"
    path.write_text("group_types:\n  - {type_id: 990042, slug: queue_stuck, description: Queue stuck, "
                    "category: CRON}\n")
    config = load_config(str(path))
    types = config.registry()
    assert types.get_by_type_id(990042).slug == "queue_stuck"
    assert types.get_by_type_id(1006) is registry.get_by_type_id(1006)  # built-in types included
    assert registry.find(990042) is None
    assert config.registry().get_by_type_id(990042).slug == "queue_stuck"  # built again: no duplicate error
