"""Plain-loop D-DDIM and D-Heun, written straight from the method chapter (book/method.md), to check the
general machinery (:func:`dode.sample`, :func:`dode.distill`) against something obvious.

Each sampler is one loop over the grid with the update written out in the model's native prediction type,
the D-ODE transform of paper Eq. 10 applied to the raw network output,

    d~_k = d_k + lambda_k (d_k - d_prev),   d_prev = the previous raw output in evaluation order

(at the first evaluation ``d_prev`` is the initial noise for noise prediction; data prediction has no
correction there), and, optionally, each lambda fitted in closed form against a teacher state at the
evaluation's landing time (paper Eq. 13-14): the stage lands on ``x_base + lambda v`` with
``v = c (d_k - d_prev)``, ``c`` the update's coefficient of ``d``, so ``lambda = <target - x_base, v> / <v, v>``
over the whole batch. The tests hold these loops equal to the machinery to float64 rounding. They are for
reading and checking; sample with :func:`dode.sample`.
"""

from __future__ import annotations

import math

import torch

from dode.denoiser import Denoiser
from dode.schedules import EDMSchedule

__all__ = ["d_ddim", "d_heun"]


def _lambda(k, d, d_prev, x_rest, c, lands, lambdas, targets):
    """Evaluation ``k``'s lambda for a stage landing on ``x_rest + c d~``: fitted against ``targets[lands]``,
    taken from ``lambdas[k]``, or NaN (no correction) without a previous output or any lambdas."""
    if d_prev is None or (lambdas is None and targets is None):
        return math.nan
    if targets is None:
        return float(lambdas[k])
    r = (targets[lands] - (x_rest + c * d)).reshape(-1)
    v = (c * (d - d_prev)).reshape(-1)
    return float(r @ v) / float(v @ v)


def _corrected(d, d_prev, lam):
    return d if math.isnan(lam) else d + lam * (d - d_prev)


def d_ddim(denoiser: Denoiser, noise: torch.Tensor, times, lambdas=None, *, targets=None):
    """D-DDIM on the decreasing model ``times`` (``len(times) - 1`` evaluations); DDIM without lambdas.

    ``lambdas[k]`` is evaluation ``k``'s lambda (a :class:`~dode.Lambdas` or a list of floats); with
    ``targets`` (``{model time: teacher state}``) every lambda is fitted in closed form instead. Returns
    ``(samples, lambdas used)``, NaN where an evaluation had no correction.
    """
    schedule, eps = denoiser.schedule, denoiser.prediction == "eps"
    times = [float(t) for t in times]
    noise = noise.to(torch.float64)
    x = schedule.initial_state(noise, times[0])
    d_prev = noise if eps else None
    used = []
    for k, (s, t) in enumerate(zip(times[:-1], times[1:])):
        a_s, a_t = float(schedule.alpha(s)), float(schedule.alpha(t))
        sig_s, sig_t = float(schedule.sigma(s)), float(schedule.sigma(t))
        d = denoiser(x, s)
        if (
            eps
        ):  # Eq. 11: x_t = (a_t/a_s) x_s - sig_t (e^h - 1) eps, with sig_t (e^h - 1) = a_t sig_s/a_s - sig_t
            keep, c = a_t / a_s, -(a_t * sig_s / a_s - sig_t)
        else:  # the same step with eps = (x_s - a_s x0)/sig_s: x_t = (sig_t/sig_s) x_s + (a_t - a_s sig_t/sig_s) x0
            keep, c = sig_t / sig_s, a_t - a_s * sig_t / sig_s  # on EDM: Euler in sigma (Eq. 37-38)
        lam = _lambda(k, d, d_prev, keep * x, c, t, lambdas, targets)
        x = keep * x + c * _corrected(d, d_prev, lam)
        d_prev = d
        used.append(lam)
    return x, used


def d_heun(denoiser: Denoiser, noise: torch.Tensor, sigmas, lambdas=None, *, stages="per_time", targets=None):
    """D-EDM: EDM's Heun sampler (Eq. 42-45) on an EDM schedule's decreasing ``sigmas`` ending at 0, with
    the D-ODE transform on each stage (Eq. 46-51).

    ``stages="per_stage"`` (the paper's) gives the corrector its own lambda along ``D(x', t) - D(x, s)``;
    ``per_time`` (dode's default) gives it none, the corrector's output still being the next ``d_prev``.
    ``lambdas`` and ``targets`` as for :func:`d_ddim`; ``2N - 1`` evaluations for ``N`` steps.
    """
    if not isinstance(denoiser.schedule, EDMSchedule):
        raise ValueError(f"d_heun needs an EDMSchedule (model time = sigma), got {denoiser.schedule!r}")
    if stages not in ("per_time", "per_stage"):
        raise ValueError(f"stages must be one of ('per_time', 'per_stage'), got {stages!r}")
    eps = denoiser.prediction == "eps"
    sigmas = [float(v) for v in sigmas]
    noise = noise.to(torch.float64)
    x = noise * sigmas[0]
    d_prev = noise if eps else None
    used = []

    def slope_parts(x_, sigma):  # dx/dsigma = rest + coefficient * d: eps, or (x - D)/sigma
        return (0.0, 1.0) if eps else (x_ / sigma, -1.0 / sigma)

    for s, t in zip(sigmas[:-1], sigmas[1:]):
        d = denoiser(x, s)  # predictor: Euler x' = x + (t - s) dx/dsigma
        rest, coef = slope_parts(x, s)
        lam = _lambda(len(used), d, d_prev, x + (t - s) * rest, (t - s) * coef, t, lambdas, targets)
        slope = rest + coef * _corrected(d, d_prev, lam)
        x_pred = x + (t - s) * slope
        d_prev = d
        used.append(lam)
        if t == 0:  # the last step is Euler only
            x = x_pred
            continue
        d1 = denoiser(x_pred, t)  # corrector: the trapezoid x + (t - s) (slope + slope') / 2
        rest1, coef1 = slope_parts(x_pred, t)
        x_rest, c = x + 0.5 * (t - s) * (slope + rest1), 0.5 * (t - s) * coef1
        lam = math.nan
        if stages == "per_stage":
            lam = _lambda(len(used), d1, d_prev, x_rest, c, t, lambdas, targets)
        x = x_rest + c * _corrected(d1, d_prev, lam)
        d_prev = d1
        used.append(lam)
    return x, used
