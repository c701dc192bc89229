"""GITS's time grid fitted to the teacher (dode.gits), on the exact Gaussian-mixture test bed."""

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.gits import cheapest_path, fit_grid

FIT_SEED, EVAL_SEED = 21, 22  # the fitting noise and the evaluation noise: different streams


def _fit(den, nfe, solver="ddim", **options):
    return fit_grid(den, make_noise(128, seed=FIT_SEED), nfe, solver, fine=40, K=3, seed=FIT_SEED, **options)


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
@pytest.mark.parametrize(("solver", "nfe", "options"), [("ddim", 4, {}), ("edm", 5, {}), ("unipc", 6, {})])
def test_the_fitted_grid_is_monotone_and_spans_the_model(gmm, schedule_name, solver, nfe, options):
    """It starts at t_max, ends at the model's end time (t_min; 0 on EDM schedules), strictly decreases, has
    the intervals the solver's plan needs, and records its cost."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, "eps")
    grid = _fit(den, nfe, solver, **options)
    times = grid.times
    assert float(times[0]) == sched.t_max
    assert float(times[-1]) == (0.0 if sched.ends_at_zero else sched.t_min)
    assert torch.all(times[1:] < times[:-1])
    named = dode.make_plan(sched, solver, nfe, None, options).times
    assert len(times) == len(named)
    assert grid.info["network_evaluations"] == 40 * 3 + 40 and grid.info["seconds"] > 0
    assert grid.info["samples"] == 128 and grid.info["seed"] == FIT_SEED
    plan = dode.make_plan(sched, solver, nfe, grid, options)
    torch.testing.assert_close(plan.times, times, rtol=0, atol=0)


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
@pytest.mark.parametrize("nfe", [3, 4, 5, 6])
def test_the_fitted_grid_beats_the_default_grid_for_ddim_out_of_sample(gmm, schedule_name, nfe):
    """Fitted on one batch, measured on another (disjoint streams): DDIM on the GITS grid lands closer to the
    exact ODE solution than on the model's default grid (time-uniform on VP, EDM's rho = 7 on EDM) and on the
    logSNR grid. Measured: 20-50 % closer at NFE 3-6."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, "eps")
    fresh = make_noise(400, seed=EVAL_SEED)
    assert not torch.equal(fresh[:128], make_noise(128, seed=FIT_SEED))
    exact = gmm.reference(fresh, sched, sched.t_max, 0.0 if sched.ends_at_zero else sched.t_min)

    def distance(grid):
        return float((dode.sample(den, fresh, "ddim", nfe, grid=grid) - exact).norm(dim=1).mean())

    fitted = distance(_fit(den, nfe))
    for named in (None, "logsnr_uniform"):
        assert fitted < 0.9 * distance(named), (named, fitted, distance(named))


def test_cheapest_path_is_the_brute_force_minimum():
    rng = np.random.default_rng(0)
    n = 8
    cost = np.triu(
        rng.uniform(0.1, 1.0, (n, n)) * np.subtract.outer(np.arange(n), np.arange(n)) ** 2 + 0.3, 1
    )
    cost[np.tril_indices(n)] = np.inf
    for steps in range(1, n):
        path, total = cheapest_path(cost, steps)
        brute = min(
            sum(cost[a, b] for a, b in itertools.pairwise((0, *inner, n - 1)))
            for inner in itertools.combinations(range(1, n - 1), steps - 1)
        )
        assert len(path) == steps + 1 and path[0] == 0 and path[-1] == n - 1
        assert (
            total
            == pytest.approx(brute)
            == pytest.approx(sum(cost[a, b] for a, b in itertools.pairwise(path)))
        )
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 7\]"):
        cheapest_path(cost, 8)


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
def test_fitted_grid_plus_d_ode(gmm, schedule_name):
    """The D-solver on the fitted grid: distilled there (its teacher refines the fitted grid), the lambdas
    remember the grid and are refused on another one, and D-DDIM on the fitted grid beats DDIM on it on
    fresh noise (closer to the teacher)."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, "eps")
    grid = _fit(den, 5)
    lam = dode.distill(den, make_noise(128, seed=FIT_SEED), "ddim", 5, K=10, grid=grid)
    assert json.loads(lam.grid) == grid.times.tolist()
    fresh = make_noise(256, seed=EVAL_SEED)
    exact = gmm.reference(fresh, sched, sched.t_max, 0.0 if sched.ends_at_zero else sched.t_min)
    base = float((dode.sample(den, fresh, "ddim", 5, grid=grid) - exact).norm(dim=1).mean())
    d_ode = float((dode.sample(den, fresh, "ddim", 5, grid=grid, lambdas=lam) - exact).norm(dim=1).mean())
    assert d_ode < base
    with pytest.raises(ValueError, match="these lambdas were fitted for grid"):
        dode.sample(den, fresh, "ddim", 5, lambdas=lam)


def test_fitted_grid_errors(gmm):
    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    grid = _fit(den, 4)
    with pytest.raises(ValueError, match="has 4 intervals but this solver/NFE needs 6"):
        dode.sample(den, make_noise(2), "ddim", 6, grid=grid)
    with pytest.raises(ValueError, match="was fitted on schedule"):
        dode.sample(gmm.denoiser(SCHEDULES["edm"], "eps"), make_noise(2), "ddim", 4, grid=grid)
    with pytest.raises(ValueError, match="grid 'gits' is fitted to a model: pass the FittedGrid"):
        dode.sample(den, make_noise(2), "ddim", 4, grid="gits")
    with pytest.raises(
        ValueError, match=r"grid must be one of .*'time_uniform'.*FittedGrid \(fitted: \['gits'\]"
    ):
        dode.sample(den, make_noise(2), "ddim", 4, grid="gitz")
    with pytest.raises(ValueError, match="fine must be at least the grid's 4 intervals, got 3"):
        fit_grid(den, make_noise(8), 4, fine=3)
    with pytest.raises(ValueError, match="K must be an integer >= 1"):
        fit_grid(den, make_noise(8), 4, K=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        fit_grid(den, make_noise(8), 4, "nope")


def test_the_peers_page_names_the_fitted_grid(gmm):
    """``dode:<label>:gits:<method>`` samplers run wherever the solver's default grid does; the page calls the
    grid by its name."""
    from dode.companion import peers

    den = gmm.denoiser(SCHEDULES["vp"], "eps")
    p = peers.parse_sampler("dode:unipc_bh2:gits:d-ode")
    assert peers._runs(den, p, 4) and not peers._runs(den, peers.parse_sampler("dode:edm:gits:base"), 4)
    assert peers.sampler_label("dode:deis2_lof:gits:d-ode") == "D-DEIS-2-LOF, GITS grid"
