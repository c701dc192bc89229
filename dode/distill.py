"""Closed-form distillation of a D-ODE solver (paper Sec. 3.3, Algorithm 1; the method chapter, distillation).

1. One fitting batch of initial noises.
2. Teacher: DDIM (Euler in sigma on data-prediction models) by default, on a grid that *refines the student's
   own landing times* K-fold in the grid's variable; its states at those times are the targets. (The
   authors' code takes targets at teacher indices ``(i+1)K`` of a grid that does not refine the student's,
   so most targets sit at other times than the student state they are matched to: the method chapter, flaws
   of the authors' released code.)
3. Student: the D-solver on the same noise, stage by stage. At each network evaluation the parameters are
   fitted in closed form against the teacher state at that evaluation's landing time, applied, and the run
   goes on from the corrected state (sequential fitting).
4. The frozen parameters are returned as :class:`~dode.Lambdas` with everything that identifies them.

The fit runs inside the one sampling loop through its hook (:class:`dode.sampling.Evaluate`), so
every solver -- multistep, singlestep multi-stage, Heun -- is distilled by the same code.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dode.denoiser import Denoiser
from dode.grids import grid_key, refine
from dode.joint import check_fit_options, joint_fit
from dode.lambdas import Lambdas, check_transform
from dode.sampling import check_noise, run
from dode.solvers import Point, get_solver, make_plan

__all__ = ["distill", "least_squares", "FITS", "FIT_METHODS"]


def least_squares(residual: torch.Tensor, columns: list[torch.Tensor]) -> np.ndarray:
    """``argmin_p || residual - sum_m p_m columns[m] ||^2`` over the whole batch, in float64 (Eq. 13-14).

    One column is the paper's closed form ``<r, v> / <v, v>``; several columns (the multi-parameter
    variants) are solved by the normal equations with a pseudo-inverse, which tolerates collinear columns.
    """
    r = residual.reshape(-1).to(torch.float64)
    A = torch.stack([c.reshape(-1).to(torch.float64) for c in columns], dim=1)
    gram = A.T @ A
    if len(columns) == 1:
        g = float(gram[0, 0])
        return np.array([float(A[:, 0] @ r) / g if g > 0 else 0.0])
    return (torch.linalg.pinv(gram, hermitian=True) @ (A.T @ r)).cpu().numpy()


def _ls_fitter(targets):
    def fit(k: int, lands: Point, x_base: torch.Tensor, jac: list[torch.Tensor]) -> np.ndarray:
        return least_squares(targets[lands.t] - x_base, jac)

    return fit


#: fit methods: name -> factory(targets) -> fitter(k, lands, x_base, jac) -> params
FITS = {"ls": _ls_fitter}
#: every ``fit=`` of :func:`distill`: the greedy closed forms, and ``joint`` (greedy, then refined jointly
#: on the final sample by :func:`dode.joint.joint_fit`)
FIT_METHODS = (*FITS, "joint")


def teacher_targets(denoiser: Denoiser, noise: torch.Tensor, plan, K: int, teacher: str = "ddim"):
    """Run the teacher on a grid that refines the student's landing times K-fold; return its plan and its
    states at exactly those times (``{model time: state}``)."""
    if not get_solver(teacher).teacher_ok:
        raise ValueError(f"teacher must be a solver whose steps end on grid points, not {teacher!r}")
    schedule = denoiser.schedule
    unique_landing = list(dict.fromkeys(plan.landing_times))  # Heun's two stages land on the same time
    coarse = torch.tensor([plan.start.t, *unique_landing], dtype=torch.float64)
    teacher_options = plan.options if teacher == plan.solver else {}
    teacher_plan = make_plan(schedule, teacher, None, refine(schedule, plan.grid, coarse, K), teacher_options)
    return teacher_plan, run(denoiser, noise, teacher_plan, record_at=set(unique_landing)).recorded


def distill(
    denoiser: Denoiser,
    noise: torch.Tensor,
    solver: str = "ddim",
    nfe: int = 10,
    K: int = 10,
    *,
    grid=None,
    teacher: str | None = None,
    variant: str = "d-ode",
    space: str = "native",
    stages: str = "per_time",
    fit: str = "ls",
    fit_options: dict | None = None,
    seed: int | None = None,
    teacher_run=None,
    **options,
) -> Lambdas:
    """Fit the D-ODE parameters of ``solver`` at ``nfe`` on the fitting batch ``noise`` (B = batch size).

    Parameters
    ----------
    K: the teacher takes K times more steps, on a grid refining the student's landing times.
    teacher: the teacher solver (default ``ddim``; ``ipndm``/``deis`` may teach themselves, Supp. 11;
        ``edm`` runs Heun as the teacher). Solver options are shared when the teacher is the solver itself.
    variant: ``d-ode`` (Eq. 10), ``d-ode-2``, ``sep``, ``all`` (the method chapter, variants).
    space: prediction type the transform acts in (``native``: the model's own, as in the paper).
    stages: which evaluations carry a lambda: ``per_time`` (one per landing time of the plan) or
        ``per_stage`` (the paper's, every stage). They differ only for ``edm``, whose Heun corrector gets no
        lambda of its own under ``per_time`` (why: :func:`dode.sampling.lambda_evaluations`).
    fit: ``ls`` (the paper's greedy closed form, stage by stage) or ``joint`` (all lambdas together on the
        final sample, started from ``ls``: :func:`dode.joint.joint_fit`).
    fit_options: options of the joint fit (:data:`dode.joint.JOINT_DEFAULTS`).
    seed: the seed the fitting noise was drawn with, recorded with the lambdas.
    teacher_run: ``(teacher_plan, targets)`` from :func:`teacher_targets` on the *same* noise, plan, K and
        teacher, to fit several variants on one teacher run (the teacher dominates the cost); checked to
        hold exactly this plan's landing times.
    """
    noise = check_noise(noise)
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")
    check_transform(variant, space, stages)  # before the teacher runs
    if fit not in FIT_METHODS:
        raise ValueError(f"fit must be one of {FIT_METHODS}, got {fit!r}")
    fit_options = check_fit_options(fit, fit_options)
    greedy_fit = "ls" if fit == "joint" else fit
    plan = make_plan(denoiser.schedule, solver, nfe, grid, options)
    t0 = time.perf_counter()
    if teacher_run is None:
        teacher_plan, targets = teacher_targets(denoiser, noise, plan, K, teacher=teacher or "ddim")
    else:
        teacher_plan, targets = teacher_run
        missing = sorted(set(plan.landing_times) - set(targets))
        if missing or teacher_plan.solver != (teacher or "ddim"):
            raise ValueError(
                "teacher_run was computed for another student plan or teacher "
                f"(teacher {teacher_plan.solver!r}, missing landing times {missing[:3]}): run teacher_targets "
                "with the same noise, solver, NFE, grid, K and teacher, or pass teacher_run=None"
            )
    t1 = time.perf_counter()
    student = run(
        denoiser, noise, plan, variant=variant, space=space, stages=stages, fitter=FITS[greedy_fit](targets)
    )
    t2 = time.perf_counter()

    width = max([len(p) for p in student.fitted] + [1])
    values = np.full((plan.nfe, width), np.nan)
    for k, params in enumerate(student.fitted):
        values[k, : len(params)] = params
    greedy = Lambdas(
        values,
        solver=solver,
        nfe=plan.nfe,
        grid=grid_key(grid),
        options=plan.options,
        variant=variant,
        space=space,
        stages=stages,
        model=denoiser.name,
        checkpoint=denoiser.info.get("checkpoint_sha256"),
        schedule=denoiser.schedule.describe(),
        K=int(K),
        B=int(noise.shape[0]),
        seed=seed,
        teacher=teacher_plan.solver,
        fit=greedy_fit,
        landing_times=plan.landing_times,
        info={"teacher_nfe": teacher_plan.nfe, "teacher_seconds": t1 - t0, "student_seconds": t2 - t1},
    )
    if fit == "joint":
        return joint_fit(denoiser, noise, greedy, targets, grid=grid, **fit_options, **options)
    return greedy
