"""An exact test bed: a Gaussian mixture whose optimal denoiser is closed-form.

Data ``x_0 ~ sum_k pi_k N(mu_k, s_k^2 I)``. For the rescaled state ``x_hat = x / alpha = x_0 + sigma_hat n``
the posterior over components is ``p(k | x_hat) ~ pi_k N(x_hat; mu_k, (s_k^2 + sigma_hat^2) I)`` and

    E[x_0 | x_hat] = sum_k p(k | x_hat) (mu_k + s_k^2 / (s_k^2 + sigma_hat^2) (x_hat - mu_k)),

the optimal data-prediction denoiser on *every* schedule. The probability-flow ODE in these variables,
``d x_hat / d sigma_hat = sigma_hat * sum_k p(k | x_hat) (x_hat - mu_k) / (s_k^2 + sigma_hat^2)``, is solved
to near machine precision by :meth:`GaussianMixture.reference`, which the solver tests converge to.
"""

from __future__ import annotations

import torch

from dode.denoiser import Denoiser
from dode.schedules import Schedule

__all__ = ["GaussianMixture"]


class GaussianMixture:
    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, D)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)  # (K,)
        k = self.means.shape[0]
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        self.log_weights = torch.log(w / w.sum())
        self.dim = self.means.shape[1]

    @classmethod
    def random(
        cls, n_components: int = 4, dim: int = 8, seed: int = 0, std_range=(0.3, 0.6)
    ) -> GaussianMixture:
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(n_components, dim, generator=g, dtype=torch.float64)
        stds = std_range[0] + (std_range[1] - std_range[0]) * torch.rand(
            n_components, generator=g, dtype=torch.float64
        )
        weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
        return cls(means, stds, weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp, None] * noise

    def _posterior(self, x_hat: torch.Tensor, sigma_hat: torch.Tensor) -> torch.Tensor:
        var = self.stds**2 + sigma_hat[:, None] ** 2  # (B, K)
        sq = ((x_hat[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        logp = self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(var)
        return torch.softmax(logp, dim=1)

    def x0(self, x_hat: torch.Tensor, sigma_hat: torch.Tensor) -> torch.Tensor:
        """Optimal denoiser ``E[x_0 | x_hat]`` for ``x_hat = x_0 + sigma_hat * n``; ``sigma_hat`` of shape (B,)."""
        post = self._posterior(x_hat, sigma_hat)
        shrink = self.stds**2 / (self.stds**2 + sigma_hat[:, None] ** 2)  # (B, K)
        cond = self.means[None] + shrink[..., None] * (x_hat[:, None, :] - self.means[None])
        return (post[..., None] * cond).sum(1)

    def slope(self, x_hat: torch.Tensor, sigma_hat: torch.Tensor) -> torch.Tensor:
        """``d x_hat / d sigma_hat``, finite down to sigma_hat = 0."""
        post = self._posterior(x_hat, sigma_hat)
        var = self.stds**2 + sigma_hat[:, None] ** 2
        return sigma_hat[:, None] * (
            post[..., None] * (x_hat[:, None, :] - self.means[None]) / var[..., None]
        ).sum(1)

    def denoiser(self, schedule: Schedule, prediction: str = "eps", dtype=torch.float64) -> Denoiser:
        """The optimal denoiser as a :class:`~dode.Denoiser` of the given schedule and prediction type."""

        def fn(x, t):
            t = t.to(torch.float64)
            alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
            flat = x.reshape(x.shape[0], -1).to(torch.float64)
            x0 = self.x0(flat / alpha, (sigma / alpha)[:, 0])
            out = x0 if prediction == "x0" else (flat - alpha * x0) / sigma
            return out.reshape(x.shape).to(x.dtype)

        return Denoiser(fn, schedule, prediction, name=f"gmm-{prediction}", dtype=dtype)

    def reference(
        self, noise: torch.Tensor, schedule: Schedule, t_start: float, t_end: float, rtol: float = 1e-12
    ) -> torch.Tensor:
        """High-accuracy solution of the probability-flow ODE from ``x_T`` (as the samplers start) to ``t_end``."""
        from scipy.integrate import solve_ivp

        t_pair = torch.tensor([t_start, t_end], dtype=torch.float64)
        alpha, sigma_hat = schedule.alpha(t_pair), schedule.sigma_hat(t_pair)
        x_start = schedule.initial_state(noise.to(torch.float64), t_start).reshape(noise.shape[0], -1)
        y0 = (x_start / alpha[0]).reshape(-1).numpy()
        n = noise.shape[0]

        def rhs(s, y):
            xh = torch.from_numpy(y).reshape(n, self.dim)
            return self.slope(xh, torch.full((n,), s, dtype=torch.float64)).reshape(-1).numpy()

        # integrate in sigma_hat; split at sigma_hat = 1 so the step control sees both regimes
        s0, s1 = float(sigma_hat[0]), float(sigma_hat[1])
        y = y0
        for a, b in _segments(s0, s1):
            sol = solve_ivp(rhs, (a, b), y, method="DOP853", rtol=rtol, atol=rtol)
            if not sol.success:
                raise RuntimeError(f"reference ODE solve failed: {sol.message}")
            y = sol.y[:, -1]
        x_end = torch.from_numpy(y).reshape(n, self.dim) * alpha[1]
        return x_end.reshape(noise.shape)


def _segments(s0: float, s1: float):
    cuts = [c for c in (10.0, 1.0, 0.1) if s1 < c < s0]
    pts = [s0, *cuts, s1]
    return list(zip(pts[:-1], pts[1:]))
