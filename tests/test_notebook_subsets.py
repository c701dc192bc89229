"""Every notebook draws whatever subset of its protocol its results file holds: no joint-fit cells, one NFE,
one model, a subset of its methods or grid, and a model that an earlier run left in the file.

Each case runs notebooks with papermill under the smoke profile with small parameters (the way a user cuts a
run down with ``-y``), in sequence into one results folder of its own; a page must run to its end, without a
traceback and without a warning in its outputs.
"""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest
from notebook_outputs import problems

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

EPS, EDM = "digits-eps-mini", "digits-edm-mini"
#: case -> the notebooks it runs, in order, each with its parameters (over the smoke profile's)
CASES = {
    "02 without joint-fit cells, one NFE, one model": [
        (
            "02_noise_prediction",
            {"models": [EPS], "solvers": ["ddim", "dpm_solver3"], "methods": ["base", "d-ode"], "nfes": [3]},
        ),
        ("11_reproduction", {}),
    ],
    "02 with joint fits at none of the run's NFEs": [
        ("02_noise_prediction", {"solvers": ["ddim", "ipndm"], "nfes": [5], "joint_nfes": [3]}),
    ],
    "03 with a model of an earlier run": [
        (
            "03_data_prediction",
            {"models": ["digits-edm"], "nfes": {"ddim": [3], "edm": [3]}, "methods": ["base", "d-ode"]},
        ),
        ("03_data_prediction", {"models": [EDM], "nfes": {"ddim": [5], "edm": [5]}}),
    ],
    "04 at one NFE": [("04_dpm_solver_pp", {"nfes": [3]})],
    "07 with two of its formulations": [("07_formulations", {"methods": ["base", "d-ode"]})],
    "08 with one K and one B": [("08_ablation_K_B", {"K_values": [2], "B_values": [8]})],
    "09 with one constant and no lookahead": [
        ("09_lookahead_fixed", {"lambda_values": [0.5], "methods": ["base", "d-ode", "fixed"]})
    ],
    "05 with one formulation": [("05_trajectories", {"methods": ["base", "d-ode"]})],
    "06 with one panel at one NFE": [("06_samples", {"panels": [[EDM, "edm"]], "nfes": {"edm": [3]}})],
    "10 with Heun only": [("10_timing", {"nfes": {"edm": [3]}})],
    "12 with one solver at one NFE": [("12_exact_testbed", {"solvers": ["ddim"], "nfes": [4]})],
    "13 with one model, one peer, one base": [
        (
            "13_peers",
            {
                "models": [EPS],
                "peer_grids": {EPS: {"dpmpp_2m": {}}},
                "bases": {EPS: ["dode:dpm_solver++:time_uniform:base"]},
                "nfes": [3],
                "seeds": [0],
            },
        )
    ],
    "01 with one model": [("01_denoiser_correlation", {"models": [EPS]})],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_notebook_draws_a_subset_of_its_protocol(case, tmp_path):
    results = tmp_path / "results"
    for i, (stem, parameters) in enumerate(CASES[case]):
        executed = tmp_path / f"{i}_{stem}.ipynb"
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{stem}.ipynb"),
            str(executed),
            parameters={"profile": "smoke", "results_dir": str(results), **parameters},
            kernel_name="python3",
            cwd=str(NOTEBOOKS),
            progress_bar=False,
        )
        assert not problems(executed), f"{case}, {stem}: {problems(executed)}"
