"""The benchmark scripts run (their numbers are reported in issue notes, not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _benchmark(script: str, *args: str) -> str:
    """The standard output of ``benchmarks/<script>`` run with ``args`` (which must succeed)."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout


def test_solver_overhead_benchmark_runs_and_reports_every_ratio():
    out = _benchmark("solver_overhead.py", "--batch", "2", "--nfe", "3", "--K", "1", "--repeats", "1")
    rows = [
        line.split() for line in out.splitlines() if line.split()[:1] in (["ddim"], ["dpm_solver"], ["edm"])
    ]
    assert [r[0] for r in rows] == ["ddim", "dpm_solver", "edm"]
    for r in rows:
        ratios = [float(v) for v in r[2:]]
        assert len(ratios) == 9 and all(v > 0 for v in ratios[:2] + ratios[-3:]), out


def _throughput(*args: str) -> str:
    return _benchmark("throughput.py", "--repeats", "1", "--device", "cpu", "--threads", "1", *args)


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "digits-eps", "--batch", "50", "--nfe", "2"],
        ["--model", "ddpm-cifar10", "--random-weights", "--batch", "1", "--nfe", "1"],  # the real U-Net
        ["--model", "digits-eps", "--batch", "10", "--nfe", "1", "--dtype", "bfloat16", "--channels-last"],
    ],
    ids=["digits-eps", "ddpm-cifar10-random", "digits-eps-bfloat16-channels-last"],
)
def test_throughput_benchmark_reports_a_rate_and_an_estimate_per_sweep(args, monkeypatch, tmp_path):
    from dode.companion.protocols import metric_work, network_evaluations
    from dode.companion.sweep import SWEEPS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no Inception weights: its features are left out
    out = _throughput(*args, "--gpus", "4")
    rate = float(re.search(r": ([\d,.]+) network evaluations/s", out).group(1).replace(",", ""))
    assert rate > 0, out
    frechet = float(
        re.search(r"FID: ([\d.e+-]+) s per Frechet distance of 2048-d statistics on cpu", out).group(1)
    )
    assert frechet > 0 and "Inception's features not timed" in out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in SWEEPS
    }
    assert sorted(rows) == sorted(SWEEPS), out
    counted = {stem: row for stem, row in rows.items() if row[2] != "(not"}
    assert "02_noise_prediction" in counted and "03_data_prediction" in counted
    for stem, row in counted.items():
        n, distances = network_evaluations(stem, "paper"), metric_work(stem, "paper")["distances"]
        assert int(row[2].replace(",", "")) == n and int(row[3].replace(",", "")) == distances
        one, four = _seconds(row[4], row[5]), _seconds(row[6], row[7])
        # printed to 0.1 h or 0.1 min: each value is off by at most half of that from what it rounds; the
        # printed rate and Frechet time keep three significant figures (relative error at most 0.5 / 100)
        sampling, fid = n / rate, distances * frechet
        slack = 0.005 / 0.995
        assert abs(one - sampling - fid) <= _HALF_UNIT[row[5]] + (sampling + fid) * slack, (
            row,
            sampling,
            fid,
        )
        # four GPUs: a quarter of the sampling, the Frechet distances on rank 0 alone
        assert abs(four - sampling / 4 - fid) <= _HALF_UNIT[row[7]] + (sampling / 4 + fid) * slack, row


_HALF_UNIT = {"h": 180.0, "min": 3.0}  # seconds: half of the 0.1 h or 0.1 min the script prints to


def _seconds(value: str, unit: str) -> float:
    return float(value.replace(",", "")) * {"h": 3600, "min": 60}[unit]


def test_joint_fit_benchmark_runs_and_reports_every_ratio():
    out = _benchmark(
        "joint_fit.py",
        *("--settings", "digits-eps-mini", "testbed"),
        *("--solvers", "ipndm", "--nfes", "3", "--B", "4", "--K", "2"),
    )
    rows = {line.split()[0]: line.split()[3:] for line in out.splitlines() if line.split()[1:2] == ["ipndm"]}
    assert sorted(rows) == ["digits-eps-mini", "testbed"], out
    for name, cells in rows.items():
        values = [float(v) for v in cells]
        assert len(values) == 13 and all(v > 0 for v in values[:11]), out
        greedy_evals, joint_evals, greedy_calls, joint_calls, unbatched_calls = values[6:11]
        assert joint_evals > greedy_evals and unbatched_calls > joint_calls > greedy_calls, out
        if name == "testbed":  # float64: batching changes nothing but the number of calls
            assert values[12] < 1e-9, out


def test_frechet_benchmark_times_both_and_agrees_with_pytorch_fid():
    # small statistics: the 2048-d run (tens of seconds for sqrtm) is measured by hand, see the script
    out = _benchmark("frechet.py", "--dim", "64", "--repeats", "1")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert sorted(rows) == ["full-rank", "singular"], out
    for ours, theirs, ratio, difference in rows.values():
        assert float(ours) > 0 and float(theirs) > 0
        assert float(ratio) == pytest.approx(
            float(theirs) / float(ours), rel=0.02
        )  # three significant figures each
        assert float(difference) < 1e-6, out
