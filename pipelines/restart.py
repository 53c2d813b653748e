"""What a live job finds in its sink before it starts: an earlier job's state and group versions.

A live job that starts from nothing on a sink holding an earlier job's `state` rows would create
every group again (a second `is_new` post-process message each) with versions restarting at 1,
behind the earlier rows in `groups_current`. So such a job must be told what it means: continue
(`--resume_from`) or start again (`--start_fresh`). Either way its groups' versions start above
the highest the sink holds, so a group's version never goes backwards across jobs.
"""
from __future__ import annotations

from dataclasses import dataclass

from issue_platform.config import ConfigError
from issue_platform.tables import GROUPS, STATE, read_jsonl


@dataclass(frozen=True)
class SinkHistory:
    """What earlier jobs left in a sink: how many state rows, the highest group version, and the
    `--resume_from` value that continues from them."""

    state_rows: int
    max_version: int
    resume_from: str


def sink_history(sink, output: str) -> SinkHistory:
    """`sink`: a `SinkOptions` view; `output`: the JSON Lines directory (`--output`)."""
    if sink.sink == "bigquery":
        return _bigquery_history(sink)
    states = sum(1 for _ in read_jsonl(output, STATE))
    versions = (row.get("version") or 0 for row in read_jsonl(output, GROUPS))
    return SinkHistory(states, max(versions, default=0), output)


def _bigquery_history(sink) -> SinkHistory:
    from google.api_core.exceptions import NotFound

    from transforms.sinks import bigquery_client, parse_dataset

    project, dataset = parse_dataset(sink.bigquery_dataset)
    client = bigquery_client(project, sink.bigquery_endpoint)
    state, groups = (f"{dataset}.{sink.bigquery_table_prefix or ''}{table}" for table in (STATE, GROUPS))
    try:
        client.get_table(f"{project}.{state}")
    except NotFound:  # a new dataset: nothing before us
        return SinkHistory(0, 0, "")
    [row] = client.query(f"SELECT (SELECT COUNT(*) FROM `{project}.{state}`) AS states, "
                         f"(SELECT MAX(version) FROM `{project}.{groups}`) AS version").result()
    return SinkHistory(row["states"] or 0, row["version"] or 0, f"bigquery:{project}:{state}")


def check_restart(sink, output: str, resume_from, start_fresh: bool) -> int:
    """The version floor of a live job's new groups (the highest version its sink holds), after
    refusing to start on an earlier job's state without `--resume_from` or `--start_fresh`."""
    if resume_from and start_fresh:
        raise ConfigError("--resume_from and --start_fresh: give one of them")
    history = sink_history(sink, output)
    if history.state_rows and not (resume_from or start_fresh):
        where = sink.bigquery_dataset if sink.sink == "bigquery" else output
        raise ConfigError(f"{where} holds the state of an earlier job ({history.state_rows} state rows): pass "
                          f"--resume_from {history.resume_from} to continue it, or --start_fresh to start "
                          "from nothing (its groups are created again, with higher versions)")
    return history.max_version


__all__ = ["SinkHistory", "check_restart", "sink_history"]
