"""The model zoo: every pretrained model of the companion behind one call, ``load(name) -> Denoiser``.

Three families, each wrapped so that the solvers see only a :class:`~dode.denoiser.Denoiser` (the network's
native denoising output, its schedule and prediction type, method chapter, section 1):

* ``digits-*``: the embedded U-Nets trained on the 8x8 digits (:mod:`dode.zoo.embedded`; profiles smoke/cpu).
* ``ddpm-*``: the DDPM checkpoints of Ho et al. in diffusers' format (``UNet2DModel`` + scheduler config),
  noise prediction, discrete VP schedule rebuilt in float64 from the scheduler's beta settings. Loaded from
  the Hugging Face hub on a machine with internet, or from a local folder (``path=``).
* ``edm-*``: EDM networks (Karras et al. 2022), pickles with EDM's ``net(x, sigma, class_labels)`` interface,
  data prediction, ``EDMSchedule(0.002, 80, 7)``. Loaded from a path or URL (``path=``).

``available()`` lists the names with their metadata. Pretrained weights are never shipped with the
companion; the loaders are exercised by the tests on miniature checkpoints written in the same formats.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dode.denoiser import Denoiser
from dode.files import sha256_file
from dode.schedules import EDMSchedule, VPSchedule

__all__ = ["available", "load", "MODELS", "EDMPickleImportError", "vp_schedule_from_scheduler_config"]

_EDM_PRETRAINED = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
_EDM_SCHEDULE = {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}

# name -> metadata. "schedule" describes the schedule of the loaded Denoiser; "source" is where the weights
# come from; "fid_reference" names the reference statistics of dode.metrics.REFERENCE_STATS (or "fd" for the
# embedded digits, scored with dode.metrics.FD).
MODELS: dict[str, dict[str, Any]] = {
    "digits-eps": {
        "family": "embedded",
        "resolution": 8,
        "channels": 1,
        "schedule": "vp (discrete, see dode.zoo.embedded)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": "dode.zoo.embedded (trained here on sklearn's 8x8 digits, weights under data/models/)",
        "fid_reference": "fd",
    },
    "digits-edm": {
        "family": "embedded",
        "resolution": 8,
        "channels": 1,
        "schedule": "edm (see dode.zoo.embedded)",
        "prediction": "x0",
        "class_conditional": False,
        "label_dim": 0,
        "source": "dode.zoo.embedded (trained here on sklearn's 8x8 digits, weights under data/models/)",
        "fid_reference": "fd",
    },
    "ddpm-cifar10": {
        "family": "diffusers",
        "repo_id": "google/ddpm-cifar10-32",
        "resolution": 32,
        "channels": 3,
        "schedule": "vp linear beta 1e-4..0.02, T=1000 (from the scheduler config)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": "Hugging Face hub google/ddpm-cifar10-32 (diffusers), or a local copy via path=",
        "fid_reference": "cifar10",
    },
    "ddpm-celebahq": {
        "family": "diffusers",
        "repo_id": "google/ddpm-celebahq-256",
        "resolution": 256,
        "channels": 3,
        "schedule": "vp linear beta 1e-4..0.02, T=1000 (from the scheduler config)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": "Hugging Face hub google/ddpm-celebahq-256 (diffusers), or a local copy via path=",
        "fid_reference": "celebahq-256",
    },
    "ddpm-bedroom": {
        "family": "diffusers",
        "repo_id": "google/ddpm-bedroom-256",
        "resolution": 256,
        "channels": 3,
        "schedule": "vp linear beta 1e-4..0.02, T=1000 (from the scheduler config)",
        "prediction": "eps",
        "class_conditional": False,
        "label_dim": 0,
        "source": "Hugging Face hub google/ddpm-bedroom-256 (diffusers), or a local copy via path=",
        "fid_reference": "lsun-bedroom-256",
    },
    "edm-cifar10-uncond-vp": {
        "family": "edm",
        "url": _EDM_PRETRAINED + "edm-cifar10-32x32-uncond-vp.pkl",
        "resolution": 32,
        "channels": 3,
        "schedule": "edm sigma 0.002..80, rho=7",
        "prediction": "x0",
        "class_conditional": False,
        "label_dim": 0,
        "source": _EDM_PRETRAINED + "edm-cifar10-32x32-uncond-vp.pkl (needs the EDM repository on sys.path)",
        "fid_reference": "cifar10",
    },
    "edm-ffhq-64": {
        "family": "edm",
        "url": _EDM_PRETRAINED + "edm-ffhq-64x64-uncond-vp.pkl",
        "resolution": 64,
        "channels": 3,
        "schedule": "edm sigma 0.002..80, rho=7",
        "prediction": "x0",
        "class_conditional": False,
        "label_dim": 0,
        "source": _EDM_PRETRAINED + "edm-ffhq-64x64-uncond-vp.pkl (needs the EDM repository on sys.path)",
        "fid_reference": "ffhq-64",
    },
    "edm-imagenet-64": {
        "family": "edm",
        "url": _EDM_PRETRAINED + "edm-imagenet-64x64-cond-adm.pkl",
        "resolution": 64,
        "channels": 3,
        "schedule": "edm sigma 0.002..80, rho=7",
        "prediction": "x0",
        "class_conditional": True,
        "label_dim": 1000,
        "source": _EDM_PRETRAINED + "edm-imagenet-64x64-cond-adm.pkl (needs the EDM repository on sys.path)",
        "fid_reference": "imagenet-64",
    },
}
# the quick-to-train variants of the embedded models (same formats, fewer steps)
for _base in ("digits-eps", "digits-edm"):
    MODELS[_base + "-mini"] = {**MODELS[_base], "source": MODELS[_base]["source"] + "; mini variant"}


def available() -> dict[str, dict[str, Any]]:
    """Names of the loadable models with their metadata (resolution, channels, schedule, prediction,
    class-conditional, label_dim, source, FID reference)."""
    return {name: dict(meta) for name, meta in MODELS.items()}


def load(
    name: str,
    *,
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    class_labels=None,
    **options,
) -> Denoiser:
    """Load a model of :func:`available` as a :class:`~dode.denoiser.Denoiser`.

    Parameters
    ----------
    name:
        a model name (see :func:`available`).
    path:
        embedded: weights file (default: the committed one); ddpm: a local diffusers folder (default: the
        hub repo); edm: a local pickle or an ``http(s)://`` / ``file://`` URL (default: EDM's official URL,
        downloaded once into the torch hub cache).
    device, dtype:
        where the network runs and the dtype it is called in (e.g. ``torch.float16`` on a GPU; not for EDM
        networks, which choose their precision themselves).
    class_labels:
        class-conditional models only: the labels bound to every call -- an int, a sequence/tensor of ints
        (one per sample), or one-hot rows ``(batch, label_dim)``. Equivalently bind them later with
        ``den.bind(class_labels=...)``.
    options:
        edm: ``edm_repo`` (a clone of github.com/NVlabs/edm, put on ``sys.path`` for the unpickling).
        ddpm: ``revision`` (hub revision).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    family = MODELS[name]["family"]
    if family == "edm" and dtype is not None:
        # EDM's networks cast their input to float32 and run float16 internally when pickled with use_fp16
        raise ValueError(
            f"dtype must be left unset for EDM networks ({name!r}): they manage their own precision"
        )
    if family == "embedded":
        den = _load_embedded(name, path, **options)
    elif family == "diffusers":
        den = _load_diffusers(name, path, **options)
    else:
        den = _load_edm(name, path, **options)
    if isinstance(den.fn, nn.Module):
        den.fn.to(device=device, dtype=dtype).eval()
        if dtype is not None:
            den.dtype = dtype
    if class_labels is not None:
        if not den.info.get("label_dim"):
            raise ValueError(f"class_labels given, but {name!r} is not class-conditional")
        den = den.bind(class_labels=class_labels)
    return den


# ----------------------------------------------------------------------------------------------------------
# embedded digits models


def _load_embedded(name: str, path, **options) -> Denoiser:
    if options:
        raise TypeError(f"unexpected options for {name!r}: {sorted(options)} (only path= is accepted)")
    from dode.zoo import embedded  # lazily: the embedded models are optional for the paper profile

    den = embedded.load_denoiser(name, path=path)
    # the loaded model's own schedule and prediction type are authoritative over the listing
    den.info = {
        **MODELS[name],
        **den.info,
        "zoo_name": name,
        "schedule": den.schedule.describe(),
        "prediction": den.prediction,
    }
    return den


# ----------------------------------------------------------------------------------------------------------
# diffusers DDPM checkpoints


def vp_schedule_from_scheduler_config(config: dict) -> VPSchedule:
    """The discrete VP schedule of a diffusers scheduler config, rebuilt in float64.

    diffusers computes its betas in float32; recomputing them in float64 from the same settings keeps the
    continuous-time interpolation of ``log alpha`` (method chapter, section 1) free of float32 rounding.
    Also reads the keys of the first diffusers releases (``timesteps``), still found in some repos.
    """
    T = int(config.get("num_train_timesteps", config.get("timesteps", 1000)))
    kind = config.get("beta_schedule", "linear")
    trained = config.get("trained_betas")
    start = float(config.get("beta_start", 1e-4))
    end = float(config.get("beta_end", 0.02))
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr schedules reach alpha = 0 and are not supported")
    if trained is not None:
        betas = np.asarray(trained, dtype=np.float64)
        return VPSchedule(np.cumprod(1.0 - betas), name="trained_betas")
    if kind == "linear":
        return VPSchedule.linear(start, end, T)
    if kind == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
        sched = VPSchedule(np.cumprod(1.0 - betas), name="scaled_linear")
        sched._params = {"beta_start": start, "beta_end": end, "T": T}
        return sched
    if kind == "squaredcos_cap_v2":
        return VPSchedule.cosine(T=T, s=0.008, max_beta=0.999)
    raise ValueError(
        f"beta_schedule {kind!r} of the scheduler config is not supported; "
        "supported: 'linear', 'scaled_linear', 'squaredcos_cap_v2', or trained_betas"
    )


class _DiffusersUNet(nn.Module):
    """``UNet2DModel`` called as ``fn(x, t)`` with dode's float time ``t`` in [0, T-1].

    ``t`` is handed to the UNet as a float32 tensor: a Python number would be cast to an integer by
    diffusers, and a float16 ``t`` cannot resolve the fractional training indices of continuous-time
    solvers (its spacing is 0.5 above 512).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        return self.unet(x, t.to(torch.float32), class_labels=class_labels, return_dict=False)[0]


def _warn_on_mismatch(name: str, source: str, info: dict) -> None:
    """A checkpoint shaped unlike the model it is loaded as is allowed (e.g. a fine-tune), but said."""
    for key in ("resolution", "channels", "label_dim"):
        if info[key] != MODELS[name][key]:
            warnings.warn(
                f"{source} has {key}={info[key]}, but {name!r} is listed with {key}={MODELS[name][key]}",
                stacklevel=4,
            )


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


#: load the weights plainly: diffusers' default (low_cpu_mem_usage) needs the accelerate package and, without
#: it, logs a notice on every load that falls back to this same plain load
_PLAIN_LOAD = {"low_cpu_mem_usage": False}


def _load_diffusers(name: str, path, revision: str | None = None, **options) -> Denoiser:
    if options:
        raise TypeError(f"unexpected options for {name!r}: {sorted(options)} (accepted: path, revision)")
    from diffusers import UNet2DModel

    repo_id = MODELS[name]["repo_id"]
    if path is not None:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"path for {name!r} must be a diffusers folder, {root} is not a directory"
            )
        # pipelines save into unet/ and scheduler/; a bare save_pretrained writes to the folder itself
        unet_sub = "unet" if (root / "unet" / "config.json").is_file() else None
        sched_file = next(
            (
                p
                for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
                if p.is_file()
            ),
            None,
        )
        if (unet_sub is None and not (root / "config.json").is_file()) or sched_file is None:
            raise FileNotFoundError(
                f"{root} is not a diffusers DDPM folder: expected the UNet's config.json and weights "
                "(in unet/ or at the top) and scheduler_config.json (in scheduler/ or at the top)"
            )
        unet = UNet2DModel.from_pretrained(str(root), subfolder=unet_sub, **_PLAIN_LOAD)
        sched_config = _read_json(sched_file)
        source = str(root.resolve())
    else:
        unet, sched_config = _diffusers_from_hub(name, repo_id, revision)
        source = f"hf://{repo_id}" + (f"@{revision}" if revision else "")

    prediction_type = sched_config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "sample"):
        raise ValueError(
            f"{name!r}: scheduler prediction_type {prediction_type!r} is not supported "
            "(supported: 'epsilon', 'sample')"
        )
    schedule = vp_schedule_from_scheduler_config(sched_config)
    cfg = unet.config
    info = {
        **MODELS[name],
        "zoo_name": name,
        "checkpoint": source,
        "resolution": int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]),
        "channels": int(cfg.in_channels),
        "label_dim": int(cfg.num_class_embeds or 0),
        "class_conditional": bool(cfg.num_class_embeds),
        "schedule": schedule.describe(),
        "prediction": "eps" if prediction_type == "epsilon" else "x0",
    }
    _warn_on_mismatch(name, source, info)
    return Denoiser(_DiffusersUNet(unet.eval()), schedule, info["prediction"], name=name, info=info)


def _diffusers_from_hub(name: str, repo_id: str, revision: str | None):
    from diffusers import UNet2DModel
    from huggingface_hub import hf_hub_download

    try:
        # the google/ddpm-* repos carry the pipeline layout (unet/, scheduler/) next to legacy top-level files
        try:
            sched_file = hf_hub_download(repo_id, "scheduler/scheduler_config.json", revision=revision)
            unet = UNet2DModel.from_pretrained(repo_id, subfolder="unet", revision=revision, **_PLAIN_LOAD)
        except Exception:  # any failure of the pipeline layout: try the flat one
            sched_file = hf_hub_download(repo_id, "scheduler_config.json", revision=revision)
            unet = UNet2DModel.from_pretrained(repo_id, revision=revision, **_PLAIN_LOAD)
    except Exception as err:
        raise OSError(
            f"could not load {name!r} from the Hugging Face hub ({repo_id}): {err}. On a machine without "
            "internet, copy the repository to a folder "
            f"(e.g. `huggingface-cli download {repo_id} --local-dir DIR`) and pass path=DIR"
        ) from err
    return unet, _read_json(Path(sched_file))


# ----------------------------------------------------------------------------------------------------------
# EDM pickles


class EDMPickleImportError(ImportError):
    """An EDM (or other) network pickle refers to modules that are not importable here."""


class _EDMNet(nn.Module):
    """An EDM network called as ``fn(x, sigma, class_labels=None)``; labels are checked and made one-hot."""

    def __init__(self, net: nn.Module, label_dim: int):
        super().__init__()
        self.net = net
        self.label_dim = label_dim

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
        return self.net(x, sigma, self._labels(class_labels, x))

    def _labels(self, class_labels, x: torch.Tensor):
        if self.label_dim == 0:
            if class_labels is not None:
                raise ValueError("class_labels given to an unconditional EDM network")
            return None
        if class_labels is None:
            # EDM silently uses all-zero labels here; that is never what a user wants
            raise ValueError(
                f"this EDM network is class-conditional ({self.label_dim} labels): pass class_labels= to "
                "dode.zoo.load or bind them with den.bind(class_labels=...)"
            )
        labels = torch.as_tensor(class_labels, device=x.device)
        batch = x.shape[0]
        if labels.dtype.is_floating_point and labels.ndim == 2:
            if labels.shape[1] != self.label_dim:
                raise ValueError(
                    f"one-hot class_labels must have {self.label_dim} columns, got {labels.shape}"
                )
            onehot = labels.to(torch.float32)
        else:
            labels = labels.long().reshape(-1)
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
                raise ValueError(f"class_labels must lie in [0, {self.label_dim - 1}]")
            onehot = nn.functional.one_hot(labels, self.label_dim).to(torch.float32)
        if onehot.shape[0] == 1:
            onehot = onehot.expand(batch, -1)
        if onehot.shape[0] != batch:
            raise ValueError(f"got {onehot.shape[0]} class labels for a batch of {batch}")
        return onehot


def _fetch_url(url: str) -> Path:
    """A URL's file in the torch hub cache, downloaded (visibly) on first use."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / "edm" / url.rstrip("/").split("/")[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"dode.zoo: downloading {url} -> {target}", file=sys.stderr)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:
        raise OSError(
            f"could not download {url} to {target}: {err}. Without internet, copy the file there "
            "or pass path= a local copy"
        ) from err
    return target


def _unpickle_network(path: Path) -> nn.Module:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)  # runs code from the pickle: load only files you trust
    except (ModuleNotFoundError, AttributeError) as err:
        missing = getattr(err, "name", None) or str(err)
        raise EDMPickleImportError(
            f"cannot unpickle {path}: {missing!r} is not importable ({err}). A network pickle rebuilds the "
            "network with the code of the modules it was pickled from; EDM pickles need the EDM repository "
            "(https://github.com/NVlabs/edm: its `torch_utils` and `dnnlib` packages) on sys.path: clone it "
            "and pass edm_repo='/path/to/edm' to dode.zoo.load, or add it to PYTHONPATH"
        ) from err
    if isinstance(obj, dict):
        if "ema" not in obj:
            raise KeyError(f"{path} holds a dict without the key 'ema' (EDM's network); keys: {sorted(obj)}")
        obj = obj["ema"]
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{path} does not hold a network (an nn.Module, or a dict with one under 'ema')")
    return obj


def _load_edm(name: str, path, edm_repo: str | Path | None = None, **options) -> Denoiser:
    if options:
        raise TypeError(f"unexpected options for {name!r}: {sorted(options)} (accepted: path, edm_repo)")
    meta = MODELS[name]
    if edm_repo is not None:
        edm_repo = str(Path(edm_repo).resolve())
        if not (Path(edm_repo) / "torch_utils").is_dir():
            raise FileNotFoundError(
                f"edm_repo={edm_repo} has no torch_utils/ folder; pass a clone of NVlabs/edm"
            )
        if edm_repo not in sys.path:
            sys.path.insert(0, edm_repo)
    src = str(path) if path is not None else meta["url"]
    if src.startswith(("http://", "https://", "file://")):
        file = _fetch_url(src)
    else:
        file = Path(src)
        if not file.is_file():
            raise FileNotFoundError(f"EDM pickle for {name!r} not found at {file}")
    net = _unpickle_network(file).eval()
    resolution = int(getattr(net, "img_resolution", meta["resolution"]))
    channels = int(getattr(net, "img_channels", meta["channels"]))
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    schedule = EDMSchedule(_EDM_SCHEDULE["sigma_min"], _EDM_SCHEDULE["sigma_max"], _EDM_SCHEDULE["rho"])
    info = {
        **meta,
        "zoo_name": name,
        "checkpoint": src,
        "sha256": sha256_file(file),
        "resolution": resolution,
        "channels": channels,
        "label_dim": label_dim,
        "class_conditional": label_dim > 0,
        "schedule": schedule.describe(),
        "sigma_data": float(getattr(net, "sigma_data", 0.5)),
    }
    _warn_on_mismatch(name, str(file), info)
    return Denoiser(_EDMNet(net, label_dim), schedule, "x0", name=name, info=info)
