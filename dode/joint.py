"""The joint fit: all D-ODE parameters of a run fitted together on the student's final sample.

The paper's fit (:mod:`dode.distill`, ``fit="ls"``) is greedy: each lambda minimises the distance to the
teacher at its own landing time, given the lambdas before it. Nothing in it makes the *final* sample closer
to the teacher's, and on the exact Gaussian mixture it can leave a good solver (iPNDM, DEIS-3) farther from
the exact solution than with no lambda at all (book/method.md, "the joint fit"). The joint fit minimises

    F(theta) = (1 / B) sum_b || x_N(theta)_b - x_teacher_b ||^2
               + w (1 / B) sum_k sum_b || x_k(theta)_b - x_teacher(t_k)_b ||^2 / N

over every free parameter ``theta`` of the run at once (``x_k``: the state evaluation ``k`` lands on,
``w``: ``landing_weight``, 0 by default), by Levenberg-Marquardt started from the better of the greedy
lambdas and lambda = 0 (the base solver). A step is accepted only if it lowers ``F``, so on the fitting
batch the result is never farther from the teacher than either start.

The Jacobian with respect to the parameters is taken by forward finite differences, re-running the one
sampling loop (:func:`dode.sampling.run`) with one parameter perturbed at a time: every solver, schedule,
prediction type and variant gets the joint fit through the same loop, at the cost of ``P + 1`` sampling
runs of the fitting batch per iteration (the current point and ``P`` perturbations, ``P`` free
parameters), plus one per trial step. The ``P + 1`` runs of an iteration go through the loop as one batch
of ``(P + 1) B`` samples (:class:`dode.sampling.LambdaSets`; ``max_batch`` caps it), so an iteration makes
``nfe`` network calls for its Jacobian instead of ``(P + 1) nfe``: the same network evaluations per sample,
in fewer, larger calls (``benchmarks/joint_fit.py`` measures what that saves).

The fit stops once an accepted step lowers ``F`` by less than ``tol`` = 0.1 %. Measured on digits (B = 100,
four solvers at NFE 5 and 10): the first two or three steps give most of the decrease, and stopping at 0.1 %
keeps at least 99 % of the decrease that a 1e-7 tolerance reaches, with 3 times fewer sampling runs in all
(1.4-4.7 per fit; 3-9 iterations instead of 8-23). Broyden's rank-1 updates of the Jacobian between differenced ones were
tried and measured no cheaper at this tolerance (book/method.md, "the joint fit").
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dode.denoiser import Denoiser
from dode.grids import grid_key
from dode.lambdas import Lambdas
from dode.sampling import LambdaSets, run
from dode.solvers import make_plan

__all__ = ["joint_fit", "JOINT_DEFAULTS", "check_fit_options"]

#: the joint fit's options (``dode.distill(..., fit="joint", fit_options={...})``)
JOINT_DEFAULTS = {"landing_weight": 0.0, "max_iter": 30, "tol": 1e-3, "max_batch": None}


def check_fit_options(fit: str, fit_options: dict | None) -> dict:
    """The ``fit_options`` of :func:`dode.distill`, checked: only the joint fit takes any."""
    fit_options = dict(fit_options or {})
    allowed = sorted(JOINT_DEFAULTS) if fit == "joint" else []
    unknown = sorted(set(fit_options) - set(allowed))
    if unknown:
        raise ValueError(f"fit_options of fit={fit!r} may hold {allowed}, got {unknown}")
    return fit_options


def joint_fit(
    denoiser: Denoiser,
    noise: torch.Tensor,
    start: Lambdas,
    targets: dict[float, torch.Tensor],
    *,
    grid=None,
    landing_weight: float = JOINT_DEFAULTS["landing_weight"],
    max_iter: int = JOINT_DEFAULTS["max_iter"],
    tol: float = JOINT_DEFAULTS["tol"],
    max_batch: int | None = JOINT_DEFAULTS["max_batch"],
    **options,
) -> Lambdas:
    """Refine the greedy ``start`` lambdas jointly on the fitting batch ``noise``.

    ``targets``: the teacher's states at the plan's landing times (:func:`dode.distill.teacher_targets`);
    ``grid`` and ``options``: exactly those ``start`` was fitted with. ``landing_weight`` >= 0 adds the
    intermediate landing states to the objective (module docstring); ``max_iter`` bounds the
    Levenberg-Marquardt iterations; ``tol`` stops them once an accepted step lowers the objective by less
    than this fraction; ``max_batch`` caps the samples of one batched pass (None: all the runs of an
    iteration's Jacobian in one pass; the fitting batch size: one run per pass, as unbatched). Returns
    :class:`~dode.Lambdas` with ``fit="joint"``; ``info`` holds the objective of the base solver, of the
    greedy start and of the result, its value after each accepted step (``joint_objectives``, from the
    start's), the sampling runs of the fitting batch, the batched passes of the sampling loop they took,
    the network calls and per-sample network evaluations, and the seconds spent.
    """
    if start.constant:
        raise ValueError("start must be fitted per-evaluation lambdas (dode.distill), not a constant Lambdas")
    if not (np.isfinite(landing_weight) and landing_weight >= 0):
        raise ValueError(f"landing_weight must be a finite number >= 0, got {landing_weight!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if max_batch is not None and (
        not isinstance(max_batch, (int, np.integer)) or isinstance(max_batch, bool) or max_batch < 1
    ):
        raise ValueError(f"max_batch must be None or an integer >= 1, got {max_batch!r}")
    landing = [float(t) for t in start.landing_times]
    missing = sorted(set(landing) - set(targets))
    if missing:
        raise ValueError(f"targets lack the landing times {missing[:3]} of these lambdas")
    t0 = time.perf_counter()
    plan = make_plan(denoiser.schedule, start.solver, start.nfe, grid, options)
    start.check_compatible(plan, denoiser, grid_key(grid))
    free = ~np.isnan(start.values)  # the entries a run actually uses (NaN: no parameter there)
    n_batch = noise.shape[0]
    final_target = targets[landing[-1]].reshape(n_batch, -1)
    landing_targets = torch.stack([targets[t].reshape(n_batch, -1) for t in landing])
    # residual scaled so that ||r||^2 is the objective F of the module docstring
    w_final = 1.0 / np.sqrt(n_batch)
    w_landing = np.sqrt(landing_weight / (n_batch * len(landing)))
    runs, passes = 0, 0

    def lambdas_of(theta: np.ndarray) -> Lambdas:
        values = np.full_like(start.values, np.nan)
        values[free] = theta
        return Lambdas(values, **start.metadata(), landing_times=start.landing_times)

    def residuals(thetas: list[np.ndarray]) -> list[torch.Tensor]:
        """Each parameter vector's residual, float64, scaled so that its squared norm is F: as many vectors
        in one pass of the sampling loop as ``max_batch`` allows (:class:`dode.sampling.LambdaSets`)."""
        nonlocal runs, passes
        out = []
        per_pass = len(thetas) if max_batch is None else max(1, max_batch // n_batch)
        for first in range(0, len(thetas), per_pass):
            group = thetas[first : first + per_pass]
            result = run(
                denoiser,
                noise.repeat(len(group), *([1] * (noise.ndim - 1))),
                plan,
                lambdas=LambdaSets([lambdas_of(theta).values for theta in group], per_set=n_batch),
                variant=start.variant,
                space=start.space,
                stages=start.stages,
                trajectory=landing_weight > 0,
            )
            runs, passes = runs + len(group), passes + 1
            x = result.x.reshape(len(group), n_batch, -1)
            if landing_weight > 0:
                states = result.trajectory.states[1:].reshape(len(landing), len(group), n_batch, -1)
                states = states.to(landing_targets)
            for c in range(len(group)):
                parts = [(x[c] - final_target) * w_final]
                if landing_weight > 0:
                    parts.append((states[:, c] - landing_targets) * w_landing)
                out.append(torch.cat([p.reshape(-1) for p in parts]).to(torch.float64))
        return out

    def objective(r: torch.Tensor) -> float:
        return float((r**2).sum()) if torch.isfinite(r).all() else np.inf

    greedy = start.values[free].astype(np.float64)
    zero = np.zeros_like(greedy)
    r_greedy, r_zero = residuals([greedy, zero])
    f_greedy, f_zero = objective(r_greedy), objective(r_zero)
    theta, f = (greedy, f_greedy) if f_greedy <= f_zero else (zero, f_zero)

    # forward differences: the step balances truncation against the rounding of the network's dtype
    h_rel = float(np.sqrt(torch.finfo(denoiser.dtype).eps))
    mu, accepted, iterations, trace = 1e-3, 0, 0, [f]
    while iterations < max_iter:
        iterations += 1
        h = h_rel * np.maximum(1.0, np.abs(theta))
        # the current point and every perturbed run of the iteration in one batched pass (as few passes as
        # max_batch allows): the differences then come from network calls on batches of one size, whose
        # rounding (float32 networks) can depend on that size
        sets = [theta]
        for i in range(theta.size):
            sets.append(theta.copy())
            sets[-1][i] += h[i]
        r, *shifted = residuals(sets)
        J = torch.stack([(r_i - r) / h[i] for i, r_i in enumerate(shifted)], dim=1)
        JtJ = (J.T @ J).cpu().numpy()
        g = (J.T @ r).cpu().numpy()
        improved = False
        while mu < 1e12:  # Levenberg-Marquardt: damp towards gradient descent until a step lowers F
            A = JtJ + mu * np.diag(np.maximum(np.diag(JtJ), 1e-12))
            trial = theta - np.linalg.lstsq(A, g, rcond=None)[0]
            try:
                f_trial = objective(residuals([trial])[0])
            except FloatingPointError:  # a step so long that the network diverged: reject it like any other
                f_trial = np.inf
            if f_trial < f:
                decrease = (f - f_trial) / max(f, 1e-300)
                theta, f = trial, f_trial
                mu, improved, accepted = max(mu / 3.0, 1e-9), True, accepted + 1
                trace.append(f)
                break
            mu *= 4.0
        if not improved or decrease < tol:
            break

    info = {
        **start.info,
        "greedy_lambdas": start.values.tolist(),
        "objective_base": f_zero,
        "objective_greedy": f_greedy,
        "objective_joint": f,
        "landing_weight": float(landing_weight),
        "joint_iterations": iterations,
        "joint_accepted_steps": accepted,
        "joint_objectives": trace,
        "joint_sampling_runs": runs,
        "joint_sampling_passes": passes,
        "joint_network_calls": passes * plan.nfe,
        "joint_network_evaluations": runs * plan.nfe * n_batch,
        "joint_seconds": time.perf_counter() - t0,
    }
    meta = {**start.metadata(), "fit": "joint"}
    return Lambdas(lambdas_of(theta).values, **meta, landing_times=start.landing_times, info=info)
