"""Figures and tables drawn from results files (xarray Datasets), laid out like the paper's panels.

Selections use the dict form ``ds.sel({"method": ...})``: ``method`` is a dimension of the results schema
and also a keyword of xarray's ``sel``.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np

from dode.companion.labels import SOLVER_NAMES, count, method_label

__all__ = [
    "trim_padding",
    "style",
    "panel_grid",
    "caption",
    "floor_band",
    "floor_stats",
    "nfe_axis",
    "log_axis",
    "integer_axis",
    "direct_labels",
    "table",
    "metric_vs_nfe",
    "mean_std",
    "mean_std_table",
    "image_grid",
    "show_images",
    "sweep_table",
    "paired_gain",
    "present",
    "no_cells_note",
    "plot_lambdas",
    "lambdas_figure",
    "lambda_limits",
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
    "summary_figure",
    "paired_gains",
    "paper_comparison",
    "best_constant",
    "tuning_split",
    "ablation",
    "ablation_figure",
    "lambda_search",
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


#: The book's content column at a 1400 px browser window is about 700-800 px wide (sphinx-book-theme), and
#: the browser scales a wider image down to it. Figures are drawn at most PAGE_WIDTH_IN wide, at most
#: MAX_COLUMNS panels a row, with no text smaller than MIN_FONT_PT: text of ``s`` points in a figure ``w``
#: inches wide reads ``s * COLUMN_PX / (72 w)`` px once scaled to the column (or ``s * dpi / 72`` px when the
#: image is narrower than the column), so MIN_FONT_PT keeps it at MIN_TEXT_PX (9 pt on paper) or more.
COLUMN_PX = 700
MIN_TEXT_PX = 12
PAGE_WIDTH_IN = 7.0
MAX_COLUMNS = 2
DPI = COLUMN_PX / PAGE_WIDTH_IN
MIN_FONT_PT = 72 * MIN_TEXT_PX / DPI
#: the font sizes (points) of the book's figures, all >= MIN_FONT_PT
FONT_PT = {"base": 10.0, "small": max(9.0, MIN_FONT_PT)}


def style() -> None:
    """The book's figure style: seaborn's whitegrid, the sizes of :data:`FONT_PT` for every text element, and
    a figure resolution at which a PAGE_WIDTH_IN figure is the column's width."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    small, base = FONT_PT["small"], FONT_PT["base"]
    mpl.rcParams.update(
        {
            "font.size": base,
            "axes.titlesize": base,
            "axes.labelsize": base,
            "xtick.labelsize": small,
            "ytick.labelsize": small,
            "legend.fontsize": small,
            "legend.title_fontsize": small,
            "figure.titlesize": base + 1,
            "figure.dpi": DPI,
            "savefig.dpi": 2 * DPI,
        }
    )


def panel_grid(n: int, ncols: int = MAX_COLUMNS, panel_height: float = 2.7, sharey=False):
    """A figure for ``n`` panels, at most :data:`MAX_COLUMNS` a row and :data:`PAGE_WIDTH_IN` wide (a single
    panel: half the page). Returns ``(fig, axes)``, ``axes`` the ``n`` panels in reading order; the grid's
    unused cells are removed."""
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError(f"n (the number of panels) must be >= 1, got {n}")
    ncols = max(1, min(ncols, MAX_COLUMNS, n))
    nrows = -(-n // ncols)
    width = PAGE_WIDTH_IN if ncols > 1 else PAGE_WIDTH_IN * 0.62
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(width, panel_height * nrows), squeeze=False, sharey=sharey
    )
    axes = list(grid.ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def caption(fig, text: str) -> None:
    """``text`` under the figure, wrapped at its width (what a figure must state beside its legend, e.g. the
    noise floor's definition or values clipped off an axis)."""
    if text:
        fig.text(0.01, 0.0, text, ha="left", va="top", wrap=True, fontsize=FONT_PT["small"])


def floor_stats(ds, var: str, model=None) -> tuple[float, float, int] | None:
    """The noise floor of ``var`` in a results file (``f"{var}_floor"``, dims ``(seed,)`` or ``(model, seed)``):
    ``(mean, std, seeds)`` over its finite seeds (std 0 for one seed), None where the file has none."""
    name = f"{var}_floor"
    if name not in ds:
        return None
    da = ds[name]
    if "model" in da.dims:
        if model is None:
            raise ValueError(f"model must name one of {da.coords['model'].values.tolist()} for {name}")
        da = da.sel({"model": model})
    values = np.asarray(da.values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, int(values.size)


def floor_band(ax, ds, var: str, model=None):
    """The noise floor of ``var`` as a light grey band, mean ± std over seeds, when the results file has
    ``f"{var}_floor"`` (dims ``(seed,)`` or ``(model, seed)``): what a converged sampler of the same network
    scores at the figure's sample size, on the same evaluation noise, so no sampler can be expected below it.
    Returns the caption text that names it, or ``""`` (nothing drawn) when the file has no floor."""
    stats = floor_stats(ds, var, model)
    if stats is None:
        return ""
    mean, std, seeds = stats
    da = ds[f"{var}_floor"]
    low = mean - std
    if ax.get_yscale() == "log" and low <= 0:
        low = mean / 2  # a band reaching zero cannot be drawn on a log axis
    ax.axhspan(low, mean + std, color="0.82", alpha=0.7, zorder=0, linewidth=0, label="noise floor")
    ax.axhline(mean, color="0.6", linewidth=0.8, zorder=0, label="_noise floor")
    what, n = (_attr_of(da.attrs.get(key, ""), model) for key in ("description", "n_samples"))
    if what and n != "" and not any(f"{c} samples" in what for c in (n, f"{int(n):,}")):
        what += f", {n} samples"  # the count, where the description does not already give it
    return (
        f"Grey band: noise floor of {var.upper()}, "
        + (
            f"{mean:.2f} ± {std:.2f} over {count(seeds, 'seed')}"
            if seeds > 1
            else f"{mean:.2f} (one seed: the band is its line; the sweeps' pages give its spread over seeds)"
        )
        + (f" ({what})" if what else "")
        + "."
    )


def _attr_of(value, model):
    """A floor attribute for one model: a file of several models keeps a JSON mapping model -> value."""
    if isinstance(value, str) and value.startswith("{"):
        return json.loads(value).get(model, "")
    return value


def _label_gaps(positions, min_gap: float) -> list[int]:
    """Indices of ``positions`` (sorted axis fractions) to label so that no two labels are closer than
    ``min_gap``: greedily from the first, the last one preferred over its labelled neighbour."""
    keep = [0]
    for i in range(1, len(positions)):
        if positions[i] - positions[keep[-1]] >= min_gap:
            keep.append(i)
    last = len(positions) - 1
    if keep[-1] != last and len(keep) > 1 and positions[last] - positions[keep[-2]] >= min_gap:
        keep[-1] = last
    return keep


def nfe_axis(ax, nfes, log: bool = False) -> None:
    """NFE as an integer axis: ticks at the NFEs that were run, labelled as integers, no minor ticks;
    labels that would touch their neighbour at the panel's width are left out (the ticks stay)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    nfes = sorted({int(n) for n in np.asarray(nfes).ravel().tolist()})
    if not nfes:
        return
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(nfes))
    ax.xaxis.set_minor_locator(NullLocator())
    # where the ticks sit in the panel as drawn (call this once the x range is final)
    scale = np.log10 if log else np.asarray
    lo, hi = (float(v) for v in scale(np.asarray(ax.get_xlim(), dtype=float)))
    frac = (scale(np.asarray(nfes, dtype=float)) - lo) / (hi - lo) if hi > lo else np.zeros(len(nfes))
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    # two digits and a space of the tick font: 0.6 em per character
    min_gap = 3 * 0.6 * FONT_PT["small"] / 72 / max(width_in, 0.5)
    keep = set(_label_gaps(frac.tolist(), min_gap))
    ax.xaxis.set_major_formatter(FixedFormatter([str(n) if i in keep else "" for i, n in enumerate(nfes)]))
    ax.set_xlabel(ax.get_xlabel() or "NFE")


def log_axis(ax, axis: str = "y") -> None:
    """A log axis with plain tick labels (0.5, 1, 2, 5, 10 rather than 2 x 10^0), chosen for the axis' current
    range: decades, or 1-2-5 steps, or every integer mantissa when the range is under a decade; never more
    labels than fit. Call it once the panel's data are drawn."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    drawn = ax.dataLim.intervalx if axis == "x" else ax.dataLim.intervaly
    if not (np.isfinite(drawn).all() and drawn[1] > 0):
        return  # no positive value drawn (an empty panel, or costs of 0): a log axis could not show it
    getattr(ax, f"set_{axis}scale")("log")
    lo, hi = getattr(ax, f"get_{axis}lim")()
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        return
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks: list[float] = []
    for subs in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0**e:.6g}") for e in decades for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 2 + (subs == (1,)):
            break
    if len(ticks) < 2:  # a range inside one mantissa step (130-280): round values as on a linear axis
        from matplotlib.ticker import MaxNLocator

        ticks = [float(v) for v in MaxNLocator(nbins=3).tick_values(lo, hi) if lo <= v <= hi]
    if not ticks:
        return
    # no two labels closer than they are tall (y) or about four digits wide (x)
    box = ax.get_position()
    size_in = box.height * ax.figure.get_figheight() if axis == "y" else box.width * ax.figure.get_figwidth()
    em = FONT_PT["small"] / 72 / max(size_in, 0.5)
    frac = (np.log10(ticks) - np.log10(lo)) / (np.log10(hi) - np.log10(lo))
    ticks = [ticks[i] for i in _label_gaps(frac.tolist(), 1.3 * em if axis == "y" else 3.0 * em)]
    target = getattr(ax, f"{axis}axis")
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def integer_axis(ax, axis: str = "x") -> None:
    """Integer ticks on a linear axis (counts: NFE, evaluation index, steps)."""
    from matplotlib.ticker import MaxNLocator

    getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True, nbins=6, min_n_ticks=1))


def direct_labels(ax, lines, log_x: bool = False, log_y: bool = False, keep: float = 0.5) -> float:
    """Label each ``(x, y, text, color, bold)`` line at its last point ``(x, y)``, right of it, in the line's
    colour, moved apart vertically so that no label overlaps another (instead of a legend). The x range is
    widened on the right until the longest label fits inside the panel, but the curves keep at least the
    share ``keep`` of the panel's width (a longer label runs past its right edge: on a log axis, fitting it
    could stretch the range over many decades and squeeze every curve into a sliver). Returns the new right
    limit (for panels that share their x range)."""
    if not 0 < keep < 1:
        raise ValueError(
            f"keep must lie strictly between 0 and 1 (the curves' share of the panel), got {keep}"
        )
    if not lines:
        return ax.get_xlim()[1]
    fig = ax.figure
    height_in = ax.get_position().height * fig.get_figheight()
    lo, hi = ax.get_ylim()

    def frac(v, a, b, log):
        return (np.log10(v) - np.log10(a)) / (np.log10(b) - np.log10(a)) if log else (v - a) / (b - a)

    gap = 1.25 * FONT_PT["small"] / 72 / max(height_in, 0.5)
    ends = sorted(((float(frac(y, lo, hi, log_y)), x, *rest) for x, y, *rest in lines), key=lambda e: e[0])
    ys = [e[0] for e in ends]
    for i in range(1, len(ys)):  # push up ...
        ys[i] = max(ys[i], ys[i - 1] + gap)
    overflow = ys[-1] - 0.97
    if overflow > 0:  # ... then back under the top edge
        ys[-1] -= overflow
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1] - gap)
    texts = [
        ax.annotate(
            text,
            xy=(x, y),
            xycoords=("data", "axes fraction"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            color=color,
            fontsize=FONT_PT["small"],
            fontweight="bold" if bold else "normal",
            annotation_clip=False,
        )
        for y, (_, x, text, color, bold) in zip(ys, ends, strict=True)
    ]
    renderer = fig.canvas.get_renderer()
    axes_px = ax.get_window_extent(renderer).width
    x0, x1 = ax.get_xlim()
    right = x1
    for t, (_, x, *_rest) in zip(texts, ends, strict=True):
        # the label's width plus its offset, as a fraction of the panel; its line end must sit left of 1 - w
        w = (t.get_window_extent(renderer).width + 8 * fig.dpi / 72) / axes_px
        f = frac(x, x0, x1, log_x)
        if f + w > 0.99:
            w = min(w, 1 - keep)
            if log_x:
                right = max(right, 10 ** (np.log10(x0) + (np.log10(x) - np.log10(x0)) / (0.99 - w)))
            else:
                right = max(right, x0 + (x - x0) / (0.99 - w))
    ax.set_xlim(x0, right)
    return right


def _cell_words(value, digits: int) -> str:
    """A table cell as a reader wants it: "–" for a missing value, yes/no for a flag, a dict as
    ``key: value`` pairs, numbers rounded to ``digits`` decimals (integers as integers)."""
    import json

    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}"):
            try:
                return _cell_words(json.loads(value), digits)
            except ValueError:
                return value
        return value
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell_words(v, digits)}" for k, v in value.items()) or "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        if value != 0 and abs(value) < 0.5 * 10.0**-digits:  # a learning rate: its digits, not 0.00
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


_NUMBER = re.compile(r"[+\-−]?\.?\d")  # a cell that starts as a number: "2.97 ± 0.51", "-0.44", "25.3 s"


def table(df, digits: int = 2):
    """A DataFrame as the book shows it: the index levels become ordinary columns (a level's repeated values
    shown once per block, as a reader expects), no index column, every cell through :func:`_cell_words`
    (no NaN, True/False or raw dicts). Returns a pandas ``Styler`` that renders as an HTML table."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        df = df.to_frame()
    n_levels = 0
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        names = [name if name is not None else "" for name in df.index.names]
        df = df.copy()
        df.index = df.index.set_names([n or f"_level{i}" for i, n in enumerate(names)])
        df = df.reset_index()
        n_levels = len(names)
        renamed = {f"_level{i}": names[i] for i in range(n_levels) if not names[i]}
        df = df.rename(columns=renamed, level=0 if isinstance(df.columns, pd.MultiIndex) else None)
    out = df.astype(object)
    for j, (_, column) in enumerate(df.items()):
        values = pd.to_numeric(column, errors="coerce") if column.dtype.kind == "f" else None
        if values is not None and np.all(np.mod(values.dropna(), 1) == 0):  # counts stored as floats
            out.iloc[:, j] = [int(v) if np.isfinite(v) else None for v in values]
    # a narrow column breaks "36.64 ± 1.68" after the ± only, never between a number and its ±
    out = out.map(lambda v: _cell_words(v, digits).replace(" ± ", "\u00a0± "))
    # the outer levels' repeated values, once per block: a block starts where any level up to j changes,
    # judged on the labels before any of them is blanked
    starts = [(out.iloc[:, : j + 1] != out.iloc[:, : j + 1].shift()).any(axis=1) for j in range(n_levels - 1)]
    for j, start in enumerate(starts):
        out.iloc[:, j] = out.iloc[:, j].where(start, "")
    styler = out.style.hide(axis="index")
    if not out.columns.is_unique:
        return styler
    # labels read left to right, numbers line up on the right; a short label stays on one line, a long one
    # (a sampler's full configuration) wraps so that the table fits the text column
    for j, name in enumerate(out.columns):
        cells = [str(v) for v in out.iloc[:, j] if str(v) not in ("", "–")]
        if j >= n_levels and all(_NUMBER.match(v) for v in cells):
            continue
        style = {"text-align": "left"}
        if j < n_levels and max(map(len, cells), default=0) <= 30:
            style["white-space"] = "nowrap"
        styler = styler.set_properties(subset=[name], **style).set_table_styles(
            {name: [{"selector": "th.col_heading", "props": "text-align: left"}]}, overwrite=False
        )  # its header too
    return styler


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


#: what a figure's shared legend calls each method (the panels' titles name the solver)
METHOD_WORDS = {
    "base": "base solver",
    "d-ode": "D-solver",
    "d-ode-joint": "D-solver, joint fit",
    "d-ode-2": "D-solver-2",
    "sep": "D-solver-Sep",
    "all": "D-solver-All",
    "fixed": "Fixed-D-solver",
    "lookahead": "LA-solver",
}


def _shared_legend(fig, axes) -> None:
    """One legend above the panels for what they all draw (each label once), instead of one per panel."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(handles), 4),
    )


def _metric_panel(ax, part, var: str, solver: str, methods, logy: bool, nfes) -> str:
    """One panel of :func:`metric_vs_nfe` (one model's ``part``), its lines labelled by
    :data:`METHOD_WORDS` for the figure's shared legend; returns its noise floor's caption."""
    drawn = []
    for method in methods:
        da = part[var].sel({"solver": solver, "method": method})
        mean, std = mean_std(da)
        nfe = da.coords["nfe"].values
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        drawn += nfe[ok].tolist()
        ax.errorbar(
            nfe[ok],
            mean[ok],
            yerr=np.nan_to_num(std[ok]),
            capsize=2,
            markersize=4,
            label=METHOD_WORDS.get(method, method),
            **METHOD_STYLE.get(method, {}),
        )
    floor = floor_band(ax, part, var)
    nfe_axis(ax, drawn or nfes)
    if logy:
        log_axis(ax, "y")
    return floor


def metric_vs_nfe(ds, var: str = "fd", solvers=None, methods=None, axes=None, logy: bool = True, ylabel=None):
    """One panel per model and solver (the models one after the other, as the paper's Fig. 3/4 lay out their
    datasets), two a row: ``var`` (mean +- std over seeds) against NFE, base vs D-variants, with the noise
    floor (:func:`floor_band`) where the file has one, stated under the figure."""
    solvers = list(solvers or ds.coords["solver"].values.tolist())
    methods = list(methods or ds.coords["method"].values.tolist())
    panels = [(model, part, solver) for model, part in _by_model(ds) for solver in solvers]
    if axes is None:
        fig, axes = panel_grid(len(panels))
    else:
        fig = axes[0].figure
    floors = []
    for ax, (model, part, solver) in zip(axes, panels, strict=True):
        floor = _metric_panel(ax, part, var, solver, methods, logy, ds.coords["nfe"].values)
        floors.append(f"{model}: {floor}" if floor and model else floor)
        ax.set_title(SOLVER_NAMES.get(solver, solver) + (f" · {model}" if model else ""))
        ax.set_ylabel(ylabel or var.upper())
    fig.tight_layout()
    _shared_legend(fig, axes)
    caption(fig, "\n".join(dict.fromkeys(f for f in floors if f)))
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


def sweep_table(
    ds, var: str, digits: int = 2, paper: dict | None = None, paper_nfes=(), paper_model: str | None = None
):
    """Rows ([model,] solver, method) x columns NFE: ``mean ± std`` over seeds of ``var``.

    ``paper``: the paper's numbers, ``(solver, method) -> values at paper_nfes`` (``dode.companion.paper``),
    shown in a last column beside ours for the rows that have them, of the model ``paper_model`` only (the
    one they were measured on, ``dode.companion.paper.SWEEP_MODEL``): no column where the file has no such
    model, an empty cell beside another model's rows."""
    if "model" in ds.dims:
        import pandas as pd

        parts = {
            model: sweep_table(part, var, digits, paper if model == paper_model else None, paper_nfes)
            for model, part in _by_model(ds)
        }
        return pd.concat(parts, names=["model"]).fillna("")
    if paper_model is not None and ds.attrs.get("model") != paper_model:
        paper = None
    import pandas as pd

    frames = []
    for solver in ds.coords["solver"].values.tolist():
        table = mean_std_table(ds, var, rows="method", cols="nfe", fixed={"solver": solver}, digits=digits)
        methods = list(table.index)
        table.index = pd.MultiIndex.from_tuples(
            [(SOLVER_NAMES.get(solver, solver), m) for m in methods], names=["solver", "method"]
        )
        if paper:
            table["paper"] = [" / ".join(f"{v:g}" for v in paper.get((solver, m), ())) for m in methods]
        frames.append(table)
    out = pd.concat(frames)
    out.columns = [
        f"NFE {n}" if n != "paper" else f"paper (CIFAR-10 FID), NFE {' / '.join(map(str, paper_nfes))}"
        for n in out.columns
    ]
    return out


def present(ds, methods) -> list[str]:
    """Those of ``methods`` that the results file holds, in their order: a page draws what its run computed
    (a run may leave methods out with ``methods``)."""
    held = set(ds.coords["method"].values.tolist())
    return [m for m in methods if m in held]


def no_cells_note(ds, var: str, method: str) -> str | None:
    """What a page shows instead of a table of ``method`` when the results file holds no value of it (its
    run's ``methods`` leave it out, or it runs at none of the run's NFEs, as a joint fit outside
    ``joint_nfes``); None when it holds some."""
    methods = ds.coords["method"].values.tolist() if "method" in ds.coords else []
    if method in methods and bool(ds[var].sel({"method": method}).notnull().any()):
        return None
    return (
        f"This run has no results of {METHOD_WORDS.get(method, method)} (`{method}`): its `methods` leave it "
        "out, or it runs at none of the run's NFEs."
    )


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
    return pd.DataFrame(
        rows,
        index=pd.Index(index, name="solver"),
        columns=[f"NFE {n}" for n in ds.coords["nfe"].values.tolist()],
    )


def _lambda_curve(part, solver: str, method: str, nfe):
    """``(k, mean, std)`` of the fitted lambda of each network evaluation over seeds (finite cells only)."""
    da = part["lambdas"].sel({"solver": solver, "method": method, "nfe": nfe, "param": 0})
    mean, std = mean_std(da.transpose("evaluation", "seed"))
    k = da.coords["evaluation"].values
    ok = np.isfinite(mean)
    return k[ok], mean[ok], np.nan_to_num(std[ok])


def lambda_limits(values, margin: float = 0.5) -> tuple[float, float]:
    """The y range of a lambda plot: the middle 90 % of ``values`` widened by ``margin`` times its width (at
    least 0.5 either side of it, always with 0 and -1 inside: the paper's corrector lambdas sit near -1), so
    that a few runaway fits (lambda = -130 where the rest lie in [-2, 1]) do not squash the others."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.5, 0.5
    lo, hi = np.percentile(values, [5, 95])
    pad = max(0.5, margin * (hi - lo))
    return float(min(lo - pad, -1.25)), float(max(hi + pad, 0.25))


def _draw_clipped(ax, x, y, limits, label: str) -> list[str]:
    """Markers at the edge of the panel for the points of ``y`` outside ``limits``; returns their description."""
    lo, hi = limits
    notes = []
    for xi, yi in zip(x, y, strict=True):
        if lo <= yi <= hi:
            continue
        edge = hi if yi > hi else lo
        ax.plot(
            [xi], [edge], marker="^" if yi > hi else "v", color="C3", markersize=7, clip_on=False, zorder=5
        )
        notes.append(f"{label} k = {int(xi)}: {yi:.3g}")
    return notes


def lambdas_figure(ds, method: str = "d-ode", solvers=None, nfes=None):
    """The fitted lambdas of ``method``, one panel per (model,) solver (two a row), one line per NFE: lambda_k
    (mean ± std over seeds) against the network evaluation k. The y range is :func:`lambda_limits`; the
    values outside it are marked at the panel's edge (red triangles) and listed under the figure."""
    import matplotlib.pyplot as plt

    solvers = list(solvers or ds.coords["solver"].values.tolist())
    all_nfes = [int(n) for n in (nfes or ds.coords["nfe"].values.tolist())]
    panels = []
    for model, part in _by_model(ds):
        for solver in solvers:
            curves = [(n, *_lambda_curve(part, solver, method, n)) for n in all_nfes]
            curves = [c for c in curves if len(c[1])]
            if curves:
                panels.append((model, solver, curves))
    if not panels:
        raise ValueError(f"no fitted lambdas of method {method!r} in these results")
    fig, axes = panel_grid(len(panels), panel_height=2.6)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(all_nfes)))
    notes = []
    for ax, (model, solver, curves) in zip(axes, panels, strict=True):
        limits = lambda_limits(np.concatenate([c[2] for c in curves]))
        for n, k, mean, std in curves:
            colour = colours[all_nfes.index(n)]
            ax.errorbar(
                k, mean, yerr=std, marker="o", markersize=3, capsize=2, color=colour, label=f"NFE {n}"
            )
            name = method_label(solver, method) + (f" · {model}" if model else "") + f", NFE {n}"
            notes += _draw_clipped(ax, k, mean, limits, name)
        ax.set_ylim(*limits)
        ax.axhline(0, color="0.5", linewidth=0.8)
        integer_axis(ax, "x")
        ax.set_xlabel("network evaluation k")
        ax.set_ylabel(r"$\lambda_k$")
        ax.set_title(method_label(solver, method) + (f" · {model}" if model else ""))
    fig.tight_layout()
    _shared_legend(fig, axes)
    if notes:
        caption(fig, "Off the scale (red triangles at the edge): " + "; ".join(notes) + ".")
    return fig


def plot_lambdas(ds, nfe: int, method: str = "d-ode", solvers=None, ax=None):
    """Fitted lambda of each network evaluation (mean ± std over seeds) at one NFE, one line per (model,)
    solver that has them; the y range as in :func:`lambdas_figure`, values off it marked at the edge and
    named in the title."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.62, 2.8))
    lines = []
    for model, part in _by_model(ds):
        for solver in solvers or ds.coords["solver"].values.tolist():
            k, mean, std = _lambda_curve(part, solver, method, nfe)
            if len(k):
                lines.append(
                    (SOLVER_NAMES.get(solver, solver) + (f" · {model}" if model else ""), k, mean, std)
                )
    limits = lambda_limits(np.concatenate([line[2] for line in lines])) if lines else (-1.5, 0.5)
    notes = []
    for label, k, mean, std in lines:
        ax.errorbar(k, mean, yerr=std, marker="o", markersize=3, capsize=2, label=label)
        notes += _draw_clipped(ax, k, mean, limits, label)
    ax.set_ylim(*limits)
    ax.axhline(0, color="0.5", linewidth=0.8)
    integer_axis(ax, "x")
    ax.set_xlabel("network evaluation k")
    ax.set_ylabel(r"$\lambda_k$")
    title = f"fitted lambdas at NFE {nfe}" + ("" if method == "d-ode" else f" ({method})")
    ax.set_title(title + ("\noff the scale: " + "; ".join(notes) if notes else ""))
    if lines:
        ax.legend()
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


def _evaluation_ticks(times, symbol: str, count: int, sep: str):
    """``count`` evenly spaced evaluation indices and their labels: the index and the model time."""
    ticks = np.unique(np.linspace(0, len(times) - 1, count).round().astype(int))
    return ticks, [f"{i}{sep}{symbol}={times[i]:.3g}" for i in ticks]


def similarity_heatmaps(ds, cmap: str = "viridis"):
    """Fig. 2: one heatmap per model of the cosine similarity between all denoising outputs of one run.

    Axes are evaluation indices (0 = the first evaluation, at pure noise); tick labels add the model time."""

    models = ds.coords["model"].values.tolist()
    variables = _models_time_variable(ds)
    fig, axes = panel_grid(len(models), panel_height=3.6)
    for ax, model in zip(axes, models, strict=True):
        S = ds["similarity"].sel({"model": model}).values
        ok = np.isfinite(S).any(axis=1)
        S = S[np.ix_(ok, ok)]
        times = ds["eval_time"].sel({"model": model}).values[ok]
        # the colour scale starts at the smallest similarity (rounded down to 0.05), or the structure of
        # matrices that are all close to one would be invisible
        low = np.floor(float(np.nanmin(S)) * 20) / 20
        image = ax.imshow(S, cmap=cmap, vmin=min(low, 0.95), vmax=1.0, interpolation="nearest")
        n = len(S)
        symbol = "σ" if variables.get(model) == "sigma" else "t"
        # a half-page panel holds four labels down its side but only three side by side ("t=0.999")
        ax.set_xticks(*_evaluation_ticks(times, symbol, 3, "\n"))
        ax.set_yticks(*_evaluation_ticks(times, symbol, 4, " "))
        ax.set_xlabel("evaluation j (noise → data)")
        ax.set_ylabel("evaluation i")
        ax.grid(False)
        ax.set_title(f"{model}\n({_prediction_name(ds, model)}, {n} steps)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    fig.tight_layout()
    return fig


def similarity_profiles(ds):
    """Two cuts through the Fig. 2 matrices: similarity of each output with the next one, and with the last."""

    fig, axes = panel_grid(2, panel_height=3.0)
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
        ax.legend()
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
    return pd.DataFrame(rows)  # not rounded here: a mean of 0.99996 is not the whole number 1


def _traj_label(solver: str, method: str, nfe: int) -> str:
    return f"{method_label(solver, method)}-{nfe}"


def _cell(ds, var: str, solver: str, nfe: int, method: str):
    return ds[var].sel({"solver": solver, "nfe": nfe, "method": method})


def trajectory_norms(ds, solver: str, nfe: int, methods, ax=None, reference: bool = True):
    """Fig. 5 (top) / Fig. 7: mean over samples of ||x_t|| along each run, with the long DDIM reference."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.62, 3.0))
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
    ax.legend()
    return ax


def _reference_label(ds) -> str:
    import json

    steps = json.loads(ds.attrs["comparability_key"])["reference_steps"]
    return f"DDIM-{steps} (reference)"


def trajectory_pixels(ds, solver: str, nfe: int, methods, pixels, sample: int = 0, axes=None):
    """Fig. 5 (bottom) / Fig. 11: the value of single pixels of one sample along each run."""

    pixels = list(pixels)
    if axes is None:
        _, axes = panel_grid(len(pixels), panel_height=2.8)
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
    axes[0].legend()
    return axes


def trajectory_distance(ds, solver: str, nfe: int, methods, ax=None):
    """||x_t - x_t^ref|| (mean over samples) at each state of a run, the reference interpolated in time."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.62, 3.0))
    for method in methods:
        t = _cell(ds, "state_time", solver, nfe, method).values
        d = _cell(ds, "distance", solver, nfe, method).mean("sample").values
        ok = np.isfinite(t)
        ax.plot(
            t[ok], d[ok], markersize=4, label=_traj_label(solver, method, nfe), **METHOD_STYLE.get(method, {})
        )
    _time_axis(ax, ds.attrs.get("time_variable", "t"))
    ax.set_ylabel(r"mean $\|x_t - x_t^{\mathrm{ref}}\|_2$")
    ax.legend()
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


def trim_padding(x) -> np.ndarray:
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
        ref = trim_padding(ds["reference"].sel({"model": model}).values)
        for nfe in ds.coords["nfe"].values.tolist():
            row = {"model": model, "solver": SOLVER_NAMES.get(solver, solver), "NFE": nfe}
            for method in ds.coords["method"].values.tolist():
                x = ds["samples"].sel({"panel": panel, "method": method, "nfe": nfe}).values
                if not np.isfinite(x).any():
                    continue
                d = np.linalg.norm((trim_padding(x) - ref).reshape(len(ref), -1), axis=1)
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
    # a table of images rather than panels: one column per image, as many as fit the page's width
    size = min(1.55, PAGE_WIDTH_IN / (ncol + 1))
    fig, axes = plt.subplots(len(rows), ncol + 1, figsize=(size * (ncol + 1), 1.8 * len(rows)), squeeze=False)
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
    # a row's titles sit close above its own images and far below the row above, so that a reader does not
    # take a distance for the label of the image over it
    fig.tight_layout(h_pad=2.0)
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
        ref = trim_padding(ds["reference"].sel({"model": model}).values)[:n_show]
        steps = json.loads(ds.attrs["comparability_key"])["reference_steps"]
        rows.append((f"DDIM\n{steps} steps\n(reference)", ref))
    for nfe in nfes:
        for method in ds.coords["method"].values.tolist():
            images = trim_padding(da.sel({"method": method, "nfe": nfe}).values)[:n_show]
            rows.append((f"{method_label(solver, method)}\nNFE {nfe}", images))
    pretty = SOLVER_NAMES.get(solver, solver)
    return _closeups(rows, ref, f"{model}: {pretty} vs D-{pretty}")


def trajectory_finals(ds, solver: str, nfe: int, methods, n_show: int = 4):
    """Where the trajectories of notebook 05 end: the first ``n_show`` samples of the reference run and of
    each method, large, with each image's L2 distance to the reference's and the tracked pixels outlined
    (the pixel plots follow those pixels of the first sample)."""
    rows = [(_reference_label(ds).replace(" (", "\n("), trim_padding(ds["reference_final"].values)[:n_show])]
    for method in methods:
        images = trim_padding(ds["final"].sel({"solver": solver, "nfe": nfe, "method": method}).values)
        rows.append((_traj_label(solver, method, nfe), images[:n_show]))
    pixels = np.asarray(ds["pixel_position"].values, dtype=int)
    return _closeups(
        rows, rows[0][1], f"{SOLVER_NAMES.get(solver, solver)}, NFE {nfe}: the samples", pixels=pixels
    )


def _cell_text(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" if not np.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_gains(ds, var: str, methods, base="base", digits: int = 2):
    """:func:`paired_gain` of several methods against ``base``, or against each of several bases (a list:
    those the file holds), one row per (solver, base, method)."""
    import pandas as pd

    frames = []
    for reference in [base] if isinstance(base, str) else present(ds, base):
        for method in present(ds, methods):
            table = paired_gain(ds, var, method=method, base=reference, digits=digits)
            solvers = ds.coords["solver"].values.tolist()
            table.index = pd.Index(
                [f"{method_label(s, reference)} − {method_label(s, method)}" for s in solvers],
                name="difference",
            )
            frames.append(table)
    return pd.concat(frames)


def paper_comparison(ds, var: str, paper: dict, rows: dict, nfes=None, digits: int = 2):
    """Ours (mean ± std over seeds) beside the paper's numbers, one row per paper row.

    ``paper`` maps a row label to the paper's values at ``nfes`` (default :data:`dode.companion.paper.NFES`);
    ``rows`` maps the same label to the selection of our results that corresponds to it (e.g.
    ``{"solver": "ddim", "method": "sep"}``). NFEs we did not run, and rows whose selection the file does not
    hold (a method the run left out), show "–".
    """
    import pandas as pd

    from dode.companion.paper import NFES

    nfes = list(nfes or NFES)
    ours_nfes = ds.coords["nfe"].values.tolist()
    table = {}
    for label, selection in rows.items():
        held = all(v in ds.coords[k].values.tolist() for k, v in selection.items())
        da = ds[var].sel(selection) if held else None
        cells = []
        for i, n in enumerate(nfes):
            if held and n in ours_nfes:
                mean, std = mean_std(da.sel({"nfe": n}).expand_dims("nfe").transpose("nfe", "seed"))
                cells.append(_cell_text(float(mean[0]), float(std[0]), digits))
            else:
                cells.append("–")
            cells.append(f"{paper[label][i]:.2f}" if label in paper else "–")
        table[label] = cells
    columns = pd.MultiIndex.from_tuples([(f"NFE {n}", who) for n in nfes for who in ("ours", "paper")])
    out = pd.DataFrame.from_dict(table, orient="index", columns=columns)
    out.index.name = "method"
    return out


def tuning_split(ds):
    """``(evaluation, tuning)``: ``ds`` on its evaluation seeds and on the seeds its run set aside for choosing
    a grid point (``tuning_seed`` of the parameters stored in the file; none: an empty ``tuning``)."""
    import json

    tuning = json.loads(ds.attrs.get("parameters", "{}")).get("tuning_seed")
    held = ds.coords["seed"].values.tolist()
    return (
        ds.sel({"seed": [s for s in held if s != tuning]}),
        ds.sel({"seed": [s for s in held if s == tuning]}),
    )


def best_constant(ds, var: str, methods=("fixed", "lookahead")):
    """The grid search of a constant lambda: ``(reduced, best)``.

    ``best[solver, method, nfe]`` is the grid value with the lowest mean ``var`` over the *tuning* seeds
    (:func:`tuning_split`: their own evaluation noise and fitting batch); ``reduced`` is ``ds[var]`` on the
    evaluation seeds without the ``lambda_value`` dimension, each constant-lambda method at its chosen value
    (the other methods do not depend on lambda_value). So the chosen value's score is not optimistic by the
    selection, as it would be if the grid were searched on the evaluation samples themselves. A file without
    tuning seeds is refused.
    """
    import xarray as xr

    evaluation, tuning = tuning_split(ds)
    if not tuning.sizes["seed"] or not evaluation.sizes["seed"]:
        raise ValueError(
            "best_constant needs a tuning_seed beside the evaluation seeds (a constant chosen on the "
            f"evaluation samples is optimistic by the selection); this file holds seeds "
            f"{ds.coords['seed'].values.tolist()}, tuning {tuning.coords['seed'].values.tolist()}"
        )
    da = evaluation[var]
    mean = tuning[var].mean("seed", skipna=True)
    reduced = da.isel({"lambda_value": 0}, drop=True).copy()
    best = xr.full_like(reduced.isel({"seed": 0}, drop=True), np.nan)
    for method in present(ds, methods):
        m = mean.sel({"method": method})
        idx = m.fillna(np.inf).argmin("lambda_value")
        chosen = da.coords["lambda_value"].values[idx.values]
        chosen = np.where(np.isfinite(m.min("lambda_value", skipna=True).values), chosen, np.nan)
        best.loc[{"method": method}] = chosen
        picked = da.sel({"method": method}).isel({"lambda_value": idx})
        reduced.loc[{"method": method}] = picked.drop_vars("lambda_value", errors="ignore").transpose(
            *reduced.sel({"method": method}).dims
        )
    return reduced.to_dataset(name=var).assign_attrs(ds.attrs), best


def _ablation_panel(ax, ds, var: str, vary: str, at: dict, solver: str, method: str) -> tuple[str, str]:
    """One panel of :func:`ablation`; returns the base solver's values (stated, not drawn: far above on the
    D-solver's scale) and the noise floor's caption."""
    fixed = ", ".join(f"{k} = {v}" for k, v in at.items())
    base = []
    for i, nfe in enumerate(ds.coords["nfe"].values.tolist()):
        da = ds[var].sel({"solver": solver, "method": method, "nfe": nfe, **at})
        mean, std = mean_std(da.transpose(vary, "seed"))
        x = da.coords[vary].values
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        ax.errorbar(
            x[ok],
            mean[ok],
            yerr=np.nan_to_num(std[ok]),
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=f"{method_label(solver, method)}, NFE {nfe}",
        )
        if "base" in ds.coords["method"].values.tolist():
            value = ds[var].sel({"solver": solver, "method": "base", "nfe": nfe, **at}).mean().item()
            base.append(f"NFE {nfe}: {value:.2f}")
    floor = floor_band(ax, ds, var)
    ax.set_xscale("log")
    nfe_axis(ax, ds.coords[vary].values, log=True)  # K and B are counts too: ticks at the values run
    ax.set_xlabel(vary)
    ax.set_ylabel(var.upper())
    ax.set_title(f"{vary} varies ({fixed})")
    ax.legend()
    note = f"{method_label(solver, 'base')} ({fixed}): " + ", ".join(base) if base else ""
    return note, floor


def ablation(ds, var: str, vary: str, at: dict, solver: str = "ddim", method: str = "d-ode", ax=None):
    """``var`` (mean ± std over seeds) of the D-solver against ``vary`` (K or B) with the other distillation
    parameter fixed by ``at``, one line per NFE (Tab. 3 as a figure); the base solver's values, far above,
    are stated under the figure (in the panel's title when drawn into a given ``ax``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN * 0.62, 3.0))
        note, floor = _ablation_panel(ax, ds, var, vary, at, solver, method)
        fig.tight_layout()
        caption(fig, " ".join(t for t in (note + "." if note else "", floor) if t))
        return ax
    note, _ = _ablation_panel(ax, ds, var, vary, at, solver, method)
    if note:
        ax.set_title(ax.get_title() + "\n" + note)
    return ax


def ablation_figure(ds, var: str, K: int, B: int, solver: str = "ddim", method: str = "d-ode"):
    """Tab. 3 as a figure: :func:`ablation` over K at ``B`` and over B at ``K``, side by side, the base
    solver's values and the noise floor stated under it."""
    fig, axes = panel_grid(2, panel_height=3.0)
    notes, floors = zip(
        _ablation_panel(axes[0], ds, var, "K", {"B": B}, solver, method),
        _ablation_panel(axes[1], ds, var, "B", {"K": K}, solver, method),
        strict=True,
    )
    fig.tight_layout()
    text = "; ".join(n for n in notes if n)
    caption(fig, " ".join(t for t in (text + "." if text else "", floors[0]) if t))
    return fig


def lambda_search(ds, var: str, nfe: int, solver: str = "ddim", methods=("lookahead", "fixed"), axes=None):
    """Fig. 8b-c: ``var`` against the constant lambda of each constant-lambda method (mean ± std over seeds),
    with the base solver and the fitted D-solver as dotted reference lines and the noise floor as a band.
    Only the methods of ``methods`` that the file holds; None where it holds none of them."""
    methods = present(ds, methods)
    if not methods:
        return None
    if axes is None:
        fig, axes = panel_grid(len(methods), panel_height=2.8)
    else:
        fig = axes[0].figure
    floors = []
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
        for ref in present(ds, ("base", "d-ode")):
            value = ds[var].sel({"solver": solver, "method": ref, "nfe": nfe}).mean().item()
            ax.axhline(
                value, linestyle=":", color=METHOD_STYLE[ref]["color"], label=method_label(solver, ref)
            )
        floors.append(floor_band(ax, ds, var))
        ax.set_xlabel(r"constant $\lambda$")
        log_axis(ax, "y")
        ax.set_title(f"{method_label(solver, method)}, NFE {nfe}")
    axes[0].set_ylabel(var.upper())
    fig.tight_layout()
    _shared_legend(fig, axes)  # above the panels, where it hides no curve
    caption(fig, " ".join(dict.fromkeys(f for f in floors if f)))
    return fig


# ---------------------------------------------------------------------------------------------------------
# The reproduction page (notebook 11)


#: the sweeps of the summary figure, in reading order: noise prediction (02, 04), data prediction (03)
SUMMARY_STEMS = ("02_noise_prediction", "04_dpm_solver_pp", "03_data_prediction")


def summary_figure(results: dict, ncols: int = MAX_COLUMNS):
    """The book's opening figure: FD (FID) against NFE for every base solver and its D-solver, one panel per
    (sweep, solver) of the results of notebooks 02, 04 and 03 (``results``: stem -> dataset), at most
    :data:`MAX_COLUMNS` a row, with the noise floor where the files have one."""
    panels = [
        (stem, solver)
        for stem in SUMMARY_STEMS
        if stem in results
        for solver in results[stem].coords["solver"].values.tolist()
    ]
    if not panels:
        raise ValueError(f"results must hold at least one of {SUMMARY_STEMS}, got {sorted(results)}")
    fig, axes = panel_grid(len(panels), ncols=ncols, panel_height=2.5)
    floors = []
    for ax, (stem, solver) in zip(axes, panels, strict=True):
        ds = results[stem]
        if "model" in ds.dims:  # the summary shows the first model of a multi-model file
            ds = ds.isel(model=0)
        model = str(ds["model"].values) if "model" in ds.coords else ds.attrs["model"]
        var = "fid" if "fid" in ds else "fd"
        floor = _metric_panel(ax, ds, var, solver, ["base", "d-ode"], True, ds.coords["nfe"].values)
        floors.append(f"{model}: {floor}" if floor else "")
        ax.set_title(f"{SOLVER_NAMES.get(solver, solver)} · {model}")
        ax.set_ylabel(var.upper())
    fig.tight_layout()
    _shared_legend(fig, axes)
    caption(fig, "\n".join(dict.fromkeys(f for f in floors if f)))
    return fig
