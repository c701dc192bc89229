"""Benchmark: what a joint fit costs against the greedy fit, measured in one run (ratios printed, not asserted).

For each setting (a zoo model such as ``digits-eps``, or ``testbed``: the exact Gaussian mixture of page 12
on the linear VP schedule), solver and NFE, on one fitting batch of ``B`` noises with the paper's teachers
(iPNDM and DEIS teach themselves, the others are taught by DDIM):

* the teacher run, shared by both fits (``dode.distill.teacher_targets``);
* the greedy fit (``fit="ls"``, the paper's);
* the joint fit (``fit="joint"``, ``dode.joint``) with its finite differences batched, the default: the
  current point and every perturbed run of an iteration in one pass of the sampling loop;
* the same joint fit unbatched (``max_batch`` = B: one run of the fitting batch per pass, as before batching).

Printed per row: the teacher's seconds, each fit's seconds without the teacher, the ratio of a joint fit to a
greedy fit with the teacher counted in both (what a user pays), the unbatched over the batched joint fit's
seconds, and the work: per-sample network evaluations (teacher included) and network calls of each fit.
The times are the fastest of ``--repeats`` runs. ``lambda diff``: the largest difference between the batched
and the unbatched joint fit's lambdas (relative above 1): zero up to rounding on the float64 test bed; on a
float32 network the finite differences carry the rounding of batches of other sizes.

    python benchmarks/joint_fit.py [--settings digits-eps testbed] [--solvers ddim ipndm] [--nfes 5 10]
                                   [--B 100] [--K 10] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import dode
from dode.companion.experiments import solver_spec, teacher_of
from dode.distill import teacher_targets
from dode.gmm import GaussianMixture
from dode.solvers import make_plan

#: the exact test bed's mixture (page 12's protocols: ``dode.companion.protocols``)
TESTBED_GMM = dict(n_components=4, dim=8, seed=0)


def setting(name: str) -> tuple[dode.Denoiser, tuple[int, ...]]:
    """The denoiser of a setting and the shape of one sample."""
    if name == "testbed":
        mixture = GaussianMixture.random(**TESTBED_GMM)
        return mixture.denoiser(dode.VPSchedule.linear(), "eps"), (mixture.dim,)
    den = dode.zoo.load(name)
    res, ch = den.info["resolution"], den.info["channels"]
    return den, (ch, res, res)


def fastest(fn, repeats: int):
    """``(result of the last call, fastest seconds)`` over ``repeats`` calls."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def measure(den, shape, label: str, nfe: int, B: int, K: int, repeats: int) -> dict:
    solver, options = solver_spec(label)
    teacher = teacher_of(label, "paper") or "ddim"
    noise = torch.randn(B, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = make_plan(den.schedule, solver, nfe, None, options)
    teacher_run, teacher_s = fastest(lambda: teacher_targets(den, noise, plan, K, teacher=teacher), repeats)

    def fit(**kw):
        return fastest(
            lambda: dode.distill(
                den, noise, solver, nfe, K, teacher=teacher, teacher_run=teacher_run, **kw, **options
            ),
            repeats,
        )

    greedy, greedy_s = fit()
    joint, joint_s = fit(fit="joint")
    unbatched, unbatched_s = fit(fit="joint", fit_options={"max_batch": B})
    # the two differ only by the rounding of the network's dtype in batches of other sizes
    lambda_diff = np.nanmax(
        np.abs(joint.values - unbatched.values) / np.maximum(1.0, np.abs(unbatched.values))
    )
    teacher_evals = B * teacher_run[0].nfe
    return {
        "teacher_s": teacher_s,
        "greedy_s": greedy_s,
        "joint_s": joint_s,
        "unbatched_s": unbatched_s,
        "joint_over_greedy": (teacher_s + joint_s) / (teacher_s + greedy_s),
        "unbatched_over_batched": unbatched_s / joint_s,
        "greedy_evals": teacher_evals + B * nfe,
        "joint_evals": teacher_evals + B * nfe + joint.info["joint_network_evaluations"],
        "greedy_calls": teacher_run[0].nfe + nfe,
        "joint_calls": teacher_run[0].nfe + nfe + joint.info["joint_network_calls"],
        "unbatched_calls": teacher_run[0].nfe + nfe + unbatched.info["joint_network_calls"],
        "iterations": joint.info["joint_iterations"],
        "lambda_diff": float(lambda_diff),
    }


COLUMNS = [
    ("teacher_s", "teacher s", "{:10.3g}"),
    ("greedy_s", "greedy s", "{:9.3g}"),
    ("joint_s", "joint s", "{:8.3g}"),
    ("unbatched_s", "unbatched s", "{:12.3g}"),
    ("joint_over_greedy", "joint/greedy", "{:13.2f}"),
    ("unbatched_over_batched", "unbatched/batched", "{:18.2f}"),
    ("greedy_evals", "greedy evals", "{:13d}"),
    ("joint_evals", "joint evals", "{:12d}"),
    ("greedy_calls", "greedy calls", "{:13d}"),
    ("joint_calls", "joint calls", "{:12d}"),
    ("unbatched_calls", "unbatched calls", "{:16d}"),
    ("iterations", "iterations", "{:11d}"),
    ("lambda_diff", "lambda diff", "{:12.1e}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=["digits-eps", "testbed"])
    parser.add_argument("--solvers", nargs="+", default=["ddim", "ipndm"], help="solver labels (deis3, ...)")
    parser.add_argument("--nfes", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--B", type=int, default=100)
    parser.add_argument("--K", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"B = {args.B}, K = {args.K}, {args.threads} thread(s), fastest of {args.repeats} run(s)")
    header = f"{'setting':15s} {'solver':8s} {'nfe':>4s} " + " ".join(
        f"{title:>{len(fmt.format(0))}s}" for _, title, fmt in COLUMNS
    )
    print(header)
    for name in args.settings:
        den, shape = setting(name)
        for label in args.solvers:
            for nfe in args.nfes:
                row = measure(den, shape, label, nfe, args.B, args.K, args.repeats)
                cells = " ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS)
                print(f"{name:15s} {label:8s} {nfe:4d} {cells}", flush=True)
    print(
        "seconds without the teacher; joint/greedy: (teacher + joint) / (teacher + greedy); evals: per-sample "
        "network evaluations, teacher included; calls: network calls, teacher included; lambda diff: batched "
        "against unbatched joint lambdas"
    )


if __name__ == "__main__":
    main()
