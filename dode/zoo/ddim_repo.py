"""The DDIM authors' CelebA 64 checkpoint (``ddim-celeba64``), DDPM's architecture.

The network is the DDIM repository's ``models.diffusion.Model``, built from its ``configs/celeba.yml`` and
imported from a local clone of github.com/ermongroup/ddim (``ddim_repo=``). The checkpoint (``ckpt.pth``)
is what the repository's training loop saves: a list ``[model state, optimizer state, epoch, step, EMA
shadow]``, the model state with ``DataParallel``'s ``module.`` prefix. As the repository's sampler does
with ``model.ema: True``, the model state is loaded strictly and the EMA parameters then replace the
trained ones (``ema=False`` keeps the trained ones); a bare ``state_dict`` is accepted too. The schedule is
the config's linear betas in float64; the network takes the training index as its time input.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from torch import nn

from dode.denoiser import Denoiser
from dode.files import content_sha256
from dode.schedules import VPSchedule

__all__ = ["load"]


def _namespace(value):
    """A nested config as attributes, what the DDIM repository's ``dict2namespace`` makes of its YAML."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


class _DDIMNet(nn.Module):
    """``Model(x, t)`` called as ``fn(x, t)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t.to(torch.float32))


def _states(file: Path, ema: bool) -> tuple[dict, dict | None]:
    states = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(states, dict):
        return states, None
    if not isinstance(states, list | tuple) or not states or not isinstance(states[0], dict):
        raise TypeError(
            f"{file} holds neither a state_dict nor the DDIM repository's checkpoint list "
            "[model, optimizer, epoch, step, ema]"
        )
    shadow = states[-1] if ema and len(states) >= 5 and isinstance(states[-1], dict) else None
    if ema and shadow is None:
        raise ValueError(f"{file} holds no EMA parameters (a list of 5 entries); pass ema=False to use it")
    return states[0], shadow


def load(
    name: str, meta: dict, path, ddim_repo: str | Path | None = None, ema: bool = True, **options
) -> Denoiser:
    """Build the repository's ``Model`` from its config, load the checkpoint at ``path``; see the module doc."""
    from dode.zoo.checkpoints import checkpoint_file, clone_root

    if options:
        raise TypeError(
            f"unexpected options for {name!r}: {sorted(options)} (accepted: path, ddim_repo, ema)"
        )
    file = checkpoint_file(name, path)
    root = clone_root("ddim", ddim_repo, name)
    config_file = root / meta["config"]
    if not config_file.is_file():
        raise FileNotFoundError(f"ddim_repo={root} has no {meta['config']}; pass a clone of ermongroup/ddim")
    config = _namespace(yaml.safe_load(config_file.read_text()))
    from models.diffusion import Model

    model = Model(config)
    state, shadow = _states(file, ema)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{file} does not fit the Model of {config_file}: {err}") from err
    if shadow is not None:
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(shadow))
        if missing:
            raise ValueError(f"the EMA parameters of {file} lack {missing[:5]}")
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(shadow[key])
    diffusion = config.diffusion
    if diffusion.beta_schedule != "linear":
        raise ValueError(f"{config_file}: beta_schedule {diffusion.beta_schedule!r}, expected 'linear'")
    schedule = VPSchedule.linear(
        float(diffusion.beta_start), float(diffusion.beta_end), int(diffusion.num_diffusion_timesteps)
    )
    info = {
        **meta,
        "zoo_name": name,
        "checkpoint": str(file.resolve()),
        "checkpoint_sha256": content_sha256(file),
        "resolution": int(config.data.image_size),
        "channels": int(config.data.channels),
        "schedule": schedule.describe(),
        "ema": int(ema),
    }
    return Denoiser(_DDIMNet(model.eval()), schedule, "eps", name=name, info=info)
