"""The benchmark command itself: its interleaved repetitions, CPU figures and cross-check on a tiny input.
Speed is not asserted here (that is what `make bench` reports); what is asserted is that the tool measures
what it says and that the pipeline and the plain loop agree on every counter and output byte."""
import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench.py")


def test_bench_reports_medians_spread_and_cpu_over_interleaved_pairs(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--count", "400", "--repeat", "2", "--no-streaming",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "outcomes match: yes" in lines and "output bytes match: yes" in lines
    summary = json.loads(lines[-1])
    assert summary["repeat"] == 2
    assert summary["ratio_min"] <= summary["ratio"] * 1.0001 and summary["ratio"] <= summary["ratio_max"] * 1.0001
    assert summary["cpu_ratio_min"] <= summary["cpu_ratio"] * 1.0001 <= summary["cpu_ratio_max"] * 1.0002
    assert summary["plain_cpu_us_per_record"] > 0 and summary["pipeline_cpu_us_per_record"] > 0
    assert abs(summary["ratio"] - summary["pipeline_per_s"] / summary["plain_per_s"]) < 1e-3


def test_bench_profile_writes_a_readable_report(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--count", "300", "--profile", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout.strip().split("-> ")[-1]
    with open(report) as handle:
        text = handle.read()
    assert "by cumulative" in text and "issue_pipeline.py" in text
