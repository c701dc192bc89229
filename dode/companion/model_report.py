"""What ``notebooks/00_train_models.ipynb`` runs: train or load the embedded models, record and plot them.

The notebook stays thin; the logic is here so it is tested. :func:`run` produces one results file,
``<results_dir>/00_train_models.nc``, holding the loss curves, the model cards (JSON attributes) and a few
samples per model; the figures are drawn from that file only (:func:`plot_loss_curves`,
:func:`plot_samples`).

Profiles:

* ``smoke`` -- trains the miniature configuration for a handful of steps into a temporary folder (seconds);
* ``cpu`` -- loads the committed models (``retrain=True`` retrains them into ``dode/assets/models``: this is what
  ``make models`` runs, about an hour per model on one core);
* ``paper`` -- the real checkpoints come from the model zoo (:mod:`dode.zoo`); nothing is trained here,
  :func:`run` only describes what would be loaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from dode import sample, zoo
from dode.zoo.embedded import MODELS_DIR, load_card, load_denoiser
from dode.zoo.train import BASE_MODELS, default_config, train

__all__ = [
    "PROFILES",
    "RESULTS_NAME",
    "run",
    "cards",
    "summary_table",
    "plot_loss_curves",
    "plot_samples",
    "paper_description",
    "METRIC",
    "metric_dataset",
    "metric_text",
]

PROFILES = ("smoke", "cpu", "paper")
RESULTS_NAME = "00_train_models.nc"
SMOKE_STEPS = 10
# samples shown per model, and how they are drawn: the solvers' reference settings on these models
N_SAMPLES = {"smoke": 16, "cpu": 64}
SAMPLER = {"eps": ("ddim", 100), "edm": ("edm", 35)}
SMOKE_SAMPLER = {"eps": ("ddim", 10), "edm": ("edm", 9)}


#: the metric's characterisation (section "The metric" of page 00): the sample counts of the noise floor (the
#: sweeps' 500 samples, and the held-out split's size, to set it beside the data floor), its seeds
#: (the sweeps' evaluation seeds, so that the sweeps read these floors from the cache) and the draws of
#: training digits compared with the held-out ones
METRIC = {
    "smoke": dict(n_samples=[24, 48], seeds=[0, 1], subset_draws=2),
    "cpu": dict(n_samples=[297, 500], seeds=[0, 1, 2], subset_draws=3),
}


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def _check_models(models) -> tuple[str, ...]:
    models = tuple(BASE_MODELS if models is None else ([models] if isinstance(models, str) else models))
    bad = [m for m in models if m not in BASE_MODELS]
    if bad or not models:
        raise ValueError(f"models must be a non-empty list drawn from {BASE_MODELS}, got {list(models)}")
    return models


def paper_description() -> str:
    """What the paper profile would load (from the zoo, when it exists)."""
    lines = [
        "profile 'paper': the experiments run on real pretrained checkpoints loaded by dode.zoo",
        "(downloaded once on the GPU box); the embedded digits models are not used and nothing is trained here.",
    ]
    for name, meta in zoo.available().items():
        if meta.get("family") != "embedded":
            where = meta.get("repo_id") or meta.get("url") or meta.get("source", "")
            lines.append(f"  {name:28s} {meta.get('resolution', '?')}px  {where}")
    return "\n".join(lines)


def _samples(name: str, models_dir: Path, profile: str, seed: int = 0) -> np.ndarray:
    den = load_denoiser(name, models_dir)
    solver, nfe = (SMOKE_SAMPLER if profile == "smoke" else SAMPLER)[den.info["card"]["kind"]]
    noise = torch.randn(N_SAMPLES[profile], 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return sample(den, noise, solver=solver, nfe=nfe).clamp(-1, 1).numpy()[:, 0]


def run(
    profile: str = "cpu",
    *,
    retrain: bool = False,
    models=None,
    results_dir: str | Path = "data/results",
    models_dir: str | Path | None = None,
    progress: bool = True,
):
    """Train or load ``models`` for ``profile`` and write ``<results_dir>/00_train_models.nc``.

    Returns the written :class:`xarray.Dataset`, or ``None`` for ``paper`` (prints what would be loaded).
    ``models_dir`` is where the cpu profile loads from / retrains into (default ``dode/assets/models``).
    """
    import xarray as xr

    from dode.companion.results import provenance, write_netcdf

    _check_profile(profile)
    models = _check_models(models)
    if profile == "paper":
        print(paper_description())
        return None

    tmp = None
    if profile == "smoke":
        tmp = tempfile.TemporaryDirectory(prefix="dode-smoke-models-")
        models_dir = Path(tmp.name)
        ids = [f"{m}-mini" for m in models]
        for m in models:
            train(default_config(m, mini=True, steps=SMOKE_STEPS), models_dir, progress=progress)
    else:
        models_dir = Path(models_dir) if models_dir is not None else MODELS_DIR
        ids = list(models)
        if retrain:
            for m in models:
                train(default_config(m), models_dir, progress=progress)
    try:
        cards = [load_card(i, models_dir) for i in ids]
        n_windows = max(len(c["loss"]["curve"]) for c in cards)
        curves = np.full((len(ids), n_windows), np.nan)
        steps = np.full((len(ids), n_windows), np.nan)
        for k, c in enumerate(cards):
            curve, every = c["loss"]["curve"], c["loss"]["every"]
            curves[k, : len(curve)] = curve
            steps[k, : len(curve)] = np.minimum(np.arange(1, len(curve) + 1) * every, c["training"]["steps"])
        ds = xr.Dataset(
            {
                "loss": (("model", "window"), curves, {"long_name": "training loss, mean over the window"}),
                "step": (("model", "window"), steps, {"long_name": "training step at the end of the window"}),
                "n_parameters": ("model", np.array([c["n_parameters"] for c in cards])),
                "final_loss": ("model", np.array([c["loss"]["final"] for c in cards])),
                "wall_time_s": ("model", np.array([c["training"]["wall_time_s"] for c in cards])),
            },
            coords={"model": ids},
        )
        grids = [_samples(i, models_dir, profile) for i in ids]
        ds["samples"] = (("model", "sample", "y", "x"), np.stack(grids), {"range": "[-1, 1]"})
        ds["samples"].attrs["sampler"] = json.dumps(SMOKE_SAMPLER if profile == "smoke" else SAMPLER)
    finally:
        if tmp is not None:
            tmp.cleanup()
    metric = metric_dataset(profile, ids, results_dir)
    ds = ds.merge(metric)
    ds.attrs.update(metric.attrs)  # merge keeps the first dataset's attributes only
    params = {"profile": profile, "retrain": int(bool(retrain)), "models": list(models)}
    ds.attrs.update(provenance(profile, params))
    for i, c in zip(ids, cards, strict=True):
        ds.attrs[f"card:{i}"] = json.dumps(c)
    write_netcdf(ds, Path(results_dir) / RESULTS_NAME)
    return ds


def cards(ds) -> dict[str, dict]:
    """The model cards stored in a results file written by :func:`run`, by model id."""
    return {str(m): json.loads(ds.attrs[f"card:{m}"]) for m in ds["model"].values}


def summary_table(ds):
    """One row per model: size, recipe, final loss, time, checksum and quality (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for name, c in cards(ds).items():
        tr = c["training"]
        rows.append(
            {
                "model": name,
                "prediction": c["prediction"],
                "parameters": c["n_parameters"],
                "steps": tr["steps"],
                "batch": tr["batch_size"],
                "lr": tr["lr"],
                "ema": tr["ema_decay"],
                "final loss": c["loss"]["final"],
                "wall time [min]": round(tr["wall_time_s"] / 60, 1),
                "threads": tr["threads"],
                "sigma_data": c.get("sigma_data"),
                "sha256": c["weights"]["sha256"][:12],
                # the card's quality measures as words; the column is left out when no card has any
                "quality": ", ".join(
                    f"{k}: {v:.3g}" if isinstance(v, (int, float)) else f"{k}: {v}"
                    for k, v in (c.get("quality") or {}).items()
                ),
            }
        )
    table = pd.DataFrame(rows).set_index("model")
    return table if table["quality"].any() else table.drop(columns="quality")


def plot_loss_curves(ds, ax=None):
    """Loss curves of every model in ``ds`` (as written by :func:`run`), log scale, one panel."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.4, 3.0))
    for model in ds["model"].values:
        sel = ds.sel(model=model)
        ax.plot(sel["step"].values, sel["loss"].values, label=str(model))
    from dode.companion.plots import integer_axis, log_axis

    log_axis(ax, "y")
    integer_axis(ax, "x")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (window mean)")
    ax.legend()
    return ax


def plot_samples(ds, ncols: int = 8):
    """A grid of the stored samples per model (dark = ink, as the digits are usually shown)."""

    if "samples" not in ds:
        raise ValueError("this results file holds no samples (the solver core was not available)")
    models = list(ds["model"].values)
    from dode.companion.plots import panel_grid

    fig, axes = panel_grid(len(models), panel_height=3.4)
    for ax, model in zip(axes, models, strict=True):
        imgs = ds["samples"].sel(model=model).values
        n = (len(imgs) // ncols) * ncols
        rows = n // ncols
        padded = np.pad(imgs[:n], ((0, 0), (1, 1), (1, 1)), constant_values=-1)
        tile = padded.reshape(rows, ncols, 10, 10).transpose(0, 2, 1, 3).reshape(rows * 10, ncols * 10)
        ax.imshow(tile, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(str(model))
        ax.axis("off")
    return fig


# ----------------------------------------------------------------------------------------------------------
# The metric: its reference set, its data floor and the converged sampler's noise floor


def metric_dataset(profile: str, names, results_dir):
    """What page 00's section "The metric" shows, as a Dataset: ``noise_floor`` (model x n_samples x seed),
    the FD of the reference samplers' samples (:func:`dode.companion.experiments.noise_floor`, cached under
    ``results_dir`` so the sweeps reuse it; the models as the sweeps load them: the zoo's), ``data_floor``
    (the held-out digits against the reference), ``train_subset_fd`` (as many training digits, a few random
    draws) and the reference's and the classifier's facts as attributes."""
    import xarray as xr

    from dode.companion import experiments as ex
    from dode.companion.protocols import FLOOR
    from dode.metrics import FD
    from dode.metrics import classifier as clf
    from dode.zoo.data import load_digits

    plan = METRIC[profile]
    fd = FD()
    floors, samplers = [], {}
    for name in names:
        den = ex.load_model(name)
        values = ex.noise_floor(
            den,
            fd,
            "fd",
            floor=FLOOR[profile],
            n_samples=plan["n_samples"],
            seeds=plan["seeds"],
            batch_size=max(plan["n_samples"]),
            results_dir=results_dir,
        )
        floors.append(values.values)
        samplers[name] = ex.sampler_description(*ex.reference_sampler(den, FLOOR[profile]))
    held_out = load_digits("held_out").images
    draws = range(plan["subset_draws"])
    ds = xr.Dataset(
        {
            "noise_floor": (
                ("model", "n_samples", "seed"),
                np.stack(floors),
                {"long_name": "FD of the reference sampler's first n evaluation samples of each seed"},
            ),
            "data_floor": ((), fd.data_floor(), {"long_name": "FD of the held-out digits"}),
            "train_subset_fd": (
                ("draw",),
                np.array([fd.train_subset_fd(held_out.shape[0], seed=d) for d in draws]),
                {"long_name": "FD of as many random training digits as there are held-out ones"},
            ),
        },
        coords={
            "model": list(names),
            "n_samples": plan["n_samples"],
            "seed": plan["seeds"],
            "draw": list(draws),
        },
    )
    card = clf.card()
    ds["noise_floor"].attrs["samplers"] = json.dumps(samplers)
    ds.attrs.update(
        reference_n=str(fd.reference.n),
        held_out_n=str(held_out.shape[0]),
        classifier_feature_dim=str(card["feature_dim"]),
        classifier_held_out_accuracy=str(card["held_out_accuracy"]),
    )
    return ds


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.2f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.2f}"


def metric_text(ds) -> str:
    """The section "The metric" of page 00 (Markdown), every number read from ``ds`` (:func:`metric_dataset`)."""
    n_ref, n_held = int(ds.attrs["reference_n"]), int(ds.attrs["held_out_n"])
    accuracy = float(ds.attrs["classifier_held_out_accuracy"])
    samplers = json.loads(ds["noise_floor"].attrs["samplers"])
    subset = ds["train_subset_fd"].values
    seeds = ds.coords["seed"].values.tolist()
    counts = ds.coords["n_samples"].values.tolist()
    lines = [
        f"**Reference set.** FD compares the features of generated digits with those of the {n_ref:,} "
        "*training* digits (`dode/assets/fid_stats/digits-train.npz`), the split the diffusion models were trained on, "
        f"as FID compares with a data set's training images. The {n_held:,} held-out digits are not part of it.",
        "",
        f"**Features.** The {ds.attrs['classifier_feature_dim']}-dimensional penultimate layer of a small digit "
        f"classifier trained on the same training digits (held-out accuracy {accuracy:.1%}); FD is the Fréchet "
        "distance between Gaussians fitted to the two sets of features.",
        "",
        f"**Data floor.** The {n_held:,} held-out digits, which neither the diffusion models nor the classifier "
        f"saw, score FD {float(ds['data_floor']):.2f} against the reference; {n_held:,} digits drawn from the "
        f"training set itself score {_mean_std(subset)} ({subset.size} draws). Part of any FD is the bias of "
        "estimating a covariance from few samples, which shrinks as the sample count grows.",
        "",
        "**Converged sampler.** The FD that a converged sampler (each model's reference sampler) reaches on "
        f"the first n evaluation samples of seeds {', '.join(map(str, seeds))}, the evaluation noise of the "
        "sweeps; mean ± standard deviation over the seeds:",
        "",
        "| model | reference sampler | " + " | ".join(f"n = {n:,}" for n in counts) + " |",
        "|---|---|" + "---|" * len(counts),
    ]
    for model in ds.coords["model"].values.tolist():
        row = [_mean_std(ds["noise_floor"].sel({"model": model, "n_samples": n}).values) for n in counts]
        lines.append(f"| {model} | {samplers[model]} | " + " | ".join(row) + " |")
    spreads = {
        n: float(ds["noise_floor"].sel({"n_samples": n}).std("seed", ddof=1).max()) if len(seeds) > 1 else 0.0
        for n in counts
    }
    thresholds = ", ".join(f"{2 * np.sqrt(2) * s:.2f} at {n:,} samples" for n, s in spreads.items())
    lines += [
        "",
        "**Reading a difference.** This floor, not zero, is what a perfect solver scores at a page's sample "
        "count: every FD figure draws it as a band (mean ± standard deviation over seeds, at the page's own "
        "count), and a cell inside the band is as good as the converged sampler there. Its spread over seeds "
        "is the noise of the evaluation set itself: two values from independent evaluation sets differ by "
        "noise alone unless they are more than about 2√2 times that spread apart "
        f"({thresholds}; the larger spread of the models). Methods of one seed sample the same evaluation "
        "noise, so their differences are paired and vary less; each page states them with their own spread "
        "over seeds.",
    ]
    return "\n".join(lines)
