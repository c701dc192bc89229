"""What ``notebooks/00_train_models.ipynb`` runs: train or load the embedded models, record and plot them.

The notebook stays thin; the logic is here so it is tested. :func:`run` produces one results file,
``<results_dir>/00_train_models.nc``, holding the loss curves, the model cards (JSON attributes) and a few
samples per model; the figures are drawn from that file only (:func:`plot_loss_curves`,
:func:`plot_samples`).

Profiles:

* ``smoke`` -- trains the miniature configuration for a handful of steps into a temporary folder (seconds);
* ``cpu`` -- loads the committed models (``retrain=True`` retrains them into ``data/models``: this is what
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
]

PROFILES = ("smoke", "cpu", "paper")
RESULTS_NAME = "00_train_models.nc"
SMOKE_STEPS = 10
# samples shown per model, and how they are drawn: the solvers' reference settings on these models
N_SAMPLES = {"smoke": 16, "cpu": 64}
SAMPLER = {"eps": ("ddim", 100), "edm": ("edm", 35)}
SMOKE_SAMPLER = {"eps": ("ddim", 10), "edm": ("edm", 9)}


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
    ``models_dir`` is where the cpu profile loads from / retrains into (default ``data/models``).
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
