"""Sweeps over several models: one results file with a model dimension, one row of panels per model, and
the paper profile of every figure's notebook naming the figure's models."""

from __future__ import annotations

import matplotlib
import pytest
import torch
import xarray as xr

from dode.companion import experiments as ex
from dode.companion import plots
from dode.companion.protocols import DATA_MODELS, NOISE_MODELS, PROTOCOLS

matplotlib.use("Agg")


def test_the_paper_profile_names_every_model_of_its_figure():
    assert PROTOCOLS["02_noise_prediction"]["paper"]["models"] == NOISE_MODELS  # Fig. 3, 10
    assert NOISE_MODELS == ["ddpm-cifar10", "ddim-celeba64", "adm-imagenet128", "adm-lsun-bedroom"]
    assert PROTOCOLS["03_data_prediction"]["paper"]["models"] == DATA_MODELS  # Fig. 4
    assert DATA_MODELS == ["edm-cifar10-uncond-vp", "edm-ffhq-64", "edm-imagenet-64"]
    assert PROTOCOLS["04_dpm_solver_pp"]["paper"]["models"] == NOISE_MODELS  # Fig. 9
    panels = PROTOCOLS["06_samples"]["paper"]["panels"]  # Fig. 6: ImageNet and FFHQ, DDIM and EDM
    assert {m for m, _ in panels} == {"edm-imagenet-64", "edm-ffhq-64"} and {s for _, s in panels} == {
        "ddim",
        "edm",
    }
    # the paper's B = 25 for LSUN bedroom, B = 100 elsewhere
    cfg = ex.settings(PROTOCOLS["02_noise_prediction"], "paper")
    assert (
        ex.model_settings(cfg, "adm-lsun-bedroom")["B"] == 25
        and ex.model_settings(cfg, "ddpm-cifar10")["B"] == 100
    )
    with pytest.raises(ValueError, match="per_model\\['x'\\] may set"):
        ex.model_settings({**cfg, "per_model": {"x": {"seeds": [0]}}}, "x")


@pytest.mark.parametrize(
    "stem, models, solvers",
    [
        ("02_noise_prediction", ["digits-eps-mini", "digits-eps"], ["ddim", "ipndm"]),
        ("03_data_prediction", ["digits-edm-mini", "digits-edm"], ["ddim", "edm"]),
    ],
)
def test_a_two_model_sweep_draws_one_panel_per_model_and_solver(stem, models, solvers, tmp_path):
    cfg = ex.settings(
        PROTOCOLS[stem],
        "smoke",
        models=models,
        solvers=solvers,
        nfes={s: [3] for s in solvers},
        methods=["base", "d-ode"],
        n_samples=16,
        batch_size=16,
        per_model={models[1]: {"B": 4}},
    )
    path = ex.run_sweep(stem, cfg, tmp_path, progress=False)
    ds = xr.open_dataset(path).load()
    assert ds.coords["model"].values.tolist() == models and ds["fd"].dims[0] == "model"
    assert ds["fd"].notnull().all()
    fig = plots.metric_vs_nfe(ds, "fd")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == len(models) * len(solvers)
    for model in models:
        assert sum(t.endswith(f"· {model}") for t in titles) == len(solvers)
    # the tables carry the model as their outer level
    assert plots.sweep_table(ds, "fd").index.get_level_values(0).unique().tolist() == models
    # each model with its own fitting batch, recorded in its identity
    import json

    identities = json.loads(ds.attrs["identities"])
    assert identities[models[1]]["settings"]["B"] == 4 and identities[models[0]]["settings"]["B"] == 8


def test_class_labels_are_a_stream_like_the_noise():
    from dode import Denoiser, VPSchedule

    whole = ex.class_labels(0, "eval", 600, 1000)
    assert whole.dtype == torch.int64 and 0 <= int(whole.min()) and int(whole.max()) < 1000
    # sample i has the same class however the stream is batched, and streams differ by purpose and seed
    assert torch.equal(ex.class_labels(0, "eval", 100, 1000, start=250), whole[250:350])
    assert not torch.equal(ex.class_labels(0, "fit", 600, 1000), whole)
    assert not torch.equal(ex.class_labels(1, "eval", 600, 1000), whole)
    conditional = Denoiser(lambda x, t, class_labels=None: x, VPSchedule.linear(), info={"label_dim": 1000})
    bound = ex.conditioned(conditional, 0, "eval", 100, start=250)
    assert torch.equal(bound.model_kwargs["class_labels"], whole[250:350])
    unconditional = Denoiser(lambda x, t: x, VPSchedule.linear(), info={"label_dim": 0})
    assert ex.conditioned(unconditional, 0, "eval", 100) is unconditional


def test_models_must_be_a_list():
    cfg = ex.settings(PROTOCOLS["02_noise_prediction"], "smoke", models="digits-eps")
    with pytest.raises(ValueError, match="models must be a list of dode.zoo names, got 'digits-eps'"):
        ex.run_sweep("02_noise_prediction", cfg, "unused")
