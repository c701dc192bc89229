"""Denoiser wrappers: a pretrained network plus its schedule and prediction type.

A :class:`Denoiser` returns the network's *denoising output* ``d`` in its native prediction type
(method chapter, section 1): ``eps`` for noise prediction, ``x0`` for data prediction. Solvers that need the other
type convert with :func:`to_eps` / :func:`to_x0`; both conversions are affine in ``d`` at fixed ``(x, t)``,
which is what keeps every solver stage affine in the denoising output (the basis of the closed-form fit).

The sampler keeps its state in float64; the network is called in its own dtype and its output is cast
back to float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dode.schedules import Schedule

__all__ = ["Denoiser", "PREDICTIONS", "to_eps", "to_x0", "convert"]

PREDICTIONS = ("eps", "x0")


def to_x0(eps: torch.Tensor, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``x0 = (x - sigma * eps) / alpha``."""
    return (x - sigma * eps) / alpha


def to_eps(x0: torch.Tensor, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``eps = (x - alpha * x0) / sigma`` (undefined at sigma = 0, where no network is evaluated)."""
    return (x - alpha * x0) / sigma


def convert(d: torch.Tensor, x: torch.Tensor, alpha, sigma, src: str, dst: str) -> torch.Tensor:
    """Convert a denoising output between prediction types at the state ``x`` with coefficients
    ``alpha, sigma``."""
    if src == dst:
        return d
    if (src, dst) == ("eps", "x0"):
        return to_x0(d, x, alpha, sigma)
    if (src, dst) == ("x0", "eps"):
        return to_eps(d, x, alpha, sigma)
    raise ValueError(f"prediction types must be one of {PREDICTIONS}, got {src!r} -> {dst!r}")


class Denoiser:
    """A network ``fn(x, t, **model_kwargs)`` with its schedule and prediction type.

    Parameters
    ----------
    fn:
        the network; called with ``x`` in the network's dtype and ``t`` of shape ``(batch,)`` holding the
        model's own time input (VP: training index as a float; EDM: sigma).
    schedule:
        a :class:`~dode.schedules.Schedule`.
    prediction:
        ``"eps"`` (noise prediction) or ``"x0"`` (data prediction).
    name:
        model id, stored with fitted lambdas so they are not reused on another model.
    dtype:
        dtype the network is called in; by default the dtype of ``fn``'s parameters, else float32.
    model_kwargs:
        extra keyword arguments passed to every call (class labels of conditional models).
    info:
        free-form description (resolution, channels, checkpoint hash...) recorded with results.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        *,
        name: str | None = None,
        dtype: torch.dtype | None = None,
        model_kwargs: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a dode Schedule (VPSchedule or EDMSchedule), got {type(schedule)}"
            )
        if not callable(fn):
            raise TypeError("fn must be callable as fn(x, t)")
        self.fn = fn
        self.schedule = schedule
        self.prediction = prediction
        self.name = name
        if dtype is None:
            params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
            dtype = params[0].dtype if params else torch.float32
        self.dtype = dtype
        self.model_kwargs = dict(model_kwargs or {})
        self.info = dict(info or {})

    def bind(self, **model_kwargs) -> Denoiser:
        """A copy that passes ``model_kwargs`` (e.g. ``class_labels=...``) to every network call."""
        return Denoiser(
            self.fn,
            self.schedule,
            self.prediction,
            name=self.name,
            dtype=self.dtype,
            model_kwargs={**self.model_kwargs, **model_kwargs},
            info=self.info,
        )

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """Native denoising output at state ``x`` and model time ``t`` (a scalar), as float64."""
        # t in at least float32: a half-precision network must still see fractional times exactly
        # (float16 has steps of 0.5 above t = 512); the network casts it where it needs to.
        t_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        t_batch = torch.full((x.shape[0],), float(t), dtype=t_dtype, device=x.device)
        with torch.no_grad():
            out = self.fn(x.to(self.dtype), t_batch, **self.model_kwargs)
        if out.shape != x.shape:
            raise ValueError(
                f"the network returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}"
            )
        return out.to(torch.float64)

    def __repr__(self) -> str:
        return f"Denoiser(name={self.name!r}, prediction={self.prediction!r}, schedule={self.schedule!r})"
