"""The cost tables of notebook 10 (dode.companion.timing), on a results file with known cells."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dode.companion import timing
from dode.companion.protocols import PROTOCOLS


@pytest.fixture(scope="module")
def results():
    """The layout run_timing writes (ResultStore variables), filled in memory."""
    coords = {"solver": ["edm", "ddim"], "method": ["base", "d-ode", "pd"], "nfe": [2, 4, 5], "seed": [0, 1]}
    dims = list(coords)
    ds = xr.Dataset(coords=coords)
    for var in ("fd", "sample_seconds", "fit_seconds"):
        ds[var] = xr.DataArray(np.full([len(v) for v in coords.values()], np.nan), dims=dims, coords=coords)
    for var in ("train_seconds", "cumulative_train_seconds", "train_iterations", "train_loss_final"):
        ds[var] = xr.DataArray(np.full(3, np.nan), dims=["nfe"], coords={"nfe": coords["nfe"]})
    cells = {
        # (solver, method, nfe): (fd of seed 0, fd of seed 1, fit seconds, sample seconds)
        ("edm", "base", 5): (40.0, 42.0, None, 5.0),
        ("edm", "d-ode", 5): (20.0, 22.0, 30.0, 5.0),
        ("ddim", "base", 4): (60.0, 60.0, None, 4.0),
        ("ddim", "d-ode", 4): (30.0, 30.0, 20.0, 4.0),
        ("ddim", "pd", 4): (12.0, 14.0, None, 4.0),
        ("ddim", "pd", 2): (25.0, 25.0, None, 2.0),
    }
    for (solver, method, nfe), (fd0, fd1, secs, sample) in cells.items():
        cell = {"solver": solver, "method": method, "nfe": nfe}
        ds["fd"].loc[cell] = [fd0, fd1]
        ds["sample_seconds"].loc[cell] = sample
        if secs is not None:
            ds["fit_seconds"].loc[cell] = secs
    # halving 8 -> 4 took 100 s, 4 -> 2 took 50 s more
    for nfe, own, total in ((4, 100.0, 100.0), (2, 50.0, 150.0)):
        ds["train_seconds"].loc[{"nfe": nfe}] = own
        ds["cumulative_train_seconds"].loc[{"nfe": nfe}] = total
        ds["train_iterations"].loc[{"nfe": nfe}] = 10
        ds["train_loss_final"].loc[{"nfe": nfe}] = 0.1
    return ds


def test_the_cost_table_charges_each_method_its_own_one_off_cost(results):
    table = timing.cost_table(results).set_index(["method", "NFE"])
    assert len(table) == 6
    assert table.loc[("EDM (Heun)", 5), "one-off cost (s)"] == 0
    assert table.loc[("D-EDM", 5), "FD"] == 21.0  # mean over seeds
    assert table.loc[("D-EDM", 5), "total (s)"] == 35.0
    # a PD student costs every halving up to it
    assert table.loc[("PD (DDIM student)", 2), "one-off cost (s)"] == 150.0
    assert table.loc[("PD (DDIM student)", 4), "total (s)"] == 104.0


def test_the_cost_table_keeps_three_significant_digits_of_small_costs(results):
    small = results.copy(deep=True)
    small["sample_seconds"] = small["sample_seconds"] / 1000  # a dry run samples a handful of images
    small["fit_seconds"] = small["fit_seconds"] / 1000
    table = timing.cost_table(small).set_index(["method", "NFE"])
    assert table.loc[("EDM (Heun)", 5), "sampling (s)"] == 0.005
    assert table.loc[("D-EDM", 5), "total (s)"] == 0.035
    assert (timing.cost_table(small)["total (s)"] > 0).all()


def test_time_to_reach_picks_the_cheapest_configuration_that_reaches_the_target(results):
    reach = timing.time_to_reach(results, [13.0, 25.0, 35.0])
    assert reach.loc["PD (DDIM student)"].tolist() == [
        "104 s (NFE 4)",
        "104 s (NFE 4)",
        "104 s (NFE 4)",
    ]
    assert reach.loc["D-DDIM"].tolist() == ["–", "–", "24 s (NFE 4)"]
    assert reach.loc["D-EDM"].tolist() == ["–", "35 s (NFE 5)", "35 s (NFE 5)"]
    assert reach.loc["EDM (Heun)"].tolist() == ["–", "–", "–"]


def test_the_pd_table_lists_halvings_from_the_first(results):
    table = timing.pd_table(results)
    assert table["student steps"].tolist() == [4, 2]
    assert table["teacher steps"].tolist() == [8, 4]
    assert table["cumulative train (s)"].tolist() == [100.0, 150.0]
    assert np.allclose(table["FD"], [13.0, 25.0])


def test_fd_vs_nfe_draws_one_line_per_method(results):
    import matplotlib

    matplotlib.use("Agg")
    ax = timing.fd_vs_nfe(results)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == list(timing.FAMILIES.values())
    ax = timing.fd_vs_cost(results)
    pd_points = next(line for line in ax.get_lines() if line.get_label() == "PD (DDIM student)")
    assert sorted(pd_points.get_xdata().tolist()) == [104.0, 152.0]  # training up to the student + sampling


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(pd=dict(PROTOCOLS["10_timing"]["smoke"]["pd"], epochs=3)), "unknown \\['epochs'\\]"),
        (dict(nfes={"ipndm": [5]}), "nfes must map the solvers"),
        (dict(pd_eval_steps=[3]), "pd_eval_steps must be students"),
    ],
)
def test_run_timing_refuses_bad_parameters_before_computing(tmp_path, change, match):
    cfg = {"profile": "smoke", **PROTOCOLS["10_timing"]["smoke"], **change}
    with pytest.raises(ValueError, match=match):
        timing.run_timing("10_timing", cfg, tmp_path, progress=False)
    assert not (tmp_path / "10_timing.nc").exists()


def test_network_evaluations_names_the_timing_notebook_as_no_sweep():
    from dode.companion.protocols import network_evaluations

    with pytest.raises(ValueError, match="10_timing is not a plain sweep over solvers"):
        network_evaluations("10_timing", "paper")
