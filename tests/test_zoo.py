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


def test_available_lists_every_model_with_metadata():
    names = zoo.available()
    for name in (
        "digits-eps",
        "digits-edm",
        "digits-eps-mini",
        "digits-edm-mini",
        "ddpm-cifar10",
        "ddpm-celebahq",
        "ddpm-bedroom",
        "edm-cifar10-uncond-vp",
        "edm-ffhq-64",
        "edm-imagenet-64",
    ):
        meta = names[name]
        for key in ("resolution", "channels", "schedule", "prediction", "class_conditional", "source"):
            assert key in meta, (name, key)
    assert names["edm-imagenet-64"]["class_conditional"] and names["edm-imagenet-64"]["label_dim"] == 1000
    assert names["ddpm-celebahq"]["resolution"] == 256


def test_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match="unknown model 'ddpm-mnist'.*ddpm-cifar10.*edm-imagenet-64"):
        zoo.load("ddpm-mnist")


# ---------------------------------------------------------------------------------------------------------
# diffusers


def _tiny_unet(sample_size=32, num_class_embeds=None):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    ).eval()


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    """A bare ``save_pretrained`` of a UNet and a DDPMScheduler into one folder."""
    from diffusers import DDPMScheduler

    folder = tmp_path_factory.mktemp("ddpm_flat")
    unet = _tiny_unet()
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

    unet = _tiny_unet()
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
    _tiny_unet().save_pretrained(tmp_path)
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="v_prediction"):
        zoo.load("ddpm-cifar10", path=tmp_path)
    with pytest.raises(TypeError, match="unexpected options"):
        zoo.load("ddpm-cifar10", path=tmp_path, edm_repo="x")


def test_ddpm_with_other_resolution_warns(tmp_path):
    from diffusers import DDPMScheduler

    _tiny_unet(sample_size=16).save_pretrained(tmp_path)
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
    assert den.info["sha256"] == sha256_file(path)
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
