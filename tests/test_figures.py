"""The book's figures and tables read at page width: at most two panels a row, no text under the computed
minimum size, integer NFE ticks, the noise floor drawn exactly when the results file has one, and tables
without index columns, NaN, True/False or raw dicts. All on synthetic results files shaped like the sweeps'."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dode.companion import model_report, peers, plots, testbed, timing

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ["digits-eps", "digits-edm"]
SOLVERS = ["ddim", "ipndm", "deis3", "dpm_solver3"]
METHODS = ["base", "d-ode", "d-ode-joint"]
NFES = [3, 4, 5, 7, 10, 20]
SEEDS = [0, 1, 2]


def floor(ds, var="fd", models=True):
    """Add a noise floor variable as the floor helper writes it."""
    values = np.array([[2.0, 2.2, 2.1], [1.5, 1.7, 1.6]]) if models else np.array([2.0, 2.2, 2.1])
    dims = ("model", "seed") if models else ("seed",)
    ds[f"{var}_floor"] = (
        dims,
        values,
        {"description": "FD between two disjoint sets of real digits", "n_samples": 1000, "sampler": "data"},
    )
    return ds


def sweep(with_floor=False, models=True):
    """A cpu-like sweep: several models, solvers and NFEs, three seeds, empty cells and a runaway lambda."""
    rng = np.random.default_rng(0)
    shape = (len(MODELS), len(SOLVERS), len(METHODS), len(NFES), len(SEEDS))
    base = 40.0 / np.asarray(NFES, dtype=float) ** 1.3
    fd = base[None, None, None, :, None] * np.exp(rng.normal(0, 0.1, shape))
    fd[:, :, 1] *= 0.7
    fd[:, :, 2] *= 0.6
    fd[:, :, 2, 4:] = np.nan  # the joint fit runs at small NFEs only
    fd[:, 3, :, 1] = np.nan  # a solver that skips an NFE
    n_eval = max(NFES)
    lambdas = rng.normal(-0.5, 0.3, (*shape, n_eval, 2))
    for j, n in enumerate(NFES):
        lambdas[..., j, :, n:, :] = np.nan
    lambdas[0, 0, 1, 3, :, 3, 0] = -130.0  # a runaway fit (page 03 at NFE 7)
    ds = xr.Dataset(
        {
            "fd": (("model", "solver", "method", "nfe", "seed"), fd),
            "lambdas": (("model", "solver", "method", "nfe", "seed", "evaluation", "param"), lambdas),
            "fit_seconds": (("model", "solver", "method", "nfe", "seed"), np.full(shape, 1.5)),
            "sample_seconds": (("model", "solver", "method", "nfe", "seed"), np.full(shape, 0.5)),
        },
        coords={
            "model": MODELS,
            "solver": SOLVERS,
            "method": METHODS,
            "nfe": NFES,
            "seed": SEEDS,
            "evaluation": np.arange(n_eval),
            "param": [0, 1],
        },
        attrs={"model": MODELS[0]},
    )
    if with_floor:
        floor(ds)
    return ds if models else ds.isel(model=0, drop=True)


def peers_results(with_floor=False):
    samplers = {
        "digits-eps": [
            *[f"diffusers:{p}" for p in ("unipc_bh1", "unipc_bh2", "dpmpp_2m", "dpmpp_3m", "deis", "ddim")],
            *[f"dode:{s}:time_uniform:base" for s in ("ddim", "ipndm", "deis3", "dpm_solver++")],
            *[f"dode:{s}:time_uniform:d-ode" for s in ("ddim", "deis3", "dpm_solver3")],
            "dode:dpm_solver++:time_uniform:d-ode-joint",
        ],
        "digits-edm": [
            "diffusers:edm_euler",
            "diffusers:heun_karras",
            "dode:edm:edm:base",
            "dode:edm:edm:d-ode",
        ],
    }
    names = list(dict.fromkeys(n for v in samplers.values() for n in v))
    nfes = [3, 5, 7, 8, 10, 20]
    rng = np.random.default_rng(1)
    fd = np.full((len(MODELS), len(names), len(nfes)), np.nan)
    for i, model in enumerate(MODELS):
        for name in samplers[model]:
            j = names.index(name)
            fd[i, j] = 60 / np.asarray(nfes, dtype=float) * rng.uniform(0.5, 2.0)
            if "joint" in name:
                fd[i, j, [0, 2, 3, 4, 5]] = np.nan  # one NFE only
    ds = xr.Dataset(
        {
            "fd": (("model", "sampler", "nfe"), fd),
            "network_evaluations": (("model", "sampler", "nfe"), np.where(np.isfinite(fd), nfes, np.nan)),
            "fit_seconds": (("model", "sampler", "nfe"), np.zeros_like(fd)),
        },
        coords={"model": MODELS, "sampler": names, "nfe": nfes, "seed": SEEDS},
    )
    return floor(ds) if with_floor else ds


def ablation_results(with_floor=False):
    Ks, Bs, nfes = [2, 5, 10, 20], [25, 50, 100, 200], [3, 5, 10]
    rng = np.random.default_rng(2)
    shape = (1, 2, len(nfes), len(Ks), len(Bs), len(SEEDS))
    fd = 10 * np.exp(rng.normal(0, 0.1, shape))
    ds = xr.Dataset(
        {"fd": (("solver", "method", "nfe", "K", "B", "seed"), fd)},
        coords={
            "solver": ["ddim"],
            "method": ["base", "d-ode"],
            "nfe": nfes,
            "K": Ks,
            "B": Bs,
            "seed": SEEDS,
        },
    )
    return floor(ds, models=False) if with_floor else ds


def lambda_search_results(with_floor=False):
    values = np.linspace(-2, 1, 7)
    methods = ["base", "d-ode", "fixed", "lookahead"]
    rng = np.random.default_rng(3)
    fd = 5 + rng.uniform(0, 20, (1, len(methods), 2, len(values), len(SEEDS)))
    ds = xr.Dataset(
        {"fd": (("solver", "method", "nfe", "lambda_value", "seed"), fd)},
        coords={"solver": ["ddim"], "method": methods, "nfe": [3, 5], "lambda_value": values, "seed": SEEDS},
    )
    return floor(ds, models=False) if with_floor else ds


def exact_testbed_results():
    solvers, methods, nfes = ["ddim", "ipndm", "deis3"], ["base", "d-ode", "d-ode-joint"], [3, 5, 8, 10, 20]
    shape = (1, len(solvers), len(methods), 2, len(nfes))
    d = np.broadcast_to(1.0 / np.asarray(nfes, dtype=float), shape).copy()
    return xr.Dataset(
        {"distance_fresh": (("schedule", "solver", "method", "teacher", "nfe"), d)},
        coords={
            "schedule": ["vp"],
            "solver": solvers,
            "method": methods,
            "teacher": ["ddim", "self"],
            "nfe": nfes,
        },
    )


def timing_results():
    from dode.companion.timing import FAMILIES

    solvers = sorted({s for s, _ in FAMILIES})
    methods = sorted({m for _, m in FAMILIES})
    nfes = [2, 3, 4, 5, 9, 19]
    rng = np.random.default_rng(4)
    shape = (len(solvers), len(methods), len(nfes), len(SEEDS))
    return xr.Dataset(
        {
            "fd": (("solver", "method", "nfe", "seed"), rng.uniform(1, 50, shape)),
            "fd_floor": ("seed", rng.uniform(0.8, 1.2, len(SEEDS))),  # drawn as a band, named in a caption
        },
        coords={"solver": solvers, "method": methods, "nfe": nfes, "seed": SEEDS},
        attrs={"floor_sampler": "ddim:50", "floor_n_samples": 500},
    )


def similarity_results():
    n = 20
    idx = np.arange(n)
    S = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 8.0)
    return xr.Dataset(
        {
            "similarity": (("model", "i", "j"), np.stack([S, S**2])),
            # the times a 1000-step run's labels show: training indices (VP), sigma (EDM)
            "eval_time": (("model", "i"), np.stack([np.linspace(999, 0.999, n), np.geomspace(80, 0.002, n)])),
            "data_prediction": ("model", [0, 1]),
        },
        coords={"model": MODELS},
        attrs={"time_variable": json.dumps({"digits-eps": "t", "digits-edm": "sigma"})},
    )


def model_report_results():
    steps = np.tile(np.arange(1, 11) * 100.0, (2, 1))
    return xr.Dataset(
        {
            "loss": (("model", "window"), np.exp(-steps / 500)),
            "step": (("model", "window"), steps),
            "samples": (("model", "sample", "y", "x"), np.zeros((2, 16, 8, 8))),
        },
        coords={"model": MODELS},
    )


def figures(with_floor=False):
    """Every figure function of the book on the synthetic results: name -> figure."""
    plots.style()
    ds = sweep(with_floor)
    out = {
        "metric_vs_nfe": plots.metric_vs_nfe(ds, "fd"),
        "metric_vs_nfe, one model": plots.metric_vs_nfe(sweep(with_floor, models=False), "fd"),
        "summary_figure": plots.summary_figure({"02_noise_prediction": ds, "03_data_prediction": ds}),
        "lambdas_figure": plots.lambdas_figure(ds),
        "plot_lambdas": plots.plot_lambdas(ds.isel(model=0, drop=True), 7).figure,
        "ablation_figure": plots.ablation_figure(ablation_results(with_floor), "fd", K=10, B=100),
        "lambda_search": plots.lambda_search(lambda_search_results(with_floor), "fd", 3),
        "testbed_figure": testbed.testbed_figure(exact_testbed_results(), "vp"),
        "fd_vs_nfe": timing.fd_vs_nfe(timing_results(), "fd").figure,
        "fd_vs_cost": timing.fd_vs_cost(timing_results(), "fd").figure,
        "similarity_heatmaps": plots.similarity_heatmaps(similarity_results()),
        "similarity_profiles": plots.similarity_profiles(similarity_results()),
        "plot_loss_curves": model_report.plot_loss_curves(model_report_results()).figure,
        "plot_samples": model_report.plot_samples(model_report_results()),
    }
    results = peers_results(with_floor)
    for model in MODELS:
        out[f"peers_figure {model}"] = peers.peers_figure(
            peers.model_results(results, model), "fd", title=model
        )
    return out


@pytest.fixture(scope="module")
def drawn():
    figs = figures(with_floor=True)
    for fig in figs.values():
        fig.canvas.draw()
    yield figs
    plt.close("all")


def _rows(fig) -> list[int]:
    """Panels per row: the axes (colour bars left out) grouped by their vertical position."""
    boxes = [ax.get_position() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    rows: dict[float, int] = {}
    for box in boxes:
        key = round(box.y0, 2)
        rows[key] = rows.get(key, 0) + 1
    return list(rows.values())


def test_no_figure_has_more_than_two_panels_a_row_or_is_wider_than_the_page(drawn):
    for name, fig in drawn.items():
        assert max(_rows(fig)) <= plots.MAX_COLUMNS, name
        renderer = fig.canvas.get_renderer()
        width_in = fig.get_tightbbox(renderer).width  # inches, what bbox_inches="tight" saves
        assert width_in <= plots.PAGE_WIDTH_IN * 1.05, (name, width_in)


def test_the_multi_model_sweep_keeps_one_panel_per_model_and_solver_two_a_row(drawn):
    fig = drawn["metric_vs_nfe"]
    assert len(fig.axes) == len(MODELS) * len(SOLVERS)
    assert _rows(fig) == [2] * (len(MODELS) * len(SOLVERS) // 2)


def test_no_text_is_smaller_than_the_minimum_for_the_column(drawn):
    # the minimum follows from the column width: 12 px at a 700 px column for a 7 in figure
    assert plots.MIN_FONT_PT == pytest.approx(72 * 12 * 7 / 700)
    for name, fig in drawn.items():
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        assert texts, name
        for text in texts:
            assert text.get_fontsize() >= plots.MIN_FONT_PT - 1e-9, (
                name,
                text.get_text(),
                text.get_fontsize(),
            )


def _nfe_axes(fig):
    return [ax for ax in fig.axes if ax.get_xlabel().startswith("NFE")]


def test_nfe_ticks_are_the_integers_run_and_their_labels_do_not_overlap(drawn):
    checked = 0
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        for ax in _nfe_axes(fig):
            ticks = ax.get_xticks()
            assert np.all(ticks == np.round(ticks)), (name, ticks)
            labels = [t for t in ax.get_xticklabels() if t.get_text()]
            assert all(t.get_text().isdigit() for t in labels), name
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
            assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), (name, ax.get_title())
            assert not ax.xaxis.get_minorticklocs().size, name
            checked += 1
    assert checked >= 10


def test_the_similarity_table_keeps_digits_of_a_mean_close_to_one():
    ds = similarity_results()
    ds["similarity"][:] = 1.0 - 4e-5 * np.abs(ds["i"] - ds["j"])  # neighbours at 0.99996
    cells = plots.table(plots.similarity_summary(ds), digits=4).data
    assert cells["cos(d_i, d_i+1) mean"].tolist() == ["1.0000", "1.0000"]


def test_no_axis_tick_labels_overlap(drawn):
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for labels, lo, hi in (
                (ax.get_xticklabels(), "x0", "x1"),
                (ax.get_yticklabels(), "y0", "y1"),
            ):
                boxes = sorted(
                    (t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()),
                    key=lambda b: getattr(b, lo),
                )
                for a, b in zip(boxes, boxes[1:], strict=False):
                    assert getattr(a, hi) <= getattr(b, lo) + 0.5, (name, ax.get_title(), lo)


def test_log_axes_have_plain_labels_that_do_not_overlap():
    plots.style()
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    ax.plot([1500, 2500, 4000, 9000], [0.55, 0.6, 0.9, 0.7])  # page 10's seconds: under a decade
    plots.log_axis(ax, "x")
    plots.log_axis(ax, "y")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 2 and all("10^" not in t.get_text() and "times" not in t.get_text() for t in labels)
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
    assert len([t for t in ax.get_yticklabels() if t.get_text()]) >= 2
    ax.set_ylim(130, 280)  # inside one step of the mantissas: still two labels at least
    plots.log_axis(ax, "y")
    assert len([t for t in ax.get_yticklabels() if t.get_text()]) >= 2
    plt.close(fig)


def test_a_log_axis_without_a_positive_value_stays_linear_without_a_warning():
    import warnings

    plots.style()
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    ax.plot([0.0, 0.0], [0.5, 0.7])  # costs that rounded to 0: what a dry run's page 10 drew
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.log_axis(ax, "x")
        plots.log_axis(ax, "y")
        fig.canvas.draw()
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "log"
    plt.close(fig)


def _floor_bands(fig):
    return [p for ax in fig.axes for p in ax.patches if p.get_label() == "noise floor"]


def test_the_noise_floor_is_drawn_when_the_file_has_it_and_only_then(drawn):
    fd_figures = [
        "metric_vs_nfe",
        "metric_vs_nfe, one model",
        "summary_figure",
        "ablation_figure",
        "lambda_search",
        *[f"peers_figure {m}" for m in MODELS],
    ]
    for name in fd_figures:
        assert _floor_bands(drawn[name]), name
        assert any("noise floor" in t.get_text() for t in drawn[name].texts), name
    without = figures(with_floor=False)
    for name in fd_figures:
        assert not _floor_bands(without[name]), name
    plt.close("all")


def test_the_floor_band_spans_mean_plus_minus_std_over_seeds_of_its_model():
    fig, ax = plt.subplots()
    ds = floor(sweep())
    text = plots.floor_band(ax, ds, "fd", model="digits-edm")
    (band,) = _floor_bands(fig)
    low, high = band.get_y(), band.get_y() + band.get_height()
    assert low == pytest.approx(1.6 - 0.1) and high == pytest.approx(1.6 + 0.1)
    assert "1.60 ± 0.10" in text and "disjoint sets of real digits" in text and "1000 samples" in text
    with pytest.raises(ValueError, match="model must name one of"):
        plots.floor_band(ax, ds, "fd")
    assert plots.floor_band(ax, sweep(), "fd", model="digits-edm") == ""
    plt.close(fig)


def test_the_floor_caption_names_its_model_s_attributes_in_a_file_of_several_models():
    """The peers file keeps one floor attribute per model as a JSON mapping: the caption gives the model's."""
    fig, ax = plt.subplots()
    ds = floor(sweep())
    ds["fd_floor"].attrs.update(
        description='{"digits-eps": "FD of DDIM with 100 steps", "digits-edm": "FD of Heun with 79 evaluations"}',
        n_samples='{"digits-eps": 2000, "digits-edm": 1000}',
    )
    text = plots.floor_band(ax, ds, "fd", model="digits-edm")
    assert "FD of Heun with 79 evaluations, 1000 samples" in text and "{" not in text
    plt.close(fig)


def test_lambda_outliers_are_clipped_and_stated(drawn):
    fig = drawn["lambdas_figure"]
    ax = fig.axes[0]  # D-DDIM on digits-eps holds the runaway fit
    low, high = ax.get_ylim()
    assert low > -130 and high < 5
    assert any("-130" in t.get_text() and "NFE 7" in t.get_text() for t in fig.texts)
    # one panel per (model, solver), the NFEs as lines, a legend naming only what is drawn
    assert len(fig.axes) == len(MODELS) * len(SOLVERS)
    (legend,) = fig.legends  # one legend for all panels, naming the NFEs drawn
    assert [t.get_text() for t in legend.get_texts()] == [f"NFE {n}" for n in NFES]
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    only_odd = plots.lambdas_figure(sweep().sel({"nfe": [3, 5, 7]}))
    assert [t.get_text() for t in only_odd.legends[0].get_texts()] == ["NFE 3", "NFE 5", "NFE 7"]
    assert "off the scale" in drawn["plot_lambdas"].axes[0].get_title()


def test_peers_small_multiples_label_every_line_and_highlight_each_familys_best(drawn):
    fig = drawn["peers_figure digits-eps"]
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [t for t, _ in peers.FAMILY_PANELS] + ["best of each family"]
    for ax in fig.axes:
        labelled = [t for t in ax.texts if t.get_text()]
        lines = [ln for ln in ax.get_lines() if ln.get_label() != "_noise floor"]
        assert len(labelled) == len(lines)
        assert ax.get_legend() is None
        bold = [t for t in labelled if t.get_fontweight() == "bold"]
        assert len(bold) == (len(labelled) if ax.get_title() == "best of each family" else 1)
    # the best of the diffusers family is the one with the lowest FD at every NFE
    ds = peers.model_results(peers_results(), "digits-eps")
    diffusers = [n for n in ds.coords["sampler"].values.tolist() if n.startswith("diffusers:")]
    lowest = diffusers[int(np.argmin(ds["fd"].sel({"sampler": diffusers}).values[:, 0]))]
    bold = [t.get_text() for t in fig.axes[0].texts if t.get_fontweight() == "bold"]
    assert bold == [peers.sampler_label(lowest).removeprefix("diffusers ")]


# --------------------------------------------------------------------------------------------------------
# tables


CARD = {
    "prediction": "eps",
    "n_parameters": 1000,
    "training": {
        "steps": 10,
        "batch_size": 8,
        "lr": 1e-3,
        "ema_decay": 0.99,
        "wall_time_s": 60,
        "threads": 1,
    },
    "loss": {"final": 0.1},
    "weights": {"sha256": "0" * 64},
    "quality": {},
}


def _tables():
    ds = sweep()
    ds["fd"][0, 0, 0, 0, :] = np.nan
    flags = pd.DataFrame(
        {"solver": ["ddim", "edm"], "base": [1.0, np.nan], "beats base": [True, False]}
    ).set_index("solver")
    cards = xr.Dataset(coords={"model": ["digits-eps"]}, attrs={"card:digits-eps": json.dumps(CARD)})
    return {
        "sweep_table": plots.sweep_table(ds, "fd"),
        "paired_gain": plots.paired_gain(ds, "fd"),
        "paired_gains": plots.paired_gains(ds.isel(model=0, drop=True), "fd", ["d-ode", "d-ode-joint"]),
        "mean_std_table": plots.mean_std_table(
            ds.isel(model=0, drop=True), "fd", "method", "nfe", {"solver": "ddim"}
        ),
        "timing_table": plots.timing_table(ds),
        "paper_comparison": plots.paper_comparison(
            ds.isel(model=0, drop=True),
            "fd",
            {"DDIM": [1, 2, 3, 4]},
            {"DDIM": {"solver": "ddim", "method": "base"}},
        ),
        "flags": flags,
        "model_report.summary_table": model_report.summary_table(cards),
    }


@pytest.mark.parametrize("name", list(_tables()))
def test_tables_have_no_index_column_nan_booleans_or_raw_dicts(name):
    df = _tables()[name]
    html = plots.table(df).to_html()
    body = html[html.index("<tbody>") :]
    assert "<th" not in body  # no index column: every body cell is a data cell
    for word in ("nan", "NaN", "True", "False", "None", "{", "}"):
        assert f">{word}" not in body and f"{word}<" not in body, (name, word)
    # the index levels came back as named columns
    names = [n for n in df.index.names if n]
    head = html[: html.index("<tbody>")]
    assert all(f">{n}<" in head for n in names), (name, names)


def test_table_words_for_missing_flags_and_dicts():
    df = pd.DataFrame(
        {"x": [1.234, np.nan], "ok": [True, False], "q": ["{}", '{"fd": 2.5}'], "n": [3.0, 4.0]}
    )
    cells = plots.table(df).data.values.tolist()
    assert cells == [["1.23", "yes", "–", "3"], ["–", "no", "fd: 2.50", "4"]]


def _column_styles(styler) -> dict[int, set[str]]:
    """The CSS declarations each column's cells get in a Styler's HTML, by column number."""
    import re

    html = styler.to_html()
    found: dict[int, set[str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", html[: html.index("</style>")]):
        for col in set(re.findall(r"_col(\d+)", selectors)):
            found.setdefault(int(col), set()).update(d.strip() for d in body.split(";") if d.strip())
    return found


def test_table_aligns_words_left_numbers_right_and_lets_long_labels_wrap():
    index = pd.Index(["ddim", "diffusers DPM-Solver++(2M) (full-order last step, order 3, Karras sigmas)"])
    df = pd.DataFrame(
        {"fd": ["2.97 ± 0.51", "–"], "verdict": ["inside the noise", "dode better"], "n": [3, 4]},
        index=index.rename("sampler"),
    )
    styles = _column_styles(plots.table(df))
    assert "text-align: left" in styles[0] and "white-space: nowrap" not in styles[0]  # a long label wraps
    assert "text-align: left" in styles[2]  # words
    assert 1 not in styles and 3 not in styles  # numbers keep the right alignment of the stylesheet
    html = plots.table(df).to_html()
    assert (
        "th.col_heading.col0 {\n  text-align: left;" in html and "th.col_heading.col1" not in html
    )  # headers
    short = _column_styles(plots.table(df.iloc[:1]))
    assert {"text-align: left", "white-space: nowrap"} <= short[0]


def test_table_keeps_a_mean_and_its_spread_together():
    cells = plots.table(pd.DataFrame({"fd": ["36.64 ± 1.68 (3/3)"]})).data.values.tolist()
    assert cells == [["36.64\u00a0± 1.68 (3/3)"]]


def test_table_shows_each_outer_level_once_per_block():
    index = pd.MultiIndex.from_tuples(
        [("m1", "ddim", "base"), ("m1", "ddim", "d-ode"), ("m1", "ipndm", "base"), ("m2", "ipndm", "base")],
        names=["model", "solver", "method"],
    )
    cells = plots.table(pd.DataFrame({"fd": [1.0, 2.0, 3.0, 4.0]}, index=index)).data.values.tolist()
    assert [row[:3] for row in cells] == [
        ["m1", "ddim", "base"],
        ["", "", "d-ode"],
        ["", "ipndm", "base"],
        ["m2", "ipndm", "base"],  # a new model starts a new block of every inner level
    ]


def test_the_model_table_drops_an_empty_quality_column_and_renders_a_full_one():
    cards = xr.Dataset(coords={"model": ["m"]}, attrs={"card:m": json.dumps(CARD)})
    assert "quality" not in model_report.summary_table(cards).columns
    cards.attrs["card:m"] = json.dumps({**CARD, "quality": {"fd_to_train": 2.5}})
    html = plots.table(model_report.summary_table(cards)).to_html()
    assert "fd_to_train: 2.5" in html


def test_direct_labels_stay_inside_their_panel_even_at_a_single_nfe():
    plots.style()
    results = peers_results().isel(nfe=[1])  # NFE 5, where the joint fit ran
    fig = peers.peers_figure(peers.model_results(results, "digits-eps"), "fd")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        for text in ax.texts:
            assert text.get_window_extent(renderer).x1 <= box.x1 + 1, (ax.get_title(), text.get_text())
    plt.close(fig)


def test_curves_over_a_range_of_nfes_keep_at_least_half_of_each_peers_panel():
    """Long direct labels may run past a panel's edge, but never stretch the log NFE axis so far that the
    curves shrink into a sliver (the cpu page 13 once had its x axis widened to 10^10)."""
    plots.style()
    results = peers_results()
    nfes = results.coords["nfe"].values
    fig = peers.peers_figure(peers.model_results(results, "digits-eps"), "fd")
    for ax in fig.axes:
        x0, x1 = ax.get_xlim()
        share = (np.log10(nfes.max()) - np.log10(x0)) / (np.log10(x1) - np.log10(x0))
        assert share >= 0.49 - 1e-9, (ax.get_title(), x0, x1)  # half the panel, less its 1 % edge
    plt.close(fig)


def test_the_papers_numbers_sit_beside_the_model_they_were_measured_on_only():
    from dode.companion import paper

    ds = sweep().assign_coords(model=["ddpm-cifar10", "adm-lsun-bedroom"])
    table = plots.sweep_table(
        ds, "fd", paper=paper.SWEEP_FIDS, paper_nfes=paper.NFES, paper_model=paper.SWEEP_MODEL
    )
    column = next(c for c in table.columns if c.startswith("paper"))
    beside = table[column]
    assert (beside.loc["ddpm-cifar10"] != "").sum() == len(paper.SWEEP_FIDS)
    assert (beside.loc["adm-lsun-bedroom"] == "").all(), "the paper's CIFAR-10 numbers beside LSUN bedroom"
    # a file without that model has no paper column at all, with or without a model dimension
    other = ds.assign_coords(model=["digits-eps", "adm-lsun-bedroom"])
    for part in (other, other.isel(model=0, drop=True).assign_attrs(model="digits-eps")):
        table = plots.sweep_table(
            part, "fd", paper=paper.SWEEP_FIDS, paper_nfes=paper.NFES, paper_model=paper.SWEEP_MODEL
        )
        assert not any(c.startswith("paper") for c in table.columns)


def test_a_method_without_cells_gets_a_note_instead_of_a_table():
    ds = sweep()
    assert plots.no_cells_note(ds, "fd", "d-ode-joint") is None
    without = ds.sel({"method": [m for m in ds.coords["method"].values if m != "d-ode-joint"]})
    assert "no results of D-solver, joint fit (`d-ode-joint`)" in plots.no_cells_note(
        without, "fd", "d-ode-joint"
    )
    empty = ds.copy(deep=True)
    empty["fd"].loc[{"method": "d-ode-joint"}] = np.nan
    assert plots.no_cells_note(empty, "fd", "d-ode-joint") is not None
    assert plots.present(without, ["d-ode-joint", "d-ode", "base"]) == ["d-ode", "base"]


def test_an_images_distance_sits_nearer_its_own_image_than_the_image_above():
    plots.style()
    images = np.zeros((4, 1, 8, 8))
    rows = [("reference", images), ("DDIM\nNFE 5", images + 0.1), ("D-DDIM\nNFE 5", images + 0.2)]
    fig = plots._closeups(rows, images, "digits-eps: DDIM vs D-DDIM")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    grid = np.asarray(fig.axes).reshape(len(rows), -1)
    for r in (1, 2):
        ax, above = grid[r, 1], grid[r - 1, 1]
        title = ax.title.get_window_extent(renderer)
        to_own = title.y0 - ax.get_window_extent(renderer).y1  # display units: y grows upwards
        to_above = above.get_window_extent(renderer).y0 - title.y1
        assert ax.title.get_text() and to_own < to_above / 2, (r, to_own, to_above)
    plt.close(fig)


def test_the_grid_search_figure_has_one_legend_above_its_panels(drawn):
    fig = drawn["lambda_search"]
    assert all(ax.get_legend() is None for ax in fig.axes)  # a legend inside a panel hid a curve on page 09
    (legend,) = fig.legends
    assert {"DDIM", "D-DDIM", "LA-DDIM", "Fixed-D-DDIM"} <= {t.get_text() for t in legend.get_texts()}


def test_no_legend_lies_over_its_panel_in_the_cost_figures():
    for name, draw in (("fd_vs_nfe", timing.fd_vs_nfe), ("fd_vs_cost", timing.fd_vs_cost)):
        fig = draw(timing_results(), "fd").figure
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        box, legend = ax.get_window_extent(renderer), ax.get_legend().get_window_extent(renderer)
        assert legend.x0 >= box.x1, name  # beside the panel (page 10's legend hid curves and labels)
        plt.close(fig)


def test_a_caption_starts_below_the_axis_label():
    for name, fig in figures(with_floor=True).items():  # drawn afresh: earlier tests close every figure
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        captions = [t for t in fig.texts if t.get_position()[1] == 0.0 and t.get_text()]
        labels = [ax.xaxis.label for ax in fig.axes if ax.get_xlabel()]
        for caption in captions:
            top = caption.get_window_extent(renderer).y1
            assert all(label.get_window_extent(renderer).y0 >= top - 1 for label in labels), name
    plt.close("all")
