"""`issue-platform produce FILE... --to TARGET`: send JSON Lines payloads to the ingest topic.

    issue-platform produce payloads.jsonl --to pubsub:projects/P/topics/ingest-occurrences
    issue-platform produce payloads.jsonl.gz --to kafka:127.0.0.1:9092/ingest-occurrences

Each line is validated as the pipeline would; invalid lines are listed (file, line, reason) and not
sent. Exit 0 if every line was sent, 1 if any was refused or not confirmed, 2 on a usage error or a
target that cannot be used (no credentials, no broker answering within --timeout).
"""
from __future__ import annotations

import argparse
import sys

import orjson

from issue_platform.config import ConfigError
from issue_platform.grouptype import registry
from issue_platform.producer import CONNECT_TIMEOUT_SECONDS
from pipelines.options import add_config_args
from pipelines.plan import read_config
from transforms.read import input_files, numbered_records


def register(sub) -> None:
    """Adds the `produce` subcommand to the CLI's subparsers."""
    summary = "validate and send payload files to the ingest topic on Pub/Sub or Kafka"
    parser = sub.add_parser("produce", help=summary, description=summary + "; invalid lines are listed "
                            "(file:line: reason) and not sent")
    parser.add_argument("files", nargs="+", help="payload files or globs: JSON Lines (.jsonl, .jsonl.gz) or Avro")
    parser.add_argument("--to", required=True, metavar="TARGET",
                        help="pubsub:projects/P/topics/T or kafka:HOST:PORT[,HOST:PORT...]/TOPIC")
    add_config_args(parser)
    parser.add_argument("--timeout", type=float, default=CONNECT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="seconds to wait for the broker to answer, and for the last confirmations. "
                             f"Default: {CONNECT_TIMEOUT_SECONDS:g}")
    parser.add_argument("--verbose", action="store_true",
                        help="log on stderr, including the Kafka client's own log (connection retries)")
    parser.set_defaults(handler=cmd_produce)


def cmd_produce(args: argparse.Namespace) -> int:
    from issue_platform.producer import ProduceError, TargetError, connect
    from issue_platform.validation import Rejected

    read_config(args.config, args.group_types_module, install=True)
    paths = input_files(args.files, option="")  # before connecting: a typo costs no connection
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    try:
        producer = connect(args.to, registry, connect_timeout=args.timeout)
    except TargetError as exc:
        raise ConfigError(str(exc)) from None
    sent = refused = 0
    try:
        for path in paths:  # the pipeline's own reader: JSON Lines (.gz too) or Avro, never a partial file
            for number, raw in numbered_records(path):
                try:
                    producer.send_raw(raw if isinstance(raw, bytes) else orjson.dumps(raw))
                    sent += 1
                except Rejected as rejected:
                    refused += 1
                    print(f"{path}:{number}: {rejected.reason}: {rejected.message}")
        producer.flush(args.timeout)
    except ProduceError as exc:
        print(f"issue-platform: error: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close(0)  # flush() above waited its --timeout already
    print(f"{sent} sent, {refused} refused", file=sys.stderr)
    return 1 if refused else 0
