"""The D-ODE transform and its closed-form distillation, on the exact Gaussian-mixture test bed."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.distill import least_squares, teacher_targets
from dode.solvers import make_plan

RUNS = [
    ("ddim", 10, {}),
    ("ipndm", 10, {}),
    ("deis", 10, {"order": 3}),
    ("dpm_solver", 10, {"order": 3}),
    ("dpm_solver", 8, {"order": 2}),
    ("dpm_solver++", 10, {}),
    ("unipc", 10, {}),
    ("unipc", 6, {"order": 3, "solver_type": "bh1"}),
    ("deis", 6, {"order": 1, "lower_order_final": True}),
    ("edm", 9, {}),
]


@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_teacher_states_sit_exactly_at_the_student_landing_times(gmm, schedule_name, solver, nfe, options):
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, "eps")
    noise = make_noise(3)
    plan = make_plan(sched, solver, nfe, None, options)
    K = 4
    teacher_plan, targets = teacher_targets(den, noise, plan, K)
    landing = list(dict.fromkeys(plan.landing_times))
    assert list(targets) and set(targets) == set(landing)
    grid = teacher_plan.times.tolist()
    # the teacher grid refines the student's: every landing time is on it, K teacher steps apart
    positions = [grid.index(t) for t in landing]
    assert positions == [K * (i + 1) for i in range(len(landing))]
    # and the recorded state is the teacher's own state there: rerun DDIM up to that point by hand
    for pos, t in zip(positions[:3], landing[:3], strict=True):
        partial = dode.sample(
            den, noise, "ddim", pos, grid=torch.tensor(grid[: pos + 1], dtype=torch.float64)
        )
        torch.testing.assert_close(targets[t], partial, rtol=0, atol=0)


@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_lambdas_fitted_on_one_batch_help_a_fresh_batch(gmm, schedule_name, prediction, solver, nfe, options):
    """Fit on batch A; on a fresh batch B the D-solver lands closer to the teacher than the base solver."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, prediction)
    fit_noise, eval_noise = make_noise(256, seed=10), make_noise(256, seed=11)
    lam = dode.distill(den, fit_noise, solver, nfe, K=10, **options)
    plan = make_plan(sched, solver, nfe, None, options)
    _, targets = teacher_targets(den, eval_noise, plan, 10)
    teacher_final = targets[plan.landing_times[-1]]
    base = dode.sample(den, eval_noise, solver, nfe, **options)
    dsol = dode.sample(den, eval_noise, solver, nfe, lambdas=lam, **options)
    err_base = (base - teacher_final).norm(dim=1).mean()
    err_d = (dsol - teacher_final).norm(dim=1).mean()
    assert err_d < err_base, f"{solver}: D-solver {err_d:.4g} vs base {err_base:.4g} from the teacher"


def test_each_lambda_minimises_its_stage_error(gmm):
    """Sequential fitting: lambda_k is the exact minimiser of the batch error at evaluation k, given the
    earlier fitted lambdas (checked by perturbing one lambda at a time)."""
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    noise = make_noise(16, seed=4)
    nfe = 4
    lam = dode.distill(den, noise, "ddim", nfe, K=5)
    plan = make_plan(sched, "ddim", nfe)
    _, targets = teacher_targets(den, noise, plan, 5)
    for k in range(nfe):
        grid_k = plan.times[: k + 2]

        def stage_error(values, grid_k=grid_k, k=k):
            lk = dode.Lambdas(
                values[: k + 1], **{**lam.metadata(), "nfe": k + 1, "grid": dode.grids.grid_key(grid_k)}
            )
            x = dode.sample(den, noise, "ddim", k + 1, grid=grid_k, lambdas=lk)
            return float(((x - targets[plan.landing_times[k]]) ** 2).sum())

        best = stage_error(lam.values)
        for delta in (1e-3, -1e-3):
            moved = lam.values.copy()
            moved[k, 0] += delta
            assert stage_error(moved) > best


def test_least_squares_closed_form():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 3, generator=g, dtype=torch.float64)
    r = 0.7 * v + 0.01 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    assert least_squares(r, [v])[0] == pytest.approx(float((r * v).sum() / (v * v).sum()), rel=1e-14)
    w = torch.randn(50, 3, generator=g, dtype=torch.float64)
    p = least_squares(2.0 * v - 3.0 * w, [v, w])
    np.testing.assert_allclose(p, [2.0, -3.0], rtol=1e-10)
    assert least_squares(r, [torch.zeros_like(r)])[0] == 0.0


def test_first_evaluation_rule(gmm):
    """Noise prediction: the first evaluation is corrected against x_T; data prediction: not corrected."""
    noise = make_noise(8)
    lam_eps = dode.distill(gmm.denoiser(SCHEDULES["vp"], "eps"), noise, "ddim", 5, K=3)
    lam_x0 = dode.distill(gmm.denoiser(SCHEDULES["edm"], "x0"), noise, "ddim", 5, K=3)
    assert np.isfinite(lam_eps[0]) and lam_eps[0] != 0
    assert np.isnan(lam_x0[0]) and np.all(np.isfinite(lam_x0.values[1:]))


@pytest.mark.parametrize(
    "variant,widths",
    [
        ("d-ode", [1, 1, 1, 1]),
        ("d-ode-2", [1, 2, 2, 2]),
        ("sep", [2, 2, 2, 2]),
        ("all", [1, 2, 3, 4]),
    ],
)
def test_variants_have_the_documented_parameters(gmm, variant, widths):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    lam = dode.distill(den, make_noise(32), "ddim", 4, K=4, variant=variant)
    assert [int(np.sum(~np.isnan(row))) for row in lam.values] == widths
    out = dode.sample(den, make_noise(5, seed=2), "ddim", 4, lambdas=lam)
    assert torch.isfinite(out).all()


def test_sep_with_a_one_b_zero_is_the_base_solver(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    lam = dode.distill(den, make_noise(8), "ddim", 4, K=2, variant="sep")
    identity = dode.Lambdas(np.tile([1.0, 0.0], (4, 1)), **lam.metadata())
    noise = make_noise(3)
    assert torch.equal(
        dode.sample(den, noise, "ddim", 4, lambdas=identity), dode.sample(den, noise, "ddim", 4)
    )


def test_la_ddim_is_lookahead_on_data_predictions(gmm):
    """LA-DDIM (Zhang et al. 2023): x0~ = x0 + c (x0 - x0_prev) with a constant c, written out by hand."""
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    noise = make_noise(4)
    c, nfe = 0.3, 5
    times = dode.make_grid(sched, "time_uniform", nfe)
    x, x0_prev = noise.clone(), None
    for s, t in zip(times[:-1], times[1:], strict=True):
        a_s, s_s, a_t, s_t = sched.alpha(s), sched.sigma(s), sched.alpha(t), sched.sigma(t)
        x0 = (x - s_s * den(x, float(s))) / a_s
        x0_t = x0 if x0_prev is None else x0 + c * (x0 - x0_prev)
        eps_t = (x - a_s * x0_t) / s_s
        x, x0_prev = a_t * x0_t + s_t * eps_t, x0
    la = dode.sample(den, noise, "ddim", nfe, lambdas=dode.Lambdas.constant_value(c, space="x0"))
    torch.testing.assert_close(la, x, rtol=1e-10, atol=1e-10)


def test_fixed_lambda_is_eq10_with_a_constant(gmm):
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    noise = make_noise(4)
    c, nfe = 0.2, 4
    times = dode.make_grid(sched, "time_uniform", nfe)
    x, prev = noise.clone(), noise.clone()  # the first previous output of a noise model is x_T
    for s, t in zip(times[:-1], times[1:], strict=True):
        eps = den(x, float(s))
        eps_t = eps + c * (eps - prev)
        x0 = (x - sched.sigma(s) * eps_t) / sched.alpha(s)
        x, prev = sched.alpha(t) * x0 + sched.sigma(t) * eps_t, eps
    out = dode.sample(den, noise, "ddim", nfe, lambdas=dode.Lambdas.constant_value(c))
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_lambdas_round_trip(tmp_path, gmm):
    den = gmm.denoiser(SCHEDULES["edm"], "x0")
    lam = dode.distill(den, make_noise(8), "edm", 9, K=3, seed=123)
    assert len(lam) == 9
    path = lam.save(tmp_path / "lam.nc")
    back = dode.Lambdas.load(path)
    np.testing.assert_array_equal(back.values, lam.values)
    assert back.metadata() == lam.metadata() and back.stages == "per_time"
    assert (
        back.seed == 123 and back.K == 3 and back.B == 8 and back.teacher == "ddim" and back.model == "gmm-x0"
    )
    np.testing.assert_array_equal(back.landing_times, lam.landing_times)
    assert not list(tmp_path.glob("*.tmp"))
    noise = make_noise(3)
    assert torch.equal(
        dode.sample(den, noise, "edm", 9, lambdas=back), dode.sample(den, noise, "edm", 9, lambdas=lam)
    )


def test_mismatched_lambdas_are_refused(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    lam = dode.distill(den, make_noise(8), "ddim", 6, K=2)
    noise = make_noise(2)
    with pytest.raises(ValueError, match=r"fitted for nfe 6 \(asked: 5\)"):
        dode.sample(den, noise, "ddim", 5, lambdas=lam)
    with pytest.raises(ValueError, match=r"fitted for solver 'ddim' \(asked: 'ipndm'\)"):
        dode.sample(den, noise, "ipndm", 6, lambdas=lam)
    with pytest.raises(ValueError, match=r"grid 'None' \(asked: 'logsnr_uniform'\)"):
        dode.sample(den, noise, "ddim", 6, grid="logsnr_uniform", lambdas=lam)
    other = dode.Denoiser(den.fn, den.schedule, "eps", name="another-model", dtype=torch.float64)
    with pytest.raises(ValueError, match="model 'gmm-eps' \\(asked: 'another-model'\\)"):
        dode.sample(other, noise, "ddim", 6, lambdas=lam)
    lam3 = dode.distill(den, make_noise(8), "deis", 6, K=2, order=3)
    with pytest.raises(ValueError, match="options"):
        dode.sample(den, noise, "deis", 6, lambdas=lam3, order=2)


def test_distill_bad_input(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(4)
    for bad_k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="K must be an integer >= 1"):
            dode.distill(den, noise, "ddim", 5, K=bad_k)
    with pytest.raises(ValueError, match="variant must be one of"):
        dode.distill(den, noise, "ddim", 5, variant="d-ode-3")
    with pytest.raises(ValueError, match="space must be one of"):
        dode.distill(den, noise, "ddim", 5, space="v")
    with pytest.raises(ValueError, match="fit must be one of"):
        dode.distill(den, noise, "ddim", 5, fit="adam")
    with pytest.raises(ValueError, match=r"stages must be one of \('per_time', 'per_stage'\), got 'each'"):
        dode.distill(den, noise, "ddim", 5, stages="each")
    with pytest.raises(ValueError, match="stages must be one of"):
        dode.Lambdas([0.1, 0.2], solver="ddim", nfe=2, grid=None, stages="all")
    with pytest.raises(ValueError, match="teacher must be"):
        dode.distill(den, noise, "ddim", 5, teacher="dpm_solver")


@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_stages_differ_only_where_two_stages_land_on_the_same_time(gmm, solver, nfe, options):
    """``per_time`` (default) and ``per_stage`` (the paper's) give the same lambdas for every solver whose
    stages land on distinct times; for Heun, ``per_time`` leaves each corrector without a lambda."""
    den = gmm.denoiser(SCHEDULES["edm"], "x0")
    noise = make_noise(32, seed=3)
    per_time = dode.distill(den, noise, solver, nfe, K=3, **options)
    per_stage = dode.distill(den, noise, solver, nfe, K=3, stages="per_stage", **options)
    assert per_time.stages == "per_time" and per_stage.stages == "per_stage"
    landing = make_plan(den.schedule, solver, nfe, None, options).landing_times
    shares_time = [k > 0 and landing[k] == landing[k - 1] for k in range(nfe)]
    assert np.all(np.isfinite(per_stage.values[1:]))  # data prediction: no lambda at the first evaluation
    for k in range(1, nfe):
        if shares_time[k]:
            assert np.isnan(per_time[k])
        else:
            assert np.isfinite(per_time[k])
    assert any(shares_time) == (solver == "edm")
    if solver != "edm":
        np.testing.assert_array_equal(per_time.values, per_stage.values)
    else:
        assert not np.allclose(per_time.values[2::2], per_stage.values[2::2])


def test_a_heun_corrector_lambda_reweights_the_trapezoid(gmm):
    """Why Heun's corrector gets no lambda by default: with ``per_stage``, lambda = -1 on every corrector
    (and 0 on the predictors) is exactly Euler on Heun's grid -- the corrector's lambda moves the trapezoid
    weights (1/2, 1/2) to ((1 - lambda)/2, (1 + lambda)/2), away from second order."""
    den = gmm.denoiser(SCHEDULES["edm"], "x0")
    noise = make_noise(6, seed=5)
    nfe = 9
    values = np.array([np.nan] + [-1.0 if k % 2 else 0.0 for k in range(1, nfe)])
    lam = dode.Lambdas(
        values, solver="edm", nfe=nfe, grid=dode.grids.grid_key(None), stages="per_stage", model=den.name
    )
    euler = dode.sample(den, noise, "ddim", (nfe + 1) // 2)
    torch.testing.assert_close(
        dode.sample(den, noise, "edm", nfe, lambdas=lam), euler, rtol=1e-12, atol=1e-12
    )
    assert not torch.allclose(dode.sample(den, noise, "edm", nfe), euler, atol=1e-3)
    # the same numbers with per_time never touch the correctors: plain Heun
    heun_rows = dode.Lambdas(values, solver="edm", nfe=nfe, grid=dode.grids.grid_key(None), model=den.name)
    torch.testing.assert_close(
        dode.sample(den, noise, "edm", nfe, lambdas=heun_rows), dode.sample(den, noise, "edm", nfe)
    )


def test_lambdas_saved_before_stages_existed_load_as_per_stage(tmp_path, gmm):
    den = gmm.denoiser(SCHEDULES["edm"], "x0")
    lam = dode.distill(den, make_noise(8), "edm", 5, K=2, stages="per_stage")
    ds = lam.to_dataset()
    del ds.attrs["stages"]
    ds.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    old = dode.Lambdas.load(tmp_path / "old.nc")
    assert old.stages == "per_stage"
    noise = make_noise(3)
    assert torch.equal(
        dode.sample(den, noise, "edm", 5, lambdas=old), dode.sample(den, noise, "edm", 5, lambdas=lam)
    )
