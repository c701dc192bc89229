"""Quantities behind the paper's analysis figures, computed from :class:`~dode.sampling.Trajectory` runs.

* Fig. 2: cosine similarity between all denoising outputs of one long run (:func:`cosine_similarity_matrix`).
* Fig. 5, 7, 11: the norm of ``x_t`` along a run (:func:`state_norms`), the values of a few random pixels
  (:func:`pick_pixels`, :func:`pixel_values`) and the distance to a reference run on the same noise at the
  same times (:func:`distance_to_reference`).
* :func:`fit_variants` fits several D-ODE formulations (method chapter, section 5) on one teacher run.

Everything takes the tensors of ``dode.sample(..., trajectory=True)``: the batch is the second dimension of
``states`` and ``outputs``, times are model times (VP: training index, EDM: sigma), decreasing.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from dode.denoiser import Denoiser
from dode.distill import distill, teacher_targets
from dode.progress import progress_bar
from dode.solvers import make_plan

__all__ = [
    "cosine_similarity_matrix",
    "state_norms",
    "pick_pixels",
    "pixel_values",
    "interpolate_states",
    "distance_to_reference",
    "fit_variants",
]


def _flat(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"{what} must have shape (steps, batch, ...), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], -1).to(torch.float64)


def cosine_similarity_matrix(outputs: torch.Tensor) -> np.ndarray:
    """``S[i, j]`` = mean over the batch of ``cos(d_i, d_j)``, each output flattened (paper Fig. 2).

    ``outputs`` has shape ``(steps, batch, ...)`` (``Trajectory.outputs``). The cosine is taken per sample
    and then averaged, so every sample counts alike whatever its norm.
    """
    d = _flat(outputs, "outputs")
    norms = d.norm(dim=2, keepdim=True)
    if torch.any(norms == 0):
        raise ValueError("an output is exactly zero: its cosine similarity is undefined")
    unit = d / norms
    similarity = torch.einsum("ibn,jbn->ij", unit, unit) / d.shape[1]
    return similarity.numpy()


def state_norms(states: torch.Tensor) -> np.ndarray:
    """``(states, batch)``: the L2 norm of every flattened state ``x_t`` (paper Fig. 5, top row)."""
    return _flat(states, "states").norm(dim=2).numpy()


def pick_pixels(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """``n`` distinct random pixel positions ``(n, len(shape))`` of an image of ``shape`` (C, H, W).

    Drawn from their own stream (``seed``), so they do not depend on the noise of the runs."""
    size = int(np.prod(shape))
    if not 1 <= n <= size:
        raise ValueError(f"n must be between 1 and the number of pixels {size}, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 5]))
    flat = rng.choice(size, size=n, replace=False)
    return np.stack(np.unravel_index(flat, shape), axis=1)


def pixel_values(states: torch.Tensor, pixels: np.ndarray) -> np.ndarray:
    """``(states, batch, n)``: the value of each pixel position along the run (paper Fig. 5, bottom row)."""
    states = torch.as_tensor(states)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.shape[1] != states.ndim - 2:
        raise ValueError(
            f"pixels must have shape (n, {states.ndim - 2}) for states of shape {tuple(states.shape)}"
        )
    index = (slice(None), slice(None), *[torch.as_tensor(c) for c in pixels.T])
    return states[index].to(torch.float64).numpy()


def interpolate_states(times: torch.Tensor, states: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """States of a run (at decreasing ``times``) linearly interpolated in time at ``at``.

    Times that sit on the run's grid return its state exactly; times outside the run's range are an error.
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    at = torch.as_tensor(at, dtype=torch.float64).reshape(-1)
    if not torch.all(times[1:] < times[:-1]):
        raise ValueError("times must strictly decrease (from noise to data)")
    span = 1e-9 * float(times[0] - times[-1])
    if torch.any(at > times[0] + span) or torch.any(at < times[-1] - span):
        raise ValueError(f"times {at.tolist()} are outside the run's range [{times[-1]:g}, {times[0]:g}]")
    # positions in increasing time, so that searchsorted applies
    rising, rising_states = times.flip(0), torch.as_tensor(states).flip(0).to(torch.float64)
    hi = torch.searchsorted(rising, at).clamp(1, len(rising) - 1)
    lo = hi - 1
    w = ((at - rising[lo]) / (rising[hi] - rising[lo])).clamp(0, 1)
    w = w.reshape(-1, *([1] * (rising_states.ndim - 1)))
    out = (1 - w) * rising_states[lo] + w * rising_states[hi]
    exact = torch.isclose(rising[hi], at, rtol=0, atol=span)
    out[exact] = rising_states[hi][exact]
    return out


def distance_to_reference(trajectory, reference) -> np.ndarray:
    """``(states, batch)``: ``||x_t - x_t^ref||`` at every state time of ``trajectory``, the reference (a
    long run on the same noise) interpolated in time where it has no state (Fig. 5's "closer to DDIM-1000",
    as a number)."""
    if trajectory.states.shape[1:] != reference.states.shape[1:]:
        raise ValueError("trajectory and reference must be runs on the same noise (same batch and shape)")
    ref = interpolate_states(reference.state_times, reference.states, trajectory.state_times)
    diff = trajectory.states.to(torch.float64) - ref
    return diff.reshape(diff.shape[0], diff.shape[1], -1).norm(dim=2).numpy()


def fit_variants(
    den: Denoiser,
    fit_noise: torch.Tensor,
    solver: str,
    nfe: int,
    variants,
    *,
    K: int,
    grid=None,
    teacher: str | None = None,
    seed: int | None = None,
    **options,
) -> dict:
    """``{variant: (Lambdas, seconds)}``: every variant fitted on the same fitting batch and one teacher run.

    The teacher (K times more steps) dominates the cost of a fit; running it once for all formulations
    gives exactly the lambdas of separate :func:`dode.distill` calls. ``seconds`` = the shared teacher
    time plus the variant's own student run.
    """
    plan = make_plan(den.schedule, solver, nfe, grid, options)
    t0 = time.perf_counter()
    shared = teacher_targets(den, fit_noise, plan, K, teacher=teacher or "ddim")
    teacher_seconds = time.perf_counter() - t0
    fitted = {}
    for variant in variants:
        t1 = time.perf_counter()
        lam = distill(
            den,
            fit_noise,
            solver,
            nfe,
            K,
            grid=grid,
            teacher=teacher,
            variant=variant,
            seed=seed,
            teacher_run=shared,
            **options,
        )
        fitted[variant] = (lam, teacher_seconds + time.perf_counter() - t1)
    return fitted


# ---------------------------------------------------------------------------------------------------------
# The analysis notebooks' computations (01, 05, 06): each fills one resumable results file and returns it.


def _time_variable(den: Denoiser) -> str:
    from dode.schedules import EDMSchedule

    return "sigma" if isinstance(den.schedule, EDMSchedule) else "t"


def run_correlation(stem: str, cfg: dict, results_dir, progress: bool = True):
    """Notebook 01 (Fig. 2): for each model, one ``steps``-step DDIM run (Euler in sigma on EDM models) of
    ``n_samples`` figure noises, and the cosine similarity between all its denoising outputs.

    ``cfg`` needs ``models, steps, n_samples, seed, device``. Stores ``similarity`` (model x step_i x
    step_j), ``eval_time`` (model time of each evaluation) and ``data_prediction`` (1 for x0 models)."""
    from dode.companion import experiments as ex
    from dode.sampling import sample

    options = cfg.get("model_options")
    dens = {name: ex.load_model(name, device=cfg["device"], model_options=options) for name in cfg["models"]}
    key = {k: cfg[k] for k in ("steps", "n_samples", "seed")}
    identities = {name: ex.identity(den) for name, den in dens.items()}
    store = ex.open_store(results_dir, stem, {"model": list(dens)}, key, cfg, identities)
    store.attrs["time_variable"] = json.dumps({name: _time_variable(den) for name, den in dens.items()})
    steps = list(range(cfg["steps"]))
    for name, den in dens.items():
        if store.has("similarity", model=name):
            continue
        z = ex.noise(cfg["seed"], "figure", cfg["n_samples"], ex.sample_shape(den), device=cfg["device"])
        den = ex.conditioned(den, cfg["seed"], "figure", cfg["n_samples"])
        tr = sample(den, z, "ddim", cfg["steps"], trajectory=True, progress=progress)
        similarity = cosine_similarity_matrix(tr.outputs)
        with store.together():
            store.put("eval_time", tr.eval_times.numpy(), extra_dims={"step": steps}, model=name)
            store.put("data_prediction", float(den.prediction == "x0"), model=name)
            store.put("similarity", similarity, extra_dims={"step_i": steps, "step_j": steps}, model=name)
    return store.path


def image_dims(x) -> dict[str, list[int]]:
    """The extra dimensions of a batch of images ``(sample, C, H, W)`` in a results file."""
    return {"sample": list(range(x.shape[0]))} | {
        f"image_{i}": list(range(n)) for i, n in enumerate(x.shape[1:])
    }


def run_trajectories(stem: str, cfg: dict, results_dir, progress: bool = True):
    """Notebook 05 (Fig. 5, 7, 11): trajectories of each (solver, NFE, method) and of a ``reference_steps``
    DDIM run, all from the same ``n_samples`` figure noises; D-ODE parameters fitted on the fitting batch.

    ``cfg`` needs ``model, solvers, nfes, methods, reference_steps, n_samples, n_pixels, seed, K, B, device``.
    Stored per cell (solver x nfe x method): ``norm`` (state x sample), ``state_time``, ``pixels`` (state x
    sample x pixel), ``distance`` to the reference at the same time, ``final`` (the samples: sample x image
    dims), ``lambdas``, ``fit_seconds``; and the reference's ``reference_norm``, ``reference_time``,
    ``reference_pixels``, ``reference_final``, ``pixel_position``."""
    from dode.companion import experiments as ex
    from dode.lambdas import VARIANTS
    from dode.sampling import sample

    for m in cfg["methods"]:
        if m != "base" and m not in VARIANTS:
            raise ValueError(f"methods must be 'base' or one of {VARIANTS}, got {m!r}")
    den = ex.load_model(cfg["model"], device=cfg["device"], model_options=cfg.get("model_options"))
    shape = ex.sample_shape(den)
    dims = {"solver": list(cfg["solvers"]), "nfe": list(cfg["nfes"]), "method": list(cfg["methods"])}
    key = {k: cfg[k] for k in ("reference_steps", "n_samples", "n_pixels", "seed", "K", "B")}
    store = ex.open_store(results_dir, stem, dims, key, cfg, {den.name: ex.identity(den)})
    store.attrs["time_variable"] = _time_variable(den)
    cells = [(s, n, m) for s in dims["solver"] for n in dims["nfe"] for m in dims["method"]]
    todo = [c for c in cells if not store.has("final", solver=c[0], nfe=c[1], method=c[2])]
    if not todo and store.has("reference_final"):
        return store.path

    pixels = pick_pixels(shape, cfg["n_pixels"], cfg["seed"])
    z = ex.noise(cfg["seed"], "figure", cfg["n_samples"], shape, device=cfg["device"])
    # the reference is recomputed rather than stored whole: its states would dominate the file
    reference = sample(den, z, "ddim", cfg["reference_steps"], trajectory=True, progress=progress)
    if not store.has("reference_final"):
        with store.together():
            n_ref = list(range(len(reference.state_times)))
            samples, pix = list(range(cfg["n_samples"])), list(range(cfg["n_pixels"]))
            store.put(
                "pixel_position", pixels, extra_dims={"pixel": pix, "axis": list(range(pixels.shape[1]))}
            )
            store.put("reference_time", reference.state_times.numpy(), extra_dims={"ref_state": n_ref})
            store.put(
                "reference_norm",
                state_norms(reference.states),
                extra_dims={"ref_state": n_ref, "sample": samples},
            )
            store.put(
                "reference_pixels",
                pixel_values(reference.states, pixels),
                extra_dims={"ref_state": n_ref, "sample": samples, "pixel": pix},
            )
            store.put("reference_final", reference.x.cpu().numpy(), extra_dims=image_dims(reference.x))

    fit_noise = ex.noise(cfg["seed"], "fit", cfg["B"], shape, device=cfg["device"])
    groups = list(dict.fromkeys((s, n) for s, n, _ in todo))
    for label, nfe in progress_bar(groups, desc="solver x NFE", disable=not progress):
        solver, options = ex.solver_spec(label)
        methods = [m for s, n, m in todo if (s, n) == (label, nfe)]
        variants = [m for m in methods if m != "base"]
        fitted = fit_variants(den, fit_noise, solver, nfe, variants, K=cfg["K"], seed=cfg["seed"], **options)
        with store.together():
            for method in methods:
                cell = {"solver": label, "nfe": nfe, "method": method}
                lam = None
                if method != "base":
                    lam, seconds = fitted[method]
                    store.put("lambdas", lam.values, extra_dims=ex._lambda_dims(lam), **cell)
                    store.put("fit_seconds", seconds, **cell)
                tr = sample(den, z, solver, nfe, lambdas=lam, trajectory=True, **options)
                states = list(range(len(tr.state_times)))
                samples, pix = list(range(cfg["n_samples"])), list(range(cfg["n_pixels"]))
                store.put("state_time", tr.state_times.numpy(), extra_dims={"state": states}, **cell)
                store.put(
                    "norm", state_norms(tr.states), extra_dims={"state": states, "sample": samples}, **cell
                )
                store.put(
                    "pixels",
                    pixel_values(tr.states, pixels),
                    extra_dims={"state": states, "sample": samples, "pixel": pix},
                    **cell,
                )
                store.put(
                    "distance",
                    distance_to_reference(tr, reference),
                    extra_dims={"state": states, "sample": samples},
                    **cell,
                )
                store.put("final", tr.x.cpu().numpy(), extra_dims=image_dims(tr.x), **cell)
    return store.path


def run_samples(stem: str, cfg: dict, results_dir, progress: bool = True):
    """Notebook 06 (Fig. 6, 12-15): samples of base and D-solver from the same figure noises, for each
    panel ``(model, solver label)`` and NFE, plus a ``reference_steps`` DDIM run of every model on the same
    noises (0 = none).

    ``cfg`` needs ``panels, nfes, n_samples, reference_steps, seed, K, B, device``. Stores ``samples``
    (panel x method x nfe x image dims), ``reference`` (model x image dims), ``lambdas``, ``fit_seconds``."""
    from dode.companion import experiments as ex
    from dode.sampling import sample

    panels = [tuple(p) for p in cfg["panels"]]
    for p in panels:
        if len(p) != 2:
            raise ValueError(f"panels must be [model, solver label] pairs, got {list(p)!r}")
        ex.solver_spec(p[1])
    models = list(dict.fromkeys(m for m, _ in panels))
    options = cfg.get("model_options")
    dens = {name: ex.load_model(name, device=cfg["device"], model_options=options) for name in models}
    names = [f"{m}/{s}" for m, s in panels]
    nfes = {name: ex._nfes_for(cfg["nfes"], s) for name, (_, s) in zip(names, panels, strict=True)}
    all_nfes = sorted({n for values in nfes.values() for n in values})
    dims = {"panel": names, "method": ["base", "d-ode"], "nfe": all_nfes, "model": models}
    key = {k: cfg[k] for k in ("n_samples", "reference_steps", "seed", "K", "B")}
    identities = {name: ex.identity(den) for name, den in dens.items()}
    store = ex.open_store(results_dir, stem, dims, key, cfg, identities)
    # a class-conditional model draws the figure stream's classes with its noises
    dens = {name: ex.conditioned(den, cfg["seed"], "figure", cfg["n_samples"]) for name, den in dens.items()}

    noises = {
        name: ex.noise(cfg["seed"], "figure", cfg["n_samples"], ex.sample_shape(den), device=cfg["device"])
        for name, den in dens.items()
    }
    if cfg["reference_steps"]:
        with store.together():
            for name, den in dens.items():
                if not store.has("reference", model=name):
                    x = sample(den, noises[name], "ddim", cfg["reference_steps"], progress=progress)
                    store.put("reference", x.cpu().numpy(), extra_dims=image_dims(x), model=name)

    cells = [(name, n) for name in names for n in nfes[name]]
    for name, nfe in progress_bar(cells, desc="panel x NFE", disable=not progress):
        model, label = name.rsplit("/", 1)
        den, z = dens[model], noises[model]
        solver, options = ex.solver_spec(label)
        cell = {"panel": name, "nfe": nfe}
        with store.together():
            if not store.has("samples", method="base", **cell):
                x = sample(den, z, solver, nfe, **options)
                store.put("samples", x.cpu().numpy(), extra_dims=image_dims(x), method="base", **cell)
            if not store.has("samples", method="d-ode", **cell):
                lam, seconds = ex.fit_lambdas(
                    den,
                    label,
                    nfe,
                    seed=cfg["seed"],
                    K=cfg["K"],
                    B=cfg["B"],
                    shape=ex.sample_shape(den),
                    device=cfg["device"],
                )
                store.put("lambdas", lam.values, extra_dims=ex._lambda_dims(lam), **cell)
                store.put("fit_seconds", seconds, **cell)
                x = sample(den, z, solver, nfe, lambdas=lam, **options)
                store.put("samples", x.cpu().numpy(), extra_dims=image_dims(x), method="d-ode", **cell)
    return store.path
