"""dode.reference's plain loops (D-DDIM, D-Heun written from the method chapter) equal the machinery."""

import math

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.distill import teacher_targets
from dode.reference import d_ddim, d_heun

CLOSE = {"rtol": 1e-12, "atol": 1e-12}  # float64 rounding of differently ordered but equal formulas

DDIM_CASES = [("vp", "eps"), ("edm", "x0"), ("vp", "x0"), ("edm", "eps")]


def _fit(den, solver, nfe, stages="per_time"):
    fit_noise = make_noise(16, seed=3)
    lam = dode.distill(den, fit_noise, solver, nfe, K=4, stages=stages)
    plan = dode.make_plan(den.schedule, solver, nfe)
    _, targets = teacher_targets(den, fit_noise, plan, 4)
    return lam, plan, fit_noise, targets


@pytest.mark.parametrize("schedule_name,prediction", DDIM_CASES)
def test_d_ddim_equals_the_machinery(gmm, schedule_name, prediction):
    den = gmm.denoiser(SCHEDULES[schedule_name], prediction)
    lam, plan, fit_noise, targets = _fit(den, "ddim", 6)
    noise = make_noise(5)
    x_base, none = d_ddim(den, noise, plan.times)
    torch.testing.assert_close(x_base, dode.sample(den, noise, "ddim", 6), **CLOSE)
    assert all(math.isnan(v) for v in none)
    x, used = d_ddim(den, noise, plan.times, lam)
    torch.testing.assert_close(x, dode.sample(den, noise, "ddim", 6, lambdas=lam), **CLOSE)
    np.testing.assert_array_equal(np.isnan(used), np.isnan(lam.values[:, 0]))
    assert not torch.allclose(x, x_base)  # the lambdas do act
    # the plain closed-form fit gives distill's lambdas
    _, fitted = d_ddim(den, fit_noise, plan.times, targets=targets)
    np.testing.assert_allclose(fitted, lam.values[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("stages", ["per_time", "per_stage"])
def test_d_heun_equals_the_machinery(gmm, prediction, stages):
    den = gmm.denoiser(SCHEDULES["edm"], prediction)
    lam, plan, fit_noise, targets = _fit(den, "edm", 7, stages)
    noise = make_noise(5)
    x_base, _ = d_heun(den, noise, plan.times, stages=stages)
    torch.testing.assert_close(x_base, dode.sample(den, noise, "edm", 7), **CLOSE)
    x, used = d_heun(den, noise, plan.times, lam, stages=stages)
    # a noise-prediction model's last lambda (into sigma = 0) is huge (~5e4 here: d_k - d_prev is tiny there)
    # and multiplies the rounding differences by as much
    scale = max(1.0, float(np.nanmax(np.abs(lam.values))))
    close = {key: tol * scale for key, tol in CLOSE.items()}
    torch.testing.assert_close(x, dode.sample(den, noise, "edm", 7, lambdas=lam), **close)
    np.testing.assert_array_equal(np.isnan(used), np.isnan(lam.values[:, 0]))
    assert not torch.allclose(x, x_base)
    _, fitted = d_heun(den, fit_noise, plan.times, stages=stages, targets=targets)
    np.testing.assert_allclose(fitted, lam.values[:, 0], rtol=1e-10, atol=1e-12)
    # per_time leaves every corrector (odd evaluations) without a lambda; per_stage gives each one
    correctors = np.isnan(lam.values[1:-1:2, 0])
    assert correctors.all() if stages == "per_time" else not correctors.any()


def test_d_heun_refuses_a_vp_schedule(gmm):
    with pytest.raises(ValueError, match="d_heun needs an EDMSchedule"):
        d_heun(gmm.denoiser(SCHEDULES["vp"], "eps"), make_noise(2), [999.0, 0.0])
    with pytest.raises(ValueError, match=r"stages must be one of \('per_time', 'per_stage'\)"):
        d_heun(gmm.denoiser(SCHEDULES["edm"], "x0"), make_noise(2), [80.0, 0.0], stages="all")
