"""The joint fit (dode.joint) on the exact Gaussian-mixture test bed."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dode
from dode.distill import teacher_targets
from dode.gmm import GaussianMixture
from dode.grids import grid_key
from dode.solvers import make_plan

RUNS = [
    ("ddim", 6, {}),
    ("ipndm", 6, {}),
    ("deis", 6, {"order": 3}),
    ("dpm_solver", 6, {"order": 3}),
    ("dpm_solver++", 6, {}),
    ("edm", 5, {}),
]


def _distance(x, y) -> float:
    return float(((x - y) ** 2).sum(dim=1).mean())


@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_joint_is_never_farther_from_the_teacher_than_greedy_or_base(
    gmm, schedule_name, prediction, solver, nfe, options
):
    """On the fitting batch, measured here independently of the fit's own bookkeeping."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, prediction)
    noise = make_noise(24, seed=3)
    greedy = dode.distill(den, noise, solver, nfe, K=4, **options)
    joint = dode.distill(den, noise, solver, nfe, K=4, fit="joint", fit_options={"max_iter": 4}, **options)
    assert joint.fit == "joint" and greedy.fit == "ls"
    np.testing.assert_array_equal(np.isnan(joint.values), np.isnan(greedy.values))
    np.testing.assert_array_equal(np.asarray(joint.info["greedy_lambdas"]), greedy.values)
    plan = make_plan(sched, solver, nfe, None, options)
    _, targets = teacher_targets(den, noise, plan, 4)
    teacher = targets[plan.landing_times[-1]]
    errors = {
        name: _distance(dode.sample(den, noise, solver, nfe, lambdas=lam, **options), teacher)
        for name, lam in (("base", None), ("greedy", greedy), ("joint", joint))
    }
    assert errors["joint"] <= min(errors["greedy"], errors["base"]) * (1 + 1e-12), errors
    # the fit's objective is that distance (final state only by default)
    assert joint.info["objective_joint"] == pytest.approx(errors["joint"], rel=1e-9)
    assert joint.info["objective_greedy"] == pytest.approx(errors["greedy"], rel=1e-9)
    assert joint.info["objective_base"] == pytest.approx(errors["base"], rel=1e-9)


@pytest.mark.parametrize("solver,options", [("ipndm", {}), ("deis", {"order": 3})])
def test_self_taught_joint_fit_beats_the_base_solver_on_fresh_noise(gmm, solver, options):
    """The case the greedy fit gets wrong: iPNDM and DEIS-3 taught by themselves (Supp. 11) at NFE 10 on
    the DDPM schedule. Greedy lands farther from the exact ODE solution than the base solver; joint closer."""
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    fit_noise, fresh = make_noise(100, seed=10), make_noise(200, seed=11)
    plan = make_plan(sched, solver, 10, None, options)
    exact = gmm.reference(fresh, sched, plan.start.t, plan.landing_times[-1])
    greedy = dode.distill(den, fit_noise, solver, 10, teacher=solver, **options)
    joint = dode.distill(den, fit_noise, solver, 10, teacher=solver, fit="joint", **options)

    def error(lam):
        x = dode.sample(den, fresh, solver, 10, lambdas=lam, **options)
        return float((x - exact).norm(dim=1).mean())

    base_err, greedy_err, joint_err = error(None), error(greedy), error(joint)
    assert greedy_err > base_err, "the greedy fit is expected to hurt here (the reason for the joint fit)"
    assert joint_err < 0.97 * base_err, (base_err, greedy_err, joint_err)


def test_landing_weight_adds_the_landing_states_to_the_objective(gmm):
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    noise = make_noise(16, seed=5)
    w = 0.5
    lam = dode.distill(
        den, noise, "ddim", 4, K=3, fit="joint", fit_options={"landing_weight": w, "max_iter": 2}
    )
    plan = make_plan(sched, "ddim", 4)
    _, targets = teacher_targets(den, noise, plan, 3)
    tr = dode.sample(den, noise, "ddim", 4, lambdas=lam, trajectory=True)
    final = _distance(tr.x, targets[plan.landing_times[-1]])
    landing = np.mean([_distance(tr.states[k + 1], targets[t]) for k, t in enumerate(plan.landing_times)])
    assert lam.info["objective_joint"] == pytest.approx(final + w * landing, rel=1e-9)
    assert lam.info["objective_joint"] <= lam.info["objective_greedy"]


def test_joint_lambdas_round_trip_and_refuse_bad_options(gmm, tmp_path):
    den = gmm.denoiser(SCHEDULES["vp"], "x0")
    noise = make_noise(8, seed=6)
    lam = dode.distill(den, noise, "dpm_solver++", 4, K=2, fit="joint", fit_options={"max_iter": 1})
    back = dode.Lambdas.load(lam.save(tmp_path / "joint.nc"))
    assert back.fit == "joint"
    np.testing.assert_array_equal(back.values, lam.values)
    assert back.info["joint_sampling_runs"] == lam.info["joint_sampling_runs"] > 0
    with pytest.raises(ValueError, match="fit_options"):
        dode.distill(den, noise, "ddim", 4, fit="joint", fit_options={"iterations": 3})
    with pytest.raises(ValueError, match="fit_options"):
        dode.distill(den, noise, "ddim", 4, fit="ls", fit_options={"max_iter": 3})
    with pytest.raises(ValueError, match="fit must be one of"):
        dode.distill(den, noise, "ddim", 4, fit="newton")
    with pytest.raises(ValueError, match="landing_weight"):
        dode.distill(den, noise, "ddim", 4, fit="joint", fit_options={"landing_weight": -1.0})
    with pytest.raises(ValueError, match="constant"):
        dode.joint.joint_fit(den, noise, dode.Lambdas.constant_value(0.1), {})


def test_joint_fit_is_deterministic(gmm):
    den = gmm.denoiser(SCHEDULES["edm"], "eps")
    noise = make_noise(8, seed=7)
    a = dode.distill(den, noise, "ipndm", 4, K=2, fit="joint", fit_options={"max_iter": 2})
    b = dode.distill(den, noise, "ipndm", 4, K=2, fit="joint", fit_options={"max_iter": 2})
    torch.testing.assert_close(torch.from_numpy(a.values), torch.from_numpy(b.values), rtol=0, atol=0)


def test_sweeps_follow_the_papers_teachers_and_fit_the_joint_method_jointly(tmp_path):
    from dode.companion import experiments as ex
    from dode.companion.results import ResultStore

    assert [
        ex.teacher_of(lb, "paper") for lb in ("ddim", "ipndm", "deis3", "dpm_solver3", "dpm_solver++")
    ] == [
        "ddim",
        "ipndm",
        "deis",
        "ddim",
        "ddim",
    ]
    assert ex.teacher_of("ipndm", None) is None and ex.teacher_of("ipndm", "ddim") == "ddim"
    den = dode.zoo.load("digits-eps-mini")
    metric = dode.metrics.FD(batch_size=16)
    methods = ["base", "d-ode", "d-ode-joint"]
    dims = ex.sweep_dims(["deis3"], [2, 3], methods, [0])
    store = ResultStore(tmp_path / "s.nc", dims, {"k": 1})
    ex.quality_sweep(
        store,
        den,
        metric,
        "fd",
        solvers=["deis3"],
        nfes=[2, 3],
        joint_nfes=[3],
        seeds=[0],
        methods=methods,
        K=2,
        B=4,
        n_samples=16,
        batch_size=16,
        teacher="paper",
        progress=False,
    )
    shape = ex.sample_shape(den)
    fit_noise = ex.noise(0, "fit", 4, shape)
    for method, fit in (("d-ode", "ls"), ("d-ode-joint", "joint")):
        expected = dode.distill(den, fit_noise, "deis", 3, 2, teacher="deis", fit=fit, order=3)
        stored = np.asarray(store.get("lambdas", solver="deis3", method=method, nfe=3, seed=0))[:3]
        np.testing.assert_allclose(stored[:, : expected.values.shape[1]], expected.values, rtol=1e-6)
    # joint_nfes=[3]: the joint method skips NFE 2 (its cells stay empty), the others run there
    assert np.isnan(float(store.get("fd", solver="deis3", method="d-ode-joint", nfe=2, seed=0)))
    assert np.isfinite(float(store.get("fd", solver="deis3", method="d-ode", nfe=2, seed=0)))
    assert ex.method_nfes("d-ode-joint", "deis3", {"deis3": [2, 3, 5]}, {"deis3": [3, 5, 7]}) == [3, 5]
    assert ex.method_nfes("d-ode", "deis3", [2, 3], [3]) == [2, 3]


def test_a_trial_step_that_diverges_is_rejected_not_fatal(gmm, monkeypatch):
    import dode.joint as joint_module

    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(16, seed=8)
    nfe = 4
    real_run = joint_module.run
    calls = {"n": 0}

    def diverging_first_trial(*args, **kwargs):
        calls["n"] += 1
        if (
            calls["n"] == 3
        ):  # greedy and zero in one pass, the Jacobian's columns in one, the first trial step
            raise FloatingPointError("non-finite network output")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(joint_module, "run", diverging_first_trial)
    lam = dode.distill(den, noise, "ddim", nfe, K=3, fit="joint", fit_options={"max_iter": 2})
    assert calls["n"] > 3 and lam.info["joint_sampling_passes"] == calls["n"] - 1
    assert lam.info["objective_joint"] <= min(lam.info["objective_greedy"], lam.info["objective_base"])


@pytest.mark.parametrize(
    "schedule_name,prediction,solver,nfe,options,variant,landing_weight",
    [
        ("vp", "eps", "ipndm", 5, {}, "d-ode", 0.0),
        ("vp", "eps", "dpm_solver", 6, {"order": 3}, "sep", 0.0),
        ("edm", "x0", "edm", 5, {}, "d-ode", 0.5),
    ],
)
def test_batched_finite_differences_equal_the_unbatched_runs(
    gmm, schedule_name, prediction, solver, nfe, options, variant, landing_weight
):
    """All perturbed runs of an iteration in one pass (default), in passes of two runs, and one run per pass
    (``max_batch`` = the fitting batch: the unbatched fit) give the same lambdas and the same work."""
    den = gmm.denoiser(SCHEDULES[schedule_name], prediction)
    n = 12
    noise = make_noise(n, seed=9)
    plan = make_plan(den.schedule, solver, nfe, None, options)
    teacher_run = teacher_targets(den, noise, plan, 3)
    fits = {
        max_batch: dode.distill(
            den,
            noise,
            solver,
            nfe,
            K=3,
            variant=variant,
            fit="joint",
            teacher_run=teacher_run,
            fit_options={"max_iter": 3, "landing_weight": landing_weight, "max_batch": max_batch},
            **options,
        )
        for max_batch in (None, 2 * n + n // 2, n)
    }
    batched, unbatched = fits[None], fits[n]
    params = int(np.sum(~np.isnan(batched.values)))
    assert params > 1 and batched.info["joint_iterations"] >= 1
    for lam in fits.values():
        np.testing.assert_allclose(lam.values, unbatched.values, rtol=1e-9, atol=1e-12)
        assert lam.info["objective_joint"] == pytest.approx(unbatched.info["objective_joint"], rel=1e-9)
        for key in ("joint_sampling_runs", "joint_network_evaluations", "joint_iterations"):
            assert lam.info[key] == unbatched.info[key], key
    runs, iterations = unbatched.info["joint_sampling_runs"], unbatched.info["joint_iterations"]
    trials = runs - 2 - iterations * (params + 1)  # each Jacobian: the current point and P perturbations
    assert trials >= iterations and unbatched.info["joint_sampling_passes"] == runs
    # one pass for greedy and zero, one per Jacobian, one per trial step
    assert batched.info["joint_sampling_passes"] == 1 + iterations + trials
    assert batched.info["joint_network_calls"] == batched.info["joint_sampling_passes"] * nfe
    two_per_pass = fits[2 * n + n // 2].info["joint_sampling_passes"]
    assert two_per_pass == 1 + iterations * -(-(params + 1) // 2) + trials


def test_lambda_sets_sample_each_setting_as_its_own_run(gmm):
    from dode.sampling import LambdaSets, run

    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(10, seed=12)
    plan = make_plan(den.schedule, "deis", 5, None, {"order": 3})
    settings = [np.linspace(-0.3, 0.4, 5)[:, None], np.full((5, 1), 0.2), np.zeros((5, 1))]
    together = run(den, noise.repeat(3, 1), plan, lambdas=LambdaSets(settings, per_set=10))
    for c, values in enumerate(settings):
        lam = dode.Lambdas(values, solver="deis", nfe=5, grid=grid_key(None), options=plan.options)
        alone = dode.sample(den, noise, "deis", 5, lambdas=lam, order=3)
        torch.testing.assert_close(together.x[c * 10 : (c + 1) * 10], alone, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal([row[c] for row in together.fitted], values)
    with pytest.raises(ValueError, match="3 sets x 10 samples"):
        run(den, noise, plan, lambdas=LambdaSets(settings, per_set=10))


# The promise over randomly drawn exact mixtures, dimensions, schedules, solvers and NFEs (the paper's
# teachers: iPNDM and DEIS teach themselves). What the fit guarantees is checked as such; out of sample it
# guarantees nothing, and the test checks the weaker statement the measurements support (docstring).
_PROMISE_SCHEDULES = {"vp": (dode.VPSchedule.linear(), "eps"), "edm": (dode.EDMSchedule(), "x0")}
#: how much farther from the exact solution than the base solver a joint D-solver may land on fresh noise:
#: the worst case measured (the mixture of the next test) lands 7 % farther, one run to convergence 9 %
OUT_OF_SAMPLE_SLACK = 1.1


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    n_components=st.integers(2, 6),
    dim=st.sampled_from([2, 4, 8]),
    mixture_seed=st.integers(0, 10_000),
    schedule_name=st.sampled_from(sorted(_PROMISE_SCHEDULES)),
    label=st.sampled_from(["ddim", "ipndm", "deis3", "dpm_solver++", "dpm_solver3"]),
    nfe=st.sampled_from([4, 6]),
)
def test_the_joint_fits_promise_over_random_mixtures(
    n_components, dim, mixture_seed, schedule_name, label, nfe
):
    """On the fitting batch, against its teacher: never farther than the greedy fit or the base solver
    (guaranteed by the fit). On fresh noise, against the exact ODE solution: no farther than
    ``OUT_OF_SAMPLE_SLACK`` times the base solver's distance -- not "never worse": the fit can overfit its
    batch (:func:`test_the_joint_fit_can_lose_to_the_base_solver_out_of_sample`)."""
    from dode.companion.experiments import solver_spec, teacher_of

    schedule, prediction = _PROMISE_SCHEDULES[schedule_name]
    solver, options = solver_spec(label)
    teacher = teacher_of(label, "paper") or "ddim"
    mixture = GaussianMixture.random(n_components=n_components, dim=dim, seed=mixture_seed)
    den = mixture.denoiser(schedule, prediction)
    fit_noise, fresh = make_noise(32, dim, seed=mixture_seed), make_noise(64, dim, seed=mixture_seed + 1)
    plan = make_plan(schedule, solver, nfe, None, options)
    teacher_run = teacher_targets(den, fit_noise, plan, 4, teacher=teacher)
    fits = {
        "base": None,
        **{
            name: dode.distill(
                den, fit_noise, solver, nfe, 4, teacher=teacher, teacher_run=teacher_run, fit=fit, **options
            )
            for name, fit in (("greedy", "ls"), ("joint", "joint"))
        },
    }
    in_sample = {
        name: _distance(
            dode.sample(den, fit_noise, solver, nfe, lambdas=lam, **options),
            teacher_run[1][plan.landing_times[-1]],
        )
        for name, lam in fits.items()
    }
    assert in_sample["joint"] <= min(in_sample["greedy"], in_sample["base"]) * (1 + 1e-12), in_sample
    exact = mixture.reference(fresh, schedule, plan.start.t, plan.landing_times[-1], rtol=1e-9)
    out = {
        name: float((dode.sample(den, fresh, solver, nfe, lambdas=lam, **options) - exact).norm(dim=1).mean())
        for name, lam in fits.items()
    }
    assert out["joint"] <= OUT_OF_SAMPLE_SLACK * out["base"], out


def test_the_joint_fit_can_lose_to_the_base_solver_out_of_sample():
    """Issue 22's failure, reproduced on another mixture: self-taught D-iPNDM at NFE 10 (K = 10, B = 100) on
    an exact mixture that is not the test bed's. The joint fit lowers the distance on its fitting batch by a
    third and lands farther from the exact solution than base iPNDM on fresh noise. The cause is neither
    the teacher's targets nor a too-early stop: fitted against the *exact* solution instead of the aligned
    teacher, it fails the same way (and running to convergence does no better: the method chapter, the
    joint fit). It overfits its batch: 10 lambdas, some along near-zero columns growing large."""
    sched = SCHEDULES["vp"]
    mixture = GaussianMixture.random(n_components=4, dim=8, seed=3)
    den = mixture.denoiser(sched, "eps")
    g = torch.Generator().manual_seed(0)
    fit_noise = torch.randn(100, 8, generator=g, dtype=torch.float64)
    fresh = torch.randn(500, 8, generator=g, dtype=torch.float64)
    plan = make_plan(sched, "ipndm", 10)
    t, end = plan.start.t, plan.landing_times[-1]
    exact_fit, exact_fresh = (mixture.reference(z, sched, t, end) for z in (fit_noise, fresh))
    _, targets = teacher_targets(den, fit_noise, plan, 10, teacher="ipndm")
    greedy = dode.distill(den, fit_noise, "ipndm", 10, 10, teacher="ipndm")
    joint = {
        "aligned teacher": dode.joint.joint_fit(den, fit_noise, greedy, targets),
        "exact solution": dode.joint.joint_fit(den, fit_noise, greedy, {**targets, end: exact_fit}),
    }

    def distance(noise, exact, lam):
        return float((dode.sample(den, noise, "ipndm", 10, lambdas=lam) - exact).norm(dim=1).mean())

    base_fit, base_fresh = distance(fit_noise, exact_fit, None), distance(fresh, exact_fresh, None)
    for target, lam in joint.items():
        assert distance(fit_noise, exact_fit, lam) < 0.75 * base_fit, target
        assert base_fresh < distance(fresh, exact_fresh, lam) <= OUT_OF_SAMPLE_SLACK * base_fresh, target
