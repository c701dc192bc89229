"""The last-step explanation of pages 02 and 13 (dode.companion.anomalies): plans, verdicts, rendering."""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import dode
from dode.companion import anomalies
from dode.companion.protocols import LOF_SOLVERS, NOISE_SOLVERS, PROTOCOLS

VP = dode.VPSchedule.linear()


def test_last_step_of_the_full_order_and_lower_order_final_plans():
    full = anomalies.plan_rows(VP, ["ipndm", "deis3"], [4])
    low = anomalies.plan_rows(VP, ["ipndm_lof", "deis3_lof"], [4])
    assert [r["pattern"] for r in full] == [[1, 2, 3, 4]] * 2
    assert [r["pattern"] for r in low] == [[1, 2, 2, 1]] * 2
    ipndm = full[0]
    np.testing.assert_allclose(ipndm["weights"], [55 / 24, -59 / 24, 37 / 24, -9 / 24])
    assert ipndm["amplification"] == pytest.approx(160 / 24)
    assert all(r["weights"] == (1.0,) and r["amplification"] == 1.0 for r in low)
    # DEIS's weights are fitted to the actual steps, but still combine to DDIM's coefficient
    assert sum(full[1]["weights"]) == pytest.approx(1.0)
    # the time-uniform grid's last interval carries most of the fall of sigma at NFE 4 (sigma 0.69 -> 0.01)
    grid = dode.make_grid(VP, "time_uniform", 4)
    sig = VP.sigma(grid).numpy()
    assert ipndm["sigma_share"] == pytest.approx((sig[-2] - sig[-1]) / (sig[0] - sig[-1]))
    assert ipndm["sigma_share"] > 0.5


def test_dpm_solver_3_ends_with_a_second_order_step_over_two_intervals_where_nfe_mod_3_is_2():
    rows = {r["nfe"]: r for r in anomalies.plan_rows(VP, ["dpm_solver3"], [3, 4, 5, 6, 8])}
    assert {n: r["pattern"] for n, r in rows.items()} == {
        3: [2, 1],
        4: [3, 1],
        5: [3, 2],
        6: [3, 2, 1],
        8: [3, 3, 2],
    }
    assert [rows[n]["outputs"] for n in (3, 4, 6)] == [1, 1, 1]
    five = rows[5]
    assert five["outputs"] == 2 and five["intervals"] == 2
    grid = dode.make_grid(VP, "time_uniform", 5)
    ell = VP.half_logsnr(grid).numpy()
    r1 = (ell[4] - ell[3]) / (ell[5] - ell[3])  # the stage between the last two intervals (Eq. 26-28)
    np.testing.assert_allclose(five["weights"], [1 / (2 * r1), 1 - 1 / (2 * r1)])
    assert five["reach"] == pytest.approx(1 / r1) and five["reach"] > 3


def _sweep(values: dict, seeds=(0, 1, 2)) -> xr.Dataset:
    """A page-02-like results file: ``values[(solver, nfe, method)]`` = FD per seed (NaN elsewhere)."""
    solvers = sorted({k[0] for k in values})
    nfes = sorted({k[1] for k in values})
    methods = ["base", "d-ode"]
    fd = np.full((len(solvers), len(nfes), len(seeds), len(methods)), np.nan)
    for (s, n, m), v in values.items():
        fd[solvers.index(s), nfes.index(n), :, methods.index(m)] = v
    return xr.Dataset(
        {"fd": (("solver", "nfe", "seed", "method"), fd)},
        coords={"solver": solvers, "nfe": nfes, "seed": list(seeds), "method": methods},
    )


def _cells(nfe, base, base_lof, d, d_lof, solver="ipndm", jitter=(0.0, 0.1, -0.1)):
    return {
        (solver, nfe, "base"): [base + j for j in jitter],
        (f"{solver}_lof", nfe, "base"): [base_lof + j for j in jitter],
        (solver, nfe, "d-ode"): [d + j for j in jitter],
        (f"{solver}_lof", nfe, "d-ode"): [d_lof + j for j in jitter],
    }


def test_pair_rows_tell_a_repaired_last_step_from_a_gain_beyond_it():
    ds = _sweep(
        {
            **_cells(4, base=78.0, base_lof=4.0, d=6.0, d_lof=3.0),  # D beats base, not the LOF base
            **_cells(5, base=8.0, base_lof=7.5, d=2.0, d_lof=1.8),  # D beats both
            **_cells(7, base=2.0, base_lof=2.0, d=2.05, d_lof=2.0),  # inside the noise (seeds set below)
            **_cells(3, base=11.0, base_lof=36.0, d=7.0, d_lof=20.0, solver="deis3"),
        }
    )
    ds["fd"].loc[{"solver": "ipndm", "nfe": 7, "method": "d-ode"}] = [2.3, 1.8, 2.05]
    rows = {(r["solver"], r["nfe"]): r for r in anomalies.pair_rows(ds)}
    assert set(rows) == {("ipndm", 4), ("ipndm", 5), ("ipndm", 7), ("deis3", 3)}
    assert rows["ipndm", 4]["finding"] == "repairs the last step" and rows["ipndm", 4]["lof_vs_base"] == 1
    assert rows["ipndm", 5]["finding"] == "beyond the last step"
    assert rows["ipndm", 7]["finding"] == "no gain" and rows["ipndm", 7]["d_vs_base"] == 0
    assert rows["deis3", 3]["finding"] == "beyond the last step" and rows["deis3", 3]["lof_vs_base"] == -1
    assert rows["ipndm", 4]["base"] == pytest.approx(78.0) and rows["ipndm", 4]["seeds"] == 3


def test_a_difference_inside_the_spread_is_no_verdict_and_one_seed_gives_the_sign():
    noisy = _sweep(_cells(4, base=10.0, base_lof=9.0, d=8.0, d_lof=8.0, jitter=(0.0, 3.0, -3.0)))
    # per seed the differences are the same (jitter is shared): every seed agrees, by more than 0 spread
    assert anomalies.pair_rows(noisy)[0]["d_vs_base"] == 1
    values = _cells(4, base=10.0, base_lof=9.0, d=8.0, d_lof=8.0)
    values["ipndm", 4, "d-ode"] = [7.0, 11.0, 8.0]  # wins in 2 of 3 seeds only
    assert anomalies.pair_rows(_sweep(values))[0]["d_vs_base"] == 0
    one = _sweep({k: v[:1] for k, v in _cells(4, 10.0, 9.0, 9.5, 8.0).items()}, seeds=(0,))
    assert anomalies.pair_rows(one)[0]["d_vs_base"] == 1


def test_the_explanation_renders_the_results_and_the_plans():
    ds = _sweep({**_cells(4, base=78.0, base_lof=4.0, d=6.0, d_lof=3.0), **_cells(5, 8.0, 7.5, 2.0, 1.8)})
    text = anomalies.explain_last_step(ds, VP)
    assert "| iPNDM | 4 | 1 2 3 4 | (2.29, -2.46, 1.54, -0.38) | 6.7 |" in text
    assert "78.00 → 4.00" in text  # the lower-order last step alone
    assert "repairs the last step" in text and "at NFE 4 (D 6.00, lower-order base 4.00)" in text
    assert "beats the base in both forms at NFE 5 (D 2.00 against 8.00 and 7.50)" in text
    assert "sides over 3 paired seeds" in text
    assert "the full-order base iPNDM spikes (worse than at both neighbouring NFEs) at no NFE" in text
    assert "the lower-order last step alone gives 103% at NFE 4" in text  # (78 - 4) / (78 - 6)
    without = ds.sel(solver=["ipndm"])
    assert "cannot separate the last step" in anomalies.explain_last_step(without, VP)


def test_the_lower_order_final_pair_note_reads_the_plans_and_the_values():
    values = {
        **_cells(3, base=11.0, base_lof=37.0, d=7.0, d_lof=20.0),
        **_cells(3, base=8.0, base_lof=36.0, d=7.0, d_lof=20.0, solver="deis3"),
        ("ddim", 3, "base"): [35.0, 35.1, 34.9],
    }
    text = anomalies.lof_pair_note(_sweep(values), VP)
    assert "score within 3% of each other" in text  # (37 - 36) / 36
    assert "NFE 3 (37.00 and 36.00, DEIS-3-LOF lower; DDIM 35.00)" in text  # lower in every seed
    assert "(1 2 1)" in text  # outputs per step, from the plans
    assert "differ by at most 0.18" in text  # iPNDM's 1.5, -0.5 against DEIS's 1.32, -0.32 at NFE 3
    assert "both are within 6% of DDIM" in text
    assert text in anomalies.explain_last_step(_sweep(values), VP)  # page 02 shows it under the tables
    del values["deis3_lof", 3, "base"], values["deis3_lof", 3, "d-ode"]
    assert anomalies.lof_pair_note(_sweep(values), VP) == ""


def test_the_dpm_solver_pattern_names_the_second_order_last_steps():
    ds = _sweep(
        {
            ("dpm_solver3", n, m): [v] * 3
            for n, (b, d) in {4: (55.0, 13.0), 5: (42.0, 141.0)}.items()
            for m, v in (("base", b), ("d-ode", d))
        }
    )
    text = anomalies.explain_dpm_solver_pattern(ds, VP)
    assert "| 5 | [3, 2] | order 2 over 2 intervals |" in text
    assert "Where the composition ends with a second-order step (NFE 5)" in text
    assert "at NFE 5 it spans 2 grid intervals" in text
    assert "base FD 42.00, D-solver 141.00" in text
    assert "| 4 | [3, 1] | order 1 over 1 interval |" in text
    assert "The greedy D-solver is worse than its base DPM-Solver-3 at NFE 5 of this run" in text


def test_the_introduction_names_each_rising_curve_with_what_explains_it():
    values = {}
    for nfe, base, lof, d in ((3, 9.0, 30.0, 8.0), (4, 70.0, 14.0, 5.0), (5, 8.0, 7.0, 3.0)):
        values |= _cells(nfe, base, lof, d, d)
    values[("ipndm", 7, "base")] = [10.0] * 3
    values |= {("dpm_solver3", n, "d-ode"): [v] * 3 for n, v in ((4, 14.0), (5, 139.0), (7, 1.9))}
    values |= {("dpm_solver3", n, "base"): [v] * 3 for n, v in ((4, 55.0), (5, 44.0), (7, 23.0))}
    values |= {("ddim", n, "base"): [v] * 3 for n, v in ((3, 30.0), (4, 40.0), (5, 10.0))}
    values[("ipndm", 10, "base")] = [6.0] * 3  # NFE 7 rises too, with no lower-order run beside it
    text = anomalies.summary_spikes({"02_noise_prediction": _sweep(values)})
    assert (
        "iPNDM at NFE 4: the full-order last step (with the lower-order last step it does not rise) (" in text
    )
    assert "{ref}`page 02 <anomaly-last-step>`" in text
    assert "iPNDM at NFE 7: no lower-order last step was run at that NFE" in text
    assert (
        "D-DPM-Solver-3 at NFE 5: DPM-Solver-3's order pattern ({ref}`page 02 <anomaly-dpm-solver-pattern>`)"
        in text
    )
    assert "DDIM at NFE 4: no page explains it" in text
    assert "iPNDM-LOF" not in text  # page 02's own curves, not the figure's
    values[("ipndm_lof", 4, "base")] = [80.0] * 3  # the lower-order last step rises there as well
    text = anomalies.summary_spikes({"02_noise_prediction": _sweep(values)})
    assert "iPNDM at NFE 4: the lower-order last step rises there too" in text
    falling = {("ddim", n, "base"): [v] * 3 for n, v in ((3, 30.0), (4, 20.0), (5, 10.0))}
    assert (
        anomalies.summary_spikes({"02_noise_prediction": _sweep(falling), "03_data_prediction": None}) == ""
    )


def test_page_02_runs_the_lower_order_final_variants_beside_the_full_order_ones():
    assert LOF_SOLVERS == list(anomalies.LOF_PAIRS.values())
    for profile, cfg in PROTOCOLS["02_noise_prediction"].items():
        assert cfg["solvers"] == NOISE_SOLVERS + LOF_SOLVERS, profile
        for full, lof in anomalies.LOF_PAIRS.items():
            assert cfg["nfes"][lof] and set(cfg["nfes"][lof]) <= set(cfg["nfes"][full]), profile
            assert max(cfg["nfes"][lof]) < 15, profile  # from 15 steps on they are the full-order solver
            assert cfg["joint_nfes"][lof] == [], profile  # greedy only: the joint fit is the paper's solvers'
    cpu = PROTOCOLS["02_noise_prediction"]["cpu"]
    assert all(
        max(cpu["joint_nfes"][s], default=0) <= 5 for s in NOISE_SOLVERS
    )  # what pays for the new cells
    # the NFEs where the full-order last steps spike on digits (page 02's anomaly section compares them)
    assert all({3, 4, 5} <= set(cpu["nfes"][s]) for s in LOF_SOLVERS)


# ---- page 03: base Heun's error step by step (measure_heun_steps, heun_plateau_note) ----


def _edm_den(fn):
    return dode.Denoiser(fn, dode.EDMSchedule(), prediction="x0", dtype=torch.float64)


def test_an_exact_heun_step_leaves_no_error_and_a_linear_ode_gives_the_scalar_heun_factors():
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # a point mass at 0: x(sigma) = sigma z, which Euler and Heun follow exactly
    exact = anomalies.heun_step_errors(_edm_den(lambda x, s: 0 * x), noise, [3, 5], K=2)
    assert np.nanmax(exact["step_error"]) < 1e-12 and max(exact["distance"]) < 1e-12
    # unit Gaussian data: dx/dsigma = x f(sigma), f = sigma / (1 + sigma^2); every run scales x by a number
    r = anomalies.heun_step_errors(
        _edm_den(lambda x, s: x / (1 + s.reshape(-1, 1, 1, 1) ** 2)), noise, [5, 7], 2
    )

    def f(s):
        return s / (1 + s * s)

    def heun(s, t):  # the factor of one step; Euler into sigma = 0
        euler = 1 + (t - s) * f(s)
        return euler if t == 0 else 1 + 0.5 * (t - s) * (f(s) + f(t) * euler)

    def through(points, K):  # the reference's factor through the refined points
        g = dode.grids.refine(
            dode.EDMSchedule(), "edm", torch.tensor(points, dtype=torch.float64), K
        ).tolist()
        return math.prod(heun(a, b) for a, b in zip(g, g[1:]))

    plans = {n: dode.make_plan(dode.EDMSchedule(), "edm", n).times.tolist() for n in (5, 7)}
    union = sorted({t for times in plans.values() for t in times}, reverse=True)
    size = float(noise.pow(2).mean(dim=(1, 2, 3)).sqrt().mean())  # the mean RMS of the noise
    state = {u: 80 * through([v for v in union if u <= v], 2) if u < 80 else 80.0 for u in union}
    final = state[0.0]
    for i, times in enumerate(plans.values()):
        for j, (s, t) in enumerate(zip(times, times[1:])):
            carried = state[s] * heun(s, t) * (through([u for u in union if u <= t], 2) if t > 0 else 1)
            assert r["step_error"][i, j] == pytest.approx(
                abs(carried - final) * size, rel=1e-6, abs=1e-6
            )  # rounding of states of size 80
        plan = 80 * math.prod(heun(a, b) for a, b in zip(times, times[1:]))
        assert r["distance"][i] == pytest.approx(abs(plan - final) * size, rel=1e-6)
    assert r["reference_check"] == pytest.approx(abs(80 * through(union, 1) - final) * size, rel=1e-6)


def _heun_file(fd: dict, distance: dict, steps: dict, check=0.01, seeds=(0, 1, 2)) -> xr.Dataset:
    """A page-03-like results file of one model: base Heun ``fd[nfe]`` per seed, and the heun variables:
    ``distance[nfe]`` and ``steps[nfe]`` = [(sigma from, sigma to, error), ...]."""
    nfes = sorted(fd)
    width = max(len(v) for v in steps.values())
    values = np.array([fd[n] for n in nfes], float)[None, None, :, :, None]
    step = np.full((1, len(nfes), width, 3), np.nan)
    for i, n in enumerate(nfes):
        step[0, i, : len(steps[n])] = steps[n]
    ds = xr.Dataset(
        {
            "fd": (("model", "solver", "nfe", "seed", "method"), values),
            "heun_distance": (("model", "heun_nfe"), [[distance[n] for n in nfes]]),
            "heun_clipped": (("model", "heun_nfe"), [[min(distance[n], 1.0) for n in nfes]]),
            "heun_step_from": (("model", "heun_nfe", "heun_step"), step[..., 0]),
            "heun_step_to": (("model", "heun_nfe", "heun_step"), step[..., 1]),
            "heun_step_error": (("model", "heun_nfe", "heun_step"), step[..., 2]),
            "heun_check": (("model",), [check]),
        },
        coords={
            "model": ["m"],
            "solver": ["edm"],
            "nfe": nfes,
            "seed": list(seeds),
            "method": ["base"],
            "heun_nfe": nfes,
            "heun_step": list(range(width)),
        },
    )
    ds["heun_distance"].attrs["key"] = json.dumps({"m": {"n": 80, "K": 4, "seed": 0, "nfes": nfes}})
    return ds


STEPS = {
    5: [(80, 2.52, 0.29), (2.52, 0.002, 1.59), (0.002, 0, 0.0)],
    7: [(80, 9.72, 0.05), (9.72, 0.47, 1.89), (0.47, 0.002, 0.2), (0.002, 0, 0.0)],
    9: [(80, 17.5, 0.01), (17.5, 2.52, 0.06), (2.52, 0.17, 0.76), (0.17, 0.002, 0.05), (0.002, 0, 0.0)],
}
FLAT = {5: [32.2, 34.0, 29.0], 7: [31.2, 28.5, 32.8], 9: [7.1, 8.5, 8.9]}  # 5 -> 7 crosses in one seed


def test_a_flat_stretch_whose_largest_step_does_not_shrink_is_explained_by_that_step():
    text = anomalies.heun_plateau_note(_heun_file(FLAT, {5: 2.67, 7: 1.98, 9: 0.78}, STEPS))
    assert "| 7 | 30.83 | 1.98 | 1.00 | 9.72 → 0.47 | 1.89 | 0.20 |" in text
    assert "**From NFE 5 to 7 the base FD does not fall beyond the spread over seeds**" in text
    assert "NFE 9" not in text.split("**From NFE")[0].split("|---|")[0]  # the intro names no NFE
    assert (
        "σ 2.52 → 0.002 alone leaves the samples 1.59" in text and "which alone leaves 1.89, no less" in text
    )
    assert "At NFE 9 the largest step is σ 2.52 → 0.17, which leaves 0.76." in text
    assert "falls by 26% from NFE 5 to 7 (2.67 → 1.98), against 61% from 7 to 9" in text
    assert "the flat stretch is in the samples themselves, and the FD, which falls by 3%, flattens it" in text
    assert text.count("**From NFE") == 1  # 7 -> 9 falls in every seed by more than the spread


def test_a_flat_stretch_is_left_to_the_metric_or_unexplained_when_the_numbers_say_so():
    shrinks = {**STEPS, 7: [(80, 9.72, 0.05), (9.72, 0.47, 1.2), (0.47, 0.002, 0.2), (0.002, 0, 0.0)]}
    text = anomalies.heun_plateau_note(_heun_file(FLAT, {5: 2.67, 7: 1.2, 9: 0.78}, shrinks))
    assert "which alone leaves 1.20, less: the largest step shrinks" in text and "no less" not in text
    # the samples fall by 55% from 5 to 7 and by 35% from 7 to 9: the flat stretch is the metric's
    assert (
        "not the smallest fall of the curve, so the samples do improve here and the flat stretch is the FD's"
        in text
    )
    # a reference that moves by more than the two steps differ resolves neither
    coarse = anomalies.heun_plateau_note(_heun_file(FLAT, {5: 2.67, 7: 1.98, 9: 0.78}, STEPS, check=0.5))
    assert "a difference the reference cannot resolve (it moves by 0.50 itself" in coarse
    assert "no less" not in coarse and "less: the largest" not in coarse


def test_a_curve_that_falls_everywhere_has_no_flat_stretch_and_a_file_without_the_numbers_says_nothing():
    falling = {5: [32.2, 34.0, 29.0], 7: [20.1, 21.0, 19.5], 9: [7.1, 8.5, 8.9]}
    text = anomalies.heun_plateau_note(_heun_file(falling, {5: 2.67, 7: 1.98, 9: 0.78}, STEPS))
    assert "falls beyond the spread over seeds between every two neighbouring NFEs measured (5, 7, 9)" in text
    assert "**From NFE" not in text
    assert anomalies.heun_plateau_note(_sweep(_cells(4, 10.0, 9.0, 8.0, 8.0))) == ""
