"""Training of the embedded models: losses, determinism, resume, model cards, CLI, `make models`."""

import dataclasses
import importlib
import json
import math
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dode.zoo.nets import EDMPrecond, UNet
from dode.zoo.train import (
    BASE_MODELS,
    MINI_NET,
    default_config,
    edm_loss,
    main,
    sha256_file,
    train,
    vp_eps_loss,
    vp_schedule,
)

torch.set_num_threads(1)


def _fixed_batch():
    from dode.zoo.data import load_digits

    return load_digits("train").images[:16]


@pytest.mark.parametrize("kind", ["eps", "edm"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    x0 = _fixed_batch()
    cfg = default_config("digits-eps" if kind == "eps" else "digits-edm", mini=True)
    if kind == "eps":
        model = UNet(MINI_NET)
        ac = vp_schedule(cfg).alphas_cumprod.float()

        def loss_fn(seed):
            return vp_eps_loss(model, x0, ac, torch.Generator().manual_seed(seed))
    else:
        model = EDMPrecond(UNet(MINI_NET), sigma_data=0.75)

        def loss_fn(seed):
            return edm_loss(model, x0, torch.Generator().manual_seed(seed))

    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = float(loss_fn(123))
    for _ in range(15):
        opt.zero_grad()
        loss_fn(123).backward()  # same times and noise every step: a fixed regression problem
        opt.step()
    with torch.no_grad():
        after = float(loss_fn(123))
    assert after < 0.85 * before, (before, after)


def test_vp_eps_loss_is_mse_on_the_noise_of_the_forward_process():
    x0 = _fixed_batch()[:4]
    ac = vp_schedule(default_config("digits-eps")).alphas_cumprod.float()
    seen = {}

    def oracle(xt, t):
        seen["xt"], seen["t"] = xt, t
        return torch.zeros_like(xt)

    loss = vp_eps_loss(oracle, x0, ac, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = ac[t][:, None, None, None]
    assert torch.equal(seen["t"], t.float())  # the net gets the integer index as a float
    assert torch.allclose(seen["xt"], abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    assert float(loss) == pytest.approx(float(eps.pow(2).mean()))


def test_edm_loss_equals_unit_variance_regression_of_the_raw_network():
    # lambda(sigma) |D - y|^2 = |F - (y - c_skip (y + n)) / c_out|^2  (Karras et al. 2022, Eq. 8 and B.6)
    torch.manual_seed(0)
    x0 = _fixed_batch()[:8]
    model = EDMPrecond(UNet(MINI_NET).eval(), sigma_data=0.75)
    with torch.no_grad():
        loss = edm_loss(model, x0, torch.Generator().manual_seed(9), p_mean=-1.2, p_std=1.2)
        g = torch.Generator().manual_seed(9)
        sigma = (torch.randn(8, generator=g) * 1.2 - 1.2).exp()
        noisy = x0 + torch.randn(x0.shape, generator=g) * sigma[:, None, None, None]
        c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in model.coefficients(sigma))
        f = model.net(c_in * noisy, c_noise.flatten())
        target = (x0 - c_skip * noisy) / c_out
        assert float(loss) == pytest.approx(float((f - target).pow(2).mean()), rel=1e-4)


def _tiny(model="digits-eps", steps=3, **kw):
    return dataclasses.replace(default_config(model, mini=True, steps=steps), log_every=2, **kw)


def test_training_is_seeded_and_writes_a_complete_card(tmp_path):
    cfg = _tiny("digits-edm", steps=3)
    a, card = train(cfg, tmp_path / "a", progress=False)
    b, _ = train(cfg, None, progress=False)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    c, _ = train(dataclasses.replace(cfg, seed=1), None, progress=False)
    assert not torch.equal(a.net.conv_in.weight, c.net.conv_in.weight)

    assert not a.training and not any(p.requires_grad for p in a.parameters())
    weights = tmp_path / "a" / "digits-edm-mini.safetensors"
    assert card["weights"] == {"file": weights.name, "sha256": sha256_file(weights), "content": "EMA weights"}
    on_disk = json.loads((tmp_path / "a" / "digits-edm-mini.json").read_text())
    assert on_disk == card
    assert card["id"] == "digits-edm-mini" and card["prediction"] == "x0"
    assert card["schedule"] == {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    assert card["sigma_data"] == pytest.approx(float(_all_train_pixels_std()))
    assert card["n_parameters"] == sum(p.numel() for p in a.parameters())
    assert card["architecture"]["config"] == MINI_NET.to_dict() | {"time_scale": 400.0}
    assert card["dataset"]["split"] == "train" and card["dataset"]["n_images"] == 1500
    tr = card["training"]
    assert (tr["steps"], tr["batch_size"], tr["seed"], tr["threads"]) == (3, 64, 0, 1)
    assert tr["wall_time_s"] >= 0 and len(tr["git_commit"]) in (40, 7)  # a sha, or "unknown"
    assert len(card["loss"]["curve"]) == math.ceil(3 / 2)  # two full-or-partial windows of 2 steps
    assert card["quality"] == {}


def _all_train_pixels_std():
    from dode.zoo.data import load_digits

    return load_digits("train").images.double().std()


def test_resumed_training_is_bit_identical(tmp_path):
    cfg = _tiny("digits-eps", steps=4)
    whole, card_whole = train(cfg, tmp_path / "whole", progress=False)
    train(dataclasses.replace(cfg, steps=2), tmp_path / "parts", progress=False, checkpoint_every=2)
    assert (tmp_path / "parts" / "digits-eps-mini.ckpt.pt").exists()
    resumed, card = train(cfg, tmp_path / "parts", progress=False, checkpoint_every=2, resume=True)
    assert card["weights"]["sha256"] == card_whole["weights"]["sha256"]
    assert card["loss"]["curve"] == card_whole["loss"]["curve"]
    assert card["training"]["resumed_at_steps"] == [2]
    # a checkpoint of another recipe is refused
    with pytest.raises(ValueError, match="another recipe"):
        train(dataclasses.replace(cfg, lr=1e-2), tmp_path / "parts", progress=False, resume=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        default_config("digits-vp")
    with pytest.raises(ValueError, match="kind"):
        dataclasses.replace(default_config("digits-eps"), kind="ve")
    with pytest.raises(ValueError, match="steps"):
        default_config("digits-eps", steps=0)
    with pytest.raises(SystemExit):
        main(["--model", "digits-xyz"])


def test_cli_trains_into_the_given_folder(tmp_path, capsys):
    argv = ["--model", "digits-eps", "--mini", "--steps", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    n_params = sum(p.numel() for p in UNet(MINI_NET).parameters())
    assert f"digits-eps-mini: {n_params:,} parameters, 2 steps x 64" in capsys.readouterr().out
    card = json.loads((tmp_path / "digits-eps-mini.json").read_text())
    assert card["training"]["steps"] == 2
    linear = {"type": "vp", "name": "linear", "beta_start": 1e-4, "beta_end": 0.02, "T": 1000}
    assert card["schedule"] == linear


def test_notebook_smoke_profile_writes_its_results_file(tmp_path):
    import xarray as xr

    from dode.companion import model_report

    ds = model_report.run("smoke", models=["digits-edm"], results_dir=tmp_path, progress=False)
    on_disk = xr.open_dataset(tmp_path / model_report.RESULTS_NAME)
    assert list(on_disk["model"].values) == ["digits-edm-mini"]
    assert on_disk["step"].values[0, -1] == model_report.SMOKE_STEPS
    assert on_disk["samples"].shape == (1, model_report.N_SAMPLES["smoke"], 8, 8)
    assert on_disk.attrs["profile"] == "smoke"
    card = model_report.cards(on_disk)["digits-edm-mini"]
    assert card["training"]["steps"] == model_report.SMOKE_STEPS
    assert model_report.summary_table(on_disk).loc["digits-edm-mini", "steps"] == model_report.SMOKE_STEPS
    assert ds["loss"].shape == on_disk["loss"].shape


def test_notebook_profiles_and_models_are_checked(capsys):
    from dode.companion import model_report

    with pytest.raises(ValueError, match="profile must be one of"):
        model_report.run("laptop")
    with pytest.raises(ValueError, match="models must be"):
        model_report.run("smoke", models=["digits-vp"])
    assert model_report.run("paper") is None
    assert "dode.zoo" in capsys.readouterr().out


#: what each `make models` step is given on top of its Makefile arguments: the miniature configuration, two
#: steps and a temporary output folder, so the real recipes' commands run in seconds and write nothing here
def _small(tmp_path):
    classifier = tmp_path / "classifier" / "digits-classifier.safetensors"
    return classifier, {
        "dode.zoo.train": ["--mini", "--steps", "2", "--out", str(tmp_path / "models"), "--no-progress"],
        "dode.metrics.classifier": ["--steps", "2", "--out", str(classifier)],
        "dode.metrics": ["--classifier", str(classifier), "--out", str(tmp_path / "digits-train.npz")],
    }


def test_make_models_runs_the_models_then_the_classifier_then_its_reference(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    # -n prints the recipe's commands without running any (nor the venv rule it depends on)
    printed = subprocess.run(
        ["make", "-n", "-s", "models"], cwd=repo, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    commands = [shlex.split(line) for line in printed.splitlines() if " -m dode." in line]
    modules = [args[args.index("-m") + 1] for args in commands]
    classifier, small = _small(tmp_path)
    # the FD reference depends on the classifier's weights, so it must be written after them
    assert modules == ["dode.zoo.train", "dode.metrics.classifier", "dode.metrics"], printed
    for args, module in zip(commands, modules, strict=True):
        argv = args[args.index("-m") + 2 :] + small[module]
        entry = importlib.import_module(module if module != "dode.metrics" else "dode.metrics.__main__")
        assert entry.main(argv) in (0, None), f"{module} {argv}"
    for name in BASE_MODELS:
        card = json.loads((tmp_path / "models" / f"{name}-mini.json").read_text())
        assert card["training"]["steps"] == 2
    assert json.loads(classifier.with_suffix(".json").read_text())["steps"] == 2
    with np.load(tmp_path / "digits-train.npz") as reference:
        assert str(reference["classifier_sha256"]) == sha256_file(classifier)
        assert reference["mu"].shape == (64,) and np.all(np.isfinite(reference["sigma"]))
