"""The zoo's registry and what every loader shares: each model's metadata (:data:`MODELS`), the authors'
code a family needs (:data:`CLONES`), and the checks that turn a missing checkpoint or clone into an error
with the command that fetches it. The loaders (:mod:`dode.zoo` and its family modules) import this; it
imports none of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODELS",
    "CLONES",
    "CloneMissing",
    "CheckpointMissing",
    "available",
    "default_checkpoint",
    "checkpoint_missing",
    "clone_root",
    "checkpoint_file",
    "class_onehot",
    "EDM_SCHEDULE",
]

_EDM_PRETRAINED = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
_ADM_PRETRAINED = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
EDM_SCHEDULE = {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
_LINEAR_VP = "vp linear beta 1e-4..0.02, T=1000"

#: the authors' code a family needs to load its checkpoints: the load option naming a local clone, the
#: repository, and the module the clone must contain
CLONES: dict[str, dict[str, str]] = {
    "edm": {"option": "edm_repo", "url": "https://github.com/NVlabs/edm", "module": "torch_utils"},
    "adm": {
        "option": "guided_diffusion_repo",
        "url": "https://github.com/openai/guided-diffusion",
        "module": "guided_diffusion",
    },
    "ddim": {"option": "ddim_repo", "url": "https://github.com/ermongroup/ddim", "module": "models"},
}


class CheckpointMissing(FileNotFoundError):
    """A model's checkpoint is not on this machine (and the zoo downloads nothing unless asked)."""


class CloneMissing(FileNotFoundError):
    """The clone of a model's authors' code (:data:`CLONES`) is not given, or the folder given is not one."""


def _embedded(prediction: str, schedule: str) -> dict[str, Any]:
    return {
        "family": "embedded",
        "role": "embedded",
        "resolution": 8,
        "channels": 1,
        "schedule": schedule,
        "prediction": prediction,
        "class_conditional": False,
        "label_dim": 0,
        "source": "dode.zoo.embedded (trained here on sklearn's 8x8 digits, weights under dode/assets/models/)",
        "fid_reference": "fd",
    }


def _ddpm(repo_id: str, resolution: int, reference: str, role: str) -> dict[str, Any]:
    return {
        "family": "diffusers",
        "role": role,
        "repo_id": repo_id,
        "resolution": resolution,
        "channels": 3,
        "schedule": _LINEAR_VP + " (from the scheduler config)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": f"Hugging Face hub {repo_id} (diffusers): a local folder via path=, or the hub cache",
        "fetch": f"hf download {repo_id} --local-dir <DIR>",
        "fid_reference": reference,
    }


def _edm(file: str, resolution: int, label_dim: int, reference: str) -> dict[str, Any]:
    return {
        "family": "edm",
        "role": "paper",
        "url": _EDM_PRETRAINED + file,
        "file": file,
        "resolution": resolution,
        "channels": 3,
        "schedule": "edm sigma 0.002..80, rho=7",
        "prediction": "x0",
        "class_conditional": label_dim > 0,
        "label_dim": label_dim,
        "source": f"EDM's pickle {_EDM_PRETRAINED}{file} (loads with a clone of NVlabs/edm: edm_repo=)",
        "fetch": f"wget {_EDM_PRETRAINED}{file}",
        "fid_reference": reference,
    }


def _adm(file: str, resolution: int, label_dim: int, reference: str, flags: dict) -> dict[str, Any]:
    return {
        "family": "adm",
        "role": "paper",
        "url": _ADM_PRETRAINED + file,
        "file": file,
        "resolution": resolution,
        "channels": 3,
        "schedule": _LINEAR_VP + " (guided-diffusion's 'linear')",
        "prediction": "eps",
        "class_conditional": label_dim > 0,
        "label_dim": label_dim,
        "source": f"guided-diffusion's {file} (loads with a clone of openai/guided-diffusion: "
        "guided_diffusion_repo=); learned sigma, the eps half of the output is used",
        "fetch": f"wget {_ADM_PRETRAINED}{file}",
        "fid_reference": reference,
        # create_model's arguments, from the model card's MODEL_FLAGS of guided-diffusion's README
        "flags": flags,
    }


_ADM_COMMON = dict(
    num_channels=256,
    num_res_blocks=2,
    num_heads=4,
    attention_resolutions="32,16,8",
    learn_sigma=True,
    resblock_updown=True,
    use_scale_shift_norm=True,
)

# name -> metadata. "schedule" describes the schedule of the loaded Denoiser; "source" is where the weights
# come from and "fetch" the command that fetches them on a machine with internet; "fid_reference" names the
# reference statistics of dode.metrics.REFERENCE_STATS (or "fd" for the embedded digits, scored with
# dode.metrics.FD); "role" tells the paper's models from the extras and the embedded ones.
MODELS: dict[str, dict[str, Any]] = {
    "digits-eps": _embedded("eps", "vp (discrete, see dode.zoo.embedded)"),
    "digits-edm": _embedded("x0", "edm (see dode.zoo.embedded)"),
    "ddpm-cifar10": _ddpm("google/ddpm-cifar10-32", 32, "cifar10", "paper"),
    "ddim-celeba64": {
        "family": "ddim",
        "role": "paper",
        "file": "ckpt.pth",
        "resolution": 64,
        "channels": 3,
        "schedule": _LINEAR_VP + " (the DDIM repository's configs/celeba.yml)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": "the DDIM authors' CelebA 64 checkpoint ckpt.pth (Google Drive id "
        "1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR; loads with a clone of ermongroup/ddim: ddim_repo=)",
        "fetch": "gdown 1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR -O ckpt.pth",
        "config": "configs/celeba.yml",
        "fid_reference": "celeba-64",
    },
    "adm-imagenet128": _adm(
        "128x128_diffusion.pt", 128, 1000, "imagenet-128", dict(_ADM_COMMON, class_cond=True)
    ),
    "adm-lsun-bedroom": _adm(
        "lsun_bedroom.pt",
        256,
        0,
        "lsun-bedroom-256",
        dict(_ADM_COMMON, class_cond=False, num_head_channels=64, dropout=0.1),
    ),
    "edm-cifar10-uncond-vp": _edm("edm-cifar10-32x32-uncond-vp.pkl", 32, 0, "cifar10"),
    "edm-ffhq-64": _edm("edm-ffhq-64x64-uncond-vp.pkl", 64, 0, "ffhq-64"),
    "edm-imagenet-64": _edm("edm-imagenet-64x64-cond-adm.pkl", 64, 1000, "imagenet-64"),
    "ddpm-celebahq": _ddpm("google/ddpm-celebahq-256", 256, "celebahq-256", "extra"),
    "ddpm-bedroom": _ddpm("google/ddpm-bedroom-256", 256, "lsun-bedroom-256", "extra"),
}
# the quick-to-train variants of the embedded models (same formats, fewer steps)
for _base in ("digits-eps", "digits-edm"):
    MODELS[_base + "-mini"] = {**MODELS[_base], "source": MODELS[_base]["source"] + "; mini variant"}


def available() -> dict[str, dict[str, Any]]:
    """Names of the loadable models with their metadata (role, resolution, channels, schedule, prediction,
    class-conditional, label_dim, source, fetch command, FID reference)."""
    return {name: dict(meta) for name, meta in MODELS.items()}


def default_checkpoint(name: str) -> Path | None:
    """Where a model's checkpoint is looked for when ``path=`` is not given: the torch hub cache for EDM's
    pickles (where ``download=True`` puts them); ``None`` for the families that need ``path=`` (or, for
    diffusers models, find the hub cache themselves)."""
    meta = MODELS[name]
    if meta["family"] == "edm":
        return Path(torch.hub.get_dir()) / "checkpoints" / "edm" / meta["file"]
    return None


def checkpoint_missing(name: str, what: str) -> CheckpointMissing:
    """The error for a model whose checkpoint is not here: what is missing and the command that fetches it."""
    meta = MODELS[name]
    return CheckpointMissing(
        f"{what}. {name!r} is {meta['source']}; on a machine with internet fetch it with "
        f"`{meta['fetch']}` and pass its path as path= (in a paper run: model_options.{name}.path)"
    )


def clone_root(family: str, root, name: str) -> Path:
    """Put the clone of a family's authors' code on ``sys.path`` (first) and return it.

    The clone must hold the module the checkpoints are rebuilt with (:data:`CLONES`). A module of that name
    already imported from elsewhere (another clone, loaded earlier in this process) is dropped from
    ``sys.modules``, so the code of *this* clone is the one that runs."""
    spec = CLONES[family]
    option, module = spec["option"], spec["module"]
    if root is None:
        raise CloneMissing(
            f"{name!r} needs its authors' code to load: clone {spec['url']} (`git clone {spec['url']}`) and "
            f"pass its folder as {option}= (in a paper run: model_options.{name}.{option})"
        )
    root = Path(root).resolve()
    if not ((root / module).is_dir() or (root / f"{module}.py").is_file()):
        raise CloneMissing(
            f"{option}={root} has no {module}/ folder; pass a clone of {spec['url']} "
            f"(`git clone {spec['url']}`)"
        )
    loaded = sys.modules.get(module)
    where = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", [])), None)
    if loaded is not None and where and root not in Path(where).resolve().parents:
        for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
            del sys.modules[key]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def checkpoint_file(name: str, path) -> Path:
    """The checkpoint file of a model that needs ``path=`` (adm, ddim): it must be given and exist."""
    meta = MODELS[name]
    if path is None:
        raise checkpoint_missing(name, f"{name!r} needs path= its checkpoint {meta['file']}")
    file = Path(path)
    if not file.is_file():
        raise checkpoint_missing(name, f"the checkpoint of {name!r} was not found at {file}")
    return file


def class_onehot(class_labels, label_dim: int, x: torch.Tensor) -> torch.Tensor | None:
    """Class labels (int, ints, or one-hot rows) as one-hot float32 rows, one per sample of ``x``;
    ``None`` for an unconditional model. Missing labels of a conditional model are an error: the authors'
    code would silently condition on all-zero labels (EDM) or fail deep inside (guided-diffusion)."""
    if label_dim == 0:
        if class_labels is not None:
            raise ValueError("class_labels given to an unconditional network")
        return None
    if class_labels is None:
        raise ValueError(
            f"this network is class-conditional ({label_dim} labels): pass class_labels= to "
            "dode.zoo.load or bind them with den.bind(class_labels=...)"
        )
    labels = torch.as_tensor(class_labels, device=x.device)
    batch = x.shape[0]
    if labels.dtype.is_floating_point and labels.ndim == 2:
        if labels.shape[1] != label_dim:
            raise ValueError(f"one-hot class_labels must have {label_dim} columns, got {tuple(labels.shape)}")
        onehot = labels.to(torch.float32)
    else:
        labels = labels.long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= label_dim):
            raise ValueError(f"class_labels must lie in [0, {label_dim - 1}]")
        onehot = nn.functional.one_hot(labels, label_dim).to(torch.float32)
    if onehot.shape[0] == 1:
        onehot = onehot.expand(batch, -1)
    if onehot.shape[0] != batch:
        raise ValueError(f"got {onehot.shape[0]} class labels for a batch of {batch}")
    return onehot
