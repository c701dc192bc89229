"""The D-ODE transform, exactly, for every solver, prediction type, variant and stage setting.

From a recorded trajectory (the raw network outputs and the states they were evaluated at) a plain loop
rebuilds each corrected estimate with the method chapter's rules and compares it with what the machinery
applied:

* ``d_k`` is the raw output in the transform's prediction type, or for a multistep solver its combined
  estimate (iPNDM's Adams-Bashforth ``eps'``, DEIS's polynomial, DPM-Solver++'s ``D``);
* ``d_prev`` is the previous estimate in evaluation order (singlestep solvers: the previous stage; Heun: the
  corrector's output); at the first evaluation the initial noise for noise prediction, none for data
  prediction; ``d-ode-2``'s second previous output likewise;
* ``d-ode``: ``d + l (d - d_prev)``; ``d-ode-2``: ``d + l1 (d - d_prev) + l2 (d - d_prev2)``;
  ``sep``: ``a d + b d_prev``; ``all``: ``sum_j w_j d_j`` over this and every earlier real estimate;
* Heun's corrector carries no lambda with ``stages="per_time"``.

Then every recorded state is checked to be the solver's own update (written out here from the method
chapter) applied to the recorded corrected estimates, and the first fitted lambda is checked against its
closed form ``<r, v> / <v, v>`` computed independently.
"""

import math

import numpy as np
import pytest
import torch
from conftest import SCHEDULES, make_noise

import dode
from dode.denoiser import convert
from dode.distill import teacher_targets

RUNS = [
    ("ddim", 5, {}),
    ("ipndm", 6, {}),
    ("deis", 6, {"order": 1}),
    ("deis", 6, {"order": 2}),
    ("deis", 6, {"order": 3}),
    ("dpm_solver", 4, {"order": 1}),
    ("dpm_solver", 6, {"order": 2}),
    ("dpm_solver", 7, {"order": 3}),
    ("dpm_solver++", 6, {}),
    ("edm", 7, {}),
]
CASES = [("vp", "eps"), ("edm", "x0"), ("vp", "x0")]
IPNDM = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}
SOLVER_SPACE = {"dpm_solver++": "x0"}  # the prediction type a solver's combination and update use (else eps)


def _ell(sched, t):
    return float(sched.half_logsnr(t))


def _combination_weights(plan, sched, k):
    """A multistep solver's weights at evaluation k (newest first), or None for the others."""
    solver = plan.solver
    if solver == "ipndm":
        return IPNDM[min(k + 1, 4)]
    if (
        solver == "deis"
    ):  # Lagrange-basis means: taken from the plan (their accuracy is the convergence test's)
        return list(plan.steps[k].weights)
    if solver == "dpm_solver++":
        times = plan.times.tolist()
        # first order on the first step, into sigma = 0, and (lower_order_final, the default, as the
        # authors' code and diffusers) on the last step of a run of fewer than 15 steps
        last = k == len(plan.steps) - 1 and plan.options["lower_order_final"] and len(plan.steps) < 15
        if k == 0 or float(sched.sigma(times[k + 1])) == 0 or last:
            return [1.0]
        h_prev = _ell(sched, times[k]) - _ell(sched, times[k - 1])
        r = h_prev / (_ell(sched, times[k + 1]) - _ell(sched, times[k]))
        return [1 + 1 / (2 * r), -1 / (2 * r)]
    return None


def _expected_corrected(tr, plan, den, lam, noise):
    """The plain loop: every corrected estimate from the recorded raw outputs and the documented rules."""
    sched, native, solver = den.schedule, den.prediction, plan.solver
    space, solver_space = native, SOLVER_SPACE.get(solver, "eps")

    def conv(d, k, src, dst):
        t = float(tr.eval_times[k])
        return convert(d, tr.states[k], float(sched.alpha(t)), float(sched.sigma(t)), src, dst)

    estimates, history, out = [], [], []
    for k in range(plan.nfe):
        weights = _combination_weights(plan, sched, k)
        if weights is None:
            d = conv(tr.outputs[k], k, native, space)
        else:
            history.insert(0, conv(tr.outputs[k], k, native, solver_space))
            d = conv(sum(w * h for w, h in zip(weights, history)), k, solver_space, space)
        real = estimates[::-1]  # earlier estimates, most recent first
        prev = real + ([noise] if space == "eps" else [])  # the initial noise stands before the first output
        row = lam.values[k]
        corrector = solver == "edm" and k % 2 == 1
        if corrector and lam.stages == "per_time":
            terms = []
            expected = d
        elif lam.variant == "d-ode":
            terms = prev[:1]
            expected = d + sum(p * (d - q) for p, q in zip(row, terms))
        elif lam.variant == "d-ode-2":
            terms = prev[:2]
            expected = d + sum(p * (d - q) for p, q in zip(row, terms))
        elif lam.variant == "sep":
            terms = [d, *prev[:1]]
            expected = sum(p * q for p, q in zip(row, terms))
        else:  # all
            terms = [d, *real]
            expected = sum(p * q for p, q in zip(row, terms))
        # exactly as many parameters as the rule has terms (the rest NaN): the first-step rules
        assert np.sum(~np.isnan(row)) == len(terms), (k, row, len(terms))
        out.append(expected)
        estimates.append(d)
    return out


def _expected_states(tr, plan, den):
    """Every state from the recorded corrected estimates with the solver's update (the method chapter)."""
    sched, space = den.schedule, den.prediction
    solver_space = SOLVER_SPACE.get(plan.solver, "eps")
    pt = {}

    def coef(t):
        if t not in pt:
            a, s = float(sched.alpha(t)), float(sched.sigma(t))
            pt[t] = (a, s, s / a, math.inf if s == 0 else math.log(a / s))
        return pt[t]

    def d_used(k):  # the corrected estimate in the solver's prediction type, at its own state
        t = float(tr.eval_times[k])
        a, s, _, _ = coef(t)
        return convert(tr.corrected[k], tr.states[k], a, s, space, solver_space)

    def ddim(x, s, t, eps):  # Eq. 11 in its Euler-in-sigma_hat form (finite at sigma_t = 0)
        (a_s, _, sh_s, _), (a_t, _, sh_t, _) = coef(s), coef(t)
        return (a_t / a_s) * x + a_t * (sh_t - sh_s) * eps

    out, k = [], 0
    for st in plan.steps:
        s, t, x = st.s.t, st.t.t, tr.states[k]
        (a_s, sig_s, _, l_s), (a_t, sig_t, sh_t, l_t) = coef(s), coef(t)
        if plan.solver == "dpm_solver++":
            out.append((sig_t / sig_s) * x - a_t * math.expm1(-(l_t - l_s)) * d_used(k))
        elif plan.solver == "edm":
            eps_s = d_used(k)
            out.append(ddim(x, s, t, eps_s))
            if st.order == 2:
                _, _, sh_s, _ = coef(s)
                out.append((a_t / a_s) * x + a_t * (sh_t - sh_s) * 0.5 * (eps_s + d_used(k + 1)))
        elif st.order == 1:  # ddim, ipndm, deis, DPM-Solver-1
            out.append(ddim(x, s, t, d_used(k)))
        else:  # singlestep DPM-Solver-2/3 (Eq. 26-32): the corrected eps_s in every later stage, and
            # r_i = (ell_si - ell_s) / h from the time s_i each stage was evaluated at (the default places the
            # stages on the grid, so the r_i are not 1/2 or 1/3, 2/3)
            h, eps_s = l_t - l_s, d_used(k)
            inner = [st.stages[i].t for i in range(st.order - 1)]
            r = [(coef(t_i)[3] - l_s) / h for t_i in inner]
            (a_1, sig_1, _, l_1) = coef(inner[0])
            out.append((a_1 / a_s) * x - sig_1 * math.expm1(l_1 - l_s) * eps_s)
            if st.order == 2:
                phi = sig_t * math.expm1(h)
                out.append((a_t / a_s) * x - phi * eps_s - phi / (2 * r[0]) * (d_used(k + 1) - eps_s))
            else:
                (a_2, sig_2, _, l_2) = coef(inner[1])
                c2 = sig_2 * (r[1] / r[0]) * (math.expm1(r[1] * h) / (r[1] * h) - 1)
                out.append(
                    (a_2 / a_s) * x - sig_2 * math.expm1(l_2 - l_s) * eps_s - c2 * (d_used(k + 1) - eps_s)
                )
                c3 = (sig_t / r[1]) * (math.expm1(h) / h - 1)
                out.append((a_t / a_s) * x - sig_t * math.expm1(h) * eps_s - c3 * (d_used(k + 2) - eps_s))
        k += len(st.stages)
    return out


@pytest.mark.parametrize("stages", ["per_time", "per_stage"])
@pytest.mark.parametrize("variant", ["d-ode", "d-ode-2", "sep", "all"])
@pytest.mark.parametrize("schedule_name,prediction", CASES)
@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_the_transform_follows_the_documented_rules(
    gmm, solver, nfe, options, schedule_name, prediction, variant, stages
):
    den = gmm.denoiser(SCHEDULES[schedule_name], prediction)
    lam = dode.distill(
        den, make_noise(12, seed=5), solver, nfe, K=2, variant=variant, stages=stages, **options
    )
    noise = make_noise(4)
    tr = dode.sample(den, noise, solver, nfe, lambdas=lam, trajectory=True, **options)
    plan = dode.make_plan(den.schedule, solver, nfe, None, options)
    scale = max(1.0, float(np.nanmax(np.abs(lam.values))))  # a large lambda scales the rounding differences
    tol = {"rtol": 1e-12 * scale, "atol": 1e-12 * scale}
    for k, expected in enumerate(_expected_corrected(tr, plan, den, lam, noise.to(torch.float64))):
        torch.testing.assert_close(tr.corrected[k], expected, **tol, msg=f"corrected estimate {k}")
    for k, expected in enumerate(_expected_states(tr, plan, den)):
        torch.testing.assert_close(tr.states[k + 1], expected, rtol=1e-12, atol=1e-12, msg=f"state {k + 1}")
    assert torch.equal(tr.states[-1], tr.x)


@pytest.mark.parametrize("solver,nfe,options", RUNS)
def test_the_first_lambda_is_its_closed_form(gmm, solver, nfe, options):
    """Noise prediction: the first evaluation's lambda acts along ``d_0 - x_T`` (the initial noise); every
    solver's first stage is a DDIM step to its first landing time, so ``v = c (d_0 - x_T)`` with DDIM's
    ``c = -sigma_l (e^h - 1)`` and ``lambda_0 = <target - x_base, v> / <v, v>``."""
    sched = SCHEDULES["vp"]
    den = gmm.denoiser(sched, "eps")
    fit_noise = make_noise(12, seed=5)
    lam = dode.distill(den, fit_noise, solver, nfe, K=3, **options)
    plan = dode.make_plan(sched, solver, nfe, None, options)
    _, targets = teacher_targets(den, fit_noise, plan, 3)
    s, lands = float(plan.times[0]), plan.landing_times[0]
    a_s, sig_s, a_l, sig_l = (float(f(t)) for t in (s, lands) for f in (sched.alpha, sched.sigma))
    h = math.log(a_l / sig_l) - math.log(a_s / sig_s)
    d0 = den(fit_noise, s)  # x_T = the noise on VP
    x_base = (a_l / a_s) * fit_noise - sig_l * math.expm1(h) * d0
    v = -sig_l * math.expm1(h) * (d0 - fit_noise)
    r = targets[lands] - x_base
    closed_form = float((r * v).sum() / (v * v).sum())
    assert lam.values[0, 0] == pytest.approx(closed_form, rel=1e-9)
    assert abs(closed_form) > 1e-6  # it is a real correction, not the zero that a missing d_prev would give


@pytest.mark.parametrize("schedule_name", ["vp", "edm"])
def test_the_first_data_prediction_lambda_is_its_closed_form(gmm, schedule_name):
    """Data prediction: no lambda at the first evaluation; the second acts along ``D_1 - D_0``, and DDIM's
    data-prediction step ``x_t = (sigma_t/sigma_s) x_s + (alpha_t - alpha_s sigma_t/sigma_s) D`` gives
    ``v = (alpha_t - alpha_s sigma_t/sigma_s)(D_1 - D_0)``."""
    sched = SCHEDULES[schedule_name]
    den = gmm.denoiser(sched, "x0")
    fit_noise = make_noise(12, seed=5)
    lam = dode.distill(den, fit_noise, "ddim", 5, K=3)
    plan = dode.make_plan(sched, "ddim", 5)
    _, targets = teacher_targets(den, fit_noise, plan, 3)
    base = dode.sample(den, fit_noise, "ddim", 5, trajectory=True)  # equals the D-run up to evaluation 1
    s, t = plan.landing_times[0], plan.landing_times[1]
    a_s, sig_s, a_t, sig_t = (float(f(u)) for u in (s, t) for f in (sched.alpha, sched.sigma))
    x1, d0, d1 = base.states[1], base.outputs[0], base.outputs[1]
    c = a_t - a_s * sig_t / sig_s
    x_base = (sig_t / sig_s) * x1 + c * d1
    v = c * (d1 - d0)
    closed_form = float(((targets[t] - x_base) * v).sum() / (v * v).sum())
    assert np.isnan(lam.values[0, 0])
    assert lam.values[1, 0] == pytest.approx(closed_form, rel=1e-9)
