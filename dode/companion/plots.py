"""Figures and tables drawn from results files (xarray Datasets), laid out like the paper's panels.

Selections use the dict form ``ds.sel({"method": ...})``: ``method`` is a dimension of the results schema
and also a keyword of xarray's ``sel``.
"""

from __future__ import annotations

import warnings

import numpy as np

from dode.companion.experiments import PRETTY

__all__ = [
    "style",
    "metric_vs_nfe",
    "mean_std",
    "mean_std_table",
    "image_grid",
    "show_images",
    "method_label",
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
    "sample_distance_table",
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
    "d-ode-2": dict(color="C2", linestyle="-", marker="^"),
    "sep": dict(color="C0", linestyle="-", marker="v"),
    "all": dict(color="C4", linestyle="-", marker="D"),
    "fixed": dict(color="C1", linestyle="-", marker="P"),
    "lookahead": dict(color="C9", linestyle="-", marker="X"),
}


def style() -> None:
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def method_label(solver: str, method: str) -> str:
    """``DDIM`` / ``D-DDIM`` / ``D-DDIM-Sep``..., following the paper's names."""
    name = PRETTY.get(solver, solver)
    return {
        "base": name,
        "d-ode": f"D-{name}",
        "d-ode-2": f"D-{name}-2",
        "sep": f"D-{name}-Sep",
        "all": f"D-{name}-All",
        "d-ode-joint": f"D-{name} (joint fit)",
        "fixed": f"Fixed-D-{name}",
        "lookahead": f"LA-{name}",
    }.get(method, f"{name} ({method})")


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


def metric_vs_nfe(ds, var: str = "fd", solvers=None, methods=None, axes=None, logy: bool = True, ylabel=None):
    """One panel per solver: ``var`` (mean +- std over seeds) against NFE, base vs D-variants (Fig. 3/4)."""
    import matplotlib.pyplot as plt

    solvers = list(solvers or ds.coords["solver"].values.tolist())
    methods = list(methods or ds.coords["method"].values.tolist())
    if axes is None:
        fig, axes = plt.subplots(1, len(solvers), figsize=(3.4 * len(solvers), 3.0), squeeze=False)
        axes = axes[0]
    else:
        fig = axes[0].figure
    for ax, solver in zip(axes, solvers, strict=True):
        for method in methods:
            da = ds[var].sel({"solver": solver, "method": method})
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
        ax.set_title(PRETTY.get(solver, solver))
        ax.set_xlabel("NFE")
        if logy:
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(ylabel or var.upper())
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


def sweep_table(ds, var: str, digits: int = 2):
    """Rows (solver, method) x columns NFE: ``mean ± std`` over seeds of ``var``."""
    import pandas as pd

    frames = []
    for solver in ds.coords["solver"].values.tolist():
        table = mean_std_table(ds, var, rows="method", cols="nfe", fixed={"solver": solver}, digits=digits)
        table.index = pd.MultiIndex.from_tuples([(PRETTY.get(solver, solver), m) for m in table.index])
        frames.append(table)
    out = pd.concat(frames)
    out.columns = [f"NFE {n}" for n in out.columns]
    return out


def paired_gain(ds, var: str, method: str = "d-ode", base: str = "base", digits: int = 2):
    """``base - method`` per seed (same evaluation noise), as ``mean ± std`` over seeds, with the number of
    seeds in which the method wins. Positive = the D-solver is better (lower FD/FID)."""
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
        index.append(PRETTY.get(solver, solver))
    return pd.DataFrame(rows, index=index, columns=[f"NFE {n}" for n in ds.coords["nfe"].values.tolist()])


def plot_lambdas(ds, nfe: int, method: str = "d-ode", solvers=None, ax=None):
    """Fitted lambda of each network evaluation (mean ± std over seeds) at one NFE, one line per solver."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.0))
    for solver in solvers or ds.coords["solver"].values.tolist():
        da = ds["lambdas"].sel({"solver": solver, "method": method, "nfe": nfe, "param": 0})
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
            label=PRETTY.get(solver, solver),
        )
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("network evaluation k")
    ax.set_ylabel(r"$\lambda_k$")
    ax.set_title(f"fitted lambdas at NFE {nfe}" + ("" if method == "d-ode" else f" ({method})"))
    ax.legend(fontsize=8)
    return ax


def timing_table(ds):
    """Mean wall time (s) of fitting and of sampling the evaluation set, per solver and NFE."""
    import pandas as pd

    rows = []
    for solver in ds.coords["solver"].values.tolist():
        for nfe in ds.coords["nfe"].values.tolist():
            sel = {"solver": solver, "nfe": nfe}
            fit = (
                ds["fit_seconds"].sel(sel).sel({"method": "d-ode"}).mean("seed").item()
                if "fit_seconds" in ds
                else np.nan
            )
            base = ds["sample_seconds"].sel(sel).sel({"method": "base"}).mean("seed").item()
            dsol = ds["sample_seconds"].sel(sel).sel({"method": "d-ode"}).mean("seed").item()
            if np.isfinite(base):
                rows.append((PRETTY.get(solver, solver), nfe, fit, base, dsol, dsol / base))
    return pd.DataFrame(
        rows, columns=["solver", "NFE", "fit (s)", "base sampling (s)", "D sampling (s)", "D / base"]
    ).round(3)


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
            row = {"solver": PRETTY.get(solver, solver), "NFE": nfe}
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
            row = {"model": model, "solver": PRETTY.get(solver, solver), "NFE": nfe}
            for method in ds.coords["method"].values.tolist():
                x = ds["samples"].sel({"panel": panel, "method": method, "nfe": nfe}).values
                if not np.isfinite(x).any():
                    continue
                d = np.linalg.norm((_trim_padding(x) - ref).reshape(len(ref), -1), axis=1)
                row["base" if method == "base" else "D"] = f"{d.mean():.3f} ± {d.std(ddof=1):.3f}"
            if len(row) > 3:
                rows.append(row)
    return pd.DataFrame(rows)


def sample_grids(ds, panel: str, nrow: int | None = None):
    """Fig. 6 / 12-15: rows = base and D-solver, columns = NFE, from the same noise; the long DDIM run on
    that noise as the last column."""
    import matplotlib.pyplot as plt

    model, solver = panel.rsplit("/", 1)
    da = ds["samples"].sel({"panel": panel})
    nfes = [n for n in ds.coords["nfe"].values.tolist() if np.isfinite(da.sel({"nfe": n})).any()]
    methods = ds.coords["method"].values.tolist()
    has_ref = "reference" in ds and np.isfinite(ds["reference"].sel({"model": model})).any()
    ncol = len(nfes) + int(has_ref)
    fig, axes = plt.subplots(len(methods), ncol, figsize=(2.3 * ncol, 2.4 * len(methods)), squeeze=False)

    for r, method in enumerate(methods):
        for c, nfe in enumerate(nfes):
            x = _trim_padding(da.sel({"method": method, "nfe": nfe}).values)
            show_images(
                axes[r, c],
                x,
                nrow=nrow or int(np.ceil(np.sqrt(len(x)))),
                title=f"{method_label(solver, method)}, NFE {nfe}",
            )
        if has_ref:
            ax = axes[r, -1]
            if r == 0:
                import json

                steps = json.loads(ds.attrs["comparability_key"])["reference_steps"]
                x = _trim_padding(ds["reference"].sel({"model": model}).values)
                show_images(ax, x, nrow=nrow or int(np.ceil(np.sqrt(len(x)))), title=f"DDIM, {steps} steps")
            else:
                ax.axis("off")
    fig.suptitle(f"{model}: {PRETTY.get(solver, solver)} vs D-{PRETTY.get(solver, solver)}", fontsize=11)
    fig.tight_layout()
    return fig


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
