"""`issue-platform resend`: send again the post-process messages a job kept in its `undelivered`
table (a topic was down longer than the delivery retries lasted).

The table is append-only (BigQuery cannot delete rows still in its streaming buffer): each message
delivered here gets a `resent` row beside its `undelivered` one, and a message with a `resent` row is
never sent again, so running the command twice sends nothing twice. Exit 0 when every kept message
is delivered, 1 when some are still undeliverable (they stay for the next try).
"""
from __future__ import annotations

import argparse
import os
import uuid

import orjson

from issue_platform.config import ConfigError
from issue_platform.tables import (JSONL_SUFFIX, RESENT_STATUS, UNDELIVERED, UNDELIVERED_STATUS, jsonl_prefix,
                                   read_jsonl, undelivered_row)

SEND_SECONDS = 10.0


def register(sub) -> None:
    parser = sub.add_parser("resend", help="send again the post-process messages kept in the undelivered table",
                            description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="the job's JSON Lines output directory")
    where.add_argument("--bigquery_dataset", help="the job's BigQuery dataset, PROJECT:DATASET")
    parser.add_argument("--bigquery_endpoint", help="BigQuery API root URL (an emulator)")
    parser.add_argument("--bigquery_table_prefix", default="", help="prefix of the job's table names")
    parser.set_defaults(handler=cmd_resend)


class _JsonLinesTable:
    def __init__(self, output: str):
        if not os.path.isdir(output):
            raise ConfigError(f"--output {output}: not a directory")
        self._output = output

    def rows(self) -> list[dict]:
        return list(read_jsonl(self._output, UNDELIVERED))

    def append(self, rows: list[dict]) -> None:
        path = f"{jsonl_prefix(self._output, UNDELIVERED, 'resend')}-{uuid.uuid4().hex}{JSONL_SUFFIX}"
        with open(path + ".tmp", "wb") as handle:
            handle.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
        os.replace(path + ".tmp", path)  # whole or not at all


class _BigQueryTable:
    def __init__(self, dataset: str, endpoint, prefix: str):
        from transforms.sinks import bigquery_client, parse_dataset

        project, name = parse_dataset(dataset)
        self._client, self._table = bigquery_client(project, endpoint), f"{project}.{name}.{prefix}{UNDELIVERED}"

    def rows(self) -> list[dict]:
        from google.api_core.exceptions import NotFound

        try:
            result = self._client.query(f"SELECT * FROM `{self._table}`").result()
        except NotFound:
            raise ConfigError(f"BigQuery table {self._table} not found") from None
        return [{**dict(row), "attributes": _json(row["attributes"])} for row in result]

    def append(self, rows: list[dict]) -> None:
        encoded = [{**row, "attributes": orjson.dumps(row["attributes"]).decode()} for row in rows]
        errors = self._client.insert_rows_json(self._table, encoded)
        if errors:
            raise RuntimeError(f"BigQuery refused the resent rows of {self._table}: {errors[0]}")


def _json(value):
    return orjson.loads(value) if isinstance(value, str) else value


def pending(rows: list[dict]) -> dict:
    """message_id -> its undelivered row, for the messages not yet resent."""
    resent = {row["message_id"] for row in rows if row["status"] == RESENT_STATUS}
    return {row["message_id"]: row for row in rows
            if row["status"] == UNDELIVERED_STATUS and row["message_id"] not in resent}


def _deliverer(topic: str):
    from transforms.delivery import KafkaDeliverFn, PubSubDeliverFn
    from transforms.sinks import parse_topic

    kind, name, servers = parse_topic(topic)
    return KafkaDeliverFn(topic, servers, name) if kind == "kafka" else PubSubDeliverFn(topic, name)


def cmd_resend(args: argparse.Namespace) -> int:
    table = (_JsonLinesTable(args.output) if args.output
             else _BigQueryTable(args.bigquery_dataset, args.bigquery_endpoint, args.bigquery_table_prefix))
    waiting = pending(table.rows())
    by_topic: dict = {}
    for row in waiting.values():
        by_topic.setdefault(row["topic"], []).append(row)
    resent, failed = [], 0
    for topic, rows in sorted(by_topic.items()):
        messages = [(row["key"], row["body"].encode(), row["attributes"]) for row in rows]
        errors = _deliverer(topic).send(messages, SEND_SECONDS)
        for row, (key, body, attributes), error in zip(rows, messages, errors):
            if error is None:
                resent.append(undelivered_row(topic, key, body, attributes, None, row["attempts"] + 1, RESENT_STATUS))
        still = [error for error in errors if error is not None]
        if still:
            failed += len(still)
            print(f"{topic}: {len(still)} message(s) still undeliverable ({still[0]})")
    if resent:
        table.append(resent)
    print(f"resent {len(resent)} of {len(waiting)} undelivered message(s); {failed} still undeliverable")
    return 1 if failed else 0


__all__ = ["register", "cmd_resend", "pending"]
