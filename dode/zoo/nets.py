"""Small networks for the embedded digits models (8x8, one channel).

:class:`UNet` is a compact DDPM/ADM-style U-Net: sinusoidal embedding of the model's time input followed
by an MLP, residual blocks with GroupNorm + SiLU and a FiLM (scale/shift) time conditioning, optional
self-attention at the low resolutions, skip connections between the down and up paths.
:class:`EDMPrecond` wraps it with EDM's preconditioning (Karras et al. 2022, Table 1 / Eq. 7) so that the
wrapped model returns the denoised estimate ``D(x, sigma)`` directly. :class:`EMA` keeps an exponential
moving average of the weights (what gets saved and sampled from).

Everything is built from a plain JSON-able config (:class:`UNetConfig`) so a model card can rebuild it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "UNet", "EDMPrecond", "EMA", "timestep_embedding", "count_parameters"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; stored verbatim in a model card.

    ``channel_mult`` has one entry per resolution, starting at the input resolution and halving each time:
    ``(1, 2)`` is 8x8 and 4x4; ``(1, 2, 2)`` adds 2x2. ``attn_resolutions`` lists the spatial sizes at which
    a self-attention block follows each residual block (and the middle block gets one if the lowest
    resolution is listed). ``time_scale`` multiplies the time input before the sinusoidal embedding: the
    VP model receives the float training index 0..999 (scale 1), the EDM model ``c_noise = log(sigma)/4``,
    which spans only about [-1.6, 1.1] and is spread over a comparable range by a scale of 1000.
    """

    resolution: int = 8
    in_channels: int = 1
    channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 5)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    num_heads: int = 4
    dropout: float = 0.1
    time_scale: float = 1.0
    max_period: float = 10000.0

    def __post_init__(self):
        # JSON round trips turn tuples into lists; normalise so configs compare equal
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.channels <= 0 or self.channels % 4:
            raise ValueError(f"channels must be a positive multiple of 4, got {self.channels}")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(
                f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}"
            )
        lowest = self.resolution // 2 ** (len(self.channel_mult) - 1)
        if lowest < 1 or self.resolution % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"resolution {self.resolution} cannot be halved {len(self.channel_mult) - 1} times "
                f"(channel_mult={self.channel_mult})"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of a (batch,) tensor: ``[cos(t w_k), sin(t w_k)]``,
    ``w_k = max_period^(-k/(dim/2))``. The highest frequency is 1 rad per unit of ``t``, so unit steps of the
    VP training index stay distinguishable; the lowest spans ``max_period`` units."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(ch: int) -> int:
    # about 4 channels per group (DDPM uses 32 groups of >= 4 channels); must divide ch
    g = min(32, ch // 4)
    while ch % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then FiLM time conditioning (ADM's scale/shift), SiLU-dropout-conv; residual."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # zero-initialised last conv: every block starts as the identity, which keeps early training stable
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, residual, zero-initialised output projection."""

    def __init__(self, ch: int, num_heads: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"attention channels {ch} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        # (n, heads, positions, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """``forward(x, t)``: ``x`` (N, C, R, R), ``t`` (N,) the model's time input; returns (N, C, R, R)."""

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        if config is None:
            config = UNetConfig(**overrides)
        elif overrides:
            config = UNetConfig(**{**config.to_dict(), **overrides})
        self.config = cfg = config
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur, res = ch, cfg.resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                out = ch * mult
                self.down.append(self._stage(cur, out, emb_dim, res))
                cur = out
                skip_channels.append(cur)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                res //= 2
                skip_channels.append(cur)

        self.mid1 = ResBlock(cur, cur, emb_dim, cfg.dropout)
        self.mid_attn = AttnBlock(cur, cfg.num_heads) if res in cfg.attn_resolutions else nn.Identity()
        self.mid2 = ResBlock(cur, cur, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                out = ch * mult
                self.up.append(self._stage(cur + skip_channels.pop(), out, emb_dim, res))
                cur = out
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)
                    )
                )
                res *= 2
        assert not skip_channels

        self.norm_out = nn.GroupNorm(_groups(cur), cur)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _stage(self, in_ch: int, out_ch: int, emb_dim: int, res: int) -> nn.ModuleList:
        blocks = [ResBlock(in_ch, out_ch, emb_dim, self.config.dropout)]
        if res in self.config.attn_resolutions:
            blocks.append(AttnBlock(out_ch, self.config.num_heads))
        return nn.ModuleList(blocks)

    @staticmethod
    def _run_stage(stage: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = stage[0](h, emb)
        for block in stage[1:]:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            raise ValueError(
                f"x must have shape (N, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}), "
                f"got {tuple(x.shape)}"
            )
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t * cfg.time_scale, cfg.channels, cfg.max_period).to(x.dtype))

        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = self._run_stage(module, h, emb) if isinstance(module, nn.ModuleList) else module(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for module in self.up:
            if isinstance(module, nn.ModuleList):
                h = self._run_stage(module, torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class EDMPrecond(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Eq. 7 and Table 1).

    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
    ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
    ``c_noise = log(sigma) / 4`` and ``sd = sigma_data``, the standard deviation of the training data
    (measured, and stored as a buffer so it travels with the weights). The network's input and its
    training target then have unit variance at every noise level.
    """

    def __init__(self, net: nn.Module, sigma_data: float):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(c_skip, c_out, c_in, c_noise)`` at ``sigma`` (any shape)."""
        sd = self.sigma_data.to(sigma.dtype)
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must have shape (batch,) = ({x.shape[0]},), got {tuple(sigma.shape)}")
        if torch.any(sigma <= 0):
            raise ValueError("sigma must be positive (the denoiser is not evaluated at sigma = 0)")
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f = self.net(c_in[:, None, None, None] * x, c_noise)
        return c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f


@dataclass
class EMA:
    """Exponential moving average of a model's parameters, ``theta_ema <- d theta_ema + (1 - d) theta``.

    The decay is warmed up as ``min(decay, (1 + n) / (10 + n))`` (n = updates so far) so the average is not
    dominated by the random initialisation in short runs (the miniatures train a few hundred steps).
    Buffers are copied, not averaged.
    """

    model: nn.Module
    decay: float = 0.9995
    warmup: bool = True
    num_updates: int = 0
    shadow: nn.Module = field(init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {self.decay}")
        self.shadow = copy.deepcopy(self.model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for p_ema, p in zip(self.shadow.parameters(), self.model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.shadow.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1
