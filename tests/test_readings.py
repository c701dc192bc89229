"""dode.companion.readings on synthetic results files: the sentences follow the numbers (one seed, one
model or two, a cell worse than its base, missing cells and files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dode.companion import readings


def sweep(values: dict, seeds=(0, 1, 2), models=None) -> xr.Dataset:
    """A sweep results file: values[(solver, nfe)] = (base per seed, d-ode per seed); NaN where absent."""
    solvers = sorted({s for s, _ in values})
    nfes = sorted({n for _, n in values})
    fd = np.full((len(solvers), len(nfes), 2, len(seeds)), np.nan)
    for (s, n), (b, d) in values.items():
        fd[solvers.index(s), nfes.index(n), 0] = b
        fd[solvers.index(s), nfes.index(n), 1] = d
    ds = xr.Dataset(
        {"fd": (("solver", "nfe", "method", "seed"), fd)},
        coords={"solver": solvers, "nfe": nfes, "method": ["base", "d-ode"], "seed": list(seeds)},
        attrs={
            "profile": "cpu",
            "parameters": json.dumps({"seeds": list(seeds), "n_samples": 2000, "nfes": nfes}),
        },
    )
    if models:
        ds = xr.concat([ds.expand_dims(model=[m]) for m in models], dim="model")
    return ds


def test_a_cell_worse_than_base_is_named_with_its_values():
    ds = sweep(
        {("ddim", 5): ([10, 11, 12], [5, 6, 7]), ("ddim", 19): ([0.51, 0.50, 0.52], [0.55, 0.56, 0.57])}
    )
    text = readings.sweep_reading(ds)
    assert "better at NFE 5" in text
    assert "worse at NFE 19" in text and "0.51 → 0.56" in text
    assert "every NFE" not in text


def test_a_worse_cell_within_the_noise_floor_band_is_said_to_be_at_the_floor():
    values = {("ddim", 5): ([10, 11, 12], [5, 6, 7]), ("ddim", 19): ([0.51, 0.50, 0.52], [0.55, 0.56, 0.57])}
    ds = sweep(values)
    ds["fd_floor"] = ("seed", [0.50, 0.58, 0.54])  # band 0.54 ± 0.04 holds both sides of NFE 19
    text = readings.sweep_reading(ds)
    assert "worse at NFE 19 (NFE 19: 0.51 → 0.56, both within the noise floor's band)" in text
    assert "0.54 ± 0.04" in text and "no longer ranks" in text
    ds["fd_floor"] = ("seed", [0.48, 0.52, 0.50])  # band 0.50 ± 0.02 holds the base only
    text = readings.sweep_reading(ds)
    assert "worse at NFE 19 (NFE 19: 0.51 → 0.56, the base within the noise floor's band)" in text
    assert "no error to remove" in text and "both within" not in text
    ds["fd_floor"] = ("seed", [0.20, 0.24, 0.22])  # a floor far below: the worse cell is a real loss
    text = readings.sweep_reading(ds)
    assert "worse at NFE 19" in text and "floor" not in text


def test_a_cell_inside_the_noise_is_not_called_better():
    ds = sweep({("ddim", 10): ([1.0, 1.2, 0.9], [0.9, 1.3, 0.85])})
    assert "inside the noise at NFE 10" in readings.sweep_reading(ds)


def test_one_seed_is_called_indicative():
    ds = sweep({("ddim", 5): ([10], [5])}, seeds=(0,))
    text = readings.sweep_reading(ds)
    assert "One seed" in text and "better at NFE 5" in text
    assert "one seed" in readings.protocol_reading(ds)


def test_each_model_gets_its_sentence():
    ds = sweep({("ddim", 5): ([10, 11, 12], [5, 6, 7])}, models=["a", "b"])
    text = readings.sweep_reading(ds)
    assert "on `a`" in text and "on `b`" in text


def test_missing_cells_and_files_say_not_run(tmp_path):
    ds = sweep({("ddim", 5): ([np.nan] * 3, [np.nan] * 3)})
    assert readings.NOT_RUN in readings.sweep_reading(ds)
    assert readings.NOT_RUN in readings.intro_findings(tmp_path)
    assert readings.NOT_RUN in readings.timings_summary(tmp_path)
    folder = tmp_path / "data" / "results"
    folder.mkdir(parents=True)
    (folder / "run_times.csv").write_text(
        "notebook,profile,wall time (s),finished (UTC),machine\n(no notebook has run yet),,,,\n"
    )
    assert readings.NOT_RUN in readings.timings_summary(tmp_path)


def test_timings_summary_adds_the_recorded_wall_times(tmp_path):
    folder = tmp_path / "data" / "results"
    folder.mkdir(parents=True)
    (folder / "run_times.csv").write_text(
        "notebook,profile,wall time (s),finished (UTC),machine\n"
        "00_train_models,cpu,6.0,2026-12-01T10:00:00,box\n02_noise_prediction,cpu,1032.4,2026-12-01T10:20:00,box\n"
    )
    text = readings.timings_summary(tmp_path)
    assert "1038 s" in text and "02_noise_prediction (1032 s)" in text and "box" in text


def test_timings_summary_sums_only_the_latest_run_after_a_partial_rerun(tmp_path):
    folder = tmp_path / "data" / "results"
    folder.mkdir(parents=True)
    (folder / "run_times.csv").write_text(
        "notebook,profile,wall time (s),finished (UTC),run started (UTC),machine\n"
        "00_train_models,cpu,6.0,2026-12-01 10:00,2026-12-01 09:59:00,box\n"
        "01_denoiser_correlation,cpu,50.0,2026-12-01 10:01,2026-12-01 09:59:00,box\n"
        "02_noise_prediction,cpu,1032.4,2026-12-02 08:20,2026-12-02 08:00:00,box\n"
    )
    text = readings.timings_summary(tmp_path)
    assert (
        "2 runs" in text and "started 2026-12-02 08:00:00 UTC, ran 1 notebook (02_noise_prediction)" in text
    )
    assert "1032 s" in text and "1088" not in text, "a sum over two runs was given as one build's"
    assert "other 2 rows" in text and "started 2026-12-01 09:59:00 UTC" in text
    # a record written before runs were named: its rows are the earlier run
    (folder / "run_times.csv").write_text(
        "notebook,profile,wall time (s),finished (UTC),machine\n00_train_models,cpu,6.0,2026-12-01 10:00,box\n"
    )
    assert "This build: 1 notebook," in readings.timings_summary(tmp_path)


def test_heun_reading_compares_both_formulations():
    fd = np.array([[[30.0, 31, 29], [15, 16, 14], [20, 21, 19]]])  # nfe 5: base, per-time, per-stage
    ds = xr.Dataset(
        {"fd": (("solver", "nfe", "method", "seed"), fd[None])},
        coords={
            "solver": ["edm"],
            "nfe": [5],
            "method": ["base", "d-ode", "d-ode-per-stage"],
            "seed": [0, 1, 2],
        },
    )
    text = readings.heun_reading(ds)
    assert "D-EDM, one λ per landing time** against Heun: better at NFE 5" in text
    assert "One λ per landing time** against λ per stage: better at NFE 5" in text


def test_correlation_reading_reports_each_models_neighbours():
    S = np.array([[1.0, 0.99, 0.5], [0.99, 1.0, 0.98], [0.5, 0.98, 1.0]])
    ds = xr.Dataset(
        {"similarity": (("model", "i", "j"), np.stack([S, np.full_like(S, np.nan)]))},
        coords={"model": ["eps", "edm"]},
    )
    text = readings.correlation_reading(ds)
    assert "`eps`: neighbouring outputs have cosine similarity between 0.9800 and 0.9900" in text
    assert "`edm`" not in text  # a model without results is left out, not read as zeros


def test_ablation_reading_names_a_worse_point():
    K, B = [5, 10], [50, 100]
    fd = np.empty((1, 1, 2, 2, 1, 3))
    fd[..., 1, 1, :, :] = [[1.0, 1.1, 0.9]]  # the default point (K = 10, B = 100)
    fd[..., 0, 1, :, :] = [[2.0, 2.2, 1.9]]  # K = 5: worse in every seed
    fd[..., 1, 0, :, :] = [[1.0, 1.15, 0.85]]  # B = 50: inside the noise
    fd[..., 0, 0, :, :] = np.nan
    ds = xr.Dataset(
        {"fd": (("solver", "method", "K", "B", "nfe", "seed"), fd)},
        coords={"solver": ["ddim"], "method": ["d-ode"], "K": K, "B": B, "nfe": [10], "seed": [0, 1, 2]},
        attrs={"parameters": json.dumps({"K": 10, "B": 100})},
    )
    text = readings.ablation_reading(ds)
    assert "K = 5: worse" in text and "B = 50: inside the noise" in text
    assert "other sweeps" not in text  # a file without a profile names no other page's B
    assert "floor" not in text  # a file without a noise floor
    ds["fd_floor"] = ("seed", [2.0, 2.4, 2.2])  # band 2.2 ± 0.2 holds every point
    assert "Every point lies within the noise floor's band (2.2 ± 0.2)" in readings.ablation_reading(ds)
    ds["fd_floor"] = ("seed", [0.5, 0.6, 0.7])  # K = 5 lies above it
    assert "floor" not in readings.ablation_reading(ds)


@pytest.mark.parametrize(("profile", "said"), [("cpu", True), ("smoke", False)])
def test_ablation_reading_points_at_the_sweeps_own_fitting_batch(profile, said):
    from dode.companion.protocols import PROTOCOLS

    sweep_B, B = PROTOCOLS["02_noise_prediction"][profile]["B"], [50, 100]
    fd = np.full((1, 1, 1, len(B), 1, 3), 1.0)
    ds = xr.Dataset(
        {"fd": (("solver", "method", "K", "B", "nfe", "seed"), fd)},
        coords={"solver": ["ddim"], "method": ["d-ode"], "K": [10], "B": B, "nfe": [10], "seed": [0, 1, 2]},
        attrs={"profile": profile, "parameters": json.dumps({"K": 10, "B": 100})},
    )
    text = readings.ablation_reading(ds)
    # cpu: the sweeps fit on B = 50, a point of the ablation, and the page says where to look; smoke's B is
    # no point of this file
    assert (f"fit on B = {sweep_B}, not 100" in text) is said, text


def test_the_protocol_names_the_joint_fits_nfes_per_solver():
    ds = sweep({("ddim", 5): ([10], [5])}, seeds=(0,))
    stored = json.loads(ds.attrs.get("parameters", "{}"))
    for joint, said in (
        ({"ddim": [2], "ipndm_lof": []}, "joint fit at NFE DDIM 2"),
        ([3, 5], "joint fit at NFE 3 and 5"),
    ):
        ds.attrs["parameters"] = json.dumps({**stored, "joint_nfes": joint})
        text = readings.protocol_reading(ds)
        assert said in text and "ipndm_lof" not in text, text
    ds.attrs["parameters"] = json.dumps({**stored, "joint_nfes": {"ddim": []}})
    assert "joint fit" not in readings.protocol_reading(ds)


def test_versions_table_shows_each_files_versions_and_device_earlier_ones_first(tmp_path):
    from dode.companion.results import ResultStore, VersionsChangedWarning, package_versions

    assert readings.NOT_RUN in readings.versions_table(tmp_path)
    dims, key = {"nfe": [5]}, {"K": 10}
    ResultStore(tmp_path / "02_noise_prediction.nc", dims, key).put("fd", 1.0, nfe=5)
    resumed = tmp_path / "13_peers.nc"
    ResultStore(resumed, dims, key).put("fd", 1.0, nfe=5)
    with xr.open_dataset(resumed, engine="h5netcdf") as ds:
        ds = ds.load()
    ds.attrs["versions"] = json.dumps({**package_versions(), "torch": "2.0.0"})
    ds.to_netcdf(resumed, engine="h5netcdf")
    with pytest.warns(VersionsChangedWarning):  # and records torch 2.0.0 as earlier (tests/test_results.py)
        ResultStore(resumed, dims, key).put("fd", 2.0, nfe=5)
    xr.Dataset(attrs={"profile": "cpu"}).to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    now = package_versions()
    rows = {line.split("|")[1].strip(): line for line in readings.versions_table(tmp_path).splitlines()}
    assert rows["results file"].split("|")[2:-2] == [f" {c} " for c in now]
    assert f"| {now['torch']} |" in rows["`02_noise_prediction.nc`"]
    assert f"| 2.0.0 / {now['torch']} |" in rows["`13_peers.nc`"]
    assert f"| {now['numpy']} |" in rows["`13_peers.nc`"]  # unchanged: once
    assert rows["`02_noise_prediction.nc`"].rstrip(" |").split("| ")[-1].startswith(("cpu: ", "cuda: "))
    assert "not recorded" in rows["`old.nc`"]


def test_the_protocol_line_has_no_tex_the_book_would_print_raw():
    # MathJax typesets the notebooks' Markdown cells, not the Markdown a code cell outputs: "$K = 10$" there
    # reached the reader as dollar signs
    ds = xr.Dataset(attrs={"profile": "cpu", "parameters": json.dumps({"K": 10, "B": 100, "seeds": [0, 1]})})
    line = readings.protocol_reading(ds)
    assert "$" not in line and "*K* = 10, *B* = 100" in line


def test_lookahead_reading_grades_against_the_evaluation_seeds_floor():
    # D-DDIM, Fixed-D-DDIM at two constants; evaluation seeds 0-2, tuning seed 3 (which picks λ = 0.6)
    fd = np.full((1, 3, 1, 4, 2), np.nan)  # solver, method, nfe, seed, lambda_value
    fd[0, 0, 0] = [[2.0, 2.0]] * 4  # base
    fd[0, 1, 0] = [[1.30, 1.30], [1.32, 1.32], [1.31, 1.31], [9.0, 9.0]]  # d-ode: no lambda dependence
    fd[0, 2, 0] = [[1.0, 1.20], [1.0, 1.22], [1.0, 1.21], [5.0, 0.5]]  # fixed
    ds = xr.Dataset(
        {
            "fd": (("solver", "method", "nfe", "seed", "lambda_value"), fd),
            "fd_floor": ("seed", [1.3, 1.4, 1.5, 9.0]),  # the tuning seed's floor is no part of the band
        },
        coords={
            "solver": ["ddim"],
            "method": ["base", "d-ode", "fixed"],
            "nfe": [10],
            "seed": [0, 1, 2, 3],
            "lambda_value": [0.3, 0.6],
        },
        attrs={"parameters": json.dumps({"seeds": [0, 1, 2], "tuning_seed": 3})},
    )
    text = readings.lookahead_reading(ds)
    assert "best constant λ = 0.6" in text
    assert "worse at NFE 10 (NFE 10: 1.21 → 1.31, both within the noise floor's band)" in text
    assert "(1.4 ± 0.1)" in text


def _trajectories(final: dict) -> xr.Dataset:
    """A page-05 results file: two states per run, each method's per-sample distance at the last state."""
    methods = list(final)
    distance = np.stack([np.stack([np.zeros(3), np.asarray(final[m], float)]) for m in methods])
    return xr.Dataset(
        {
            "state_time": (
                ("solver", "nfe", "method", "state"),
                np.tile([1.0, 0.0], (1, 1, len(methods), 1)),
            ),
            "distance": (("solver", "nfe", "method", "state", "sample"), distance[None, None]),
        },
        coords={"solver": ["ddim"], "nfe": [10], "method": methods},
    )


def test_trajectories_reading_says_whether_sep_and_all_drift_away_at_the_end():
    ds = _trajectories(
        {"base": [0.8] * 3, "d-ode": [0.4, 0.5, 0.45], "sep": [0.3, 0.6, 0.3], "all": [0.3] * 3}
    )
    text = readings.trajectories_reading(ds)
    assert (
        "D-DDIM-Sep-10 ends closer to the reference than D-DDIM-10 (0.40 against 0.45; farther in 1 of 3"
        in text
    )
    assert "does not appear here" in text
    ds = _trajectories({"base": [0.8] * 3, "d-ode": [0.4] * 3, "sep": [0.9] * 3, "all": [1.0] * 3})
    assert "appears here too" in readings.trajectories_reading(ds)
    ds = _trajectories({"base": [0.8] * 3, "d-ode": [0.4] * 3})
    assert "Fig. 7" not in readings.trajectories_reading(ds)  # neither variant was run
