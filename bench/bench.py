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

Speed is input records per second. `--repeat N` (default 5) runs plain and pipeline alternately N times,
each in a fresh process, and reports medians with [min-max]; the ratio is the ratio of medians, with the
spread of the per-pair ratios. Beside wall time each run reports its CPU time (user + system of the child,
taken around the work alone), which a shared machine disturbs far less: the CPU ratio is reported too.
`--profile` runs the pipeline once under cProfile and writes a text report to bench/profile-pipeline.txt.

As a correctness cross-check every run's counters and output bytes per table must equal the plain loop's
(the pipeline's Beam counters and output file sizes); a mismatch exits 1. `--scale-check` also runs the
pipeline on 1,000,000 payloads (once: it takes minutes) and compares its peak RSS with the base runs'
median. The last line printed is one JSON object: plain_per_s, pipeline_per_s, ratio (pipeline / plain,
medians), ratio_min, ratio_max, repeat, cpu_ratio (and its spread), CPU microseconds per record,
peak_rss_mb (the pipeline's, at the base count), the streaming figures and, with --scale-check, rss_1m_mb
and rss_ratio.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCALE_COUNT = 1_000_000
STREAM_COUNTS = (5_000, 20_000)
TARGET_RATIO, TARGET_RSS_RATIO, TARGET_STREAMING_PER_S = 0.80, 1.5, 1_500  # issues #12 and #25
PROFILE = os.path.join(ROOT, "bench", "profile-pipeline.txt")


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
        for number, raw in enumerate(handle, 1):
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
                emit_counted([(DEAD_LETTER, dead_letter_row(rej, raw, MAX, f"{path}:{number}"))])  # FILE:LINE
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
        start = Clock()
        result = run(["--input", path, "--output", out])
        measured = start.measured()  # not the checks below
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
        start = Clock()
        run(["--input", path, "--output", out, "--streaming"])
        measured = start.measured()
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


def child(kind: str, path: str, profile: str | None = None) -> None:
    # Imports (Beam's, and the schemas compiled by issue_platform.validation) are not timed.
    if kind in ("pipeline", "streaming", "replay"):
        import pipelines.issue_pipeline  # noqa: F401
    else:
        import issue_platform.rules_engine, issue_platform.pending, issue_platform.validation  # noqa: F401,E401
    work = {"plain": plain, "pipeline": pipeline, "streaming": streaming, "replay": replay_only}[kind]
    if profile:
        work = profiled(work, profile)
    start = Clock()
    counts, sizes, *run_only = work(path)  # a pipeline measures its run alone, without the checks after it
    measured = run_only[0] if run_only else start.measured()
    print(json.dumps({**measured, "records": counts.get("records.in", 0) + counts.get("records.blank_lines", 0),
                      "counters": dict(counts), "bytes": dict(sizes)}))


class Clock:
    """Wall and CPU time from its creation. CPU time (user + system of this process; FnApiRunner runs its
    bundles in this process) is far steadier than wall time on a shared machine."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def measured(self) -> dict:
        """Seconds and CPU seconds since creation, and this process's peak RSS so far (ru_maxrss is KiB)."""
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": self._cpu() - self.cpu,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def profiled(work, report: str):
    """`work` under cProfile, writing a text report (top functions by cumulative and by own time)."""
    import cProfile
    import io
    import pstats

    def run(path):
        profiler = cProfile.Profile()
        try:
            return profiler.runcall(work, path)
        finally:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text).strip_dirs()
            for order in ("cumulative", "tottime"):
                text.write(f"==== top 60 by {order} ====\n")
                stats.sort_stats(order).print_stats(60)
            with open(report, "w") as handle:
                handle.write(text.getvalue())
    return run


def measure(kind: str, path: str, profile: str | None = None) -> dict:
    extra = ["--profile-to", profile] if profile else []
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, path, *extra],
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


def stats(runs: list[dict], key) -> tuple[float, float, float]:
    """(median, min, max) of key(run) over runs."""
    values = [key(m) for m in runs]
    return statistics.median(values), min(values), max(values)


def per_s(m: dict) -> float:
    return m["records"] / m["seconds"]


def cpu_us(m: dict) -> float:
    return m["cpu_seconds"] * 1e6 / m["records"]


def row(label: str, runs: list[dict]) -> str:
    """One line per measurement: medians, with [min-max] where it was repeated."""
    def spread(key, fmt):
        mid, low, high = stats(runs, key)
        return f"{mid:{fmt}}" + (f" [{low:{fmt}}-{high:{fmt}}]" if len(runs) > 1 else "")
    return (f"{label:<22}{runs[0]['records']:>10,}  {spread(lambda m: m['seconds'], '.1f'):>18}"
            f"  {spread(per_s, ',.0f'):>24}  {spread(cpu_us, ',.1f'):>20}  {spread(lambda m: m['peak_rss_mb'], ',.0f'):>16}")


HEADER = f"{'':<22}{'records':>10}  {'seconds':>18}  {'records/s':>24}  {'CPU us/record':>20}  {'peak RSS MB':>16}"


def interleaved(kinds: tuple[str, ...], path: str, repeat: int) -> dict[str, list[dict]]:
    """Each kind `repeat` times, alternating (a, b, a, b, ...), each run in a fresh process: a slow minute of
    the machine then hits both sides of a pair instead of one side of the comparison."""
    runs = {kind: [] for kind in kinds}
    for _ in range(repeat):
        for kind in kinds:
            runs[kind].append(measure(kind, path))
    return runs


def ratios(plain_runs: list[dict], pipe_runs: list[dict], key) -> dict:
    """Pipeline over plain for a higher-is-better `key`: the ratio of medians, and the per-pair spread."""
    pairs = [key(q) / key(p) for p, q in zip(plain_runs, pipe_runs)]
    return {"ratio": stats(pipe_runs, key)[0] / stats(plain_runs, key)[0], "min": min(pairs), "max": max(pairs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved plain/pipeline pairs (and streaming runs)")
    ap.add_argument("--scale-check", action="store_true", help=f"also run the pipeline on {SCALE_COUNT:,} payloads")
    ap.add_argument("--no-streaming", action="store_true", help="skip the streaming figures")
    ap.add_argument("--profile", action="store_true",
                    help=f"only profile one pipeline run (cProfile) into {os.path.relpath(PROFILE, ROOT)}")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "bench", "data"))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, profile=args.profile_to)
        return 0
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    path, lines, blank = payload_file(args.data_dir, args.count, args.seed)
    if args.profile:
        m = measure("pipeline", path, profile=PROFILE)
        print(f"profiled pipeline run: {per_s(m):,.0f} records/s under the profiler -> {PROFILE}")
        return 0
    base = interleaved(("plain", "pipeline"), path, args.repeat)
    speed, cpu = ratios(base["plain"], base["pipeline"], per_s), ratios(base["plain"], base["pipeline"],
                                                                         lambda m: 1 / cpu_us(m))
    print(f"{args.repeat} interleaved pair(s); medians [min-max]")
    print(HEADER)
    print(row("plain loop", base["plain"]))
    print(row("pipeline", base["pipeline"]))
    verdict = "pass" if speed["ratio"] >= TARGET_RATIO and cpu["ratio"] >= TARGET_RATIO else "MISS"
    print(f"ratio pipeline/plain: {speed['ratio']:.3f} (pairs {speed['min']:.3f}-{speed['max']:.3f}); CPU time "
          f"{cpu['ratio']:.3f} (pairs {cpu['min']:.3f}-{cpu['max']:.3f}) (target >= {TARGET_RATIO}: {verdict})")
    summary = {"plain_per_s": round(stats(base["plain"], per_s)[0], 1),
               "pipeline_per_s": round(stats(base["pipeline"], per_s)[0], 1),
               "ratio": round(speed["ratio"], 4), "ratio_min": round(speed["min"], 4),
               "ratio_max": round(speed["max"], 4), "repeat": args.repeat,
               "cpu_ratio": round(cpu["ratio"], 4), "cpu_ratio_min": round(cpu["min"], 4),
               "cpu_ratio_max": round(cpu["max"], 4),
               "plain_cpu_us_per_record": round(stats(base["plain"], cpu_us)[0], 2),
               "pipeline_cpu_us_per_record": round(stats(base["pipeline"], cpu_us)[0], 2),
               "peak_rss_mb": round(stats(base["pipeline"], lambda m: m["peak_rss_mb"])[0], 1)}
    ok = cross_check(base, lines - blank)
    if args.scale_check:
        big, big_lines, big_blank = payload_file(args.data_dir, SCALE_COUNT, args.seed)
        scaled = measure("pipeline", big)
        if scaled["counters"].get("records.in") != big_lines - big_blank:
            ok = False
            print(f"records.in at {SCALE_COUNT:,}: {scaled['counters'].get('records.in')}, expected {big_lines - big_blank}")
        rss_ratio = scaled["peak_rss_mb"] / summary["peak_rss_mb"]
        print(row(f"pipeline @ {SCALE_COUNT:,}", [scaled]))
        print(f"peak RSS {SCALE_COUNT:,} / {args.count:,}: {rss_ratio:.2f} "
              f"(target <= {TARGET_RSS_RATIO}: {'pass' if rss_ratio <= TARGET_RSS_RATIO else 'MISS'})")
        summary.update(rss_1m_mb=round(scaled["peak_rss_mb"], 1), rss_ratio=round(rss_ratio, 3))
    if not args.no_streaming:
        summary.update(streaming_figures(args))
    print(json.dumps(summary))
    return 0 if ok else 1


def cross_check(base: dict[str, list[dict]], records: int) -> bool:
    """Every run, plain or pipeline, must count the same outcomes and write the same bytes per table."""
    expected = base["plain"][0]
    ok = all(m["counters"] == expected["counters"] for runs in base.values() for m in runs) \
        and expected["counters"].get("records.in") == records
    print(f"outcomes match: {'yes' if ok else 'no'}")
    if not ok:
        for kind, runs in base.items():
            for i, m in enumerate(runs):
                diff = {k for k in set(m["counters"]) | set(expected["counters"])
                        if m["counters"].get(k) != expected["counters"].get(k)}
                if diff or m["counters"].get("records.in") != records:
                    print(f"  {kind} run {i + 1} (expected records.in {records}): " + ", ".join(
                        f"{k} {expected['counters'].get(k)} -> {m['counters'].get(k)}" for k in sorted(diff)))
    same_bytes = all(m["bytes"] == expected["bytes"] for runs in base.values() for m in runs)
    print(f"output bytes match: {'yes' if same_bytes else 'no'}")
    if not same_bytes:
        print("  bytes per table: " + "; ".join(f"{kind} {[m['bytes'] for m in runs]}" for kind, runs in base.items()))
    return ok and same_bytes


def streaming_figures(args) -> dict:
    """Throughput through the streaming runner, and how its RSS grows with the input. The TestStream
    replay holds its whole input in memory, so the replay alone is measured at the same sizes: the
    pipeline's growth per record should stay within the replay's own (its state is bounded). Each figure
    is a median over --repeat runs (streaming and replay interleaved)."""
    runs = {}
    for count in STREAM_COUNTS:
        path, lines, blank = payload_file(args.data_dir, count, args.seed)
        runs[count] = interleaved(("streaming", "replay"), path, args.repeat)
        for kind in ("streaming", "replay"):
            for m in runs[count][kind]:
                if m["counters"].get("records.in") != lines - blank:
                    raise SystemExit(f"bench: {kind} records.in {m['counters'].get('records.in')}, "
                                     f"expected {lines - blank}")
    growth = {}
    for kind in ("streaming", "replay"):
        for count in STREAM_COUNTS:
            print(row(f"{kind} @ {count:,}", runs[count][kind]))
        small, large = (stats(runs[c][kind], lambda m: m["peak_rss_mb"])[0] for c in STREAM_COUNTS)
        growth[kind] = (large - small) * 2**20 / (STREAM_COUNTS[1] - STREAM_COUNTS[0])
    verdict = "within" if growth["streaming"] <= growth["replay"] else "ABOVE"
    print(f"RSS growth per extra record: streaming pipeline {growth['streaming']:,.0f} B, the replay alone "
          f"{growth['replay']:,.0f} B ({verdict} the replay's own growth: the pipeline's state does not grow)")
    stream_runs = [runs[c]["streaming"] for c in STREAM_COUNTS]
    rate, low, high = stats(stream_runs[1], per_s)
    print(f"streaming replay @ {STREAM_COUNTS[1]:,}: {rate:,.0f} records/s [{low:,.0f}-{high:,.0f}] "
          f"(target >= {TARGET_STREAMING_PER_S:,}: {'pass' if rate >= TARGET_STREAMING_PER_S else 'MISS'})")
    return {"streaming_per_s": round(rate, 1), "streaming_per_s_min": round(low, 1),
            "streaming_per_s_max": round(high, 1),
            "streaming_rss_mb": [round(stats(r, lambda m: m["peak_rss_mb"])[0], 1) for r in stream_runs],
            "streaming_rss_growth_bytes_per_record": round(growth["streaming"]),
            "replay_rss_growth_bytes_per_record": round(growth["replay"])}


if __name__ == "__main__":
    sys.exit(main())
