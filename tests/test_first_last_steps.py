"""Each base solver's first and last steps as their authors ship them (book/method.md, first and last steps).

Where diffusers implements the same algorithm, dode's samples equal diffusers' on the same timesteps to
diffusers' float32 coefficients: singlestep DPM-Solver-1/2 (``DPMSolverSinglestepScheduler``,
``algorithm_type="dpmsolver"``) and iPNDM (``IPNDMScheduler``). Where it does not (DPM-Solver-3: diffusers'
second stage is the midpoint formula, the authors' is Eq. 31; DEIS: diffusers' is the log-rho AB, not tAB),
a plain loop written from the method chapter's rules -- not from dode's code -- builds the times, orders and
coefficients itself.
"""

import math
import re

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode

diffusers = pytest.importorskip("diffusers")


@pytest.fixture
def vp_eps(gmm):
    return gmm.denoiser(SCHEDULES["vp"], "eps")


def _betas(den):
    ac = den.schedule.alphas_cumprod.numpy()
    return 1.0 - ac / np.concatenate([[1.0], ac[:-1]])


# ------------------------------------------------------------------------------------------ DPM-Solver


def _official_orders(nfe, order):
    """The authors' singlestep composition, as the method chapter states it."""
    if order == 1:
        return [1] * nfe
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    k = nfe // 3 + 1
    return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("nfe", [3, 4, 5, 6, 10, 20])
def test_dode_dpm_solver_is_diffusers_dpm_solver_singlestep_on_the_same_timesteps(vp_eps, order, nfe):
    """Same network, noise and timesteps (diffusers' linspace times, then t = 0, where diffusers' last sigma
    ``sigma_min`` sits): the stages land on the grid points, as in diffusers. diffusers' order list equals
    the authors' composition with ``lower_order_final=False`` for even NFEs of order 2 (with True it ends
    with two first-order steps) and with True otherwise (it forces True on odd NFEs)."""
    scheduler = diffusers.DPMSolverSinglestepScheduler(
        num_train_timesteps=1000,
        trained_betas=_betas(vp_eps),
        algorithm_type="dpmsolver",
        solver_order=order,
        final_sigmas_type="sigma_min",
        lower_order_final=not (order == 2 and nfe % 2 == 0),
    )
    scheduler.set_timesteps(nfe)
    noise = make_noise(32, seed=2)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(vp_eps(x, float(t)), t, x).prev_sample
    grid = torch.tensor([*scheduler.timesteps.tolist(), 0.0], dtype=torch.float64)
    plan = dode.make_plan(vp_eps.schedule, "dpm_solver", nfe, grid, {"order": order})
    assert [st.order for st in plan.steps] == _official_orders(nfe, order)
    y = dode.sample(vp_eps, noise, "dpm_solver", nfe, grid=grid, order=order)
    assert float((x - y).abs().max()) < 1e-3
    if order == 2:  # the placement matters: the paper's fixed logSNR fractions give other samples
        other = dode.sample(vp_eps, noise, "dpm_solver", nfe, order=order, stage_times="logsnr")
        assert float((x - other).abs().max()) > 1e-2


def _book_dpm_solver(den, noise, nfe, order, grid, stage_times):
    """Singlestep DPM-Solver from the method chapter: the composition, the stage times, Eq. 26-32 with
    r_i = (ell_si - ell_s) / h."""
    sched = den.schedule
    orders = _official_orders(nfe, order)
    if sched.ends_at_zero and orders[-1] != 1:
        orders = _official_orders(nfe - 1, order) + [1]

    def coefs(t):
        a, s = float(sched.alpha(t)), float(sched.sigma(t))
        return a, s, (math.inf if s == 0 else math.log(a / s))

    def eps(x, t):
        d = den(x, t)
        a, s, _ = coefs(t)
        return d if den.prediction == "eps" else (x - a * d) / s

    times = dode.make_grid(sched, grid, nfe if stage_times == "grid" else len(orders)).tolist()
    x, k = sched.initial_state(noise, times[0]), 0
    for order_i in orders:
        s = times[k]
        if stage_times == "grid":  # every stage on the next grid point
            stage = times[k + 1 : k + order_i + 1]
            k += order_i
        else:  # fixed fractions j / order of the step's half-logSNR interval
            l_s, l_t = coefs(s)[2], coefs(times[k + 1])[2]
            inner = [
                float(sched.t_from_half_logsnr(torch.tensor(l_s + j / order_i * (l_t - l_s))))
                for j in range(1, order_i)
            ]
            stage = [*inner, times[k + 1]]
            k += 1
        t = stage[-1]
        (a_s, _, l_s), (a_t, sig_t, l_t) = coefs(s), coefs(t)
        e_s = eps(x, s)
        if order_i == 1:  # DDIM, Euler in sigma_hat (finite into sigma = 0)
            x = (a_t / a_s) * x + a_t * (sig_t / a_t - coefs(s)[1] / a_s) * e_s
            continue
        h = l_t - l_s
        a_1, sig_1, l_1 = coefs(stage[0])
        r1 = (l_1 - l_s) / h
        u1 = (a_1 / a_s) * x - sig_1 * math.expm1(r1 * h) * e_s
        if order_i == 2:
            x = (
                (a_t / a_s) * x
                - sig_t * math.expm1(h) * e_s
                - sig_t / (2 * r1) * math.expm1(h) * (eps(u1, stage[0]) - e_s)
            )
            continue
        a_2, sig_2, l_2 = coefs(stage[1])
        r2 = (l_2 - l_s) / h
        u2 = (
            (a_2 / a_s) * x
            - sig_2 * math.expm1(r2 * h) * e_s
            - sig_2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps(u1, stage[0]) - e_s)
        )
        x = (
            (a_t / a_s) * x
            - sig_t * math.expm1(h) * e_s
            - (sig_t / r2) * (math.expm1(h) / h - 1) * (eps(u2, stage[1]) - e_s)
        )
    return x


@pytest.mark.parametrize("stage_times", ["grid", "logsnr"])
@pytest.mark.parametrize("nfe", [3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize(
    "schedule_name,prediction,grid", [("vp", "eps", "time_uniform"), ("edm", "x0", "edm")]
)
def test_dpm_solver_3_is_the_book_rule(gmm, schedule_name, prediction, grid, nfe, stage_times):
    den = gmm.denoiser(SCHEDULES[schedule_name], prediction)
    noise = make_noise(6)
    expected = _book_dpm_solver(den, noise, nfe, 3, grid, stage_times)
    got = dode.sample(den, noise, "dpm_solver", nfe, grid=grid, order=3, stage_times=stage_times)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_dpm_solver_default_stages_are_the_grid_points(vp_eps):
    """NFE 10, order 3: steps of order 3, 3, 3, 1 whose stages land on the ten points of the NFE grid, so
    the last step is one grid interval (with ``logsnr``, a quarter of the time range)."""
    plan = dode.make_plan(vp_eps.schedule, "dpm_solver", 10, None, {"order": 3})
    assert plan.options == {"order": 3, "stage_times": "grid"}
    assert [st.order for st in plan.steps] == [3, 3, 3, 1]
    grid = dode.make_grid(vp_eps.schedule, "time_uniform", 10)
    assert plan.landing_times == grid[1:].tolist() and plan.start.t == float(grid[0])
    assert plan.steps[-1].s.t == float(grid[-2])
    fixed = dode.make_plan(vp_eps.schedule, "dpm_solver", 10, None, {"order": 3, "stage_times": "logsnr"})
    assert fixed.steps[-1].s.t == float(dode.make_grid(vp_eps.schedule, "time_uniform", 4)[-2])


def test_dpm_solver_takes_its_nfe_from_an_explicit_grid_of_stage_times(vp_eps):
    grid = dode.make_grid(vp_eps.schedule, "logsnr_uniform", 7)
    plan = dode.make_plan(vp_eps.schedule, "dpm_solver", None, grid, {"order": 3})
    assert plan.nfe == 7 and plan.landing_times == grid[1:].tolist()
    with pytest.raises(ValueError, match="stage_times='logsnr' composes its steps from the NFE"):
        dode.make_plan(vp_eps.schedule, "dpm_solver", None, grid, {"order": 3, "stage_times": "logsnr"})


def test_stage_times_must_be_a_known_placement(vp_eps):
    with pytest.raises(
        ValueError, match=r"stage_times must be one of \('grid', 'logsnr'\) for solver 'dpm_solver'"
    ):
        dode.sample(vp_eps, make_noise(2), "dpm_solver", 6, stage_times="uniform")


# ----------------------------------------------------------------------------------------------- iPNDM


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 5, 10, 20])
def test_dode_ipndm_is_diffusers_ipndm_on_the_same_timesteps(vp_eps, nfe):
    """diffusers' IPNDMScheduler combines ``eps = sigma x + alpha v`` with the same fixed Adams-Bashforth
    weights, warm start 1, 2, 3, 4 outputs and nothing special at the last step, and takes DDIM's update (Euler
    in sigma_hat, as dode): driven on dode's grid (its ``trained_betas`` are the grid's sigmas) with the
    network's v-prediction, the samples agree to float32."""
    sched = vp_eps.schedule
    grid = dode.make_grid(sched, "time_uniform", nfe)
    scheduler = diffusers.IPNDMScheduler(trained_betas=sched.sigma(grid).tolist())
    scheduler.set_timesteps(nfe)
    noise = make_noise(32, seed=2)
    x = noise.clone()
    for t_model, t in zip(grid.tolist(), scheduler.timesteps):
        alpha, sigma = float(sched.alpha(t_model)), float(sched.sigma(t_model))
        x = scheduler.step((vp_eps(x, t_model) - sigma * x) / alpha, t, x).prev_sample
    assert float((x - dode.sample(vp_eps, noise, "ipndm", nfe)).abs().max()) < 1e-3


# ------------------------------------------------------------------------------------------------ DEIS


def _book_deis_coefficients(sched, s, t, nodes, n=200_001):
    """``C_j = -alpha_t * integral_{ell_s}^{ell_t} e^(-ell) L_j(t(ell)) d ell`` (Eq. 33-34) by the trapezoid
    rule in ell, the Lagrange basis in model time through ``nodes`` (newest first)."""
    ell = torch.linspace(float(sched.half_logsnr(s)), float(sched.half_logsnr(t)), n, dtype=torch.float64)
    tau = sched.t_from_half_logsnr(ell).numpy()
    ell = ell.numpy()
    out = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(tau)
        for m, other in enumerate(nodes):
            if m != j:
                basis *= (tau - other) / (node - other)
        out.append(-float(sched.alpha(t)) * np.trapezoid(np.exp(-ell) * basis, ell))
    return out


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_warm_start_and_last_step_are_the_official_ones(gmm, order):
    """tAB-DEIS as its authors ship it: step i interpolates through the last min(i, r) + 1 evaluation times
    (DDIM first, then orders 1, 2, ...), the last step through r + 1 like every other; the coefficients are
    the exponential integrator of the Lagrange basis (computed here by a different quadrature), and the
    samples follow from them."""
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    sched, nfe = den.schedule, 6
    plan = dode.make_plan(sched, "deis", nfe, None, {"order": order})
    times = dode.make_grid(sched, "time_uniform", nfe).tolist()
    noise = make_noise(5)
    x, history = noise.clone(), []
    for i in range(nfe):
        s, t = times[i], times[i + 1]
        nodes = [times[i - j] for j in range(min(i, order) + 1)]
        coef = _book_deis_coefficients(sched, s, t, nodes)
        ddim = float(sched.alpha(t)) * (float(sched.sigma_hat(t)) - float(sched.sigma_hat(s)))
        st = plan.steps[i]
        assert len(st.weights) == len(nodes)
        np.testing.assert_allclose(np.array(st.weights) * ddim, coef, rtol=1e-7, atol=1e-9)
        history.insert(0, den(x, s))
        x = (float(sched.alpha(t)) / float(sched.alpha(s))) * x + sum(c * e for c, e in zip(coef, history))
    torch.testing.assert_close(dode.sample(den, noise, "deis", nfe, order=order), x, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- lower_order_final (multistep)

_AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _diffusers_deis_orders(steps, solver_order, lower_order_final):
    """Which update (1, 2 or 3 outputs) diffusers' ``DEISMultistepScheduler`` takes at each step."""
    scheduler = diffusers.DEISMultistepScheduler(
        solver_order=solver_order, lower_order_final=lower_order_final
    )
    scheduler.set_timesteps(steps)
    taken = []
    for n, name in enumerate(
        (
            "deis_first_order_update",
            "multistep_deis_second_order_update",
            "multistep_deis_third_order_update",
        ),
        start=1,
    ):
        method = getattr(scheduler, name)

        def record(*args, _n=n, _method=method, **kwargs):
            taken.append(_n)
            return _method(*args, **kwargs)

        setattr(scheduler, name, record)
    x = torch.zeros(1, 3, dtype=torch.float32)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
    return taken


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 14, 15, 16])
def test_deis_lower_order_final_lowers_the_steps_diffusers_lowers(vp_eps, steps, order, lower_order_final):
    """dode's DEIS of order r interpolates through r + 1 outputs, diffusers' ``solver_order`` counts outputs:
    step by step the two take as many outputs, warm start and (below 15 steps) lowered final steps alike.
    (diffusers' DEIS interpolates in log rho, not in t: the rule of the orders is compared, not the samples.)"""
    plan = dode.make_plan(
        vp_eps.schedule, "deis", steps, None, {"order": order, "lower_order_final": lower_order_final}
    )
    expected = _diffusers_deis_orders(steps, order + 1, lower_order_final)
    assert [len(st.weights) for st in plan.steps] == expected


@pytest.mark.parametrize("steps", [3, 4, 5, 8, 14, 15])
def test_lower_order_final_mirrors_the_warm_start(vp_eps, steps):
    """iPNDM (4 outputs) and DEIS-3 (4 nodes): below 15 steps the k-th step from the end combines at most
    k outputs (the last one is DDIM's update), as UniPC's ``min(order, steps left)``; from 15 steps on, and
    by default, the last step combines as many as the steps before it."""
    for solver, options in (("ipndm", {}), ("deis", {"order": 3})):
        low = dode.make_plan(vp_eps.schedule, solver, steps, None, {**options, "lower_order_final": True})
        full = dode.make_plan(vp_eps.schedule, solver, steps, None, options)
        assert full.options["lower_order_final"] is False
        warm = [min(4, i + 1) for i in range(steps)]
        assert [len(st.weights) for st in full.steps] == warm
        expected = [min(w, steps - i) for i, w in enumerate(warm)] if steps < 15 else warm
        assert [len(st.weights) for st in low.steps] == expected
        if steps < 15:
            assert low.steps[-1].weights == (1.0,)


@pytest.mark.parametrize("nfe", [3, 5, 8])
def test_ipndm_lower_order_final_is_the_book_rule(vp_eps, nfe):
    """A plain loop of the method chapter's rule: DDIM's update fed with the Adams-Bashforth combination of
    ``min(4, i + 1, N - i)`` outputs at step i."""
    sched = vp_eps.schedule
    times = dode.make_grid(sched, "time_uniform", nfe).tolist()
    noise = make_noise(5)
    x, history = noise.clone(), []
    for i in range(nfe):
        s, t = times[i], times[i + 1]
        history.insert(0, vp_eps(x, s))
        eps = sum(w * e for w, e in zip(_AB[min(4, i + 1, nfe - i)], history))
        x = (float(sched.alpha(t)) / float(sched.alpha(s))) * x + float(sched.alpha(t)) * (
            float(sched.sigma_hat(t)) - float(sched.sigma_hat(s))
        ) * eps
    got = dode.sample(vp_eps, noise, "ipndm", nfe, lower_order_final=True)
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)
    assert float((got - dode.sample(vp_eps, noise, "ipndm", nfe)).abs().max()) > 1e-4


@pytest.mark.parametrize("order", [2, 3])
def test_deis_lower_order_final_is_the_book_rule(gmm, order):
    """As the warm-start test above, with step i interpolating through min(i, r, N - 1 - i) + 1 outputs."""
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    sched, nfe = den.schedule, 6
    times = dode.make_grid(sched, "time_uniform", nfe).tolist()
    noise = make_noise(5)
    x, history = noise.clone(), []
    for i in range(nfe):
        s, t = times[i], times[i + 1]
        nodes = [times[i - j] for j in range(min(i, order, nfe - 1 - i) + 1)]
        coef = _book_deis_coefficients(sched, s, t, nodes)
        history.insert(0, den(x, s))
        x = (float(sched.alpha(t)) / float(sched.alpha(s))) * x + sum(c * e for c, e in zip(coef, history))
    got = dode.sample(den, noise, "deis", nfe, order=order, lower_order_final=True)
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["ipndm", "deis", "dpm_solver++"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_lower_order_final_must_be_true_or_false(vp_eps, solver, value):
    with pytest.raises(
        ValueError, match=re.escape(f"lower_order_final must be True or False for solver '{solver}'")
    ):
        dode.make_plan(vp_eps.schedule, solver, 5, None, {"lower_order_final": value})


def test_solvers_without_lower_order_final_refuse_it(vp_eps):
    with pytest.raises(
        ValueError, match=r"solver 'ddim' takes options none, got unknown \['lower_order_final'\]"
    ):
        dode.make_plan(vp_eps.schedule, "ddim", 5, None, {"lower_order_final": True})
