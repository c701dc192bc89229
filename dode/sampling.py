"""The one sampling loop, and the hook through which the D-ODE transform joins it once for every solver.

:func:`run` walks the solver's plan step by step; every network evaluation of a step is one call of the hook
``evaluate(x, at, lands, update, combine=None)`` (:class:`Evaluate`), which

1. calls the network (its own dtype) and notes, without a host sync, whether the output is finite
   (:class:`FiniteCheck`: checked once, when the run ends);
2. forms the solver's estimate ``d_k``: the raw output, or a multistep solver's ``combine`` of its history;
3. applies the D-ODE transform in the model's native prediction type (paper Eq. 10):
   ``d~_k = d_k + lambda_k (d_k - d_prev)``, ``d_prev`` being the previous estimate in evaluation order
   (at the very first evaluation: the initial noise for noise prediction, no correction for data
   prediction) -- at every evaluation that carries a lambda (:func:`lambda_evaluations`; the method
   chapter, D-ODE transform: :class:`Transform`);
4. optionally fits the parameters in closed form first (distillation, :mod:`dode.distill`: :func:`parameters`);
5. hands ``d~_k`` to the solver's affine ``update`` and records what was asked (:class:`Recorder`).

Because every stage update is affine in ``d~_k``, the state it lands on is
``x_base + sum_m p_m J_m`` with ``x_base = update(base)`` and ``J_m = update(base + v_m) - x_base``: the fit
needs no solver-specific coefficient, only two calls of the update it already has (the method chapter,
fitting lambda in closed form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from dode.denoiser import Denoiser, convert
from dode.grids import grid_key
from dode.lambdas import STAGES, Lambdas
from dode.solvers import Plan, Point, get_solver, make_plan

__all__ = ["sample", "run", "Run", "Trajectory", "LambdaSets", "transform_columns", "lambda_evaluations"]


def lambda_evaluations(plan: Plan, stages: str = "per_time") -> list[bool]:
    """Whether each network evaluation of ``plan`` carries a D-ODE parameter.

    ``per_stage`` is the paper's formulation: one lambda for every stage. ``per_time``
    (our default) gives one lambda to each *landing time* of the plan, on the first evaluation that lands
    there. The two differ only where consecutive stages land on the same time, i.e. EDM's Heun step, whose
    corrector re-solves the step its predictor already took. There a corrector lambda turns the trapezoid
    weights ``(1/2, 1/2)`` into ``((1 - lambda)/2, (1 + lambda)/2)``, which breaks Heun's second-order
    condition; fitted sequentially against the teacher state the predictor was just fitted to, it comes out
    near -1 (Heun collapsed to Euler) and made D-EDM worse than EDM from NFE 9 on (notebook 03). The
    predictor's lambda acts along ``D(x_i) - D(x'_{i-1})``, two outputs at the same sigma, a difference of
    the order of Heun's local correction, so it keeps the second order; the corrector output still counts as
    the previous output of the next step (Eq. 10 unchanged). The method chapter (D-ODE transform) has the
    measurements.
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


@dataclass
class Run:
    """What :func:`run` returns: the final state and what the run fitted and recorded.

    ``fitted[k]`` holds the parameters evaluation ``k`` applied (fitted, or taken from the given lambdas;
    empty where it carries none; one row per set for :class:`LambdaSets`); ``recorded`` the states at the asked model times (the last state landing
    at a time wins: Heun's corrector); ``trajectory`` is set when asked for.
    """

    x: torch.Tensor
    fitted: list[np.ndarray]
    recorded: dict[float, torch.Tensor] = field(default_factory=dict)
    trajectory: Trajectory | None = None


def transform_columns(variant: str, d: torch.Tensor, previous: list[torch.Tensor], n_virtual: int):
    """``(base, columns)`` with ``d~ = base + sum_m p_m columns[m]`` (paper Eq. 8-10; the method chapter,
    variants compared in the paper).

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


class Transform:
    """The D-ODE transform's memory across evaluations: the earlier estimates ``d_prev`` (paper Eq. 10).

    Estimates are kept in the transform's prediction type ``space``, most recent first. The first
    evaluation of a noise-prediction transform sees the initial noise as its previous output (paper
    Supp. 10.1); a data-prediction transform has no correction there.
    """

    def __init__(self, variant: str, space: str, carries_lambda: list[bool], noise: torch.Tensor):
        self.variant, self.space, self.carries_lambda = variant, space, carries_lambda
        self.n_virtual = 1 if space == "eps" else 0
        self.previous: list[torch.Tensor] = [noise] if self.n_virtual else []

    def columns(self, k: int, estimate: torch.Tensor):
        """``(base, columns)`` of evaluation ``k``'s corrected estimate ``base + sum_m p_m columns[m]``."""
        if self.carries_lambda[k]:
            return transform_columns(self.variant, estimate, self.previous, self.n_virtual)
        # a stage re-solving its step's landing time (Heun's corrector): no lambda of its own, but its
        # estimate is still the next evaluation's d_prev
        return estimate, []

    def remember(self, estimate: torch.Tensor) -> None:
        self.previous.insert(0, estimate)
        if self.variant != "all":  # only D-DDIM-All looks further back than two outputs
            del self.previous[2 + self.n_virtual :]


# A fitter gets (evaluation index, landing point, x_base, columns J_m) and returns the parameters p_m.
Fitter = Callable[[int, Point, torch.Tensor, list], np.ndarray]


class LambdaSets:
    """Several settings of one run's D-ODE parameters, sampled side by side in one batch.

    The run's batch is ``len(values)`` copies of one noise batch of ``per_set`` samples, copy after copy;
    copy ``c`` applies ``values[c]`` (an array of :class:`~dode.Lambdas` rows, ``(nfe, width)``, NaN where
    an evaluation has no parameter). Every sample's path depends only on its own noise and parameters, so
    this is ``len(values)`` runs in one network call per evaluation instead of ``len(values)``: the joint
    fit's finite differences (:mod:`dode.joint`).
    """

    def __init__(self, values, per_set: int):
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 3:
            raise ValueError(f"values must have shape (sets, nfe, width), got {self.values.shape}")
        self.per_set = int(per_set)

    def params(self, k: int, n_columns: int) -> np.ndarray:
        """Evaluation ``k``'s parameters, one row per set: shape ``(sets, n_columns)``."""
        rows = self.values[:, k]
        used, rest = rows[:, :n_columns], rows[:, n_columns:]
        if np.any(np.isnan(used)) or np.any(~np.isnan(rest)):
            raise ValueError(
                f"these lambda sets do not hold {n_columns} parameter(s) for evaluation {k} in every set"
            )
        return used


def parameters(k, lands, base, columns, land, *, fitter: Fitter | None, lambdas) -> np.ndarray:
    """Evaluation ``k``'s D-ODE parameters, float64: fitted in closed form on the states ``land`` reaches
    (distillation), taken from ``lambdas`` (a :class:`~dode.Lambdas`: shape ``(n_columns,)``; a
    :class:`LambdaSets`: ``(sets, n_columns)``), or none."""
    if not columns:
        return np.zeros(0)
    if fitter is not None:
        x_base = land(base)
        jac = [land(base + v) - x_base for v in columns]
        return np.asarray(fitter(k, lands, x_base, jac), dtype=np.float64)
    if lambdas is not None:
        return np.asarray(lambdas.params(k, len(columns)), dtype=np.float64)
    return np.zeros(0)


def corrected_estimate(base: torch.Tensor, columns: list[torch.Tensor], params: np.ndarray) -> torch.Tensor:
    """``base + sum_m p_m columns[m]``; a 2-D ``params`` (:class:`LambdaSets`) has one row per copy of the
    batch, applied to that copy's samples."""
    out = base
    if params.ndim == 1:
        for p, v in zip(params, columns):
            out = out + float(p) * v
        return out
    per_sample = torch.from_numpy(params).to(base.device).repeat_interleave(base.shape[0] // len(params), 0)
    for m, v in enumerate(columns):
        out = out + per_sample[:, m].reshape(-1, *([1] * (v.ndim - 1))) * v
    return out


class FiniteCheck:
    """Whether every network output of a run was finite, kept on the outputs' device: one host sync per run
    (:meth:`raise_if_any`), and the first bad evaluation looked up only when there is one."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.flags: list[torch.Tensor] = []
        self.times: list[float] = []

    def note(self, raw: torch.Tensor, t: float) -> None:
        self.flags.append(torch.isfinite(raw).all())
        self.times.append(t)

    def raise_if_any(self) -> None:
        flags = torch.stack(self.flags)
        if bool(flags.all()):
            return
        k = int(torch.nonzero(~flags)[0, 0])
        raise FloatingPointError(
            f"non-finite network output at evaluation {k} of {self.plan.nfe} "
            f"(solver {self.plan.solver!r}, model time t={self.times[k]:.6g})"
        )


class Recorder:
    """What a run keeps besides its final state: the states at asked times, the whole trajectory."""

    def __init__(self, trajectory: bool, record_at: set[float] | None):
        self.record_at = record_at
        self.recorded: dict[float, torch.Tensor] = {}
        self.lists: dict[str, list] | None = None
        if trajectory:
            self.lists = {
                name: [] for name in ("states", "state_times", "outputs", "corrected", "eval_times")
            }

    def record(self, k, x, at, lands, x_next, raw, corrected) -> None:
        if self.record_at is not None and lands.t in self.record_at:
            self.recorded[lands.t] = x_next  # the last state landing at a time wins (Heun's corrector)
        if self.lists is None:
            return
        tr = self.lists
        if k == 0:
            tr["states"].append(x.detach().cpu())
            tr["state_times"].append(at.t)
        tr["states"].append(x_next.detach().cpu())
        tr["state_times"].append(lands.t)
        tr["outputs"].append(raw.detach().cpu())
        tr["corrected"].append(corrected.detach().cpu())
        tr["eval_times"].append(at.t)

    def trajectory(self, x: torch.Tensor, prediction: str) -> Trajectory | None:
        if self.lists is None:
            return None
        tr = self.lists
        return Trajectory(
            x=x,
            states=torch.stack(tr["states"]),
            state_times=torch.tensor(tr["state_times"], dtype=torch.float64),
            outputs=torch.stack(tr["outputs"]),
            corrected=torch.stack(tr["corrected"]),
            eval_times=torch.tensor(tr["eval_times"], dtype=torch.float64),
            prediction=prediction,
        )


class Evaluate:
    """The hook: one network evaluation of the loop (steps 1-5 of the module docstring)."""

    def __init__(self, denoiser, plan, transform, *, fitter, lambdas, recorder, progress):
        self.den, self.transform, self.recorder, self.progress = denoiser, transform, recorder, progress
        self.fitter, self.lambdas = fitter, lambdas
        self.native = denoiser.prediction
        self.solver_space = get_solver(plan.solver).space
        self.finite = FiniteCheck(plan)
        self.fitted: list[np.ndarray] = []
        self.k = 0

    def __call__(self, x: torch.Tensor, at: Point, lands: Point, update, combine=None):
        k, space = self.k, self.transform.space

        def to(d, src, dst):
            return convert(d, x, at.alpha, at.sigma, src, dst)

        raw = self.den(x, at.t)
        self.finite.note(raw, at.t)
        if combine is None:
            estimate = to(raw, self.native, space)
        else:  # multistep: the solver's own combined estimate, formed in its own space
            estimate = to(combine(to(raw, self.native, self.solver_space)), self.solver_space, space)
        base, columns = self.transform.columns(k, estimate)

        def land(d):
            return update(to(d, space, self.solver_space))

        if self.fitter is not None and columns:
            self.finite.raise_if_any()  # fitting syncs anyway; never fit on a non-finite output
        params = parameters(k, lands, base, columns, land, fitter=self.fitter, lambdas=self.lambdas)
        self.fitted.append(params)
        corrected = corrected_estimate(base, columns, params)
        d_solver = to(corrected, space, self.solver_space)
        x_next = update(d_solver)

        self.transform.remember(estimate)
        self.recorder.record(k, x, at, lands, x_next, raw, corrected)
        if self.progress is not None:
            self.progress.update(1)
        self.k += 1
        return x_next, d_solver


def run(
    denoiser: Denoiser,
    noise: torch.Tensor,
    plan: Plan,
    *,
    lambdas: Lambdas | LambdaSets | None = None,
    variant: str = "d-ode",
    space: str = "native",
    stages: str = "per_time",
    fitter: Fitter | None = None,
    trajectory: bool = False,
    record_at: set[float] | None = None,
    progress=None,
) -> Run:
    """The sampling loop: start from ``x_T`` and let the solver take each planned step through the hook.

    ``space`` is the prediction type the D-ODE transform acts in (``native``: the model's own).
    ``lambdas``: a :class:`LambdaSets` runs several parameter settings at once on ``noise``, which must then
    be its sets' copies of one batch (``noise.repeat``).
    """
    if isinstance(lambdas, LambdaSets) and noise.shape[0] != len(lambdas.values) * lambdas.per_set:
        raise ValueError(
            f"noise of a LambdaSets run must hold {len(lambdas.values)} sets x {lambdas.per_set} samples, "
            f"got {noise.shape[0]}"
        )
    solver = get_solver(plan.solver)
    noise = noise.to(torch.float64)
    space = denoiser.prediction if space == "native" else space
    transform = Transform(variant, space, lambda_evaluations(plan, stages), noise)
    recorder = Recorder(trajectory, record_at)
    evaluate = Evaluate(
        denoiser, plan, transform, fitter=fitter, lambdas=lambdas, recorder=recorder, progress=progress
    )
    x = denoiser.schedule.initial_state(noise, plan.start.t)
    history: list[torch.Tensor] = []  # a multistep solver's earlier raw outputs (its own to keep)
    for step in plan.steps:
        x = solver.step(evaluate, x, step, history)
    if evaluate.k != plan.nfe:
        raise AssertionError(
            f"internal error: {plan.solver} made {evaluate.k} network evaluations, planned {plan.nfe}"
        )
    evaluate.finite.raise_if_any()
    return Run(x, evaluate.fitted, recorder.recorded, recorder.trajectory(x, denoiser.prediction))


def check_noise(noise) -> torch.Tensor:
    """``noise`` checked to be a finite, non-empty batch tensor."""
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
    solver: ``ddim``, ``ipndm``, ``deis``, ``dpm_solver``, ``dpm_solver++``, ``unipc`` or ``edm`` (Heun; odd
        NFE).
    nfe: number of network evaluations.
    grid: ``time_uniform``, ``logsnr_uniform``, ``quadratic``, ``edm`` or an explicit tensor of model times
        (default: ``time_uniform`` on VP, ``edm`` on EDM schedules).
    lambdas: fitted :class:`~dode.Lambdas` (the D-ODE solver), or ``Lambdas.constant_value(c)``; they carry
        their variant, transform space and ``stages`` (which evaluations have a lambda).
    trajectory: return a :class:`Trajectory` with every state and denoising output instead of the samples.
    progress: show a tqdm bar (stderr) over the network evaluations.
    options: solver options, e.g. ``order`` for ``deis``, ``dpm_solver`` and ``unipc``, ``stage_times`` for
        ``dpm_solver``, ``solver_type`` (``bh1``, ``bh2``) for ``unipc``, ``lower_order_final`` for ``ipndm``,
        ``deis``, ``dpm_solver++`` and ``unipc`` (book/method.md, first and last steps).

    Returns float64 samples (or a Trajectory).
    """
    noise = check_noise(noise)
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
        result = run(
            denoiser,
            noise,
            plan,
            lambdas=lambdas,
            variant=variant,
            space=space,
            stages=stages,
            trajectory=trajectory,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    return result.trajectory if trajectory else result.x
