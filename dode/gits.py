"""A time grid fitted to the teacher: GITS's dynamic programming over a fine grid of teacher trajectories.

Chen, Zhou, Ye, Chen and Zhou (2024), "A Geometric Perspective on Optimal Timesteps for Accelerating Diffusion
Sampling" (GITS): the probability-flow ODE's sampling trajectories are nearly one-dimensional and alike from
one noise to the next, so a time grid fitted on a few trajectories serves every sample. Written from the
paper (its Sec. 4, geometry-inspired time scheduling):

1. a fine grid of ``fine`` intervals (the model's default grid, or ``base_grid``) from ``t_max`` to the
   model's end time;
2. teacher trajectories on it, from the fitting noise: DDIM with ``K`` steps per fine interval (a grid that
   refines the fine one, :func:`dode.grids.refine`), its states ``x_i`` at every fine point;
3. the cost of one coarse step from fine point ``i`` to ``j > i``: the mean over the batch of the L2 distance
   between DDIM's single step from the teacher state ``x_i`` to ``t_j`` and the teacher state ``x_j``, the
   local error of a step that starts on the trajectory (one network evaluation at ``x_i`` serves every ``j``);
4. dynamic programming: the path from the first to the last fine point in exactly ``steps`` hops that
   minimises the summed cost.

The result is a :class:`~dode.grids.FittedGrid`, a grid like the named ones for every solver and for
:func:`dode.distill` ("fitted grid + D-ODE"); it records what the fit cost (seconds, network evaluations).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dode.denoiser import Denoiser, convert
from dode.grids import FittedGrid, default_grid, grid_key, make_grid, refine
from dode.sampling import check_noise, run
from dode.solvers import Point, ddim_update, make_plan

__all__ = ["fit_grid", "fine_costs", "step_costs", "cheapest_path"]


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def step_costs(
    denoiser: Denoiser, states: list[torch.Tensor], points: list[Point], progress=None
) -> np.ndarray:
    """``cost[i, j]`` (``+inf`` unless ``j > i``): mean L2 distance of DDIM's one step from ``states[i]`` at
    ``points[i]`` to ``points[j]``, to ``states[j]`` (step 3 of the module docstring)."""
    n = len(points)
    cost = np.full((n, n), np.inf)
    for i in range(n - 1):
        x, p = states[i], points[i]
        eps = convert(denoiser(x, p.t), x, p.alpha, p.sigma, denoiser.prediction, "eps")
        for j in range(i + 1, n):
            err = (ddim_update(x, p, points[j], eps) - states[j]).reshape(len(x), -1).norm(dim=1)
            cost[i, j] = float(err.mean())
        if progress is not None:
            progress.update(1)
    return cost


def cheapest_path(cost: np.ndarray, steps: int) -> tuple[list[int], float]:
    """The indices ``0 = k_0 < k_1 < ... < k_steps = n - 1`` that minimise ``sum cost[k_m, k_(m+1)]``, and
    that sum: dynamic programming over (hops taken, point reached), ``O(steps n^2)``."""
    n = cost.shape[0]
    if not 1 <= steps <= n - 1:
        raise ValueError(f"steps must lie in [1, {n - 1}] for a fine grid of {n - 1} intervals, got {steps}")
    best = np.full(n, np.inf)
    best[0] = 0.0
    came_from = np.zeros((steps + 1, n), dtype=np.int64)
    for m in range(1, steps + 1):
        total = best[:, None] + cost  # total[i, j]: reach i in m - 1 hops, then hop to j
        came_from[m] = np.argmin(total, axis=0)
        best = total[came_from[m], np.arange(n)]
    path = [n - 1]
    for m in range(steps, 0, -1):
        path.append(int(came_from[m, path[-1]]))
    return path[::-1], float(best[n - 1])


def fine_costs(
    denoiser: Denoiser,
    noise: torch.Tensor,
    *,
    fine: int = 60,
    K: int = 4,
    base_grid: str | None = None,
    nfe: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, np.ndarray, int]:
    """``(fine_times, cost, teacher network evaluations)`` of :func:`fit_grid`'s steps 1-3 on the fitting
    batch ``noise``: the fine grid, DDIM's teacher states on it and the one-step costs between its points."""
    noise = check_noise(noise)
    schedule = denoiser.schedule
    base = default_grid(schedule) if base_grid is None else base_grid
    fine_times = make_grid(schedule, base, fine)
    teacher = make_plan(schedule, "ddim", None, refine(schedule, base, fine_times, K))
    recorded = run(denoiser, noise, teacher, record_at=set(fine_times[1:].tolist())).recorded
    points = [Point.at(schedule, float(t)) for t in fine_times]
    states = [schedule.initial_state(noise.to(torch.float64), points[0].t)]
    states += [recorded[p.t] for p in points[1:]]
    bar = None
    if progress:
        from dode.progress import progress_bar

        bar = progress_bar(total=fine, desc=f"gits costs nfe={nfe}", leave=False)
    try:
        cost = step_costs(denoiser, states, points, bar)
    finally:
        if bar is not None:
            bar.close()
    return fine_times, cost, teacher.nfe


def fit_grid(
    denoiser: Denoiser,
    noise: torch.Tensor,
    nfe: int,
    solver: str = "ddim",
    *,
    fine: int = 60,
    K: int = 4,
    base_grid: str | None = None,
    seed: int | None = None,
    progress: bool = False,
    costs: tuple | None = None,
    **options,
) -> FittedGrid:
    """Fit a GITS time grid for ``solver`` at ``nfe`` (with its ``options``) on the fitting batch ``noise``.

    Parameters
    ----------
    nfe, solver, options: the run the grid is for; they fix how many intervals it has (one per step; one per
        network evaluation for singlestep DPM-Solver with its stages on the grid).
    fine: intervals of the fine grid the coarse grid's points are chosen from (at least that many).
    K: DDIM teacher steps per fine interval.
    base_grid: the named grid whose variable spaces the fine grid (default: the model's default grid).
    seed: the seed the fitting noise was drawn with, recorded with the grid.
    progress: a tqdm bar (stderr) over the cost evaluations.
    costs: :func:`fine_costs` of this model, fitting noise, ``fine``, ``K`` and base grid, computed before:
        they depend on neither the NFE nor the solver, so one computation serves every fit of the batch
        (``seconds`` then counts the path search only).

    The grid starts at ``t_max`` and ends at the model's end time (``t_min``; 0 on EDM schedules), as the
    named grids do. Its ``info`` holds ``seconds`` and ``network_evaluations`` (network calls, each on the
    whole batch of ``samples``: ``fine * K`` for the teacher, ``fine`` for the costs), and the fit's cost.
    """
    noise = check_noise(noise)
    fine = _check_count("fine", fine, 1)
    K = _check_count("K", K, 1)
    schedule = denoiser.schedule
    base = default_grid(schedule) if base_grid is None else base_grid
    if not isinstance(base, str):
        raise ValueError(f"base_grid must be a named grid, got {type(base).__name__}")
    steps = len(make_plan(schedule, solver, nfe, base, options).times) - 1
    if steps > fine:
        raise ValueError(f"fine must be at least the grid's {steps} intervals, got {fine}")
    t0 = time.perf_counter()
    if costs is None:
        costs = fine_costs(denoiser, noise, fine=fine, K=K, base_grid=base, nfe=nfe, progress=progress)
    fine_times, cost, teacher_nfe = costs
    if len(fine_times) != fine + 1:
        raise ValueError(f"costs are of a fine grid of {len(fine_times) - 1} intervals, not {fine}")
    path, total = cheapest_path(cost, steps)
    seconds = time.perf_counter() - t0
    return FittedGrid(
        "gits",
        fine_times[path].clone(),
        schedule.describe(),
        model=denoiser.name,
        info={
            "solver": solver,
            "nfe": int(nfe),
            "fine": fine,
            "K": K,
            "base_grid": grid_key(base),
            "samples": int(noise.shape[0]),
            "seed": seed,
            "seconds": seconds,
            "network_evaluations": teacher_nfe + fine,
            "cost": total,
            "fine_indices": path,
        },
    )
