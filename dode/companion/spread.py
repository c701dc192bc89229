"""The spread rule of every verdict in the book (the reproduction page's rules 1 and 2, ``claims.RULES``).

Two samplers compared on the same seeds sample the same evaluation noise per seed, so the *paired* gain
``base - method`` per seed removes most of the metric's noise. :func:`paired_gain` summarises it over the seeds;
:func:`side` says which way it goes: better (or worse) in every seed and by more than the gain's spread over
seeds, else inside the noise; one seed has no spread, and its sign alone decides.
"""

from __future__ import annotations

import numpy as np

__all__ = ["paired_gain", "side"]


def paired_gain(base, method) -> dict:
    """The paired gain ``base - method`` (positive: ``method`` is better) of two arrays of per-seed values,
    over the seeds where both are finite: ``base`` and ``method`` (their means), ``gain`` (mean), ``std``
    (over seeds; NaN for one seed), ``seeds`` and ``wins`` (seeds where ``method`` is better)."""
    b, m = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (base, method))
    ok = np.isfinite(b) & np.isfinite(m)
    gain = b[ok] - m[ok]
    return {
        "base": float(b[ok].mean()) if ok.any() else float("nan"),
        "method": float(m[ok].mean()) if ok.any() else float("nan"),
        "gain": float(gain.mean()) if gain.size else float("nan"),
        "std": float(gain.std(ddof=1)) if gain.size > 1 else float("nan"),
        "seeds": int(gain.size),
        "wins": int((gain > 0).sum()),
    }


def side(row: dict) -> int:
    """+1: the method is better in every seed and by more than the spread; -1: worse likewise; 0: neither
    (or no seed at all). With a single seed there is no spread: the sign alone decides, and callers cap the
    verdict at ``partly``."""
    if row["seeds"] < 1:
        return 0
    if row["seeds"] < 2:
        return int(np.sign(row["gain"]))
    if row["wins"] == row["seeds"] and row["gain"] > row["std"]:
        return 1
    if row["wins"] == 0 and -row["gain"] > row["std"]:
        return -1
    return 0
