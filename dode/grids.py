"""Time grids.

A grid is a decreasing sequence of model times ``t_0 > t_1 > ... > t_N`` (``N`` steps). Named grids are
uniform in their own variable ``u(t)`` between the schedule's ``t_max`` and ``t_min``:

==================  ==========================================  =====================================
name                uniform in                                  reference
==================  ==========================================  =====================================
``time_uniform``    ``t`` (the model's time input)              DDIM, DPM-Solver's "time_uniform"
``logsnr_uniform``  half-logSNR ``ell = log(alpha / sigma)``     DPM-Solver's "logSNR"
``quadratic``       ``sqrt(t)``                                 DDIM's "quad" skip
``edm``             ``sigma_hat^(1/rho)``, ``sigma_hat = sigma/alpha``  EDM (Karras et al. 2022, Eq. 5)
==================  ==========================================  =====================================

On a schedule that ``ends_at_zero`` (EDM) the ``N`` named points run from ``sigma_max`` to ``sigma_min``
and a final ``t_N = 0`` is appended, exactly as EDM's sampler does. An explicit grid is any decreasing 1-D
tensor of model times. A :class:`FittedGrid` is an explicit grid fitted to a model's own trajectories
(``gits``: :func:`dode.gits.fit_grid`), which carries what it was fitted for and what the fit cost.

The same variable drives the teacher's grid in distillation (book/method.md, distillation): each student
interval is cut into ``K`` pieces uniformly in ``u`` (:func:`refine`), so the teacher's grid *refines* the student's one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from dode.schedules import EDMSchedule, Schedule

__all__ = ["GRIDS", "FITTED_GRIDS", "FittedGrid", "make_grid", "refine", "grid_key", "default_grid"]

GRIDS = ("time_uniform", "logsnr_uniform", "quadratic", "edm")
#: grids fitted to a model (:class:`FittedGrid`): name -> the function that fits them
FITTED_GRIDS = {"gits": "dode.gits.fit_grid"}
_EDM_RHO = 7.0
_GRID_ERROR = (
    f"grid must be one of {GRIDS}, a FittedGrid (fitted: {sorted(FITTED_GRIDS)}, e.g. dode.gits.fit_grid) "
    "or a 1-D tensor of model times"
)


@dataclass(frozen=True, eq=False)  # eq=False: its times are a tensor
class FittedGrid:
    """A time grid fitted to a model (``name``: one of :data:`FITTED_GRIDS`), usable as ``grid=`` by every
    solver and by :func:`dode.distill` wherever the solver's plan has as many intervals.

    ``times`` are the decreasing model times; ``schedule`` the schedule's :meth:`~dode.Schedule.describe`
    and ``model`` the denoiser's name it was fitted on; ``info`` what the fit did and cost (JSON-able:
    ``seconds``, ``network_evaluations``, ``samples``, ...).
    """

    name: str
    times: torch.Tensor
    schedule: dict
    model: str | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in FITTED_GRIDS:
            raise ValueError(f"a fitted grid's name must be one of {sorted(FITTED_GRIDS)}, got {self.name!r}")

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    def check(self, schedule: Schedule, steps: int) -> torch.Tensor:
        """The times, checked to belong to ``schedule`` and to have ``steps`` intervals."""
        if self.schedule != schedule.describe():
            raise ValueError(
                f"the {self.name!r} grid was fitted on schedule {self.schedule}, not {schedule.describe()}"
            )
        if self.steps != steps:
            raise ValueError(
                f"the {self.name!r} grid has {self.steps} intervals but this solver/NFE needs {steps}: "
                "fit it for this solver and NFE"
            )
        return _check_explicit(schedule, self.times)


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
        return schedule.half_logsnr(t)
    if name == "edm":
        return schedule.sigma_hat(t) ** (1.0 / _rho(schedule))
    raise ValueError(f"{_GRID_ERROR}, got {name!r}")


def _from_u(schedule: Schedule, name: str, u: torch.Tensor) -> torch.Tensor:
    if name == "time_uniform":
        return u
    if name == "quadratic":
        return u**2
    if name == "logsnr_uniform":
        return schedule.t_from_half_logsnr(u)
    if name == "edm":
        return schedule.t_from_sigma_hat(u ** _rho(schedule))
    raise ValueError(f"{_GRID_ERROR}, got {name!r}")


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
    if isinstance(grid, FittedGrid):
        return grid.check(schedule, steps).clone()
    if not isinstance(grid, str):
        times = _check_explicit(schedule, grid)
        if len(times) != steps + 1:
            raise ValueError(
                f"the explicit grid has {len(times)} times but this solver/NFE needs {steps + 1}"
            )
        return times
    if grid in FITTED_GRIDS:
        raise ValueError(
            f"grid {grid!r} is fitted to a model: pass the FittedGrid that {FITTED_GRIDS[grid]} returns"
        )
    if grid not in GRIDS:
        raise ValueError(f"{_GRID_ERROR}, got {grid!r}")
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
    """A string that identifies a grid spec (the name, or the explicit or fitted times) for lambdas metadata."""
    if grid is None or isinstance(grid, str):
        return str(grid)
    if isinstance(grid, FittedGrid):  # the times it stands for: lambdas fitted on it run on the same times
        grid = grid.times
    return json.dumps([float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)])


def refine(schedule: Schedule, grid, times: torch.Tensor, K: int) -> torch.Tensor:
    """Cut every interval of the decreasing ``times`` into ``K`` pieces uniformly in the grid's variable.

    The result contains every entry of ``times`` exactly, so a teacher run on it passes through each of the
    student's landing times. Explicit and fitted grids, and the logSNR grid on an interval that ends at sigma = 0 (where
    the half-logSNR is infinite), are refined in EDM's ``sigma_hat^(1/rho)``, which is finite and smooth there.
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
