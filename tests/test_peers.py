"""The peers page's machinery: diffusers' schedulers driven on a dode Denoiser, against dode's own solvers."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.companion import peers


@pytest.fixture
def den(gmm):
    return gmm.denoiser(SCHEDULES["vp"], "eps")


def _diffusers_times(den, steps, lower_order_final):
    base = peers.make_scheduler("dpmpp_2m_sigma_min", den)
    scheduler = type(base).from_config(base.config, lower_order_final=lower_order_final)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [3, 5, 10, 20])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_dode_dpm_solver_pp_is_diffusers_dpm_solver_multistep_on_the_same_timesteps(
    den, steps, lower_order_final
):
    """Same network, noise and timesteps (diffusers' linspace times, then t = 0 as dode's VP grids end):
    dode's DPM-Solver++(2M) and diffusers' DPMSolverMultistepScheduler agree to diffusers' float32
    coefficients, with and without the first-order final step below 15 steps (``lower_order_final``)."""
    noise = make_noise(32, seed=2)
    scheduler = _diffusers_times(den, steps, lower_order_final)
    grid = torch.tensor([*scheduler.timesteps.tolist(), 0.0], dtype=torch.float64)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(den(x, float(t)), t, x).prev_sample
    y = dode.sample(den, noise, "dpm_solver++", steps, grid=grid, lower_order_final=lower_order_final)
    assert float((x - y).abs().max()) < 1e-3
    if steps < 15:  # the option matters there: the two last steps differ by far more than the agreement
        other = dode.sample(
            den, noise, "dpm_solver++", steps, grid=grid, lower_order_final=not lower_order_final
        )
        assert float((x - other).abs().max()) > 1e-2


def test_the_first_order_final_step_is_the_better_default_on_the_exact_mixture(gmm, den):
    noise = make_noise(200, seed=3)
    exact = gmm.reference(noise, den.schedule, den.schedule.t_max, 0.0)
    errors = {
        lof: float(
            (dode.sample(den, noise, "dpm_solver++", 10, lower_order_final=lof) - exact).norm(dim=1).mean()
        )
        for lof in (True, False)
    }
    assert errors[True] < errors[False], errors
    assert dode.make_plan(den.schedule, "dpm_solver++", 10).options == {"lower_order_final": True}


VP_PEERS = sorted(p for p, spec in peers.PEERS.items() if spec.convention == "vp")
EDM_PEERS = sorted(p for p, spec in peers.PEERS.items() if spec.convention != "vp")


@pytest.fixture
def edm_den(gmm):
    return gmm.denoiser(SCHEDULES["edm"], "x0")


@pytest.mark.parametrize("peer", VP_PEERS + EDM_PEERS)
def test_every_peer_runs_counts_its_network_evaluations_and_starts_from_the_same_noise(
    den, edm_den, peer, monkeypatch
):
    """A VP peer's network sees the noise itself first, an EDM peer's sigma_max times the noise (dode's start,
    not the EDM schedulers' init_noise_sigma); Heun makes 2N - 1 evaluations in N steps."""
    model = den if peer in VP_PEERS else edm_den
    noise = make_noise(16, seed=4)
    seen = []
    real = model.fn

    def spy(x, t, **kw):
        seen.append(x.detach().clone())
        return real(x, t, **kw)

    monkeypatch.setattr(model, "fn", spy)
    x, calls = peers.diffusers_sample(model, noise, peer, 5)
    assert calls == len(seen) == 5
    assert torch.isfinite(x).all()
    start = model.schedule.initial_state(noise, model.schedule.t_max)
    torch.testing.assert_close(seen[0].to(torch.float64), start, rtol=1e-6, atol=1e-6)


#: (peer, dode solver, grid): where a diffusers EDM scheduler and a dode solver are the same algorithm on the
#: same sigmas -- Euler in sigma is DDIM (alpha = 1), the exponential sigmas are the logSNR grid, Heun on
#: Karras sigmas is EDM's sampler; both end with a first-order step into sigma = 0
SAME_ALGORITHM = [
    ("edm_euler", "ddim", "edm"),
    ("edm_dpmpp_2m", "dpm_solver++", "edm"),
    ("edm_dpmpp_2m_exp", "dpm_solver++", "logsnr_uniform"),
    ("heun_karras", "edm", "edm"),
]


@pytest.mark.parametrize("nfe", [3, 5, 9, 19])
@pytest.mark.parametrize(("peer", "solver", "grid"), SAME_ALGORITHM)
@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_an_edm_scheduler_is_dode_where_the_algorithms_coincide(gmm, peer, solver, grid, nfe, prediction):
    """To float32 precision (diffusers keeps its sigmas and coefficients in float32), relative to the state's
    scale: the input scaling, the output preconditioning and the step index are what the scheduler expects."""
    den = gmm.denoiser(SCHEDULES["edm"], prediction)
    noise = make_noise(64, seed=5)
    x, calls = peers.diffusers_sample(den, noise, peer, nfe)
    y = dode.sample(den, noise, solver, nfe, grid=grid)
    assert calls == nfe
    scale = float(y.abs().max())
    assert float((x - y).abs().max()) < 1e-5 * max(scale, 1.0), (float((x - y).abs().max()), scale)
    # and not by accident: another solver on the same grid is far off
    other = dode.sample(den, noise, {"ddim": "dpm_solver++"}.get(solver, "ddim"), nfe, grid=grid)
    assert float((x - other).abs().max()) > 1e-3


def test_the_edm_network_sees_what_diffusers_edm_schedulers_hand_it(monkeypatch):
    """On digits-edm-mini (EDM's preconditioning, dode.zoo.nets.EDMPrecond) the EDM scheduler, set to the
    model's sigma_data, hands the inner network exactly EDM's ``c_in x`` and ``log(sigma) / 4``, and the output
    it gets back is that network's raw output ``F``."""
    from dode import zoo

    den = zoo.load("digits-edm-mini")
    noise = make_noise(4, dim=64, seed=6).reshape(4, 1, 8, 8)
    scheduler = peers.make_scheduler("edm_dpmpp_2m", den)
    assert scheduler.config.sigma_data == pytest.approx(float(den.fn.sigma_data))
    scheduler.set_timesteps(5)
    x = den.schedule.initial_state(noise, den.schedule.t_max)
    for i, t in enumerate(scheduler.timesteps[:3]):
        model_input = scheduler.scale_model_input(x, t)
        out = peers._network(den, "edm", scheduler, i, model_input, t)
        raw = den.fn.net(model_input.float(), t.float().expand(len(x)))
        torch.testing.assert_close(out.float(), raw, rtol=1e-4, atol=1e-4)
        x = scheduler.step(out, t, x).prev_sample


def test_heun_cannot_make_an_even_nfe(edm_den):
    assert peers.peer_steps("heun_karras", 9) == 5 and peers.peer_steps("heun_karras", 8) is None
    assert peers.peer_steps("edm_euler", 8) == 8
    with pytest.raises(ValueError, match="cannot make nfe=4"):
        peers.diffusers_sample(edm_den, make_noise(2), "heun_karras", 4)


def test_a_peer_refuses_a_model_of_the_other_convention(den, edm_den):
    with pytest.raises(ValueError, match="drives EDM-schedule models only"):
        peers.make_scheduler("edm_euler", den)
    with pytest.raises(ValueError, match="drives discrete VP noise-prediction models only"):
        peers.make_scheduler("unipc_bh2", edm_den)
    with pytest.raises(ValueError, match="rho = 7"):
        peers.make_scheduler("heun_karras", edm_den.__class__(edm_den.fn, dode.EDMSchedule(rho=5.0), "x0"))


def _peers_results(values: dict):
    import xarray as xr

    names = list(values)
    return xr.Dataset(
        {"fd": (("sampler", "nfe"), [values[n] for n in names])}, coords={"sampler": names, "nfe": [5, 10]}
    )


def test_best_choice_says_where_a_d_solver_wins_and_where_it_does_not():
    from dode.companion import claims

    ds = _peers_results(
        {
            "diffusers:unipc_bh1": [4.5, 0.9],
            "dode:dpm_solver++:time_uniform:base": [6.0, 0.6],
            "dode:dpm_solver++:time_uniform:d-ode": [1.6, 0.7],
            "dode:dpm_solver++:time_uniform:d-ode-joint": [1.2, float("nan")],
        }
    )
    verdict = claims.check_best_choice({"13_peers": ds})
    assert verdict.verdict == "partly"
    assert "NFE 5: D-ODE is the best choice" in verdict.evidence
    assert "NFE 10: D-ODE is not the best choice" in verdict.evidence
    assert "(joint fit)" in verdict.evidence.splitlines()[1]  # the joint D-solver was the best at NFE 5
    assert claims.check_best_choice({}).verdict == "not run"
    # the joint-fit finding is graded on the exact test bed (page 12), not on page 13's cells
    assert claims.check_joint_fit({"13_peers": ds}).verdict == "not run"


def test_best_choice_is_graded_per_model_on_the_samplers_each_ran():
    import numpy as np
    import xarray as xr

    from dode.companion import claims

    names = [
        "diffusers:unipc_bh1",
        "diffusers:edm_dpmpp_2m",
        "dode:ddim:time_uniform:base",
        "dode:ddim:time_uniform:d-ode",
        "dode:ddim:edm:base",
        "dode:ddim:edm:d-ode",
    ]
    nan = np.nan
    fd = [
        [[4.0, 1.0], [nan, nan], [6.0, 2.0], [2.0, 1.5], [nan, nan], [nan, nan]],  # VP model, NFE 5 and 10
        [[nan, nan], [3.0, nan], [nan, nan], [nan, nan], [5.0, nan], [3.5, nan]],  # EDM model, NFE 5 only
    ]
    ds = xr.Dataset(
        {"fd": (("model", "sampler", "nfe"), fd)},
        coords={"model": ["vp-model", "edm-model"], "sampler": names, "nfe": [5, 10]},
    )
    verdict = claims.check_best_choice({"13_peers": ds})
    lines = verdict.evidence.splitlines()[1:]
    # graded per model, the weakest: vp-model partly (wins at NFE 5 of 5 and 10), edm-model not reproduced
    assert verdict.verdict == "not reproduced" and len(lines) == 3, verdict.evidence
    assert verdict.evidence.splitlines()[0] == (
        "vp-model: partly: fails at NFE 10 (holds in 1 of 2 cells); "
        "edm-model: not reproduced: holds in none (0 of 1 cells)"
    )
    assert lines[0].startswith("vp-model NFE 5: D-ODE is the best choice")
    assert lines[1].startswith("vp-model NFE 10: D-ODE is not the best choice")
    assert lines[2].startswith("edm-model NFE 5: D-ODE is not the best choice")
    assert "EDM DPM-Solver++(2M) 3.00" in lines[2] and "EDM grid 3.50" in lines[2]
    assert peers.model_results(ds, "edm-model").coords["nfe"].values.tolist() == [5]


def test_joint_fit_finding_reads_the_exact_test_bed():
    import numpy as np
    import xarray as xr

    from dode.companion import claims

    # base, greedy, joint for one solver at two NFEs, DDIM and self teachers
    d = np.full((1, 1, 3, 2, 2), np.nan)
    d[0, 0, 0] = [[0.13, 0.07], [0.13, 0.07]]  # base (stored under both teachers)
    d[0, 0, 1] = [[0.14, 0.10], [0.14, 0.08]]  # greedy: worse than base
    d[0, 0, 2] = [[0.12, 0.08], [0.12, 0.06]]  # joint: better than greedy, better than base when self-taught
    ds = xr.Dataset(
        {"distance_fresh": (("schedule", "solver", "method", "teacher", "nfe"), d)},
        coords={
            "schedule": ["vp"],
            "solver": ["ipndm"],
            "method": ["base", "d-ode", "d-ode-joint"],
            "teacher": ["ddim", "self"],
            "nfe": [10, 12],
        },
    )
    verdict = claims.check_joint_fit({"12_exact_testbed": ds})
    # it holds in both cells, but the test bed has one value per cell (no seeds): at most partly
    assert verdict.verdict == "partly", verdict.evidence
    assert "holds in all 2 cells by its sign, but with one seed" in verdict.evidence
    assert "greedy worse than base in 2 cells, joint better than base in 2 of them" in verdict.evidence
    d[0, 0, 2, 1, 1] = 0.09  # the self-taught joint fit at NFE 12 now worse than greedy and base
    verdict = claims.check_joint_fit({"12_exact_testbed": ds})
    assert (
        verdict.verdict == "partly" and "exact test bed vp: partly: fails at ipndm NFE 12" in verdict.evidence
    )


def _tiny_cfg(**over):
    from dode.companion import experiments as ex
    from dode.companion.protocols import PROTOCOLS

    eps = "digits-eps-mini"
    given = dict(
        models=[eps],
        peer_grids={eps: {"dpmpp_2m": {"lower_order_final": [True, False]}}},
        bases={eps: ["dode:dpm_solver++:time_uniform:base", "dode:ddim:time_uniform:base"]},
        nfes={eps: [3]},
        seeds=[0, 1],
        tuning_samples=16,
        n_samples=20,
        batch_size=20,
        floor={},
    )
    return ex.settings(PROTOCOLS["13_peers"], "smoke", **(given | over))


def test_the_sweep_does_not_depend_on_the_batch_size(tmp_path):
    import xarray as xr

    values = []
    for batch_size in (20, 8):
        cfg = _tiny_cfg(batch_size=batch_size)
        path = peers.peers_sweep("13_peers", cfg, tmp_path / str(batch_size), progress=False)
        with xr.open_dataset(path) as ds:
            values.append(ds["fd"].values)
            evaluated = ds["network_evaluations"].values
            assert (evaluated[np.isfinite(evaluated)] == 3).all() and ds["fd"].dims[0] == "model"
            assert ds["fd"].dims == ("model", "sampler", "nfe", "seed")
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6, atol=1e-6)


def test_the_tuning_never_sees_the_evaluation_noise(tmp_path, monkeypatch):
    """The selection draws its samples from the tuning seed only (its D candidates' fits from the first
    evaluation seed's *fitting* noise, which no sampler is scored on); the evaluation from the evaluation
    seeds only. A selection that sampled the evaluation noise would fail here."""
    from dode.companion import experiments as ex

    calls, stage = [], ["evaluation"]
    real_tune, real_noise = peers.tune, ex.noise

    def spy_tune(*args, **kwargs):
        stage[0] = "tuning"
        try:
            return real_tune(*args, **kwargs)
        finally:
            stage[0] = "evaluation"

    def spy_noise(seed, purpose, *args, **kwargs):
        calls.append((stage[0], int(seed), purpose))
        return real_noise(seed, purpose, *args, **kwargs)

    monkeypatch.setattr(peers, "tune", spy_tune)
    monkeypatch.setattr(ex, "noise", spy_noise)
    cfg = _tiny_cfg(tuning_seed=1000)
    peers.peers_sweep("13_peers", cfg, tmp_path, progress=False)
    tuning = {(seed, purpose) for st, seed, purpose in calls if st == "tuning"}
    evaluation = {(seed, purpose) for st, seed, purpose in calls if st == "evaluation"}
    assert {s for s, p in tuning if p == "eval"} == {1000}
    assert {s for s, p in tuning if p == "fit"} <= {cfg["seeds"][0]}
    assert {s for s, p in evaluation if p == "eval"} == set(cfg["seeds"])
    with pytest.raises(ValueError, match="tuning must not see the evaluation noise"):
        peers.peers_sweep("13_peers", _tiny_cfg(tuning_seed=1), tmp_path / "other", progress=False)


def _verdict_results(fd_by_seed: dict, nfes=(3, 4)):
    """A peers results file of one model: ``fd_by_seed`` sampler -> [per NFE: [per seed]], each selected."""
    import xarray as xr

    names = list(fd_by_seed)
    fd = np.array([fd_by_seed[n] for n in names], dtype=float)[None]
    seeds = list(range(fd.shape[-1]))
    ones = np.ones(fd.shape[:-1])
    return xr.Dataset(
        {
            "fd": (("model", "sampler", "nfe", "seed"), fd),
            "selected": (("model", "sampler", "nfe"), ones),
            "peer_default": (("model", "sampler", "nfe"), np.zeros_like(ones)),
        },
        coords={"model": ["m"], "sampler": names, "nfe": list(nfes), "seed": seeds},
    )


def test_the_verdict_per_cell_uses_the_spread_over_seeds():
    peer, base, d = "diffusers:dpmpp_2m", "dode:ddim:time_uniform:base", "dode:ddim:time_uniform:d-ode"
    ds = _verdict_results(
        {
            # NFE 3: D better in every seed, by far more than the spread; NFE 4: better on average, but one
            # seed is worse: inside the noise
            peer: [[10.0, 11.0, 12.0], [5.0, 5.0, 5.0]],
            base: [[20.0, 20.0, 20.0], [9.0, 9.0, 9.0]],
            d: [[5.0, 6.1, 7.0], [3.0, 3.0, 5.5]],
        }
    )
    rows = {r["nfe"]: r for r in peers.cell_verdicts(ds)}
    assert rows[3]["verdict"] == "dode better" and rows[3]["dode"] == d and rows[3]["goal"]
    assert rows[3]["diffusers_std"] == pytest.approx(1.0) and rows[3]["seeds"] == 3
    assert rows[4]["verdict"] == "inside the noise" and not rows[4]["goal"]
    worse = _verdict_results({peer: [[1.0, 1.1, 0.9]], base: [[4.0, 4.0, 4.2]], d: [[3.0, 3.2, 3.1]]}, (8,))
    (row,) = peers.cell_verdicts(worse)
    assert row["verdict"] == "diffusers better" and row["dode"] == d and not row["goal"]
    # the same algorithm in both libraries: equal to float precision in every seed, inside the noise
    same = _verdict_results({peer: [[4.0, 5.0]], base: [[4.0 + 1e-7, 5.0 + 2e-7]], d: [[6.0, 7.0]]}, (3,))
    (row,) = peers.cell_verdicts(same)
    assert row["verdict"] == "inside the noise" and row["gain"] == 0.0
    # one seed: no spread, the sign decides
    one = _verdict_results({peer: [[4.0]], base: [[3.9]], d: [[5.0]]}, (5,))
    (row,) = peers.cell_verdicts(one)
    assert row["verdict"] == "dode better" and row["dode"] == base and np.isnan(row["gain_std"])
    assert row["seeds"] == 1


def test_the_reading_groups_the_nfes_by_the_verdicts_of_the_table():
    from dode.companion import readings

    peer, base, d = "diffusers:dpmpp_2m", "dode:ddim:time_uniform:base", "dode:ddim:time_uniform:d-ode"
    ds = _verdict_results(
        {
            peer: [[10.0, 11.0, 12.0], [5.0, 5.0, 5.0], [1.0, 1.1, 0.9]],
            base: [[20.0, 20.0, 20.0], [9.0, 9.0, 9.0], [4.0, 4.0, 4.2]],
            d: [[5.0, 6.1, 7.0], [3.0, 3.0, 5.5], [3.0, 3.2, 3.1]],
        },
        (3, 4, 8),
    )
    text = readings.peers_reading(ds)
    assert "is better than it at NFE 3; inside its noise at NFE 4; worse than it at NFE 8" in text
    assert "holds at NFE 3, not at NFE 4 and 8" in text
    assert [r["verdict"] for r in peers.cell_verdicts(ds)] == [
        "dode better",
        "inside the noise",
        "diffusers better",
    ]


def test_the_selected_sampler_is_the_groups_best_not_the_lowest_on_the_evaluation_noise():
    tuned, default = "diffusers:dpmpp_2m:use_karras_sigmas=true", "diffusers:dpmpp_2m"
    d = "dode:ddim:time_uniform:d-ode"
    ds = _verdict_results({tuned: [[5.0, 5.0]], default: [[4.0, 4.0]], d: [[4.5, 4.5]]}, (5,))
    ds["selected"].loc[{"sampler": default}] = 0.0
    ds["peer_default"].loc[{"sampler": default}] = 1.0
    (row,) = peers.cell_verdicts(ds)
    assert row["diffusers"] == tuned  # the default scored lower on the evaluation noise, but was not selected
    # the verdict is against the better of the two there: the peer's default, which D does not beat
    assert row["peer"] == default and row["verdict"] == "diffusers better"
    assert peers.default_of(peers.model_results(ds, "m"), 5) == default


def test_peer_configurations_are_named_by_the_options_they_change():
    from dode.companion import experiments as ex

    den = ex.load_model("digits-eps-mini")
    name = peers.peer_config("unipc_bh2", lower_order_final=False, final_sigmas_type="sigma_min")
    assert name == "diffusers:unipc_bh2:final_sigmas_type=sigma_min,lower_order_final=false"
    assert peers.parse_sampler(name)["options"] == {
        "final_sigmas_type": "sigma_min",
        "lower_order_final": False,
    }
    assert "full-order last step" in peers.sampler_label(name)
    grid = {"unipc_bh2": {"lower_order_final": [True, False]}}
    assert peers.peer_candidates(den, grid) == [
        "diffusers:unipc_bh2",
        "diffusers:unipc_bh2:lower_order_final=false",
    ]
    with pytest.raises(ValueError, match="peer options must be among"):
        peers.peer_config("unipc_bh2", beta_schedule="linear")


def test_lower_order_final_must_be_a_bool(den):
    with pytest.raises(ValueError, match="lower_order_final must be True or False"):
        dode.sample(den, make_noise(2), "dpm_solver++", 5, lower_order_final="yes")


def test_lof_sibling_names_the_same_sampler_with_the_lower_order_last_step():
    assert peers.lof_sibling("dode:deis2:time_uniform:base") == "dode:deis2_lof:time_uniform:base"
    assert (
        peers.lof_sibling("dode:unipc_bh2_full:logsnr_uniform:d-ode") == "dode:unipc_bh2:logsnr_uniform:d-ode"
    )
    full = "diffusers:unipc_bh2:final_sigmas_type=sigma_min,lower_order_final=false"
    assert peers.lof_sibling(full) == "diffusers:unipc_bh2:final_sigmas_type=sigma_min"
    for lowered in (
        "dode:deis2_lof:edm:base",
        "dode:ddim:edm:base",
        "diffusers:unipc_bh2",
        "dode:unipc_bh2:edm:base",
    ):
        assert peers.lof_sibling(lowered) is None, lowered


def test_a_rising_curve_is_named_with_what_the_tuning_noise_says_about_it():
    from dode.companion import readings

    full = "diffusers:unipc_bh2:lower_order_final=false"
    lowered, base = "diffusers:unipc_bh2", "dode:ddim:time_uniform:base"
    ds = _verdict_results(
        {
            full: [[4.0, 4.1, 3.9], [5.3, 5.2, 5.4]],  # the tuned peer rises from NFE 3 to 4 in every seed
            lowered: [[np.nan] * 3, [np.nan] * 3],  # not evaluated, tuned only
            base: [[9.0, 9.0, 9.0], [6.0, 6.0, 6.0]],
        }
    )
    ds["selected"].loc[{"sampler": lowered}] = 0.0
    tuning = {full: [10.2, 12.7], lowered: [36.1, 13.9], base: [20.0, 15.0]}
    ds["fd_tuning"] = (("model", "sampler", "nfe"), np.array([tuning[n] for n in ds.sampler.values])[None])
    text = readings.rising_reading(ds)
    assert (
        "the tuned diffusers scheduler scores worse at NFE 4 than at NFE 3 (4 → 5.3, beyond the seed spread)"
        in text
    )
    assert (
        "rises too (10.2 → 12.7), while the same sampler with the lower-order last step falls (36.1 → 13.9)"
        in text
    )
    assert "best dode base" not in text  # it falls
    assert "noise floor" not in text  # no floor in this file
    # a floor whose band holds both values: the rise is at the floor, and the page says so
    at_floor = ds.assign(fd_floor=(("model", "seed"), [[5.0, 5.5, 6.0]]))
    assert "Both lie within the noise floor's band (5.5 ± 0.5)" in readings.rising_reading(at_floor)
    assert "noise floor" not in readings.rising_reading(
        ds.assign(fd_floor=(("model", "seed"), [[1.0, 1.1, 1.2]]))
    )
    # the lower-order form rising as well: no full-order explanation, the rise is the sampler's own
    ds["fd_tuning"].loc[{"sampler": lowered}] = [[13.0, 14.0]]
    text = readings.rising_reading(ds)
    assert "full order" not in text and "the rise is the sampler's own" in text
    # no tuning values: said, not guessed
    text = readings.rising_reading(ds.drop_vars("fd_tuning"))
    assert "holds no measurement that explains it" in text
    # nothing rises: one sentence says so
    ds["fd"].loc[{"sampler": full, "nfe": 4}] = [[3.0, 3.0, 3.0]]
    assert readings.rising_reading(ds).startswith("No group's selected sampler scores worse")
