"""The scripts of scripts/ that the book quotes, run on the miniature model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "scripts" / "contraction_study.py"
ROWS = (
    "teacher (DDIM, 50 steps)",
    "base",
    "greedy (L2 per step)",
    "joint (L2 on the final sample)",
    "moments (mean + std)",
    "moments (mean + std) + 0.3 x L2",
)


def _study(*args):
    return subprocess.run(
        [sys.executable, str(STUDY), *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_the_contraction_study_reports_every_fit():
    out = _study("--model", "digits-eps-mini", "--samples", "64", "--batch", "8", "--max-nfev", "2")
    assert out.returncode == 0, out.stderr
    table = {line[:34].strip(): line[34:] for line in out.stdout.splitlines() if "   spread " in line}
    assert sorted(table) == sorted(ROWS)
    for name, rest in table.items():
        fd, spread, l2 = (float(rest.split(key)[1].split()[0]) for key in ("FD", "spread", "teacher"))
        assert fd > 0 and spread > 0 and l2 >= 0, name
    assert float(table["teacher (DDIM, 50 steps)"].split("teacher")[1]) == 0.0


def test_the_contraction_study_refuses_a_tiny_batch():
    out = _study("--batch", "1")
    assert out.returncode == 2
    assert "--batch must be an integer >= 2" in out.stderr
