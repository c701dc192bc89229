"""The notebooks' shared machinery: noise streams, settings, and the resumable quality sweep."""

import numpy as np
import pytest
import torch

import dode
from dode import experiments as ex
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


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.fixture
def digit_shaped_model():
    """A 64-d Gaussian mixture, shaped as 1x8x8 images, as a Denoiser with the zoo's info fields."""
    gmm = GaussianMixture.random(n_components=5, dim=64, seed=2, std_range=(0.2, 0.4))
    base = gmm.denoiser(dode.VPSchedule.linear(), "eps", dtype=torch.float32)
    counting = Counting(base.fn)
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
        den,
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
        den,
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
    with pytest.raises(ValueError, match="methods must be 'base' or one of"):
        ex.quality_sweep(
            None,
            den,
            None,
            "fd",
            solvers=["ddim"],
            nfes=[3],
            seeds=[0],
            methods=["lookahead"],
            K=2,
            B=4,
            n_samples=4,
            batch_size=4,
        )


def test_network_evaluation_count_matches_a_real_smoke_sweep(tmp_path, monkeypatch):
    """The count that the GPU chapter's run-time estimates rest on is the number of calls a sweep makes."""
    from dode.protocols import PROTOCOLS, network_evaluations

    calls = {"n": 0}
    real_load = ex.load_model

    def counting_load(name, device="cpu", **options):
        den = real_load(name, device=device, **options)
        fn = den.fn

        def counted(x, t, **kwargs):
            calls["n"] += x.shape[0]
            return fn(x, t, **kwargs)

        den.fn = counted
        return den

    monkeypatch.setattr(ex, "load_model", counting_load)
    cfg = ex.settings(PROTOCOLS["04_dpm_solver_pp"], "smoke")
    ex.run_sweep("04_dpm_solver_pp", cfg, tmp_path, progress=False)
    assert calls["n"] == network_evaluations("04_dpm_solver_pp", "smoke")
    with pytest.raises(ValueError, match="stem must be one of"):
        network_evaluations("99_nothing", "cpu")
