"""Throughput and memory benchmark: the batch pipeline against a plain Python loop doing the same work.

Generates `--count` payloads (cached as bench/data/payloads-{count}-{seed}.jsonl) and runs each
measurement in a fresh subprocess, so that its peak RSS (ru_maxrss) belongs to that measurement alone:

  plain     one process, no Beam: read the lines, parse and validate (fast validator), gate occurrences
            with the pipeline's IngestGate (issue_platform.ingest_gate), encode every event compactly
            and bucket it by group key with its interned display, taking the default --as_of (the latest
            event time) in the same pass; then per key decode, sort into event-time order, run
            RulesEngine over a fresh KeyState up to as_of and encode the state. Every output row of
            every table (dead letters, evidence, activity and the keys' final snapshots included) is
            serialised as the pipeline's writer does; bytes are counted, not written.
  pipeline  pipelines.issue_pipeline.run on FnApiRunner, wall clock from construction to finish (its
            --as_of pass over the input included), writing to a temporary directory deleted afterwards.
            Its seconds and peak RSS are taken when `run` returns, before the cross-check reads the
            output back (that reading is the bench's work, not the pipeline's).
  streaming `run --streaming` (BundleBasedDirectRunner, TestStream replay) on 5,000 and 20,000 payloads,
            beside the same replay into a pipeline that only counts, to separate what the replay holds
            (its whole input) from what the pipeline's state adds as input grows.

Speed is input records per second. As a correctness cross-check the loop's counters and output bytes per
table must equal the pipeline's Beam counters and output file sizes; a mismatch exits 1. `--scale-check`
also runs the pipeline on 1,000,000 payloads and compares its peak RSS with the base run's. The last line
printed is one JSON object: plain_per_s, pipeline_per_s, ratio (pipeline / plain), peak_rss_mb (the
pipeline's, at the base count), the streaming figures and, with --scale-check, rss_1m_mb and rss_ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCALE_COUNT = 1_000_000
STREAM_COUNTS = (5_000, 20_000)
TARGET_RATIO, TARGET_RSS_RATIO, TARGET_STREAMING_PER_S = 0.75, 1.5, 1_500  # issue #12


def plain(path: str) -> tuple[Counter, Counter]:
    """The pipeline's work as one loop: (counters named as the pipeline's, output bytes per table)."""
    import orjson

    from issue_platform.config import load_config
    from issue_platform.dead_letters import dead_letter_row
    from issue_platform.fingerprint import group_key
    from issue_platform.flush import DEFAULT_ALLOWED_LATENESS_SECONDS
    from issue_platform.ingest_gate import IngestGate, ingest_disabled_row
    from issue_platform.key_state import KeyState
    from issue_platform.rules_engine import DEFAULT_DEDUPE_WINDOW_SECONDS, RulesEngine
    from issue_platform.snapshot_codec import snapshot_row
    from issue_platform.tables import DEAD_LETTER, EVIDENCE, OCCURRENCES, STATE, counter_name, evidence_row
    from issue_platform.pending import Display, decode, encode_occurrence, encode_status_change, sort_key
    from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES as MAX, Occurrence, PayloadValidator, \
        Rejected, parse

    config = load_config()
    registry = config.registry()
    counts, sizes, gate = Counter(), Counter(), IngestGate(config, registry)
    buckets, displays, unstamped = defaultdict(list), defaultdict(dict), []
    validator, latest = PayloadValidator("fast", registry), -math.inf

    def emit(table: str, row: dict) -> None:
        sizes[table] += len(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS)) + 1

    def emit_counted(rows: list) -> None:  # ApplyRulesFn._emit's counters
        for table, row in rows:
            name = counter_name(table, row)
            if name is not None:
                counts[name] += 1
            emit(table, row)

    with open(path, "rb") as handle:
        for raw in handle:
            if raw.endswith(b"\n"):  # ReadFromText strips "\n" or "\r\n"
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if not raw.strip():
                counts["records.blank_lines"] += 1
                continue
            counts["records.in"] += 1
            try:
                p = validator.validate(parse(raw, MAX))
                # The default --as_of: the latest time of a valid event (pipelines.replay.timed).
                latest = max(latest, p.detection_time if isinstance(p, Occurrence) else p.update_date or -math.inf)
            except Rejected as rej:
                emit_counted([(DEAD_LETTER, dead_letter_row(rej, raw, MAX))])
                continue
            key = group_key(p.project_id, p.fingerprint[0])
            admission = gate.admit(p)
            if not isinstance(p, Occurrence):  # status changes are never gated; no update_date: stamped as_of
                if p.update_date is None:
                    unstamped.append((key, p, admission))
                else:
                    buckets[key].append(encode_status_change(p, p.update_date, admission))
                continue
            if admission is None:
                emit_counted([(OCCURRENCES, ingest_disabled_row(p))])
                continue
            record, digest, display = encode_occurrence(p, admission)
            displays[key][digest] = display
            buckets[key].append(record)
            emit(EVIDENCE, evidence_row(p))
    as_of = latest if latest > -math.inf else math.inf
    for key, change, admission in unstamped:
        buckets[key].append(encode_status_change(change, as_of, admission))
    dedupe_window = max(DEFAULT_DEDUPE_WINDOW_SECONDS, DEFAULT_ALLOWED_LATENESS_SECONDS)
    for key, records in buckets.items():
        state = KeyState()
        interned = {digest: Display.decode(data) for digest, data in displays.pop(key, {}).items()}
        processor = RulesEngine(key, state, interned, registry, dedupe_window, as_of)
        for event in sorted(map(decode, records), key=sort_key):
            emit_counted(processor.apply(event))
        emit_counted(processor.finish(math.inf))
        counts["groups.created"] += state.group is not None
        if not state.is_empty():  # the key's snapshot at the end of input, as the pipeline's FINAL writes it
            at = state.cursor if as_of == math.inf else max(state.cursor, as_of)
            group_id = state.group.group_id if state.group is not None else None
            emit_counted([(STATE, snapshot_row(key, state.encode(), at, 1, group_id))])
    return +counts, sizes


def pipeline(path: str) -> tuple[dict, Counter, dict]:
    """The batch pipeline: (its issue_platform counters, output bytes per table, the seconds and peak RSS
    of the run itself, before the output is read back for the cross-check)."""
    import orjson
    from pipelines.issue_pipeline import run
    from issue_platform.tables import GROUPS
    from pipelines.summary import counters, latest_groups

    out = tempfile.mkdtemp(prefix="bench-out-")
    try:
        start = time.perf_counter()
        result = run(["--input", path, "--output", out])
        measured = measured_since(start)  # not the checks below
        sizes = Counter()
        for name in os.listdir(out):
            if os.path.isfile(os.path.join(out, name)) and not name.startswith(f"{GROUPS}."):
                sizes[name.split(".", 1)[0]] += os.path.getsize(os.path.join(out, name))
        # The groups table holds a snapshot per flush; the loop flushes each key once, so compare the latest.
        sizes["groups"] = sum(len(orjson.dumps(row)) + 1 for row in latest_groups(out))
        return {k: v for k, v in counters(result).items() if v}, sizes, measured
    finally:
        shutil.rmtree(out, ignore_errors=True)


def streaming(path: str) -> tuple[dict, Counter, dict]:
    """`run --streaming` (BundleBasedDirectRunner, TestStream replay): counts recounted from its output
    tables (the streaming DirectRunner under-reports metric counters)."""
    from pipelines.issue_pipeline import run
    from pipelines.summary import counts_from_outputs

    out = tempfile.mkdtemp(prefix="bench-stream-")
    try:
        start = time.perf_counter()
        run(["--input", path, "--output", out, "--streaming"])
        measured = measured_since(start)
        return counts_from_outputs(out), Counter(), measured
    finally:
        shutil.rmtree(out, ignore_errors=True)


def replay_only(path: str) -> tuple[dict, Counter]:
    """The same TestStream replay into a pipeline that only counts: what the replay itself holds."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from issue_platform.grouptype import registry
    from issue_platform.validation import DEFAULT_MAX_PAYLOAD_BYTES, PayloadValidator
    from pipelines.replay import replay_stream, timed

    seen = Counter()
    options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
    with beam.Pipeline(options=options) as p:
        p | replay_stream(list(timed([path], PayloadValidator("fast", registry), DEFAULT_MAX_PAYLOAD_BYTES))) \
            | beam.Map(len)
    with open(path, "rb") as handle:
        seen["records.in"] = sum(1 for line in handle if line.strip())
    return seen, Counter()


def child(kind: str, path: str) -> None:
    # Imports (Beam's, and the schemas compiled by issue_platform.validation) are not timed.
    if kind in ("pipeline", "streaming", "replay"):
        import pipelines.issue_pipeline  # noqa: F401
    else:
        import issue_platform.rules_engine, issue_platform.pending, issue_platform.validation  # noqa: F401,E401
    work = {"plain": plain, "pipeline": pipeline, "streaming": streaming, "replay": replay_only}[kind]
    start = time.perf_counter()
    counts, sizes, *run_only = work(path)  # a pipeline measures its run alone, without the checks after it
    measured = run_only[0] if run_only else measured_since(start)
    print(json.dumps({**measured, "records": counts.get("records.in", 0) + counts.get("records.blank_lines", 0),
                      "counters": dict(counts), "bytes": dict(sizes)}))


def measured_since(start: float) -> dict:
    """Seconds since `start` and this process's peak RSS so far (ru_maxrss is KiB on Linux)."""
    return {"seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(kind: str, path: str) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, path],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench: the {kind} run failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def payload_file(data_dir: str, count: int, seed: int) -> tuple[str, int, int]:
    """(path, lines, blank lines); generated once per (count, seed)."""
    path = os.path.join(data_dir, f"payloads-{count}-{seed}.jsonl")
    if not os.path.exists(path):
        from issue_platform.generate import generate

        print(f"generating {count:,} payloads (seed {seed}) -> {path}", flush=True)
        os.makedirs(data_dir, exist_ok=True)
        with open(path + ".tmp", "wb") as handle:
            handle.writelines(line + b"\n" for line in generate(count, seed))
        os.replace(path + ".tmp", path)
    lines = blank = 0
    with open(path, "rb") as handle:
        for line in handle:
            lines, blank = lines + 1, blank + (not line.strip())
    return path, lines, blank


def row(label: str, m: dict) -> str:
    per_s = m["records"] / m["seconds"]
    return f"{label:<22}{m['records']:>10,}{m['seconds']:>10.1f}{per_s:>16,.0f}{m['peak_rss_mb']:>14,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale-check", action="store_true", help=f"also run the pipeline on {SCALE_COUNT:,} payloads")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "bench", "data"))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0

    path, lines, blank = payload_file(args.data_dir, args.count, args.seed)
    base = {kind: measure(kind, path) for kind in ("plain", "pipeline")}
    plain_per_s, pipe_per_s = (base[k]["records"] / base[k]["seconds"] for k in ("plain", "pipeline"))
    ratio = pipe_per_s / plain_per_s
    print(f"{'':<22}{'records':>10}{'seconds':>10}{'occurrences/s':>16}{'peak RSS MB':>14}")
    print(row("plain loop", base["plain"]))
    print(row("pipeline", base["pipeline"]))
    print(f"ratio pipeline/plain: {ratio:.3f} (target >= {TARGET_RATIO}: {'pass' if ratio >= TARGET_RATIO else 'MISS'})")
    summary = {"plain_per_s": round(plain_per_s, 1), "pipeline_per_s": round(pipe_per_s, 1), "ratio": round(ratio, 4),
               "peak_rss_mb": round(base["pipeline"]["peak_rss_mb"], 1)}
    pc, qc = base["plain"]["counters"], base["pipeline"]["counters"]
    ok = qc.get("records.in") == lines - blank and pc == qc
    print(f"outcomes match: {'yes' if ok else 'no'}")
    if not ok:
        print(f"  expected records.in {lines - blank}; differing counters (plain, pipeline): " + ", ".join(
            f"{k} {pc.get(k)} {qc.get(k)}" for k in sorted(set(pc) | set(qc)) if pc.get(k) != qc.get(k)))
    same_bytes = base["plain"]["bytes"] == base["pipeline"]["bytes"]
    print(f"output bytes match: {'yes' if same_bytes else 'no'}")
    if not same_bytes:
        print(f"  bytes per table: plain {base['plain']['bytes']}, pipeline {base['pipeline']['bytes']}")
    if args.scale_check:
        big, big_lines, big_blank = payload_file(args.data_dir, SCALE_COUNT, args.seed)
        scaled = measure("pipeline", big)
        if scaled["counters"].get("records.in") != big_lines - big_blank:
            ok = False
            print(f"records.in at {SCALE_COUNT:,}: {scaled['counters'].get('records.in')}, expected {big_lines - big_blank}")
        rss_ratio = scaled["peak_rss_mb"] / base["pipeline"]["peak_rss_mb"]
        print(row(f"pipeline @ {SCALE_COUNT:,}", scaled))
        print(f"peak RSS {SCALE_COUNT:,} / {args.count:,}: {rss_ratio:.2f} "
              f"(target <= {TARGET_RSS_RATIO}: {'pass' if rss_ratio <= TARGET_RSS_RATIO else 'MISS'})")
        summary.update(rss_1m_mb=round(scaled["peak_rss_mb"], 1), rss_ratio=round(rss_ratio, 3))
    summary.update(streaming_figures(args))
    print(json.dumps(summary))
    return 0 if ok and same_bytes else 1


def streaming_figures(args) -> dict:
    """Throughput through the streaming runner, and how its RSS grows with the input. The TestStream
    replay holds its whole input in memory, so the replay alone is measured at the same sizes: the
    pipeline's growth per record should stay within the replay's own (its state is bounded)."""
    growth = {}
    for kind in ("streaming", "replay"):
        runs = []
        for count in STREAM_COUNTS:
            path, lines, blank = payload_file(args.data_dir, count, args.seed)
            m = measure(kind, path)
            if m["counters"].get("records.in") != lines - blank:
                raise SystemExit(f"bench: {kind} records.in {m['counters'].get('records.in')}, expected {lines - blank}")
            runs.append(m)
            print(row(f"{kind} @ {count:,}", m))
        growth[kind] = (runs[1]["peak_rss_mb"] - runs[0]["peak_rss_mb"]) * 2**20 / (STREAM_COUNTS[1] - STREAM_COUNTS[0])
        if kind == "streaming":
            stream_runs = runs
    verdict = "within" if growth["streaming"] <= growth["replay"] else "ABOVE"
    print(f"RSS growth per extra record: streaming pipeline {growth['streaming']:,.0f} B, the replay alone "
          f"{growth['replay']:,.0f} B ({verdict} the replay's own growth: the pipeline's state does not grow)")
    per_s = stream_runs[1]["records"] / stream_runs[1]["seconds"]
    print(f"streaming replay @ {STREAM_COUNTS[1]:,}: {per_s:,.0f} records/s (target >= {TARGET_STREAMING_PER_S:,}: "
          f"{'pass' if per_s >= TARGET_STREAMING_PER_S else 'MISS'})")
    return {"streaming_per_s": round(per_s, 1),
            "streaming_rss_mb": [round(m["peak_rss_mb"], 1) for m in stream_runs],
            "streaming_rss_growth_bytes_per_record": round(growth["streaming"]),
            "replay_rss_growth_bytes_per_record": round(growth["replay"])}


if __name__ == "__main__":
    sys.exit(main())
