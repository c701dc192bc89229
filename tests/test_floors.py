"""The metric's noise floor: cached once per (model, sampler, count, seed), refused with another model or
reference, equal to an FD computed by hand, stored in a sweep's results file, and described on page 00."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dode.companion import experiments as ex
from dode.companion.results import IncompatibleResults


@pytest.fixture(scope="module")
def mini():
    den = ex.load_model("digits-eps-mini")
    name, metric = ex.make_metric(den)
    return den, name, metric


def test_floor_is_computed_once_reused_and_refused_for_another_model_or_reference(tmp_path):
    from dode.metrics import FD, FeatureStats

    den = ex.load_model("digits-eps-mini")
    name, metric = ex.make_metric(den)
    calls, fn = {"n": 0}, den.fn

    def counted(x, t, **kwargs):
        calls["n"] += x.shape[0]
        return fn(x, t, **kwargs)

    den.fn = counted
    kwargs = dict(floor={"ddim": 4}, seeds=[0, 1], batch_size=16, results_dir=tmp_path)
    first = ex.noise_floor(den, metric, name, n_samples=[8, 16], **kwargs)
    # one run of 16 samples per seed gives both counts (the 8 are its first 8)
    assert calls["n"] == 2 * 16 * 4
    assert first.dims == ("n_samples", "seed") and np.isfinite(first.values).all()
    again = ex.noise_floor(den, metric, name, n_samples=[16, 8], **kwargs)
    assert calls["n"] == 2 * 16 * 4  # read from the cache
    np.testing.assert_array_equal(again.values, first.values)
    # a new count of a stored seed extends its stream; a new seed joins the same file
    ex.noise_floor(den, metric, name, n_samples=[24], **{**kwargs, "seeds": [1, 2]})
    assert calls["n"] == 2 * 16 * 4 + 24 * 4 + 24 * 4
    files = sorted(p.name for p in (tmp_path / ex.FLOOR_DIR).glob("*.nc"))
    assert files == [ex.floor_path(tmp_path, den, "ddim", 4).name]
    # another checkpoint under the same name and first 8 hex digits lands on the same file: refused
    sha = den.info["checkpoint_sha256"]
    den.info["checkpoint_sha256"] = sha[:8] + "0" * (len(sha) - 8)
    with pytest.raises(IncompatibleResults, match="checkpoint_sha256"):
        ex.noise_floor(den, metric, name, n_samples=[8], **kwargs)
    den.info["checkpoint_sha256"] = sha
    # other reference statistics: refused too
    ref = metric.reference
    shifted = FeatureStats.from_moments(ref.mu + 1.0, ref.sigma, ref.n)
    with pytest.raises(IncompatibleResults, match="reference_sha256"):
        ex.noise_floor(den, FD(reference=shifted), name, n_samples=[8], **kwargs)


def test_floor_equals_the_fd_of_the_reference_samplers_samples_computed_by_hand(tmp_path, mini):
    from dode.sampling import sample

    den, name, metric = mini
    values = ex.noise_floor(
        den,
        metric,
        name,
        floor={"ddim": 5},
        n_samples=[10, 20],
        seeds=[3],
        batch_size=7,
        results_dir=tmp_path,
    )
    x = sample(den, ex.noise(3, "eval", 20, ex.sample_shape(den)), "ddim", 5).float()
    assert float(values.sel({"n_samples": 20, "seed": 3})) == pytest.approx(metric(x), rel=1e-6)
    assert float(values.sel({"n_samples": 10, "seed": 3})) == pytest.approx(metric(x[:10]), rel=1e-6)
    # another sampler's FD differs (the test can fail)
    y = sample(den, ex.noise(3, "eval", 20, ex.sample_shape(den)), "ddim", 3).float()
    assert abs(metric(y) - metric(x)) > 1e-3


def test_floor_setting_is_checked():
    assert ex.check_floor(None) == {} and ex.check_floor({}) == {}
    assert ex.check_floor({"ddim": 100, "edm": 35}) == {"ddim": 100, "edm": 35}
    for bad in ({"dpm": 10}, {"edm": 34}, {"ddim": 0}, {"ddim": True}, [100]):
        with pytest.raises(ValueError, match="floor must map"):
            ex.check_floor(bad)
    den = ex.load_model("digits-edm-mini")
    assert ex.reference_sampler(den, {"ddim": 10, "edm": 9}) == ("edm", 9)
    with pytest.raises(ValueError, match="no reference sampler for digits-edm-mini"):
        ex.reference_sampler(den, {"ddim": 10})


def test_the_sweeps_of_02_and_07_store_their_floor_in_their_own_file(tmp_path):
    from dode.companion.protocols import PROTOCOLS

    small = dict(solvers=["ddim"], methods=["base"], nfes=[3])
    cfg = ex.settings(PROTOCOLS["02_noise_prediction"], "smoke", **small)
    path = ex.run_sweep("02_noise_prediction", cfg, tmp_path, progress=False)
    ds = xr.open_dataset(path).load()
    floor = ds["fd_floor"]
    assert floor.dims == ("model", "seed")
    assert floor.attrs["n_samples"] == cfg["n_samples"]
    assert floor.attrs["sampler"] == f"ddim:{cfg['floor']['ddim']}"
    assert (
        f"{cfg['n_samples']} samples of DDIM with {cfg['floor']['ddim']} steps" in floor.attrs["description"]
    )
    den = ex.load_model(cfg["models"][0])
    cached = xr.open_dataset(ex.floor_path(tmp_path, den, "ddim", cfg["floor"]["ddim"])).load()
    assert float(floor.sel({"model": den.name, "seed": 0})) == float(
        cached["fd"].sel({"n_samples": cfg["n_samples"], "seed": 0})
    )
    # a rerun finds every cell and the floor stored: the file is not rewritten
    stamp = path.stat().st_mtime_ns
    ex.run_sweep("02_noise_prediction", cfg, tmp_path, progress=False)
    assert path.stat().st_mtime_ns == stamp
    # a single-model file has the floor over seeds only; with the floor off there is none
    cfg7 = ex.settings(PROTOCOLS["07_formulations"], "smoke", methods=["base"])
    ds7 = xr.open_dataset(ex.run_sweep("07_formulations", cfg7, tmp_path, progress=False)).load()
    assert ds7["fd_floor"].dims == ("seed",)
    off = ex.settings(PROTOCOLS["07_formulations"], "smoke", methods=["base"], floor={})
    ds_off = xr.open_dataset(ex.run_sweep("07_formulations", off, tmp_path / "off", progress=False)).load()
    assert "fd_floor" not in ds_off


def test_describe_floor_names_each_model_where_they_differ(tmp_path):
    from dode.companion.results import ResultStore

    store = ResultStore(tmp_path / "x.nc", {"model": ["a", "b"], "seed": [0]}, {"profile": "smoke"})
    values = xr.DataArray([1.5], dims=["seed"], coords={"seed": [0]})
    ex.store_floor(store, "fd", values, model="a")
    ex.store_floor(store, "fd", values + 1, model="b")
    ex.describe_floor(store, "fd", {"a": ("ddim", 200, 1000), "b": ("edm", 35, 1000)})
    ds = xr.open_dataset(tmp_path / "x.nc").load()
    assert ds["fd_floor"].dims == ("model", "seed")
    assert ds["fd_floor"].sel({"model": "b", "seed": 0}) == 2.5
    assert ds["fd_floor"].attrs["n_samples"] == 1000
    assert json.loads(ds["fd_floor"].attrs["sampler"]) == {"a": "ddim:200", "b": "edm:35"}
    described = json.loads(ds["fd_floor"].attrs["description"])
    assert "1,000 samples of EDM's Heun sampler with 35 evaluations" in described["b"]
    assert "1,000 samples of DDIM with 200 steps" in described["a"]


def test_page_00_states_the_metric_from_its_results_file():
    from dode.companion import model_report

    floors = np.array([[[0.9, 1.1, 1.0], [0.6, 0.7, 0.65]], [[2.0, 2.2, 2.4], [1.0, 1.2, 1.1]]])
    ds = xr.Dataset(
        {
            "noise_floor": (("model", "n_samples", "seed"), floors),
            "data_floor": ((), 2.04),
            "train_subset_fd": (("draw",), np.array([1.5, 1.7, 1.6])),
        },
        coords={"model": ["m-eps", "m-edm"], "n_samples": [1000, 2000], "seed": [0, 1, 2], "draw": [0, 1, 2]},
    )
    ds["noise_floor"].attrs["samplers"] = json.dumps({"m-eps": "DDIM with 200 steps", "m-edm": "Heun"})
    ds.attrs.update(
        reference_n="1500", held_out_n="297", classifier_feature_dim="64", classifier_held_out_accuracy="0.99"
    )
    text = model_report.metric_text(ds)
    assert "1,500 *training* digits" in text and "297 held-out digits" in text
    assert "held-out accuracy 99.0%" in text
    assert "score FD 2.04" in text and "1.60 ± 0.10 (3 draws)" in text
    assert "| m-eps | DDIM with 200 steps | 1.00 ± 0.10 | 0.65 ± 0.05 |" in text
    assert "| m-edm | Heun | 2.20 ± 0.20 | 1.10 ± 0.10 |" in text
    # the threshold uses the larger spread of the models at each count: 2 sqrt(2) x 0.2 and x 0.1
    assert "0.57 at 1,000 samples, 0.28 at 2,000 samples" in text


def test_a_panel_names_its_own_models_floor(tmp_path):
    import matplotlib.pyplot as plt

    from dode.companion import plots
    from dode.companion.results import ResultStore

    store = ResultStore(tmp_path / "x.nc", {"model": ["a", "b"], "seed": [0, 1]}, {"profile": "smoke"})
    for model, v in (("a", [1.0, 1.2]), ("b", [3.0, 3.4])):
        ex.store_floor(store, "fd", xr.DataArray(v, dims=["seed"], coords={"seed": [0, 1]}), model=model)
    ex.describe_floor(store, "fd", {"a": ("ddim", 50, 500), "b": ("edm", 79, 500)})
    ds = xr.open_dataset(tmp_path / "x.nc").load()
    _, ax = plt.subplots()
    text = plots.floor_band(ax, ds, "fd", model="b")
    plt.close("all")
    assert "3.20 ± 0.28 over 2 seeds" in text and "500 samples of EDM's Heun sampler" in text
    assert "DDIM" not in text  # the other model's floor is not this panel's
