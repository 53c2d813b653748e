"""`issue-platform produce FILE... --to TARGET`: send JSON Lines payloads to the ingest topic.

    issue-platform produce payloads.jsonl --to pubsub:projects/P/topics/ingest-occurrences
    issue-platform produce payloads.jsonl.gz --to kafka:127.0.0.1:9092/ingest-occurrences

Each line is validated as the pipeline would; invalid lines are listed (file, line, reason) and not
sent. Exit 0 if every line was sent, 1 if any was refused or not confirmed, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
from typing import Iterator

from issue_platform.config import ConfigError, load_config
from issue_platform.grouptype import registry


def register(sub) -> None:
    """Adds the `produce` subcommand to the CLI's subparsers."""
    parser = sub.add_parser("produce", help="validate and send JSON Lines payloads to Pub/Sub or Kafka")
    parser.add_argument("files", nargs="+", help="JSON Lines files (.jsonl or .jsonl.gz)")
    parser.add_argument("--to", required=True, metavar="TARGET",
                        help="pubsub:projects/P/topics/T or kafka:HOST:PORT[,HOST:PORT...]/TOPIC")
    parser.add_argument("--config", help="YAML or JSON file with extra group_types")
    parser.add_argument("--group_types_module", action="append", default=[],
                        help="module defining GroupType subclasses (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for confirmations")
    parser.set_defaults(handler=cmd_produce)


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield number, line
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def cmd_produce(args: argparse.Namespace) -> int:
    from issue_platform.producer import ProduceError, connect
    from issue_platform.validation import Rejected

    load_config(args.config, tuple(args.group_types_module)).install()
    for path in args.files:  # before connecting: a typo costs no connection
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: no such file")
    try:
        producer = connect(args.to, registry)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    sent = refused = 0
    try:
        for path in args.files:
            for number, line in _lines(path):
                try:
                    producer.send_raw(line)
                    sent += 1
                except Rejected as rejected:
                    refused += 1
                    print(f"{path}:{number}: {rejected.reason}: {rejected.message}")
        producer.flush(args.timeout)
    except ProduceError as exc:
        print(f"issue-platform: error: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    print(f"{sent} sent, {refused} refused", file=sys.stderr)
    return 1 if refused else 0
