"""The claim checks follow the data: synthetic results files with known outcomes get the right marks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from dode.companion import claims


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
    assert verdict.verdict == "not reproduced"
    assert "D-DDIM does not beat sep" in verdict.evidence
    ds["fd"].loc[{"method": "sep"}] = 12.0  # D-DDIM best, but Sep still improves on DDIM: the one cell fails
    verdict = claims.check_formulations({"07_formulations": ds})
    assert (
        verdict.verdict == "not reproduced"
        and "better than DDIM, unlike in the paper: sep" in verdict.evidence
    )
    ds["fd"].loc[{"method": "sep"}] = 40.0  # holds, but in one NFE only: one cell cannot show the table
    assert claims.check_formulations({"07_formulations": ds}).verdict == "partly"
    two = sweep(
        base=[[18, 19, 18], [9, 9.5, 9]], dode_=[[9, 9, 9], [8, 8.1, 8]], methods=methods, nfes=(10, 25)
    )
    two["fd"].loc[{"method": "sep"}] = 40.0
    assert claims.check_formulations({"07_formulations": two}).verdict == "reproduced"


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


def _ablation(fd_by_k, fd_by_b):
    """08's layout: D-DDIM over K at B=100 and over B at K=10 (3 seeds); DDIM everywhere."""
    ks, bs = [5, 10, 30], [5, 10, 100]
    values = np.full((1, 1, 3, 2, 3, 3), np.nan)  # solver, nfe, seed, method, K, B
    values[0, 0, :, 0] = 3.0
    for i, k in enumerate(ks):
        values[0, 0, :, 1, i, 2] = fd_by_k[k]
    for j, b in enumerate(bs):
        values[0, 0, :, 1, 1, j] = fd_by_b[b]
    coords = {
        "solver": ["ddim"],
        "nfe": [10],
        "seed": [0, 1, 2],
        "method": ["base", "d-ode"],
        "K": ks,
        "B": bs,
    }
    return {"08_ablation_K_B": xr.Dataset({"fd": (tuple(coords), values)}, coords=coords)}


def test_ablation_checks_follow_K_and_B():
    by_b = {5: [1.5, 0.9, 1.2], 10: [1.0, 1.1, 1.05], 100: [0.80, 0.82, 0.81]}
    good = _ablation({5: [1.0, 1.1, 1.2], 10: by_b[100], 30: [0.7, 0.72, 0.71]}, by_b)
    assert claims.check_ablation_K(good).verdict == "reproduced"
    assert claims.check_ablation_B(good).verdict == "reproduced"
    flat_b = {5: [0.81, 0.80, 0.82], 10: [0.8, 0.81, 0.82], 100: [0.9, 0.7, 0.8]}
    bad = _ablation({5: [0.7, 0.71, 0.72], 10: flat_b[100], 30: [1.0, 1.1, 1.2]}, flat_b)
    assert claims.check_ablation_K(bad).verdict == "not reproduced"
    assert claims.check_ablation_B(bad).verdict == "not reproduced"


def _lookahead(fixed, lookahead, tuning_fixed=(1.2, 0.98), tuning_lookahead=(2.0, 1.5)):
    """Page 09's results: D-DDIM 1.0 (+-0.01 over the seeds 0-2), base 3.0; ``fixed``/``lookahead`` the
    values at each evaluation seed (rows) and lambda (columns); seed 3 is the tuning seed."""
    coords = {
        "solver": ["ddim"],
        "nfe": [10],
        "seed": [0, 1, 2, 3],
        "method": ["base", "d-ode", "fixed", "lookahead"],
        "lambda_value": [0.3, 0.6],
    }
    values = np.full((1, 1, 4, 4, 2), np.nan)
    values[..., 0, :] = 3.0
    values[0, 0, :, 1, :] = np.array([1.0, 1.01, 0.99, 1.0])[:, None]  # D-DDIM
    values[0, 0, :3, 2, :] = fixed
    values[0, 0, :3, 3, :] = lookahead
    values[0, 0, 3, 2, :] = tuning_fixed
    values[0, 0, 3, 3, :] = tuning_lookahead
    ds = xr.Dataset({"fd": (tuple(coords), values)}, coords=coords)
    return {
        "09_lookahead_fixed": ds.assign_attrs(parameters=json.dumps({"seeds": [0, 1, 2], "tuning_seed": 3}))
    }


def test_lookahead_check_grades_the_constants_chosen_on_the_tuning_seed():
    # the tuning seed chooses lambda 0.6 for both; at 0.6 Fixed matches D-DDIM, LA is worse in every seed
    fixed = [[9.0, 0.99], [9.0, 1.0], [9.0, 1.02]]
    lookahead = [[0.5, 1.5], [0.5, 1.6], [0.5, 1.4]]  # lambda 0.3 would beat D-DDIM: not chosen
    verdict = claims.check_lookahead(_lookahead(fixed, lookahead))
    assert verdict.verdict == "reproduced"  # both cells hold (LA by more than its spread, Fixed within it)...
    assert "λ = 0.6" in verdict.evidence and "λ = 0.3" not in verdict.evidence
    # ...but the tuning seed choosing lambda 0.3 for LA (where it beats D-DDIM) fails LA's cell
    verdict = claims.check_lookahead(_lookahead(fixed, lookahead, tuning_lookahead=(1.0, 2.0)))
    assert verdict.verdict == "partly" and "fails at LA-DDIM NFE 10" in verdict.evidence


def test_lookahead_check_refuses_a_file_without_a_tuning_seed():
    results = _lookahead([[1.0, 1.0]] * 3, [[2.0, 2.0]] * 3)
    results["09_lookahead_fixed"].attrs["parameters"] = json.dumps({"seeds": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="tuning_seed"):
        claims.check_lookahead(results)


def test_a_page_states_the_verdicts_of_its_own_results_file(tmp_path):
    for name, ds in _ablation(
        {5: [1.0, 1.1, 1.2], 10: [0.80, 0.82, 0.81], 30: [0.7, 0.72, 0.71]},
        {5: [0.81, 0.80, 0.82], 10: [0.8, 0.81, 0.82], 100: [0.80, 0.82, 0.81]},
    ).items():
        ds.to_netcdf(tmp_path / f"{name}.nc", engine="h5netcdf")
    text = claims.page_verdicts(tmp_path / "08_ablation_K_B.nc")
    blocks = text.split("\n\n")
    assert blocks[0].startswith(f"**Paper:** {claims.CLAIMS['ablation_K']}.")
    assert "**Here: reproduced**" in blocks[0]
    assert blocks[1].startswith(f"**Paper:** {claims.CLAIMS['ablation_B']}.")
    assert "**Here: not reproduced**" in blocks[1]
    with pytest.raises(FileNotFoundError, match="run its notebook first"):
        claims.page_verdicts(tmp_path / "07_formulations.nc")
    sweep(base=[[3.0]], dode_=[[2.0]]).to_netcdf(tmp_path / "06_samples.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="path must be the results file of one of"):
        claims.page_verdicts(tmp_path / "06_samples.nc")


def _with_joint(ds, joint):
    """``ds`` with a ``d-ode-joint`` method holding ``joint`` (per (nfe, seed); NaN: not run there)."""
    out = ds.reindex({"method": [*ds.coords["method"].values.tolist(), "d-ode-joint"]})
    out["fd"].loc[{"method": "d-ode-joint"}] = np.asarray(joint, dtype=float)[None]
    return out


def test_the_joint_verdict_names_the_cells_where_the_joint_fit_changes_the_side():
    # NFE 5: greedy worse than base in every seed, joint better -> the verdict changes; NFE 10: both better;
    # NFE 20: no joint fit there (NaN), so no row
    ds = sweep(
        base=[[30, 31, 29], [10, 10.5, 9.5], [5, 5, 5]],
        dode_=[[45, 46, 44], [8, 8.2, 7.9], [4, 4, 4]],
        nfes=(5, 10, 20),
        solvers=("dpm_solver3",),
    )
    ds = _with_joint(ds, [[20, 21, 19], [7.5, 7.6, 7.4], [np.nan] * 3])
    rows = claims.joint_verdicts(ds)
    assert [(r["nfe"], r["greedy_side"], r["joint_side"], r["changed"]) for r in rows] == [
        (5, -1, 1, True),
        (10, 1, 1, False),
    ]
    verdict = claims.check_joint_verdict({"02_noise_prediction": ds})
    # the finding ("turns every ...") speaks of one cell here: it holds there, but one cell cannot show it
    assert verdict.verdict == "partly", verdict.evidence
    assert "holds in the one cell it speaks of (dpm_solver3 NFE 5)" in verdict.evidence
    assert "dpm_solver3 NFE 5: FD base 30.00, greedy 45.00 (worse than base, 0/3 seeds)" in verdict.evidence
    # the joint fit makes the NFE 10 cell worse than its base: it holds in 1 of 2 cells, and names the other
    ds["fd"].loc[{"method": "d-ode-joint", "nfe": 10}] = [12, 12.5, 11.6]
    verdict = claims.check_joint_verdict({"02_noise_prediction": ds})
    assert verdict.verdict == "partly" and "fails at dpm_solver3 NFE 10" in verdict.evidence
    # no joint cells at all: not run
    assert claims.check_joint_verdict({"02_noise_prediction": sweep([[1, 1]], [[2, 2]])}).verdict == "not run"


# ---- the rules of claims.RULES, one test per edge (each would have failed under the rules before them) ----


def _two_models(a, b, nfes=(5, 7, 10)):
    """02's layout with a model dimension: ``a`` and ``b`` are (base, D) per-(nfe, seed) arrays of each."""
    ds = [
        sweep(base=m[0], dode_=m[1], nfes=nfes).expand_dims(model=[name])
        for name, m in (("m-a", a), ("m-b", b))
    ]
    return xr.concat(ds, "model")


GOOD = ([[30, 31, 29], [20, 20.5, 19.5], [10, 10.5, 9.5]], [[10, 11, 9], [12, 12.2, 11.9], [8, 8.2, 7.9]])


def test_one_failing_cell_makes_partly_and_is_named():
    # NFE 7: D worse in every seed. The old rule called it partly too, but named no failing cell
    base, d = GOOD
    ds = sweep(base=base, dode_=[d[0], [25, 25, 25], d[2]], nfes=(5, 7, 10))
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "partly"
    assert (
        verdict.evidence.splitlines()[0] == "all cells: partly: fails at ddim NFE 7 (holds in 2 of 3 cells)"
    )


def test_a_cell_inside_the_noise_does_not_hold_and_is_named():
    # NFE 7: better in every seed (gains 0.1, 0.1, 2.0), but the mean gain (0.73) is below its spread (1.10).
    # The old rule marked the cell "inside the noise" too, but called the claim partly without naming it
    base, d = GOOD
    ds = sweep(base=base, dode_=[d[0], [19.9, 20.4, 17.5], d[2]], nfes=(5, 7, 10))
    rows = {r["nfe"]: r for r in claims.paired_gains(ds)}
    assert rows[7]["wins"] == 3 and 0 < rows[7]["gain"] < rows[7]["std"]
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "partly" and "fails at ddim NFE 7" in verdict.evidence
    assert "inside the noise: ddim NFE 7" in verdict.evidence


def test_one_seed_is_never_reproduced_and_says_so():
    ds = sweep(base=[[30], [20], [10]], dode_=[[10], [12], [8]], nfes=(5, 7, 10), solvers=("dpm_solver3",))
    for check in (claims.check_d_beats_base, claims.check_dpm3_stability):
        verdict = check({"02_noise_prediction": ds})
        assert verdict.verdict == "partly", verdict.evidence
        assert "with one seed there is no spread to exceed" in verdict.evidence


def test_a_claim_is_graded_per_model_and_gets_the_weakest_verdict():
    # m-a holds everywhere; m-b fails at NFE 5 (the old rule counted cells over both models: 5 of 6 better)
    base, d = GOOD
    ds = _two_models(GOOD, (base, [[35, 36, 34], d[1], d[2]]))
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "partly"
    assert verdict.evidence.splitlines()[0] == (
        "m-a: reproduced: holds in all 3 cells, each by more than its spread over seeds; "
        "m-b: partly: fails at ddim NFE 5 (holds in 2 of 3 cells)"
    )


def test_other_solver_labels_are_reported_apart_from_the_paper_solvers():
    base, d = GOOD
    ds = sweep(base=[base, base], dode_=[d, base], nfes=(5, 7, 10), solvers=("ddim", "ipndm_lof"))
    verdict = claims.check_d_beats_base({"02_noise_prediction": ds})
    assert verdict.verdict == "reproduced", verdict.evidence
    assert "other solver labels, not counted in the verdict (rule 5): not reproduced" in verdict.evidence


def test_dpm3_stability_has_its_own_row_graded_at_small_nfe():
    # the last cpu build: NFE 5 base 42.2 -> D 141.2 in every seed; NFE 10 (not "extremely small") is ignored
    ds = sweep(
        base=[[42.2, 42.0, 42.4], [20, 20.5, 19.5], [10, 10.5, 9.5]],
        dode_=[[141.2, 140, 142], [30, 31, 30], [1, 1, 1]],
        nfes=(5, 7, 10),
        solvers=("dpm_solver3",),
    )
    assert "dpm3_stability" in claims.CLAIMS and "dpm3_stability" in claims.CHECKS
    verdict = claims.check_dpm3_stability({"02_noise_prediction": ds})
    assert verdict.verdict == "not reproduced"
    assert verdict.evidence.splitlines()[0] == "all cells: not reproduced: holds in none (0 of 2 cells)"
    assert "dpm3_stability" in [v.claim for v in claims.check_all({"02_noise_prediction": ds})]


def _timing(pd_fd, d_fd, recipe):
    """10's layout: D-DDIM and the PD students at NFE 2 and 4 (one seed), fit and PD training times."""
    import json

    coords = {"solver": ["edm", "ddim"], "method": ["base", "d-ode", "pd"], "nfe": [2, 4], "seed": [0]}
    fd = np.full((2, 3, 2, 1), np.nan)
    fd[1, 1, :, 0] = d_fd
    fd[1, 2, :, 0] = pd_fd
    fit = np.full_like(fd, np.nan)
    fit[:, 1] = 2.0
    ds = xr.Dataset(
        {
            "fd": (tuple(coords), fd),
            "fit_seconds": (tuple(coords), fit),
            "cumulative_train_seconds": (("nfe",), [43.0, 20.0]),
        },
        coords=coords,
        attrs={"profile": "cpu", "parameters": json.dumps({"pd": recipe}), "model": "digits-edm"},
    )
    return {"10_timing": ds}


def test_the_cost_claim_is_not_reproduced_on_a_cut_recipe_whose_students_beat_d_ddim():
    from dode.companion.protocols import PROTOCOLS

    cut = dict(PROTOCOLS["10_timing"]["cpu"]["pd"])
    # the old rule: fit within minutes and PD 10x longer -> "reproduced"
    verdict = claims.check_cost(_timing(pd_fd=[5.0, 2.0], d_fd=[30.0, 6.0], recipe=cut))
    assert verdict.verdict != "reproduced"
    assert (
        "digits-edm: partly: fails at D-DDIM as good as PD at NFE 2, D-DDIM as good as PD at NFE 4"
        in verdict.evidence
    )
    assert "iterations_per_halving 150 (paper's 50000)" in verdict.evidence
    assert "untested here: PD's GPU-days" in verdict.evidence
    # students no better, and the paper's own recipe: still one seed and not the paper profile: partly
    paper_recipe = dict(PROTOCOLS["10_timing"]["paper"]["pd"])
    verdict = claims.check_cost(_timing(pd_fd=[40.0, 9.0], d_fd=[30.0, 6.0], recipe=paper_recipe))
    assert verdict.verdict == "partly" and "recipe cut" not in verdict.evidence


def test_name_cells_groups_by_model_and_solver():
    cells = [{"model": "digits-edm", "nfe": n} for n in (3, 5, 7)] + [
        {"model": "digits-eps", "solver": "ddim", "nfe": 5}
    ]
    assert claims.name_cells(cells) == "digits-edm NFE 3, 5, 7; digits-eps ddim NFE 5"


def test_the_reproduction_page_prints_the_rules_from_the_code():
    import nbformat

    from tests.test_notebooks import NOTEBOOK_DIR

    source = "\n".join(
        c.source for c in nbformat.read(NOTEBOOK_DIR / "11_reproduction.ipynb", as_version=4).cells
    )
    assert "Markdown(claims.RULES)" in source
    assert "reproduced" in claims.RULES and "one seed" in claims.RULES.lower()


def test_a_page_grades_a_finding_with_the_results_listed_before_its_own(monkeypatch):
    # a finding graded on two pages' results: the later page states it as the reproduction page does, with
    # the earlier page's results too (so its notebook needs it); the earlier one grades its own
    monkeypatch.setitem(claims.EVIDENCE, "joint_fit", ("12_exact_testbed", "13_peers"))
    assert claims.page_reads("13_peers") == ("12_exact_testbed",)
    assert claims.page_reads("12_exact_testbed") == () and claims.page_reads("02_noise_prediction") == ()
    monkeypatch.undo()  # the book's findings are each graded on one page
    assert all(claims.page_reads(stem) == () for stem in ("12_exact_testbed", "13_peers"))


def test_best_choice_is_graded_per_model_and_nfe_and_names_where_it_fails():
    # digits-edm: the best D-solver loses to a diffusers scheduler at NFE 3, 5 and 7 and wins at 9 (the last
    # cpu build); the old rule called the whole finding partly without naming a model or an NFE
    names = ["diffusers:edm_dpmpp_2m", "dode:edm:edm:base", "dode:edm:edm:d-ode"]
    fd = [[[10.0, 5.0, 3.0, 2.0], [20.0, 9.0, 6.0, 3.0], [12.0, 6.0, 4.0, 1.0]]]
    ds = xr.Dataset(
        {"fd": (("model", "sampler", "nfe"), fd)},
        coords={"model": ["digits-edm"], "sampler": names, "nfe": [3, 5, 7, 9]},
    )
    verdict = claims.check_best_choice({"13_peers": ds})
    assert verdict.verdict == "not reproduced"
    assert (
        verdict.evidence.splitlines()[0] == "digits-edm: not reproduced: holds only at NFE 9 (1 of 4 cells)"
    )
    ds["fd"].loc[{"sampler": "dode:edm:edm:d-ode", "nfe": [3, 5]}] = 1.0  # wins at 3, 5, 9: one seed, partly
    verdict = claims.check_best_choice({"13_peers": ds})
    assert verdict.evidence.splitlines()[0] == "digits-edm: partly: fails at NFE 7 (holds in 3 of 4 cells)"
