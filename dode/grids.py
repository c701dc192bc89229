"""Time grids.

A grid is a decreasing sequence of model times ``t_0 > t_1 > ... > t_N`` (``N`` steps). Named grids are
uniform in their own variable ``u(t)`` between the schedule's ``t_max`` and ``t_min``:

==================  ==========================================  =====================================
name                uniform in                                  reference
==================  ==========================================  =====================================
``time_uniform``    ``t`` (the model's time input)              DDIM, DPM-Solver's "time_uniform"
``logsnr_uniform``  half-logSNR ``lambda = log(alpha / sigma)``  DPM-Solver's "logSNR"
``quadratic``       ``sqrt(t)``                                 DDIM's "quad" skip
``edm``             ``sigma_hat^(1/rho)``, ``sigma_hat = sigma/alpha``  EDM (Karras et al. 2022, Eq. 5)
==================  ==========================================  =====================================

On a schedule that ``ends_at_zero`` (EDM) the ``N`` named points run from ``sigma_max`` to ``sigma_min``
and a final ``t_N = 0`` is appended, exactly as EDM's sampler does. An explicit grid is any decreasing 1-D
tensor of model times.

The same variable drives the teacher's grid in distillation (method chapter, section 4): each student interval is cut
into ``K`` pieces uniformly in ``u`` (:func:`refine`), so the teacher's grid *refines* the student's one.
"""

from __future__ import annotations

import json

import torch

from dode.schedules import EDMSchedule, Schedule

__all__ = ["GRIDS", "make_grid", "refine", "grid_key", "default_grid"]

GRIDS = ("time_uniform", "logsnr_uniform", "quadratic", "edm")
_EDM_RHO = 7.0


def default_grid(schedule: Schedule) -> str:
    """The paper's defaults: uniform timesteps on discrete VP models, EDM's rho grid on EDM models."""
    return "edm" if isinstance(schedule, EDMSchedule) else "time_uniform"


def _rho(schedule: Schedule) -> float:
    return schedule.rho if isinstance(schedule, EDMSchedule) else _EDM_RHO


def _to_u(schedule: Schedule, name: str, t: torch.Tensor) -> torch.Tensor:
    if name == "time_uniform":
        return t
    if name == "quadratic":
        return torch.sqrt(t)
    if name == "logsnr_uniform":
        return schedule.lambda_(t)
    if name == "edm":
        return schedule.sigma_hat(t) ** (1.0 / _rho(schedule))
    raise ValueError(f"grid must be one of {GRIDS} or a 1-D tensor of model times, got {name!r}")


def _from_u(schedule: Schedule, name: str, u: torch.Tensor) -> torch.Tensor:
    if name == "time_uniform":
        return u
    if name == "quadratic":
        return u**2
    if name == "logsnr_uniform":
        return schedule.t_from_lambda(u)
    if name == "edm":
        return schedule.t_from_sigma_hat(u ** _rho(schedule))
    raise ValueError(f"grid must be one of {GRIDS} or a 1-D tensor of model times, got {name!r}")


def _check_explicit(schedule: Schedule, times) -> torch.Tensor:
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    if len(times) < 2:
        raise ValueError("an explicit grid needs at least 2 times")
    if not torch.all(torch.isfinite(times)):
        raise ValueError("an explicit grid must hold finite times")
    if not torch.all(times[1:] < times[:-1]):
        raise ValueError("an explicit grid must strictly decrease (from noise to data)")
    low = 0.0 if schedule.ends_at_zero else schedule.t_min
    if times[0] > schedule.t_max * (1 + 1e-12) or times[-1] < low - 1e-12:
        raise ValueError(f"explicit grid times must lie in [{low:g}, {schedule.t_max:g}] for {schedule!r}")
    return times


def make_grid(schedule: Schedule, grid, steps: int) -> torch.Tensor:
    """``steps + 1`` decreasing model times for a named grid, or the explicit grid checked to have them."""
    if grid is None:
        grid = default_grid(schedule)
    if not isinstance(grid, str):
        times = _check_explicit(schedule, grid)
        if len(times) != steps + 1:
            raise ValueError(
                f"the explicit grid has {len(times)} times but this solver/NFE needs {steps + 1}"
            )
        return times
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS} or a 1-D tensor of model times, got {grid!r}")
    if steps < 1:
        raise ValueError(f"a grid needs at least one step, got {steps}")
    n_points = steps if schedule.ends_at_zero else steps + 1
    ends = torch.tensor([schedule.t_max, schedule.t_min], dtype=torch.float64)
    u_max, u_min = _to_u(schedule, grid, ends)
    if n_points == 1:
        times = ends[:1]
    else:
        times = _from_u(
            schedule, grid, torch.linspace(0, 1, n_points, dtype=torch.float64) * (u_min - u_max) + u_max
        )
        # pin the end points exactly (the inverse maps are exact only up to rounding)
        times[0], times[-1] = ends[0], ends[1]
    if schedule.ends_at_zero:
        times = torch.cat([times, times.new_zeros(1)])
    return times


def grid_key(grid) -> str:
    """A string that identifies a grid spec (the name, or the explicit times) for lambdas metadata."""
    if grid is None or isinstance(grid, str):
        return str(grid)
    return json.dumps([float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)])


def refine(schedule: Schedule, grid, times: torch.Tensor, K: int) -> torch.Tensor:
    """Cut every interval of the decreasing ``times`` into ``K`` pieces uniformly in the grid's variable.

    The result contains every entry of ``times`` exactly, so a teacher run on it passes through each of the
    student's landing times. Explicit grids, and the logSNR grid on an interval that ends at sigma = 0 (where
    ``lambda`` is infinite), are refined in EDM's ``sigma_hat^(1/rho)``, which is finite and smooth there.
    """
    if K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K}")
    times = torch.as_tensor(times, dtype=torch.float64)
    name = grid if isinstance(grid, str) else "edm"
    if name is None:
        name = default_grid(schedule)
    pieces = [times[:1]]
    frac = torch.arange(1, K, dtype=torch.float64) / K
    for a, b in zip(times[:-1], times[1:]):
        interval_name = name
        if name == "logsnr_uniform" and float(schedule.sigma(b)) == 0.0:
            interval_name = "edm"
        ua, ub = _to_u(schedule, interval_name, torch.stack([a, b]))
        inner = _from_u(schedule, interval_name, ua + frac * (ub - ua))
        pieces.extend([inner, b.reshape(1)])
    return torch.cat(pieces)
