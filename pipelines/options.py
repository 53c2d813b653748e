"""IssuePlatformOptions: the job's own flags (Beam's flags pass through untouched)."""
from apache_beam.options.pipeline_options import PipelineOptions

from issue_platform.groups import DEFAULT_DEDUPE_WINDOW_SECONDS
from transforms.groups import DEFAULT_ALLOWED_LATENESS_SECONDS
from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES


class IssuePlatformOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input", action="append", default=None, metavar="PATH",
            help="Path or glob of payload files: JSON Lines (.jsonl, .jsonl.gz) or Avro (.avro). Repeatable. "
                 "Default: the bundled sample of realistic occurrences.")
        parser.add_argument(
            "--output", default="out", metavar="DIR",
            help="Directory for the output tables (groups, occurrences, status_changes, post_process, "
                 "evidence, dead_letter), one JSON Lines file set per table. Default: ./out")
        parser.add_argument(
            "--config", default=None, metavar="FILE",
            help="YAML or JSON file with extra `group_types`, `projects` and release-flag `features`. "
                 "Default: none.")
        parser.add_argument(
            "--group_types_module", action="append", default=None, metavar="MODULE",
            help="Python module to import that defines GroupType subclasses. Repeatable.")
        parser.add_argument(
            "--max_payload_bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES, metavar="BYTES",
            help="Payloads larger than this many bytes are dead-lettered as payload_too_large. "
                 f"Default: {DEFAULT_MAX_PAYLOAD_BYTES}.")
        parser.add_argument(
            "--validator", choices=("fast", "spec"), default="fast",
            help="fast: schemas compiled with fastjsonschema; spec: the jsonschema reference validator "
                 "(same decisions, ~20x slower). Default: fast.")
        parser.add_argument(
            "--dedupe_window_seconds", type=float, default=DEFAULT_DEDUPE_WINDOW_SECONDS, metavar="SECONDS",
            help="An occurrence id seen again within this many seconds of event time is a duplicate. "
                 f"Default: {DEFAULT_DEDUPE_WINDOW_SECONDS:g} (raised to the allowed lateness if that is larger).")
        parser.add_argument(
            "--allowed_lateness_seconds", type=float, default=DEFAULT_ALLOWED_LATENESS_SECONDS, metavar="SECONDS",
            help="An event behind its group's clock by at most this many seconds is still applied (out of "
                 "order); later ones are dead-lettered as `late`. Default: "
                 f"{DEFAULT_ALLOWED_LATENESS_SECONDS:g}.")
        parser.add_argument(
            "--as_of", default=None, metavar="TIME",
            help="Apply time-driven transitions (auto-resolve, back to ongoing, forecasts) up to this event "
                 "time (RFC 3339 or unix seconds) and no further. Default for file inputs: the latest time "
                 "of a valid event in the input; for live streams: no limit. Also the time of status changes without "
                 "update_date in file inputs.")
        parser.add_argument(
            "--progress", action="store_true", default=False,
            help="Report records read, rate and elapsed time on stderr every few seconds. The command "
                 "line turns this on by itself when stderr is a terminal.")
        parser.add_argument(
            "--resume_from", default=None,
            help="A previous run's state: its output directory (the `state` files), or its BigQuery state table as "
                 "bigquery:PROJECT:DATASET.TABLE (read through --bigquery_endpoint when given). Every key starts "
                 "from the state that run ended with instead of from nothing, so groups, noise counts, recent ids "
                 "and forecasts carry over. Events at or before a key's snapshot are handled as late data. "
                 "Default: start empty.")


class SinkOptions(PipelineOptions):
    """Where the outputs go (transforms/sinks.py)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--sink", choices=("jsonl", "bigquery"), default="jsonl",
            help="jsonl: JSON Lines files under --output (default); bigquery: the tables in --bigquery_dataset.")
        parser.add_argument(
            "--bigquery_dataset", default=None,
            help="PROJECT:DATASET for --sink bigquery; absent tables and the groups_current view are created.")
        parser.add_argument(
            "--bigquery_table_prefix", default="",
            help="Prefix of every BigQuery table name (e.g. staging_). Default: none.")
        parser.add_argument(
            "--bigquery_endpoint", default=None,
            help="BigQuery API root URL, e.g. http://127.0.0.1:9050 for an emulator (anonymous). "
                 "Default: Google's API with application-default credentials.")
        parser.add_argument(
            "--post_process_topic", action="append", default=None,
            help="Also send each post_process row as a message to pubsub:projects/P/topics/T or "
                 "kafka:HOST:PORT/TOPIC. Repeatable. Default: none.")


class SourceOptions(PipelineOptions):
    """Where payloads come from: files (default), a Pub/Sub subscription or a Kafka topic."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--source", choices=("files", "pubsub", "kafka"), default="files",
            help="files: --input (a replay with --streaming); pubsub: --subscription, a live stream; kafka: "
                 "--bootstrap_servers (Beam's own flag, default localhost:9092) and --topic, a live stream with --streaming (Beam's cross-language "
                 "ReadFromKafka: needs Java where the pipeline is built and a Dataflow/Flink runner), else "
                 "a bounded backfill of what the topic retains. Default: files.")
        parser.add_argument(
            "--subscription", default=None,
            help="Pub/Sub subscription to read: projects/P/subscriptions/S (with --source pubsub).")
        parser.add_argument(
            "--timestamp_attribute", default="event_time",
            help="Pub/Sub attribute holding each message's event time (RFC 3339 or unix milliseconds), as "
                 "issue_platform.producer sets it; messages without it take their publish time. Default: "
                 "event_time.")
        parser.add_argument(
            "--topic", default="ingest-occurrences",
            help="Kafka topic to read (with --source kafka). Default: ingest-occurrences.")
        parser.add_argument(
            "--kafka_start_time", default=None,
            help="Backfill from the first record appended at or after this time (RFC 3339 or unix "
                 "seconds). Default: the earliest retained record.")
        parser.add_argument(
            "--kafka_start_offsets", default=None,
            help="Backfill from these offsets, PARTITION:OFFSET[,PARTITION:OFFSET...]; unlisted partitions "
                 "start at their earliest retained record.")
        parser.add_argument(
            "--kafka_consumer_config", action="append", default=None, metavar="KEY=VALUE",
            help="Extra Kafka consumer setting (e.g. security.protocol=SASL_SSL). Repeatable.")


class ConfigRefreshOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--config_refresh_seconds", type=float, default=None,
            help="Re-read --config (any Beam filesystem path) when the copy in use is older than this many "
                 "seconds; only its projects and features may change (checked by modification time and size "
                 "first; an invalid new version is refused and counted, the last good one stays). "
                 "Default: read once at start.")
