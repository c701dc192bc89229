import json

import numpy as np
import pytest
import xarray as xr

from dode.companion.results import IncompatibleResults, ResultStore, provenance

DIMS = {"solver": ["ddim", "dpm_solver++"], "method": ["base", "d-ode"], "nfe": [5, 10], "seed": [0, 1]}
KEY = {"model": "digits-eps", "K": 10, "B": 100, "n_samples": 2000}


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


def test_sweep_may_grow_but_key_must_match(tmp_path):
    path = tmp_path / "r.nc"
    ResultStore(path, DIMS, KEY).put("fd", 3.0, solver="ddim", method="base", nfe=10, seed=1)
    grown = ResultStore(path, {**DIMS, "nfe": [5, 10, 25]}, KEY)
    assert grown.has("fd", solver="ddim", method="base", nfe=10, seed=1)
    grown.put("fd", 4.0, solver="ddim", method="base", nfe=25, seed=1)
    assert ResultStore(path, DIMS, KEY).has("fd", solver="ddim", method="base", nfe=25, seed=1)
    with pytest.raises(IncompatibleResults, match=r"K: stored 10, asked 20.*move or delete the file"):
        ResultStore(path, DIMS, {**KEY, "K": 20})


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
