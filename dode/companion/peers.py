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

* ``diffusers:<peer>`` -- a scheduler of :data:`PEERS`, diffusers' defaults except where noted there (the
  peer's *own* configuration);
* ``diffusers:<peer>:<option>=<value>,...`` -- the same scheduler with diffusers' documented options
  (:data:`TUNABLE`) over its own, sorted by option, booleans ``true``/``false``, e.g.
  ``diffusers:unipc_bh2:final_sigmas_type=sigma_min,lower_order_final=false`` (:func:`peer_config`);
* ``dode:<solver label>:<grid>:<method>`` -- a dode solver on a named grid (``time_uniform``: the paper's on
  VP models; ``logsnr_uniform``; ``edm``: EDM's rho = 7, the paper's on EDM models; ``gits``: GITS's grid
  fitted to the model on the fitting noise, :func:`dode.gits.fit_grid`, its cost in ``fit_seconds``), ``method`` ``base``,
  ``d-ode`` (the paper's greedy fit) or ``d-ode-joint`` (:mod:`dode.joint`), fitted with the paper's teachers.

:func:`peers_sweep` shows every sampler at its best, chosen without seeing the noise it is scored on. At each
model and NFE a *tuning* stage scores every candidate -- each peer's configurations over a small grid of its
options (:func:`peer_candidates`), dode's base samplers on several grids and last-step orders, and the
D-solvers of the best few of them -- on the tuning noise (the evaluation stream of ``tuning_seed``, which is
never an evaluation seed) and selects the best of each group (:data:`GROUPS`); the *evaluation* stage scores
the selected samplers and the selected peer's own configuration on every evaluation seed. A D-solver is fitted
on a seed's fitting noise, never on evaluation noise, so the tuning's fits on the first seed serve its
evaluation there. :func:`cell_verdicts` grades each (model, NFE) with the reproduction page's spread rule
(:func:`dode.companion.spread.side`).
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
from dode.companion.spread import paired_gain, side
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
    "TUNABLE",
    "GROUPS",
    "VERDICT_WORDS",
    "peer_config",
    "peer_candidates",
    "estimate_evaluations",
    "tune",
    "best_by_group",
    "best_names",
    "paired_row",
    "cell_verdicts",
    "default_of",
    "best_figure",
    "verdict_table",
    "stage_seconds",
    "FAMILY_PANELS",
    "peers_figure",
    "model_results",
    "seed_values",
    "lof_sibling",
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


def make_scheduler(peer: str, denoiser: Denoiser, options: dict | None = None):
    """The diffusers scheduler of ``peer`` on ``denoiser``'s schedule: a VP peer on the model's own betas, an
    EDM peer with its sigma_min, sigma_max, rho and sigma_data, a karras peer with its sigma range;
    ``options`` (:data:`TUNABLE` of diffusers' documented options) override the peer's."""
    import diffusers

    spec = _check_peer(peer)
    cls = getattr(diffusers, spec.scheduler)
    given = {**spec.options, **_check_options(options)}
    schedule = denoiser.schedule
    if spec.convention == "vp":
        if not isinstance(schedule, VPSchedule) or denoiser.prediction != "eps":
            raise ValueError(f"peer {peer!r} drives {CONVENTIONS['vp']} only; {denoiser.name!r} is not one")
        ac = schedule.alphas_cumprod.numpy()
        return cls(num_train_timesteps=len(ac), trained_betas=_betas(ac), **given)
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
            **given,
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
        base = cls(num_train_timesteps=len(betas), trained_betas=betas, prediction_type="sample", **given)
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


def diffusers_sample(
    denoiser: Denoiser, noise: torch.Tensor, peer: str, nfe: int, options: dict | None = None
):
    """``(samples, network evaluations)`` of the diffusers scheduler ``peer`` (with ``options`` over its
    own, :func:`make_scheduler`) at ``nfe`` evaluations."""
    spec = _check_peer(peer)
    steps = peer_steps(peer, nfe)
    if steps is None:
        raise ValueError(f"peer {peer!r} makes {spec.stages} evaluations per step: it cannot make nfe={nfe}")
    scheduler = make_scheduler(peer, denoiser, options)
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


#: diffusers' documented scheduler options a peer is tuned over (a configuration names those it changes)
TUNABLE = (
    "lower_order_final",
    "final_sigmas_type",
    "timestep_spacing",
    "use_karras_sigmas",
    "solver_order",
    "solver_type",
    "sigma_schedule",
)


def _check_options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(TUNABLE))
    if unknown:
        raise ValueError(f"peer options must be among {list(TUNABLE)}, got {unknown}")
    return options


def _option_value(text: str):
    """An option's value from its text in a sampler name: ``true``/``false``, an integer, or a string."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.lstrip("-").isdigit() else text


def _option_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def peer_config(peer: str, **options) -> str:
    """The sampler name of ``peer`` with ``options`` over its own: ``diffusers:<peer>`` without any,
    ``diffusers:<peer>:<option>=<value>,...`` (options sorted, booleans ``true``/``false``) with them."""
    _check_peer(peer)
    options = _check_options(options)
    if not options:
        return f"diffusers:{peer}"
    return f"diffusers:{peer}:" + ",".join(f"{k}={_option_text(options[k])}" for k in sorted(options))


def parse_sampler(name: str) -> dict:
    """``{"family": "diffusers", "peer", "options"}`` or ``{"family": "dode", "solver", "grid", "method"}``."""
    family, _, rest = name.partition(":")
    if family == "diffusers":
        peer, _, text = rest.partition(":")
        if peer in PEERS:
            options = {}
            for item in filter(None, text.split(",")):
                key, eq, value = item.partition("=")
                if not eq:
                    raise ValueError(f"peer option {item!r} of {name!r} must read <option>=<value>")
                options[key] = _option_value(value)
            return {"family": family, "peer": peer, "options": _check_options(options)}
    parts = rest.split(":")
    if family == "dode" and len(parts) == 3 and parts[2] in _DODE_METHODS:
        ex.solver_spec(parts[0])
        return {"family": family, "solver": parts[0], "grid": parts[1], "method": parts[2]}
    raise ValueError(
        f"sampler must be 'diffusers:<one of {sorted(PEERS)}>[:<option>=<value>,...]' or "
        f"'dode:<solver>:<grid>:<method in {_DODE_METHODS}>', got {name!r}"
    )


#: what a label calls a peer option's value
_OPTION_WORDS = {
    ("lower_order_final", False): "full-order last step",
    ("lower_order_final", True): "lower-order last step",
    ("use_karras_sigmas", True): "Karras sigmas",
    ("use_karras_sigmas", False): "no Karras sigmas",
}


def _option_label(key: str, value) -> str:
    if (key, value) in _OPTION_WORDS:
        return _OPTION_WORDS[(key, value)]
    short = {"final_sigmas_type": "final", "timestep_spacing": "spacing", "solver_order": "order"}
    return f"{short.get(key, key)} {value}"


def lof_sibling(name: str) -> str | None:
    """The same sampler with the lower-order last steps, where ``name`` takes its last step at full order:
    a diffusers configuration with ``lower_order_final=false``, or a dode solver label with a twin in
    :data:`dode.companion.experiments.SOLVER_LABELS` that lowers it (``deis2`` -> ``deis2_lof``,
    ``unipc_bh2_full`` -> ``unipc_bh2``); else None."""
    p = parse_sampler(name)
    if p["family"] == "diffusers":
        if p["options"].get("lower_order_final") is not False:
            return None
        return peer_config(p["peer"], **{k: v for k, v in p["options"].items() if k != "lower_order_final"})
    solver, options = ex.solver_spec(p["solver"])
    if options.get("lower_order_final"):
        return None
    plain = {k: v for k, v in options.items() if k != "lower_order_final"}
    for label, (twin, twin_options) in ex.SOLVER_LABELS.items():
        if (
            label != p["solver"]
            and twin == solver
            and twin_options in (plain, {**plain, "lower_order_final": True})
        ):
            return f"dode:{label}:{p['grid']}:{p['method']}"
    return None


def sampler_label(name: str) -> str:
    """What a figure calls a sampler."""
    p = parse_sampler(name)
    if p["family"] == "diffusers":
        label = f"diffusers {PEERS[p['peer']].label}"
        if p["options"]:
            label += " (" + ", ".join(_option_label(k, v) for k, v in sorted(p["options"].items())) + ")"
        return label
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


#: the groups of a cell's verdict, in the order tables show them
GROUPS = ("diffusers", "base", "D")


def seed_values(ds, var: str, name: str, nfe) -> np.ndarray:
    """``var`` of sampler ``name`` at ``nfe`` over the seeds (one value where the file has no seeds)."""
    values = np.atleast_1d(np.asarray(ds[var].sel({"sampler": name, "nfe": nfe}).values, dtype=np.float64))
    return values


def _mean(values: np.ndarray) -> float:
    ok = values[np.isfinite(values)]
    return float(ok.mean()) if ok.size else float("nan")


def best_by_group(ds, var: str, nfe) -> dict[str, tuple[str, float]]:
    """group (:func:`sampler_group`) -> (label, mean over seeds) of its best sampler at ``nfe`` in ``ds`` (one
    model). Where the file records the samplers selected on the tuning noise (``selected``), a group's best
    is its selected one -- never the best on the evaluation noise itself -- else the lowest mean."""
    best = {g: (n, v) for g, (n, v) in best_names(ds, var, nfe).items()}
    return {g: (sampler_label(n), v) for g, (n, v) in best.items()}


def best_names(ds, var: str, nfe) -> dict[str, tuple[str, float]]:
    """:func:`best_by_group` with sampler names instead of labels."""
    best: dict[str, tuple[str, float]] = {}
    chosen = None
    if "selected" in ds:
        sel = ds["selected"].sel({"nfe": nfe})
        chosen = {n for n, s in zip(sel.coords["sampler"].values.tolist(), sel.values, strict=True) if s == 1}
    for name in ds.coords["sampler"].values.tolist():
        if chosen is not None and name not in chosen:
            continue
        value = _mean(seed_values(ds, var, name, nfe))
        if not np.isfinite(value):
            continue
        group = sampler_group(name)
        if group not in best or value < best[group][1]:
            best[group] = (name, value)
    return best


#: relative difference under which two samplers' metrics are the same number (float32 sampling)
_SAME = 1e-5


def paired_row(ds, var: str, nfe, reference: str, method: str) -> dict:
    """The paired gain of sampler ``method`` over ``reference`` at ``nfe`` (``reference - method`` per seed,
    positive: ``method`` is better), in the shape of :func:`dode.companion.claims.paired_gains`' rows."""
    r, m = seed_values(ds, var, reference, nfe), seed_values(ds, var, method, nfe)
    # the same numbers to float precision (one algorithm in two libraries, e.g. diffusers' EDM DPM-Solver++ on
    # exponential sigmas and dode's on the logSNR grid): no difference, rather than one beyond a zero spread
    m = np.where(np.abs(r - m) <= _SAME * np.abs(r), r, m)
    return {"nfe": int(nfe), **paired_gain(r, m)}


#: a cell's verdict (:func:`cell_verdicts`) by the side of the best dode sampler against the tuned peer
VERDICT_WORDS = {1: "dode better", 0: "inside the noise", -1: "diffusers better"}


def cell_verdicts(ds, var: str | None = None) -> list[dict]:
    """Per (model, NFE) cell with a selected peer and a dode sampler: the best of each group
    (:func:`best_names`, mean and std over seeds), the best dode sampler (the lower mean of the best base
    and the best D-solver), the peer it is compared with (``peer``: the lower mean of the tuned configuration
    and the scheduler's own, :func:`default_of`; the tuning's few samples can select a configuration that
    scores worse than the default on the evaluation noise), and the verdict by the reproduction page's spread rule
    (:func:`dode.companion.spread.side` on the paired gain over seeds: better in every seed and by more than
    the seed spread; with one seed the sign alone). ``goal``: the dode sampler is at or below the tuned
    peer's mean, and at NFE <= 6 better beyond the spread."""
    var = var or ("fid" if "fid" in ds else "fd")
    models = ds.coords["model"].values.tolist() if "model" in ds.dims else [None]
    rows = []
    for model in models:
        cells = model_results(ds, model) if model is not None else ds
        for nfe in cells.coords["nfe"].values.tolist():
            best = best_names(cells, var, nfe)
            if "diffusers" not in best or not ({"base", "D"} & set(best)):
                continue
            row = {"model": model, "nfe": int(nfe)}
            for group in GROUPS:
                if group in best:
                    values = seed_values(cells, var, best[group][0], nfe)
                    ok = values[np.isfinite(values)]
                    row[group] = best[group][0]
                    row[f"{group}_mean"] = float(ok.mean())
                    row[f"{group}_std"] = float(ok.std(ddof=1)) if ok.size > 1 else float("nan")
            dode = min((g for g in ("base", "D") if g in best), key=lambda g: best[g][1])
            # the dode side is the better of two selected samplers on the evaluation noise: so is the peer's,
            # the tuned configuration or the scheduler's own, whichever scores lower there
            peer = best["diffusers"][0]
            default = default_of(cells, nfe)
            if default is not None and _mean(seed_values(cells, var, default, nfe)) < best["diffusers"][1]:
                peer = default
            pair = paired_row(cells, var, nfe, peer, best[dode][0])
            s = side(pair)
            row |= {
                "peer": peer,
                "peer_mean": pair["base"],
                "dode": best[dode][0],
                "gain": pair["gain"],
                "gain_std": pair["std"],
                "seeds": pair["seeds"],
                "side": s,
                "verdict": VERDICT_WORDS[s],
                "goal": bool(pair["gain"] >= 0 and (nfe > 6 or s > 0)),
            }
            if "D" in best and "base" in best:
                row["d_side"] = side(paired_row(cells, var, nfe, best["base"][0], best["D"][0]))
            rows.append(row)
    return rows


def _per_model(cfg: dict, key: str, model: str):
    """``cfg[key]`` of one model: a mapping model -> value, or one value for every model."""
    value = cfg[key]
    if isinstance(value, dict) and key != "peer_grids":
        if model not in value:
            raise ValueError(f"{key} must give a value for every model; it has none for {model!r}")
        value = value[model]
    elif key == "peer_grids" and model in value:
        value = value[model]
    return list(value) if isinstance(value, list | tuple) else value


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


def peer_candidates(den: Denoiser, grids: dict) -> list[str]:
    """The configurations of each peer of ``grids`` (peer -> {option: [values]}): the product of its
    options' values, each named by the options it changes from the peer's own configuration
    (:func:`peer_config`; the peer's own, diffusers' defaults but for :data:`PEERS`' overrides, is
    ``diffusers:<peer>``), in order, without repeats."""
    import itertools

    names = []
    for peer, grid in grids.items():
        own = dict(make_scheduler(peer, den).config)
        keys = sorted(_check_options(grid))
        for values in itertools.product(*(grid[k] for k in keys)):
            changed = {k: v for k, v in zip(keys, values, strict=True) if own.get(k) != v}
            names.append(peer_config(peer, **changed))
    return list(dict.fromkeys(names))


def estimate_evaluations(cfg: dict) -> dict[str, int]:
    """Network evaluations (each of one sample) of a run of :func:`peers_sweep` under ``cfg``, per stage, an
    upper bound: ``tuning`` (every candidate at every NFE on ``tuning_samples``; the D-solvers of the
    ``d_top`` best bases), ``fits`` (one greedy fit, ``K * NFE`` teacher and ``NFE`` student evaluations
    on ``B`` noises, per D candidate at the first seed and per selected D-solver at every other seed; GITS's
    grid fit once per model that uses it: ``fine * (K_gits + 1)`` on ``B``), ``evaluation`` (the
    selected peer, its own configuration, the best base and the best D-solver at every NFE and seed on
    ``n_samples``). Candidate counts per model are what ``cfg`` lists (a Heun peer runs at odd NFEs only:
    counted at all, an upper bound)."""
    out = {"tuning": 0, "fits": 0, "evaluation": 0}
    for model in cfg["models"]:
        nfes = _per_model(cfg, "nfes", model)
        grids = _per_model(cfg, "peer_grids", model)
        n_peers = sum(math.prod(len(v) for v in g.values()) if g else 1 for g in grids.values())
        bases = _per_model(cfg, "bases", model)
        n_cand = n_peers + len(bases) + cfg["d_top"]
        uses_gits = any(":gits:" in b for b in bases)
        for nfe in nfes:
            out["tuning"] += n_cand * cfg["tuning_samples"] * nfe
            fit = cfg["B"] * (cfg["K"] + 1) * nfe
            out["fits"] += (cfg["d_top"] + len(cfg["seeds"]) - 1) * fit
            out["evaluation"] += 4 * len(cfg["seeds"]) * cfg["n_samples"] * nfe
        if uses_gits:
            out["fits"] += cfg["B"] * 60 * 5
    return out


class _Stage:
    """What one model's runs share: the denoiser, its metric, fitted lambdas (one per fitting seed, reused by
    the tuning and the evaluation: a fit sees the fitting noise only) and GITS's fine-grid costs (one set per
    model, on the first seed's fitting noise: GITS fits a model's time grid once and samples every noise with
    it)."""

    def __init__(self, den, metric, cfg):
        self.den, self.metric, self.cfg = den, metric, cfg
        self.shape = ex.sample_shape(den)
        self.fits: dict = {}
        self.gits: dict = {}

    def _grid(self, p: dict, nfe: int):
        """The named grid, or GITS's grid fitted on the first seed's fitting noise (the fine grid's costs,
        which depend on neither the NFE nor the solver, computed once per model: :func:`dode.gits.fit_grid`)."""
        if p["grid"] not in FITTED_GRIDS:
            return p["grid"], 0.0
        from dode.gits import fine_costs

        solver, options = ex.solver_spec(p["solver"])
        seed = self.cfg["seeds"][0]
        fit_noise = ex.noise(seed, "fit", self.cfg["B"], self.shape, device=self.cfg["device"])
        seconds = 0.0
        if seed not in self.gits:
            t0 = time.perf_counter()
            self.gits[seed] = (fine_costs(self.den, fit_noise), time.perf_counter() - t0)
            seconds = self.gits[seed][1]  # charged to the first fit that needs them
        grid = fit_grid(self.den, fit_noise, nfe, solver, seed=seed, costs=self.gits[seed][0], **options)
        return grid, seconds + grid.info["seconds"]

    def lambdas(self, p: dict, nfe: int, seed: int):
        """``(grid, lambdas, fit seconds)`` of a dode sampler at ``nfe`` fitted on ``seed``'s fitting noise (the
        seconds 0 where an earlier call fitted them)."""
        key = (p["solver"], p["grid"], p["method"], nfe, seed)
        if key not in self.fits:
            grid, seconds = self._grid(p, nfe)
            lam = None
            if p["method"] != "base":
                solver, options = ex.solver_spec(p["solver"])
                fit_noise = ex.noise(seed, "fit", self.cfg["B"], self.shape, device=self.cfg["device"])
                t0 = time.perf_counter()
                fit = "joint" if p["method"] == "d-ode-joint" else "ls"
                teacher = ex.teacher_of(p["solver"], "paper")
                lam = distill(
                    self.den,
                    fit_noise,
                    solver,
                    nfe,
                    self.cfg["K"],
                    grid=grid,
                    teacher=teacher,
                    fit=fit,
                    **options,
                )
                seconds += time.perf_counter() - t0
            self.fits[key] = (grid, lam, seconds)
            return self.fits[key]
        grid, lam, _ = self.fits[key]
        return grid, lam, 0.0  # fitted before (the tuning's fit at the first seed): already counted there

    def score(self, name: str, nfe: int, noise_seed: int, n: int, fit_seed: int):
        """``(metric, network evaluations, fit seconds, sample seconds)`` of sampler ``name`` at ``nfe`` on the
        first ``n`` samples of the evaluation stream of ``noise_seed``, its fits on ``fit_seed``'s noise."""
        from dode.metrics import FeatureStats

        p, den, fit_seconds = parse_sampler(name), self.den, 0.0
        if p["family"] == "diffusers":

            def draw(z):
                return diffusers_sample(den, z, p["peer"], nfe, p["options"])

        else:
            solver, options = ex.solver_spec(p["solver"])
            grid, lam, fit_seconds = self.lambdas(p, nfe, fit_seed)

            def draw(z):
                return sample(den, z, solver, nfe, grid=grid, lambdas=lam, **options), nfe

        stats, seconds, evaluations = FeatureStats(), 0.0, set()
        batch = self.cfg["batch_size"]
        for start in range(0, n, batch):
            z = ex.noise(
                noise_seed, "eval", min(batch, n - start), self.shape, start=start, device=self.cfg["device"]
            )
            t0 = time.perf_counter()
            x, counted = draw(z)
            seconds += time.perf_counter() - t0
            evaluations.add(counted)
            if not torch.isfinite(x).all():  # diverged (UniPC bh1 into sigma = 0): no metric
                return float("nan"), counted, fit_seconds, seconds
            stats.update(self.metric.features(x.float()))
        if len(evaluations) != 1:
            raise AssertionError(
                f"{name} at NFE {nfe} made {sorted(evaluations)} network evaluations in different batches"
            )
        value = float(self.metric(stats))
        return value, evaluations.pop(), fit_seconds, seconds


def _select(tuned: dict[str, float], group: str) -> str | None:
    """The group's best sampler on the tuning noise (lowest finite metric), None where none ran."""
    ok = {n: v for n, v in tuned.items() if sampler_group(n) == group and np.isfinite(v)}
    return min(ok, key=ok.__getitem__) if ok else None


def tune(store, stage: _Stage, model: str, nfe: int, candidates: list[str], metric_name: str, progress=None):
    """The tuning of one (model, NFE): every candidate (peers' configurations and dode's bases) on the
    tuning noise -- ``tuning_samples`` of the evaluation stream of ``tuning_seed``, a seed the evaluation
    never uses -- then the D-solvers of the ``d_top`` best bases (fitted on the first evaluation seed's
    fitting noise, which no sampler is evaluated on). Stores ``<metric>_tuning`` and returns the winners:
    group -> sampler name."""
    cfg = stage.cfg
    seed, n, fit_seed = cfg["tuning_seed"], cfg["tuning_samples"], cfg["seeds"][0]
    var = f"{metric_name}_tuning"

    def run(names):
        out = {}
        for name in names:
            cell = {"model": model, "sampler": name, "nfe": nfe}
            if not _runs(stage.den, parse_sampler(name), nfe):
                continue
            if not store.has(var, **cell):
                with np.errstate(all="ignore"):
                    value, _, fit_s, sample_s = stage.score(name, nfe, seed, n, fit_seed)
                with store.together():
                    store.put(var, value if np.isfinite(value) else np.inf, **cell)
                    store.put("tuning_seconds", fit_s + sample_s, **cell)
            out[name] = float(store.get(var, **cell))
            if progress is not None:
                progress.update(1)
        return out

    scores = run(candidates)
    bases = sorted((v, nm) for nm, v in scores.items() if sampler_group(nm) == "base" and np.isfinite(v))
    d_names = [nm.rsplit(":", 1)[0] + ":d-ode" for _, nm in bases[: cfg["d_top"]]]
    scores |= run(d_names)
    return {g: w for g in GROUPS if (w := _select(scores, g)) is not None}


def peers_sweep(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True) -> Path:
    """Fill ``<results_dir>/<stem>.nc``: per model and NFE, every sampler at its best (module docstring).

    Two stages. **Tuning**: every candidate -- each peer's configurations (:func:`peer_candidates` over
    ``cfg["peer_grids"]``), dode's base samplers (``cfg["bases"]``) and the D-solvers of the ``d_top`` best
    of them -- on ``tuning_samples`` of the tuning noise (seed ``tuning_seed``, never evaluated on),
    ``<metric>_tuning`` over model x sampler x nfe; the best of each group (:data:`GROUPS`) is ``selected``
    (1). **Evaluation**: the selected samplers and the selected peer's own configuration (``peer_default``
    1) at every seed of ``seeds`` on ``n_samples`` of the evaluation noise, ``<metric>``,
    ``network_evaluations``, ``fit_seconds`` and ``sample_seconds`` over model x sampler x nfe x seed; a
    D-solver's fit at the first seed is the tuning's (its fitting noise is not the evaluation noise). The
    noise floor ``<metric>_floor`` over model x seed where ``cfg["floor"]`` is set. Every model is loaded,
    and every name checked, before anything is computed; a sampler that cannot make an NFE (Heun at an
    even one) is no candidate there."""
    from dode.progress import progress_bar

    models = cfg["models"]
    if not isinstance(models, list | tuple) or not models or len(set(models)) != len(models):
        raise ValueError(f"models must be a list of distinct dode.zoo names, got {models!r}")
    seeds = [int(s) for s in cfg["seeds"]]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct evaluation seeds, got {cfg['seeds']!r}")
    if int(cfg["tuning_seed"]) in seeds:
        raise ValueError(
            f"tuning_seed {cfg['tuning_seed']} is an evaluation seed {seeds}: the tuning must not see the "
            "evaluation noise"
        )
    loaded = {}
    for m in models:
        den = ex.load_model(m, device=cfg["device"], model_options=cfg.get("model_options"))
        loaded[m] = (den, *ex.make_metric(den, device=cfg["device"], fid_stats=cfg.get("fid_stats")))
    metric_names = {m: name for m, (_, name, _) in loaded.items()}
    if len(set(metric_names.values())) != 1:
        raise ValueError(f"the models of one peers sweep must share a metric, got {metric_names}")
    metric_name = next(iter(metric_names.values()))
    plan = {}
    for m, (den, _, _) in loaded.items():
        peer_names = peer_candidates(den, _per_model(cfg, "peer_grids", m))
        bases = _per_model(cfg, "bases", m)
        for name in bases:
            if sampler_group(name) != "base":
                raise ValueError(
                    f"bases must be dode base samplers ('dode:<solver>:<grid>:base'), got {name!r}"
                )
        plan[m] = (peer_names, bases, sorted(_per_model(cfg, "nfes", m)))
    samplers = list(
        dict.fromkeys(
            n
            for peer_names, bases, _ in plan.values()
            for n in [*peer_names, *bases, *(b.rsplit(":", 1)[0] + ":d-ode" for b in bases)]
        )
    )
    nfes = sorted({n for *_, ns in plan.values() for n in ns})
    dims = {"model": list(models), "sampler": samplers, "nfe": nfes, "seed": seeds}
    key = {k: cfg.get(k) for k in ("K", "B", "n_samples", "tuning_seed", "tuning_samples", "d_top")}
    key |= {"metric": metric_name}
    identities = {m: ex.identity(den, metric) for m, (den, _, metric) in loaded.items()}
    store = ex.open_store(results_dir, stem, dims, key, cfg, identities)
    stages = {m: _Stage(den, metric, cfg) for m, (den, _, metric) in loaded.items()}
    total = sum(len(p) + len(b) + cfg["d_top"] for p, b, ns in plan.values() for _ in ns)
    winners = {}
    with progress_bar(total=total, desc="tuning", disable=not progress) as bar:
        for m in models:
            peer_names, bases, own_nfes = plan[m]
            for nfe in own_nfes:
                winners[(m, nfe)] = tune(store, stages[m], m, nfe, [*peer_names, *bases], metric_name, bar)
    with store.together():  # a rerun on finished results writes nothing: the selection is the stored tuning's
        for (m, nfe), won in winners.items():
            default = peer_config(parse_sampler(won["diffusers"])["peer"]) if "diffusers" in won else None
            for name in samplers:
                cell = {"model": m, "sampler": name, "nfe": nfe}
                if not store.has("selected", **cell):
                    store.put("selected", float(name in won.values()), **cell)
                    store.put("peer_default", float(name == default), **cell)
    units = []
    for (m, nfe), won in winners.items():
        names = list(won.values())
        if "diffusers" in won:
            names.append(peer_config(parse_sampler(won["diffusers"])["peer"]))
        units += [(m, name, nfe, seed) for name in dict.fromkeys(names) for seed in seeds]
    for m, name, nfe, seed in progress_bar(units, desc="evaluation", disable=not progress):
        cell = {"model": m, "sampler": name, "nfe": nfe, "seed": seed}
        if store.has(metric_name, **cell):
            continue
        with np.errstate(all="ignore"):
            value, counted, fit_s, sample_s = stages[m].score(name, nfe, seed, cfg["n_samples"], seed)
        with store.together():
            store.put(metric_name, value, **cell)
            store.put("network_evaluations", float(counted), **cell)
            store.put("fit_seconds", fit_s, **cell)
            store.put("sample_seconds", sample_s, **cell)
    with store.together():
        for m, stage in stages.items():
            if stage.gits:  # computed by this run (a rerun on finished results computes none)
                store.put("gits_seconds", sum(s for _, s in stage.gits.values()), model=m)
    ex.sweep_floor(
        store,
        {m: (den, metric) for m, (den, _, metric) in loaded.items()},
        metric_name,
        cfg,
        results_dir,
        seeds=seeds,
        device=cfg["device"],
    )
    return store.path


def model_results(ds, model: str):
    """The cells of one model of a peers results file, without the samplers and NFEs it did not evaluate
    (where the file has a ``seed`` dimension: at no seed)."""
    sub = ds.sel({"model": model}) if "model" in ds.dims else ds
    var = "fid" if "fid" in sub else "fd"
    keep = sub[var].notnull()
    if "seed" in keep.dims:
        keep = keep.any("seed")
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


#: the lines of :func:`best_figure`: (what the legend calls it, the row key of :func:`cell_verdicts` or
#: ``default``, colour, line style)
_BEST_LINES = (
    ("best tuned diffusers scheduler", "diffusers", "C0", "-"),
    ("its own configuration (diffusers' defaults)", "default", "C0", ":"),
    ("best dode base solver", "base", "C2", "--"),
    ("best D-solver", "D", "C3", "-"),
)


def default_of(ds, nfe) -> str | None:
    """The selected peer's own configuration at ``nfe`` (``peer_default``) in one model's cells."""
    if "peer_default" not in ds:
        return None
    sel = ds["peer_default"].sel({"nfe": nfe})
    names = [n for n, v in zip(sel.coords["sampler"].values.tolist(), sel.values, strict=True) if v == 1]
    return names[0] if names else None


def best_figure(ds, metric: str):
    """Per model (one panel each, at most two a row): the metric against NFE of the best sampler of each group
    -- the tuned diffusers scheduler, its own (default) configuration, the best dode base solver and the best
    D-solver, each the one selected on the tuning noise at that NFE -- mean over seeds with the seeds' std as
    error bars; the noise floor as a grey band. Which sampler won where: the table below the figure."""
    from dode.companion import plots

    models = ds.coords["model"].values.tolist()
    fig, axes = plots.panel_grid(len(models), panel_height=3.0)
    floors = []  # each panel's own floor: the models' floors differ
    for ax, model in zip(axes, models, strict=True):
        cells = model_results(ds, model)
        nfes = cells.coords["nfe"].values.tolist()
        for k, (label, key, colour, style) in enumerate(_BEST_LINES):
            dodge = 1.0 + 0.025 * (k - 1.5)  # side by side at each NFE, so that the error bars stay apart
            xs, ys, es = [], [], []
            for nfe in nfes:
                name = (
                    default_of(cells, nfe)
                    if key == "default"
                    else best_names(cells, metric, nfe).get(key, (None,))[0]
                )
                if name is None:
                    continue
                values = seed_values(cells, metric, name, nfe)
                values = values[np.isfinite(values)]
                if not values.size:
                    continue
                xs.append(nfe)
                ys.append(values.mean())
                es.append(values.std(ddof=1) if values.size > 1 else 0.0)
            if xs:
                ax.errorbar(
                    np.asarray(xs) * dodge,
                    ys,
                    yerr=es,
                    color=colour,
                    linestyle=style,
                    marker="o",
                    ms=3.5,
                    capsize=2,
                    label=label,
                )
        floor = plots.floor_band(ax, ds, metric, model=model)
        if floor:
            floors.append(f"{model}: {floor}")
        ax.set_xscale("log")
        plots.log_axis(ax, "y")
        plots.nfe_axis(ax, nfes, log=True)
        ax.set_xlabel("NFE (counted)")
        ax.set_ylabel(metric.upper())
        ax.set_title(model)
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, bbox_to_anchor=(0.5, 1.0), frameon=False)
    plots.caption(
        fig,
        "Mean over the evaluation seeds, error bars their std; the lines side by side at each NFE. "
        + " ".join(floors),
    )
    return fig


def _cell_text(ds, metric: str, name: str | None, nfe) -> str:
    if name is None:
        return ""
    values = seed_values(ds, metric, name, nfe)
    values = values[np.isfinite(values)]
    if not values.size:
        return sampler_label(name)
    spread = f" ± {values.std(ddof=1):.2f}" if values.size > 1 else ""
    return f"{sampler_label(name)}: {values.mean():.2f}{spread}"


def verdict_table(ds, metric: str):
    """One row per (model, NFE): the best tuned diffusers scheduler, its own configuration, the best dode base
    solver and the best D-solver (each ``label: mean ± std`` over seeds) and the cell's verdict
    (:func:`cell_verdicts`), a pandas DataFrame."""
    import pandas as pd

    rows = []
    for r in cell_verdicts(ds, metric):
        cells = model_results(ds, r["model"]) if r["model"] is not None else ds
        nfe = r["nfe"]
        rows.append(
            {  # the verdict first: the samplers' names are long, and a wide table scrolls on the page
                "model": r["model"],
                "NFE": nfe,
                "verdict (best dode vs the better diffusers)": r["verdict"],
                "goal": "met" if r["goal"] else "not met",
                "tuned diffusers": _cell_text(cells, metric, r.get("diffusers"), nfe),
                "diffusers defaults": _cell_text(cells, metric, default_of(cells, nfe), nfe),
                "best dode base": _cell_text(cells, metric, r.get("base"), nfe),
                "best D-solver": _cell_text(cells, metric, r.get("D"), nfe),
            }
        )
    return pd.DataFrame(rows).set_index(["model", "NFE"])


def stage_seconds(ds) -> dict[str, float]:
    """Seconds of each stage of a run, from the results file: ``tuning`` (sampling and the D candidates'
    fits on the tuning noise), ``fits`` (the evaluation's own fits at the other seeds), ``GITS fine grid``
    (its one-off costs, counted in the fits too), ``evaluation`` (sampling on the evaluation noise)."""
    out = {}
    if "tuning_seconds" in ds:
        out["tuning"] = float(np.nansum(ds["tuning_seconds"].values))
    if "fit_seconds" in ds:
        out["fits"] = float(np.nansum(ds["fit_seconds"].values))
    if "gits_seconds" in ds:
        out["GITS fine grid"] = float(np.nansum(ds["gits_seconds"].values))
    if "sample_seconds" in ds:
        out["evaluation"] = float(np.nansum(ds["sample_seconds"].values))
    return out
