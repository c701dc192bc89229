"""What distillation costs: D-ODE solvers against progressive distillation (paper Tab. 1, Fig. 8a).

One run on one machine measures both sides of the paper's claim that fitting D-ODE lambdas takes minutes
where distilling the network itself takes far longer (method chapter, section 6):

* **ODE solvers** (:func:`dode.companion.experiments.quality_sweep`): EDM's Heun sampler and DDIM in sigma (Euler)
  on the EDM model, base and D-ODE, at each NFE: the closed-form fit's wall time (``fit_seconds``), the
  pure sampling time of the evaluation samples (``sample_seconds``) and their FD/FID.
* **Progressive distillation** (:mod:`dode.zoo.progressive`): a DDIM teacher of ``steps_start`` steps halved
  down to ``steps_end``; each student's training time (``train_seconds``, ``cumulative_train_seconds``),
  sampling time and FD/FID, stored as method ``pd`` of solver ``ddim`` at NFE = its steps.
* **Sampling overhead of the D-solver** (:func:`paired_sampling_times`): the per-cell times above are taken
  one after the other on a possibly shared machine, so their ratio says as much about the machine's other
  jobs as about the transform. The overhead is measured apart, base and D-solver interleaved on the same
  noise and repeated (``overhead_base_seconds``, ``overhead_d_seconds``, dims solver x nfe x repeat), and
  :func:`overhead_table` reports the paired ratio's median and spread.

Everything lands in one :class:`~dode.companion.results.ResultStore` (resumable; finished students are saved next to
it and reused), and :func:`cost_table`, :func:`time_to_reach` and :func:`fd_vs_nfe` draw the notebook's
table and figure from the stored file alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from dode.companion import experiments as ex
from dode.companion import plots
from dode.zoo.progressive import (
    Halving,
    halving_steps,
    load_training_images,
    progressive_distillation,
    sample_student,
    training_images_of,
)

__all__ = [
    "PD_KEYS",
    "FAMILIES",
    "run_timing",
    "student_stats",
    "cost_table",
    "pd_table",
    "time_to_reach",
    "fd_vs_nfe",
    "fd_vs_cost",
    "paired_sampling_times",
    "overhead_table",
]

#: the keys of a notebook's ``pd`` parameter (the recipe of :func:`dode.zoo.progressive.progressive_distillation`)
PD_KEYS = (
    "steps_start",
    "steps_end",
    "iterations_per_halving",
    "batch_size",
    "lr",
    "lr_schedule",
    "ema_decay",
    "grad_clip",
    "loss_weight",
    "seed",
)
_PD_OPTIONAL = ("checkpoint_every",)

#: (solver, method) -> label of the table and figure. DDIM on an EDM model is Euler in sigma.
FAMILIES = {
    ("edm", "base"): "EDM (Heun)",
    ("edm", "d-ode"): "D-EDM",
    ("ddim", "base"): "DDIM (Euler)",
    ("ddim", "d-ode"): "D-DDIM",
    ("ddim", "pd"): "PD (DDIM student)",
}
_STYLE = {
    ("edm", "base"): dict(color="0.35", linestyle="--", marker="o"),
    ("edm", "d-ode"): dict(color="C3", linestyle="-", marker="s"),
    ("ddim", "base"): dict(color="0.6", linestyle=":", marker="v"),
    ("ddim", "d-ode"): dict(color="C0", linestyle="-", marker="^"),
    ("ddim", "pd"): dict(color="C2", linestyle="none", marker="*", markersize=11),
}


def _pd_recipe(pd: dict) -> dict:
    unknown = sorted(set(pd) - set(PD_KEYS) - set(_PD_OPTIONAL))
    missing = sorted(set(PD_KEYS) - set(pd))
    if unknown or missing:
        raise ValueError(
            f"pd must give exactly the recipe keys {list(PD_KEYS)} (optionally {list(_PD_OPTIONAL)}); "
            f"unknown {unknown}, missing {missing}"
        )
    return {k: pd[k] for k in PD_KEYS}


def student_stats(
    halving: Halving,
    metric,
    *,
    seed: int,
    n_samples: int,
    batch_size: int,
    shape: tuple[int, ...],
    steps_start: int,
    device="cpu",
):
    """Feature statistics of a student's samples of the evaluation noise of ``seed`` (the same noise every
    ODE solver of the run samples) and the pure sampling time."""
    from dode.metrics import FeatureStats

    stats, seconds = FeatureStats(), 0.0
    for start in range(0, n_samples, batch_size):
        z = ex.noise(seed, "eval", min(batch_size, n_samples - start), shape, start=start, device=device)
        t0 = time.perf_counter()
        x = sample_student(halving, z, steps_start)
        if x.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        stats.update(metric.features(x.float()))
    return stats, seconds


def paired_sampling_times(den, label: str, nfe: int, lambdas, noise: torch.Tensor, repeats: int):
    """Wall times of sampling ``noise`` with the base solver and with the D-solver (``lambdas``), interleaved:
    each repeat times one run of each, their order alternating between repeats, so that a slow spell of a
    shared machine falls on both alike and the per-repeat ratio cancels it (the method of
    ``benchmarks/solver_overhead.py``). Returns two arrays of ``repeats`` seconds: base, D."""
    from dode.sampling import sample

    if repeats < 1:
        raise ValueError(f"repeats must be a positive number of paired runs, got {repeats}")
    solver, options = ex.solver_spec(label)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):
        for with_d in (False, True) if r % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            x = sample(den, noise, solver, nfe, lambdas=lambdas if with_d else None, **options)
            if x.is_cuda:
                torch.cuda.synchronize()
            times[with_d].append(time.perf_counter() - t0)
    return np.asarray(times[False]), np.asarray(times[True])


def overhead_table(ds):
    """The D-solver's sampling time over the base solver's, from the paired, interleaved runs: the median
    of the per-repeat ratios and their range, per solver and NFE (one batch of ``overhead_samples``)."""
    import pandas as pd

    rows = []
    if "overhead_base_seconds" not in ds:
        return pd.DataFrame(rows)
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            sel = {"solver": solver, "nfe": nfe}
            base = np.asarray(ds["overhead_base_seconds"].sel(sel).values, dtype=np.float64)
            d = np.asarray(ds["overhead_d_seconds"].sel(sel).values, dtype=np.float64)
            ok = np.isfinite(base) & np.isfinite(d)
            if not ok.any():
                continue
            ratio = d[ok] / base[ok]
            rows.append(
                (
                    FAMILIES[(solver, "d-ode")],
                    nfe,
                    f"{np.median(ratio):.3f}",
                    f"{ratio.min():.3f} – {ratio.max():.3f}",
                    int(ok.sum()),
                    f"{1e3 * np.median(base[ok]):.0f}",
                )
            )
    columns = ["D-solver", "NFE", "time / base (median)", "range over repeats", "repeats", "base run (ms)"]
    return pd.DataFrame(rows, columns=columns).set_index(["D-solver", "NFE"])


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


def run_timing(stem: str, cfg: dict, results_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the cost comparison of notebook ``stem`` with resolved parameters ``cfg``.

    ``cfg`` needs ``model`` (and optionally ``model_options`` for :func:`dode.zoo.load`), ``nfes`` (a dict ``{"edm": [...], "ddim": [...]}``), ``seeds, K, B, n_samples,
    batch_size, device, threads`` (torch threads; 0 leaves torch's default) and ``pd`` (the recipe, see
    :data:`PD_KEYS`); ``pd_data`` (optional) is a ``.npy``/``.npz`` file of PD's training images
    (:func:`dode.zoo.progressive.load_training_images`; required for models other than the embedded ones, whose
    default is the digits' train split); ``pd_eval_steps`` (optional) lists the students whose samples are scored (default all:
    the ``paper`` recipe's 4096-step student is trained, and timed, but not worth 50k samples); ``floor``
    (optional): the noise floor's reference samplers (:func:`dode.companion.experiments.sweep_floor`), stored
    after everything timed. Returns the results file.
    """
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    nfes = dict(cfg["nfes"])
    for label in nfes:
        if label not in ("edm", "ddim"):
            raise ValueError(f"nfes must map the solvers 'edm' and/or 'ddim' to NFEs, got {label!r}")
    recipe = _pd_recipe(dict(cfg["pd"]))
    pd_steps = halving_steps(recipe["steps_start"], recipe["steps_end"])
    eval_steps = list(cfg.get("pd_eval_steps") or pd_steps)
    if not set(eval_steps) <= set(pd_steps):
        raise ValueError(
            f"pd_eval_steps must be students of the halving schedule {pd_steps}, got {eval_steps}"
        )
    device = cfg["device"]
    den = ex.load_model(cfg["model"], device=device, model_options=cfg.get("model_options"))
    # PD's training images, checked before anything is computed: a paper model needs them from a file
    images = load_training_images(cfg["pd_data"]) if cfg.get("pd_data") else training_images_of(den)
    metric_name, metric = ex.make_metric(den, device=device, fid_stats=cfg.get("fid_stats"))
    shape = ex.sample_shape(den)
    solvers = list(dict.fromkeys([*nfes, "ddim"]))
    all_nfes = sorted({n for v in nfes.values() for n in v} | set(pd_steps))
    dims = {"solver": solvers, "method": ["base", "d-ode", "pd"], "nfe": all_nfes, "seed": list(cfg["seeds"])}
    key = {k: cfg[k] for k in ("K", "B", "n_samples")} | {"metric": metric_name, "pd": recipe}
    store = ex.open_store(results_dir, stem, dims, key, cfg, {den.name: ex.identity(den, metric)})
    # the machine's state while the timed cells were computed; a rerun that finds every cell stored leaves
    # the file (and these attributes of the run that computed it) untouched
    store.attrs.update(
        torch_threads=str(torch.get_num_threads()),
        load_average_at_start=_load_average(),
        cpu_count=str(os.cpu_count()),
    )
    filled_before, wall = _filled(store), time.perf_counter()

    ex.quality_sweep(
        store,
        den,
        metric,
        metric_name,
        solvers=list(nfes),
        nfes=nfes,
        seeds=list(cfg["seeds"]),
        methods=["base", "d-ode"],
        K=cfg["K"],
        B=cfg["B"],
        n_samples=cfg["n_samples"],
        batch_size=cfg["batch_size"],
        device=device,
        progress=progress,
    )

    overhead = cfg.get("overhead") or {}
    if overhead:
        # after the sweep, whose fitted lambdas it reuses (seed of the first evaluation batch)
        seed, repeats = cfg["seeds"][0], int(overhead["repeats"])
        z = ex.noise(seed, "eval", int(overhead["n_samples"]), shape, device=device)
        for label, label_nfes in nfes.items():
            for nfe in label_nfes:
                cell = {"solver": label, "nfe": nfe}
                if store.has("overhead_d_seconds", **cell):
                    continue
                lam = ex._stored_lambdas(
                    store,
                    den,
                    {**cell, "method": "d-ode", "seed": seed},
                    cfg["K"],
                    cfg["B"],
                    None,
                    None,
                    "ls",
                )
                base_s, d_s = paired_sampling_times(den, label, nfe, lam, z, repeats)
                with store.together():
                    dims = {"repeat": list(range(repeats))}
                    store.put("overhead_base_seconds", base_s, extra_dims=dims, **cell)
                    store.put("overhead_d_seconds", d_s, extra_dims=dims, **cell)
        store.attrs.update(overhead_samples=str(int(overhead["n_samples"])))

    def pd_cell_done(steps: int) -> bool:
        scored = steps not in eval_steps or all(
            store.has(metric_name, solver="ddim", method="pd", nfe=steps, seed=s) for s in cfg["seeds"]
        )
        return scored and store.has("cumulative_train_seconds", nfe=steps)

    def evaluate(halving: Halving) -> dict:
        n, record = halving.steps, halving.record
        store.put("train_seconds", record["train_seconds"], nfe=n)
        store.put("train_iterations", record["iterations"], nfe=n)
        store.put("train_loss_final", record["loss_final"], nfe=n)
        store.put(
            "train_resumed", record["resumed"], nfe=n
        )  # 1: loaded from a saved student of an earlier run
        for seed in cfg["seeds"] if n in eval_steps else []:
            cell = {"solver": "ddim", "method": "pd", "nfe": n, "seed": seed}
            if store.has(metric_name, **cell):
                continue
            stats, secs = student_stats(
                halving,
                metric,
                seed=seed,
                n_samples=cfg["n_samples"],
                batch_size=cfg["batch_size"],
                shape=shape,
                steps_start=recipe["steps_start"],
                device=device,
            )
            store.put("sample_seconds", secs, **cell)
            store.put(metric_name, metric(stats), **cell)
        # written last: a level counts as finished once its cumulative time is stored
        store.put("cumulative_train_seconds", record["cumulative_train_seconds"], nfe=n)
        return {}

    if not all(pd_cell_done(n) for n in pd_steps):
        progressive_distillation(
            den,
            **recipe,
            data=images,
            checkpoint_dir=Path(results_dir) / f"{stem}-pd-students",
            checkpoint_every=cfg["pd"].get("checkpoint_every"),
            evaluate=evaluate,
            device=device,
            progress=progress,
        )
    if _filled(store) != filled_before:
        store.attrs.update(
            load_average_at_end=_load_average(), compute_seconds_last_run=f"{time.perf_counter() - wall:.1f}"
        )
        store.flush()
    # after the timed cells and their bookkeeping: the floor (usually read from the cache) times nothing
    ex.sweep_floor(
        store, {den.name: (den, metric)}, metric_name, cfg, results_dir, seeds=cfg["seeds"], device=device
    )
    return store.path


def _filled(store) -> int:
    ds = store.dataset()
    return int(sum(np.isfinite(np.asarray(ds[v].values, dtype=np.float64)).sum() for v in ds.data_vars))


# ------------------------------------------------------------------------------------------------ reading


def _mean(ds, var: str, **sel) -> float:
    if var not in ds:
        return float("nan")
    da = ds[var]
    da = da.sel({k: v for k, v in sel.items() if k in da.dims})
    values = np.asarray(da.values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def cost_table(ds, metric: str = "fd"):
    """Tab. 1 of the paper, measured: every (method, NFE) of the run with its FD (mean over seeds), one-off
    cost (the lambda fit, or the progressive distillation up to that student; 0 for a plain solver), the
    time to sample the evaluation set, and their sum."""
    import pandas as pd

    rows = []
    for (solver, method), label in FAMILIES.items():
        if solver not in ds.coords["solver"].values.tolist():
            continue
        for nfe in ds.coords["nfe"].values.tolist():
            quality = _mean(ds, metric, solver=solver, method=method, nfe=nfe)
            if not np.isfinite(quality):
                continue
            if method == "base":
                one_off = 0.0
            elif method == "d-ode":
                one_off = _mean(ds, "fit_seconds", solver=solver, method=method, nfe=nfe)
            else:
                one_off = _mean(ds, "cumulative_train_seconds", nfe=nfe)
            sampling = _mean(ds, "sample_seconds", solver=solver, method=method, nfe=nfe)
            rows.append((label, nfe, quality, one_off, sampling, one_off + sampling))
    columns = ["method", "NFE", metric.upper(), "one-off cost (s)", "sampling (s)", "total (s)"]
    table = pd.DataFrame(rows, columns=columns).round({metric.upper(): 2})
    # seconds to three significant digits: a small run's costs (a dry run samples a few images) are
    # hundredths of a second, which one decimal would print, and plot on a log axis, as 0
    for column in columns[3:]:
        table[column] = table[column].map(lambda x: float(f"{x:.3g}"))
    return table


def time_to_reach(ds, targets, metric: str = "fd"):
    """For each method and each target quality: the cheapest configuration (NFE) of that method whose FD is
    at most the target, as ``total seconds (NFE n)`` (one-off cost + sampling the evaluation set); ``–`` when
    none of the method's configurations reaches it. The paper's Tab. 1 asks this for "3 FID on CIFAR-10"."""
    import pandas as pd

    table = cost_table(ds, metric)
    quality = metric.upper()
    out = {}
    for label in dict.fromkeys(table["method"]):
        rows = table[table["method"] == label]
        cells = []
        for target in targets:
            ok = rows[rows[quality] <= target]
            if ok.empty:
                cells.append("–")
            else:
                best = ok.loc[ok["total (s)"].idxmin()]
                cells.append(f"{best['total (s)']:.3g} s (NFE {int(best['NFE'])})")
        out[label] = cells
    return pd.DataFrame.from_dict(
        out, orient="index", columns=[f"{quality} ≤ {t:.2f}" for t in targets]
    ).rename_axis("method")


# beside the panel, not over it: the five families' curves and labelled points fill the whole panel
_LEGEND_BESIDE = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0}


def fd_vs_nfe(ds, metric: str = "fd", ax=None, logy: bool = True):
    """Fig. 8a: FD against NFE for EDM (Heun), D-EDM, DDIM (Euler), D-DDIM and PD's students (stars, which
    exist only at the halving schedule's step counts)."""
    import matplotlib.pyplot as plt

    own = ax is None  # a figure of its own, laid out here; a caller's axes are the caller's to lay out
    if own:
        _, ax = plt.subplots(figsize=(plots.PAGE_WIDTH_IN * 0.8, 3.4))
    drawn = []
    for (solver, method), label in FAMILIES.items():
        if solver not in ds.coords["solver"].values.tolist() or metric not in ds:
            continue
        da = ds[metric].sel({"solver": solver, "method": method})
        mean = np.asarray(da.mean("seed", skipna=True).values, dtype=np.float64)
        nfe = np.asarray(da.coords["nfe"].values)
        ok = np.isfinite(mean)
        if ok.any():
            ax.plot(nfe[ok], mean[ok], label=label, **_STYLE[(solver, method)])
            drawn += nfe[ok].tolist()
    floor = plots.floor_band(ax, ds, metric)
    plots.nfe_axis(ax, drawn or ds.coords["nfe"].values)
    ax.set_ylabel(metric.upper())
    if logy:
        plots.log_axis(ax, "y")
    ax.legend(**_LEGEND_BESIDE)
    ax.set_title(f"{metric.upper()} vs NFE (Fig. 8a)")
    if own:
        ax.figure.tight_layout()  # the axis label inside the figure, above the caption
    plots.caption(ax.figure, floor)
    return ax


def pd_table(ds, metric: str = "fd"):
    """Progressive distillation, halving by halving: the student's steps, training iterations and seconds
    (this halving, and all halvings up to it), the final training loss and the student's FD."""
    import pandas as pd

    rows = []
    for nfe in sorted(ds.coords["nfe"].values.tolist(), reverse=True):
        seconds = _mean(ds, "train_seconds", nfe=nfe)
        if not np.isfinite(seconds):
            continue
        rows.append(
            (
                nfe,
                2 * nfe,
                int(_mean(ds, "train_iterations", nfe=nfe)),
                seconds,
                _mean(ds, "cumulative_train_seconds", nfe=nfe),
                _mean(ds, "train_loss_final", nfe=nfe),
                _mean(ds, metric, solver="ddim", method="pd", nfe=nfe),
                _mean(ds, "sample_seconds", solver="ddim", method="pd", nfe=nfe),
            )
        )
    columns = [
        "student steps",
        "teacher steps",
        "iterations",
        "train (s)",
        "cumulative train (s)",
        "final loss",
        metric.upper(),
        "sampling (s)",
    ]
    return pd.DataFrame(rows, columns=columns).round(
        {"train (s)": 1, "cumulative train (s)": 1, metric.upper(): 2, "sampling (s)": 1}
    )


def fd_vs_cost(ds, metric: str = "fd", ax=None, logy: bool = True):
    """Tab. 1 as a picture: FD against total seconds (one-off cost + sampling the evaluation set) of every
    configuration, each point labelled with its NFE. Lower left is better."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(plots.PAGE_WIDTH_IN * 0.8, 3.4))
    table = cost_table(ds, metric)
    quality = metric.upper()
    for (solver, method), label in FAMILIES.items():
        rows = table[table["method"] == label]
        if rows.empty:
            continue
        style = {k: v for k, v in _STYLE[(solver, method)].items() if k != "linestyle"}
        ax.plot(rows["total (s)"], rows[quality], linestyle="none", label=label, **style)
        for _, row in rows.iterrows():
            ax.annotate(
                str(int(row["NFE"])),
                (row["total (s)"], row[quality]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=plots.FONT_PT["small"],
            )
    plots.log_axis(ax, "x")
    if logy:
        plots.log_axis(ax, "y")
    ax.set_xlabel("one-off cost + sampling the evaluation set (s)")
    ax.set_ylabel(quality)
    ax.set_title("quality against total time (numbers: NFE)")
    ax.legend(**_LEGEND_BESIDE)
    return ax
