"""The claim checks follow the data: synthetic results files with known outcomes get the right marks."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from dode import claims


def sweep(base, dode_, methods=("base", "d-ode"), nfes=(5, 10), solvers=("ddim",)):
    """fd[solver, method, nfe, seed] from per-(nfe, seed) arrays of the base and D values."""
    values = np.full((len(solvers), len(methods), len(nfes), np.shape(base)[1]), np.nan)
    values[:, methods.index("base")] = base
    values[:, methods.index("d-ode")] = dode_
    coords = {
        "solver": list(solvers),
        "method": list(methods),
        "nfe": list(nfes),
        "seed": list(range(values.shape[-1])),
    }
    return xr.Dataset({"fd": (tuple(coords), values)}, coords=coords, attrs={"profile": "cpu"})


def test_consistent_gains_that_shrink_with_nfe_are_reproduced():
    ds = sweep(base=[[30, 31, 29], [10, 10.5, 9.5]], dode_=[[10, 11, 9], [8, 8.2, 7.9]])
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "reproduced", verdict.evidence


def test_gains_inside_the_seed_noise_are_not_counted():
    # mean gain 0.3 with a spread of ~2.6 and one lost seed: inside the noise
    ds = sweep(base=[[30, 31, 29], [10, 10, 10]], dode_=[[27, 33, 29.1], [12, 12, 12]])
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "not reproduced"
    assert "inside the noise" in verdict.evidence and "worse" in verdict.evidence


def test_a_single_seed_is_never_called_reproduced():
    ds = sweep(base=[[30], [10]], dode_=[[10], [8]])
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "partly"
    assert "one seed" in verdict.evidence


def test_formulations_check_names_the_winner():
    methods = ("base", "sep", "d-ode")
    ds = sweep(base=[[18, 19, 18]], dode_=[[9, 9, 9]], methods=methods, nfes=(10,))
    ds["fd"].loc[{"method": "sep"}] = 5.0
    verdict = claims.check_formulations({"07_formulations": ds})
    assert verdict.verdict == "partly"
    assert "best is sep" in verdict.evidence


def test_missing_results_are_not_run_and_unknown_claims_are_refused():
    assert all(v.verdict == "not run" for v in claims.check_all({}))
    with pytest.raises(ValueError, match="claim must be one of"):
        claims.Verdict("made_up", "reproduced", "")


def test_correlation_check_reads_the_neighbouring_steps():
    steps = 6
    smooth = np.fromfunction(lambda i, j: 1 - 0.001 * np.abs(i - j), (steps, steps))
    rough = np.where(np.eye(steps, dtype=bool), 1.0, 0.5)
    ds = xr.Dataset(
        {"similarity": (("model", "step_i", "step_j"), np.stack([smooth, rough]))},
        coords={"model": ["a", "b"], "step_i": range(steps), "step_j": range(steps)},
    )
    assert claims.check_correlation({"01_denoiser_correlation": ds.isel(model=[0])}).verdict == "reproduced"
    verdict = claims.check_correlation({"01_denoiser_correlation": ds})
    assert verdict.verdict == "not reproduced" and "min 0.5000" in verdict.evidence


def test_trajectory_check_compares_final_distances():
    distance = np.zeros((1, 1, 2, 3, 4))  # solver, nfe, method (base, d-ode), state, sample
    distance[..., 0, -1, :] = 2.0
    distance[..., 1, -1, :] = 1.0
    coords = {
        "solver": ["ddim"],
        "nfe": [10],
        "method": ["base", "d-ode"],
        "state": range(3),
        "sample": range(4),
    }
    ds = xr.Dataset({"distance": (tuple(coords), distance)}, coords=coords)
    assert claims.check_trajectories({"05_trajectories": ds}).verdict == "reproduced"
    ds["distance"][..., 1, -1, :] = 3.0
    assert claims.check_trajectories({"05_trajectories": ds}).verdict == "not reproduced"
