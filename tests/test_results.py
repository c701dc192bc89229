"""Resumable results files: cells written as they finish, refusal of incomparable or unreadable files."""

import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dode
from dode.companion import experiments as ex
from dode.companion.results import (
    NUMBER_PACKAGES,
    IncompatibleResults,
    ResultStore,
    VersionsChangedWarning,
    package_versions,
    provenance,
)
from dode.gmm import GaussianMixture

DIMS = {"solver": ["ddim", "dpm_solver++"], "method": ["base", "d-ode"], "nfe": [5, 10], "seed": [0, 1]}
KEY = {"model": "digits-eps", "K": 10, "B": 100, "n_samples": 2000}


def test_a_diverged_cell_is_a_finished_result(tmp_path):
    # a sampler that diverged scores inf: a rerun keeps it instead of sampling again (page 13's tuning)
    path = tmp_path / "13_peers.nc"
    ResultStore(path, DIMS, KEY).put("fd", np.inf, solver="ddim", method="base", nfe=5, seed=0)
    again = ResultStore(path, DIMS, KEY)
    assert again.has("fd", solver="ddim", method="base", nfe=5, seed=0)
    assert not again.has("fd", solver="ddim", method="base", nfe=5, seed=1)  # NaN: not run yet


def test_cells_are_written_as_they_finish_and_resume(tmp_path):
    path = tmp_path / "02_noise_prediction.nc"
    store = ResultStore(path, DIMS, KEY, provenance("smoke", {"a": 1}))
    assert not store.has("fd", solver="ddim", method="base", nfe=5, seed=0)
    store.put("fd", 12.5, solver="ddim", method="base", nfe=5, seed=0)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    # a second process (a rerun after an interruption) sees the finished cell and nothing else
    again = ResultStore(path, DIMS, KEY)
    assert again.has("fd", solver="ddim", method="base", nfe=5, seed=0)
    assert not again.has("fd", solver="ddim", method="d-ode", nfe=5, seed=0)
    assert float(again.get("fd", solver="ddim", method="base", nfe=5, seed=0)) == 12.5
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds.attrs["profile"] == "smoke"
        assert json.loads(ds.attrs["parameters"]) == {"a": 1}
        assert json.loads(ds.attrs["comparability_key"]) == KEY
        assert set(ds.attrs) >= {"dode_version", "git_commit", "device", "created", "model"}


def test_every_results_file_records_the_package_versions_and_the_device(tmp_path):
    versions = package_versions()
    assert set(versions) == {"python", "torch", "numpy", "scipy", "diffusers", "pytorch-fid"}
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == importlib.metadata.version("torch")
    # with the notebooks' provenance, and without (the noise floors' caches)
    for attrs in (provenance("smoke", {}), None):
        path = tmp_path / f"{attrs is None}.nc"
        ResultStore(path, DIMS, KEY, attrs).put("fd", 1.0, solver="ddim", method="base", nfe=5, seed=0)
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            assert json.loads(ds.attrs["versions"]) == versions
            assert ds.attrs["device"].startswith(("cpu: ", "cuda: "))
            assert "earlier_versions" not in ds.attrs


def _rewrite_versions(path, **changed):
    """The file as if written under other versions (what a results file from an older environment holds)."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    ds.attrs["versions"] = json.dumps({**json.loads(ds.attrs["versions"]), **changed})
    ds.to_netcdf(path, engine="h5netcdf")


def test_resuming_under_other_versions_of_number_changing_packages_warns_and_is_recorded(tmp_path, recwarn):
    path = tmp_path / "r.nc"
    ResultStore(path, DIMS, KEY).put("fd", 3.0, solver="ddim", method="base", nfe=10, seed=1)
    ResultStore(path, DIMS, KEY)  # the same versions: silent
    assert not [w for w in recwarn if issubclass(w.category, VersionsChangedWarning)]
    _rewrite_versions(path, torch="2.0.0", scipy="1.0.0")
    with pytest.warns(VersionsChangedWarning, match=r"torch 2\.0\.0 \(now .*scipy 1\.0\.0 \(now .*mixes"):
        store = ResultStore(path, DIMS, KEY)
    assert store.has("fd", solver="ddim", method="base", nfe=10, seed=1)  # resumed, not refused
    store.put("fd", 4.0, solver="ddim", method="base", nfe=5, seed=1)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert json.loads(ds.attrs["versions"]) == package_versions()
        (earlier,) = json.loads(ds.attrs["earlier_versions"])
    assert (earlier["torch"], earlier["scipy"]) == ("2.0.0", "1.0.0")
    # a change of Python alone changes no number: recorded, not warned about
    path = tmp_path / "python.nc"
    ResultStore(path, DIMS, KEY).put("fd", 3.0, solver="ddim", method="base", nfe=10, seed=1)
    _rewrite_versions(path, python="3.0.0")
    recwarn.clear()
    ResultStore(path, DIMS, KEY).put("fd", 4.0, solver="ddim", method="base", nfe=5, seed=1)
    assert not [w for w in recwarn if issubclass(w.category, VersionsChangedWarning)]
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert json.loads(ds.attrs["earlier_versions"])[0]["python"] == "3.0.0"
    assert "python" not in NUMBER_PACKAGES


def test_sweep_may_grow_but_key_must_match(tmp_path):
    path = tmp_path / "r.nc"
    ResultStore(path, DIMS, KEY).put("fd", 3.0, solver="ddim", method="base", nfe=10, seed=1)
    grown = ResultStore(path, {**DIMS, "nfe": [5, 10, 25]}, KEY)
    assert grown.has("fd", solver="ddim", method="base", nfe=10, seed=1)
    grown.put("fd", 4.0, solver="ddim", method="base", nfe=25, seed=1)
    assert ResultStore(path, DIMS, KEY).has("fd", solver="ddim", method="base", nfe=25, seed=1)
    with pytest.raises(IncompatibleResults, match=r"K: stored 10, asked 20.*move or delete the file"):
        ResultStore(path, DIMS, {**KEY, "K": 20})


def test_a_longer_name_of_a_later_run_is_written_whole(tmp_path):
    """A model or method named longer than every name of the stored file (a model of another run) keeps its
    name: the stored strings' width does not cut it ("digits-edm-mini" written as a second "digits-edm")."""
    path = tmp_path / "r.nc"
    ResultStore(path, {"model": ["digits-edm"], "method": ["base"]}, {"k": 1}).put(
        "fd", 1.0, model="digits-edm", method="base"
    )
    # the later run names both models (one it leaves out would be kept aside: the test below)
    store = ResultStore(
        path, {"model": ["digits-edm", "digits-edm-mini"], "method": ["d-ode-per-stage"]}, {"k": 1}
    )
    store.put("fd", 2.0, model="digits-edm-mini", method="d-ode-per-stage")
    with xr.open_dataset(path) as ds:
        assert sorted(ds.coords["model"].values.tolist()) == ["digits-edm", "digits-edm-mini"]
        assert sorted(ds.coords["method"].values.tolist()) == ["base", "d-ode-per-stage"]
        assert float(ds["fd"].sel({"model": "digits-edm", "method": "base"})) == 1.0
        assert float(ds["fd"].sel({"model": "digits-edm-mini", "method": "d-ode-per-stage"})) == 2.0


def test_values_with_their_own_dimensions(tmp_path):
    store = ResultStore(tmp_path / "r.nc", DIMS, KEY)
    lam = np.array([[0.1], [0.2], [np.nan]])
    store.put(
        "lambdas", lam, extra_dims={"evaluation": [0, 1, 2], "param": [0]}, solver="ddim", nfe=5, seed=0
    )
    store.put("lambdas", [[1.0]], extra_dims={"evaluation": [0], "param": [0]}, solver="ddim", nfe=10, seed=0)
    back = ResultStore(tmp_path / "r.nc", DIMS, KEY)
    np.testing.assert_array_equal(back.get("lambdas", solver="ddim", nfe=5, seed=0)[:2, 0], [0.1, 0.2])
    assert back.has("lambdas", solver="ddim", nfe=10, seed=0)
    np.testing.assert_array_equal(
        back.get("lambdas", solver="ddim", nfe=10, seed=0)[:, 0], [1.0, np.nan, np.nan]
    )
    assert not back.has("lambdas", solver="dpm_solver++", nfe=10, seed=0)
    with pytest.raises(ValueError, match="is not in the sweep"):
        back.put("fd", 1.0, solver="euler", method="base", nfe=5, seed=0)


def test_puts_made_together_reach_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "r.nc"
    store = ResultStore(path, {"method": ["a", "b"]}, {"K": 1})
    with store.together():
        store.put("x", 1.0, method="a")
        assert not path.exists()  # nothing written inside the block
        store.put("y", 2.0, method="a")
    reopened = ResultStore(path, {"method": ["a", "b"]}, {"K": 1})
    assert reopened.has("x", method="a") and reopened.get("y", method="a") == 2.0
    with pytest.raises(RuntimeError), store.together():
        store.put("x", 3.0, method="b")
        raise RuntimeError("interrupted")
    reopened = ResultStore(path, {"method": ["a", "b"]}, {"K": 1})
    assert not reopened.has("x", method="b")


def test_a_failed_block_leaves_memory_and_disk_as_they_were(tmp_path):
    path = tmp_path / "r.nc"
    store = ResultStore(path, {"method": ["a", "b", "c"]}, {"K": 1})
    store.put("x", 1.0, method="a")
    before = path.read_bytes()
    with pytest.raises(RuntimeError), store.together():
        store.put("x", 3.0, method="b")
        store.put("new_var", 4.0, method="b")
        raise RuntimeError("injected failure")
    assert path.read_bytes() == before  # disk untouched
    assert not store.has("x", method="b") and "new_var" not in store.dataset()  # memory rolled back
    store.put("x", 5.0, method="c")  # the next, unrelated put must not carry the failed block to disk
    reopened = ResultStore(path, {"method": ["a", "b", "c"]}, {"K": 1})
    assert reopened.get("x", method="a") == 1.0 and reopened.get("x", method="c") == 5.0
    assert not reopened.has("x", method="b") and "new_var" not in reopened.dataset()


def test_a_crash_while_writing_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    store = ResultStore(path, {"method": ["a", "b"]}, {"K": 1})
    store.put("x", 1.0, method="a")
    before = path.read_bytes()
    real_to_netcdf = xr.Dataset.to_netcdf

    def dies_half_way(ds, target, *args, **kwargs):
        real_to_netcdf(ds, target, *args, **kwargs)
        data = Path(target).read_bytes()
        Path(target).write_bytes(data[: len(data) // 2])  # the process dies with half the file written
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.put("x", 2.0, method="b")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.nc"]  # no temp file left behind
    reopened = ResultStore(path, {"method": ["a", "b"]}, {"K": 1})
    assert reopened.get("x", method="a") == 1.0 and not reopened.has("x", method="b")


@pytest.mark.parametrize("damage", ["truncated", "empty", "not netcdf"])
def test_a_truncated_or_foreign_file_is_refused_with_what_to_do(tmp_path, damage):
    path = tmp_path / "r.nc"
    ResultStore(path, {"method": ["a"]}, {"K": 1}).put("x", 1.0, method="a")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not netcdf": b"fd,12.5\n"}[damage])
    with pytest.raises(IncompatibleResults, match="not a readable NetCDF4 results file") as err:
        ResultStore(path, {"method": ["a"]}, {"K": 1})
    assert str(path) in str(err.value) and "Move or delete it to recompute" in str(err.value)
    assert path.stat().st_size < len(data)  # the file is left for its owner to look at


def test_a_netcdf_file_of_another_program_is_refused(tmp_path):
    path = tmp_path / "r.nc"
    xr.Dataset({"fd": ("nfe", [1.0, 2.0])}, coords={"nfe": [5, 10]}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(IncompatibleResults, match="was not written by a dode ResultStore; move it away"):
        ResultStore(path, {"method": ["a"]}, {"K": 1})


def _named_denoiser(name: str) -> dode.Denoiser:
    gmm = GaussianMixture.random(n_components=2, dim=4, seed=0)
    base = gmm.denoiser(dode.VPSchedule.linear(), "eps")
    return dode.Denoiser(base.fn, base.schedule, "eps", name=name, info={"channels": 1, "resolution": 2})


@pytest.mark.parametrize(
    "other, refused",
    [
        ({"profile": "cpu"}, r"profile: stored 'smoke', asked 'cpu'"),
        (
            {"model": "digits-edm"},
            r"holds results of model digits-eps \(this run: model digits-edm\)",
        ),
    ],
    ids=["profile", "model"],
)
def test_a_notebook_store_refuses_results_of_another_profile_or_model(tmp_path, other, refused):
    dims = {"method": ["base"], "nfe": [5]}

    def store(profile="smoke", model="digits-eps"):
        params = {"profile": profile, "K": 10}
        identities = {model: ex.identity(_named_denoiser(model))}
        return ex.open_store(tmp_path, "02_noise_prediction", dims, {"K": 10}, params, identities)

    store().put("fd", 12.5, method="base", nfe=5)
    with pytest.raises(IncompatibleResults, match=refused):
        store(**other)
    # the refused run leaves the stored cell as it was
    assert store().get("fd", method="base", nfe=5) == 12.5


def test_a_file_holds_the_models_of_its_run_and_keeps_the_others_aside_until_they_return(tmp_path):
    """A run with more models adds them; a run that leaves out a model the file holds moves that model's cells
    to <stem>.aside.nc (the pages draw the run's models only, nothing computed is lost), and a later run with
    the model brings them back, unless its identity changed."""
    from dode.companion.results import aside_path

    dims = {"method": ["base"], "nfe": [5]}
    path = tmp_path / "02_noise_prediction.nc"

    def store(*models, seed=0):
        identities = {m: ex.identity(_named_denoiser(m)) for m in models}
        if seed:  # another checkpoint under the same name
            identities[models[0]]["checkpoint_sha256"] = f"other-{seed}"
        params = {"profile": "smoke", "K": 10}
        dims_ = {"model": list(models), **dims}
        return ex.open_store(tmp_path, "02_noise_prediction", dims_, {"K": 10}, params, identities)

    def models(file):
        with xr.open_dataset(file, engine="h5netcdf") as ds:
            return ds["model"].values.tolist(), json.loads(ds.attrs["identities"])

    store("digits-eps").put("fd", 1.0, model="digits-eps", method="base", nfe=5)
    grown = store("digits-eps", "digits-edm")
    grown.put("fd", 2.0, model="digits-edm", method="base", nfe=5)
    assert grown.get("fd", model="digits-eps", method="base", nfe=5) == 1.0  # the earlier cell is kept
    assert not aside_path(path).exists()

    shrunk = store("digits-edm")
    assert shrunk.dataset()["model"].values.tolist() == ["digits-edm"]
    on_disk, identities = models(path)
    assert on_disk == ["digits-edm"] and set(identities) == {"digits-edm"}  # written at once
    aside, kept = models(aside_path(path))
    assert aside == ["digits-eps"] and set(kept) == {"digits-eps"}
    shrunk.put("fd", 3.0, model="digits-edm", method="base", nfe=5)  # the run goes on writing its cells
    assert shrunk.get("fd", model="digits-edm", method="base", nfe=5) == 3.0

    back = store("digits-eps", "digits-edm")  # the model returns: its cell comes back, not recomputed
    assert back.has("fd", model="digits-eps", method="base", nfe=5)
    assert back.get("fd", model="digits-eps", method="base", nfe=5) == 1.0
    assert models(path)[0] == ["digits-eps", "digits-edm"] and not aside_path(path).exists()

    store("digits-edm")  # aside again; then the model returns with another checkpoint: computed afresh
    changed = store("digits-eps", "digits-edm", seed=1)
    assert not changed.has("fd", model="digits-eps", method="base", nfe=5)
    assert models(aside_path(path))[0] == ["digits-eps"]  # the old checkpoint's cells stay aside
    # an aside file of other parameters is never overwritten: a fresh file of K = 11 cannot set a model aside
    path.rename(tmp_path / "moved-away.nc")

    def store_k11(*models):
        identities = {m: ex.identity(_named_denoiser(m)) for m in models}
        dims_ = {"model": list(models), **dims}
        return ex.open_store(
            tmp_path, "02_noise_prediction", dims_, {"K": 11}, {"profile": "smoke"}, identities
        )

    store_k11("digits-eps", "digits-edm").put("fd", 3.0, model="digits-eps", method="base", nfe=5)
    with pytest.raises(
        IncompatibleResults, match=r"02_noise_prediction.aside.nc, which holds cells computed"
    ):
        store_k11("digits-edm")
    assert models(aside_path(path))[0] == ["digits-eps"] and models(path)[0] == ["digits-eps", "digits-edm"]
