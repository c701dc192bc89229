"""The model zoo: every pretrained model of the companion behind one call, ``load(name) -> Denoiser``.

Each family is wrapped so that the solvers see only a :class:`~dode.denoiser.Denoiser` (the network's
native denoising output, its schedule and prediction type; book/method.md, "Models, schedules and
denoising outputs"):

* ``digits-*``: the embedded U-Nets trained on the 8x8 digits (:mod:`dode.zoo.embedded`; profiles smoke/cpu).
* the paper's seven models (``role: "paper"`` in :func:`available`):

  - noise prediction: ``ddpm-cifar10`` (Ho et al.'s DDPM in diffusers' format), ``ddim-celeba64`` (the
    DDIM authors' CelebA 64 checkpoint, DDPM architecture; :mod:`dode.zoo.ddim_repo`), ``adm-imagenet128``
    and ``adm-lsun-bedroom`` (Dhariwal & Nichol's guided-diffusion; :mod:`dode.zoo.guided_diffusion`), all
    on DDPM's linear VP schedule (T = 1000), rebuilt in float64;
  - data prediction: ``edm-cifar10-uncond-vp``, ``edm-ffhq-64``, ``edm-imagenet-64`` (EDM pickles,
    ``EDMSchedule(0.002, 80, 7)``).

* extras (``role: "extra"``): ``ddpm-celebahq`` and ``ddpm-bedroom``, Ho et al.'s 256x256 DDPMs, which are
  not the paper's models.

Checkpoints that need their authors' code to load (EDM, guided-diffusion, DDIM) take the path of a local
clone of that code (``edm_repo``, ``guided_diffusion_repo``, ``ddim_repo``), which the loader puts on
``sys.path``. Nothing is downloaded unless asked for (``download=True``, or an explicit URL as ``path``):
every missing file is an error that says where the file comes from and the command that fetches it on a
machine with internet (``fetch`` in :func:`available`). Every loaded model records the content hash of its
checkpoint (``checkpoint_sha256``; a diffusers folder is hashed file by file), which results files use to
refuse mixing runs of different checkpoints. Pretrained weights are never shipped with the companion; the
loaders are exercised by the tests on miniature checkpoints written in the same formats.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dode.denoiser import Denoiser
from dode.files import content_sha256
from dode.schedules import EDMSchedule, VPSchedule
from dode.zoo.checkpoints import (
    CLONES,
    EDM_SCHEDULE,
    MODELS,
    CheckpointMissing,
    CloneMissing,
    available,
    checkpoint_missing,
    class_onehot,
    clone_root,
    default_checkpoint,
)

__all__ = [
    "available",
    "load",
    "MODELS",
    "CLONES",
    "EDMPickleImportError",
    "CheckpointMissing",
    "CloneMissing",
    "vp_schedule_from_scheduler_config",
    "prediction_from_scheduler_config",
    "diffusers_denoiser",
    "default_checkpoint",
]


def load(
    name: str,
    *,
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    class_labels=None,
    download: bool = False,
    **options,
) -> Denoiser:
    """Load a model of :func:`available` as a :class:`~dode.denoiser.Denoiser`.

    Parameters
    ----------
    name:
        a model name (see :func:`available`).
    path:
        the checkpoint. embedded: weights file (default: the committed one); diffusers: a local folder
        (default: the Hugging Face cache); edm: a pickle, or an ``http(s)://`` / ``file://`` URL fetched
        into the torch hub cache (default: that cache, see :func:`default_checkpoint`); adm, ddim: the
        ``.pt``/``.pth`` file (required).
    device, dtype:
        where the network runs and the dtype it is called in (e.g. ``torch.float16`` on a GPU; not for EDM
        networks, which choose their precision themselves).
    class_labels:
        class-conditional models only: the labels bound to every call -- an int, a sequence/tensor of ints
        (one per sample), or one-hot rows ``(batch, label_dim)``. Equivalently bind them later with
        ``den.bind(class_labels=...)``.
    download:
        opt in to fetching a checkpoint that is not here (diffusers: from the hub; edm: from NVIDIA's URL).
        Off by default: a missing file is a :class:`CheckpointMissing` error with the fetch command.
    options:
        edm: ``edm_repo`` (a clone of NVlabs/edm); adm: ``guided_diffusion_repo`` (a clone of
        openai/guided-diffusion), ``use_fp16``; ddim: ``ddim_repo`` (a clone of ermongroup/ddim), ``ema``;
        diffusers: ``revision`` (hub revision).
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
        if download:
            raise ValueError(f"download=True does not apply to the embedded model {name!r}")
        den = _load_embedded(name, path, **options)
    elif family == "diffusers":
        den = _load_diffusers(name, path, download=download, **options)
    elif family == "edm":
        den = _load_edm(name, path, download=download, **options)
    else:
        if download:
            raise ValueError(
                f"download=True is not supported for {name!r}; fetch it with `{MODELS[name]['fetch']}`"
            )
        from dode.zoo import ddim_repo, guided_diffusion

        loader = guided_diffusion.load if family == "adm" else ddim_repo.load
        den = loader(name, MODELS[name], path, **options)
        _warn_on_mismatch(name, str(path), den.info)
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


_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0"}


def prediction_from_scheduler_config(config: dict) -> str:
    """dode's prediction type (``eps``/``x0``) for a diffusers scheduler config's ``prediction_type``."""
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {sorted(_PREDICTION_TYPES)} in the scheduler config, "
            f"got {prediction_type!r}"
        )
    return _PREDICTION_TYPES[prediction_type]


def diffusers_denoiser(unet: nn.Module, scheduler_config: dict, *, name: str | None = None) -> Denoiser:
    """A diffusers ``UNet2DModel`` with the schedule and prediction type of its scheduler config.

    The network is called exactly as a diffusers pipeline calls it at the float time ``t`` (a float32
    timestep, see :class:`_DiffusersUNet`), so a pipeline and :func:`dode.sample` see the same outputs.
    """
    config = dict(scheduler_config)
    prediction = prediction_from_scheduler_config(config)
    schedule = vp_schedule_from_scheduler_config(config)
    return Denoiser(_DiffusersUNet(unet.eval()), schedule, prediction, name=name)


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


def _load_diffusers(
    name: str, path, revision: str | None = None, download: bool = False, **options
) -> Denoiser:
    if options:
        raise TypeError(
            f"unexpected options for {name!r}: {sorted(options)} (accepted: path, revision, download)"
        )
    from diffusers import UNet2DModel

    repo_id = MODELS[name]["repo_id"]
    if path is None:
        root = _hub_folder(name, repo_id, revision, download)
        source = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    else:
        root = Path(path)
        if not root.is_dir():
            raise checkpoint_missing(
                name, f"path for {name!r} must be a diffusers folder, {root} is not a directory"
            )
        source = str(root.resolve())
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

    den = diffusers_denoiser(unet, sched_config, name=name)
    cfg = unet.config
    info = {
        **MODELS[name],
        "zoo_name": name,
        "checkpoint": source,
        # the whole folder: weights and both configs (a changed scheduler config changes the numbers too)
        "checkpoint_sha256": content_sha256(root),
        "resolution": int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]),
        "channels": int(cfg.in_channels),
        "label_dim": int(cfg.num_class_embeds or 0),
        "class_conditional": bool(cfg.num_class_embeds),
        "schedule": den.schedule.describe(),
        "prediction": den.prediction,
    }
    _warn_on_mismatch(name, source, info)
    den.info = info
    return den


def _hub_folder(name: str, repo_id: str, revision: str | None, download: bool) -> Path:
    """The hub snapshot of ``repo_id``: from the local Hugging Face cache, or (``download=True``) fetched."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=not download))
    except Exception as err:  # not cached, offline, unknown revision...: all end the same way
        if not download:
            raise checkpoint_missing(
                name, f"{repo_id} is not in the Hugging Face cache and download=True was not given ({err})"
            ) from err
        raise OSError(
            f"could not download {repo_id} from the Hugging Face hub: {err}. On a machine without "
            f"internet, fetch it elsewhere (`hf download {repo_id} --local-dir DIR`), copy DIR here "
            "and pass path=DIR"
        ) from err


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
        return self.net(x, sigma, class_onehot(class_labels, self.label_dim, x))


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
            "and pass edm_repo='/path/to/edm' to dode.zoo.load (in a paper run: model_options.<model>.edm_repo), "
            "or add it to PYTHONPATH"
        ) from err
    if isinstance(obj, dict):
        if "ema" not in obj:
            raise KeyError(f"{path} holds a dict without the key 'ema' (EDM's network); keys: {sorted(obj)}")
        obj = obj["ema"]
    if not isinstance(obj, nn.Module):
        raise TypeError(f"{path} does not hold a network (an nn.Module, or a dict with one under 'ema')")
    return obj


def _load_edm(
    name: str, path, edm_repo: str | Path | None = None, download: bool = False, **options
) -> Denoiser:
    if options:
        raise TypeError(
            f"unexpected options for {name!r}: {sorted(options)} (accepted: path, edm_repo, download)"
        )
    meta = MODELS[name]
    if edm_repo is not None:
        clone_root("edm", edm_repo, name)
    if path is not None and str(path).startswith(("http://", "https://", "file://")):
        src, file = str(path), _fetch_url(str(path))  # an explicit URL is the user's opt-in
    elif path is not None:
        src, file = str(path), Path(path)
        if not file.is_file():
            raise checkpoint_missing(name, f"EDM pickle for {name!r} not found at {file}")
    else:
        file = default_checkpoint(name)
        src = str(file)
        if not file.is_file():
            if not download:
                raise checkpoint_missing(
                    name,
                    f"EDM pickle for {name!r} not found at {file} (the torch hub cache) and download=True "
                    "was not given",
                )
            src, file = meta["url"], _fetch_url(meta["url"])
    net = _unpickle_network(file).eval()
    resolution = int(getattr(net, "img_resolution", meta["resolution"]))
    channels = int(getattr(net, "img_channels", meta["channels"]))
    label_dim = int(getattr(net, "label_dim", 0) or 0)
    schedule = EDMSchedule(EDM_SCHEDULE["sigma_min"], EDM_SCHEDULE["sigma_max"], EDM_SCHEDULE["rho"])
    info = {
        **meta,
        "zoo_name": name,
        "checkpoint": src,
        "checkpoint_sha256": content_sha256(file),
        "resolution": resolution,
        "channels": channels,
        "label_dim": label_dim,
        "class_conditional": label_dim > 0,
        "schedule": schedule.describe(),
        "sigma_data": float(getattr(net, "sigma_data", 0.5)),
    }
    _warn_on_mismatch(name, str(file), info)
    return Denoiser(_EDMNet(net, label_dim), schedule, "x0", name=name, info=info)
