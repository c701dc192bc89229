"""The benchmark scripts run (their numbers are reported in issue notes, not asserted)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_solver_overhead_benchmark_runs_and_reports_every_ratio():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/solver_overhead.py",
            "--batch",
            "2",
            "--nfe",
            "3",
            "--K",
            "1",
            "--repeats",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["ddim"], ["dpm_solver"], ["edm"])
    ]
    assert [r[0] for r in rows] == ["ddim", "dpm_solver", "edm"]
    for r in rows:
        ratios = [float(v) for v in r[2:]]
        assert len(ratios) == 9 and all(v > 0 for v in ratios[:2] + ratios[-3:]), out
