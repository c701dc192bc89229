"""The book builds offline: MathJax is served by the site itself, nothing is loaded from elsewhere.

The test builds this repository's own book from a temporary copy, with the committed (clean) notebooks
standing in for executed ones, with warnings as errors (as `make book` does).
"""

from __future__ import annotations

import html as html_module
import json
import re
import shutil
from pathlib import Path

import pytest

from dode.companion import api_reference, build_book, run_notebooks

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_book_builds_offline_with_local_mathjax(tmp_path):
    """Build this repository's book (about 20 s); fetches MathJax with npm into .cache/ the first time."""
    book = tmp_path / "repo"
    (book / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, book / name)
    for page in (REPO / "book").glob("*.md"):
        shutil.copy(page, book / "book" / page.name)
    shutil.copytree(REPO / "_static", book / "_static")
    for notebook in run_notebooks.book_notebooks(REPO):
        (book / "notebooks").mkdir(exist_ok=True)
        shutil.copy(notebook.source, book / "notebooks" / notebook.source.name)
        (book / "book" / "executed").mkdir(exist_ok=True)
        shutil.copy(notebook.source, book / "book" / "executed" / notebook.source.name)
    run_notebooks.record_run_times(book / "data" / "results" / run_notebooks.RUN_TIMES_FILE, [], [])
    # a reading's Markdown output with a table (page 00's floors): rendered as a table, not as pipes
    page00 = book / "book" / "executed" / "00_train_models.ipynb"
    nb = json.loads(page00.read_text())
    reading = "| model | floor |\n|---|---|\n| digits-eps | 1.38 ± 0.42 |\n"
    output = {"output_type": "display_data", "data": {"text/markdown": reading}, "metadata": {}}
    cell = {"cell_type": "code", "id": "table-reading", "metadata": {"tags": ["remove-input"]}}
    nb["cells"].append({**cell, "execution_count": 1, "outputs": [output], "source": "Markdown(text)"})
    page00.write_text(json.dumps(nb))
    # the introduction's figure, which notebook 11 draws when it runs
    import matplotlib.image

    matplotlib.image.imsave(book / build_book.SUMMARY_FIGURE, [[0.0, 1.0]], cmap="gray")
    # stray pages outside the TOC, in a tool cache and in data/, must not reach the book (-W would fail)
    for stray in (".pytest_cache/README.md", "data/README.md", "notebooks/notes.md"):
        (book / stray).parent.mkdir(parents=True, exist_ok=True)
        (book / stray).write_text("# not part of the book\n")
    # share the MathJax cache with the repository, so it is fetched once per checkout, not per test run
    (REPO / ".cache").mkdir(exist_ok=True)
    (book / ".cache").symlink_to(REPO / ".cache")

    assert build_book.build(book, path_output=tmp_path / "out") == 0  # -W: any warning fails the build
    html = tmp_path / "out" / "_build" / "html"
    assert (html / build_book.MATHJAX_ENTRY).is_file()
    assert not list((html / "_static").rglob("tex-mml-chtml.js")), "MathJax must stay out of _static/"
    page00 = (html / "book" / "executed" / "00_train_models.html").read_text()
    assert re.search(r"<td>\s*(<p>)?digits-eps(</p>)?\s*</td>", page00) and "|---|" not in page00, (
        "a reading's table"
    )
    assert re.search(r'<link[^>]*href="[^"]*_static/dode\.css', page00), (
        "the book's table styles reach every page"
    )
    method = (html / "book" / "method.html").read_text()
    assert 'class="math' in method, "the method page should contain typeset math"
    script = re.search(r'<script[^>]*src="([^"]*tex-mml-chtml\.js)[^"]*"', method).group(1)
    assert (html / "book" / script).resolve() == (html / build_book.MATHJAX_ENTRY).resolve()
    # the API reference renders every public name and every signature (tests/test_api_reference.py)
    api = html_module.unescape(re.sub(r"<[^>]+>", "", (html / "book" / "api.html").read_text()))
    for module in api_reference.PUBLIC_MODULES:
        for name, _ in api_reference.public_objects(module):
            assert f"{module}.{name}" in api, f"{module}.{name} is missing from the built API reference"
    signatures = re.findall(r"^```python\n(.*)$", api_reference.render(), flags=re.M)
    missing = [s for s in signatures if s not in api]
    assert not missing and len(signatures) > 60, f"signatures missing from the built page: {missing}"
    for page in html.rglob("*.html"):
        external = re.findall(r'<(?:script|link|img|iframe)[^>]*(?:src|href)="(https?:)?//', page.read_text())
        assert not external, f"{page.relative_to(html)} loads a resource from outside the site"


def test_gpu_page_counts_are_the_ones_network_evaluations_gives():
    """The run-time table's network evaluations and FID cells (Frechet distances) are the counts of
    protocols, which tests/test_experiments.py checks against the calls of a real sweep."""
    from dode.companion.protocols import metric_work, network_evaluations

    text = (REPO / "book" / "gpu.md").read_text()
    rows = re.findall(r"^\| (\d\d_[a-z_]+)[^|]*\| ([\d,]+) \| ([\d,]+) \|", text, flags=re.M)
    assert len(rows) >= 4
    for stem, count, cells in rows:
        assert int(count.replace(",", "")) == network_evaluations(stem, "paper"), stem
        assert int(cells.replace(",", "")) == metric_work(stem, "paper")["distances"], stem


def _tracked_text_files():
    import subprocess

    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in names.split():
        if name.endswith((".py", ".md", ".ipynb", ".yml", ".toml")) and (REPO / name).is_file():
            yield name, (REPO / name).read_text()


def test_citations_of_the_method_chapter_name_its_sections():
    """The project cites nothing outside itself: every "method chapter, section N" in the code, the tests and
    the pages names a numbered section of book/method.md, and no page or docstring cites a "METHOD" file."""
    method = (REPO / "book" / "method.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", method, flags=re.M)}
    assert sections == set(range(1, max(sections) + 1)), f"sections must be numbered 1..n: {sorted(sections)}"
    outside = "METHOD" + " section"  # spelled apart so that this file does not match itself
    cited = 0
    for name, text in _tracked_text_files():
        assert outside not in text.replace("\n", " "), f"{name} cites a file outside the repository"
        for first, second in re.findall(r"method chapter, sections? (\d+)(?:(?: and |-)(\d+))?", text):
            for n in (first, second):
                if n:
                    cited += 1
                    assert int(n) in sections, (
                        f"{name} cites section {n}; book/method.md has {sorted(sections)}"
                    )
    assert cited > 5


def test_every_ref_label_in_the_pages_is_defined():
    """The same check as Sphinx's -W, without a build: {ref}`text <label>` in a page or notebook resolves."""
    labels = set()
    for page in (REPO / "book").glob("*.md"):
        labels |= set(re.findall(r"^\(([\w-]+)\)=$", page.read_text(), flags=re.M))
    for notebook in (REPO / "notebooks").glob("*.ipynb"):  # a label on a notebook's markdown heading
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                labels |= set(re.findall(r"^\(([\w-]+)\)=$", "".join(cell["source"]), flags=re.M))
    for name, text in _tracked_text_files():
        if name.endswith((".md", ".ipynb")):
            for label in re.findall(r"\{ref\}`[^`<]*<([\w-]+)>`", text):
                assert label in labels, f"{name} links to an undefined label {label!r}"


def _executed_book(root: Path, outputs: dict[str, list[list[dict]]]) -> Path:
    """A book of executed notebooks: ``outputs`` maps a notebook's name to its code cells' outputs."""
    import nbformat

    toc = {
        "format": "jb-book",
        "root": "intro",
        "chapters": [{"file": f"book/executed/{n}"} for n in outputs],
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "_toc.yml").write_text(json.dumps(toc))  # JSON is YAML
    for folder in ("notebooks", "book/executed"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, cells in outputs.items():
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a page")])
        for count, cell_outputs in enumerate(cells, start=1):
            cell = nbformat.v4.new_code_cell("x = 1", execution_count=count)
            cell.outputs = [nbformat.from_dict(o) for o in cell_outputs]
            notebook.cells.append(cell)
        nbformat.write(notebook, root / "notebooks" / f"{name}.ipynb")
        nbformat.write(notebook, root / "book" / "executed" / f"{name}.ipynb")
    return root


def test_the_book_refuses_a_notebook_that_holds_an_error_or_a_traceback(tmp_path):
    """An error output (papermill's KeyError in a drawing cell), and a traceback printed to stderr by a caught
    exception, stop the build before jupyter-book runs, naming the notebook and the cell."""
    printed = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no\n'
    clean = [{"output_type": "stream", "name": "stdout", "text": "fine\n"}]
    root = _executed_book(
        tmp_path,
        {
            "01_clean": [clean, []],
            "02_raises": [
                clean,
                [
                    {
                        "output_type": "error",
                        "ename": "KeyError",
                        "evalue": "not all values found",
                        "traceback": [],
                    }
                ],
            ],
            "03_prints": [[], [], [{"output_type": "stream", "name": "stderr", "text": printed}]],
        },
    )
    with pytest.raises(run_notebooks.BookLayoutError) as err:
        build_book.build(root)
    message = str(err.value)
    assert "02_raises.ipynb: cell 3 (execution count 2): KeyError: not all values found" in message
    assert "03_prints.ipynb: cell 4 (execution count 3): a traceback printed to stderr" in message
    assert "01_clean" not in message
    assert build_book.main(["--repo", str(root)]) == 2
    # without the errors the build goes past this check (to the next missing file: the summary figure)
    root = _executed_book(tmp_path / "fixed", {"01_clean": [clean, []]})
    assert build_book.cells_with_errors(root / "book" / "executed" / "01_clean.ipynb") == []
    with pytest.raises(run_notebooks.BookLayoutError, match="summary.png"):
        build_book.build(root)
