"""Progressive distillation (Salimans & Ho 2022) of an EDM data-prediction model, for the cost comparison of
the paper's Table 1 / Fig. 8a.

The sampler being distilled is deterministic DDIM, i.e. Euler in sigma on EDM models (paper Eq. 37-38;
method chapter, section 2): a step from ``s`` to ``t`` with the denoiser output ``D`` is

    x_t = (t / s) x_s + (1 - t / s) D(x_s, s).                                                   (1)

A *student* with ``N`` steps starts as a copy of its teacher (``2N`` steps) and learns to land, in one step
from ``s = sigma_i``, where two teacher steps land (``s -> m -> t``). Because (1) is affine in ``D``, the
student output that makes its one step land exactly on the teacher's two-step result ``x~_t`` is

    D_target = (x~_t - (t / s) x_s) / (1 - t / s)                                                 (2)

(``= x~_t`` on the last step, where ``t = 0``) -- Salimans & Ho's x-target (their Algorithm 2) written for
EDM's ``alpha = 1``. The student is trained on noised train-split images ``x_s = x_0 + s * eps`` at its own
grid's step starts, drawn uniformly per example. Then it becomes the teacher and the step count halves
again, down to ``steps_end``.

Grids. Halving needs *nested* grids: the teacher's midpoints must be times the teacher was trained to step
from. EDM's N-step grid (N points of the rho grid, then sigma = 0) is not nested across N, so every level
uses a subset of the start grid ``make_grid(schedule, "edm", steps_start)``: the N-step grid is every
``steps_start / N``-th time of it (:func:`pd_grid`), exactly as Salimans & Ho keep every other time of
their uniform grid. The start teacher therefore samples on dode's own EDM grid, and a student of ``N`` steps
samples with the library's sampler, ``dode.sample(student, noise, "ddim", N, grid=pd_grid(...))`` (no second
sampler; :func:`sample_student` does just that).

Loss weight. ``edm`` (default) weights the squared error of ``D`` by EDM's
``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2`` (Karras et al. 2022, Table 1): for an
EDM-preconditioned network ``D = c_skip x + c_out F``, this is the plain squared error of the raw network
output ``F``, of unit scale at every noise level -- the loss the teacher itself was trained with, so no step
of the grid dominates the gradient. ``snr_trunc`` is Salimans & Ho's ``max(SNR, 1) = max(1/sigma^2, 1)``,
which has the same shape (``1/sigma^2`` at low noise, constant at high noise) without needing ``sd``.

Students are trained with dropout off (they run in eval mode, as Salimans & Ho's students have dropout 0),
Adam, gradient clipping and an EMA of the weights; the EMA weights are the student that samples and that
teaches the next level. Everything is seeded. With ``checkpoint_dir``, each finished student is saved
(``pd-<N>.safetensors`` + ``pd-<N>.json`` with its record and the recipe that made it), and a rerun with
the same recipe loads it instead of training again; ``checkpoint_every`` also saves the state inside a
halving, so a long (``paper``) halving resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dode.denoiser import Denoiser
from dode.files import atomic_write
from dode.grids import make_grid
from dode.progress import progress_bar
from dode.schedules import EDMSchedule
from dode.zoo.nets import EMA

__all__ = [
    "LOSS_WEIGHTS",
    "LR_SCHEDULES",
    "PDConfig",
    "Halving",
    "halving_steps",
    "pd_grid",
    "ddim_sigma_step",
    "student_target",
    "teacher_two_steps",
    "sample_student",
    "load_training_images",
    "training_images_of",
    "progressive_distillation",
]

LOSS_WEIGHTS = ("edm", "snr_trunc")
LR_SCHEDULES = ("linear", "constant")
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class PDConfig:
    """The recipe of one progressive distillation run (recorded with every student).

    ``iterations_per_halving`` Adam steps of ``batch_size`` images train each student; the learning rate
    decays linearly to 0 over each halving (``lr_schedule="linear"``, Salimans & Ho) or stays constant.
    ``ema_decay = 0`` keeps no average (Salimans & Ho's CIFAR-10 setting); the EMA warms up as in
    :class:`dode.zoo.nets.EMA`.
    """

    steps_start: int = 32
    steps_end: int = 2
    iterations_per_halving: int = 500
    batch_size: int = 128
    lr: float = 1e-4
    lr_schedule: str = "linear"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    loss_weight: str = "edm"
    seed: int = 0
    log_every: int = 25

    def __post_init__(self):
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        halving_steps(self.steps_start, self.steps_end)  # validates both
        for name in ("iterations_per_halving", "batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS}, got {self.loss_weight!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def halving_recipe(self) -> dict:
        """What determines one halving's student (given its teacher): everything but ``steps_end``, so a
        run can be extended to fewer steps and reuse the students it already has."""
        d = self.to_dict()
        d.pop("steps_end")
        return d


class Halving(NamedTuple):
    """One level of progressive distillation: the student's step count, the student, and its record."""

    steps: int
    denoiser: Denoiser
    record: dict


def halving_steps(steps_start: int, steps_end: int) -> list[int]:
    """The students' step counts: ``steps_start / 2, steps_start / 4, ..., steps_end``."""
    for name, value in (("steps_start", steps_start), ("steps_end", steps_end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    ratio = steps_start // steps_end
    if steps_start % steps_end or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"steps_start must be steps_end times a power of two >= 2 (each halving halves the steps), "
            f"got steps_start={steps_start}, steps_end={steps_end}"
        )
    out, n = [], int(steps_start)
    while n > steps_end:
        n //= 2
        out.append(n)
    return out


def pd_grid(schedule: EDMSchedule, steps_start: int, steps: int) -> torch.Tensor:
    """The ``steps``-step grid of a run that starts at ``steps_start``: every ``steps_start/steps``-th time of
    EDM's ``steps_start``-step grid (``steps + 1`` times, from sigma_max to 0)."""
    for name, value in (("steps_start", steps_start), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps_start % steps:
        raise ValueError(f"steps must divide steps_start={steps_start}, got {steps}")
    return make_grid(schedule, "edm", steps_start)[:: steps_start // steps].clone()


def ddim_sigma_step(x: torch.Tensor, d: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eq. (1): one DDIM (Euler in sigma) step from ``s`` to ``t`` with data prediction ``d``; ``s``, ``t``
    are per-example (batch,) tensors. The same update as ``dode.sample(..., "ddim")`` takes."""
    ratio = (t / s).reshape(-1, *([1] * (x.ndim - 1)))
    return ratio * x + (1 - ratio) * d


def student_target(x_s: torch.Tensor, x_teacher: torch.Tensor, s: torch.Tensor, t: torch.Tensor):
    """Eq. (2): the data prediction at ``(x_s, s)`` whose one step (1) lands on ``x_teacher`` at ``t``."""
    ratio = (t / s).reshape(-1, *([1] * (x_s.ndim - 1)))
    return (x_teacher - ratio * x_s) / (1 - ratio)


def _call(net: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, dtype, model_kwargs) -> torch.Tensor:
    return net(x.to(dtype), sigma.to(torch.float32 if dtype != torch.float64 else dtype), **model_kwargs)


@torch.no_grad()
def teacher_two_steps(
    teacher: torch.nn.Module,
    x_s: torch.Tensor,
    s: torch.Tensor,
    m: torch.Tensor,
    t: torch.Tensor,
    dtype=torch.float32,
    model_kwargs: dict | None = None,
) -> torch.Tensor:
    """Two DDIM steps ``s -> m -> t`` of the teacher network (per-example times), in float64."""
    kwargs = model_kwargs or {}
    x_s = x_s.to(torch.float64)
    x_m = ddim_sigma_step(x_s, _call(teacher, x_s, s, dtype, kwargs).to(torch.float64), s, m)
    return ddim_sigma_step(x_m, _call(teacher, x_m, m, dtype, kwargs).to(torch.float64), m, t)


def sample_student(halving: Halving, noise: torch.Tensor, steps_start: int) -> torch.Tensor:
    """Samples of a student: dode's DDIM on the student's nested grid (float64)."""
    from dode.sampling import sample

    den = halving.denoiser
    return sample(den, noise, "ddim", halving.steps, grid=pd_grid(den.schedule, steps_start, halving.steps))


def load_training_images(path: str | Path) -> torch.Tensor:
    """Training images for distillation from a ``.npy`` / ``.npz`` (first array) file, as float32 in [-1, 1].

    ``uint8`` arrays (0..255) are scaled to [-1, 1]; float arrays must already be in [-1, 1]. Layout
    ``(N, H, W, C)`` (as torchvision's ``CIFAR10(...).data``) or ``(N, C, H, W)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training images {path} not found")
    if path.suffix == ".npz":
        with np.load(path) as f:
            array = f[f.files[0]]
    elif path.suffix == ".npy":
        array = np.load(path)
    else:
        raise ValueError(f"training images must be a .npy or .npz file, got {path}")
    if array.ndim != 4:
        raise ValueError(
            f"training images must have 4 dimensions (N, H, W, C) or (N, C, H, W), got {array.shape}"
        )
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    images = torch.from_numpy(np.ascontiguousarray(array))
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 127.5 - 1.0
    images = images.to(torch.float32)
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError(f"float training images must lie in [-1, 1], got [{images.min()}, {images.max()}]")
    return images


def training_images_of(den: Denoiser) -> torch.Tensor:
    """The images a model was trained on, where dode has them (the embedded digits models)."""
    if den.info.get("source") == "embedded" or den.info.get("family") == "embedded":
        from dode.zoo.data import load_digits

        return load_digits("train").images.to(torch.float32)
    raise ValueError(
        f"data is required to distill {den.name!r}: the training images as a (N, C, H, W) tensor in [-1, 1] "
        "(see dode.zoo.progressive.load_training_images)"
    )


def _check_denoiser(den: Denoiser) -> torch.nn.Module:
    if not isinstance(den.schedule, EDMSchedule) or den.prediction != "x0":
        raise ValueError(
            "progressive distillation here distills EDM data-prediction models (EDMSchedule, prediction='x0'), "
            f"got {den!r}"
        )
    if not isinstance(den.fn, torch.nn.Module):
        raise TypeError("the denoiser's network must be a torch.nn.Module to be copied into a student")
    return den.fn


def _loss_weight(kind: str, sigma: torch.Tensor, sigma_data: float | None) -> torch.Tensor:
    if kind == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return torch.clamp(sigma**-2, min=1.0)  # snr_trunc: max(SNR, 1), SNR = 1 / sigma^2 on EDM


def _sigma_data(net: torch.nn.Module) -> float | None:
    value = getattr(net, "sigma_data", None)
    return None if value is None else float(value)


def _lr_at(it: int, cfg: PDConfig) -> float:
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * (1.0 - it / cfg.iterations_per_halving)  # linear decay to 0 over the halving


def _round(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


def _state_sha(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _student_denoiser(den: Denoiser, net: torch.nn.Module, steps: int, cfg: PDConfig, sha: str) -> Denoiser:
    grid = pd_grid(den.schedule, cfg.steps_start, steps)
    info = {
        **{k: v for k, v in den.info.items() if k not in ("card", "checkpoint_sha256")},
        "teacher_model": den.name,
        "checkpoint_sha256": sha,
        "pd_steps": steps,
        "pd_steps_start": cfg.steps_start,
        "pd_grid": [float(v) for v in grid],
        "pd_config": cfg.to_dict(),
    }
    return Denoiser(
        net,
        den.schedule,
        "x0",
        name=f"{den.name}-pd{steps}",
        dtype=den.dtype,
        model_kwargs=den.model_kwargs,
        info=info,
    )


def _save_student(path_stem: Path, net: torch.nn.Module, payload: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    weights = path_stem.with_suffix(".safetensors")
    atomic_write(weights, lambda p: save_file(state, str(p), metadata={"model": path_stem.name}))
    # the record goes last: a student counts as finished only once its record exists
    text = json.dumps(payload, indent=1, sort_keys=True) + "\n"
    atomic_write(path_stem.with_suffix(".json"), lambda p: p.write_text(text))


def _load_student(path_stem: Path, key: dict, template: torch.nn.Module, device) -> tuple | None:
    """The saved student and its record, if one was saved under ``key``; else None."""
    from safetensors.torch import load_file

    record_path, weights = path_stem.with_suffix(".json"), path_stem.with_suffix(".safetensors")
    if not (record_path.exists() and weights.exists()):
        return None
    payload = json.loads(record_path.read_text())
    if payload.get("key") != key:
        return None
    net = copy.deepcopy(template)
    net.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
    if _state_sha(net) != payload["record"]["sha256"]:
        return None
    return net.eval().requires_grad_(False), payload["record"]


def _train_halving(
    teacher: torch.nn.Module,
    den: Denoiser,
    steps: int,
    cfg: PDConfig,
    images: torch.Tensor,
    device,
    ckpt_path: Path | None,
    checkpoint_every: int | None,
    ckpt_key: dict,
    progress: bool,
) -> tuple[torch.nn.Module, dict]:
    """Train the ``steps``-step student of ``teacher`` (``2 * steps`` steps); return its EMA net and record."""
    fine = pd_grid(den.schedule, cfg.steps_start, 2 * steps).to(device)
    starts, mids, ends = fine[:-1:2], fine[1::2], fine[2::2]  # student step i: starts[i] -> ends[i]
    dtype, kwargs = den.dtype, den.model_kwargs
    sigma_data = _sigma_data(teacher)
    if cfg.loss_weight == "edm" and sigma_data is None:
        raise ValueError("loss_weight='edm' needs the network's sigma_data attribute; use 'snr_trunc'")

    # the seed of each halving differs, so levels do not reuse one noise stream
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + steps)
    student = copy.deepcopy(teacher).to(device)
    student.eval()  # dropout off (Salimans & Ho's students have dropout 0); no batch statistics anywhere
    student.requires_grad_(True)
    ema = EMA(student, decay=cfg.ema_decay)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=cfg.adam_betas)

    order = torch.randperm(len(images), generator=generator)
    pos, first, elapsed_before, curve, window, resumed_at = 0, 0, 0.0, [], [], []
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False, map_location=device)
        if ckpt["key"] == ckpt_key:
            student.load_state_dict(ckpt["student"])
            ema.shadow.load_state_dict(ckpt["ema"])
            ema.num_updates = ckpt["ema_updates"]
            opt.load_state_dict(ckpt["optimizer"])
            generator.set_state(ckpt["generator"])
            order, pos, curve, window = ckpt["order"], ckpt["pos"], ckpt["curve"], ckpt["window"]
            first, elapsed_before = ckpt["iteration"], ckpt["elapsed_s"]
            resumed_at = [*ckpt["resumed_at"], first]

    n = cfg.iterations_per_halving
    start = time.perf_counter()
    bar = progress_bar(
        range(first, n),
        initial=first,
        total=n,
        desc=f"PD {2 * steps}->{steps} steps",
        disable=not progress,
        mininterval=2.0,
    )
    for it in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=generator), 0
        x0 = images[order[pos : pos + cfg.batch_size]].to(device, torch.float64)
        pos += cfg.batch_size
        i = torch.randint(0, steps, (x0.shape[0],), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(device)
        s, m, t = starts[i], mids[i], ends[i]
        x_s = x0 + s.reshape(-1, *([1] * (x0.ndim - 1))) * eps
        x_teacher = teacher_two_steps(teacher, x_s, s, m, t, dtype, kwargs)
        target = student_target(x_s, x_teacher, s, t).to(dtype)
        weight = _loss_weight(cfg.loss_weight, s, sigma_data).to(dtype).reshape(-1, *([1] * (x0.ndim - 1)))
        for group in opt.param_groups:
            group["lr"] = _lr_at(it, cfg)
        out = _call(student, x_s, s, dtype, kwargs)
        loss = (weight * (out - target).pow(2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        ema.update()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"PD {2 * steps}->{steps}: loss became {value} at iteration {it}")
        window.append(value)
        if len(window) == cfg.log_every:
            curve.append(_round(float(np.mean(window))))
            window = []
            bar.set_postfix(loss=f"{curve[-1]:.4g}", refresh=False)
        if ckpt_path is not None and checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < n:
            state = {
                "key": ckpt_key,
                "iteration": it + 1,
                "student": student.state_dict(),
                "ema": ema.shadow.state_dict(),
                "ema_updates": ema.num_updates,
                "optimizer": opt.state_dict(),
                "generator": generator.get_state(),
                "order": order,
                "pos": pos,
                "curve": curve,
                "window": window,
                "elapsed_s": elapsed_before + time.perf_counter() - start,
                "resumed_at": resumed_at,
            }
            atomic_write(ckpt_path, partial(torch.save, state))
    bar.close()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    wall = elapsed_before + time.perf_counter() - start
    if window:
        curve = [*curve, _round(float(np.mean(window)))]
    tail = max(1, len(curve) // 10)
    net = ema.shadow.eval().requires_grad_(False)
    record = {
        "steps": steps,
        "teacher_steps": 2 * steps,
        "iterations": n,
        "images_seen": n * cfg.batch_size,
        "train_seconds": round(wall, 3),
        "loss_first": curve[0],
        "loss_final": _round(float(np.mean(curve[-tail:]))),
        "loss_curve": curve,
        "loss_every": cfg.log_every,
        "resumed_at_iterations": resumed_at,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "sha256": _state_sha(net),
    }
    return net, record


def progressive_distillation(
    denoiser: Denoiser,
    *,
    steps_start: int = 32,
    steps_end: int = 2,
    iterations_per_halving: int = 500,
    batch_size: int = 128,
    lr: float = 1e-4,
    lr_schedule: str = "linear",
    ema_decay: float = 0.999,
    grad_clip: float = 1.0,
    loss_weight: str = "edm",
    seed: int = 0,
    data: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    evaluate: Callable[[Halving], dict] | None = None,
    device=None,
    progress: bool = True,
) -> list[Halving]:
    """Distill ``denoiser``'s ``steps_start``-step DDIM sampler into students of half as many steps each time,
    down to ``steps_end``. Returns one :class:`Halving` ``(steps, student Denoiser, record)`` per level.

    Parameters
    ----------
    denoiser: an EDM data-prediction :class:`~dode.Denoiser` whose ``fn`` is a torch module (the teacher).
    steps_start, steps_end: the first teacher's steps and the last student's; their ratio is a power of 2.
    iterations_per_halving, batch_size, lr, lr_schedule, ema_decay, grad_clip, loss_weight, seed: the recipe
        (:class:`PDConfig`).
    data: training images ``(N, C, H, W)`` in [-1, 1]; default the digits' train split for embedded models.
    checkpoint_dir: save each student there and reuse saved students of the same recipe and teacher.
    checkpoint_every: also save the training state every that many iterations inside a halving.
    evaluate: called with each finished :class:`Halving`; the dict it returns (e.g. ``{"fd": ...}``) is
        merged into the record. It runs outside the timed training.
    device: where to train (default: the teacher's device).

    Each record holds ``steps``, ``teacher_steps``, ``iterations``, ``train_seconds`` (this halving) and
    ``cumulative_train_seconds`` (all halvings up to it), the loss curve, ``sha256`` of the student's weights,
    ``resumed`` (1 if loaded from ``checkpoint_dir``) and what ``evaluate`` returned.
    """
    cfg = PDConfig(
        steps_start=steps_start,
        steps_end=steps_end,
        iterations_per_halving=iterations_per_halving,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        ema_decay=ema_decay,
        grad_clip=grad_clip,
        loss_weight=loss_weight,
        seed=seed,
    )
    teacher = _check_denoiser(denoiser)
    if device is None:
        params = list(teacher.parameters())
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    images = training_images_of(denoiser) if data is None else torch.as_tensor(data, dtype=torch.float32)
    if images.ndim != 4 or len(images) < cfg.batch_size:
        raise ValueError(
            f"data must be (N, C, H, W) images with N >= batch_size={cfg.batch_size}, got {tuple(images.shape)}"
        )
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer or None, got {checkpoint_every!r}")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    teacher = teacher.to(device).eval()
    teacher_id = {
        "model": denoiser.name,
        "sha256": denoiser.info.get("checkpoint_sha256") or _state_sha(teacher),
    }
    data_id = {"n_images": int(len(images)), "sum": _round(float(images.double().sum()), 10)}
    out: list[Halving] = []
    cumulative = 0.0
    for steps in halving_steps(cfg.steps_start, cfg.steps_end):
        key = {
            "format": CHECKPOINT_FORMAT,
            "recipe": cfg.halving_recipe(),
            "steps": steps,
            "teacher": teacher_id,
            "data": data_id,
            "dtype": str(denoiser.dtype),
        }
        stem = ckpt_dir / f"pd-{steps:04d}" if ckpt_dir is not None else None
        loaded = _load_student(stem, key, teacher, device) if stem is not None else None
        if loaded is not None:
            student, record = loaded
            record = {**record, "resumed": 1}
        else:
            ckpt_path = stem.with_suffix(".ckpt.pt") if stem is not None else None
            student, record = _train_halving(
                teacher, denoiser, steps, cfg, images, device, ckpt_path, checkpoint_every, key, progress
            )
            record = {**record, "resumed": 0}
            if stem is not None:
                _save_student(stem, student, {"key": key, "record": record})
                if ckpt_path.exists():
                    ckpt_path.unlink()
        cumulative += record["train_seconds"]
        record["cumulative_train_seconds"] = round(cumulative, 3)
        student_den = _student_denoiser(denoiser, student, steps, cfg, record["sha256"])
        halving = Halving(steps, student_den, record)
        if evaluate is not None:
            record.update(evaluate(halving) or {})
        out.append(halving)
        # the student becomes the teacher of the next level
        teacher_id = {"model": student_den.name, "sha256": record["sha256"]}
        teacher = student
    return out
