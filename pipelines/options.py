"""The job's own options, one `PipelineOptions` class per group of `issue-platform run --help` (input,
output, source, sink, state, time); Beam's options (the runner group and the rest) pass through to
Beam untouched. `RUN_OPTIONS` is every class the run plan reads: the CLI's help is generated from it.
"""
from apache_beam.options.pipeline_options import PipelineOptions

from issue_platform.flush import DEFAULT_ALLOWED_LATENESS_SECONDS
from issue_platform.rules_engine import DEFAULT_DEDUPE_WINDOW_SECONDS
from issue_platform.tables import ALL_TABLES
from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES


def add_config_args(parser, required: bool = False) -> None:
    """`--config` and `--group_types_module`: declared once, for `run` and every command that reads a config."""
    parser.add_argument(
        "--config", default=None, required=required, metavar="FILE",
        help="YAML or JSON file with extra `group_types`, `projects` and release-flag `features`; any path "
             "Beam can open (local, gs://, ...). Default: none.")
    parser.add_argument(
        "--group_types_module", action="append", default=None, metavar="MODULE",
        help="Python module to import that defines GroupType subclasses. Repeatable. Default: none.")


def exact_names(parser) -> None:
    """Beam 2.62 parses each options view allowing abbreviations (`--config` would be read as
    `--config_refresh_seconds`, a typo as the option it abbreviates): our views take names whole."""
    parser.allow_abbrev = False


class InputOptions(PipelineOptions):
    """What is read, and how a payload is judged."""

    TITLE = "input"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--input", action="append", default=None, metavar="PATH",
            help="Path or glob of payload files: JSON Lines (.jsonl, .jsonl.gz) or Avro (.avro). Repeatable. "
                 "Default: the bundled sample of realistic occurrences.")
        add_config_args(parser)
        parser.add_argument(
            "--max_payload_bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES, metavar="BYTES",
            help="Payloads larger than this many bytes are dead-lettered as payload_too_large. "
                 f"Default: {DEFAULT_MAX_PAYLOAD_BYTES}.")
        parser.add_argument(
            "--validator", choices=("fast", "spec"), default="fast",
            help="fast: schemas compiled with fastjsonschema; spec: the jsonschema reference validator "
                 "(same decisions, ~20x slower). Default: fast.")


class OutputOptions(PipelineOptions):
    """Where JSON Lines tables go, and what the run reports while it works."""

    TITLE = "output"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--output", default="out", metavar="DIR",
            help=f"Directory for the output tables ({', '.join(ALL_TABLES)}), one JSON Lines file set per "
                 "table. Default: ./out")
        parser.add_argument(
            "--progress", action="store_true", default=False,
            help="Report the phase (reading, grouping, writing), records read with the share of the input "
                 "files read and the rate, on stderr every 2 seconds. The command line turns this on by itself "
                 "when stderr is a terminal. Default: off.")
        parser.add_argument(
            "--verbose", action="store_true", default=False,
            help="Log on stderr: Beam's log and the Kafka client's (connection retries). Default: only "
                 "progress, the summary and errors.")


class SourceOptions(PipelineOptions):
    """Where payloads come from: files (default), a Pub/Sub subscription or a Kafka topic."""

    TITLE = "source"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--source", choices=("files", "pubsub", "kafka"), default="files",
            help="files: --input (a replay with --streaming); pubsub: --subscription, a live stream; kafka: "
                 "--bootstrap_servers and --topic, a live stream with "
                 "--streaming (Beam's cross-language ReadFromKafka: needs Java where the pipeline is built and a "
                 "Dataflow/Flink runner), else a bounded backfill of what the topic retains. Default: files.")
        parser.add_argument(
            "--subscription", default=None, metavar="SUBSCRIPTION",
            help="Pub/Sub subscription to read: projects/P/subscriptions/S (with --source pubsub). Default: none.")
        parser.add_argument(
            "--timestamp_attribute", default="event_time", metavar="ATTRIBUTE",
            help="Pub/Sub attribute holding each message's event time (RFC 3339 or unix milliseconds), as "
                 "issue_platform.producer sets it; messages without it take their publish time. Default: "
                 "event_time.")
        parser.add_argument(
            "--bootstrap_servers", default="localhost:9092", metavar="HOST:PORT[,HOST:PORT...]",
            help="Kafka brokers to read from (with --source kafka). Default: localhost:9092.")
        parser.add_argument(
            "--topic", default="ingest-occurrences", metavar="TOPIC",
            help="Kafka topic to read (with --source kafka). Default: ingest-occurrences.")
        parser.add_argument(
            "--kafka_start_time", default=None, metavar="TIME",
            help="Backfill from the first record appended at or after this time (RFC 3339 or unix "
                 "seconds). Default: the earliest retained record.")
        parser.add_argument(
            "--kafka_start_offsets", default=None, metavar="PARTITION:OFFSET[,...]",
            help="Backfill from these offsets; unlisted partitions start at their earliest retained record. "
                 "Default: none.")
        parser.add_argument(
            "--kafka_consumer_config", action="append", default=None, metavar="KEY=VALUE",
            help="Extra Kafka consumer setting (e.g. security.protocol=SASL_SSL). Repeatable. Default: none.")


class SinkOptions(PipelineOptions):
    """Where the tables and the post-process messages go (transforms/sinks.py)."""

    TITLE = "sink"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--sink", choices=("jsonl", "bigquery"), default="jsonl",
            help="jsonl: JSON Lines files under --output; bigquery: the tables in --bigquery_dataset. "
                 "Default: jsonl.")
        parser.add_argument(
            "--bigquery_dataset", default=None, metavar="PROJECT:DATASET",
            help="The dataset for --sink bigquery; absent tables and the groups_current view are created. "
                 "Default: none.")
        parser.add_argument(
            "--bigquery_table_prefix", default="", metavar="PREFIX",
            help="Prefix of every BigQuery table name (e.g. staging_). Default: none.")
        parser.add_argument(
            "--bigquery_endpoint", default=None, metavar="URL",
            help="BigQuery API root URL, e.g. http://127.0.0.1:9050 for an emulator (anonymous). "
                 "Default: Google's API with application-default credentials.")
        parser.add_argument(
            "--post_process_topic", action="append", default=None, metavar="TOPIC",
            help="Also send each post_process row as a message to pubsub:projects/P/topics/T or "
                 "kafka:HOST:PORT/TOPIC. Repeatable. Default: none.")


class StateOptions(PipelineOptions):
    """What each key remembers, and from where a run starts."""

    TITLE = "state"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--resume_from", default=None, metavar="DIR|bigquery:PROJECT:DATASET.TABLE",
            help="A previous run's state: its output directory (the `state` files), or its BigQuery state table "
                 "(read through --bigquery_endpoint when given). Every key starts from the state that run ended "
                 "with instead of from nothing, so groups, noise counts, recent ids and forecasts carry over. "
                 "Events at or before a key's snapshot are handled as late data. Default: start empty.")
        parser.add_argument(
            "--start_fresh", action="store_true", default=False,
            help="A live stream whose sink holds an earlier job's state refuses to start unless given "
                 "--resume_from or this: start from nothing (groups are created again, their versions above "
                 "the earlier job's). Default: off (such a job refuses to start).")
        parser.add_argument(
            "--config_refresh_seconds", type=float, default=None, metavar="SECONDS",
            help="Re-read --config (any Beam filesystem path) when the copy in use is older than this many "
                 "seconds; only its projects and features may change (checked by modification time and size "
                 "first; an invalid new version is refused and counted, the last good one stays). "
                 "Default: read once at start.")


class TimeOptions(PipelineOptions):
    """Event time: how far time-driven transitions run, how late an event may be, and how long an id
    is remembered."""

    TITLE = "time"

    @classmethod
    def _add_argparse_args(cls, parser):
        exact_names(parser)
        parser.add_argument(
            "--as_of", default=None, metavar="TIME",
            help="Apply time-driven transitions (auto-resolve, back to ongoing, forecasts) up to this event "
                 "time (RFC 3339 or unix seconds) and no further. Also the time of status changes without "
                 "update_date in file inputs. Default for file inputs: the latest time of a valid event in the "
                 "input; for live streams: no limit.")
        parser.add_argument(
            "--allowed_lateness_seconds", type=float, default=DEFAULT_ALLOWED_LATENESS_SECONDS, metavar="SECONDS",
            help="An event behind its group's clock by at most this many seconds is still applied (out of "
                 "order); later ones are dead-lettered as `late`. Default: "
                 f"{DEFAULT_ALLOWED_LATENESS_SECONDS:g}.")
        parser.add_argument(
            "--dedupe_window_seconds", type=float, default=DEFAULT_DEDUPE_WINDOW_SECONDS, metavar="SECONDS",
            help="An occurrence id seen again within this many seconds of event time is a duplicate. "
                 f"Default: {DEFAULT_DEDUPE_WINDOW_SECONDS:g} (raised to the allowed lateness if that is larger).")


RUN_OPTIONS = (InputOptions, OutputOptions, SourceOptions, SinkOptions, StateOptions, TimeOptions)
