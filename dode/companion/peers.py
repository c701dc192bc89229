"""D-solvers against the samplers a user would pick instead: diffusers' schedulers on the same network.

A diffusers scheduler drives a network ``unet(model_input, timestep)`` through its own loop:
``model_input = scheduler.scale_model_input(x, t)``, then ``x = scheduler.step(unet(model_input, t), t, x)``.
:func:`diffusers_sample` runs exactly that loop with a :class:`~dode.Denoiser` behind ``unet``, in one of
three conventions (:class:`Peer`), read from the schedulers' code:

* ``vp`` -- a discrete VP noise-prediction model on its own betas: diffusers' timesteps *are* the model
  time, the input is the state itself (``init_noise_sigma`` = 1) and the output is the noise prediction;
* ``edm`` -- diffusers' EDM schedulers (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``) on an
  EDM-schedule model: the state is ``x = x0 + sigma * noise``, the input ``c_in x`` with
  ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``, the timestep ``log(sigma) / 4``, and the output EDM's raw
  network ``F``, which the scheduler preconditions to ``D = c_skip x + c_out F`` (Karras et al. 2022, Eq. 7);
* ``karras`` -- a discrete k-diffusion-style scheduler (``HeunDiscreteScheduler``) on the same state,
  its sigmas EDM's rho = 7 ones between the model's ``sigma_min`` and ``sigma_max``: the input is
  ``x / sqrt(sigma^2 + 1)`` and the output the data prediction (``prediction_type="sample"``).

The network is evaluated at the sigma the scheduler scaled its input with (``scheduler.sigmas[i]`` at the
``i``-th call), on the state recovered from that input, so the scheduler's own scaling is what the network
sees. Every run starts from the same standard normal noise as dode: the state ``sigma_max * noise`` on EDM
models (dode's and EDM's start; the EDM schedulers' ``init_noise_sigma``, ``sqrt(sigma_max^2 + 1)``, is the
VP-latent convention of the pipelines that use them) and the noise itself on VP models. Network evaluations
are counted by the wrapper, so a scheduler that adds a final denoising call is charged for it.

Samplers are named by one string each (the results file's ``sampler`` coordinate):

* ``diffusers:<peer>`` -- a scheduler of :data:`PEERS`, diffusers' defaults except where noted there;
* ``dode:<solver label>:<grid>:<method>`` -- a dode solver on a named grid (``time_uniform``: the paper's on
  VP models; ``logsnr_uniform``; ``edm``: EDM's rho = 7, the paper's on EDM models; ``gits``: GITS's grid
  fitted to the model on the fitting noise, :func:`dode.gits.fit_grid`, its cost in ``fit_seconds``), ``method`` ``base``,
  ``d-ode`` (the paper's greedy fit) or ``d-ode-joint`` (:mod:`dode.joint`), fitted with the paper's teachers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dode.companion import experiments as ex
from dode.companion.labels import method_label
from dode.denoiser import Denoiser, convert
from dode.distill import distill
from dode.gits import fit_grid
from dode.grids import FITTED_GRIDS
from dode.sampling import sample
from dode.schedules import EDMSchedule, VPSchedule

__all__ = [
    "Peer",
    "PEERS",
    "CONVENTIONS",
    "diffusers_sample",
    "make_scheduler",
    "peer_steps",
    "peers_sweep",
    "parse_sampler",
    "sampler_label",
    "sampler_group",
    "best_by_group",
    "FAMILY_PANELS",
    "peers_figure",
    "model_results",
]

#: how a scheduler sees the network (module docstring) -> the models it drives
CONVENTIONS = {
    "vp": "discrete VP noise-prediction models",
    "edm": "EDM-schedule models",
    "karras": "EDM-schedule models",
}


@dataclass(frozen=True)
class Peer:
    """A diffusers scheduler as a peer: its class, the overrides of diffusers' defaults, the convention in
    which it sees the network (:data:`CONVENTIONS`), what figures call it, and its network evaluations per
    step (Heun: 2, its last step into sigma = 0 taking one, so N steps cost 2N - 1)."""

    scheduler: str
    label: str
    convention: str
    options: dict = field(default_factory=dict)
    stages: int = 1


#: diffusers peers. On VP models DDIM takes "trailing" timesteps (its default "leading" spacing never starts
#: from t = T - 1; diffusers' docs recommend "trailing" for few steps) and no clipping of its data predictions
#: (clip_sample, on by default for DDIM only). On EDM models the EDM schedulers keep their defaults (final
#: sigma 0, the first-order last step into it) with the model's sigma_min, sigma_max, rho and sigma_data
PEERS = {
    # bh1's default last step into sigma = 0 returns NaN in diffusers 0.42 (its B(h) = -h is infinite there):
    # it ends on t = 0 instead, one evaluation like every other step
    "unipc_bh1": Peer(
        "UniPCMultistepScheduler", "UniPC bh1", "vp", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}
    ),
    "unipc_bh2": Peer("UniPCMultistepScheduler", "UniPC bh2", "vp", {"solver_type": "bh2"}),
    "dpmpp_2m": Peer("DPMSolverMultistepScheduler", "DPM-Solver++(2M)", "vp", {"solver_order": 2}),
    "dpmpp_2m_karras": Peer(
        "DPMSolverMultistepScheduler",
        "DPM-Solver++(2M) Karras",
        "vp",
        {"solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_3m": Peer("DPMSolverMultistepScheduler", "DPM-Solver++(3M)", "vp", {"solver_order": 3}),
    "dpmpp_3m_karras": Peer(
        "DPMSolverMultistepScheduler",
        "DPM-Solver++(3M) Karras",
        "vp",
        {"solver_order": 3, "use_karras_sigmas": True},
    ),
    # ends on t = 0 like dode's VP grids instead of sigma = 0: the same timesteps as dode's DPM-Solver++
    "dpmpp_2m_sigma_min": Peer(
        "DPMSolverMultistepScheduler",
        "DPM-Solver++(2M) to t=0",
        "vp",
        {"solver_order": 2, "final_sigmas_type": "sigma_min"},
    ),
    "deis": Peer("DEISMultistepScheduler", "DEIS", "vp"),
    "ddim": Peer(
        "DDIMScheduler", "DDIM (trailing)", "vp", {"timestep_spacing": "trailing", "clip_sample": False}
    ),
    # EDM's Euler in sigma on its rho = 7 sigmas: dode's DDIM on the EDM grid
    "edm_euler": Peer("EDMEulerScheduler", "EDM Euler", "edm"),
    "edm_dpmpp_2m": Peer(
        "EDMDPMSolverMultistepScheduler", "EDM DPM-Solver++(2M)", "edm", {"solver_order": 2}
    ),
    "edm_dpmpp_3m": Peer(
        "EDMDPMSolverMultistepScheduler", "EDM DPM-Solver++(3M)", "edm", {"solver_order": 3}
    ),
    # sigmas uniform in log sigma: dode's logSNR-uniform grid on EDM models
    "edm_dpmpp_2m_exp": Peer(
        "EDMDPMSolverMultistepScheduler",
        "EDM DPM-Solver++(2M) exponential",
        "edm",
        {"solver_order": 2, "sigma_schedule": "exponential"},
    ),
    "edm_dpmpp_3m_exp": Peer(
        "EDMDPMSolverMultistepScheduler",
        "EDM DPM-Solver++(3M) exponential",
        "edm",
        {"solver_order": 3, "sigma_schedule": "exponential"},
    ),
    # EDM's deterministic sampler (Karras et al. 2022, Alg. 1 without churn): Heun on the rho = 7 sigmas
    "heun_karras": Peer(
        "HeunDiscreteScheduler", "Heun Karras", "karras", {"use_karras_sigmas": True}, stages=2
    ),
}
_DODE_METHODS = ("base", "d-ode", "d-ode-joint")
#: the training sigmas of the discrete schedule behind a "karras" peer span the model's sigma range with this
#: margin: diffusers maps each sigma to a training timestep (which the EDM network never sees), and a sigma
#: outside the training range would map several sigmas to one timestep and confuse the scheduler's step index
_KARRAS_MARGIN = 2.0


def _check_peer(peer: str) -> Peer:
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {sorted(PEERS)}, got {peer!r}")
    return PEERS[peer]


def _sigma_data(den: Denoiser) -> float:
    """The model's sigma_data (EDM's preconditioning), diffusers' default 0.5 where it states none."""
    card = den.info.get("card") or {}
    value = den.info.get("sigma_data", (card.get("preconditioning") or {}).get("sigma_data", 0.5))
    return float(value)


def _betas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The discrete betas whose cumulative product of ``1 - beta`` is ``alphas_cumprod`` (diffusers'
    ``trained_betas``)."""
    return 1.0 - alphas_cumprod / np.concatenate([[1.0], alphas_cumprod[:-1]])


def make_scheduler(peer: str, denoiser: Denoiser):
    """The diffusers scheduler of ``peer`` on ``denoiser``'s schedule: a VP peer on the model's own betas, an
    EDM peer with its sigma_min, sigma_max, rho and sigma_data, a karras peer with its sigma range."""
    import diffusers

    spec = _check_peer(peer)
    cls = getattr(diffusers, spec.scheduler)
    schedule = denoiser.schedule
    if spec.convention == "vp":
        if not isinstance(schedule, VPSchedule) or denoiser.prediction != "eps":
            raise ValueError(f"peer {peer!r} drives {CONVENTIONS['vp']} only; {denoiser.name!r} is not one")
        ac = schedule.alphas_cumprod.numpy()
        return cls(num_train_timesteps=len(ac), trained_betas=_betas(ac), **spec.options)
    if not isinstance(schedule, EDMSchedule):
        raise ValueError(
            f"peer {peer!r} drives {CONVENTIONS[spec.convention]} only; {denoiser.name!r} is not one"
        )
    if spec.convention == "edm":
        return cls(
            sigma_min=schedule.sigma_min,
            sigma_max=schedule.sigma_max,
            rho=schedule.rho,
            sigma_data=_sigma_data(denoiser),
            prediction_type="epsilon",  # EDM's raw network F (diffusers' name for it)
            **spec.options,
        )
    if schedule.rho != 7.0:
        raise ValueError(
            f"peer {peer!r} takes diffusers' Karras sigmas (rho = 7), the model has rho={schedule.rho}"
        )
    train = np.geomspace(schedule.sigma_min / _KARRAS_MARGIN, schedule.sigma_max * _KARRAS_MARGIN, 1000)
    betas = _betas(1.0 / (1.0 + train**2))
    # diffusers rounds these training sigmas through float32 alphas_cumprod, so near sigma_min neighbours
    # coincide and its sigma -> timestep interpolation divides by zero (numpy warns): only the timesteps,
    # which the EDM network never sees, are affected
    with np.errstate(divide="ignore", invalid="ignore"):
        base = cls(
            num_train_timesteps=len(betas), trained_betas=betas, prediction_type="sample", **spec.options
        )
        # diffusers' Karras conversion reads sigma_min / sigma_max from the config where it has them
        return cls.from_config(
            {**base.config, "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max}
        )


def peer_steps(peer: str, nfe: int) -> int | None:
    """The steps in which ``peer`` makes ``nfe`` network evaluations, None where it cannot (Heun: even NFE)."""
    spec = _check_peer(peer)
    if spec.stages == 1:
        return int(nfe)
    return (nfe + 1) // 2 if nfe % 2 == 1 and nfe >= 3 else None


def _network(den: Denoiser, convention: str, scheduler, i: int, model_input: torch.Tensor, t):
    """The output of the network that diffusers' scheduler expects at its ``i``-th call (module docstring)."""
    if convention == "vp":
        return den(model_input, float(t))  # the timestep is the model's training index
    sigma = float(scheduler.sigmas[i])  # the sigma the scheduler scaled its input with
    scale = scheduler.config.sigma_data if convention == "edm" else 1.0
    x = model_input * math.sqrt(sigma**2 + scale**2)  # the state, from the input c_in x
    d = convert(den(x, sigma), x, 1.0, sigma, den.prediction, "x0")
    if convention == "karras":
        return d
    # EDM's F from D = c_skip x + c_out F (Karras et al. 2022, Eq. 7), the scheduler's own preconditioning
    c_skip = scale**2 / (sigma**2 + scale**2)
    c_out = sigma * scale / math.sqrt(sigma**2 + scale**2)
    return (d - c_skip * x) / c_out


def diffusers_sample(denoiser: Denoiser, noise: torch.Tensor, peer: str, nfe: int):
    """``(samples, network evaluations)`` of the diffusers scheduler ``peer`` at ``nfe`` evaluations."""
    spec = _check_peer(peer)
    steps = peer_steps(peer, nfe)
    if steps is None:
        raise ValueError(f"peer {peer!r} makes {spec.stages} evaluations per step: it cannot make nfe={nfe}")
    scheduler = make_scheduler(peer, denoiser)
    scheduler.set_timesteps(steps, device=noise.device)
    if spec.convention == "vp":
        x = noise.to(torch.float64) * scheduler.init_noise_sigma
    else:
        x = denoiser.schedule.initial_state(noise, denoiser.schedule.t_max)  # sigma_max * noise, as dode
    calls = 0
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        if getattr(scheduler, "step_index", None) not in (None, i):
            raise AssertionError(f"{spec.scheduler} is at step {scheduler.step_index}, not {i}")
        calls += 1
        x = scheduler.step(
            _network(denoiser, spec.convention, scheduler, i, model_input, t), t, x
        ).prev_sample
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
        return f"diffusers {PEERS[p['peer']].label}"
    grid = {
        "time_uniform": "",
        "logsnr_uniform": ", logSNR grid",
        "edm": ", EDM grid",
        "gits": ", GITS grid",
    }.get(p["grid"], p["grid"])
    return method_label(p["solver"], p["method"]) + grid


def sampler_group(name: str) -> str:
    """``diffusers``, ``base`` (a dode base solver) or ``D`` (a D-solver, greedy or joint fit)."""
    p = parse_sampler(name)
    return "diffusers" if p["family"] == "diffusers" else "base" if p["method"] == "base" else "D"


def best_by_group(ds, var: str, nfe) -> dict[str, tuple[str, float]]:
    """group (:func:`sampler_group`) -> (label, value) of its best sampler at ``nfe`` in ``ds`` (one model)."""
    best: dict[str, tuple[str, float]] = {}
    for name in ds.coords["sampler"].values.tolist():
        value = float(ds[var].sel({"sampler": name, "nfe": nfe}))
        if not np.isfinite(value):
            continue
        group = sampler_group(name)
        if group not in best or value < best[group][1]:
            best[group] = (sampler_label(name), value)
    return best


def _per_model(cfg: dict, key: str, model: str) -> list:
    """``cfg[key]`` of one model: a mapping model -> list, or one list for every model."""
    value = cfg[key]
    if isinstance(value, dict):
        if model not in value:
            raise ValueError(f"{key} must list the samplers of every model; it has none for {model!r}")
        return list(value[model])
    return list(value)


def _runs(den: Denoiser, p: dict, nfe: int) -> bool:
    """Whether a sampler makes exactly ``nfe`` evaluations on ``den`` (Heun: odd NFEs only)."""
    if p["family"] == "diffusers":
        return peer_steps(p["peer"], nfe) is not None
    from dode.solvers import make_plan

    solver, options = ex.solver_spec(p["solver"])
    grid = None if p["grid"] in FITTED_GRIDS else p["grid"]  # a fitted grid has the default one's intervals
    try:
        make_plan(den.schedule, solver, nfe, grid, options)
    except ValueError:
        return False
    return True


def peers_sweep(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True) -> Path:
    """Fill ``<results_dir>/<stem>.nc`` with ``<metric>``, ``network_evaluations``, ``fit_seconds`` and
    ``sample_seconds`` over model x sampler x nfe (one seed), and the noise floor ``<metric>_floor`` over
    model x seed where ``cfg["floor"]`` is set (:func:`dode.companion.experiments.noise_floor`). ``cfg``: ``models`` (dode.zoo names),
    ``samplers`` and ``nfes`` (each a mapping model -> list, or one list for every model; sampler names: see
    the module docstring), ``joint_nfes`` (NFEs at which the joint fits run: they cost tens of greedy fits),
    ``seed``, ``K``, ``B``, ``n_samples``, ``batch_size``, ``device``. Every sampler draws the seed's
    evaluation noise, batch by batch; a sampler that cannot make an NFE (Heun at an even one) leaves its
    cell NaN. Every model is loaded, and every sampler name checked, before anything is computed."""
    from dode.progress import progress_bar

    models = cfg["models"]
    if not isinstance(models, list | tuple) or not models or len(set(models)) != len(models):
        raise ValueError(f"models must be a list of distinct dode.zoo names, got {models!r}")
    plan = {m: (_per_model(cfg, "samplers", m), sorted(_per_model(cfg, "nfes", m))) for m in models}
    for samplers, _ in plan.values():
        for name in samplers:
            parse_sampler(name)
    loaded = {}
    for m in models:
        den = ex.load_model(m, device=cfg["device"], model_options=cfg.get("model_options"))
        loaded[m] = (den, *ex.make_metric(den, device=cfg["device"], fid_stats=cfg.get("fid_stats")))
    metric_names = {m: name for m, (_, name, _) in loaded.items()}
    if len(set(metric_names.values())) != 1:
        raise ValueError(f"the models of one peers sweep must share a metric, got {metric_names}")
    metric_name = next(iter(metric_names.values()))
    for m, (den, _, _) in loaded.items():
        for name in plan[m][0]:
            p = parse_sampler(name)
            if p["family"] == "diffusers":
                make_scheduler(p["peer"], den)  # a peer of the wrong convention fails here, not mid-sweep
    samplers = list(dict.fromkeys(n for s, _ in plan.values() for n in s))
    nfes = sorted({n for _, ns in plan.values() for n in ns})
    # seed: the coordinate of the noise floor (the cells themselves are of the one seed)
    dims = {"model": list(models), "sampler": samplers, "nfe": nfes, "seed": [cfg["seed"]]}
    key = {k: cfg.get(k) for k in ("K", "B", "n_samples", "seed")} | {"metric": metric_name}
    identities = {m: ex.identity(den, metric) for m, (den, _, metric) in loaded.items()}
    store = ex.open_store(results_dir, stem, dims, key, cfg, identities)
    units = [(m, s, n) for m in models for s in plan[m][0] for n in plan[m][1]]
    for model, name, nfe in progress_bar(units, desc="samplers", disable=not progress):
        den, _, metric = loaded[model]
        cell = {"model": model, "sampler": name, "nfe": nfe}
        p = parse_sampler(name)
        if store.has(metric_name, **cell) or not _runs(den, p, nfe):
            continue  # done, or a cell the sampler cannot make (it stays NaN)
        if p.get("method") == "d-ode-joint" and nfe not in cfg["joint_nfes"]:
            continue
        _run_cell(store, cell, den, metric, metric_name, p, cfg)
    ex.sweep_floor(
        store,
        {m: (den, metric) for m, (den, _, metric) in loaded.items()},
        metric_name,
        cfg,
        results_dir,
        seeds=[cfg["seed"]],
        device=cfg["device"],
    )
    return store.path


def _run_cell(store, cell, den, metric, metric_name, p, cfg) -> None:
    """Sample one (model, sampler, NFE) cell on the evaluation noise, fitting the lambdas first for a D-solver."""
    from dode.metrics import FeatureStats

    shape, nfe, fit_seconds = ex.sample_shape(den), cell["nfe"], 0.0
    if p["family"] == "diffusers":

        def draw(z):
            return diffusers_sample(den, z, p["peer"], nfe)

    else:
        solver, options = ex.solver_spec(p["solver"])
        lam, grid = None, p["grid"]
        fit_noise = ex.noise(cfg["seed"], "fit", cfg["B"], shape, device=cfg["device"])
        if grid in FITTED_GRIDS:  # fitted on the fitting noise, never on the evaluation noise
            grid = fit_grid(den, fit_noise, nfe, solver, seed=cfg["seed"], **options)
            fit_seconds = grid.info["seconds"]
        if p["method"] != "base":
            t0 = time.perf_counter()
            fit = "joint" if p["method"] == "d-ode-joint" else "ls"
            teacher = ex.teacher_of(p["solver"], "paper")
            lam = distill(
                den, fit_noise, solver, nfe, cfg["K"], grid=grid, teacher=teacher, fit=fit, **options
            )
            fit_seconds += time.perf_counter() - t0

        def draw(z):
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
        raise AssertionError(f"{cell} made {sorted(evaluations)} network evaluations in different batches")
    with store.together():
        store.put(metric_name, metric(stats), **cell)
        store.put("network_evaluations", float(evaluations.pop()), **cell)
        store.put("fit_seconds", fit_seconds, **cell)
        store.put("sample_seconds", seconds, **cell)


def model_results(ds, model: str):
    """The cells of one model of a peers results file, without the samplers and NFEs it did not run."""
    sub = ds.sel({"model": model}) if "model" in ds.dims else ds
    var = "fid" if "fid" in sub else "fd"
    keep = sub[var].notnull()
    return sub.sel({"sampler": keep.any("nfe").values, "nfe": keep.any("sampler").values})


#: the panels of :func:`peers_figure`, one per family of samplers: ``(title, test on parse_sampler's dict)``
FAMILY_PANELS = (
    ("diffusers' schedulers", lambda p: p["family"] == "diffusers"),
    ("dode's base solvers", lambda p: p["family"] == "dode" and p["method"] == "base"),
    ("D-solvers, greedy fit (the paper's)", lambda p: p["family"] == "dode" and p["method"] == "d-ode"),
    ("D-solvers, joint fit", lambda p: p["family"] == "dode" and p["method"] == "d-ode-joint"),
)


def _best(ds, metric: str, names: list[str]) -> str:
    """The family's best sampler: the lowest mean rank over the NFEs it ran (lower ``metric`` is better), ties
    broken by the mean of log ``metric``, so that a sampler run at fewer NFEs competes where it ran."""
    values = np.log(np.asarray(ds[metric].sel({"sampler": names}).values, dtype=np.float64))
    filled = np.where(np.isfinite(values), values, np.inf)
    ranks = np.where(np.isfinite(values), filled.argsort(axis=0).argsort(axis=0), np.nan)
    with np.errstate(invalid="ignore"):
        key = [
            (np.nanmean(r), np.nanmean(v)) if np.isfinite(v).any() else (np.inf, np.inf)
            for r, v in zip(ranks, values, strict=True)
        ]
    return names[min(range(len(names)), key=lambda i: key[i])]


def _short_label(name: str) -> str:
    """A sampler's label inside its family's panel (the panel's title says which family)."""
    return sampler_label(name).removeprefix("diffusers ").removesuffix(" (joint fit)")


def _best_label(name: str) -> str:
    """A sampler's label among the best of every family: diffusers' or dode's."""
    label = sampler_label(name)
    return (
        label if label.startswith("diffusers") or parse_sampler(name)["method"] != "base" else f"dode {label}"
    )


def peers_figure(ds, metric: str, title: str | None = None):
    """FD (or FID) against NFE on one model (:func:`model_results`) as small multiples: one panel per family
    of samplers (:data:`FAMILY_PANELS`: diffusers' schedulers, dode's base solvers, the greedy and the joint
    D-solvers), each line labelled at its end and the family's best (:func:`_best`) drawn thick, then a panel
    of the best of every family. Shared log axes; the noise floor as a grey band where the file has one."""
    from dode.companion import plots

    names = [
        n for n in ds.coords["sampler"].values.tolist() if ds[metric].sel({"sampler": n}).notnull().any()
    ]
    parsed = {n: parse_sampler(n) for n in names}
    families = [(t, [n for n in names if test(parsed[n])]) for t, test in FAMILY_PANELS]
    families = [(t, members) for t, members in families if members]
    best = {t: _best(ds, metric, members) for t, members in families}
    fig, axes = plots.panel_grid(len(families) + 1, panel_height=2.9, sharey=True)
    nfes = ds.coords["nfe"].values
    lines = {}  # panel -> [(x, y, label, colour, bold)]
    panels = [(t, members, False) for t, members in families] + [
        ("best of each family", list(best.values()), True)
    ]
    floor = ""
    for ax, (panel, members, is_best) in zip(axes, panels, strict=True):
        lines[panel] = []
        for i, name in enumerate(members):
            values = ds[metric].sel({"sampler": name}).values
            ok = np.isfinite(values)
            thick = is_best or name == best[panel]
            colour = f"C{i % 10}"
            ax.plot(
                nfes[ok],
                values[ok],
                color=colour,
                marker="o",
                ms=4 if thick else 3,
                linewidth=2.4 if thick else 1.0,
                alpha=1.0 if thick else 0.75,
                zorder=3 if thick else 2,
            )
            label = _best_label(name) if is_best else _short_label(name)
            last = np.flatnonzero(ok)[-1]
            lines[panel].append((nfes[last], values[last], label, colour, thick))
        floor = plots.floor_band(ax, ds, metric) or floor
        ax.set_title(panel)
    for ax in axes:
        ax.set_xscale("log")
        plots.log_axis(ax, "y")
        ax.set_xlabel("NFE (counted)")
        ax.set_ylabel(metric.upper())
    fig.tight_layout()
    for ax in axes:
        ax.set_xlim(nfes.min() / 1.15, nfes.max() * 1.15)
    right = max(
        # curves over several NFEs keep half of each panel; the points of a single NFE leave the labels
        # nine tenths of it
        plots.direct_labels(ax, lines[panel], log_x=True, log_y=True, keep=0.5 if len(nfes) > 1 else 0.1)
        for ax, (panel, _, _) in zip(axes, panels, strict=True)
    )
    for i, ax in enumerate(axes):  # one x range for all the panels, wide enough for every panel's labels
        ax.set_xlim(nfes.min() / 1.15, right)
        plots.nfe_axis(ax, nfes, log=True)
        # a label longer than its share of the panel runs on into the gap and the next panel's margin: the
        # panels on the left are drawn last, so that the next panel's background does not cover its end
        ax.set_zorder(len(axes) - i)
    if title:
        fig.suptitle(title)
        fig.tight_layout()
    plots.caption(fig, "Thick line: the family's best (lowest mean rank over the NFEs it ran). " + floor)
    return fig
