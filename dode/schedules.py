"""Noise schedules.

A schedule maps the model's own time input ``t`` to the coefficients of the forward marginal
``x_t = alpha(t) * x_0 + sigma(t) * noise`` (method chapter, section 1):

* :class:`VPSchedule` -- discrete-time variance preserving models (DDPM). ``t`` is the training index as a
  float in ``[0, T-1]``; ``log alpha`` is interpolated piecewise-linearly between integer indices, as
  DPM-Solver does, so the discrete model can be solved in continuous time.
* :class:`EDMSchedule` -- EDM's ``x = x_0 + sigma * noise``: ``t`` *is* sigma and ``alpha = 1``.

Every solver works only through ``alpha``, ``sigma`` and the half-logSNR ``lambda_t = log(alpha_t / sigma_t)``
and its inverse, so it runs unchanged on either schedule. All arithmetic here is float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["Schedule", "VPSchedule", "EDMSchedule"]


def _as_float64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule:
    """Common interface. Subclasses define ``log_alpha``/``log_sigma`` or override ``alpha``/``sigma``."""

    #: model time at which sampling starts and ends by default (``t_max`` is the noisiest)
    t_max: float
    t_min: float
    #: whether the default grid is followed by a final step to sigma = 0 (EDM) or not (VP)
    ends_at_zero: bool = False

    def alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def lambda_(self, t) -> torch.Tensor:
        """Half-logSNR ``log(alpha_t / sigma_t)``; ``+inf`` where sigma = 0."""
        t = _as_float64(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_from_lambda(self, lam) -> torch.Tensor:
        """Inverse of :meth:`lambda_` (``lambda`` strictly decreases in ``t``)."""
        raise NotImplementedError

    def sigma_hat(self, t) -> torch.Tensor:
        """EDM-style noise level ``sigma_t / alpha_t`` of the rescaled state ``x / alpha``."""
        t = _as_float64(t)
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_hat(self, sigma_hat) -> torch.Tensor:
        s = _as_float64(sigma_hat)
        return self.t_from_lambda(-torch.log(s))

    def initial_state(self, noise: torch.Tensor, t) -> torch.Tensor:
        """The state ``x_T`` the sampler starts from, given standard normal ``noise``."""
        raise NotImplementedError

    def breakpoints(self, t_a: float, t_b: float) -> list[float]:
        """Times strictly between ``t_a`` and ``t_b`` where ``alpha(t)`` is not smooth (for quadrature)."""
        return []

    def describe(self) -> dict:
        """JSON-able identification, stored with fitted lambdas and results."""
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.describe().items())))


class VPSchedule(Schedule):
    """Discrete VP schedule given by ``alphas_cumprod`` (``alpha_t^2`` at the integer indices 0..T-1)."""

    ends_at_zero = False

    def __init__(self, alphas_cumprod, *, name: str = "custom"):
        ac = np.asarray(
            alphas_cumprod.detach().cpu().numpy() if torch.is_tensor(alphas_cumprod) else alphas_cumprod,
            dtype=np.float64,
        )
        if ac.ndim != 1 or len(ac) < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D sequence of length >= 2, got shape {ac.shape}")
        if not (np.all(ac > 0) and np.all(ac < 1) and np.all(np.diff(ac) < 0)):
            raise ValueError("alphas_cumprod must lie in (0, 1) and strictly decrease")
        self.name = name
        self.alphas_cumprod = torch.from_numpy(ac)
        self.T = len(ac)
        self.t_max = float(self.T - 1)
        self.t_min = 0.0
        # log alpha at the integer indices; interpolated linearly in t in between (DPM-Solver's convention)
        self._log_alpha = 0.5 * np.log(ac)

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, T: int = 1000) -> VPSchedule:
        """DDPM's linear beta schedule (CIFAR-10, CelebA, LSUN: 1e-4 .. 0.02, T = 1000)."""
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        sched = cls(np.cumprod(1.0 - betas), name="linear")
        sched._params = {"beta_start": float(beta_start), "beta_end": float(beta_end), "T": int(T)}
        return sched

    @classmethod
    def cosine(cls, T: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> VPSchedule:
        """Improved-DDPM's cosine schedule (ImageNet-64 uses T = 4000), betas clipped at ``max_beta``."""

        def f(u):
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=np.float64)
        sched = cls(np.cumprod(1.0 - betas), name="cosine")
        sched._params = {"T": int(T), "s": float(s), "max_beta": float(max_beta)}
        return sched

    def log_alpha(self, t) -> torch.Tensor:
        t = _as_float64(t)
        flat = t.reshape(-1).cpu().numpy()
        if np.any(flat < -1e-9) or np.any(flat > self.t_max + 1e-9):
            raise ValueError(
                f"t must lie in [0, {self.t_max:g}] for this VP schedule, got {flat.min()}..{flat.max()}"
            )
        out = np.interp(flat, np.arange(self.T, dtype=np.float64), self._log_alpha)
        return torch.from_numpy(out).reshape(t.shape).to(t.device)

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        # sqrt(1 - alpha^2) computed as sqrt(-expm1(2 log alpha)) to keep precision near t = 0
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_from_lambda(self, lam) -> torch.Tensor:
        lam = _as_float64(lam)
        # alpha^2 = sigmoid(2 lambda), so log alpha = -0.5 * log(1 + exp(-2 lambda)); then invert the
        # piecewise-linear log alpha(t) (decreasing) by interpolation.
        log_alpha = -0.5 * torch.nn.functional.softplus(-2.0 * lam)
        flat = log_alpha.reshape(-1).cpu().numpy()
        t = np.interp(-flat, -self._log_alpha, np.arange(self.T, dtype=np.float64))
        return torch.from_numpy(t).reshape(lam.shape).to(lam.device)

    def initial_state(self, noise: torch.Tensor, t) -> torch.Tensor:
        # alpha^2 + sigma^2 = 1, so for unit-variance data x_T has unit variance: start from the noise itself,
        # as DDPM, DDIM and DPM-Solver do.
        return noise.to(torch.float64)

    def breakpoints(self, t_a: float, t_b: float) -> list[float]:
        lo, hi = sorted((float(t_a), float(t_b)))
        return [float(k) for k in range(math.floor(lo) + 1, math.ceil(hi))]

    def describe(self) -> dict:
        params = getattr(self, "_params", None)
        if params is not None:
            return {"type": "vp", "name": self.name, **params}
        digest = float(np.sum(self._log_alpha))
        return {"type": "vp", "name": self.name, "T": self.T, "log_alpha_sum": digest}

    def __repr__(self) -> str:
        return f"VPSchedule({self.describe()})"


class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022): ``x = x_0 + sigma * noise``; the model time is sigma itself."""

    ends_at_zero = True

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.rho = float(rho)
        self.t_max = self.sigma_max
        self.t_min = self.sigma_min

    def alpha(self, t) -> torch.Tensor:
        return torch.ones_like(_as_float64(t))

    def sigma(self, t) -> torch.Tensor:
        t = _as_float64(t)
        if torch.any(t < 0):
            raise ValueError("sigma (the EDM model time) must be >= 0")
        return t.clone()

    def lambda_(self, t) -> torch.Tensor:
        return -torch.log(self.sigma(t))

    def t_from_lambda(self, lam) -> torch.Tensor:
        return torch.exp(-_as_float64(lam))

    def initial_state(self, noise: torch.Tensor, t) -> torch.Tensor:
        # x = x_0 + sigma * noise with sigma_max >> sigma_data: start from sigma_max * noise, as EDM does.
        return noise.to(torch.float64) * float(t)

    def describe(self) -> dict:
        return {"type": "edm", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}

    def __repr__(self) -> str:
        return f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})"
