"""Dhariwal & Nichol's guided-diffusion checkpoints (ADM): ``adm-imagenet128`` and ``adm-lsun-bedroom``.

The checkpoints are plain ``state_dict`` files of guided-diffusion's ``UNetModel``; the network is rebuilt
with ``guided_diffusion.script_util.create_model`` from a local clone of github.com/openai/guided-diffusion
(``guided_diffusion_repo=``), with the arguments of the model card's ``MODEL_FLAGS`` (``flags`` in
:data:`dode.zoo.MODELS`), and the weights are loaded strictly. The models learn their variance
(``learn_sigma``): the network returns ``[eps, v]`` stacked on the channels, and the probability-flow ODE
needs only the noise prediction, the first half. The schedule is guided-diffusion's ``linear`` one at
1000 steps, DDPM's betas 1e-4..0.02, rebuilt in float64; the network takes the training index as its time
input (``rescale_timesteps`` is off for these models), as a float for fractional times.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dode.denoiser import Denoiser
from dode.files import content_sha256
from dode.schedules import VPSchedule

__all__ = ["load"]


class _ADMNet(nn.Module):
    """guided-diffusion's ``UNetModel(x, timesteps, y)`` called as ``fn(x, t, class_labels=None)``,
    returning the eps half of the learned-sigma output."""

    def __init__(self, unet: nn.Module, label_dim: int, channels: int):
        super().__init__()
        self.unet = unet
        self.label_dim = label_dim
        self.channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        from dode.zoo.checkpoints import class_onehot

        onehot = class_onehot(class_labels, self.label_dim, x)
        y = None if onehot is None else onehot.argmax(dim=1)  # guided-diffusion embeds class indices
        out = self.unet(x, t.to(torch.float32), y=y)
        return out[:, : self.channels].to(x.dtype)


def load(
    name: str,
    meta: dict,
    path,
    guided_diffusion_repo: str | Path | None = None,
    use_fp16: bool = False,
    **options,
) -> Denoiser:
    """Rebuild ``name``'s network from the clone, load the checkpoint at ``path``; see the module doc.

    ``use_fp16`` runs the U-Net's inner blocks in float16 as guided-diffusion's sampling scripts do on a
    GPU (``convert_to_fp16``); off by default, so the network computes in float32."""
    from dode.zoo.checkpoints import checkpoint_file, clone_root

    if options:
        raise TypeError(
            f"unexpected options for {name!r}: {sorted(options)} "
            "(accepted: path, guided_diffusion_repo, use_fp16)"
        )
    file = checkpoint_file(name, path)
    clone_root("adm", guided_diffusion_repo, name)
    from guided_diffusion.script_util import create_model

    flags = dict(meta["flags"])
    unet = create_model(image_size=meta["resolution"], use_fp16=use_fp16, **flags)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{file} does not hold a state_dict (guided-diffusion's checkpoint format)")
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{file} does not fit {name!r}'s architecture ({flags}); is it guided-diffusion's {meta['file']}? "
            f"{err}"
        ) from err
    if use_fp16:
        unet.convert_to_fp16()
    unet.eval()
    schedule = VPSchedule.linear(1e-4, 0.02, 1000)
    info = {
        **meta,
        "zoo_name": name,
        "checkpoint": str(file.resolve()),
        "checkpoint_sha256": content_sha256(file),
        "schedule": schedule.describe(),
        "use_fp16": int(use_fp16),
    }
    return Denoiser(_ADMNet(unet, meta["label_dim"], meta["channels"]), schedule, "eps", name=name, info=info)
