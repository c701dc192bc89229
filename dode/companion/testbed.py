"""The exact test bed's sweep: distance to the exact ODE solution against NFE, no metric noise.

On a Gaussian mixture (:mod:`dode.gmm`) the probability-flow ODE is solved to ~1e-10, so every sampler's
error is measured directly: the mean L2 distance of its samples to the exact solution from the same initial
noise. For each (solver, NFE) the base solver, the greedy D-solver (the paper's fit, ``fit="ls"``) and the
joint D-solver (``fit="joint"``, :mod:`dode.joint`) are fitted on one batch and measured on it and on fresh
noise, under two teachers: DDIM (what the sweeps used) and the solver itself (the paper's choice for iPNDM and
DEIS, Supp. 11; only solvers whose steps end on grid points can teach).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dode.companion.experiments import open_store, solver_spec
from dode.distill import distill
from dode.gmm import GaussianMixture
from dode.sampling import sample
from dode.schedules import EDMSchedule, VPSchedule
from dode.solvers import get_solver, make_plan

__all__ = ["TESTBED_METHODS", "TEACHERS", "testbed_sweep", "testbed_figure"]

#: methods of the test bed: the plain solver, the paper's greedy fit, the joint fit
TESTBED_METHODS = {"base": None, "d-ode": "ls", "d-ode-joint": "joint"}
#: the teacher dimension: DDIM for every solver, or the solver teaching itself
TEACHERS = ("ddim", "self")
_SCHEDULES = {"vp": (VPSchedule.linear, "eps"), "edm": (EDMSchedule, "x0")}


def _teacher(label: str, teacher: str) -> str | None:
    """The dode solver that teaches ``label`` (None: it cannot teach itself)."""
    solver, _ = solver_spec(label)
    if teacher == "ddim":
        return "ddim"
    return solver if get_solver(solver).teacher_ok else None


def testbed_sweep(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True) -> Path:
    """Fill ``<results_dir>/<stem>.nc``: ``distance_fresh`` and ``distance_fit`` (mean L2 distance to the
    exact solution on fresh noise / on the fitting batch) and ``fit_seconds``, ``fit_runs`` (sampling runs of
    the fit) over schedule x solver x method x teacher x nfe. ``cfg``: ``schedules``, ``solvers``, ``nfes``,
    ``K``, ``B`` (fitting noises), ``n_fresh``, ``gmm`` (``n_components``, ``dim``, ``seed``), ``seed``."""
    from dode.progress import progress_bar

    for name in cfg["schedules"]:
        if name not in _SCHEDULES:
            raise ValueError(f"schedules must be among {sorted(_SCHEDULES)}, got {name!r}")
    mixture = GaussianMixture.random(**cfg["gmm"])
    dims = {
        "schedule": list(cfg["schedules"]),
        "solver": list(cfg["solvers"]),
        "method": list(TESTBED_METHODS),
        "teacher": list(TEACHERS),
        "nfe": list(cfg["nfes"]),
    }
    key = {k: cfg[k] for k in ("K", "B", "n_fresh", "gmm", "seed")}
    store = open_store(results_dir, stem, dims, key, cfg, None)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    fit_noise = torch.randn(cfg["B"], mixture.dim, generator=g, dtype=torch.float64)
    fresh = torch.randn(cfg["n_fresh"], mixture.dim, generator=g, dtype=torch.float64)
    exact: dict[tuple, tuple] = {}  # (schedule, start, end) -> exact solutions (fit, fresh)
    done: dict[tuple, dict] = {}
    units = [
        (s, lb, n, m, t)
        for s in cfg["schedules"]
        for lb in cfg["solvers"]
        for n in cfg["nfes"]
        for m in TESTBED_METHODS
        for t in TEACHERS
    ]
    for sched_name, label, nfe, method, teacher in progress_bar(units, desc="test bed", disable=not progress):
        cell = dict(schedule=sched_name, solver=label, nfe=nfe, method=method, teacher=teacher)
        if store.has("distance_fresh", **cell):
            continue
        make_schedule, prediction = _SCHEDULES[sched_name]
        schedule = make_schedule()
        den = mixture.denoiser(schedule, prediction)
        solver, options = solver_spec(label)
        plan = make_plan(schedule, solver, nfe, None, options)
        ends = (sched_name, plan.start.t, plan.landing_times[-1])
        if ends not in exact:
            exact[ends] = tuple(mixture.reference(z, schedule, *ends[1:]) for z in (fit_noise, fresh))
        teaching = _teacher(label, teacher)
        if method != "base" and teaching is None:
            continue  # a solver that cannot teach itself: the cell stays NaN
        # one measurement per distinct fit: the base solver has no teacher, DDIM teaching itself is DDIM's
        same = (sched_name, label, nfe, method, None if method == "base" else teaching)
        if same not in done:
            done[same] = _measure(den, fit_noise, fresh, exact[ends], label, nfe, cfg["K"], method, teaching)
        with store.together():
            for var, value in done[same].items():
                store.put(var, value, **cell)
    return store.path


def _measure(den, fit_noise, fresh, exact, label, nfe, K, method, teacher) -> dict:
    """One cell: fit (unless ``base``), then the distances to the exact solutions and the fit's cost."""
    solver, options = solver_spec(label)
    lam, out = None, {"fit_seconds": 0.0, "fit_runs": 0.0}
    if method != "base":
        lam = distill(den, fit_noise, solver, nfe, K, teacher=teacher, fit=TESTBED_METHODS[method], **options)
        info = lam.info
        seconds = info["teacher_seconds"] + info["student_seconds"] + info.get("joint_seconds", 0.0)
        out = {"fit_seconds": seconds, "fit_runs": float(info.get("joint_sampling_runs", 0))}
    for var, z, ref in (("distance_fit", fit_noise, exact[0]), ("distance_fresh", fresh, exact[1])):
        x = sample(den, z, solver, nfe, lambdas=lam, **options)
        out[var] = float((x - ref).norm(dim=1).mean())
    return out


_STYLE = {
    "base": ("k", "base solver"),
    "d-ode": ("C0", "greedy D- (paper's fit)"),
    "d-ode-joint": ("C3", "joint D-"),
}


def testbed_figure(ds, schedule: str, var: str = "distance_fresh"):
    """One panel per solver (two a row): ``var`` against NFE (log-log), the base solver in black, the greedy
    and joint D-solvers taught by DDIM (dashed) and by the solver itself (solid); one legend under them."""
    from dode.companion import plots
    from dode.companion.labels import SOLVER_NAMES

    solvers = ds.coords["solver"].values.tolist()
    fig, axes = plots.panel_grid(len(solvers), panel_height=2.6, sharey=True)
    nfes = ds.coords["nfe"].values
    for ax, label in zip(axes, solvers, strict=True):
        for method, (color, name) in _STYLE.items():
            for teacher, dash in (("ddim", "--"), ("self", "-")):
                if method == "base" and teacher == "ddim":
                    continue
                values = ds[var].sel(
                    {"schedule": schedule, "solver": label, "method": method, "teacher": teacher}
                )
                if method != "base" and label == "ddim" and teacher == "ddim":
                    continue  # DDIM teaching itself is the DDIM teacher: drawn once
                if values.isnull().all():
                    continue
                suffix = (
                    "" if method == "base" else f", taught by {'itself' if teacher == 'self' else 'DDIM'}"
                )
                ax.plot(nfes, values, dash, color=color, marker="o", ms=3, label=name + suffix)
        ax.set_title(SOLVER_NAMES.get(label, label))
        plots.nfe_axis(ax, nfes, log=True)
    for ax in axes:
        plots.log_axis(ax, "y")
        ax.set_ylabel("mean L2 distance\nto the exact solution")
    handles = {}
    for ax in axes:
        for h, lb in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lb, h)
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    return fig
