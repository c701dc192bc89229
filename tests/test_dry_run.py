"""The dry run (``python -m dode.dry_run``): every notebook's protocol scaled down whatever the shape of its
parameters, and the whole paper route -- every notebook of the book on paper-format checkpoints, then the
book -- in the one command that book/gpu.md tells a GPU box's user to run first."""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from notebook_outputs import problems

from dode.companion import run_notebooks
from dode.companion.protocols import SCALE_KEYS, check_scale, scale_down

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
STOCK = yaml.safe_load((REPO / "notebooks" / "dry_run.yaml").read_text())


def _caps_hold(name: str, p: dict, scale: dict) -> None:
    """Every size parameter of one notebook's run is within the scale's caps."""
    where = f"{name}: "
    lists = [p["nfes"]] if isinstance(p.get("nfes"), list) else list((p.get("nfes") or {}).values())
    assert all(len(v) <= scale["nfes"] for v in lists), where + f"nfes {p['nfes']}"
    assert len(p.get("seeds") or []) <= scale["seeds"], where + f"seeds {p['seeds']}"
    for key in ("n_samples", "batch_size", "n_fresh", "tuning_samples"):
        assert p.get(key) is None or p[key] <= scale["n_samples"], where + f"{key} {p[key]}"
    assert p.get("B") is None or p["B"] <= scale["B"], where + f"B {p['B']}"
    for own in (p.get("per_model") or {}).values():
        assert own.get("B", 0) <= scale["B"] and own.get("n_samples", 0) <= scale["n_samples"], where
        assert own.get("batch_size", 0) <= scale["n_samples"], where
    for key in ("K_values", "B_values", "lambda_values"):
        assert len(p.get(key) or []) <= scale["grid"], where + f"{key} {p[key]}"
    assert p.get("d_top") is None or p["d_top"] <= scale["grid"], where + f"d_top {p['d_top']}"
    for key in ("steps", "reference_steps"):
        assert p.get(key) is None or p[key] <= scale["steps"], where + f"{key} {p[key]}"
    if p.get("overhead"):
        assert p["overhead"]["n_samples"] <= scale["n_samples"]
        assert p["overhead"]["repeats"] <= scale["repeats"]
    if p.get("pd"):
        assert p["pd"]["steps_start"] <= max(scale["pd_steps"], 2 * p["pd"]["steps_end"]), where
        assert p["pd"]["iterations_per_halving"] <= scale["pd_iterations"], where


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_the_stock_scale_cuts_every_notebook_down_even_under_a_file_written_for_the_full_run(
    profile, tmp_path
):
    """Each notebook of the book, with the runner's parameters (the protocol's, a configuration file's over
    them): within every cap. The configuration file asks for more than the full protocol; a dry run must not
    start that either."""
    scale = check_scale(STOCK)
    greedy = {
        "seeds": [0, 1, 2, 3],
        "n_samples": 100_000,
        "batch_size": 1000,
        "B": 400,
        "lambda_values": [0.1, 0.2, 0.3],
        "reference_steps": 2000,
        "steps": 2000,
    }
    for nb in run_notebooks.book_notebooks(REPO):
        p = run_notebooks.papermill_parameters(nb, profile, tmp_path / "results", greedy, scale)
        _caps_hold(nb.name, p, scale)
        assert p["profile"] == profile
    # the sweeps keep every model, solver and method of the protocol: only sizes shrink
    sweep = run_notebooks.BookNotebook(
        "02_noise_prediction", REPO / "notebooks" / "02_noise_prediction.ipynb", tmp_path
    )
    p = run_notebooks.papermill_parameters(sweep, "paper", tmp_path, None, scale)
    assert len(p["models"]) == 4 and len(p["solvers"]) == 6 and "d-ode-joint" in p["methods"]
    assert any(p["joint_nfes"].values()), "the smallest NFE of page 02 keeps its joint fits"


def test_nfes_of_every_shape_keep_their_smallest_and_the_joint_fits_follow():
    scale = check_scale({**STOCK, "nfes": 2})
    out = scale_down("x", {"nfes": [25, 5, 10], "joint_nfes": [10, 25, 5]}, scale)
    assert out["nfes"] == [5, 10] and out["joint_nfes"] == [10, 5]
    per_solver = {
        "nfes": {"ddim": [2, 5, 10], "ipndm_lof": [5, 10]},
        "joint_nfes": {"ddim": [2, 10], "ipndm_lof": []},
    }
    out = scale_down("x", per_solver, scale)
    assert out["nfes"] == {"ddim": [2, 5], "ipndm_lof": [5, 10]}
    assert out["joint_nfes"] == {"ddim": [2], "ipndm_lof": []}
    per_model = {"nfes": {"a": [3, 5, 8], "b": [7, 3, 5]}, "joint_nfes": [5, 7, 8, 20]}
    out = scale_down("x", per_model, scale)
    assert out["nfes"] == {"a": [3, 5], "b": [3, 5]} and out["joint_nfes"] == [5]
    # one NFE: page 02's joint fits at NFE 3 are gone where the run keeps NFE 2 only (no joint cells)
    out = scale_down("x", {"nfes": [2, 3], "joint_nfes": [3]}, check_scale(STOCK))
    assert out["nfes"] == [2] and out["joint_nfes"] == []


def test_models_left_out_leave_every_parameter_keyed_by_them():
    scale = check_scale({**STOCK, "leave_out": ["b"]})
    out = scale_down(
        "x",
        {
            "models": ["a", "b"],
            "per_model": {"b": {"B": 25}},
            "samplers": {"a": ["s"], "b": ["t"]},
            "nfes": {"a": [3], "b": [5]},
        },
        scale,
    )
    assert out["models"] == ["a"] and out["per_model"] == {} and out["samplers"] == {"a": ["s"]}
    assert out["nfes"] == {"a": [3]}
    out = scale_down("x", {"panels": [["a", "ddim"], ["b", "edm"]], "nfes": {"ddim": [5], "edm": [5]}}, scale)
    assert out["panels"] == [["a", "ddim"]]
    with pytest.raises(ValueError, match="07_formulations: scale leave_out leaves out every model"):
        scale_down("07_formulations", {"model": "b"}, scale)


def test_bad_scales_and_unknown_parameters_are_refused_by_name():
    with pytest.raises(ValueError, match=r"scale nfes .* must be a positive integer, got 0"):
        check_scale({**STOCK, "nfes": 0})
    with pytest.raises(ValueError, match=r"scale sets \['samples'\]"):
        check_scale({**STOCK, "samples": 3})
    with pytest.raises(ValueError, match=r"missing \['seeds'\]"):
        check_scale({k: v for k, v in STOCK.items() if k != "seeds"})
    with pytest.raises(ValueError, match="leave_out must be a list"):
        check_scale({**STOCK, "leave_out": "adm-lsun-bedroom"})
    # a size parameter without a rule would run at full size: refused until it has one
    with pytest.raises(ValueError, match=r"02_noise_prediction: parameter\(s\) \['n_teacher_steps'\]"):
        scale_down("02_noise_prediction", {"n_teacher_steps": 1000}, check_scale(STOCK))
    assert set(SCALE_KEYS) <= set(STOCK), "the stock file sets every cap"


def test_the_runner_refuses_a_scale_that_leaves_a_notebook_without_a_model(tmp_path, capsys):
    scale = tmp_path / "dry.yaml"
    scale.write_text(yaml.safe_dump({**STOCK, "leave_out": ["ddpm-cifar10"]}))
    params = tmp_path / "paper.yaml"
    params.write_text("device: cpu\n")
    from dode.companion import dry_run

    status = dry_run.main(["--params", str(params), "--scale", str(scale), "--repo", str(REPO)])
    assert status == 2
    err = capsys.readouterr().err
    assert (
        "the dry run's scale does not apply" in err and "05_trajectories" in err and "07_formulations" in err
    )


# ---- the whole route on paper-format miniatures ----

#: the models whose miniatures this test writes: a diffusers folder for DDPM CIFAR-10 and EDM pickles for
#: CIFAR-10 and FFHQ (page 06 draws FFHQ or ImageNet 64); the others are left out by the test's scale
KEPT = {"ddpm-cifar10", "edm-cifar10-uncond-vp", "edm-ffhq-64"}
LEFT_OUT = ["ddim-celeba64", "adm-imagenet128", "adm-lsun-bedroom", "edm-imagenet-64"]
STANDIN_DIM = 64  # tests/standin_inception/sitecustomize.py


def _paper_files(root: Path) -> dict:
    """The files of a paper run, in their real formats, at miniature size; returns the configuration."""
    from diffusers import DDPMScheduler

    sys.path.insert(0, str(TESTS))
    import edm_like_net
    from conftest import tiny_unet

    from dode.metrics import INCEPTION_WEIGHTS_FILE, FeatureStats

    ddpm = root / "ddpm-cifar10-32"
    tiny_unet().save_pretrained(ddpm)
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, clip_sample=True).save_pretrained(
        ddpm
    )
    clone = root / "edm"
    (clone / "torch_utils").mkdir(parents=True)
    options = {"ddpm-cifar10": {"path": str(ddpm)}}
    for name, resolution in (("edm-cifar10-uncond-vp", 32), ("edm-ffhq-64", 64)):
        path = root / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"ema": edm_like_net.TinyEDMNet(img_resolution=resolution)}, f)
        options[name] = {"path": str(path), "edm_repo": str(clone)}
    stats = root / "fid_stats"
    stats.mkdir()
    for file in ("cifar10-32x32.npz", "ffhq-64x64.npz"):
        FeatureStats.from_moments(np.zeros(STANDIN_DIM), np.eye(STANDIN_DIM), n=10).save(stats / file)
    weights = root / "torch_home" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in weights")
    images = root / "cifar10-train.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    return {
        "model_options": options,
        "fid_stats": str(stats),
        "pd_data": str(images),
        "device": "cpu",
        "nproc": 1,
    }


def _book_layout(repo: Path) -> None:
    """A copy of what the book is built from: the configuration, the pages, the notebooks, the stock scale."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "_static", repo / "_static")
    (repo / "book").mkdir()
    for page in (REPO / "book").glob("*.md"):
        shutil.copy(page, repo / "book" / page.name)
    shutil.copytree(
        REPO / "notebooks", repo / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints")
    )
    # MathJax, fetched once per checkout (tests/test_book.py does the same)
    (REPO / ".cache").mkdir(exist_ok=True)
    (repo / ".cache").symlink_to(REPO / ".cache")


def _documented_dry_run() -> str:
    """The dry run's command line as book/gpu.md gives it to a GPU box's user (the first one it shows)."""
    text = (REPO / "book" / "gpu.md").read_text()
    lines = [
        ln.split("  #")[0].strip() for ln in text.splitlines() if ln.startswith("python -m dode.dry_run")
    ]
    assert lines, "book/gpu.md shows no `python -m dode.dry_run` command"
    return lines[0]


@pytest.mark.slow
def test_the_dry_run_runs_every_notebook_on_paper_format_checkpoints_and_builds_the_book(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _book_layout(repo)
    params = _paper_files(tmp_path / "files")
    (repo / "paper.yaml").write_text(yaml.safe_dump(params))
    # the stock scale file, the models whose miniatures are not written left out and its caps lowered to what a
    # 2-core test machine runs in minutes (page 02's joint fits alone took minutes at B = 16)
    small = {"n_samples": 8, "B": 8, "grid": 1, "steps": 20, "pd_iterations": 1, "leave_out": LEFT_OUT}
    (repo / "notebooks" / "dry_run.yaml").write_text(yaml.safe_dump({**STOCK, **small}))
    # a partial file of the full run, and one of an earlier dry run of another scale: neither may block
    full = repo / "data" / "results" / "paper" / "02_noise_prediction.nc"
    earlier = repo / "data" / "results" / "paper-dry" / "02_noise_prediction.nc"
    for path in (full, earlier):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a results file of this scale")
    env = {
        **os.environ,
        # the stand-in Inception (sitecustomize), the EDM miniature's module for unpickling, this checkout
        "PYTHONPATH": os.pathsep.join(str(p) for p in (TESTS / "standin_inception", TESTS, REPO)),
        "TORCH_HOME": str(tmp_path / "files" / "torch_home"),
        "OMP_NUM_THREADS": "1",
    }
    command = shlex.split(_documented_dry_run())
    command = [sys.executable, *command[1:]]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    assert "book: built" in done.stdout

    import xarray as xr

    results = repo / "data" / "results" / "paper-dry"
    assert full.read_bytes() == b"not a results file of this scale", "the full run's folder was touched"
    for nb in run_notebooks.book_notebooks(repo):  # no traceback, and no warning, on any page
        assert not problems(nb.executed), f"{nb.name}: {problems(nb.executed)}"
    sweeps = ["02_noise_prediction", "03_data_prediction", "04_dpm_solver_pp", "07_formulations", "13_peers"]
    for stem in sweeps:
        with xr.open_dataset(results / f"{stem}.nc") as ds:
            assert ds.attrs["profile"] == "paper" and "fid" in ds, stem
            models = ds.coords["model"].values.tolist() if "model" in ds.coords else [ds.attrs["model"]]
            assert set(models) <= KEPT, (stem, models)
            assert ds.sizes.get("seed", 1) == 1, stem
            assert np.isfinite(ds["fid"].values).any(), stem
    with open(repo / "data" / "results" / run_notebooks.RUN_TIMES_FILE) as f:
        assert {line.split(",")[1] for line in f.read().splitlines()[1:]} == {"paper-dry"}
    html = repo / "book" / "_build" / "html"
    assert (html / "index.html").is_file()
    assert (html / "book" / "executed" / "02_noise_prediction.html").is_file()
