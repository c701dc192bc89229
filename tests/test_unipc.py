"""dode's UniPC is diffusers' ``UniPCMultistepScheduler`` (both ``solver_type``, orders 1-3, with and without
``lower_order_final``), on a VP noise-prediction model and an EDM data-prediction model."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.denoiser import convert

diffusers = pytest.importorskip("diffusers")


def _betas(den):
    ac = den.schedule.alphas_cumprod.numpy()
    return 1.0 - ac / np.concatenate([[1.0], ac[:-1]])


@pytest.mark.parametrize("steps", [3, 5, 10, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_dode_unipc_is_diffusers_unipc_on_its_own_timesteps(
    gmm, steps, order, lower_order_final, solver_type
):
    """diffusers configured as the peers page configures it on a VP model (the model's betas, linspace
    timesteps, the last step to t = 0 where diffusers' ``sigma_min`` sits): the same samples to diffusers'
    float32 sigmas (measured: at most 6e-5 of the samples' scale, with the full-order last step, whose
    extrapolation amplifies the rounding of ``r = h_prev / h``; 2e-6 with the lowered one)."""
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    noise = make_noise(32, seed=2)
    options = {"order": order, "solver_type": solver_type, "lower_order_final": lower_order_final}
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=_betas(den),
        solver_type=solver_type,
        solver_order=order,
        lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min",
    )
    scheduler.set_timesteps(steps)
    grid = torch.tensor([*scheduler.timesteps.tolist(), 0.0], dtype=torch.float64)
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(den(x, float(t)), t, x).prev_sample
    y = dode.sample(den, noise, "unipc", steps, grid=grid, **options)
    scale = max(float(y.abs().max()), 1.0)
    assert float((x - y).abs().max()) < 1e-4 * scale
    if steps > 10:  # there the two B(h) differ by less than diffusers' rounding: the float64 test decides
        return
    # not by accident: the other B(h), or DPM-Solver++ on the same grid, is far off
    other_type = {"bh1": "bh2", "bh2": "bh1"}[solver_type]
    other = dode.sample(den, noise, "unipc", steps, grid=grid, **{**options, "solver_type": other_type})
    assert float((x - other).abs().max()) > 1e-3
    dpmpp = dode.sample(den, noise, "dpm_solver++", steps, grid=grid)
    assert float((x - dpmpp).abs().max()) > 1e-3


def _diffusers_on_dode_sigmas(den, noise, grid, **config):
    """diffusers' UniPC with its sigmas set to the grid's ``sigma_hat`` in float64, driven on dode's model.

    diffusers' state is the VP one, ``x / sqrt(1 + sigma_hat^2)`` in dode's rescaled variables (its
    ``_sigma_to_alpha_sigma_t``); the network gets dode's state and returns its data prediction
    (``prediction_type="sample"``)."""
    sched = den.schedule
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="sample", **config)
    scheduler.set_timesteps(len(grid) - 1)
    sigma_hat = sched.sigma_hat(grid)
    scheduler.sigmas = sigma_hat.clone()
    alpha, sigma = sched.alpha(grid), sched.sigma(grid)
    to_dode = alpha * torch.sqrt(1 + sigma_hat**2)  # dode's state over diffusers'
    x = sched.initial_state(noise, float(grid[0])) / to_dode[0]
    for i, t in enumerate(scheduler.timesteps):
        state = x * to_dode[i]
        d = convert(den(state, float(grid[i])), state, float(alpha[i]), float(sigma[i]), den.prediction, "x0")
        x = scheduler.step(d, t, x).prev_sample
    return x * to_dode[-1]


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
@pytest.mark.parametrize("steps", [3, 6, 10])
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_dode_unipc_is_diffusers_unipc_in_float64(
    gmm, schedule_name, steps, order, lower_order_final, solver_type
):
    """On the same sigmas in float64 the two agree to rounding (1e-10), on the VP noise-prediction model and
    on the EDM data-prediction model (the model's own EDM grid). diffusers cannot step into sigma = 0 with
    ``bh1`` (``B(h) = -h`` is infinite there) or with a last step above first order (``r = 0``): both return
    NaN or fail, so there the EDM grid ends at ``sigma_min`` (dode steps into sigma = 0 with first order,
    the limit of both, checked against diffusers' lowered last step in the next test)."""
    prediction = {"vp": "eps", "edm": "x0"}[schedule_name]
    den = gmm.denoiser(SCHEDULES[schedule_name], prediction)
    noise = make_noise(16, seed=7)
    grid = dode.make_grid(den.schedule, dode.grids.default_grid(den.schedule), steps)
    if den.schedule.ends_at_zero and (solver_type == "bh1" or not lower_order_final):
        grid = grid[:-1]
    options = {"solver_type": solver_type, "lower_order_final": lower_order_final}
    x = _diffusers_on_dode_sigmas(den, noise, grid, solver_order=order, **options)
    y = dode.sample(den, noise, "unipc", len(grid) - 1, grid=grid, order=order, **options)
    assert float((x - y).abs().max()) < 1e-10 * max(float(y.abs().max()), 1.0)


def test_a_step_into_sigma_zero_is_first_order(gmm):
    """On EDM schedules the last step ends at sigma = 0, where dode's UniPC takes the first-order step
    ``x_0 = D`` whatever the options; diffusers with ``bh2`` and its lowered last step does the same."""
    den = gmm.denoiser(SCHEDULES["edm"], "x0")
    noise = make_noise(16, seed=8)
    plan = dode.make_plan(den.schedule, "unipc", 6, options={"order": 3, "lower_order_final": False})
    assert plan.steps[-1].t.sigma == 0 and plan.steps[-1].weights == (1.0,)
    assert len(plan.steps[-2].weights) == 3
    grid = dode.make_grid(den.schedule, "edm", 6)
    x = _diffusers_on_dode_sigmas(den, noise, grid, solver_order=3, solver_type="bh2", lower_order_final=True)
    y = dode.sample(den, noise, "unipc", 6, order=3, lower_order_final=True)
    assert float((x - y).abs().max()) < 1e-10 * max(float(y.abs().max()), 1.0)


def test_unipc_options_are_checked(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    with pytest.raises(ValueError, match=r"solver_type must be one of \('bh1', 'bh2'\)"):
        dode.sample(den, make_noise(2), "unipc", 4, solver_type="bh3")
    with pytest.raises(ValueError, match="order must be one of 1, 2, 3 for solver 'unipc'"):
        dode.sample(den, make_noise(2), "unipc", 4, order=4)
    with pytest.raises(ValueError, match="solver must be one of .*'unipc'"):
        dode.sample(den, make_noise(2), "unipcc", 4)


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
def test_d_unipc_fits_through_the_one_hook(gmm, schedule_name):
    """The D-ODE transform acts on the output at the corrector's point: one finite lambda per evaluation, and
    a lambda moves the state its evaluation lands on (that D-UniPC beats UniPC out of sample:
    tests/test_distill.py)."""
    den = gmm.denoiser(SCHEDULES[schedule_name], "eps")
    lam = dode.distill(den, make_noise(64, seed=12), "unipc", 5, K=4)
    assert lam.values.shape == (5, 1) and np.isfinite(lam.values).all()
    noise = make_noise(8, seed=13)
    one = dode.Lambdas.constant_value(0.3)
    traj = dode.sample(den, noise, "unipc", 5, lambdas=one, trajectory=True)
    base = dode.sample(den, noise, "unipc", 5, trajectory=True)
    assert not torch.equal(traj.states[1], base.states[1])
