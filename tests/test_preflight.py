"""``python -m dode.preflight``: a complete configuration passes, an incomplete one lists every missing item
with what fetches it, before any sampling."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dode.companion import preflight

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the EDM-like network's module, for unpickling
import edm_like_net  # noqa: E402

EDM = {"edm-cifar10-uncond-vp": (32, 0), "edm-ffhq-64": (64, 0), "edm-imagenet-64": (64, 1000)}
STATS = {"cifar10": "cifar10-32x32.npz", "ffhq-64": "ffhq-64x64.npz", "imagenet-64": "imagenet-64x64.npz"}


class _StandinInception(torch.nn.Module):
    BLOCK_INDEX_BY_DIM = {2048: 3}

    def __init__(self, blocks):
        super().__init__()


@pytest.fixture
def paper_files(tmp_path, monkeypatch):
    """Miniatures of the data-prediction notebook's files: three EDM pickles, an EDM "clone", their FID
    statistics and Inception weights (pytorch-fid's network stood in: its real weights are 100 MB)."""
    import pytorch_fid.inception

    from dode.metrics import FeatureStats

    monkeypatch.setattr(pytorch_fid.inception, "InceptionV3", _StandinInception)
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"weights")
    monkeypatch.setenv("TORCH_HOME", str(home))
    clone = tmp_path / "edm"
    (clone / "torch_utils").mkdir(parents=True)
    options = {}
    for name, (resolution, label_dim) in EDM.items():
        path = tmp_path / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"ema": edm_like_net.TinyEDMNet(img_resolution=resolution, label_dim=label_dim)}, f)
        options[name] = {"path": str(path), "edm_repo": str(clone)}
    stats = tmp_path / "fid_stats"
    stats.mkdir()
    for file in STATS.values():
        FeatureStats.from_moments(np.zeros(2048), np.eye(2048), n=10).save(stats / file)
    params = {"model_options": options, "fid_stats": str(stats), "device": "cpu", "nproc": 1}
    return tmp_path, params


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_complete_configuration_passes(paper_files, capsys):
    tmp_path, params = paper_files
    checks = preflight.preflight("paper", params, ["03_data_prediction"])
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    whats = {c.what for c in checks}
    assert {f"model {n}" for n in EDM} <= whats and "Inception weights" in whats
    assert {f"FID statistics {r}" for r in STATS} <= {w.rsplit(" for ", 1)[0] for w in whats}
    status = preflight.main(
        ["--profile", "paper", "--params", str(_write(tmp_path, params)), "--only", "03_data_prediction"]
    )
    assert status == 0 and "everything is there" in capsys.readouterr().out


def test_an_incomplete_configuration_lists_everything_missing_with_its_fetch_command(paper_files, capsys):
    tmp_path, params = paper_files
    options = params["model_options"]
    Path(options["edm-ffhq-64"]["path"]).unlink()  # a checkpoint is missing
    options["edm-imagenet-64"]["path"] = "relative/edm-imagenet-64.pkl"  # a path the notebooks cannot see
    (Path(params["fid_stats"]) / STATS["ffhq-64"]).unlink()  # statistics are missing
    # a checkpoint of the wrong resolution for its statistics
    with open(options["edm-cifar10-uncond-vp"]["path"], "wb") as f:
        pickle.dump({"ema": edm_like_net.TinyEDMNet(img_resolution=64)}, f)
    (tmp_path / "torch_home" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").unlink()
    path = str(_write(tmp_path, params))
    with pytest.warns(
        UserWarning, match="has resolution=64, but 'edm-cifar10-uncond-vp' is listed with resolution=32"
    ):
        status = preflight.main(["--profile", "paper", "--params", path, "--only", "03_data_prediction"])
    out = capsys.readouterr().out
    assert status == 1
    missing = {
        line.split(":")[0].split("MISSING", 1)[1].strip() for line in out.splitlines() if "MISSING" in line
    }
    assert missing == {
        "model_options.edm-imagenet-64.path",
        "model edm-ffhq-64",
        "model edm-imagenet-64",
        "FID statistics cifar10 for edm-cifar10-uncond-vp",
        "FID statistics ffhq-64 for edm-ffhq-64",
        "Inception weights",
    }
    assert "wget https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl" in out
    assert "samples 64x64 images, the statistics are of 32x32 images" in out
    assert "python -m pytorch_fid --save-stats" in out and "ffhq-64x64.npz" in out
    assert "wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in out
    assert "6 problem(s)" in out


def _edm_clone_with_pickles(tmp_path: Path, options: dict, monkeypatch) -> Path:
    """A clone whose ``torch_utils`` holds the pickled network's class (as EDM's pickles need EDM's code), and
    the three EDM pickles rewritten to need it: only a model whose loader puts the clone on sys.path loads."""
    clone = tmp_path / "edm-clone"
    (clone / "torch_utils").mkdir(parents=True)
    (clone / "torch_utils" / "__init__.py").write_text("")
    shutil.copy(Path(edm_like_net.__file__), clone / "torch_utils" / "tiny_edm.py")
    for key in [k for k in sys.modules if k == "torch_utils" or k.startswith("torch_utils.")]:
        monkeypatch.delitem(sys.modules, key)  # another test's clone
    monkeypatch.syspath_prepend(str(clone))
    import torch_utils.tiny_edm

    for name, (resolution, label_dim) in EDM.items():
        net = torch_utils.tiny_edm.TinyEDMNet(img_resolution=resolution, label_dim=label_dim)
        with open(options[name]["path"], "wb") as f:
            pickle.dump({"ema": net}, f)
    monkeypatch.undo()  # the clone off sys.path again (and the other monkeypatches: set again by the caller)
    for key in [k for k in sys.modules if k == "torch_utils" or k.startswith("torch_utils.")]:
        del sys.modules[key]
    return clone


def test_each_model_is_checked_alone_and_a_missing_clone_is_fixed_by_cloning(
    paper_files, capsys, monkeypatch
):
    """An earlier EDM model's clone does not make a later one without ``edm_repo`` pass (the notebook loading
    it alone would fail), and a wrong ``edm_repo`` is fixed by cloning EDM, not by downloading the pickle."""
    import pytorch_fid.inception

    tmp_path, params = paper_files
    options = params["model_options"]
    clone = _edm_clone_with_pickles(tmp_path, options, monkeypatch)
    monkeypatch.setattr(pytorch_fid.inception, "InceptionV3", _StandinInception)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    options["edm-cifar10-uncond-vp"]["edm_repo"] = str(clone)  # loads, and puts the clone on sys.path
    del options["edm-ffhq-64"]["edm_repo"]  # would load only thanks to the model before it
    (tmp_path / "not-edm").mkdir()
    options["edm-imagenet-64"]["edm_repo"] = str(tmp_path / "not-edm")  # a folder without torch_utils
    path_before = list(sys.path)
    status = preflight.main(
        ["--profile", "paper", "--params", str(_write(tmp_path, params)), "--only", "03_data_prediction"]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert sys.path == path_before and "torch_utils" not in sys.modules
    lines = out.splitlines()
    assert any(line.split() == ["ok", "model", "edm-cifar10-uncond-vp:", *line.split()[3:]] for line in lines)
    for name in ("edm-ffhq-64", "edm-imagenet-64"):
        at = next(i for i, line in enumerate(lines) if line.split()[:3] == ["MISSING", "model", f"{name}:"])
        fix = lines[at + 1]
        assert f"git clone https://github.com/NVlabs/edm`, passed as model_options.{name}.edm_repo" in fix
        assert "wget" not in fix, fix  # the pickle is there: downloading it again fixes nothing
    assert "2 problem(s)" in out
