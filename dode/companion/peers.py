"""D-solvers against the samplers a user would pick instead: diffusers' schedulers on the same network.

A diffusers scheduler drives a discrete VP noise-prediction model through ``unet(x, t)`` with its own
timesteps; :func:`diffusers_sample` wraps a :class:`~dode.Denoiser` as that ``unet`` (the model time of a
discrete VP model *is* the training index, so diffusers' timesteps are passed through unchanged) and starts
from the same standard normal noise as dode (times ``scheduler.init_noise_sigma``, 1 for these schedulers).
Network evaluations are counted by that wrapper, so a scheduler that adds a final denoising call is charged
for it.

Samplers are named by one string each (the results file's ``sampler`` coordinate):

* ``diffusers:<peer>`` -- a scheduler of :data:`PEERS`, diffusers' defaults except where noted there;
* ``dode:<solver label>:<grid>:<method>`` -- a dode solver on a named grid (``time_uniform``: the paper's;
  ``logsnr_uniform``; ``edm``: EDM's rho = 7), ``method`` ``base``, ``d-ode`` (the paper's greedy fit) or
  ``d-ode-joint`` (:mod:`dode.joint`), fitted with the paper's teachers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dode.companion import experiments as ex
from dode.companion.labels import method_label
from dode.denoiser import Denoiser
from dode.distill import distill
from dode.sampling import sample

__all__ = [
    "PEERS",
    "PEER_LABELS",
    "diffusers_sample",
    "make_scheduler",
    "peers_sweep",
    "parse_sampler",
    "sampler_label",
]

#: diffusers peers: name -> (scheduler class, config overrides of diffusers' defaults). DDIM takes "trailing"
#: timesteps (its default "leading" spacing never starts from t = T - 1; diffusers' docs recommend "trailing"
#: for few steps) and no clipping of its data predictions (clip_sample, on by default for DDIM only)
PEERS = {
    # bh1's default last step into sigma = 0 returns NaN in diffusers 0.42 (its B(h) = -h is infinite there):
    # it ends on t = 0 instead, one evaluation like every other step
    "unipc_bh1": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "unipc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "dpmpp_3m_karras": ("DPMSolverMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}),
    # ends on t = 0 like dode's VP grids instead of sigma = 0: the same timesteps as dode's DPM-Solver++
    "dpmpp_2m_sigma_min": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "final_sigmas_type": "sigma_min"},
    ),
    "deis": ("DEISMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
}
PEER_LABELS = {
    "unipc_bh1": "UniPC bh1",
    "unipc_bh2": "UniPC bh2",
    "dpmpp_2m": "DPM-Solver++(2M)",
    "dpmpp_2m_karras": "DPM-Solver++(2M) Karras",
    "dpmpp_3m": "DPM-Solver++(3M)",
    "dpmpp_3m_karras": "DPM-Solver++(3M) Karras",
    "dpmpp_2m_sigma_min": "DPM-Solver++(2M) to t=0",
    "deis": "DEIS",
    "ddim": "DDIM (trailing)",
}
_DODE_METHODS = ("base", "d-ode", "d-ode-joint")


def make_scheduler(peer: str, denoiser: Denoiser):
    """The diffusers scheduler of ``peer`` on ``denoiser``'s discrete VP schedule (its own betas)."""
    import diffusers

    from dode.schedules import VPSchedule

    if peer not in PEERS:
        raise ValueError(f"peer must be one of {sorted(PEERS)}, got {peer!r}")
    if not isinstance(denoiser.schedule, VPSchedule) or denoiser.prediction != "eps":
        raise ValueError("diffusers' schedulers drive discrete VP noise-prediction models only")
    ac = denoiser.schedule.alphas_cumprod.numpy()
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    name, overrides = PEERS[peer]
    return getattr(diffusers, name)(num_train_timesteps=len(ac), trained_betas=betas, **overrides)


def diffusers_sample(denoiser: Denoiser, noise: torch.Tensor, peer: str, steps: int):
    """``(samples, network evaluations)`` of the diffusers scheduler ``peer`` in ``steps`` steps."""
    scheduler = make_scheduler(peer, denoiser)
    scheduler.set_timesteps(steps, device=noise.device)
    calls = 0
    x = noise.to(torch.float64) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        calls += 1
        eps = denoiser(scheduler.scale_model_input(x, t), float(t))
        x = scheduler.step(eps, t, x).prev_sample
    return x, calls


def parse_sampler(name: str) -> dict:
    """``{"family": "diffusers", "peer": ...}`` or ``{"family": "dode", "solver", "grid", "method"}``."""
    family, _, rest = name.partition(":")
    if family == "diffusers" and rest in PEERS:
        return {"family": family, "peer": rest}
    parts = rest.split(":")
    if family == "dode" and len(parts) == 3 and parts[2] in _DODE_METHODS:
        ex.solver_spec(parts[0])
        return {"family": family, "solver": parts[0], "grid": parts[1], "method": parts[2]}
    raise ValueError(
        f"sampler must be 'diffusers:<one of {sorted(PEERS)}>' or 'dode:<solver>:<grid>:<method in "
        f"{_DODE_METHODS}>', got {name!r}"
    )


def sampler_label(name: str) -> str:
    """What a figure calls a sampler."""
    p = parse_sampler(name)
    if p["family"] == "diffusers":
        return f"diffusers {PEER_LABELS[p['peer']]}"
    grid = {"time_uniform": "", "logsnr_uniform": ", logSNR grid", "edm": ", EDM grid"}.get(
        p["grid"], p["grid"]
    )
    return method_label(p["solver"], p["method"]) + grid


def peers_sweep(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True) -> Path:
    """Fill ``<results_dir>/<stem>.nc`` with ``<metric>``, ``network_evaluations``, ``fit_seconds`` and
    ``sample_seconds`` over sampler x nfe (one seed). ``cfg``: ``model``, ``samplers`` (names, see the module
    docstring), ``nfes``, ``joint_nfes`` (NFEs at which the joint fits run: they cost tens of greedy fits),
    ``seed``, ``K``, ``B``, ``n_samples``, ``batch_size``, ``device``. Every sampler draws the seed's
    evaluation noise, batch by batch."""
    import time

    from dode.metrics import FeatureStats
    from dode.progress import progress_bar

    for name in cfg["samplers"]:
        parse_sampler(name)
    den = ex.load_model(cfg["model"], device=cfg["device"], model_options=cfg.get("model_options"))
    metric_name, metric = ex.make_metric(den, device=cfg["device"], fid_stats=cfg.get("fid_stats"))
    shape = ex.sample_shape(den)
    dims = {"sampler": list(cfg["samplers"]), "nfe": list(cfg["nfes"])}
    key = {k: cfg.get(k) for k in ("K", "B", "n_samples", "seed")} | {"metric": metric_name}
    store = ex.open_store(results_dir, stem, dims, key, cfg, {den.name: ex.identity(den, metric)})
    units = [(s, n) for s in cfg["samplers"] for n in cfg["nfes"]]
    for name, nfe in progress_bar(units, desc="samplers", disable=not progress):
        cell = {"sampler": name, "nfe": nfe}
        p = parse_sampler(name)
        if store.has(metric_name, **cell):
            continue
        if p.get("method") == "d-ode-joint" and nfe not in cfg["joint_nfes"]:
            continue  # the cell stays NaN
        fit_seconds, draw = 0.0, None
        if p["family"] == "diffusers":

            def draw(z, peer=p["peer"], nfe=nfe):
                return diffusers_sample(den, z, peer, nfe)

        else:
            solver, options = ex.solver_spec(p["solver"])
            lam = None
            if p["method"] != "base":
                t0 = time.perf_counter()
                fit_noise = ex.noise(cfg["seed"], "fit", cfg["B"], shape, device=cfg["device"])
                fit = "joint" if p["method"] == "d-ode-joint" else "ls"
                teacher = ex.teacher_of(p["solver"], "paper")
                lam = distill(
                    den, fit_noise, solver, nfe, cfg["K"], grid=p["grid"], teacher=teacher, fit=fit, **options
                )
                fit_seconds = time.perf_counter() - t0

            def draw(z, solver=solver, nfe=nfe, grid=p["grid"], lam=lam, options=options):
                return sample(den, z, solver, nfe, grid=grid, lambdas=lam, **options), nfe

        stats, seconds, evaluations = FeatureStats(), 0.0, set()
        for start in range(0, cfg["n_samples"], cfg["batch_size"]):
            n = min(cfg["batch_size"], cfg["n_samples"] - start)
            z = ex.noise(cfg["seed"], "eval", n, shape, start=start, device=cfg["device"])
            t0 = time.perf_counter()
            x, counted = draw(z)
            seconds += time.perf_counter() - t0
            evaluations.add(counted)
            stats.update(metric.features(x.float()))
        if len(evaluations) != 1:
            raise AssertionError(
                f"{name} made {sorted(evaluations)} network evaluations in different batches"
            )
        with store.together():
            store.put(metric_name, metric(stats), **cell)
            store.put("network_evaluations", float(evaluations.pop()), **cell)
            store.put("fit_seconds", fit_seconds, **cell)
            store.put("sample_seconds", seconds, **cell)
    return store.path


def peers_figure(ds, metric: str):
    """FD (or FID) against NFE: diffusers' schedulers in grey, dode's base solvers dashed, D-solvers solid
    (greedy fit: circles, joint fit: squares); one colour per dode solver."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5))
    nfes = ds.coords["nfe"].values
    solvers = sorted(
        {p["solver"] for p in map(parse_sampler, ds.coords["sampler"].values.tolist()) if "solver" in p}
    )
    colours = {s: f"C{i}" for i, s in enumerate(solvers)}
    for name in ds.coords["sampler"].values.tolist():
        values = ds[metric].sel({"sampler": name})
        if values.isnull().all():
            continue
        p = parse_sampler(name)
        if p["family"] == "diffusers":
            style = dict(color="0.6", linestyle="-", marker=".", linewidth=1)
        else:
            dash = {"time_uniform": "-", "logsnr_uniform": "-.", "edm": ":"}.get(p["grid"], "-")
            marker = {"base": "x", "d-ode": "o", "d-ode-joint": "s"}[p["method"]]
            style = dict(
                color=colours[p["solver"]],
                linestyle="--" if p["method"] == "base" else dash,
                marker=marker,
                linewidth=1.6 if p["method"] != "base" else 1,
            )
        ax.plot(nfes, values, label=sampler_label(name), ms=4, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE (network evaluations, counted)")
    ax.set_ylabel(metric.upper())
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig
