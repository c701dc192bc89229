"""Training of the embedded digits models (seeded, CPU-friendly).

Two models, each in a real and a miniature size:

* ``digits-eps`` -- noise prediction on DDPM's discrete linear VP schedule (beta 1e-4 .. 0.02, T = 1000).
  ``t`` is drawn uniformly from the integer indices 0..T-1, the net receives it as a float (the convention
  of :class:`dode.Denoiser`), and the loss is the plain MSE on the noise (DDPM's L_simple).
* ``digits-edm`` -- data prediction with EDM's preconditioning and loss (Karras et al. 2022, Table 1):
  ``ln sigma ~ N(P_mean, P_std^2)`` with ``P_mean = -1.2``, ``P_std = 1.2``, weight
  ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``; sampled on ``sigma`` in [0.002, 80].

Both use Adam with a linear warm-up, gradient clipping, dropout and an EMA of the weights; the EMA weights
are what is saved (``<out>/<name>.safetensors``) next to a model card (``<out>/<name>.json``) that records
everything needed to rebuild, verify and reproduce the model. Digits are not augmented: flips and shifts
change what a digit is (a mirrored 2 is not a digit) and the FD classifier would see it.

Command line::

    python -m dode.zoo.train --model digits-eps|digits-edm|all [--mini] [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dode.files import asset, atomic_write, git_state, sha256_file
from dode.progress import progress_bar
from dode.schedules import EDMSchedule, VPSchedule
from dode.zoo.data import N_HELD_OUT, SPLIT_SEED, load_digits
from dode.zoo.nets import EMA, EDMPrecond, UNet, UNetConfig, count_parameters

__all__ = [
    "BASE_MODELS",
    "MODEL_IDS",
    "MODELS_DIR",
    "TrainConfig",
    "default_config",
    "build_network",
    "vp_eps_loss",
    "edm_loss",
    "train",
    "save_model",
    "main",
]

BASE_MODELS = ("digits-eps", "digits-edm")
MODEL_IDS = ("digits-eps", "digits-edm", "digits-eps-mini", "digits-edm-mini")
MODELS_DIR = asset("models")
CARD_FORMAT = 1

# The real models: ~0.9M parameters at ~14 MFLOPs per sample-evaluation. The cpu profile of the book runs
# ~10M sample-evaluations, so the cost of one evaluation is the budget that matters: channels grow as the
# resolution halves (16 at 8x8, 32 at 4x4, 80 at 2x2), because a parameter at 2x2 costs 16 times fewer FLOPs
# than one at 8x8. No attention: at 2x2 a padded 3x3 convolution already sees every position, and the
# attention's reshapes and softmax cost far more time than their FLOPs suggest at this size.
REAL_NET = UNetConfig(
    channels=16, channel_mult=(1, 2, 5), num_res_blocks=1, attn_resolutions=(), num_heads=4, dropout=0.1
)
# The miniatures (~75k parameters, ~2 MFLOPs): the same three levels, plus attention at 2x2 so that code path
# is exercised by the tests; trained for a few hundred steps.
MINI_NET = UNetConfig(
    channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(2,), num_heads=2, dropout=0.0
)
# EDM feeds c_noise = log(sigma)/4, which spans only [-1.55, 1.10] over sigma in [0.002, 80]. Scaling it by
# 400 spreads that range over ~1000 units, the span the VP index 0..999 covers, so both models see the
# sinusoidal embedding's frequencies (1 .. 1e-4 rad per unit) used the same way.
EDM_TIME_SCALE = 400.0


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the model card)."""

    name: str
    kind: str  # "eps" | "edm"
    net: UNetConfig
    steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    seed: int = 0
    log_every: int = 50
    # VP (digits-eps)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    T: int = 1000
    # EDM (digits-edm)
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        if self.kind not in ("eps", "edm"):
            raise ValueError(f"kind must be 'eps' or 'edm', got {self.kind!r}")
        for attr in ("steps", "batch_size", "log_every"):
            if int(getattr(self, attr)) < 1:
                raise ValueError(f"{attr} must be a positive integer, got {getattr(self, attr)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["net"] = self.net.to_dict()
        d["adam_betas"] = list(self.adam_betas)
        if self.kind == "eps":
            for k in ("p_mean", "p_std", "sigma_min", "sigma_max", "rho"):
                d.pop(k)
        else:
            for k in ("beta_start", "beta_end", "T"):
                d.pop(k)
        return d


def default_config(model: str, *, mini: bool = False, steps: int | None = None, seed: int = 0) -> TrainConfig:
    """The recorded recipe of ``model`` (``digits-eps`` or ``digits-edm``), or of its miniature."""
    if model not in BASE_MODELS:
        raise ValueError(f"model must be one of {BASE_MODELS}, got {model!r}")
    kind = "eps" if model == "digits-eps" else "edm"
    net = MINI_NET if mini else REAL_NET
    if kind == "edm":
        net = dataclasses.replace(net, time_scale=EDM_TIME_SCALE)
    if mini:
        cfg = TrainConfig(
            name=f"{model}-mini", kind=kind, net=net, steps=400, batch_size=64, lr=2e-3, warmup_steps=20,
            ema_decay=0.99, seed=seed, log_every=10,
        )  # fmt: skip
    else:
        cfg = TrainConfig(name=model, kind=kind, net=net, seed=seed)
    if steps is not None:
        cfg = dataclasses.replace(cfg, steps=int(steps))
    return cfg


def vp_schedule(cfg: TrainConfig) -> VPSchedule:
    return VPSchedule.linear(cfg.beta_start, cfg.beta_end, cfg.T)


def edm_schedule(cfg: TrainConfig) -> EDMSchedule:
    return EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho)


def build_network(net_config: UNetConfig, kind: str, sigma_data: float | None = None) -> torch.nn.Module:
    """The module that is trained and saved: the bare U-Net (eps) or the preconditioned one (edm)."""
    net = UNet(net_config)
    if kind == "eps":
        return net
    if kind == "edm":
        if sigma_data is None:
            raise ValueError("sigma_data is required to build an EDM model")
        return EDMPrecond(net, sigma_data)
    raise ValueError(f"kind must be 'eps' or 'edm', got {kind!r}")


def vp_eps_loss(
    net: torch.nn.Module, x0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """DDPM's L_simple: ``|| eps - eps_hat(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2``,
    ``t ~ U{0..T-1}``."""
    n = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    abar = alphas_cumprod[t].to(x0.dtype)[:, None, None, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    return (net(xt, t.to(x0.dtype)) - eps).pow(2).mean()


def edm_loss(
    precond: EDMPrecond,
    x0: torch.Tensor,
    generator: torch.Generator,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> torch.Tensor:
    """EDM's loss (Karras et al. 2022, Eq. 8 with Table 1's choices):
    ``lambda(sigma) ||D(x0 + n, sigma) - x0||^2``, ``ln sigma ~ N(p_mean, p_std^2)``,
    ``lambda = (sigma^2 + sd^2) / (sigma sd)^2`` (= 1 / c_out^2, so the raw network's target has unit
    variance at every sigma)."""
    n = x0.shape[0]
    sigma = (torch.randn(n, generator=generator) * p_std + p_mean).exp().to(x0.dtype)
    sd = precond.sigma_data
    weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2)[:, None, None, None]
    noisy = x0 + torch.randn(x0.shape, generator=generator) * sigma[:, None, None, None]
    return (weight * (precond(noisy, sigma) - x0).pow(2)).mean()


def _lr_at(step: int, cfg: TrainConfig) -> float:
    # linear warm-up from lr/warmup to lr, then constant (the EMA does the averaging at the end)
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def save_model(module: torch.nn.Module, card: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` and its card ``<name>.json`` (with the file's sha256) atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    name = card["id"]
    weights = out_dir / f"{name}.safetensors"
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in module.state_dict().items()}
    # one metadata key only: safetensors writes the metadata map in no fixed order, so with several keys
    # two identical trainings could give files with different checksums
    atomic_write(weights, lambda p: save_file(state, str(p), metadata={"model": name}))
    card = {
        **card,
        "weights": {"file": weights.name, "sha256": sha256_file(weights), "content": "EMA weights"},
    }
    card_path = out_dir / f"{name}.json"
    atomic_write(card_path, lambda p: p.write_text(json.dumps(card, indent=1) + "\n"))
    return weights, card_path


def _round(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


def _checkpoint_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.ckpt.pt"


def _recipe(cfg: TrainConfig) -> dict:
    # everything but the length of the run: a run may be resumed with a different number of steps, and
    # because the learning rate is constant after warm-up, the first N steps of any run are the same
    d = cfg.to_dict()
    d.pop("steps")
    return d


def train(
    cfg: TrainConfig,
    out_dir: Path | str | None = MODELS_DIR,
    *,
    threads: int | None = 1,
    progress: bool = True,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> tuple[torch.nn.Module, dict]:
    """Train ``cfg`` on the train split of the digits; return the EMA module (eval mode) and its card.

    The card and weights are written to ``out_dir`` unless it is ``None``. ``threads`` fixes
    ``torch.set_num_threads`` for the run (recorded: float results depend on it); ``None`` leaves it.

    ``checkpoint_every`` writes the full training state (weights, EMA, optimizer, random states, loss
    curve) to ``<out_dir>/<name>.ckpt.pt`` every that many steps; ``resume=True`` continues from that
    file if it exists. A resumed run gives bit-for-bit the weights of an uninterrupted one (same threads),
    also when ``cfg.steps`` changed in between (the recipe otherwise must be the same).
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    if (checkpoint_every or resume) and out_dir is None:
        raise ValueError("checkpoint_every and resume need an out_dir")
    commit, dirty = git_state(("dode",))
    git = {"git_commit": commit, "git_dirty": dirty}
    digits = load_digits("train")
    data = digits.images.to(torch.float32)
    sigma_data = float(data.double().std()) if cfg.kind == "edm" else None

    torch.manual_seed(cfg.seed)  # network initialisation and dropout
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # batches, times / noise levels, noise
    model = build_network(cfg.net, cfg.kind, sigma_data)
    model.train()
    ema = EMA(model, decay=cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    alphas_cumprod = vp_schedule(cfg).alphas_cumprod.to(torch.float32) if cfg.kind == "eps" else None

    curve: list[float] = []  # mean loss of each full window of log_every steps
    window: list[float] = []
    # epochs of seeded permutations: every image is seen once per epoch
    order = torch.randperm(len(data), generator=generator)
    pos, first_step, elapsed_before, resumed_at = 0, 0, 0.0, []
    ckpt_path = _checkpoint_path(out_dir, cfg.name) if out_dir is not None else None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["recipe"] != _recipe(cfg):
            raise ValueError(f"checkpoint {ckpt_path} was written by another recipe; delete it to restart")
        if ckpt["step"] > cfg.steps:
            raise ValueError(f"checkpoint {ckpt_path} is at step {ckpt['step']}, beyond steps={cfg.steps}")
        model.load_state_dict(ckpt["model"])
        ema.shadow.load_state_dict(ckpt["ema"])
        ema.num_updates = ckpt["ema_updates"]
        opt.load_state_dict(ckpt["optimizer"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        curve, window, order, pos = ckpt["curve"], ckpt["window"], ckpt["order"], ckpt["pos"]
        first_step, elapsed_before = ckpt["step"], ckpt["elapsed_s"]
        resumed_at = [*ckpt["resumed_at"], first_step]
        git = ckpt["git"]  # the code that started the run

    start = time.perf_counter()
    bar = progress_bar(
        range(first_step, cfg.steps),
        initial=first_step,
        total=cfg.steps,
        desc=cfg.name,
        disable=not progress,
        mininterval=2.0,
    )
    for step in bar:
        if pos + cfg.batch_size > len(order):
            order = torch.randperm(len(data), generator=generator)
            pos = 0
        x0 = data[order[pos : pos + cfg.batch_size]]
        pos += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        if cfg.kind == "eps":
            loss = vp_eps_loss(model, x0, alphas_cumprod, generator)
        else:
            loss = edm_loss(model, x0, generator, cfg.p_mean, cfg.p_std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{cfg.name}: loss became {value} at step {step}")
        window.append(value)
        if len(window) == cfg.log_every:
            curve.append(_round(float(np.mean(window))))
            window = []
            bar.set_postfix(loss=f"{curve[-1]:.4f}", refresh=False)
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            ckpt = {
                "step": step + 1,
                "recipe": _recipe(cfg),
                "model": model.state_dict(),
                "ema": ema.shadow.state_dict(),
                "ema_updates": ema.num_updates,
                "optimizer": opt.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "curve": curve,
                "window": window,
                "order": order,
                "pos": pos,
                "elapsed_s": elapsed_before + time.perf_counter() - start,
                "resumed_at": resumed_at,
                "git": git,
            }
            atomic_write(ckpt_path, partial(torch.save, ckpt))
    bar.close()
    wall = elapsed_before + time.perf_counter() - start
    if window:  # a last, shorter window
        curve = [*curve, _round(float(np.mean(window)))]

    tail = max(1, len(curve) // 10)
    card = {
        "id": cfg.name,
        "card_format": CARD_FORMAT,
        "description": (
            "noise-prediction U-Net on the discrete linear VP schedule"
            if cfg.kind == "eps"
            else "EDM-preconditioned data-prediction U-Net (returns D(x, sigma))"
        )
        + ", trained on scikit-learn's 8x8 digits",
        "kind": cfg.kind,
        "prediction": "eps" if cfg.kind == "eps" else "x0",
        "schedule": (vp_schedule(cfg) if cfg.kind == "eps" else edm_schedule(cfg)).describe(),
        "model_time": "float training index in [0, T-1]" if cfg.kind == "eps" else "sigma",
        "architecture": {"class": "dode.zoo.nets.UNet", "config": cfg.net.to_dict()},
        "preconditioning": None
        if cfg.kind == "eps"
        else {
            "type": "edm",
            "class": "dode.zoo.nets.EDMPrecond",
            "sigma_data": sigma_data,
            "c_noise": "log(sigma)/4",
        },
        "sigma_data": sigma_data,
        "resolution": cfg.net.resolution,
        "channels": cfg.net.in_channels,
        "n_parameters": count_parameters(model),
        "dataset": {
            "name": "sklearn.datasets.load_digits",
            "split": "train",
            "n_images": len(data),
            "split_record": "dode/assets/digits_split.json",
            "split_seed": SPLIT_SEED,
            "n_held_out": N_HELD_OUT,
            "scaling": "pixel / 8 - 1 (from [0, 16] to [-1, 1])",
            "augmentation": None,
        },
        "training": {
            **cfg.to_dict(),
            "optimizer": "Adam",
            "lr_schedule": f"linear warm-up over {cfg.warmup_steps} steps, then constant",
            "loss": "mse on eps, t uniform on integer indices"
            if cfg.kind == "eps"
            else "EDM: lognormal sigma, weight (sigma^2 + sd^2) / (sigma sd)^2",
            "threads": torch.get_num_threads(),
            "wall_time_s": round(wall, 1),
            "resumed_at_steps": resumed_at,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            **git,
        },
        "loss": {
            "every": cfg.log_every,
            "curve": curve,
            "first": curve[0],
            "final": _round(float(np.mean(curve[-tail:]))),
            "final_over_last_steps": min(cfg.steps, tail * cfg.log_every),
        },
        # filled in by the evaluation (FD of samples in the digit classifier's features, etc.)
        "quality": {},
    }
    ema_model = ema.shadow.eval()
    if out_dir is not None:
        save_model(ema_model, card, Path(out_dir))
        card = json.loads((Path(out_dir) / f"{cfg.name}.json").read_text())
    return ema_model, card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dode.zoo.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=[*BASE_MODELS, "all"])
    parser.add_argument("--mini", action="store_true", help="train the miniature config (-mini model ids)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help=f"output folder (default {MODELS_DIR})")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, recorded in the card)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="write <out>/<name>.ckpt.pt every N steps"
    )
    parser.add_argument("--resume", action="store_true", help="continue from <out>/<name>.ckpt.pt if present")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    models = BASE_MODELS if args.model == "all" else (args.model,)
    for model in models:
        cfg = default_config(model, mini=args.mini, steps=args.steps, seed=args.seed)
        _, card = train(
            cfg,
            args.out,
            threads=args.threads,
            progress=not args.no_progress,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
        )
        print(
            f"{card['id']}: {card['n_parameters']:,} parameters, {cfg.steps} steps x {cfg.batch_size}, "
            f"final loss {card['loss']['final']:.4f}, {card['training']['wall_time_s']:.0f} s -> "
            f"{Path(args.out) / card['weights']['file']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
