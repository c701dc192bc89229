"""The model zoo on miniature checkpoints in the real formats (diffusers folders, EDM-style pickles)."""

from __future__ import annotations

import importlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dode import zoo
from dode.denoiser import Denoiser
from dode.files import sha256_file
from dode.schedules import EDMSchedule, VPSchedule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the EDM-like network's module, for unpickling
import edm_like_net  # noqa: E402
from conftest import tiny_unet  # noqa: E402

PAPER_MODELS = {
    # name: (prediction, resolution, label_dim, FID reference)
    "ddpm-cifar10": ("eps", 32, 0, "cifar10"),
    "ddim-celeba64": ("eps", 64, 0, "celeba-64"),
    "adm-imagenet128": ("eps", 128, 1000, "imagenet-128"),
    "adm-lsun-bedroom": ("eps", 256, 0, "lsun-bedroom-256"),
    "edm-cifar10-uncond-vp": ("x0", 32, 0, "cifar10"),
    "edm-ffhq-64": ("x0", 64, 0, "ffhq-64"),
    "edm-imagenet-64": ("x0", 64, 1000, "imagenet-64"),
}


def test_available_lists_the_paper_models_with_their_metadata():
    from dode.metrics import REFERENCE_STATS

    names = zoo.available()
    assert {n for n, m in names.items() if m["role"] == "paper"} == set(PAPER_MODELS)
    assert {n for n, m in names.items() if m["role"] == "extra"} == {"ddpm-celebahq", "ddpm-bedroom"}
    for name, (prediction, resolution, label_dim, reference) in PAPER_MODELS.items():
        meta = names[name]
        assert (meta["prediction"], meta["resolution"], meta["label_dim"]) == (
            prediction,
            resolution,
            label_dim,
        )
        assert meta["class_conditional"] == (label_dim > 0) and meta["fid_reference"] == reference
        assert REFERENCE_STATS[reference]["resolution"] == resolution, name
        for key in ("channels", "schedule", "source", "fetch"):
            assert meta[key], (name, key)
        # noise-prediction models on DDPM's linear schedule, data-prediction ones on EDM's
        assert ("linear beta 1e-4..0.02, T=1000" in meta["schedule"]) == (prediction == "eps"), name
    for name in ("digits-eps", "digits-edm", "digits-eps-mini", "digits-edm-mini"):
        assert names[name]["role"] == "embedded" and names[name]["fid_reference"] == "fd"


def test_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match="unknown model 'ddpm-mnist'.*ddpm-cifar10.*edm-imagenet-64"):
        zoo.load("ddpm-mnist")


# ---------------------------------------------------------------------------------------------------------
# diffusers


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    """A bare ``save_pretrained`` of a UNet and a DDPMScheduler into one folder."""
    from diffusers import DDPMScheduler

    folder = tmp_path_factory.mktemp("ddpm_flat")
    unet = tiny_unet()
    unet.save_pretrained(folder)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, clip_sample=True)
    scheduler.save_pretrained(folder)
    return folder, unet


def test_ddpm_folder_gives_the_direct_unet_output(ddpm_folder):
    folder, unet = ddpm_folder
    den = zoo.load("ddpm-cifar10", path=folder)
    assert isinstance(den, Denoiser) and den.prediction == "eps" and den.name == "ddpm-cifar10"
    assert den.schedule == VPSchedule.linear(1e-4, 0.02, 1000)
    assert den.info["resolution"] == 32 and den.info["channels"] == 3 and den.info["label_dim"] == 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 500.5, 999.0):
        with torch.no_grad():
            direct = unet(x, torch.full((2,), t)).sample
        torch.testing.assert_close(den(x, t), direct.double(), rtol=0, atol=0)
    # the fractional training index reaches the UNet (not truncated to an integer)
    assert not torch.equal(den(x, 500.5), den(x, 500.0))


def test_ddpm_schedule_matches_diffusers_alphas_cumprod():
    from diffusers import DDPMScheduler

    for kwargs in (
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
    ):
        sched = DDPMScheduler(num_train_timesteps=1000, **kwargs)
        ours = zoo.vp_schedule_from_scheduler_config(dict(sched.config))
        expected = sched.alphas_cumprod.double().numpy()
        np.testing.assert_allclose(ours.alphas_cumprod.numpy(), expected, rtol=2e-5)
    # the first diffusers releases (still in google/ddpm-*'s top-level files) wrote "timesteps"
    legacy = {"_class_name": "GaussianDDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
              "beta_end": 0.02, "timesteps": 1000}  # fmt: skip
    assert zoo.vp_schedule_from_scheduler_config(legacy) == VPSchedule.linear()
    with pytest.raises(ValueError, match="beta_schedule 'exotic'"):
        zoo.vp_schedule_from_scheduler_config({"beta_schedule": "exotic"})


def test_ddpm_pipeline_layout_and_dtype(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    den = zoo.load("ddpm-cifar10", path=tmp_path, dtype=torch.float64)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        direct = unet.double()(x, torch.tensor([123.25], dtype=torch.float64)).sample
    torch.testing.assert_close(den(x, 123.25), direct, rtol=1e-6, atol=1e-6)


def test_ddpm_bad_folders_and_prediction_types(tmp_path):
    from diffusers import DDPMScheduler

    with pytest.raises(FileNotFoundError, match="not a directory"):
        zoo.load("ddpm-bedroom", path=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        zoo.load("ddpm-bedroom", path=tmp_path)
    tiny_unet().save_pretrained(tmp_path)
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="v_prediction"):
        zoo.load("ddpm-cifar10", path=tmp_path)
    with pytest.raises(TypeError, match="unexpected options"):
        zoo.load("ddpm-cifar10", path=tmp_path, edm_repo="x")


def test_ddpm_with_other_resolution_warns(tmp_path):
    from diffusers import DDPMScheduler

    tiny_unet(sample_size=16).save_pretrained(tmp_path)
    DDPMScheduler().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="resolution=16"):
        den = zoo.load("ddpm-celebahq", path=tmp_path)
    assert den.info["resolution"] == 16


# ---------------------------------------------------------------------------------------------------------
# EDM pickles


def _pickle(obj, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_edm_pickle_round_trips(tmp_path):
    torch.manual_seed(0)
    net = edm_like_net.TinyEDMNet(img_resolution=32).eval()
    path = _pickle({"ema": net, "augment_pipe": None, "dataset_kwargs": {}}, tmp_path / "net.pkl")
    den = zoo.load("edm-cifar10-uncond-vp", path=path)
    assert den.prediction == "x0" and den.schedule == EDMSchedule(0.002, 80, 7)
    assert den.info["resolution"] == 32 and den.info["channels"] == 3 and den.info["label_dim"] == 0
    assert den.info["schedule"] == {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for sigma in (80.0, 1.5, 0.002):
        with torch.no_grad():
            direct = net(x, torch.full((4,), sigma))
        torch.testing.assert_close(den(x, sigma), direct.double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        zoo.load("edm-cifar10-uncond-vp", path=path, class_labels=3)
    with pytest.raises(ValueError, match="dtype must be left unset"):
        zoo.load("edm-cifar10-uncond-vp", path=path, dtype=torch.float16)


def test_edm_class_conditional_labels(tmp_path):
    torch.manual_seed(0)
    net = edm_like_net.TinyEDMNet(img_resolution=64, label_dim=1000).eval()
    path = _pickle({"ema": net}, tmp_path / "cond.pkl")
    den = zoo.load("edm-imagenet-64", path=path)
    assert den.info["class_conditional"] and den.info["label_dim"] == 1000
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="class-conditional \\(1000 labels\\)"):
        den(x, 2.0)
    onehot = torch.nn.functional.one_hot(torch.tensor([3, 999]), 1000).float()
    with torch.no_grad():
        direct = net(x, torch.full((2,), 2.0), onehot).double()
    torch.testing.assert_close(den.bind(class_labels=[3, 999])(x, 2.0), direct, rtol=0, atol=0)
    torch.testing.assert_close(zoo.load("edm-imagenet-64", path=path, class_labels=onehot)(x, 2.0), direct)
    # one label for the whole batch
    with torch.no_grad():
        same = net(x, torch.full((2,), 2.0), torch.nn.functional.one_hot(torch.tensor([7, 7]), 1000).float())
    torch.testing.assert_close(den.bind(class_labels=7)(x, 2.0), same.double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="must lie in \\[0, 999\\]"):
        den.bind(class_labels=[1000, 0])(x, 2.0)
    with pytest.raises(ValueError, match="3 class labels for a batch of 2"):
        den.bind(class_labels=[1, 2, 3])(x, 2.0)


def test_edm_pickle_with_unimportable_modules_says_what_to_do(tmp_path):
    # a network pickled from a module of a package named like EDM's, which is then made unimportable
    repo = tmp_path / "edm_clone"
    (repo / "torch_utils").mkdir(parents=True)
    (repo / "torch_utils" / "__init__.py").write_text("")
    (repo / "torch_utils" / "tiny_networks.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    img_resolution, img_channels, label_dim = 32, 3, 0\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.scale = torch.nn.Parameter(torch.tensor(0.5))\n"
        "    def forward(self, x, sigma, class_labels=None):\n"
        "        return self.scale * x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)\n"
    )
    saved_path = list(sys.path)
    try:
        sys.path.insert(0, str(repo))
        module = importlib.import_module("torch_utils.tiny_networks")
        path = _pickle({"ema": module.Net()}, tmp_path / "edm.pkl")
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if k == "torch_utils" or k.startswith("torch_utils.")]:
            del sys.modules[key]
        importlib.invalidate_caches()

    with pytest.raises(zoo.EDMPickleImportError) as err:
        zoo.load("edm-cifar10-uncond-vp", path=path)
    message = str(err.value)
    assert "torch_utils" in message and "NVlabs/edm" in message and "edm_repo" in message

    # with the "repository" handed over, the same pickle loads
    try:
        den = zoo.load("edm-cifar10-uncond-vp", path=path, edm_repo=repo)
        x = torch.ones(1, 3, 32, 32)
        torch.testing.assert_close(den(x, 1.0), torch.full((1, 3, 32, 32), 0.25, dtype=torch.float64))
    finally:
        sys.path[:] = saved_path
        for key in [k for k in sys.modules if k == "torch_utils" or k.startswith("torch_utils.")]:
            del sys.modules[key]
    with pytest.raises(FileNotFoundError, match="torch_utils"):
        zoo.load("edm-cifar10-uncond-vp", path=path, edm_repo=tmp_path)


def test_edm_from_file_url_is_cached_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    net = edm_like_net.TinyEDMNet(img_resolution=64)
    path = _pickle({"ema": net}, tmp_path / "edm-ffhq-64x64-uncond-vp.pkl")
    den = zoo.load("edm-ffhq-64", path=path.as_uri())
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "edm" / path.name
    assert cached.is_file()
    assert den.info["checkpoint_sha256"] == sha256_file(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        zoo.load("edm-ffhq-64", path=tmp_path / "nothing.pkl")
    _pickle({"net": net}, tmp_path / "nokey.pkl")
    with pytest.raises(KeyError, match="'ema'"):
        zoo.load("edm-ffhq-64", path=tmp_path / "nokey.pkl")


# ---------------------------------------------------------------------------------------------------------
# embedded digits models: the zoo defers to dode.zoo.embedded.load_denoiser (written elsewhere)


def test_digits_models_are_loaded_through_dode_embedded(monkeypatch):
    calls = []

    def load_denoiser(name, path=None):
        calls.append((name, path))
        return Denoiser(lambda x, t: x, VPSchedule.linear(), "eps", name=name, info={"steps": 10})

    fake = types.ModuleType("dode.zoo.embedded")
    fake.load_denoiser = load_denoiser
    monkeypatch.setitem(sys.modules, "dode.zoo.embedded", fake)
    monkeypatch.setattr(zoo, "embedded", fake, raising=False)
    den = zoo.load("digits-eps-mini", path="weights.safetensors")
    assert calls == [("digits-eps-mini", "weights.safetensors")]
    assert den.info["steps"] == 10 and den.info["resolution"] == 8
    assert den.info["zoo_name"] == "digits-eps-mini"
    assert den.info["schedule"] == VPSchedule.linear().describe() and den.info["prediction"] == "eps"
    with pytest.raises(TypeError, match="unexpected options"):
        zoo.load("digits-edm", steps=3)


# ---------------------------------------------------------------------------------------------------------
# nothing is downloaded unless asked for


def test_missing_checkpoints_name_the_fetch_command_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(zoo.CheckpointMissing, match=r"wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"):
        zoo.load("edm-ffhq-64")
    with pytest.raises(zoo.CheckpointMissing, match=r"`hf download google/ddpm-cifar10-32 --local-dir"):
        zoo.load("ddpm-cifar10")
    with pytest.raises(zoo.CheckpointMissing, match=r"wget https://openaipublic.*/lsun_bedroom.pt"):
        zoo.load("adm-lsun-bedroom")
    with pytest.raises(zoo.CheckpointMissing, match=r"gdown 1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR"):
        zoo.load("ddim-celeba64", path=tmp_path / "nothing.pth")
    # a pickle pre-placed in the torch hub cache is found without path=
    net = edm_like_net.TinyEDMNet(img_resolution=64)
    _pickle({"ema": net}, _mkdir(zoo.default_checkpoint("edm-ffhq-64")))
    assert zoo.load("edm-ffhq-64").info["checkpoint"] == str(zoo.default_checkpoint("edm-ffhq-64"))


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_diffusers_folder_is_identified_by_its_content(tmp_path):
    from diffusers import DDPMScheduler

    folder = tmp_path / "ddpm"
    tiny_unet().save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    first = zoo.load("ddpm-cifar10", path=folder).info["checkpoint_sha256"]
    copy = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(folder, copy)
    assert zoo.load("ddpm-cifar10", path=copy).info["checkpoint_sha256"] == first  # where it lies: no matter
    DDPMScheduler(num_train_timesteps=1000, beta_end=0.03).save_pretrained(copy)
    assert zoo.load("ddpm-cifar10", path=copy).info["checkpoint_sha256"] != first


# ---------------------------------------------------------------------------------------------------------
# clones of the authors' code: a miniature package with the module paths and names the loaders import,
# written here, and a checkpoint in the authors' format


@pytest.fixture
def clean_imports():
    """Undo what a clone on sys.path leaves behind (its path and modules)."""
    saved = list(sys.path)
    before = set(sys.modules)
    yield
    sys.path[:] = saved
    for key in set(sys.modules) - before:
        del sys.modules[key]


# guided-diffusion's create_model, same signature; a one-convolution "UNet" with the same forward interface
_GD_SCRIPT_UTIL = """
import torch
from torch import nn


class UNetModel(nn.Module):
    def __init__(self, image_size, out_channels, num_classes, model_channels):
        super().__init__()
        self.image_size, self.num_classes = image_size, num_classes
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)
        self.time = nn.Linear(1, out_channels)
        self.label_emb = nn.Embedding(num_classes, out_channels) if num_classes else None
        self.dtype = torch.float32
        self.fp16 = False

    def convert_to_fp16(self):
        self.fp16 = True

    def forward(self, x, timesteps, y=None):
        assert (y is not None) == (self.num_classes is not None), "must specify y iff class-conditional"
        h = self.conv(x) + self.time(timesteps[:, None] / 1000.0)[:, :, None, None]
        if y is not None:
            h = h + self.label_emb(y)[:, :, None, None]
        return h.type(x.dtype)


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
):
    return UNetModel(image_size, 6 if learn_sigma else 3, 1000 if class_cond else None, num_channels)
"""


def _guided_diffusion_clone(root: Path) -> Path:
    (root / "guided_diffusion").mkdir(parents=True)
    (root / "guided_diffusion" / "__init__.py").write_text("")
    (root / "guided_diffusion" / "script_util.py").write_text(_GD_SCRIPT_UTIL)
    return root


def _adm_checkpoint(clone: Path, name: str, path: Path):
    """A miniature checkpoint of ``name``: the clone's network built with the zoo's flags, as a state_dict."""
    sys.path.insert(0, str(clone))
    from guided_diffusion.script_util import create_model

    torch.manual_seed(0)
    net = create_model(image_size=zoo.MODELS[name]["resolution"], **zoo.MODELS[name]["flags"]).eval()
    torch.save(net.state_dict(), path)
    return net


@pytest.mark.usefixtures("clean_imports")
def test_adm_imagenet128_loads_from_a_state_dict_with_the_clone_and_gives_the_eps_half(tmp_path):
    clone = _guided_diffusion_clone(tmp_path / "guided-diffusion")
    path = tmp_path / "128x128_diffusion.pt"
    net = _adm_checkpoint(clone, "adm-imagenet128", path)
    den = zoo.load("adm-imagenet128", path=path, guided_diffusion_repo=clone)
    assert den.prediction == "eps" and den.schedule == VPSchedule.linear(1e-4, 0.02, 1000)
    assert den.info["label_dim"] == 1000 and den.info["checkpoint_sha256"] == sha256_file(path)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([7, 999])
    for t in (999.0, 500.5, 0.0):
        with torch.no_grad():
            direct = net(x, torch.full((2,), t), y=labels)
        assert direct.shape[1] == 6  # learned sigma: [eps, v]
        torch.testing.assert_close(
            den.bind(class_labels=labels)(x, t), direct[:, :3].double(), rtol=0, atol=0
        )
    # one-hot rows and a single label broadcast over the batch are the same labels
    onehot = torch.nn.functional.one_hot(labels, 1000).float()
    torch.testing.assert_close(den.bind(class_labels=onehot)(x, 3.0), den.bind(class_labels=labels)(x, 3.0))
    with pytest.raises(ValueError, match="class-conditional"):
        den(x, 10.0)
    assert zoo.load("adm-imagenet128", path=path, guided_diffusion_repo=clone, use_fp16=True).fn.unet.fp16


@pytest.mark.usefixtures("clean_imports")
def test_adm_lsun_bedroom_is_unconditional_and_wrong_files_or_clones_fail_clearly(tmp_path):
    clone = _guided_diffusion_clone(tmp_path / "guided-diffusion")
    path = tmp_path / "lsun_bedroom.pt"
    net = _adm_checkpoint(clone, "adm-lsun-bedroom", path)
    den = zoo.load("adm-lsun-bedroom", path=path, guided_diffusion_repo=clone)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        direct = net(x, torch.full((1,), 250.0))
    torch.testing.assert_close(den(x, 250.0), direct[:, :3].double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        zoo.load("adm-lsun-bedroom", path=path, guided_diffusion_repo=clone, class_labels=1)
    # the ImageNet checkpoint is not the bedroom one
    imagenet = tmp_path / "128x128_diffusion.pt"
    _adm_checkpoint(clone, "adm-imagenet128", imagenet)
    with pytest.raises(ValueError, match="does not fit 'adm-lsun-bedroom'"):
        zoo.load("adm-lsun-bedroom", path=imagenet, guided_diffusion_repo=clone)
    with pytest.raises(FileNotFoundError, match="git clone https://github.com/openai/guided-diffusion"):
        zoo.load("adm-lsun-bedroom", path=path)
    with pytest.raises(FileNotFoundError, match="has no guided_diffusion/ folder"):
        zoo.load("adm-lsun-bedroom", path=path, guided_diffusion_repo=tmp_path)
    with pytest.raises(TypeError, match="unexpected options"):
        zoo.load("adm-lsun-bedroom", path=path, guided_diffusion_repo=clone, edm_repo=clone)


# the DDIM repository's models/diffusion.py: Model(config) reading the config's attributes, Model(x, t)
_DDIM_DIFFUSION = """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        ch, out_ch = config.model.ch, config.model.out_ch
        self.resolution = config.data.image_size
        self.conv_in = nn.Conv2d(config.model.in_channels, ch, 3, padding=1)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(1, ch)

    def forward(self, x, t):
        assert x.shape[2] == x.shape[3] == self.resolution
        h = self.conv_in(x) + self.temb(t.float()[:, None] / 1000.0)[:, :, None, None]
        return self.conv_out(torch.relu(h))
"""

# configs/celeba.yml's keys (the real file's values but for a tiny width)
_DDIM_CONFIG = """
data: {dataset: CELEBA, image_size: 64, channels: 3, rescaled: true}
model: {type: simple, in_channels: 3, out_ch: 3, ch: 4, ch_mult: [1, 2, 2, 2, 4], num_res_blocks: 2,
        attn_resolutions: [16], dropout: 0.1, var_type: fixedlarge, ema_rate: 0.9999, ema: true,
        resamp_with_conv: true}
diffusion: {beta_schedule: linear, beta_start: 0.0001, beta_end: 0.02, num_diffusion_timesteps: 1000}
"""


def _ddim_clone(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "diffusion.py").write_text(_DDIM_DIFFUSION)
    (root / "configs").mkdir()
    (root / "configs" / "celeba.yml").write_text(_DDIM_CONFIG)
    return root


@pytest.mark.usefixtures("clean_imports")
def test_ddim_celeba64_loads_the_repositorys_checkpoint_list_with_its_ema(tmp_path):
    import yaml

    clone = _ddim_clone(tmp_path / "ddim")
    sys.path.insert(0, str(clone))
    from models.diffusion import Model

    from dode.zoo.ddim_repo import _namespace

    torch.manual_seed(0)
    config = _namespace(yaml.safe_load(_DDIM_CONFIG))
    trained, ema = Model(config).eval(), Model(config).eval()
    # what the repository's training loop saves: DataParallel's state, optimizer, epoch, step, EMA shadow
    states = [
        {f"module.{k}": v for k, v in trained.state_dict().items()},
        {"state": {}, "param_groups": [{"lr": 2e-4, "eps": 1e-8}]},
        10,
        5000,
        {k: v.clone() for k, v in ema.named_parameters()},
    ]
    path = tmp_path / "ckpt.pth"
    torch.save(states, path)
    den = zoo.load("ddim-celeba64", path=path, ddim_repo=clone)
    assert den.prediction == "eps" and den.schedule == VPSchedule.linear(1e-4, 0.02, 1000)
    assert den.info["resolution"] == 64 and den.info["checkpoint_sha256"] == sha256_file(path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(den(x, 321.5), ema(x, torch.full((2,), 321.5)).double(), rtol=0, atol=0)
        plain = zoo.load("ddim-celeba64", path=path, ddim_repo=clone, ema=False)
        torch.testing.assert_close(
            plain(x, 321.5), trained(x, torch.full((2,), 321.5)).double(), rtol=0, atol=0
        )
    # a bare state_dict loads as it is; a list without EMA parameters needs ema=False
    torch.save(trained.state_dict(), tmp_path / "bare.pth")
    zoo.load("ddim-celeba64", path=tmp_path / "bare.pth", ddim_repo=clone)
    torch.save(states[:4], tmp_path / "noema.pth")
    with pytest.raises(ValueError, match="no EMA parameters"):
        zoo.load("ddim-celeba64", path=tmp_path / "noema.pth", ddim_repo=clone)
    torch.save({"conv_in.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit the Model"):
        zoo.load("ddim-celeba64", path=tmp_path / "wrong.pth", ddim_repo=clone)
    with pytest.raises(FileNotFoundError, match="git clone https://github.com/ermongroup/ddim"):
        zoo.load("ddim-celeba64", path=path)
