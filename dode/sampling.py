"""The one sampling loop, and the D-ODE transform that hooks into it once for every solver.

``run`` walks the solver's plan step by step; each network evaluation goes through :class:`Evaluator`,
which

1. calls the network (its own dtype) and checks the output is finite,
2. forms the solver's estimate ``d_k``: the raw output, or a multistep solver's combination of its history,
3. applies the D-ODE transform in the model's native prediction type (paper Eq. 10):
   ``d~_k = d_k + lambda_k (d_k - d_prev)``, ``d_prev`` being the previous estimate in evaluation order
   (at the very first evaluation: the initial noise for noise prediction, no correction for data prediction)
   -- at every evaluation that carries a lambda (:func:`lambda_evaluations`),
4. optionally fits the parameters in closed form first (distillation, :mod:`dode.distill`),
5. hands ``d~_k`` to the solver's affine stage update and records what was asked.

Because every stage update is affine in ``d~_k``, the state it lands on is
``x_base + sum_m p_m J_m`` with ``x_base = update(base)`` and ``J_m = update(base + v_m) - x_base``: the fit
needs no solver-specific coefficient, only two calls of the update it already has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dode.denoiser import Denoiser, convert
from dode.grids import grid_key
from dode.lambdas import STAGES, Lambdas
from dode.solvers import Plan, Point, get_solver, make_plan

__all__ = ["sample", "run", "Trajectory", "transform_columns", "lambda_evaluations"]


def lambda_evaluations(plan: Plan, stages: str = "per_time") -> list[bool]:
    """Whether each network evaluation of ``plan`` carries a D-ODE parameter.

    ``per_stage`` is the paper's formulation (method chapter, section 3): one lambda for every stage. ``per_time``
    (our default) gives one lambda to each *landing time* of the plan, on the first evaluation that lands
    there. The two differ only where consecutive stages land on the same time, i.e. EDM's Heun step, whose
    corrector re-solves the step its predictor already took. There a corrector lambda turns the trapezoid
    weights ``(1/2, 1/2)`` into ``((1 - lambda)/2, (1 + lambda)/2)``, which breaks Heun's second-order
    condition; fitted sequentially against the teacher state the predictor was just fitted to, it comes out
    near -1 (Heun collapsed to Euler) and made D-EDM worse than EDM from NFE 9 on (notebook 03). The
    predictor's lambda acts along ``D(x_i) - D(x'_{i-1})``, two outputs at the same sigma, a difference of
    the order of Heun's local correction, so it keeps the second order; the corrector output still counts as
    the previous output of the next step (Eq. 10 unchanged).
    """
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {stages!r}")
    landing = plan.landing_times
    if stages == "per_stage":
        return [True] * len(landing)
    return [k == 0 or landing[k] != landing[k - 1] for k in range(len(landing))]


@dataclass
class Trajectory:
    """Everything a run visited, for the analysis figures (Fig. 2, 5, 7, 11).

    ``states[0]`` is the initial state and ``states[k + 1]`` the state evaluation ``k`` landed on (an
    intermediate stage state for singlestep solvers, Heun's predictor and corrector both at ``t``).
    ``outputs[k]`` is the raw network output (native prediction type) and ``corrected[k]`` the estimate
    after the D-ODE transform, in the transform's prediction type. Times are model times.
    """

    x: torch.Tensor
    states: torch.Tensor
    state_times: torch.Tensor
    outputs: torch.Tensor
    corrected: torch.Tensor
    eval_times: torch.Tensor
    prediction: str


def transform_columns(variant: str, d: torch.Tensor, previous: list[torch.Tensor], n_virtual: int):
    """``(base, columns)`` with ``d~ = base + sum_m p_m columns[m]`` (method chapter, sections 3 and 5).

    ``previous`` holds earlier estimates, most recent first; its last ``n_virtual`` entries are the virtual
    "previous output" of the first evaluation (the initial noise, noise prediction only).
    """
    if variant == "d-ode":  # Eq. 10
        return d, [d - p for p in previous[:1]]
    if variant == "d-ode-2":  # Eq. 9 with two previous outputs
        return d, [d - p for p in previous[:2]]
    if variant == "sep":  # a d_k + b d_prev, unconstrained
        return torch.zeros_like(d), [d, *previous[:1]]
    if variant == "all":  # sum over all outputs so far, unconstrained (Eq. 8)
        real = previous[: len(previous) - n_virtual]
        return torch.zeros_like(d), [d, *real]
    raise ValueError(f"variant must be one of 'd-ode', 'd-ode-2', 'sep', 'all', got {variant!r}")


# the most outputs a solver combines (iPNDM's fourth-order Adams-Bashforth weights)
_MAX_HISTORY = 4

# A fitter gets (evaluation index, landing point, x_base, columns J_m, ) and returns the parameters p_m.
Fitter = Callable[[int, Point, torch.Tensor, list], np.ndarray]


class Evaluator:
    """One network evaluation of the loop: transform, fit hook, recording (see module docstring)."""

    def __init__(
        self,
        denoiser: Denoiser,
        plan: Plan,
        noise: torch.Tensor,
        *,
        lambdas: Lambdas | None = None,
        variant: str = "d-ode",
        space: str = "native",
        stages: str = "per_time",
        fitter: Fitter | None = None,
        record_trajectory: bool = False,
        record_at: set[float] | None = None,
        progress=None,
    ):
        self.den = denoiser
        self.plan = plan
        self.lambdas = lambdas
        self.variant = variant
        self.carries_lambda = lambda_evaluations(plan, stages)
        self.fitter = fitter
        self.native = denoiser.prediction
        solver_space = get_solver(plan.solver).space
        self.formula_space = self.native if solver_space == "native" else solver_space
        self.transform_space = self.native if space == "native" else space
        self.k = 0
        self.history: list[torch.Tensor] = []  # raw outputs in the formula space (multistep solvers)
        self.keep_history = get_solver(plan.solver).multistep
        # estimates in the transform space, most recent first; the first evaluation of a noise-prediction
        # transform sees the initial noise as its previous output (paper Sec. 10.1)
        self.n_virtual = 1 if self.transform_space == "eps" else 0
        self.previous: list[torch.Tensor] = [noise] if self.n_virtual else []
        self.fitted: list[np.ndarray] = []
        self.record_trajectory = record_trajectory
        self.trajectory: dict[str, list] = {
            "states": [],
            "state_times": [],
            "outputs": [],
            "corrected": [],
            "eval_times": [],
        }
        self.record_at = record_at
        self.recorded: dict[float, torch.Tensor] = {}
        self.progress = progress

    def __call__(
        self,
        x: torch.Tensor,
        at: Point,
        lands: Point,
        update,
        weights: tuple[float, ...] = (),
    ):
        k = self.k
        raw = self.den(x, at.t)
        if not torch.isfinite(raw).all():
            raise FloatingPointError(
                f"non-finite network output at evaluation {k} of {self.plan.nfe} "
                f"(solver {self.plan.solver!r}, model time t={at.t:.6g})"
            )

        def to(d, src, dst):
            return convert(d, x, at.alpha, at.sigma, src, dst)

        if self.keep_history:  # raw outputs in the formula space, most recent first
            self.history.insert(0, to(raw, self.native, self.formula_space))
            del self.history[_MAX_HISTORY:]
        if weights:  # multistep: the solver's own combined estimate (method chapter, section 3)
            estimate = sum(w * h for w, h in zip(weights, self.history))
            estimate = to(estimate, self.formula_space, self.transform_space)
        else:
            estimate = to(raw, self.native, self.transform_space)

        if self.carries_lambda[k]:
            base, columns = transform_columns(self.variant, estimate, self.previous, self.n_virtual)
        else:  # a stage re-solving its step's landing time (Heun's corrector): no lambda of its own, but
            base, columns = estimate, []  # its estimate is still the next evaluation's d_prev

        def land(d_t):
            return update(to(d_t, self.transform_space, self.formula_space))

        if self.fitter is not None and columns:
            x_base = land(base)
            jac = [land(base + v) - x_base for v in columns]
            params = np.asarray(self.fitter(k, lands, x_base, jac), dtype=np.float64)
        elif self.lambdas is not None and columns:
            params = self.lambdas.params(k, len(columns))
        else:
            params = np.zeros(0)
        self.fitted.append(params)

        corrected = base
        for p, v in zip(params, columns):
            corrected = corrected + float(p) * v
        d_solver = to(corrected, self.transform_space, self.formula_space)
        x_next = update(d_solver)

        self.previous.insert(0, estimate)
        if self.variant != "all":  # only D-DDIM-All looks further back than two outputs
            del self.previous[2 + self.n_virtual :]
        if self.record_trajectory:
            tr = self.trajectory
            if k == 0:
                tr["states"].append(x.detach().cpu())
                tr["state_times"].append(at.t)
            tr["states"].append(x_next.detach().cpu())
            tr["state_times"].append(lands.t)
            tr["outputs"].append(raw.detach().cpu())
            tr["corrected"].append(corrected.detach().cpu())
            tr["eval_times"].append(at.t)
        if self.record_at is not None and lands.t in self.record_at:
            self.recorded[lands.t] = x_next  # the last state landing at a time wins (Heun's corrector)
        if self.progress is not None:
            self.progress.update(1)
        self.k += 1
        return x_next, d_solver


def run(
    denoiser: Denoiser,
    noise: torch.Tensor,
    plan: Plan,
    **evaluator_options,
) -> tuple[torch.Tensor, Evaluator]:
    """The sampling loop: start from ``x_T`` and let the solver take each planned step."""
    solver = get_solver(plan.solver)
    noise = noise.to(torch.float64)
    x = denoiser.schedule.initial_state(noise, plan.start.t)
    ev = Evaluator(denoiser, plan, noise, **evaluator_options)
    for step in plan.steps:
        x = solver.step(ev, x, step)
    if ev.k != plan.nfe:
        raise AssertionError(
            f"internal error: {plan.solver} made {ev.k} network evaluations, planned {plan.nfe}"
        )
    return x, ev


def _check_noise(noise) -> torch.Tensor:
    if not torch.is_tensor(noise):
        raise TypeError(f"noise must be a torch.Tensor of shape (batch, ...), got {type(noise).__name__}")
    if noise.ndim < 2 or noise.shape[0] == 0:
        raise ValueError(
            f"noise must be a non-empty batch of shape (batch, ...), got shape {tuple(noise.shape)}"
        )
    if not torch.isfinite(noise).all():
        raise ValueError("noise must be finite")
    return noise


def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    solver: str = "ddim",
    nfe: int = 10,
    *,
    grid=None,
    lambdas: Lambdas | None = None,
    trajectory: bool = False,
    progress: bool = False,
    **options,
):
    """Sample from standard normal ``noise`` with ``solver`` in ``nfe`` network evaluations.

    Parameters
    ----------
    denoiser: a :class:`~dode.Denoiser`.
    noise: standard normal tensor ``(batch, ...)``; the solver scales it to ``x_T``.
    solver: ``ddim``, ``ipndm``, ``deis``, ``dpm_solver``, ``dpm_solver++`` or ``edm`` (Heun; odd NFE).
    nfe: number of network evaluations.
    grid: ``time_uniform``, ``logsnr_uniform``, ``quadratic``, ``edm`` or an explicit tensor of model times
        (default: ``time_uniform`` on VP, ``edm`` on EDM schedules).
    lambdas: fitted :class:`~dode.Lambdas` (the D-ODE solver), or ``Lambdas.constant_value(c)``; they carry
        their variant, transform space and ``stages`` (which evaluations have a lambda).
    trajectory: return a :class:`Trajectory` with every state and denoising output instead of the samples.
    options: solver options, e.g. ``order`` for ``deis`` and ``dpm_solver``.

    Returns float64 samples (or a Trajectory).
    """
    noise = _check_noise(noise)
    plan = make_plan(denoiser.schedule, solver, nfe, grid, options)
    variant, space, stages = "d-ode", "native", "per_time"
    if lambdas is not None:
        if not isinstance(lambdas, Lambdas):
            raise TypeError("lambdas must be a dode.Lambdas (use Lambdas.constant_value(c) for a constant)")
        lambdas.check_compatible(plan, denoiser, grid_key(grid))
        variant, space, stages = lambdas.variant, lambdas.space, lambdas.stages
    bar = None
    if progress:
        from dode.progress import progress_bar

        bar = progress_bar(total=plan.nfe, desc=f"{solver} nfe={plan.nfe}", leave=False)
    try:
        x, ev = run(
            denoiser,
            noise,
            plan,
            lambdas=lambdas,
            variant=variant,
            space=space,
            stages=stages,
            record_trajectory=trajectory,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if not trajectory:
        return x
    tr = ev.trajectory
    return Trajectory(
        x=x,
        states=torch.stack(tr["states"]),
        state_times=torch.tensor(tr["state_times"], dtype=torch.float64),
        outputs=torch.stack(tr["outputs"]),
        corrected=torch.stack(tr["corrected"]),
        eval_times=torch.tensor(tr["eval_times"], dtype=torch.float64),
        prediction=denoiser.prediction,
    )
