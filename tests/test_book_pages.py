"""What a reader of the book gets: no progress bars on the pages, the code folded, the figures in view."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from dode.companion import build_book, run_notebooks
from dode.progress import LOG_ENV, progress_bar

BARS = """
from dode.progress import progress_bar
for _ in progress_bar(range(30), desc="work", mininterval=0):
    pass
print("computed")
"""


def _book_with(tmp_path: Path, name: str, cells: list) -> Path:
    (tmp_path / "_toc.yml").write_text(
        f"format: jb-book\nroot: book/intro\nchapters:\n  - file: book/executed/{name}\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / f"{name}.ipynb")
    return tmp_path


def test_progress_bars_go_to_the_run_log_and_not_into_the_executed_notebook(tmp_path):
    parameters = nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]})
    figure = nbformat.v4.new_code_cell("from IPython.display import HTML\nHTML('<b>table</b>')")
    repo = _book_with(tmp_path, "01_bars", [parameters, nbformat.v4.new_code_cell(BARS), figure])
    results = repo / "results"
    assert run_notebooks.run(repo, "smoke", results_dir=results, progress=False) == 0

    executed = json.loads((repo / "book" / "executed" / "01_bars.ipynb").read_text())
    streams = [
        "".join(out["text"])
        for cell in executed["cells"]
        for out in cell.get("outputs", [])
        if out["output_type"] == "stream"
    ]
    assert streams == ["computed\n"], streams  # the bar is not among the outputs
    assert "30/30" in (results / run_notebooks.LOGS_DIR / "01_bars.log").read_text()

    # folded for the reader: the source's parameters cell gives way to papermill's injected one
    tags = [cell["metadata"].get("tags", []) for cell in executed["cells"]]
    assert tags[0] == ["parameters", "remove-cell"]
    assert tags[1] == ["injected-parameters", "hide-input"]
    assert tags[2] == ["hide-cell"]  # prints only: folded whole
    assert tags[3] == ["hide-input"]  # draws a table: the output stays in view


def test_a_cell_keeps_the_fold_its_source_asks_for():
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["remove-input"]}, "outputs": []}]}
    assert run_notebooks.fold_for_the_book(nb)["cells"][0]["metadata"]["tags"] == ["remove-input"]


def test_progress_bar_writes_to_the_log_named_in_the_environment(tmp_path, monkeypatch, capsys):
    log = tmp_path / "run.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    for _ in progress_bar(range(7), desc="cells", mininterval=0):
        pass
    assert "7/7" in log.read_text()
    assert "7/7" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("<pre>runs:  42%|████▏     | 5/12 [00:03&lt;00:04,  1.8it/s]</pre>", True),
        ("<pre>PD 8-&gt;4 steps: 100%|██████████| 150/150 [01:02&lt;00:00]</pre>", True),
        ("<td>42%</td><td>|</td><p>5/12 of the cells</p>", False),
    ],
)
def test_the_build_finds_progress_bars_on_a_page(tmp_path, text, found):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text(f"<html><body>{text}</body></html>")
    assert build_book.pages_with_progress_bars(tmp_path) == (["sub/page.html"] if found else [])


def test_the_runner_passes_every_value_of_the_profile_that_a_notebook_declares():
    from dode.companion.protocols import PROTOCOLS

    declared = {"profile": None, "results_dir": None, "nfes": None, "seeds": None, "not_in_the_table": None}
    got = run_notebooks.run_parameters("02_noise_prediction", "cpu", declared, "../data/results")
    table = PROTOCOLS["02_noise_prediction"]["cpu"]
    assert got == {
        "profile": "cpu",
        "results_dir": "../data/results",
        "nfes": table["nfes"],
        "seeds": table["seeds"],
    }
    # a notebook without a protocol (the reproduction page) gets the profile alone
    assert run_notebooks.run_parameters("11_reproduction", "cpu", {"profile": None}) == {"profile": "cpu"}
