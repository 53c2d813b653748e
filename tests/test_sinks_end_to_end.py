"""The real sinks end to end: a batch run and a streaming replay each write every table to a BigQuery
server (bqemulator) and every post-process message to the Pub/Sub emulator and a Kafka broker
(Tansu), all on loopback and started by the tests; the counts equal the JSON Lines sink's for the
same input, and a consumer reads every message back."""
from __future__ import annotations

import time
import uuid
from collections import Counter

import orjson
import pytest

from issue_platform.config import load_config
from issue_platform.tables import (ALL_TABLES, EXAMPLE_QUERIES, GROUPS, GROUPS_CURRENT, POST_PROCESS, STATE,
                                   TABLES, post_process_message)
from pipelines.issue_pipeline import run
from bigquery_server import PROJECT, bigquery_client
from servers import KAFKA_CONSUMER_DEFAULTS, create_kafka_topic, create_pubsub_topic
from tests.lifecycle_fixture import CONFIG, H, lifecycle_payloads
from tests.pipeline_support import (BASE, canonical, latest_groups, latest_states, occurrence, read_tables, status_change,
                                    write_jsonl)

pytestmark = pytest.mark.timeout(600)


def _payloads() -> list:
    """The lifecycle fixture, plus a group still escalating at its end (the fixture's escalation
    shifted to end an hour before its last event), a duplicate, a bad record, and an occurrence of
    an unreleased type (ingest_disabled)."""
    shift, duplicate = 174 * H, occurrence("dup", project_id=1, t=BASE + 5)
    escalating = [occurrence("escalating", project_id=2, type_id=2003, t=BASE + shift + h * H + 60) for h in range(30)]
    escalating.append(status_change("escalating", project_id=2, status=2, substatus=1, t=BASE + shift + 30.5 * H))
    escalating += [occurrence("escalating", project_id=2, type_id=2003, t=BASE + shift + 40 * H + 60 * i)
                   for i in range(12)]
    return [*lifecycle_payloads(), *escalating, duplicate, duplicate, b"{not json",
            occurrence("gated", project_id=1, type_id=1906, t=BASE + 7)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The input, its config, and what the JSON Lines sink writes for it (batch)."""
    tmp = tmp_path_factory.mktemp("reference")
    (tmp / "config.yaml").write_text(CONFIG)
    path = write_jsonl(tmp / "in.jsonl", _payloads())
    run(["--input", path, "--output", str(tmp / "out")], load_config(str(tmp / "config.yaml")))
    return path, str(tmp / "config.yaml"), read_tables(tmp / "out")


def _bigquery_rows(client, dataset: str, table: str) -> list[dict]:
    rows = client.query(f"SELECT * FROM `{PROJECT}.{dataset}.{table}`").result()
    return [_plain(dict(row)) for row in rows]


def _plain(row: dict) -> dict:
    """A BigQuery row in the JSON Lines encoding (RFC 3339 'Z' timestamps; JSON columns are values)."""
    return {k: v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v for k, v in row.items()}


def _pull_pubsub(subscription: str, count: int, timeout: float = 60.0) -> list:
    from google.cloud import pubsub_v1

    subscriber, received = pubsub_v1.SubscriberClient(), []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            response = subscriber.pull(request={"subscription": subscription, "max_messages": 500}, timeout=5)
            if not response.received_messages:
                if len(received) >= count:  # everything arrived, and nothing more follows
                    break
                continue
            received += [m.message for m in response.received_messages]
            subscriber.acknowledge(request={"subscription": subscription,
                                            "ack_ids": [m.ack_id for m in response.received_messages]})
    finally:
        subscriber.close()
    return received


def _consume_kafka(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", **KAFKA_CONSUMER_DEFAULTS})
    consumer.subscribe([topic])
    received, empty, deadline = [], 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (len(received) < count or empty < 2):
            message = consumer.poll(1.0)
            if message is None:
                empty += len(received) >= count
                continue
            assert message.error() is None, message.error()
            received.append(message)
    finally:
        consumer.close()
    return received


def _check_messages(pubsub_messages, kafka_messages, expected_rows: list[dict]) -> None:
    want = sorted((key, orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS), tuple(sorted(attrs.items())))
                  for key, body, attrs in map(post_process_message, expected_rows))
    got_pubsub = sorted((m.ordering_key, orjson.dumps(orjson.loads(m.data), option=orjson.OPT_SORT_KEYS),
                         tuple(sorted(m.attributes.items()))) for m in pubsub_messages)
    got_kafka = sorted((m.key().decode(), orjson.dumps(orjson.loads(m.value()), option=orjson.OPT_SORT_KEYS),
                        tuple(sorted((k, v.decode()) for k, v in m.headers()))) for m in kafka_messages)
    assert got_pubsub == want
    assert got_kafka == want
    # One group's messages share a Kafka partition, in the order the pipeline emitted them: the
    # message that created the group comes first.
    for key in {k for k, _, _ in want}:
        mine = [m for m in kafka_messages if m.key() == key.encode()]
        assert len({m.partition() for m in mine}) == 1
        flags = [orjson.loads(m.value())["is_new"] for m in sorted(mine, key=lambda m: m.offset())]
        assert True not in flags[1:], key


@pytest.mark.parametrize("streaming", [False, True], ids=["batch", "streaming"])
def test_every_table_and_message_reaches_bigquery_pubsub_and_kafka(
        streaming, reference, tmp_path, bigquery_emulator, pubsub_emulator, kafka_broker):
    path, config_path, files = reference
    dataset, topic = f"e2e_{'stream' if streaming else 'batch'}_{uuid.uuid4().hex[:6]}", f"pp-{uuid.uuid4().hex[:8]}"
    create_pubsub_topic(PROJECT, topic, subscriptions=(f"{topic}-sub",), ordering=True)
    create_kafka_topic(kafka_broker.address, topic, partitions=3)
    argv = ["--input", path, "--output", str(tmp_path / "unused"), "--config", config_path,
            "--sink", "bigquery", "--bigquery_dataset", f"{PROJECT}:{dataset}",
            "--bigquery_endpoint", f"http://{bigquery_emulator.address}", "--temp_location", str(tmp_path),
            "--post_process_topic", f"pubsub:projects/{PROJECT}/topics/{topic}",
            "--post_process_topic", f"kafka:{kafka_broker.address}/{topic}", *(["--streaming"] if streaming else [])]
    run(argv)

    client = bigquery_client(bigquery_emulator)
    for table in ALL_TABLES:  # created by the tables API, partitioned and clustered as the contract says
        definition = client.get_table(f"{PROJECT}.{dataset}.{table}")
        assert definition.time_partitioning.type_ == "DAY"
        assert definition.time_partitioning.field == TABLES[table].partition_field
        assert definition.clustering_fields == list(TABLES[table].clustering)
        assert [(f.name, f.field_type, f.mode, f.description) for f in definition.schema] == [
            (f["name"], f["type"], f["mode"], f["description"]) for f in TABLES[table].schema()]
    written = {table: _bigquery_rows(client, dataset, table) for table in ALL_TABLES}
    for table in set(ALL_TABLES) - {GROUPS, STATE}:  # a stream writes these per flush, a batch once per key
        assert canonical(written[table]) == canonical(files[table]), table
    if not streaming:
        assert canonical(written[GROUPS]) == canonical(files[GROUPS])
        assert canonical(written[STATE]) == canonical(files[STATE])
    def held(rows):  # each key's current snapshot; a stream's empty one (a released key) is the same as none
        return {k: (r["snapshot_at"], r["state"]) for k, r in latest_states(rows).items() if r["state"]}

    assert held(written[STATE]) == held(files[STATE])
    current = _bigquery_rows(client, dataset, GROUPS_CURRENT)
    assert canonical(current) == canonical(list(latest_groups(files[GROUPS]).values()))
    assert canonical(list(latest_groups(written[GROUPS]).values())) == canonical(current)
    answers = {name: [dict(r) for r in client.query(query.format(
        view=f"{PROJECT}.{dataset}.{GROUPS_CURRENT}")).result()] for name, query in EXAMPLE_QUERIES.items()}
    assert [r["group_id"] for r in answers["top_issues"]] == [g["group_id"] for g in sorted(
        current, key=lambda g: (-g["times_seen"], g["group_id"]))[:10]]
    unresolved = Counter(g["project_id"] for g in current if g["status"] == 0)
    assert {r["project_id"]: r["unresolved"] for r in answers["unresolved_per_project"]} == unresolved
    escalating = {g["group_id"] for g in current if (g["status"], g["substatus"]) == (0, 2)}
    assert escalating and {r["group_id"] for r in answers["escalating"]} == escalating

    expected = files[POST_PROCESS]
    assert expected
    _check_messages(_pull_pubsub(f"projects/{PROJECT}/subscriptions/{topic}-sub", len(expected)),
                    _consume_kafka(kafka_broker.address, topic, len(expected)), expected)
