"""Benchmark: the cost of the D-ODE transform and of distillation, measured as ratios in one run.

* sampling: D-solver time / base solver time, same network, noise, solver and NFE (target <= 1.02);
* distillation: ``dode.distill`` time / (one teacher run + one student run on the same batch) (target <= 1.2).

The network is a small convolutional net on CPU-sized images (3x32x32), so network time dominates as it does
in practice. Base and D runs are interleaved (their order alternating between repeats) and repeated; reported
are the ratio of the fastest runs (the minimum is the estimate least disturbed by other load on a shared
machine, as in ``timeit``) and the median of the per-repeat paired ratios. Both scatter by a few percent
between runs on a shared machine, more than the transform costs; so the script also times the same loops
with a network that costs nothing (``NullNet``): the difference is the transform's own cost, and
``1 + that cost / the real base time`` is the sampling ratio it implies, without the network's noise.

    python benchmarks/solver_overhead.py [--batch 64] [--nfe 10] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import dode
from dode.distill import teacher_targets
from dode.sampling import run
from dode.solvers import make_plan


class SmallConvNet(torch.nn.Module):
    def __init__(self, channels: int = 64):
        super().__init__()
        self.inp = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.mid = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.out = torch.nn.Conv2d(channels, 3, 3, padding=1)
        self.temb = torch.nn.Linear(1, channels)

    def forward(self, x, t):
        h = torch.nn.functional.silu(self.inp(x) + self.temb(t[:, None] / 1000.0)[:, :, None, None])
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h)


class NullNet(torch.nn.Module):
    """A "network" that costs nothing: what is left of a run's time is the solver loop and the transform."""

    def forward(self, x, t):
        return torch.zeros_like(x)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--K", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = SmallConvNet().eval()
    print(
        f"network: {sum(p.numel() for p in net.parameters()):,} parameters, batch {args.batch} x 3x32x32, "
        f"{args.threads} thread(s)"
    )
    rows = []
    for solver, nfe, schedule, prediction in [
        ("ddim", args.nfe, dode.VPSchedule.linear(), "eps"),
        ("dpm_solver", args.nfe, dode.VPSchedule.linear(), "eps"),
        ("edm", args.nfe - 1 + args.nfe % 2, dode.EDMSchedule(), "x0"),
    ]:
        den = dode.Denoiser(net, schedule, prediction, name="bench")
        fit_noise = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        noise = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        lam = dode.distill(den, fit_noise, solver, nfe, K=args.K)
        base_t, d_t, distill_t, parts_t = [], [], [], []
        plan = make_plan(schedule, solver, nfe)
        for r in range(args.repeats):
            pair = [
                (base_t, lambda: dode.sample(den, noise, solver, nfe)),  # noqa: B023
                (d_t, lambda: dode.sample(den, noise, solver, nfe, lambdas=lam)),  # noqa: B023
            ]
            for times, fn in pair if r % 2 == 0 else pair[::-1]:
                times.append(_time(fn))
            distill_t.append(_time(lambda: dode.distill(den, fit_noise, solver, nfe, K=args.K)))  # noqa: B023
            # the reference: one teacher run (recording its targets) plus one plain student run
            parts_t.append(
                _time(lambda: teacher_targets(den, fit_noise, plan, args.K))  # noqa: B023
                + _time(lambda: run(den, fit_noise, plan))  # noqa: B023
            )
        # the transform's own cost: the same loops around a network that costs nothing
        null = dode.Denoiser(NullNet(), schedule, prediction, name="bench")
        null_base, null_d = [], []
        for _ in range(10 * args.repeats):
            null_base.append(_time(lambda: dode.sample(null, noise, solver, nfe)))  # noqa: B023
            null_d.append(_time(lambda: dode.sample(null, noise, solver, nfe, lambdas=lam)))  # noqa: B023
        transform_s = min(null_d) - min(null_base)
        paired = sorted(d / b for d, b in zip(d_t, base_t, strict=True))
        rows.append(
            (
                solver,
                nfe,
                min(base_t),
                min(d_t),
                paired[len(paired) // 2],
                transform_s,
                min(distill_t),
                min(parts_t),
            )
        )
    print(
        f"{'solver':12s} {'nfe':>4s} {'base s':>8s} {'D s':>8s} {'D/base':>7s} {'median':>7s} "
        f"{'transform ms':>13s} {'implied':>8s} {'distill s':>10s} {'teach+stud s':>13s} {'ratio':>6s}"
    )
    for solver, nfe, b, d, paired, transform_s, dist, parts in rows:
        print(
            f"{solver:12s} {nfe:4d} {b:8.3f} {d:8.3f} {d / b:7.3f} {paired:7.3f} {1e3 * transform_s:13.3f} "
            f"{1 + transform_s / b:8.4f} {dist:10.3f} {parts:13.3f} {dist / parts:6.3f}"
        )
    print(
        "D/base: fastest D run / fastest base run; median: median of the paired per-repeat ratios; "
        "transform ms: D minus base around a network that costs nothing; implied: 1 + that / base"
    )
    print("targets: D/base <= 1.02, distill/(teacher + student) <= 1.2")


if __name__ == "__main__":
    main()
