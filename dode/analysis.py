"""Quantities behind the paper's analysis figures, computed from :class:`~dode.sampling.Trajectory` runs.

* Fig. 2: cosine similarity between all denoising outputs of one long run (:func:`cosine_similarity_matrix`).
* Fig. 5, 7, 11: the norm of ``x_t`` along a run (:func:`state_norms`), the values of a few random pixels
  (:func:`pick_pixels`, :func:`pixel_values`) and the distance to a reference run on the same noise at the
  same times (:func:`distance_to_reference`).
* :func:`fit_variants` fits several D-ODE formulations (METHOD section 5) on one teacher run.

Everything takes the tensors of ``dode.sample(..., trajectory=True)``: the batch is the second dimension of
``states`` and ``outputs``, times are model times (VP: training index, EDM: sigma), decreasing.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .denoiser import Denoiser
from .distill import distill, teacher_targets
from .solvers import make_plan

__all__ = [
    "cosine_similarity_matrix",
    "state_norms",
    "pick_pixels",
    "pixel_values",
    "interpolate_states",
    "distance_to_reference",
    "fit_variants",
]


def _flat(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"{what} must have shape (steps, batch, ...), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], -1).to(torch.float64)


def cosine_similarity_matrix(outputs: torch.Tensor) -> np.ndarray:
    """``S[i, j]`` = mean over the batch of ``cos(d_i, d_j)``, each output flattened (paper Fig. 2).

    ``outputs`` has shape ``(steps, batch, ...)`` (``Trajectory.outputs``). The cosine is taken per sample
    and then averaged, so every sample counts alike whatever its norm.
    """
    d = _flat(outputs, "outputs")
    norms = d.norm(dim=2, keepdim=True)
    if torch.any(norms == 0):
        raise ValueError("an output is exactly zero: its cosine similarity is undefined")
    unit = d / norms
    similarity = torch.einsum("ibn,jbn->ij", unit, unit) / d.shape[1]
    return similarity.numpy()


def state_norms(states: torch.Tensor) -> np.ndarray:
    """``(states, batch)``: the L2 norm of every flattened state ``x_t`` (paper Fig. 5, top row)."""
    return _flat(states, "states").norm(dim=2).numpy()


def pick_pixels(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """``n`` distinct random pixel positions ``(n, len(shape))`` of an image of ``shape`` (C, H, W).

    Drawn from their own stream (``seed``), so they do not depend on the noise of the runs."""
    size = int(np.prod(shape))
    if not 1 <= n <= size:
        raise ValueError(f"n must be between 1 and the number of pixels {size}, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 5]))
    flat = rng.choice(size, size=n, replace=False)
    return np.stack(np.unravel_index(flat, shape), axis=1)


def pixel_values(states: torch.Tensor, pixels: np.ndarray) -> np.ndarray:
    """``(states, batch, n)``: the value of each pixel position along the run (paper Fig. 5, bottom row)."""
    states = torch.as_tensor(states)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.shape[1] != states.ndim - 2:
        raise ValueError(
            f"pixels must have shape (n, {states.ndim - 2}) for states of shape {tuple(states.shape)}"
        )
    index = (slice(None), slice(None), *[torch.as_tensor(c) for c in pixels.T])
    return states[index].to(torch.float64).numpy()


def interpolate_states(times: torch.Tensor, states: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """States of a run (at decreasing ``times``) linearly interpolated in time at ``at``.

    Times that sit on the run's grid return its state exactly; times outside the run's range are an error.
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    at = torch.as_tensor(at, dtype=torch.float64).reshape(-1)
    if not torch.all(times[1:] < times[:-1]):
        raise ValueError("times must strictly decrease (from noise to data)")
    span = 1e-9 * float(times[0] - times[-1])
    if torch.any(at > times[0] + span) or torch.any(at < times[-1] - span):
        raise ValueError(f"times {at.tolist()} are outside the run's range [{times[-1]:g}, {times[0]:g}]")
    # positions in increasing time, so that searchsorted applies
    rising, rising_states = times.flip(0), torch.as_tensor(states).flip(0).to(torch.float64)
    hi = torch.searchsorted(rising, at).clamp(1, len(rising) - 1)
    lo = hi - 1
    w = ((at - rising[lo]) / (rising[hi] - rising[lo])).clamp(0, 1)
    w = w.reshape(-1, *([1] * (rising_states.ndim - 1)))
    out = (1 - w) * rising_states[lo] + w * rising_states[hi]
    exact = torch.isclose(rising[hi], at, rtol=0, atol=span)
    out[exact] = rising_states[hi][exact]
    return out


def distance_to_reference(trajectory, reference) -> np.ndarray:
    """``(states, batch)``: ``||x_t - x_t^ref||`` at every state time of ``trajectory``, the reference (a
    long run on the same noise) interpolated in time where it has no state (Fig. 5's "closer to DDIM-1000",
    as a number)."""
    if trajectory.states.shape[1:] != reference.states.shape[1:]:
        raise ValueError("trajectory and reference must be runs on the same noise (same batch and shape)")
    ref = interpolate_states(reference.state_times, reference.states, trajectory.state_times)
    diff = trajectory.states.to(torch.float64) - ref
    return diff.reshape(diff.shape[0], diff.shape[1], -1).norm(dim=2).numpy()


def fit_variants(
    den: Denoiser,
    fit_noise: torch.Tensor,
    solver: str,
    nfe: int,
    variants,
    *,
    K: int,
    grid=None,
    teacher: str | None = None,
    seed: int | None = None,
    **options,
) -> dict:
    """``{variant: (Lambdas, seconds)}``: every variant fitted on the same fitting batch and one teacher run.

    The teacher (K times more steps) dominates the cost of a fit; running it once for all formulations
    gives exactly the lambdas of separate :func:`dode.distill` calls. ``seconds`` = the shared teacher
    time plus the variant's own student run.
    """
    plan = make_plan(den.schedule, solver, nfe, grid, options)
    t0 = time.perf_counter()
    shared = teacher_targets(den, fit_noise, plan, K, teacher=teacher or "ddim")
    teacher_seconds = time.perf_counter() - t0
    fitted = {}
    for variant in variants:
        t1 = time.perf_counter()
        lam = distill(
            den,
            fit_noise,
            solver,
            nfe,
            K,
            grid=grid,
            teacher=teacher,
            variant=variant,
            seed=seed,
            teacher_run=shared,
            **options,
        )
        fitted[variant] = (lam, teacher_seconds + time.perf_counter() - t1)
    return fitted
