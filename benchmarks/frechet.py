"""Benchmark: the Frechet distance of FID-sized statistics, dode's against pytorch-fid's, in the same run.

Builds two pairs of ``--dim``-dimensional Gaussian statistics, one with full-rank covariances and one with
singular ones (the covariances of fewer samples than features, ``--dim // 2``), and times on each
:func:`dode.metrics.frechet_distance` (the best of ``--repeats`` runs, on ``--device``: on ``cpu``, pivoted
Cholesky factors of both covariances and one symmetric eigenvalue problem as large as the smaller rank, with
numpy and LAPACK; on a GPU, torch's Cholesky factor of a positive definite covariance, or an
eigendecomposition where both are singular, and one eigenvalue problem) and pytorch-fid's
``calculate_frechet_distance`` (``scipy.linalg.sqrtm`` of the non-symmetric product, on the CPU, once: it
takes tens of seconds at 2048-d).
It prints both times, their ratio, and the relative difference of the two values::

    python benchmarks/frechet.py                       # 2048-d, as Inception's pool features
    python benchmarks/frechet.py --device cuda
    python benchmarks/frechet.py --dim 256 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import time
import warnings

import numpy as np
import torch

from dode.metrics import frechet_distance


def statistics(dim: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` with ``sigma`` of rank ``rank``: a Gram matrix of ``rank`` random directions with a
    decaying spectrum, as Inception's features have."""
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((dim, rank)) * np.geomspace(1.0, 1e-2, rank)
    return rng.standard_normal(dim) * 0.1, factor @ factor.T


def seconds(function, repeats: int, device: str) -> tuple[float, float]:
    """``(best wall time, value)`` of ``function()`` over ``repeats`` runs."""
    best, value = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = function()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, value


def pytorch_fid(a, b) -> float:
    """pytorch-fid's value; its warnings and its message about the diagonal offset kept off the report."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return float(calculate_frechet_distance(a[0], a[1], b[0], b[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (Inception's: 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of dode's distance (the best counts)")
    parser.add_argument("--device", default="cpu", help="where dode computes (cpu: numpy; cuda: torch)")
    args = parser.parse_args(argv)
    if args.dim < 2:
        raise SystemExit(f"--dim must be an integer of at least 2, got {args.dim}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be a positive integer, got {args.repeats}")
    device = args.device if args.device != "cpu" else None  # None: numpy's path
    print(
        f"Frechet distance of {args.dim}-d statistics: dode on {args.device}, pytorch-fid (scipy sqrtm) on the "
        f"CPU; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    )
    print(
        f"{'case':10s} {'dode (s)':>9s} {'pytorch-fid (s)':>16s} {'ratio':>7s} {'relative difference':>20s}"
    )
    for case, rank in (("full-rank", args.dim), ("singular", args.dim // 2)):
        a, b = statistics(args.dim, rank, seed=0), statistics(args.dim, rank, seed=1)
        ours, value = seconds(
            functools.partial(frechet_distance, a, b, device=device), args.repeats, args.device
        )
        theirs, reference = seconds(functools.partial(pytorch_fid, a, b), 1, "cpu")
        difference = abs(value - reference) / abs(reference)
        print(f"{case:10s} {ours:9.3g} {theirs:16.3g} {theirs / ours:7.3g} {difference:20.1e}")


if __name__ == "__main__":
    main()
