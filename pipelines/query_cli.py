"""`issue-platform query SQL [--output DIR]`: SQL over a run's JSON Lines tables, without BigQuery.

    issue-platform query "SELECT group_id, title, times_seen FROM groups_current ORDER BY times_seen DESC LIMIT 10"

Each table of `--output` is a DuckDB view over its files (`read_json` with the columns of the
table's BigQuery schema, so types and empty tables are the same in every run), and `groups_current`
is the BigQuery view's own SQL (`tables.GROUPS_CURRENT_SQL`): one row per group, its latest version.
Needs the optional `query` extra (DuckDB): `pip install 'issue-platform[query]'`.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import orjson

from issue_platform.config import ConfigError
from issue_platform.tables import ALL_TABLES, GROUPS, GROUPS_CURRENT, GROUPS_CURRENT_SQL, TABLES, jsonl_glob

_DUCKDB_TYPES = {"STRING": "VARCHAR", "INTEGER": "BIGINT", "BOOLEAN": "BOOLEAN", "TIMESTAMP": "TIMESTAMPTZ",
                 "FLOAT": "DOUBLE", "JSON": "JSON"}


def register(sub) -> None:
    """Adds the `query` subcommand to the CLI's subparsers."""
    summary = "run SQL over a run's JSON Lines tables (DuckDB), groups_current included"
    parser = sub.add_parser("query", help=summary, description=summary + ". Needs the query extra: "
                            "pip install 'issue-platform[query]'")
    parser.add_argument("sql", metavar="SQL", help="a query over the tables (groups, occurrences, ..., "
                                                   "state) and the groups_current view")
    parser.add_argument("--output", default="out", metavar="DIR",
                        help="the run's output directory. Default: ./out")
    parser.add_argument("--format", choices=("table", "jsonl"), default="table",
                        help="table: aligned columns; jsonl: one JSON object per row. Default: table")
    parser.set_defaults(handler=cmd_query)


def _columns(table: str) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each column of the table's BigQuery schema."""
    return [(f["name"], _DUCKDB_TYPES[f["type"]] + ("[]" if f["mode"] == "REPEATED" else ""))
            for f in TABLES[table].schema()]


def open_tables(output_dir: str):
    """A DuckDB connection with a view per table of `output_dir` and `groups_current`."""
    import duckdb

    if not glob.glob(os.path.join(output_dir, "*.jsonl")):
        raise ConfigError(f"--output {output_dir}: no tables there (write them with `issue-platform run "
                          f"--output {output_dir}`)")
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")  # timestamps as written: UTC
    for table in ALL_TABLES:
        files, columns = sorted(glob.glob(jsonl_glob(output_dir, table))), _columns(table)
        if files:
            types = ", ".join(f"'{name}': '{kind}'" for name, kind in columns)
            connection.execute(f"CREATE VIEW {table} AS SELECT * FROM read_json({files!r}, "
                               f"format = 'newline_delimited', columns = {{{types}}})")
        else:
            declared = ", ".join(f'"{name}" {kind}' for name, kind in columns)  # quoted: `at` is a keyword
            connection.execute(f"CREATE TABLE {table} ({declared})")
    connection.execute(f"CREATE VIEW {GROUPS_CURRENT} AS "
                       f"{bigquery_to_duckdb(GROUPS_CURRENT_SQL.format(groups=GROUPS))}")
    return connection


def bigquery_to_duckdb(sql: str) -> str:
    """The one dialect difference our queries meet: BigQuery quotes names with backticks."""
    return sql.replace("`", '"')


def cmd_query(args: argparse.Namespace) -> int:
    try:
        import duckdb
    except ImportError:
        raise ConfigError("query needs DuckDB: pip install 'issue-platform[query]' (or pip install duckdb)") \
            from None
    connection = open_tables(args.output)
    try:
        result = connection.sql(bigquery_to_duckdb(args.sql))
    except duckdb.Error as exc:
        raise ConfigError(f"query: {str(exc).splitlines()[0]}") from None
    if result is None:
        return 0
    if args.format == "jsonl":
        names = result.columns
        out = sys.stdout.buffer
        for row in result.fetchall():
            out.write(orjson.dumps(dict(zip(names, row)), default=str) + b"\n")
    else:
        result.show(max_rows=1000, max_width=200)
    return 0
