"""Every notebook runs under the smoke profile; the runner finds, executes and times the book's notebooks.

The notebook conventions, which every notebook in notebooks/ must follow (dode/run_notebooks.py relies on
them too):

1. The notebook is committed clean: no outputs, no execution counts, kernel `python3`.
2. A cell tagged `parameters` defines `profile = "cpu"` (the embedded default; papermill overrides it with
   `smoke`, `cpu` or `paper`).
3. A notebook that writes results declares it by also defining `results_dir` in that cell (default
   `"../data/results"`, relative to notebooks/, its working directory). It then writes exactly one results
   file, `<results_dir>/<notebook-stem>.nc`, atomically, recording the profile it was computed with in the
   global attribute `profile`, and resumes from that file only when the profile matches.
4. Under `profile="smoke"` it finishes in seconds on a CPU.

Each notebook found in notebooks/ is smoke-run by papermill with `results_dir` pointing at a temporary
folder, so new notebooks are covered without editing this file.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from dode.companion import run_notebooks

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_runs_under_the_smoke_profile(path, tmp_path):
    declares_results = "results_dir" in papermill.inspect_notebook(str(path))
    results_dir = tmp_path / "results"
    parameters = {"profile": "smoke"}
    if declares_results:
        parameters["results_dir"] = str(results_dir)
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(path.parent),
        progress_bar=False,
    )
    if declares_results:
        import xarray

        results_file = results_dir / f"{path.stem}.nc"
        assert results_file.is_file(), f"{path.name} declares results_dir but wrote no {results_file.name}"
        with xarray.open_dataset(results_file) as results:
            assert results.attrs.get("profile") == "smoke"


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
