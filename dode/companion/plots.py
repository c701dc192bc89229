"""Figures and tables drawn from results files (xarray Datasets), laid out like the paper's panels.

Selections use the dict form ``ds.sel({"method": ...})``: ``method`` is a dimension of the results schema
and also a keyword of xarray's ``sel``.
"""

from __future__ import annotations

import warnings

import numpy as np

from dode.companion.labels import SOLVER_NAMES, method_label

__all__ = [
    "style",
    "metric_vs_nfe",
    "mean_std",
    "mean_std_table",
    "image_grid",
    "show_images",
    "sweep_table",
    "paired_gain",
    "plot_lambdas",
    "timing_table",
    "similarity_heatmaps",
    "similarity_profiles",
    "similarity_summary",
    "trajectory_norms",
    "trajectory_pixels",
    "trajectory_distance",
    "distance_table",
    "sample_grids",
    "trajectory_finals",
    "sample_distance_table",
    "verdict_table",
    "summary_figure",
    "paired_gains",
    "paper_comparison",
    "best_constant",
    "ablation",
    "lambda_search",
    "paired_difference",
]

METHOD_STYLE = {
    "base": dict(color="0.35", linestyle="--", marker="o"),
    "d-ode": dict(color="C3", linestyle="-", marker="s"),
    "d-ode-joint": dict(color="C5", linestyle=":", marker="D"),
    "d-ode-2": dict(color="C2", linestyle="-", marker="^"),
    "sep": dict(color="C0", linestyle="-", marker="v"),
    "all": dict(color="C4", linestyle="-", marker="D"),
    "fixed": dict(color="C1", linestyle="-", marker="P"),
    "lookahead": dict(color="C9", linestyle="-", marker="X"),
}


def style() -> None:
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def mean_std(da, dim: str = "seed"):
    """Mean and standard deviation over ``dim``, ignoring missing cells."""
    values = np.asarray(da.values, dtype=np.float64)
    axis = da.dims.index(dim)
    count = np.sum(np.isfinite(values), axis=axis)
    # cells that no seed filled (e.g. Heun at an even NFE) are all-NaN slices: NaN is the answer, not a warning
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=axis) if values.size else values
        std = np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
    mean = np.where(count > 0, mean, np.nan)
    std = np.where(count > 1, std, np.nan)
    return mean, std


def _plain_log_ticks(ax) -> None:
    """Log axis labelled 2, 5, 10 rather than 2 x 10^0 (FD values span one or two decades)."""
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    def two_and_five(value, _):
        if value <= 0:
            return ""
        mantissa = value / 10 ** np.floor(np.log10(value))
        return f"{value:g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FuncFormatter(two_and_five))


def _by_model(ds) -> list[tuple[str | None, object]]:
    """``[(model, its part of ds)]`` for a results file with a ``model`` dimension, ``[(None, ds)]`` else."""
    if "model" not in ds.dims:
        return [(None, ds)]
    return [(m, ds.sel({"model": m})) for m in ds.coords["model"].values.tolist()]


def _stack_models(ds, table):
    """``table(part)`` of each model's part of ``ds``, stacked with the model as the outer index level."""
    import pandas as pd

    parts = _by_model(ds)
    if parts[0][0] is None:
        return table(ds)
    return pd.concat({model: table(part) for model, part in parts}, names=["model"])


def metric_vs_nfe(ds, var: str = "fd", solvers=None, methods=None, axes=None, logy: bool = True, ylabel=None):
    """One panel per model and solver (a row per model, as the paper's Fig. 3/4 lay out their datasets):
    ``var`` (mean +- std over seeds) against NFE, base vs D-variants."""
    import matplotlib.pyplot as plt

    solvers = list(solvers or ds.coords["solver"].values.tolist())
    methods = list(methods or ds.coords["method"].values.tolist())
    parts = _by_model(ds)
    if axes is None:
        fig, grid = plt.subplots(
            len(parts), len(solvers), figsize=(3.4 * len(solvers), 3.0 * len(parts)), squeeze=False
        )
        axes = [ax for row in grid for ax in row]
    else:
        fig = axes[0].figure
    panels = [(model, part, solver) for model, part in parts for solver in solvers]
    for ax, (model, part, solver) in zip(axes, panels, strict=True):
        for method in methods:
            da = part[var].sel({"solver": solver, "method": method})
            mean, std = mean_std(da)
            nfe = da.coords["nfe"].values
            ok = np.isfinite(mean)
            if not ok.any():
                continue
            st = METHOD_STYLE.get(method, {})
            ax.errorbar(
                nfe[ok],
                mean[ok],
                yerr=np.nan_to_num(std[ok]),
                capsize=2,
                markersize=4,
                label=method_label(solver, method),
                **st,
            )
        ax.set_title(SOLVER_NAMES.get(solver, solver) + (f" · {model}" if model else ""))
        ax.set_xlabel("NFE")
        if logy:
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        ax.legend(fontsize=8)
        if solver == solvers[0]:
            ax.set_ylabel(ylabel or var.upper())
    fig.tight_layout()
    return fig


def mean_std_table(
    ds, var: str, rows: str, cols: str, fixed: dict | None = None, digits: int = 2, labels=None
):
    """A pandas table of ``mean ± std`` over seeds, ``rows`` x ``cols`` (e.g. method x nfe)."""
    import pandas as pd

    da = ds[var]
    if fixed:
        da = da.sel(fixed)
    mean, std = mean_std(da.transpose(rows, cols, "seed"))
    index = [labels.get(v, v) if labels else v for v in da.coords[rows].values.tolist()]
    columns = da.coords[cols].values.tolist()
    cells = [
        [
            "–"
            if not np.isfinite(m)
            else (f"{m:.{digits}f}" if not np.isfinite(s) else f"{m:.{digits}f} ± {s:.{digits}f}")
            for m, s in zip(mrow, srow, strict=True)
        ]
        for mrow, srow in zip(mean, std, strict=True)
    ]
    return pd.DataFrame(cells, index=index, columns=columns)


def image_grid(images, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` in [-1, 1] into one array in [0, 1] (gray for C = 1)."""
    x = np.asarray(images, dtype=np.float64)
    x = np.clip((x + 1) / 2, 0, 1)
    n, c, h, w = x.shape
    ncol = int(np.ceil(n / nrow))
    grid = np.ones((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad))
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[
            :, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w
        ] = x[i]
    return grid[0] if c == 1 else np.transpose(grid, (1, 2, 0))


def show_images(ax, images, nrow: int = 8, title: str | None = None) -> None:
    grid = image_grid(images, nrow)
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)


def sweep_table(ds, var: str, digits: int = 2, paper: dict | None = None, paper_nfes=()):
    """Rows ([model,] solver, method) x columns NFE: ``mean ± std`` over seeds of ``var``.

    ``paper``: the paper's numbers, ``(solver, method) -> values at paper_nfes`` (``dode.companion.paper``),
    shown in a last column beside ours for the rows that have them (the paper's CIFAR-10 numbers: with a
    model dimension they sit beside every model's rows)."""
    if "model" in ds.dims:
        return _stack_models(ds, lambda part: sweep_table(part, var, digits, paper, paper_nfes))
    import pandas as pd

    frames = []
    for solver in ds.coords["solver"].values.tolist():
        table = mean_std_table(ds, var, rows="method", cols="nfe", fixed={"solver": solver}, digits=digits)
        methods = list(table.index)
        table.index = pd.MultiIndex.from_tuples([(SOLVER_NAMES.get(solver, solver), m) for m in methods])
        if paper:
            table["paper"] = [" / ".join(f"{v:g}" for v in paper.get((solver, m), ())) for m in methods]
        frames.append(table)
    out = pd.concat(frames)
    out.columns = [
        f"NFE {n}" if n != "paper" else f"paper (CIFAR-10 FID), NFE {' / '.join(map(str, paper_nfes))}"
        for n in out.columns
    ]
    return out


def paired_gain(ds, var: str, method: str = "d-ode", base: str = "base", digits: int = 2):
    """``base - method`` per seed (same evaluation noise), as ``mean ± std`` over seeds, with the number of
    seeds in which the method wins. Positive = the D-solver is better (lower FD/FID). One block per model."""
    if "model" in ds.dims:
        return _stack_models(ds, lambda part: paired_gain(part, var, method, base, digits))
    import pandas as pd

    rows, index = [], []
    for solver in ds.coords["solver"].values.tolist():
        da = ds[var].sel({"solver": solver})
        diff = da.sel({"method": base}) - da.sel({"method": method})
        mean, std = mean_std(diff.transpose("nfe", "seed"))
        wins = (diff > 0).sum("seed").values
        counted = np.isfinite(diff).sum("seed").values
        cells = []
        for m, s, w, c in zip(mean, std, wins, counted, strict=True):
            if c == 0:
                cells.append("–")
            else:
                spread = "" if not np.isfinite(s) else f" ± {s:.{digits}f}"
                cells.append(f"{m:+.{digits}f}{spread} ({w}/{c})")
        rows.append(cells)
        index.append(SOLVER_NAMES.get(solver, solver))
    return pd.DataFrame(rows, index=index, columns=[f"NFE {n}" for n in ds.coords["nfe"].values.tolist()])


def plot_lambdas(ds, nfe: int, method: str = "d-ode", solvers=None, ax=None):
    """Fitted lambda of each network evaluation (mean ± std over seeds) at one NFE, one line per solver."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.0))
    lines = [
        (m, part, s) for m, part in _by_model(ds) for s in solvers or ds.coords["solver"].values.tolist()
    ]
    for model, part, solver in lines:
        da = part["lambdas"].sel({"solver": solver, "method": method, "nfe": nfe, "param": 0})
        mean, std = mean_std(da.transpose("evaluation", "seed"))
        k = da.coords["evaluation"].values
        ok = np.isfinite(mean)
        ax.errorbar(
            k[ok],
            mean[ok],
            yerr=np.nan_to_num(std[ok]),
            marker="o",
            markersize=3,
            capsize=2,
            label=SOLVER_NAMES.get(solver, solver) + (f" · {model}" if model else ""),
        )
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("network evaluation k")
    ax.set_ylabel(r"$\lambda_k$")
    ax.set_title(f"fitted lambdas at NFE {nfe}" + ("" if method == "d-ode" else f" ({method})"))
    ax.legend(fontsize=8)
    return ax


def timing_table(ds):
    """Mean wall time (s) of the closed-form fit (and of the joint fit, where the file has one) and of
    sampling the evaluation set, per [model,] solver and NFE.

    The D-solver's sampling time is left out on purpose: the cells run one after the other, on a machine that
    may be busy with other jobs, and a D/base ratio of such times measures the machine as much as the
    transform. Notebook 10 measures that overhead paired and interleaved (``timing.overhead_table``)."""
    if "model" in ds.dims:
        return _stack_models(ds, timing_table)
    import pandas as pd

    fits = [m for m in ("d-ode", "d-ode-joint") if m in ds.coords["method"].values and "fit_seconds" in ds]
    rows = []
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            sel = {"solver": solver, "nfe": nfe}
            seconds = [ds["fit_seconds"].sel(sel).sel({"method": m}).mean("seed").item() for m in fits]
            base = ds["sample_seconds"].sel(sel).sel({"method": "base"}).mean("seed").item()
            if np.isfinite(base):
                rows.append((SOLVER_NAMES.get(solver, solver), nfe, *seconds, base))
    labels = {"d-ode": "fit: teacher + student run (s)", "d-ode-joint": "joint fit, teacher included (s)"}
    columns = ["solver", "NFE", *(labels[m] for m in fits), "sampling the evaluation set (s)"]
    return pd.DataFrame(rows, columns=columns).round(2).set_index(["solver", "NFE"])


# ---------------------------------------------------------------------------------------------------------
# Analysis figures (notebooks 01, 05, 06), drawn from their results files.

REFERENCE_STYLE = dict(color="black", linestyle="-", linewidth=1.6)
TIME_LABEL = {"t": "model time t (noise → data)", "sigma": "σ (noise → data)"}


def _time_axis(ax, variable: str) -> None:
    """Noise on the left, data on the right, as in the paper's trajectory plots; sigma on a log scale."""
    if variable == "sigma":
        ax.set_xscale("symlog", linthresh=1e-2)
    ax.invert_xaxis()
    ax.set_xlabel(TIME_LABEL.get(variable, variable))


def _models_time_variable(ds) -> dict:
    import json

    return json.loads(ds.attrs.get("time_variable", "{}"))


def _prediction_name(ds, model: str) -> str:
    return (
        "data prediction" if ds["data_prediction"].sel({"model": model}).item() == 1 else "noise prediction"
    )


def similarity_heatmaps(ds, cmap: str = "viridis"):
    """Fig. 2: one heatmap per model of the cosine similarity between all denoising outputs of one run.

    Axes are evaluation indices (0 = the first evaluation, at pure noise); tick labels add the model time."""
    import matplotlib.pyplot as plt

    models = ds.coords["model"].values.tolist()
    variables = _models_time_variable(ds)
    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models), 4.0), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        S = ds["similarity"].sel({"model": model}).values
        ok = np.isfinite(S).any(axis=1)
        S = S[np.ix_(ok, ok)]
        times = ds["eval_time"].sel({"model": model}).values[ok]
        # the colour scale starts at the smallest similarity (rounded down to 0.05), or the structure of
        # matrices that are all close to one would be invisible
        low = np.floor(float(np.nanmin(S)) * 20) / 20
        image = ax.imshow(S, cmap=cmap, vmin=min(low, 0.95), vmax=1.0, interpolation="nearest")
        n = len(S)
        ticks = np.unique(np.linspace(0, n - 1, 5).round().astype(int))
        symbol = "σ" if variables.get(model) == "sigma" else "t"
        labels = [f"{i}\n{symbol}={times[i]:.3g}" for i in ticks]
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_yticks(ticks, [lb.replace("\n", " ") for lb in labels], fontsize=7)
        ax.set_xlabel("evaluation j (noise → data)")
        ax.set_ylabel("evaluation i")
        ax.grid(False)
        ax.set_title(f"{model}\n({_prediction_name(ds, model)}, {n} steps)", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    return fig


def similarity_profiles(ds):
    """Two cuts through the Fig. 2 matrices: similarity of each output with the next one, and with the last."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for k, model in enumerate(ds.coords["model"].values.tolist()):
        S = ds["similarity"].sel({"model": model}).values
        ok = np.isfinite(S).any(axis=1)
        S = S[np.ix_(ok, ok)]
        frac = np.arange(len(S)) / max(len(S) - 1, 1)
        label = f"{model} ({_prediction_name(ds, model)})"
        axes[0].plot(frac[:-1], np.diag(S, 1), color=f"C{k}", label=label)
        axes[1].plot(frac, S[:, -1], color=f"C{k}", label=label)
    axes[0].set_title("cos(d_i, d_{i+1}): neighbouring outputs")
    axes[1].set_title("cos(d_i, d_last): with the final output")
    for ax in axes:
        ax.set_xlabel("fraction of the run (0 = pure noise, 1 = data)")
        ax.set_ylabel("cosine similarity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def similarity_summary(ds):
    """Per model: neighbouring-output similarity (mean, min), first vs last output, share of pairs > 0.9."""
    import pandas as pd

    rows = []
    for model in ds.coords["model"].values.tolist():
        S = ds["similarity"].sel({"model": model}).values
        ok = np.isfinite(S).any(axis=1)
        S = S[np.ix_(ok, ok)]
        neighbours = np.diag(S, 1)
        rows.append(
            {
                "model": model,
                "prediction": _prediction_name(ds, model),
                "steps": len(S),
                "cos(d_i, d_i+1) mean": neighbours.mean(),
                "cos(d_i, d_i+1) min": neighbours.min(),
                "cos(d_first, d_last)": S[0, -1],
                "share of pairs > 0.9": float(np.mean(S > 0.9)),
            }
        )
    return pd.DataFrame(rows).round(4)


def _traj_label(solver: str, method: str, nfe: int) -> str:
    return f"{method_label(solver, method)}-{nfe}"


def _cell(ds, var: str, solver: str, nfe: int, method: str):
    return ds[var].sel({"solver": solver, "nfe": nfe, "method": method})


def trajectory_norms(ds, solver: str, nfe: int, methods, ax=None, reference: bool = True):
    """Fig. 5 (top) / Fig. 7: mean over samples of ||x_t|| along each run, with the long DDIM reference."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    if reference:
        t_ref = ds["reference_time"].values
        ax.plot(
            t_ref, ds["reference_norm"].mean("sample").values, label=_reference_label(ds), **REFERENCE_STYLE
        )
    for method in methods:
        t = _cell(ds, "state_time", solver, nfe, method).values
        norm = _cell(ds, "norm", solver, nfe, method).mean("sample").values
        ok = np.isfinite(t)
        st = METHOD_STYLE.get(method, {})
        ax.plot(t[ok], norm[ok], markersize=4, label=_traj_label(solver, method, nfe), **st)
    _time_axis(ax, ds.attrs.get("time_variable", "t"))
    ax.set_ylabel(r"mean $\|x_t\|_2$")
    ax.legend(fontsize=8)
    return ax


def _reference_label(ds) -> str:
    import json

    steps = json.loads(ds.attrs["comparability_key"])["reference_steps"]
    return f"DDIM-{steps} (reference)"


def trajectory_pixels(ds, solver: str, nfe: int, methods, pixels, sample: int = 0, axes=None):
    """Fig. 5 (bottom) / Fig. 11: the value of single pixels of one sample along each run."""
    import matplotlib.pyplot as plt

    pixels = list(pixels)
    if axes is None:
        _, axes = plt.subplots(1, len(pixels), figsize=(4.4 * len(pixels), 3.2), squeeze=False)
        axes = axes[0]
    position = ds["pixel_position"].values.astype(int)
    for ax, p in zip(axes, pixels, strict=True):
        ref = ds["reference_pixels"].sel({"sample": sample, "pixel": p}).values
        ax.plot(ds["reference_time"].values, ref, label=_reference_label(ds), **REFERENCE_STYLE)
        for method in methods:
            t = _cell(ds, "state_time", solver, nfe, method).values
            v = _cell(ds, "pixels", solver, nfe, method).sel({"sample": sample, "pixel": p}).values
            ok = np.isfinite(t)
            ax.plot(
                t[ok],
                v[ok],
                markersize=4,
                label=_traj_label(solver, method, nfe),
                **METHOD_STYLE.get(method, {}),
            )
        _time_axis(ax, ds.attrs.get("time_variable", "t"))
        ax.set_title(f"sample {sample}, pixel {tuple(position[p].tolist())} (c, row, col)", fontsize=9)
        ax.set_ylabel("pixel value")
    axes[0].legend(fontsize=8)
    return axes


def trajectory_distance(ds, solver: str, nfe: int, methods, ax=None):
    """||x_t - x_t^ref|| (mean over samples) at each state of a run, the reference interpolated in time."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.4))
    for method in methods:
        t = _cell(ds, "state_time", solver, nfe, method).values
        d = _cell(ds, "distance", solver, nfe, method).mean("sample").values
        ok = np.isfinite(t)
        ax.plot(
            t[ok], d[ok], markersize=4, label=_traj_label(solver, method, nfe), **METHOD_STYLE.get(method, {})
        )
    _time_axis(ax, ds.attrs.get("time_variable", "t"))
    ax.set_ylabel(r"mean $\|x_t - x_t^{\mathrm{ref}}\|_2$")
    ax.legend(fontsize=8)
    return ax


def distance_table(ds):
    """Final-sample distance to the reference (mean ± std over samples), per solver, NFE and method."""
    import pandas as pd

    rows = []
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            row = {"solver": SOLVER_NAMES.get(solver, solver), "NFE": nfe}
            for method in ds.coords["method"].values.tolist():
                d = _cell(ds, "distance", solver, nfe, method)
                t = _cell(ds, "state_time", solver, nfe, method).values
                last = int(np.flatnonzero(np.isfinite(t))[-1]) if np.isfinite(t).any() else None
                if last is None:
                    continue
                final = d.isel(state=last).values
                row[method_label(solver, method)] = f"{final.mean():.3f} ± {final.std(ddof=1):.3f}"
            rows.append(row)
    return pd.DataFrame(rows)


def _trim_padding(x) -> np.ndarray:
    """Drop the NaN padding a results file adds where arrays of different sizes share a dimension."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    index = [
        np.flatnonzero(finite.any(axis=tuple(j for j in range(x.ndim) if j != i))) for i in range(x.ndim)
    ]
    return x[np.ix_(*index)]


def sample_distance_table(ds):
    """Mean L2 distance (± std over images) of each panel's samples to the long DDIM run on the same noise."""
    import pandas as pd

    if "reference" not in ds:
        raise ValueError("the results hold no reference run (reference_steps = 0)")
    rows = []
    for panel in ds.coords["panel"].values.tolist():
        model, solver = panel.rsplit("/", 1)
        ref = _trim_padding(ds["reference"].sel({"model": model}).values)
        for nfe in ds.coords["nfe"].values.tolist():
            row = {"model": model, "solver": SOLVER_NAMES.get(solver, solver), "NFE": nfe}
            for method in ds.coords["method"].values.tolist():
                x = ds["samples"].sel({"panel": panel, "method": method, "nfe": nfe}).values
                if not np.isfinite(x).any():
                    continue
                d = np.linalg.norm((_trim_padding(x) - ref).reshape(len(ref), -1), axis=1)
                row["base" if method == "base" else "D"] = f"{d.mean():.3f} ± {d.std(ddof=1):.3f}"
            if len(row) > 3:
                rows.append(row)
    return pd.DataFrame(rows)


def _closeups(rows, reference, title: str, pixels=None):
    """One row per ``(label, images)``, one column per image, drawn large without smoothing; when
    ``reference`` (images of the same noise) is given, each image's title is its L2 distance to the
    reference image of its column. ``pixels`` (``(n, 3)`` positions ``c, row, col``) are outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ncol = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), ncol + 1, figsize=(1.55 * (ncol + 1), 1.6 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        axes[r, 0].axis("off")
        axes[r, 0].text(1.0, 0.5, label, ha="right", va="center", fontsize=9, transform=axes[r, 0].transAxes)
        for c in range(ncol):
            ax = axes[r, c + 1]
            distance = None
            if reference is not None and images is not reference:
                distance = f"{np.linalg.norm(images[c] - reference[c]):.2f}"
            show_images(ax, images[c : c + 1], nrow=1, title=distance)
            for _, row, col in pixels if pixels is not None else []:
                # image_grid pads by one pixel: image pixel (row, col) is drawn at (row + 1, col + 1)
                ax.add_patch(
                    Rectangle((col + 0.5, row + 0.5), 1, 1, fill=False, edgecolor="C3", linewidth=1.2)
                )
    fig.suptitle(
        title + (" (titles: L2 distance to the reference)" if reference is not None else ""), fontsize=10
    )
    fig.tight_layout()
    return fig


def sample_grids(ds, panel: str, n_show: int = 4):
    """Fig. 6 / 12-15, large enough to see the difference: the first ``n_show`` images of a panel, one column
    each, upscaled without smoothing; the first row is the long DDIM run from the same noise (what both
    solvers approach), then base and D-solver at every NFE. Each image's title gives its L2 distance to that
    reference image (pixel values in [-1, 1]), so that what D-ODE changes can be read as well as seen."""
    import json

    model, solver = panel.rsplit("/", 1)
    da = ds["samples"].sel({"panel": panel})
    nfes = [n for n in ds.coords["nfe"].values.tolist() if np.isfinite(da.sel({"nfe": n})).any()]
    rows = []
    ref = None
    if "reference" in ds and np.isfinite(ds["reference"].sel({"model": model})).any():
        ref = _trim_padding(ds["reference"].sel({"model": model}).values)[:n_show]
        steps = json.loads(ds.attrs["comparability_key"])["reference_steps"]
        rows.append((f"DDIM\n{steps} steps\n(reference)", ref))
    for nfe in nfes:
        for method in ds.coords["method"].values.tolist():
            images = _trim_padding(da.sel({"method": method, "nfe": nfe}).values)[:n_show]
            rows.append((f"{method_label(solver, method)}\nNFE {nfe}", images))
    pretty = SOLVER_NAMES.get(solver, solver)
    return _closeups(rows, ref, f"{model}: {pretty} vs D-{pretty}")


def trajectory_finals(ds, solver: str, nfe: int, methods, n_show: int = 4):
    """Where the trajectories of notebook 05 end: the first ``n_show`` samples of the reference run and of
    each method, large, with each image's L2 distance to the reference's and the tracked pixels outlined
    (the pixel plots follow those pixels of the first sample)."""
    rows = [(_reference_label(ds).replace(" (", "\n("), _trim_padding(ds["reference_final"].values)[:n_show])]
    for method in methods:
        images = _trim_padding(ds["final"].sel({"solver": solver, "nfe": nfe, "method": method}).values)
        rows.append((_traj_label(solver, method, nfe), images[:n_show]))
    pixels = np.asarray(ds["pixel_position"].values, dtype=int)
    return _closeups(
        rows, rows[0][1], f"{SOLVER_NAMES.get(solver, solver)}, NFE {nfe}: the samples", pixels=pixels
    )


def _cell_text(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_gains(ds, var: str, methods, base: str = "base", digits: int = 2):
    """:func:`paired_gain` of several methods against ``base``, one row per (solver, method)."""
    import pandas as pd

    frames = []
    for method in methods:
        table = paired_gain(ds, var, method=method, base=base, digits=digits)
        solvers = ds.coords["solver"].values.tolist()
        table.index = [f"{method_label(s, base)} − {method_label(s, method)}" for s in solvers]
        frames.append(table)
    return pd.concat(frames)


def paper_comparison(ds, var: str, paper: dict, rows: dict, nfes=None, digits: int = 2):
    """Ours (mean ± std over seeds) beside the paper's numbers, one row per paper row.

    ``paper`` maps a row label to the paper's values at ``nfes`` (default :data:`dode.companion.paper.NFES`);
    ``rows`` maps the same label to the selection of our results that corresponds to it (e.g.
    ``{"solver": "ddim", "method": "sep"}``). NFEs we did not run show "–".
    """
    import pandas as pd

    from dode.companion.paper import NFES

    nfes = list(nfes or NFES)
    ours_nfes = ds.coords["nfe"].values.tolist()
    table = {}
    for label, selection in rows.items():
        da = ds[var].sel(selection)
        cells = []
        for i, n in enumerate(nfes):
            if n in ours_nfes:
                mean, std = mean_std(da.sel({"nfe": n}).expand_dims("nfe").transpose("nfe", "seed"))
                cells.append(_cell_text(float(mean[0]), float(std[0]), digits))
            else:
                cells.append("–")
            cells.append(f"{paper[label][i]:.2f}" if label in paper else "–")
        table[label] = cells
    columns = pd.MultiIndex.from_tuples([(f"NFE {n}", who) for n in nfes for who in ("ours", "paper")])
    return pd.DataFrame.from_dict(table, orient="index", columns=columns)


def best_constant(ds, var: str, methods=("fixed", "lookahead")):
    """The grid search of a constant lambda: ``(reduced, best)``.

    ``best[solver, method, nfe]`` is the grid value with the lowest mean ``var`` over seeds; ``reduced`` is
    ``ds[var]`` without the ``lambda_value`` dimension, each constant-lambda method at its best value (the
    other methods do not depend on lambda_value). The choice is made on the evaluation samples themselves,
    as in a plain grid search, so the best value's score is optimistic by the selection.
    """
    import xarray as xr

    da = ds[var]
    mean = da.mean("seed", skipna=True)
    reduced = da.isel({"lambda_value": 0}, drop=True).copy()
    best = xr.full_like(reduced.isel({"seed": 0}, drop=True), np.nan)
    for method in methods:
        m = mean.sel({"method": method})
        filled = m.fillna(np.inf)
        idx = filled.argmin("lambda_value")
        chosen = da.coords["lambda_value"].values[idx.values]
        chosen = np.where(np.isfinite(m.min("lambda_value", skipna=True).values), chosen, np.nan)
        best.loc[{"method": method}] = chosen
        picked = da.sel({"method": method}).isel({"lambda_value": idx})
        reduced.loc[{"method": method}] = picked.drop_vars("lambda_value", errors="ignore").transpose(
            *reduced.sel({"method": method}).dims
        )
    return reduced.to_dataset(name=var), best


def ablation(ds, var: str, vary: str, at: dict, solver: str = "ddim", method: str = "d-ode", ax=None):
    """``var`` (mean ± std over seeds) of the D-solver against ``vary`` (K or B) with the other distillation
    parameter fixed by ``at``, one line per NFE; the base solver's value, far above, in the title (Tab. 3 as
    a figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.0))
    notes = []
    for i, nfe in enumerate(ds.coords["nfe"].values.tolist()):
        da = ds[var].sel({"solver": solver, "method": method, "nfe": nfe, **at})
        mean, std = mean_std(da.transpose(vary, "seed"))
        x = da.coords[vary].values
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        color = f"C{i}"
        ax.errorbar(
            x[ok],
            mean[ok],
            yerr=np.nan_to_num(std[ok]),
            marker="o",
            capsize=3,
            color=color,
            label=f"{method_label(solver, method)}, NFE {nfe}",
        )
        if (
            "base" in ds.coords["method"].values.tolist()
        ):  # far above on the scale of the D-solver: noted only
            base = ds[var].sel({"solver": solver, "method": "base", "nfe": nfe, **at}).mean().item()
            notes.append(f"{method_label(solver, 'base')} NFE {nfe}: {base:.2f}")
    ax.set_xscale("log")
    ax.set_xticks(ds.coords[vary].values)
    ax.set_xticklabels([str(v) for v in ds.coords[vary].values.tolist()])
    ax.xaxis.set_minor_formatter(NullFormatter())
    fixed = ", ".join(f"{k} = {v}" for k, v in at.items())
    ax.set_xlabel(vary)
    ax.set_ylabel(var.upper())
    ax.set_title(f"{vary} varies ({fixed})" + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    ax.legend(fontsize=7)
    return ax


def lambda_search(ds, var: str, nfe: int, solver: str = "ddim", methods=("lookahead", "fixed"), axes=None):
    """Fig. 8b-c: ``var`` against the constant lambda of each constant-lambda method (mean ± std over seeds),
    with the base solver and the fitted D-solver as dotted reference lines."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, len(methods), figsize=(3.8 * len(methods), 3.0), squeeze=False)
        axes = axes[0]
    else:
        fig = axes[0].figure
    for ax, method in zip(axes, methods, strict=True):
        da = ds[var].sel({"solver": solver, "method": method, "nfe": nfe})
        mean, std = mean_std(da.transpose("lambda_value", "seed"))
        x = da.coords["lambda_value"].values
        ok = np.isfinite(mean)
        ax.errorbar(
            x[ok],
            mean[ok],
            yerr=np.nan_to_num(std[ok]),
            capsize=3,
            markersize=5,
            label=method_label(solver, method),
            **METHOD_STYLE.get(method, {}),
        )
        for ref in ("base", "d-ode"):
            value = ds[var].sel({"solver": solver, "method": ref, "nfe": nfe}).mean().item()
            ax.axhline(
                value, linestyle=":", color=METHOD_STYLE[ref]["color"], label=method_label(solver, ref)
            )
        ax.set_xlabel(r"constant $\lambda$")
        ax.set_yscale("log")
        ax.set_title(f"{method_label(solver, method)}, NFE {nfe}")
        ax.legend(fontsize=8)
    axes[0].set_ylabel(var.upper())
    fig.tight_layout()
    return fig


def paired_difference(ds, var: str, method: str, reference: str, **selection) -> str:
    """``method − reference`` of the same seeds (same evaluation noise) as a sentence: mean ± std over seeds
    and in how many seeds ``method`` is lower (better for FD/FID)."""
    da = ds[var].sel(selection)
    diff = (da.sel({"method": method}) - da.sel({"method": reference})).values.ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return f"{method} − {reference}: no paired cells"
    spread = f" ± {np.std(diff, ddof=1):.2f}" if diff.size > 1 else ""
    return f"{method} − {reference}: {np.mean(diff):+.2f}{spread} ({int(np.sum(diff < 0))}/{diff.size} seeds lower)"


# ---------------------------------------------------------------------------------------------------------
# The reproduction page (notebook 11)


def verdict_table(page):
    """The reproduction page's table, as HTML: claim, the paper's figure or table and number, ours (the
    evidence's first line), the verdict (coloured by the book's CSS, ``verdict-<verdict>``), and the evidence:
    the full text behind a click and links to the notebooks it comes from (``claims.EVIDENCE``).

    ``page``: the dataset of ``11_reproduction.nc`` (``statement``, ``verdict``, ``evidence`` per claim)."""
    from html import escape

    from IPython.display import HTML

    from dode.companion.claims import EVIDENCE
    from dode.companion.paper import CLAIM_SOURCES

    rows = []
    for claim in page.coords["claim"].values.tolist():
        row = page.sel(claim=claim)
        verdict = str(row["verdict"].values)
        lines = str(row["evidence"].values).splitlines() or [""]
        # the findings beyond the paper (claims.FINDINGS) have no figure or number of the paper's
        where, number = CLAIM_SOURCES.get(claim, ("beyond the paper", "—"))
        links = ", ".join(f'<a href="{stem}.html">{escape(stem[:2])}</a>' for stem in EVIDENCE[claim])
        details = "<br>".join(escape(line) for line in lines)
        rows.append(
            "<tr>"
            f'<td style="text-align:left;white-space:normal">{escape(str(row["statement"].values))}</td>'
            f"<td>{escape(where)}</td>"
            f'<td style="text-align:left;white-space:normal">{escape(number)}</td>'
            f'<td style="text-align:left;white-space:normal">{escape(lines[0])}</td>'
            f'<td class="verdict-{verdict.replace(" ", "-")}">{escape(verdict)}</td>'
            f'<td style="text-align:left;white-space:normal">notebooks {links}'
            f"<details><summary>evidence</summary><small>{details}</small></details></td>"
            "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("claim", "paper", "paper's number", "ours", "verdict", "evidence")
    )
    return HTML(
        f'<table class="dataframe verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


#: the sweeps of the summary figure, in reading order: noise prediction (02, 04), data prediction (03)
SUMMARY_STEMS = ("02_noise_prediction", "04_dpm_solver_pp", "03_data_prediction")


def summary_figure(results: dict, ncols: int = 4):
    """The book's opening figure: FD (FID) against NFE for every base solver and its D-solver, one panel per
    (sweep, solver) of the results of notebooks 02, 04 and 03 (``results``: stem -> dataset)."""
    import math

    import matplotlib.pyplot as plt

    panels = [
        (stem, solver)
        for stem in SUMMARY_STEMS
        if stem in results
        for solver in results[stem].coords["solver"].values.tolist()
    ]
    if not panels:
        raise ValueError(f"results must hold at least one of {SUMMARY_STEMS}, got {sorted(results)}")
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (stem, solver) in zip(axes.ravel(), panels, strict=False):
        ds = results[stem]
        if "model" in ds.dims:  # the summary shows the first model of a multi-model file
            ds = ds.isel(model=0)
        model = str(ds["model"].values) if "model" in ds.coords else ds.attrs["model"]
        var = "fid" if "fid" in ds else "fd"
        metric_vs_nfe(ds, var, solvers=[solver], methods=["base", "d-ode"], axes=[ax])
        ax.set_title(f"{SOLVER_NAMES.get(solver, solver)} · {model}", fontsize=9)
        ax.set_ylabel(var.upper())
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
