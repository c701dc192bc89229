"""The notebooks' shared machinery: noise streams, settings, and the resumable quality sweep."""

import numpy as np
import pytest
import torch
from conftest import CountingNet

import dode
from dode.companion import experiments as ex
from dode.gmm import GaussianMixture


def test_noise_streams_are_deterministic_batch_independent_and_disjoint():
    shape = (1, 8, 8)
    whole = ex.noise(3, "eval", 600, shape)
    parts = torch.cat(
        [ex.noise(3, "eval", 250, shape, start=s) for s in (0, 250)]
        + [ex.noise(3, "eval", 100, shape, start=500)]
    )
    assert torch.equal(whole, parts)
    fit = ex.noise(3, "fit", 100, shape)
    # the fitting batch is never part of the evaluation samples, and seeds differ
    assert not any(torch.equal(f, e) for f in fit[:20] for e in whole)
    assert not torch.equal(ex.noise(4, "eval", 10, shape), whole[:10])
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05
    with pytest.raises(ValueError, match="purpose must be one of"):
        ex.noise(0, "train2", 4, shape)


def test_settings_fill_profile_defaults_and_reject_unknowns():
    defaults = {
        p: {"solvers": ["ddim"], "nfes": [5], "n_samples": n} for p, n in zip(ex.PROFILES, (8, 2000, 50000))
    }
    cfg = ex.settings(defaults, "cpu", nfes=[10, 20], n_samples=None)
    assert cfg == {"profile": "cpu", "solvers": ["ddim"], "nfes": [10, 20], "n_samples": 2000}
    with pytest.raises(ValueError, match=r"profile must be one of \('smoke', 'cpu', 'paper'\)"):
        ex.settings(defaults, "laptop")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['K'\]"):
        ex.settings(defaults, "cpu", K=3)
    with pytest.raises(ValueError, match="solver label must be one of"):
        ex.settings(defaults, "cpu", solvers=["euler"])


@pytest.fixture
def digit_shaped_model():
    """A 64-d Gaussian mixture, shaped as 1x8x8 images, as a Denoiser with the zoo's info fields."""
    gmm = GaussianMixture.random(n_components=5, dim=64, seed=2, std_range=(0.2, 0.4))
    base = gmm.denoiser(dode.VPSchedule.linear(), "eps", dtype=torch.float32)
    counting = CountingNet(base.fn)
    den = dode.Denoiser(
        counting,
        base.schedule,
        "eps",
        name="gmm-digits",
        info={"channels": 1, "resolution": 8, "fid_reference": "fd"},
    )
    return den, counting


def test_quality_sweep_fills_resumes_and_pairs(tmp_path, digit_shaped_model):
    den, counting = digit_shaped_model
    name, metric = ex.make_metric(den)
    assert name == "fd"
    kw = dict(
        solvers=["ddim", "dpm_solver++"],
        nfes=[3, 4],
        seeds=[0, 1],
        methods=["base", "d-ode"],
        K=2,
        B=8,
        n_samples=40,
        batch_size=16,
        progress=False,
    )
    params = {"profile": "smoke", **kw}
    store = ex.open_store(
        tmp_path,
        "02_test",
        ex.sweep_dims(kw["solvers"], kw["nfes"], kw["methods"], kw["seeds"]),
        {"K": 2, "B": 8, "n_samples": 40},
        params,
        {den.name: ex.identity(den, metric)},
    )
    ex.quality_sweep(store, den, metric, name, **kw)
    ds = store.dataset()
    assert np.all(np.isfinite(ds["fd"].values)) and ds["fd"].shape == (2, 2, 2, 2)
    assert np.all(np.isfinite(ds["fit_seconds"].sel({"method": "d-ode"}).values))
    assert np.isnan(ds["fit_seconds"].sel({"method": "base"}).values).all()
    # the stored lambdas are the ones distill gives on the seed's fitting batch
    lam, _ = ex.fit_lambdas(den, "ddim", 3, seed=1, K=2, B=8, shape=(1, 8, 8))
    np.testing.assert_array_equal(
        ds["lambdas"].sel({"solver": "ddim", "method": "d-ode", "nfe": 3, "seed": 1}).values[:3, 0],
        lam.values[:, 0],
    )
    # rerun: nothing is recomputed
    counting.calls = 0
    again = ex.open_store(
        tmp_path,
        "02_test",
        ex.sweep_dims(kw["solvers"], kw["nfes"], kw["methods"], kw["seeds"]),
        {"K": 2, "B": 8, "n_samples": 40},
        params,
        {den.name: ex.identity(den, metric)},
    )
    ex.quality_sweep(again, den, metric, name, **kw)
    assert counting.calls == 0
    # an interrupted cell (its fd missing, its lambdas stored) resumes without refitting
    again.ds["fd"].loc[{"solver": "ddim", "method": "d-ode", "nfe": 4, "seed": 0}] = np.nan
    ex.quality_sweep(again, den, metric, name, **kw)
    assert counting.calls == 4 * 3  # 40 samples in 3 batches x 4 evaluations, no teacher run
    assert np.isclose(
        again.get("fd", solver="ddim", method="d-ode", nfe=4, seed=0),
        ds["fd"].sel({"solver": "ddim", "method": "d-ode", "nfe": 4, "seed": 0}),
    )


def test_quality_sweep_rejects_unknown_methods(tmp_path, digit_shaped_model):
    den, _ = digit_shaped_model
    with pytest.raises(ValueError, match="methods must be 'base', a fitted D-ODE method"):
        ex.quality_sweep(
            None,
            den,
            None,
            "fd",
            solvers=["ddim"],
            nfes=[3],
            seeds=[0],
            methods=["la-ddim"],
            K=2,
            B=4,
            n_samples=4,
            batch_size=4,
        )


def test_network_evaluation_count_matches_a_real_smoke_sweep(tmp_path, monkeypatch):
    """The counts that the GPU chapter's run-time estimates rest on are the numbers of calls a sweep makes: of
    the network, of the metric's network (per image) and of the Frechet distance."""
    from dode import metrics
    from dode.companion.protocols import PROTOCOLS, metric_work, network_evaluations

    calls = {"n": 0, "images": 0, "distances": 0}
    real_load = ex.load_model
    real_features, real_distance = metrics.FD.features, metrics.frechet_distance

    def counting_features(self, images):
        calls["images"] += images.shape[0]
        return real_features(self, images)

    def counting_distance(*args, **kwargs):
        calls["distances"] += 1
        return real_distance(*args, **kwargs)

    monkeypatch.setattr(metrics.FD, "features", counting_features)
    monkeypatch.setattr(metrics, "frechet_distance", counting_distance)

    def counting_load(name, device="cpu", **options):
        den = real_load(name, device=device, **options)
        fn = den.fn

        def counted(x, t, **kwargs):
            calls["n"] += x.shape[0]
            return fn(x, t, **kwargs)

        den.fn = counted
        return den

    monkeypatch.setattr(ex, "load_model", counting_load)
    # one D-variant; four sharing one teacher run; Heun (one teacher time per step) and the per-stage method
    # (computed for Heun only)
    for stem in ("04_dpm_solver_pp", "07_formulations", "03_data_prediction"):
        calls.update(n=0, images=0, distances=0)
        # a results folder each: the noise floor of a model another sweep computed would be read from its cache
        ex.run_sweep(stem, ex.settings(PROTOCOLS[stem], "smoke"), tmp_path / stem, progress=False)
        assert calls["n"] == network_evaluations(stem, "smoke"), stem
        assert {k: calls[k] for k in ("images", "distances")} == metric_work(stem, "smoke"), stem
    with pytest.raises(ValueError, match="stem must be one of"):
        network_evaluations("99_nothing", "cpu")
    with pytest.raises(ValueError, match="not a plain sweep"):
        network_evaluations("08_ablation_K_B", "cpu")
    with pytest.raises(ValueError, match="stem must be one of"):
        metric_work("99_nothing", "cpu")


# ---- extra sweep dimensions: K and B (Tab. 3), constant lambdas (Tab. 4) ----


def test_one_at_a_time_varies_K_then_B_around_the_default_and_sweep_points_combine():
    points = ex.one_at_a_time([5, 10, 20], [5, 100], K=10, B=100)
    assert points == [{"K": 5, "B": 100}, {"K": 10, "B": 100}, {"K": 20, "B": 100}, {"K": 10, "B": 5}]
    cfg = {"K": 10, "B": 100, "lambda_values": [0.0, 0.5]}
    assert ex.sweep_points(cfg) == [{"lambda_value": 0.0}, {"lambda_value": 0.5}]
    assert ex.sweep_points({"K": 10, "B": 100}) == [{}]
    dims = ex.sweep_dims(["ddim"], [5], ["base", "d-ode"], [0], points)
    assert dims["K"] == [5, 10, 20] and dims["B"] == [5, 100]
    with pytest.raises(ValueError, match="repeated values"):
        ex.sweep_points({"K": 1, "B": 1, "lambda_values": [0.1, 0.1]})
    with pytest.raises(ValueError, match="need lambda_value"):
        ex._check_points([{}], ["base", "fixed"])
    with pytest.raises(ValueError, match="may set"):
        ex._check_points([{"eta": 1}], ["base"])


def _sweep_store(tmp_path, den, kw, points):
    dims = ex.sweep_dims(kw["solvers"], kw["nfes"], kw["methods"], kw["seeds"], points)
    return ex.open_store(
        tmp_path,
        "08_test",
        dims,
        {"K": kw["K"], "B": kw["B"]},
        {"profile": "smoke"},
        {den.name: ex.identity(den)},
    )


def test_K_and_B_reach_distill_base_is_sampled_once_and_resume_skips_finished_cells(
    tmp_path, digit_shaped_model, monkeypatch
):
    den, counting = digit_shaped_model
    name, metric = ex.make_metric(den)
    fits = []
    real_distill = ex.distill

    def recording_distill(den_, noise, solver, nfe, K, **kw):
        fits.append((kw["seed"], K, noise.shape[0]))
        return real_distill(den_, noise, solver, nfe, K, **kw)

    monkeypatch.setattr(ex, "distill", recording_distill)
    points = ex.one_at_a_time([2, 3], [4, 8], K=2, B=8)  # (2, 8), (3, 8), (2, 4)
    kw = dict(solvers=["ddim"], nfes=[3], seeds=[0, 1], methods=["base", "d-ode"], K=2, B=8)
    kw |= dict(n_samples=24, batch_size=24, progress=False)
    store = _sweep_store(tmp_path, den, kw, points)
    ex.quality_sweep(store, den, metric, name, points=points, **kw)
    assert sorted(fits) == sorted((s, k, b) for s in (0, 1) for k, b in [(2, 8), (3, 8), (2, 4)])
    ds = store.dataset()
    fd = ds["fd"]
    assert set(fd.dims) == {"solver", "method", "nfe", "seed", "K", "B"}
    for p in points:
        assert np.isfinite(fd.sel({"method": "d-ode", **p})).all()
        # the base solver does not depend on K or B: one value per seed, stored at every point
        np.testing.assert_array_equal(
            fd.sel({"method": "base", **p}).values, fd.sel({"method": "base", **points[0]}).values
        )
    assert np.isnan(fd.sel({"method": "d-ode", "K": 3, "B": 4}).values).all()  # not in the design
    # base sampled once per seed (not once per point): 2 seeds x (1 base + 3 D) runs of 3 evaluations,
    # plus the teacher runs (K x 3 evaluations) and the student runs (3) of the 3 fits per seed
    runs = 2 * 4 * 3 + 2 * ((2 * 3 + 3) + (3 * 3 + 3) + (2 * 3 + 3))
    assert counting.calls == runs
    # the stored lambdas are the fit with the point's K and B, which differ between points
    lam, _ = ex.fit_lambdas(den, "ddim", 3, seed=1, K=3, B=8, shape=(1, 8, 8))
    stored = ds["lambdas"].sel({"solver": "ddim", "method": "d-ode", "nfe": 3, "seed": 1, "K": 3, "B": 8})
    np.testing.assert_array_equal(stored.values[:3, 0], lam.values[:, 0])
    other = ds["lambdas"].sel({"solver": "ddim", "method": "d-ode", "nfe": 3, "seed": 1, "K": 2, "B": 4})
    assert not np.allclose(stored.values[:3, 0], other.values[:3, 0])
    # resume: nothing is recomputed; a lost metric cell is resampled without refitting
    fits.clear()
    counting.calls = 0
    again = _sweep_store(tmp_path, den, kw, points)
    ex.quality_sweep(again, den, metric, name, points=points, **kw)
    assert counting.calls == 0 and fits == []
    again.ds["fd"].loc[{"solver": "ddim", "method": "d-ode", "nfe": 3, "seed": 0, "K": 3, "B": 8}] = np.nan
    ex.quality_sweep(again, den, metric, name, points=points, **kw)
    assert counting.calls == 3 and fits == []
    assert np.isclose(
        again.get("fd", solver="ddim", method="d-ode", nfe=3, seed=0, K=3, B=8),
        fd.sel({"solver": "ddim", "method": "d-ode", "nfe": 3, "seed": 0, "K": 3, "B": 8}),
    )


def test_constant_lambda_methods_follow_lambda_value_and_variants_share_one_teacher_run(
    tmp_path, digit_shaped_model, monkeypatch
):
    import importlib

    distill_module = importlib.import_module("dode.distill")  # dode.distill is also the function

    den, _ = digit_shaped_model
    name, metric = ex.make_metric(den)
    teacher_runs = []
    real_teacher = distill_module.teacher_targets

    def counting_teacher(*args, **kw):
        teacher_runs.append(args[3])
        return real_teacher(*args, **kw)

    monkeypatch.setattr(distill_module, "teacher_targets", counting_teacher)
    points = ex.sweep_points({"K": 2, "B": 8, "lambda_values": [0.0, 0.4]})
    methods = ["base", "d-ode", "d-ode-2", "fixed", "lookahead"]
    kw = dict(solvers=["ddim"], nfes=[4], seeds=[0], methods=methods, K=2, B=8)
    kw |= dict(n_samples=24, batch_size=24, progress=False)
    store = _sweep_store(tmp_path, den, kw, points)
    ex.quality_sweep(store, den, metric, name, points=points, **kw)
    assert teacher_runs == [2]  # one teacher run for both variants
    fd = store.dataset()["fd"].sel({"solver": "ddim", "nfe": 4, "seed": 0})

    def at(method, c):
        return float(fd.sel({"method": method, "lambda_value": c}))

    # lambda = 0 is the base solver exactly, for both transforms
    assert at("fixed", 0.0) == at("base", 0.0) == at("lookahead", 0.0)
    # a nonzero constant changes the samples, and differently in eps and in x0
    assert at("fixed", 0.4) != at("base", 0.4) and at("lookahead", 0.4) != at("fixed", 0.4)
    assert at("d-ode", 0.0) == at("d-ode", 0.4)  # the fitted variant does not depend on lambda_value
    # sharing the teacher run gives the lambdas of a fit that runs its own teacher
    for variant in ("d-ode", "d-ode-2"):
        own, _ = ex.fit_lambdas(den, "ddim", 4, seed=0, K=2, B=8, shape=(1, 8, 8), variant=variant)
        stored = store.get("lambdas", solver="ddim", method=variant, nfe=4, seed=0, lambda_value=0.0)
        np.testing.assert_allclose(stored[:4, : own.values.shape[1]], own.values, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="missing landing times"):
        dode.distill(
            den,
            ex.noise(0, "fit", 8, (1, 8, 8)),
            "ddim",
            5,
            K=2,
            teacher_run=real_teacher(
                den,
                ex.noise(0, "fit", 8, (1, 8, 8)),
                dode.solvers.make_plan(den.schedule, "ddim", 4, None, {}),
                2,
            ),
        )


def test_best_constant_picks_the_grid_point_with_the_lowest_value_on_the_tuning_seed():
    import json

    import xarray as xr

    from dode.companion import plots

    fd = np.full((1, 3, 1, 3, 3), np.nan)  # solver, method, nfe, seed, lambda_value
    fd[0, 0] = 5.0  # base: the same at every lambda
    # evaluation seeds 0 and 1, then the tuning seed 3 (the evaluation seeds would choose otherwise)
    fd[0, 1, 0] = [[4.0, 2.0, 3.0], [4.5, 3.5, 1.0], [0.1, 9, 9]]  # fixed: tuning -> 0.3
    fd[0, 2, 0] = [[1.0, 2.0, 6.0], [1.5, 1.0, 6.0], [9, 9, 0.2]]  # lookahead: tuning -> 0.9
    coords = {"solver": ["ddim"], "method": ["base", "fixed", "lookahead"], "nfe": [10], "seed": [0, 1, 3]}
    ds = xr.Dataset(
        {"fd": (tuple(coords) + ("lambda_value",), fd)}, coords=coords | {"lambda_value": [0.3, 0.6, 0.9]}
    )
    with pytest.raises(ValueError, match="tuning_seed"):  # no tuning seed recorded: refused
        plots.best_constant(ds, "fd")
    ds.attrs["parameters"] = json.dumps({"seeds": [0, 1], "tuning_seed": 3})
    reduced, best = plots.best_constant(ds, "fd")
    assert best.sel({"solver": "ddim", "nfe": 10, "method": "fixed"}).item() == 0.3
    assert best.sel({"solver": "ddim", "nfe": 10, "method": "lookahead"}).item() == 0.9
    assert reduced.coords["seed"].values.tolist() == [0, 1]  # evaluated on the evaluation seeds only
    np.testing.assert_array_equal(reduced["fd"].sel({"method": "fixed"}).values.ravel(), [4.0, 4.5])
    np.testing.assert_array_equal(reduced["fd"].sel({"method": "lookahead"}).values.ravel(), [6.0, 6.0])
    np.testing.assert_array_equal(reduced["fd"].sel({"method": "base"}).values.ravel(), [5.0, 5.0])
    gain = plots.paired_gain(reduced, "fd", method="fixed", base="base")  # base − fixed, paired by seed
    assert gain.iloc[0].tolist() == ["+0.75 ± 0.35 (2/2)"]
    # page 11's Tab. 4: the chosen constants' evaluation-seed values beside the paper's
    from dode.companion import paper

    rows = {"DDIM": "base", "Fixed-D-DDIM (grid search)": "fixed", "LA-DDIM": "lookahead"}
    table = plots.paper_comparison(
        reduced, "fd", paper.TABLE4, {k: {"solver": "ddim", "method": v} for k, v in rows.items()}
    )
    assert table.loc["Fixed-D-DDIM (grid search)", ("NFE 10", "ours")] == "4.25 ± 0.35"
    assert table.loc["LA-DDIM", ("NFE 10", "paper")] == f"{paper.TABLE4['LA-DDIM'][0]:.2f}"
    assert table.loc["LA-DDIM", ("NFE 25", "ours")] == "–"  # an NFE this file did not run


def test_network_evaluations_count_joint_fits_only_at_the_sweeps_joint_nfes(monkeypatch):
    from dode.companion import protocols

    stem = "02_noise_prediction"
    cfg = protocols.PROTOCOLS[stem]["paper"]
    assert "d-ode-joint" in cfg["methods"] and cfg["joint_nfes"]

    def count(**changes):
        monkeypatch.setitem(protocols.PROTOCOLS, stem, {"paper": {**cfg, **changes}})
        return protocols.network_evaluations(stem, "paper")

    no_joint = count(methods=[m for m in cfg["methods"] if m != "d-ode-joint"])
    assert count(joint_nfes=[]) == no_joint
    assert no_joint < count() < count(joint_nfes=None)  # None: the joint fit at every NFE of the sweep
