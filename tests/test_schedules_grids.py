import math

import numpy as np
import pytest
import torch

import dode
from dode.grids import GRIDS, make_grid, refine


def test_vp_matches_alphas_cumprod_at_integers():
    vp = dode.VPSchedule.linear(1e-4, 0.02, 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    ac = np.cumprod(1 - betas)
    t = torch.arange(0, 1000, 37, dtype=torch.float64)
    np.testing.assert_allclose(vp.alpha(t).numpy() ** 2, ac[t.long().numpy()], rtol=1e-13)
    np.testing.assert_allclose((vp.alpha(t) ** 2 + vp.sigma(t) ** 2).numpy(), 1.0, rtol=1e-14)


def test_vp_interpolates_log_alpha_linearly():
    vp = dode.VPSchedule.linear()
    la = vp.log_alpha(torch.tensor([10.0, 11.0, 10.25], dtype=torch.float64))
    assert float(la[2]) == pytest.approx(0.75 * float(la[0]) + 0.25 * float(la[1]), rel=1e-14)


@pytest.mark.parametrize(
    "sched", [dode.VPSchedule.linear(), dode.VPSchedule.cosine(T=4000), dode.EDMSchedule()]
)
def test_half_logsnr_inverse(sched):
    t = torch.linspace(sched.t_min, sched.t_max, 97, dtype=torch.float64)
    back = sched.t_from_half_logsnr(sched.half_logsnr(t))
    np.testing.assert_allclose(back.numpy(), t.numpy(), rtol=1e-9, atol=1e-9)


def test_cosine_schedule_is_clipped_and_decreasing():
    cos = dode.VPSchedule.cosine(T=4000)
    assert cos.T == 4000
    assert torch.all(torch.diff(cos.alphas_cumprod) < 0)


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="sigma_min"):
        dode.EDMSchedule(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        dode.VPSchedule([0.5, 0.9])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        dode.VPSchedule.linear().alpha(torch.tensor([1000.5]))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sched", [dode.VPSchedule.linear(), dode.EDMSchedule()], ids=["vp", "edm"])
def test_named_grids(grid, sched):
    times = make_grid(sched, grid, 10)
    assert len(times) == 11
    assert torch.all(times[1:] < times[:-1])
    assert float(times[0]) == sched.t_max
    if sched.ends_at_zero:  # EDM: sigma_max .. sigma_min, then 0
        assert float(times[-2]) == pytest.approx(sched.t_min) and float(times[-1]) == 0.0
    else:
        assert float(times[-1]) == sched.t_min


def test_edm_grid_is_karras_formula():
    sched = dode.EDMSchedule(0.002, 80.0, 7.0)
    n = 18
    i = np.arange(n)
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(make_grid(sched, "edm", n)[:-1].numpy(), expected, rtol=1e-12)


def test_logsnr_grid_is_uniform_in_half_logsnr():
    vp = dode.VPSchedule.linear()
    ell = vp.half_logsnr(make_grid(vp, "logsnr_uniform", 8)).numpy()
    np.testing.assert_allclose(np.diff(ell), np.diff(ell)[0], rtol=1e-9)


def test_explicit_grid_checks():
    vp = dode.VPSchedule.linear()
    assert torch.equal(
        make_grid(vp, torch.tensor([999.0, 500.0, 0.0]), 2), torch.tensor([999.0, 500.0, 0.0]).double()
    )
    with pytest.raises(ValueError, match="strictly decrease"):
        make_grid(vp, torch.tensor([0.0, 500.0, 999.0]), 2)
    with pytest.raises(ValueError, match="needs 4"):
        make_grid(vp, torch.tensor([999.0, 500.0, 0.0]), 3)
    with pytest.raises(ValueError, match="grid must be one of"):
        make_grid(vp, "cosine", 3)


@pytest.mark.parametrize("grid", [*GRIDS, None])
@pytest.mark.parametrize("sched", [dode.VPSchedule.linear(), dode.EDMSchedule()], ids=["vp", "edm"])
def test_refine_contains_every_original_time(grid, sched):
    coarse = make_grid(sched, grid, 5)
    fine = refine(sched, grid, coarse, 4)
    assert len(fine) == 5 * 4 + 1
    assert torch.all(fine[1:] < fine[:-1])
    assert torch.equal(fine[::4], coarse)


def test_refine_is_uniform_in_the_grid_variable():
    sched = dode.EDMSchedule()
    coarse = make_grid(sched, "edm", 4)[:-1]  # drop the final 0
    fine = refine(sched, "edm", coarse, 3)
    u = fine.numpy() ** (1 / 7)
    np.testing.assert_allclose(np.diff(u), np.diff(u)[0], rtol=1e-9)
    with pytest.raises(ValueError, match="K must be"):
        refine(sched, "edm", coarse, 0)


def test_point_half_logsnr_infinite_at_zero():
    from dode.solvers import Point

    p = Point.at(dode.EDMSchedule(), 0.0)
    assert p.sigma == 0 and p.half_logsnr == math.inf and p.sigma_hat == 0


def test_submodules_are_attributes_of_the_package():
    import importlib

    import dode

    for name in dode._SUBMODULES:
        assert getattr(dode, name) is importlib.import_module(f"dode.{name}")
    assert callable(dode.zoo.load) and "digits-eps" in dode.zoo.available()
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        dode.nonexistent  # noqa: B018
