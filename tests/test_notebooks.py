"""Every notebook runs under the smoke profile; the runner finds, executes and times the book's notebooks.

The notebook conventions, which every notebook in notebooks/ must follow (dode/companion/run_notebooks.py relies on
them too):

1. The notebook is committed clean: no outputs, no execution counts, kernel `python3`.
2. A cell tagged `parameters` defines `profile = "cpu"` (the embedded default; papermill overrides it with
   `smoke`, `cpu` or `paper`).
3. A notebook that writes results declares it by also defining `results_dir` in that cell (default
   `"../data/results"`, relative to notebooks/, its working directory). It then writes exactly one results
   file, `<results_dir>/<notebook-stem>.nc`, atomically, recording the profile it was computed with in the
   global attribute `profile`, and resumes from that file only when the profile matches.
4. Under `profile="smoke"` it finishes in seconds on a CPU.

The book's runner smoke-runs every notebook of `_toc.yml`, in its order, into one temporary results folder
(notebooks outside the book after it), as `make book PROFILE=smoke` does; each results file is then opened
and checked for what its notebook's parameters declare (finite metrics, finite non-zero lambdas, a verdict
for every claim), and rerunning a notebook on its finished results must evaluate no network. A new
notebook that writes results needs an entry in CHECKS.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
import torch
import xarray

import dode
from dode.companion import analysis, claims, paper, peers, run_notebooks, testbed, timing
from dode.companion import experiments as ex
from dode.companion.protocols import PROTOCOLS

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NOTEBOOK_IDS = [path.stem for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_is_committed_clean_with_the_parameter_conventions(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    dirty = [i for i, cell in enumerate(code_cells) if cell.outputs or cell.execution_count is not None]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty} before committing"
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    parameters = papermill.inspect_notebook(str(path))
    assert "profile" in parameters, f"{path.name}: the `parameters` cell must define profile"
    assert parameters["profile"]["default"].strip("'\"") == "cpu", "the embedded default profile is cpu"


# ---- the whole book under the smoke profile, into one results folder, and what each notebook computed ----


@dataclass(frozen=True)
class SmokeBook:
    repo: Path  # a copy of the book's layout: _toc.yml and notebooks/
    results_dir: Path  # the one results folder every notebook wrote into
    output: str  # what the runner printed


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory) -> SmokeBook:
    """The book's runner executes every notebook of `_toc.yml`, in its order, into one shared results folder
    (as `make book PROFILE=smoke` does), so 11_reproduction grades the results of the notebooks before it.

    The runner writes the executed copies into `book/executed/` and the wall times into
    `data/results/run_times.csv` of the repository it runs; it runs on a copy of the book's layout so that
    this checkout's built book and timings table stay untouched. Notebooks outside the book are run after
    it, into the same folder."""
    repo = tmp_path_factory.mktemp("book")
    shutil.copy(REPO / "_toc.yml", repo / "_toc.yml")
    (repo / "notebooks").mkdir()
    for path in NOTEBOOKS:
        shutil.copy(path, repo / "notebooks" / path.name)
    results_dir = run_notebooks.default_results_dir(repo, "smoke")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # two notebooks at a time, as `make book` runs them (11 waits for every notebook before it)
        status = run_notebooks.run(repo, "smoke", progress=False, jobs=2)
        if status == 0:
            for path in run_notebooks.notebooks_outside_book(repo):
                outside = run_notebooks.BookNotebook(path.stem, path, repo / "outside" / path.name)
                run_notebooks.execute(outside, "smoke", results_dir, progress=False)
    assert status == 0, printed.getvalue()
    return SmokeBook(repo, results_dir, printed.getvalue())


def smoke_settings(stem: str) -> dict:
    """The parameters a notebook resolves when papermill passes only profile="smoke"."""
    return ex.settings(PROTOCOLS[stem], "smoke")


def per_solver(nfes, label: str) -> list[int]:
    return list(nfes[label]) if isinstance(nfes, dict) else list(nfes)


def sweep_points(cfg: dict) -> list[dict]:
    """The grid points a sweep notebook asks for, written out from the protocols: Tab. 3 varies K at B and B
    at K (one at a time), Tab. 4 searches the constant lambda over `lambda_values`."""
    points = [{}]
    if cfg.get("K_values") or cfg.get("B_values"):
        points = [{"K": k, "B": cfg["B"]} for k in cfg.get("K_values") or [cfg["K"]]]
        points += [{"K": cfg["K"], "B": b} for b in cfg.get("B_values") or [cfg["B"]]]
    if cfg.get("lambda_values"):
        points = [{**p, "lambda_value": v} for p in points for v in cfg["lambda_values"]]
    return points


def assert_fitted_lambdas(lambdas, nfe: int, where: str) -> None:
    """A fit stores one row per network evaluation (NaN where the variant has no parameter, e.g. the first
    evaluation of a data-prediction model); zero lambdas are the plain solver, i.e. no fit at all."""
    lambdas = np.asarray(lambdas, dtype=np.float64)
    rows = lambdas[:nfe]
    assert not np.isinf(rows).any(), f"{where}: infinite lambdas {rows}"
    fitted = rows[np.isfinite(rows)]
    assert fitted.size and np.any(fitted != 0), f"{where}: no fitted lambda, or all zero: {rows}"
    assert np.isnan(lambdas[nfe:]).all(), f"{where}: lambdas beyond its {nfe} evaluations"


def assert_positive(values, where: str) -> None:
    values = np.asarray(values, dtype=np.float64)
    assert np.all(np.isfinite(values)) and np.all(values > 0), f"{where}: {values}"


def check_sweep(ds, cfg: dict) -> None:
    """Every (solver, NFE, seed, method, grid point) the parameters declare holds a finite metric and
    sampling time; a fitted method holds finite, non-zero lambdas and a fit time; a D-ODE method scores other
    than its base solver on the same noise (the same value would mean its lambdas never reached the sampler);
    the cells of a joint fit outside ``joint_nfes`` are NaN."""
    if "model" in ds.dims:  # a multi-model file (02, 03, 04): every model holds the whole sweep
        assert ds.coords["model"].values.tolist() == list(cfg["models"])
        for model in cfg["models"]:
            check_sweep(ds.sel(model=model), cfg)
        return
    metric = "fd"  # the digits models are scored by FD
    assert metric in ds, f"no {metric} in {list(ds.data_vars)}"
    for label in cfg["solvers"]:
        for nfe in per_solver(cfg["nfes"], label):
            for seed in cfg["seeds"]:
                for point in sweep_points(cfg):
                    base = {"solver": label, "nfe": nfe, "seed": seed, **point}
                    base_value = float(ds[metric].sel({**base, "method": "base"}))
                    for method in cfg["methods"]:
                        if method == "d-ode-per-stage" and label != "edm":
                            # only EDM's Heun has two stages landing at one time; elsewhere per stage and
                            # per landing time are the same fit, which the sweep does not repeat
                            continue
                        cell = {**base, "method": method}
                        where = f"{metric} at {cell}"
                        joint_nfes = cfg.get("joint_nfes")
                        if (
                            method == "d-ode-joint"
                            and joint_nfes
                            and nfe not in per_solver(joint_nfes, label)
                        ):
                            # a joint fit the sweep skips at this NFE: its cell must stay empty
                            assert np.isnan(float(ds[metric].sel(cell))), f"{where} should be NaN"
                            continue
                        assert_positive(ds[metric].sel(cell), where)
                        assert_positive(ds["sample_seconds"].sel(cell), f"sample_seconds at {cell}")
                        if method == "base":
                            continue
                        assert float(ds[metric].sel(cell)) != base_value, f"{where} equals the base solver's"
                        if ex.method_kind(method) == "fitted":
                            assert_fitted_lambdas(ds["lambdas"].sel(cell), nfe, f"lambdas at {cell}")
                            assert_positive(ds["fit_seconds"].sel(cell), f"fit_seconds at {cell}")


def check_models(ds, cfg: dict) -> None:
    # the smoke profile trains the miniature configuration of each model the notebook names
    models = papermill.inspect_notebook(str(NOTEBOOK_DIR / "00_train_models.ipynb"))["models"]["default"]
    mini = [f"{m}-mini" for m in ast.literal_eval(models)]
    assert ds.coords["model"].values.tolist() == mini
    for name in mini:
        one = ds.sel(model=name)
        assert_positive(one["final_loss"], f"final loss of {name}")
        assert np.isfinite(one["loss"]).any(), f"no loss curve for {name}"
        assert int(one["n_parameters"]) > 0
        samples = one["samples"].values
        assert np.all(np.isfinite(samples)) and np.all(np.abs(samples) <= 1), f"samples of {name}"
        assert samples.std() > 0, f"the samples of {name} are constant"


def check_correlation(ds, cfg: dict) -> None:
    assert ds.coords["model"].values.tolist() == cfg["models"]
    for name in cfg["models"]:
        sim = ds["similarity"].sel(model=name).values
        assert sim.shape == (cfg["steps"], cfg["steps"]) and np.all(np.isfinite(sim)), name
        # the cosine similarity of an output with itself is 1 to float64 rounding (measured 1e-15 off)
        np.testing.assert_allclose(np.diag(sim), 1.0, rtol=0, atol=1e-9)
        assert np.all(np.abs(sim) <= 1 + 1e-9) and sim.min() < 0.999, f"{name}: {sim.min()}"
        assert_positive(ds["eval_time"].sel(model=name), f"eval_time of {name}")


def check_trajectories(ds, cfg: dict) -> None:
    for var in ("reference_norm", "reference_pixels"):
        assert np.all(np.isfinite(ds[var].values)), var
    for label in cfg["solvers"]:
        for nfe in cfg["nfes"]:
            base = {"solver": label, "nfe": nfe}
            for method in cfg["methods"]:
                cell = {**base, "method": method}
                for var in ("norm", "pixels", "distance"):
                    values = ds[var].sel(cell).values
                    assert values.shape[0] == nfe + 1 and np.all(np.isfinite(values)), f"{var} at {cell}"
                if method != "base":
                    assert_fitted_lambdas(ds["lambdas"].sel(cell), nfe, f"lambdas at {cell}")
                    assert_positive(ds["fit_seconds"].sel(cell), f"fit_seconds at {cell}")
                    end = ds["distance"].sel(cell).isel(state=-1).values
                    base_end = ds["distance"].sel({**base, "method": "base"}).isel(state=-1).values
                    assert not np.array_equal(end, base_end), f"{cell} ends where the base solver does"


def check_samples(ds, cfg: dict) -> None:
    assert ds.coords["panel"].values.tolist() == [f"{model}/{label}" for model, label in cfg["panels"]]
    for model in {model for model, _ in cfg["panels"]}:
        assert np.all(np.isfinite(ds["reference"].sel(model=model).values)), f"reference of {model}"
    for model, label in cfg["panels"]:
        panel = f"{model}/{label}"
        for nfe in per_solver(cfg["nfes"], label):
            images = {
                m: ds["samples"].sel({"method": m, "panel": panel, "nfe": nfe}).values
                for m in ("base", "d-ode")
            }
            for method, values in images.items():
                assert np.all(np.isfinite(values)) and values.std() > 0, f"{method} samples of {panel} {nfe}"
            assert not np.array_equal(images["base"], images["d-ode"]), f"{panel} NFE {nfe}"
            assert_fitted_lambdas(ds["lambdas"].sel(panel=panel, nfe=nfe), nfe, f"lambdas of {panel} {nfe}")


def check_timing(ds, cfg: dict) -> None:
    check_sweep(ds, {**cfg, "solvers": list(cfg["nfes"]), "methods": ["base", "d-ode"]})
    recipe = cfg["pd"]
    students = []
    steps = recipe["steps_start"] // 2
    while steps >= recipe["steps_end"]:
        students.append(steps)
        steps //= 2
    assert students, recipe
    for steps in students:
        assert_positive(ds["cumulative_train_seconds"].sel(nfe=steps), f"PD training up to {steps} steps")
        assert int(ds["train_iterations"].sel(nfe=steps)) == recipe["iterations_per_halving"]
        for seed in cfg["seeds"]:
            assert_positive(
                ds["fd"].sel({"solver": "ddim", "method": "pd", "nfe": steps, "seed": seed}), f"PD {steps}"
            )


def check_reproduction(ds, cfg: dict) -> None:
    verdicts = dict(zip(ds.coords["claim"].values.tolist(), ds["verdict"].values.tolist(), strict=True))
    assert sorted(verdicts) == sorted([*paper.CLAIMS, *claims.FINDINGS])
    # every claim is graded from the notebooks' results: "not run" would mean a results file was missing
    assert all(v in claims.VERDICTS and v != "not run" for v in verdicts.values()), verdicts
    assert all(str(e).strip() for e in ds["evidence"].values)
    sources = json.loads(ds.attrs["sources"])
    assert sources and all(sources.values()), sources


def check_testbed(ds, cfg: dict) -> None:
    """Every (schedule, solver, NFE) has finite, positive distances to the exact ODE solution for the base
    solver and for the greedy and joint D-solvers taught by DDIM, and the fits record their cost."""
    for schedule in cfg["schedules"]:
        for label in cfg["solvers"]:
            for nfe in cfg["nfes"]:
                cell = {"schedule": schedule, "solver": label, "nfe": nfe, "teacher": "ddim"}
                for method in ds.coords["method"].values.tolist():
                    for var in ("distance_fit", "distance_fresh"):
                        assert_positive(ds[var].sel({**cell, "method": method}), f"{var} at {cell} {method}")
                    if method != "base":
                        assert_positive(ds["fit_seconds"].sel({**cell, "method": method}), f"fit at {cell}")


def check_peers(ds, cfg: dict) -> None:
    """On every model and NFE: every candidate was scored on the tuning noise (a finite value, or inf where
    it diverged) and one of each group selected; the selected samplers, and the selected peer's own
    configuration, hold a finite FD at every evaluation seed and count exactly the NFE asked for; no other
    sampler was evaluated."""
    assert ds.coords["model"].values.tolist() == cfg["models"]
    assert ds.coords["seed"].values.tolist() == cfg["seeds"]
    for model in cfg["models"]:
        for nfe in cfg["nfes"][model]:
            at = {"model": model, "nfe": nfe}
            selected = ds["selected"].sel(at).to_pandas()
            default = ds["peer_default"].sel(at).to_pandas()
            chosen = set(selected[selected == 1].index)
            assert {peers.sampler_group(n) for n in chosen} == {"diffusers", "base", "D"}, chosen
            assert default.sum() == 1
            for name in cfg["bases"][model]:
                assert not np.isnan(float(ds["fd_tuning"].sel({**at, "sampler": name}))), name
            for name in ds.coords["sampler"].values.tolist():
                cell = {**at, "sampler": name}
                if name in chosen or default[name] == 1:
                    assert_positive(ds["fd"].sel(cell), f"fd at {cell}")
                    assert (ds["network_evaluations"].sel(cell).values == nfe).all(), cell
                else:
                    assert np.isnan(ds["fd"].sel(cell).values).all(), cell


#: what each notebook's results file must hold under the smoke profile; a notebook that writes results
#: needs an entry here
CHECKS = {
    "00_train_models": check_models,
    "01_denoiser_correlation": check_correlation,
    "02_noise_prediction": check_sweep,
    "03_data_prediction": check_sweep,
    "04_dpm_solver_pp": check_sweep,
    "05_trajectories": check_trajectories,
    "06_samples": check_samples,
    "07_formulations": check_sweep,
    "08_ablation_K_B": check_sweep,
    "09_lookahead_fixed": check_sweep,
    "10_timing": check_timing,
    "11_reproduction": check_reproduction,
    "12_exact_testbed": check_testbed,
    "13_peers": check_peers,
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_computed_what_its_parameters_declare_under_the_smoke_profile(path, smoke_book):
    if "results_dir" not in papermill.inspect_notebook(str(path)):
        return  # it ran (the fixture checks that) and has no results to look at
    results_file = smoke_book.results_dir / f"{path.stem}.nc"
    assert results_file.is_file(), f"{path.name} declares results_dir but wrote no {results_file.name}"
    assert path.stem in CHECKS, f"add what {path.name} computes to CHECKS in {Path(__file__).name}"
    with xarray.open_dataset(results_file, engine="h5netcdf") as results:
        results = results.load()
    assert results.attrs.get("profile") == "smoke"
    CHECKS[path.stem](results, smoke_settings(path.stem) if path.stem in PROTOCOLS else {})


def test_the_smoke_book_ran_every_listed_notebook_in_the_order_of_the_toc(smoke_book):
    order = [notebook.name for notebook in run_notebooks.book_notebooks(REPO)]
    # two at a time: they finish in any order, each once, at its index in the book; the notebooks that run
    # alone (their metadata says so: 10 times itself, 11 reads every result) come last, after every other one
    reported = re.findall(r"\[(\d+)/\d+\] (\S+): [0-9.]+ s", smoke_book.output)
    assert sorted(reported, key=lambda r: int(r[0])) == [(str(i), n) for i, n in enumerate(order, start=1)]
    names = [name for _, name in reported]
    plans = run_notebooks.book_plans(run_notebooks.book_notebooks(REPO))
    alone = [name for name in order if plans[name].runs_alone]
    assert alone and names[-len(alone) :] == alone
    rows = read_run_times(smoke_book.repo / run_notebooks.RESULTS_DIR)
    assert [row["notebook"] for row in rows] == order and {row["profile"] for row in rows} == {"smoke"}


#: the call of each computing notebook's compute cell, and the function it names
RERUNS = {
    "01_denoiser_correlation": ("analysis.run_correlation", analysis.run_correlation),
    "02_noise_prediction": ("ex.run_sweep", ex.run_sweep),
    "03_data_prediction": ("ex.run_sweep", ex.run_sweep),
    "04_dpm_solver_pp": ("ex.run_sweep", ex.run_sweep),
    "05_trajectories": ("analysis.run_trajectories", analysis.run_trajectories),
    "06_samples": ("analysis.run_samples", analysis.run_samples),
    "07_formulations": ("ex.run_sweep", ex.run_sweep),
    "08_ablation_K_B": ("ex.run_sweep", ex.run_sweep),
    "09_lookahead_fixed": ("ex.run_sweep", ex.run_sweep),
    "10_timing": ("timing.run_timing", timing.run_timing),
    "12_exact_testbed": ("testbed.testbed_sweep", testbed.testbed_sweep),
    "13_peers": ("peers.peers_sweep", peers.peers_sweep),
}


@pytest.mark.parametrize("stem", sorted(RERUNS))
def test_rerunning_a_notebook_on_its_finished_results_evaluates_no_network(stem, smoke_book, monkeypatch):
    """A rerun finds every cell stored: no forward pass of any network (denoiser, classifier, PD student)
    and no write. The notebook's compute cell is called in this process, where network calls can be
    counted; the source check ties the call to the notebook."""
    call, compute = RERUNS[stem]
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4).cells)
    assert f"{call}(STEM, cfg, results_dir" in source, f"{stem} no longer computes with {call}"
    results_file = smoke_book.results_dir / f"{stem}.nc"
    before = results_file.read_bytes()
    forward_passes = []
    module_call = torch.nn.Module.__call__
    denoiser_call = dode.Denoiser.__call__

    def counted_module(self, *args, **kwargs):
        forward_passes.append(type(self).__name__)
        return module_call(self, *args, **kwargs)

    def counted_denoiser(self, *args, **kwargs):
        forward_passes.append(f"Denoiser {self.name}")
        return denoiser_call(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counted_module)
    monkeypatch.setattr(dode.Denoiser, "__call__", counted_denoiser)
    assert compute(stem, smoke_settings(stem), smoke_book.results_dir, progress=False) == results_file
    assert forward_passes == [], f"{len(forward_passes)} forward passes, first {forward_passes[:5]}"
    assert results_file.read_bytes() == before


def test_the_reproduction_page_refuses_results_of_another_profile(smoke_book, capsys):
    # the smoke book's results read as the cpu profile's: every one is stale
    status = run_notebooks.run(
        smoke_book.repo, "cpu", only=["11_reproduction"], results_dir=smoke_book.results_dir, progress=False
    )
    out = capsys.readouterr().out
    assert status == 1
    assert "ValueError: results of ['01_denoiser_correlation'" in out
    assert "were computed under another profile than 'cpu'" in out


def test_the_book_lists_only_notebooks_that_exist_and_pages_that_exist():
    for entry in run_notebooks.toc_entries(REPO / "_toc.yml"):
        if not entry.startswith(run_notebooks.EXECUTED_PREFIX):
            assert (REPO / f"{entry}.md").is_file() or (REPO / f"{entry}.ipynb").is_file(), entry
    # raises BookLayoutError for a listed notebook without a source in notebooks/
    listed = run_notebooks.book_notebooks(REPO)
    assert all(notebook.source in NOTEBOOKS for notebook in listed)


# ---- discovery, on a book laid out in a temporary folder ----


def write_notebook(path: Path, source: str, parameters: str = 'profile = "cpu"') -> None:
    cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def make_book(root: Path, toc: str, notebooks: dict[str, str]) -> Path:
    (root / "_toc.yml").write_text(toc)
    for name, source in notebooks.items():
        write_notebook(root / "notebooks" / f"{name}.ipynb", source)
    return root


NESTED_TOC = """
format: jb-book
root: book/intro
parts:
  - caption: A
    chapters:
      - file: book/method
      - file: book/executed/02_second
        sections:
          - file: book/executed/01_first.ipynb
  - caption: B
    chapters:
      - file: book/executed/03_third
"""


def test_discovery_follows_the_toc_order_through_parts_chapters_and_sections(tmp_path):
    make_book(tmp_path, NESTED_TOC, {"01_first": "", "02_second": "", "03_third": "", "04_unlisted": ""})
    assert run_notebooks.toc_entries(tmp_path / "_toc.yml") == [
        "book/intro",
        "book/method",
        "book/executed/02_second",
        "book/executed/01_first.ipynb",
        "book/executed/03_third",
    ]
    found = run_notebooks.book_notebooks(tmp_path)
    assert [nb.name for nb in found] == ["02_second", "01_first", "03_third"]
    assert found[0].source == tmp_path / "notebooks" / "02_second.ipynb"
    assert found[0].executed == tmp_path / "book" / "executed" / "02_second.ipynb"
    assert run_notebooks.notebooks_outside_book(tmp_path) == [tmp_path / "notebooks" / "04_unlisted.ipynb"]


def test_discovery_names_a_listed_notebook_that_does_not_exist(tmp_path):
    make_book(tmp_path, NESTED_TOC, {"01_first": "", "03_third": ""})
    with pytest.raises(run_notebooks.BookLayoutError, match="02_second"):
        run_notebooks.book_notebooks(tmp_path)


def test_discovery_reports_a_missing_toc(tmp_path):
    with pytest.raises(run_notebooks.BookLayoutError, match="no table of contents"):
        run_notebooks.book_notebooks(tmp_path)


# ---- the runner, on tiny notebooks in a temporary book ----

TOC = """
format: jb-book
root: book/intro
chapters:
  - file: book/executed/01_writes
  - file: book/executed/02_plain
"""
WRITES_RESULTS = """
import os, pathlib
assert profile == "smoke" and results_dir == "../data/results"
assert pathlib.Path.cwd().name == "notebooks"
pathlib.Path(results_dir).mkdir(parents=True, exist_ok=True)
(pathlib.Path(results_dir) / "01_writes.txt").write_text(profile)
"""


def read_run_times(results_dir: Path) -> list[dict[str, str]]:
    with (results_dir / run_notebooks.RUN_TIMES_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def test_jobs_must_be_a_positive_count_and_each_kernel_of_a_parallel_run_gets_one_thread(tmp_path, capsys):
    repo = make_book(tmp_path, TOC, {"02_plain": "x = 1"})
    threads = "import os, pathlib\npathlib.Path(results_dir, 'threads.txt').write_text(os.environ.get('OMP_NUM_THREADS', ''))"
    write_notebook(
        repo / "notebooks" / "01_writes.ipynb", threads, parameters='profile = "cpu"\nresults_dir = "x"'
    )
    for jobs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be a positive number"):
            run_notebooks.run(repo, "smoke", progress=False, jobs=jobs)
    results_dir = repo / "data" / "results"
    assert run_notebooks.run(repo, "smoke", results_dir=results_dir, progress=False, jobs=2) == 0
    assert (results_dir / "threads.txt").read_text() == "1"
    out = capsys.readouterr().out
    assert re.search(r"\[1/2\] 01_writes", out) and re.search(r"\[2/2\] 02_plain", out)


def test_runner_executes_the_book_in_order_and_records_wall_times(tmp_path, capsys):
    repo = make_book(tmp_path, TOC, {"02_plain": "x = 1"})
    # only the first notebook declares results_dir; the runner passes it there, relative to notebooks/
    write_notebook(
        repo / "notebooks" / "01_writes.ipynb",
        WRITES_RESULTS,
        parameters='profile = "cpu"\nresults_dir = "elsewhere"',
    )
    results_dir = repo / "data" / "results"
    status = run_notebooks.run(repo, "smoke", results_dir=results_dir, progress=False)
    out = capsys.readouterr().out
    assert status == 0, out
    assert (results_dir / "01_writes.txt").read_text() == "smoke"
    assert (repo / "book" / "executed" / "01_writes.ipynb").is_file()
    assert (repo / "book" / "executed" / "02_plain.ipynb").is_file()
    assert re.search(r"\[1/2\] 01_writes: [0-9.]+ s", out) and re.search(r"\[2/2\] 02_plain: [0-9.]+ s", out)
    rows = read_run_times(results_dir)
    assert [row["notebook"] for row in rows] == ["01_writes", "02_plain"]
    assert all(row["profile"] == "smoke" and float(row["wall time (s)"]) > 0 for row in rows)

    # a partial run keeps the other notebook's row
    first_row = rows[0]
    assert run_notebooks.run(repo, "smoke", only=["02_plain"], results_dir=results_dir, progress=False) == 0
    rows = read_run_times(results_dir)
    assert rows[0] == first_row and rows[1]["notebook"] == "02_plain"
    # each row names its run (a kernel's start alone takes over a second): the summary sums the latest only
    assert rows[0]["run started (UTC)"] < rows[1]["run started (UTC)"]


def test_a_failing_notebook_fails_the_run_naming_the_notebook(tmp_path, capsys):
    toc = "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/executed/05_broken\n"
    repo = make_book(tmp_path, toc, {"05_broken": "raise ValueError('lambda fit diverged')"})
    status = run_notebooks.run(repo, "smoke", results_dir=repo / "results", progress=False)
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED: notebook notebooks/05_broken.ipynb (profile=smoke)" in out
    assert "ValueError: lambda fit diverged" in out
    assert "book/executed/05_broken.ipynb" in out  # where the full traceback is


def test_runner_rejects_an_unknown_profile_and_unknown_names(tmp_path):
    repo = make_book(tmp_path, TOC, {"01_writes": "", "02_plain": ""})
    with pytest.raises(ValueError, match="profile must be one of smoke, cpu, paper"):
        run_notebooks.run(repo, "gpu")
    with pytest.raises(run_notebooks.BookLayoutError, match="09_missing"):
        run_notebooks.run(repo, "smoke", only=["09_missing"])


def test_runner_requires_a_profile_parameter(tmp_path, capsys):
    toc = "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/executed/01_noparams\n"
    repo = make_book(tmp_path, toc, {})
    write_notebook(repo / "notebooks" / "01_noparams.ipynb", "x = 1", parameters="seed = 0")
    assert run_notebooks.run(repo, "smoke", results_dir=repo / "results", progress=False) == 1
    assert "no `profile` parameter" in capsys.readouterr().out


def test_command_line_lists_validates_stops_at_a_failure_or_keeps_going(tmp_path, capsys):
    toc = (
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/executed/01_broken\n  - file: book/executed/02_plain\n"
    )
    repo = make_book(tmp_path, toc, {"01_broken": "raise ValueError('diverged')", "02_plain": "x = 1"})
    command = [sys.executable, "-m", "dode.companion.run_notebooks", "--repo", str(repo), "--list"]
    listed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    assert listed.splitlines() == ["notebooks/01_broken.ipynb", "notebooks/02_plain.ipynb"]

    with pytest.raises(SystemExit) as exit_status:
        run_notebooks.main(["--repo", str(repo), "--profile", "gpu"])
    assert exit_status.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    assert run_notebooks.main(["--repo", str(repo), "--only", "09_missing"]) == 2
    assert "error: --only names notebooks that _toc.yml does not list: 09_missing" in capsys.readouterr().err

    executed = repo / "book" / "executed"
    assert run_notebooks.main(["--repo", str(repo), "--profile", "smoke"]) == 1
    out = capsys.readouterr().out
    assert "results in data/results/smoke/" in out  # a smoke run never meets the cpu results
    assert not (executed / "02_plain.ipynb").exists(), "the run went on after a failure"
    assert run_notebooks.main(["--repo", str(repo), "--profile", "smoke", "--keep-going"]) == 1
    assert (executed / "02_plain.ipynb").is_file()
    assert "FAILED notebook(s): 01_broken" in capsys.readouterr().out
    assert [row["notebook"] for row in read_run_times(repo / "data" / "results")] == ["02_plain"]


def test_no_executed_page_prints_a_warning_or_a_log_to_stderr(smoke_book):
    """A page shows results, not logs: no cell of an executed notebook has a stderr stream (the cpu book's
    page 13 once showed tqdm's 'IProgress not found' warning, raised when diffusers imported tqdm.auto)."""
    noisy = {}
    for path in sorted((smoke_book.repo / "book" / "executed").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        hits = [
            i
            for i, cell in enumerate(cells)
            for out in cell.get("outputs", [])
            if out.get("output_type") == "stream" and out.get("name") == "stderr"
        ]
        if hits:
            noisy[path.name] = hits
    assert not noisy, f"cells with stderr output: {noisy}"


def test_no_page_shows_printed_text_in_a_visible_cell(smoke_book):
    """A page states its results as tables, figures and sentences, not as printed log lines: only the folded
    set-up cells (hide-cell) or removed outputs may print (page 07 once printed its paired differences)."""
    hidden = {"hide-cell", "remove-cell", "hide-output", "remove-output"}
    printed = {}
    for path in sorted((smoke_book.repo / "book" / "executed").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        hits = [
            i
            for i, cell in enumerate(cells)
            if not hidden & set(cell.get("metadata", {}).get("tags", []))
            and any(out.get("output_type") == "stream" for out in cell.get("outputs", []))
        ]
        if hits:
            printed[path.name] = hits
    assert not printed, f"visible cells with printed output: {printed}"


def test_the_reproduction_page_sets_ours_beside_the_papers_tables_2_and_4(smoke_book):
    """Page 11 puts this build's values beside the paper's Tab. 2 (from page 07) and Tab. 4 (from page 09, at
    the constants chosen on the tuning seed); Tab. 4 once showed the paper's numbers alone."""
    # run again: another test leaves a refused run of page 11 in book/executed/
    status = run_notebooks.run(
        smoke_book.repo, "smoke", only=["11_reproduction"], results_dir=smoke_book.results_dir, progress=False
    )
    assert status == 0
    cells = nbformat.read(smoke_book.repo / "book" / "executed" / "11_reproduction.ipynb", as_version=4).cells
    for call, row in (
        ('beside_paper(results.get("07_formulations")', "D-DDIM-Sep"),
        ("beside_paper(lookahead", "LA-DDIM"),
    ):
        (cell,) = [c for c in cells if c.cell_type == "code" and call in c.source]
        html = "".join(out.get("data", {}).get("text/html", "") for out in cell.outputs)
        assert ">ours<" in html and ">paper<" in html, call
        tds = re.findall(r"<td[^>]*>([^<]*)</td>", html[html.index(f">{row}</td>") :].split("</tr>")[0])
        # ours and the paper's alternate, NFE by NFE; the smoke sweeps run none of the paper's NFEs, so ours
        # are all "–" here (test_experiments checks the values on a file that has them)
        assert len(tds) == 2 * len(paper.NFES) and all(v == "–" for v in tds[0::2]), (row, tds)
        assert [float(v) for v in tds[1::2]] == pytest.approx(paper.TABLE2.get(row) or paper.TABLE4[row])
