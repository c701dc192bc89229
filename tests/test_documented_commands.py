"""The command lines of README.md and book/gpu.md, run as written under the smoke profile.

Each command runs in a copy of the repository's layout (the book's `_toc.yml` cut down to notebook 02, the
notebook itself, and the paper run's configuration file at `paper.yaml`, copied from
`notebooks/paper.example.yaml` as the README says, with `device: cpu`), so that what the commands write
lands there. The only changes to a command: the profile (`paper`/`cpu` -> `smoke`) and the interpreter
(this one's `python`, and papermill run by it). Setting up the environment (conda, cp, fetching files),
`make` (which builds its own venv), building the book (jupyter-book) and computing FID statistics are left
out.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_noise_prediction"
# setting up (conda, cp, fetching files), make (its own venv), building the book, computing FID statistics;
# torchrun: tests/test_sweep.py parses every torchrun command of the GPU page with torchrun's own parser
# and runs the sweeps it starts in two processes; the throughput benchmark (on a GPU there) is run by
# tests/test_benchmarks.py with the same options at a small batch on the CPU; the dry run (every notebook and
# the book) by tests/test_dry_run.py, as the GPU page writes it, on paper-format miniatures
SKIPPED = (
    "python -m dode.dry_run",
    "torchrun ",
    "python benchmarks/",
    "conda ",
    "cp ",
    "git clone",
    "hf ",
    "wget ",
    "gdown ",
    "export ",
    "make ",
    "python -m dode.companion.build_book",
    "python -m pytorch_fid",
)


def commands(page: Path) -> list[tuple[str, str]]:
    """``(folder, command)`` for each command line of the page's bash blocks that runs dode or papermill,
    with the folder a preceding ``cd`` moved to (relative to the repository root)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        folder = "."
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#") or line.startswith(SKIPPED):
                continue
            for part in [p.strip() for p in line.split("&&")]:
                if part.startswith("cd "):
                    folder = part[3:].strip()
                elif not part.startswith(SKIPPED):
                    out.append((folder, part))
    return out


def smoke(command: str) -> list[str]:
    """The command under the smoke profile, with this interpreter."""
    args = shlex.split(command)
    if args[:2] == ["mkdir", "-p"]:
        return args
    if args[0].endswith("papermill"):
        args = [sys.executable, "-m", "papermill", *args[1:]]
    elif args[0] == "python" or args[0].endswith("/python"):
        args = [sys.executable, *args[1:]]
    else:
        raise AssertionError(f"not a command this test knows how to run: {command}")
    for i, arg in enumerate(args[:-1]):
        if arg == "--profile" or (arg == "-p" and args[i + 1] == "profile"):
            j = i + 1 if arg == "--profile" else i + 2
            args[j] = "smoke"
    return args


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / f"{NOTEBOOK}.ipynb", root / "notebooks")
    (root / "intro.md").write_text("# intro\n")
    toc = {"format": "jb-book", "root": "intro", "chapters": [{"file": f"book/executed/{NOTEBOOK}"}]}
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    params = yaml.safe_load((REPO / "notebooks" / "paper.example.yaml").read_text())
    (root / "paper.yaml").write_text(yaml.safe_dump({**params, "device": "cpu"}))
    return root


def _run(layout: Path, folder: str, command: str):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        smoke(command), cwd=layout / folder, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "book/gpu.md"])
def test_the_documented_commands_run_as_written(page, layout):
    import xarray as xr

    found = commands(REPO / page)
    assert any("papermill" in c for _, c in found), f"{page} shows no papermill command"
    for folder, command in found:
        done = _run(layout, folder, command)
        if "dode.preflight" in command:
            assert "everything is there" in done.stdout
    results = next((layout / "data" / "results").rglob(f"{NOTEBOOK}.nc"))
    with xr.open_dataset(results) as ds:
        assert ds.attrs["profile"] == "smoke"
        if page == "README.md":  # the hand-run example's two models
            assert ds.coords["model"].values.tolist()[:2] == ["digits-eps", "digits-eps-mini"]
    assert (layout / "book" / "executed" / f"{NOTEBOOK}.ipynb").is_file()


def test_the_commands_are_found():
    readme = [c for _, c in commands(REPO / "README.md")]
    assert any("-y '{seeds: [0], models: [digits-eps, digits-eps-mini]}'" in c for c in readme)
    assert "python -m dode.run_notebooks --profile paper --params paper.yaml" in readme
    gpu = [c for _, c in commands(REPO / "book" / "gpu.md")]
    assert any(c.startswith("papermill") and "-f ../paper.yaml" in c for c in gpu)
    assert "python -m dode.preflight --profile paper --params paper.yaml" in gpu
    for page in ("README.md", "book/gpu.md"):
        assert "python -m dode.dry_run --params paper.yaml" in (REPO / page).read_text(), page
    # no command passes a list or a mapping through papermill's -p, which would hand it over as a string
    for command in readme + gpu:
        args = shlex.split(command)
        for i, arg in enumerate(args[:-2]):
            if arg == "-p":
                assert not args[i + 2].startswith(("[", "{")), command


def test_the_runner_gives_each_notebook_the_parameters_it_defines(tmp_path, capsys):
    import nbformat

    from dode.companion import run_notebooks

    toc = "format: jb-book\nroot: intro\nchapters:\n  - file: book/executed/01_takes\n  - file: book/executed/02_not\n"
    (tmp_path / "_toc.yml").write_text(toc)
    for name, parameters in (
        ("01_takes", 'profile = "cpu"\nmodel_options = None'),
        ("02_not", 'profile = "cpu"'),
    ):
        cells = [
            nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("print(sorted(k for k in dir() if not k.startswith('_')))"),
        ]
        notebook = nbformat.v4.new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        nbformat.write(notebook, tmp_path / "notebooks" / f"{name}.ipynb")
    params = tmp_path / "run.yaml"
    params.write_text("model_options:\n  digits-eps: {path: /x}\nnrpoc: 2\n")
    status = run_notebooks.main(["--profile", "smoke", "--params", str(params), "--repo", str(tmp_path)])
    assert status == 0
    assert "--params sets nrpoc, which no notebook of the book takes" in capsys.readouterr().out
    executed = {
        n: nbformat.read(tmp_path / "book" / "executed" / f"{n}.ipynb", 4) for n in ("01_takes", "02_not")
    }
    injected = {
        n: "".join(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        for n, nb in executed.items()
    }
    assert 'model_options = {"digits-eps": {"path": "/x"}}' in injected["01_takes"]
    assert "model_options" not in injected["02_not"] and "nrpoc" not in injected["01_takes"]
    params.write_text("profile: paper\n")
    assert run_notebooks.main(["--profile", "smoke", "--params", str(params), "--repo", str(tmp_path)]) == 2


def test_the_paper_runs_configuration_file_is_not_committed():
    """README and book/gpu.md tell the user to copy the example to paper.yaml in the repository root: a file
    of this machine's paths, which git must not pick up (the example stays tracked)."""

    def ignored(path: str) -> bool:
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True)
        assert done.returncode in (0, 1), done.stderr  # 128: not a git checkout
        return done.returncode == 0

    assert ignored("paper.yaml")
    assert not ignored("notebooks/paper.example.yaml")
