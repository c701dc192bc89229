"""Fitted lambdas are tied to the checkpoint they were fitted on, not only to its name: retraining a model
under the same name (what `make models` does) must not let its old lambdas through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dode
from dode.zoo.embedded import load_denoiser
from dode.zoo.train import default_config, train

NFE, K = 3, 2


def fit(den: dode.Denoiser) -> dode.Lambdas:
    noise = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return dode.distill(den, noise, "ddim", NFE, K)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """`digits-eps-mini` trained twice, by two seeds, into two folders: one name, two sets of weights."""
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"models-seed{seed}")
        train(default_config("digits-eps", mini=True, steps=2, seed=seed), folder, progress=False)
        folders.append(folder)
    return [load_denoiser("digits-eps-mini", folder) for folder in folders]


def test_lambdas_of_a_retrained_checkpoint_with_the_same_name_are_refused(retrained, tmp_path):
    old, new = retrained
    assert old.name == new.name and old.info["checkpoint_sha256"] != new.info["checkpoint_sha256"]
    lam = fit(old)
    assert lam.checkpoint == old.info["checkpoint_sha256"]
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    dode.sample(old, noise, "ddim", NFE, lambdas=lam)  # the checkpoint it was fitted on
    with pytest.raises(
        ValueError,
        match=f"checkpoint sha256 {old.info['checkpoint_sha256']} \\(asked: {new.info['checkpoint_sha256']}\\)",
    ):
        dode.sample(new, noise, "ddim", NFE, lambdas=lam)
    # the identity survives a save and load
    back = dode.Lambdas.load(lam.save(tmp_path / "lam.nc"))
    assert back.checkpoint == old.info["checkpoint_sha256"]
    with pytest.raises(ValueError, match="refit them with dode.distill"):
        dode.sample(new, noise, "ddim", NFE, lambdas=back)


def test_lambdas_without_a_recorded_checkpoint_are_matched_by_name(gmm, tmp_path):
    """A denoiser whose info records no sha256 (a user's own network), and files written before the
    checkpoint was recorded, fall back to the name."""
    schedule = dode.VPSchedule.linear()
    base = gmm.denoiser(schedule, "eps")
    den = dode.Denoiser(base.fn, schedule, "eps", name="mine")
    noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = dode.distill(den, noise, "ddim", NFE, K)
    assert lam.checkpoint is None
    dode.sample(den, noise, "ddim", NFE, lambdas=lam)
    ds = lam.to_dataset()
    del ds.attrs["checkpoint"]  # as a file of an older dode
    old_file = dode.Lambdas.from_dataset(ds)
    assert old_file.checkpoint is None
    np.testing.assert_array_equal(old_file.values, lam.values)
    recorded = dode.Denoiser(base.fn, schedule, "eps", name="mine", info={"checkpoint_sha256": "0" * 64})
    dode.sample(recorded, noise, "ddim", NFE, lambdas=old_file)
    with pytest.raises(ValueError, match=r"model 'mine' \(asked: 'other'\)"):
        dode.sample(dode.Denoiser(base.fn, schedule, "eps", name="other"), noise, "ddim", NFE, lambdas=lam)
