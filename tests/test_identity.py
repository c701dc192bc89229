"""A results file never mixes runs: a change of the checkpoint, the FID reference statistics, the Inception
weights or the FD classifier between two runs into one results folder is refused, naming the change."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dode.companion import experiments as ex
from dode.companion.results import IncompatibleResults

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the EDM-like network's module, for unpickling
import edm_like_net  # noqa: E402


class _StandinInception(torch.nn.Module):
    """pytorch-fid's InceptionV3 interface (a list with one (B, 2048, 1, 1)), without its seconds per image."""

    BLOCK_INDEX_BY_DIM = {2048: 3}

    def __init__(self, blocks):
        super().__init__()
        self.proj = torch.randn(3 * 4 * 4, 2048, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], -1)
        return [(pooled @ self.proj).reshape(x.shape[0], 2048, 1, 1)]


def _write_edm(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    with open(path, "wb") as f:
        pickle.dump({"ema": edm_like_net.TinyEDMNet(img_resolution=32).eval()}, f)


def _write_stats(path: Path, scale: float) -> None:
    from dode.metrics import FeatureStats

    rng = np.random.default_rng(0)
    FeatureStats.from_moments(rng.normal(size=2048), np.eye(2048) * scale, n=50_000).save(path)


@pytest.fixture
def paper_like(tmp_path, monkeypatch):
    """An FID sweep of a miniature EDM pickle: its checkpoint, statistics folder and Inception weights."""
    import pytorch_fid.inception

    home = tmp_path / "torch_home"
    weights = home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"inception weights, version 1")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(pytorch_fid.inception, "InceptionV3", _StandinInception)
    checkpoint, stats = tmp_path / "edm-cifar10.pkl", tmp_path / "fid_stats"
    _write_edm(checkpoint, seed=0)
    stats.mkdir()
    _write_stats(stats / "cifar10-32x32.npz", scale=1.0)
    cfg = ex.settings(
        _paper_table(),
        "smoke",
        model_options={"edm-cifar10-uncond-vp": {"path": str(checkpoint)}},
        fid_stats=str(stats),
    )
    return cfg, tmp_path / "results", checkpoint, stats / "cifar10-32x32.npz", weights


def _paper_table() -> dict:
    return {
        "smoke": dict(
            models=["edm-cifar10-uncond-vp"],
            per_model={},
            solvers=["ddim"],
            nfes=[2],
            methods=["base"],
            seeds=[0],
            K=2,
            B=4,
            n_samples=4,
            batch_size=4,
            device="cpu",
            model_options={},
            fid_stats=None,
        )
    }


def test_changing_checkpoint_statistics_or_inception_weights_is_refused(paper_like):
    cfg, results, checkpoint, stats, weights = paper_like
    path = ex.run_sweep("02_test", cfg, results, progress=False)
    first = np.asarray(_fid(path))
    ex.run_sweep("02_test", cfg, results, progress=False)  # the same run again: resumes, nothing changes
    np.testing.assert_array_equal(_fid(path), first)

    def refused(match: str):
        with pytest.raises(IncompatibleResults, match=match) as err:
            ex.run_sweep("02_test", cfg, results, progress=False)
        assert "to start a fresh file, move" in str(err.value) and "results_dir" in str(err.value)

    originals = {p: p.read_bytes() for p in (checkpoint, stats, weights)}
    _write_edm(checkpoint, seed=1)  # another checkpoint under the same path
    refused(r"model 'edm-cifar10-uncond-vp' with another checkpoint_sha256 \(stored '[0-9a-f]{64}', now")
    checkpoint.write_bytes(originals[checkpoint])
    _write_stats(stats, scale=2.0)  # other reference statistics under the same name
    refused(r"model 'edm-cifar10-uncond-vp' with another metric.reference_sha256 \(stored")
    stats.write_bytes(originals[stats])
    weights.write_bytes(b"inception weights, version 2")
    refused(r"model 'edm-cifar10-uncond-vp' with another metric.inception_sha256 \(stored")
    weights.write_bytes(originals[weights])
    ex.run_sweep("02_test", cfg, results, progress=False)  # everything restored: accepted again
    np.testing.assert_array_equal(_fid(path), first)


def _fid(path):
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds["fid"].values.copy()


def test_changing_the_fd_classifier_is_refused_and_a_new_model_is_added(tmp_path):
    from dode import metrics
    from dode.metrics import classifier as clf

    den = ex.load_model("digits-eps-mini")
    fd = metrics.FD()
    params, dims = {"profile": "smoke"}, {"model": ["digits-eps-mini"], "seed": [0]}
    store = ex.open_store(tmp_path, "02_test", dims, {}, params, {den.name: ex.identity(den, fd)})
    store.at(model="digits-eps-mini").put("fd", 1.0, seed=0)

    other = clf.load(clf.CLASSIFIER_PATH)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    changed = metrics.FD(classifier=other)
    with pytest.raises(IncompatibleResults, match="another metric.classifier_sha256"):
        ex.open_store(tmp_path, "02_test", dims, {}, params, {den.name: ex.identity(den, changed)})
    # a model the file does not hold yet joins it, in a run that names both; the stored one keeps its cells
    # and identity (a run that leaves a model out keeps it aside instead: tests/test_results.py)
    second = ex.load_model("digits-eps")
    grown = ex.open_store(
        tmp_path,
        "02_test",
        {"model": ["digits-eps-mini", "digits-eps"], "seed": [0]},
        {},
        params,
        {den.name: ex.identity(den, fd), second.name: ex.identity(second, fd)},
    )
    assert grown.has("fd", model="digits-eps-mini", seed=0) and not grown.has(
        "fd", model="digits-eps", seed=0
    )
    assert set(grown.identities) == {"digits-eps-mini", "digits-eps"}
