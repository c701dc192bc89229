"""The book builds offline: MathJax is served by the site itself, nothing is loaded from elsewhere.

The test builds this repository's own book from a temporary copy, with the committed (clean) notebooks
standing in for executed ones, with warnings as errors (as `make book` does).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dode.companion import build_book, run_notebooks

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
    for notebook in run_notebooks.book_notebooks(REPO):
        (book / "notebooks").mkdir(exist_ok=True)
        shutil.copy(notebook.source, book / "notebooks" / notebook.source.name)
        (book / "book" / "executed").mkdir(exist_ok=True)
        shutil.copy(notebook.source, book / "book" / "executed" / notebook.source.name)
    run_notebooks.record_run_times(book / "data" / "results" / run_notebooks.RUN_TIMES_FILE, [], [])
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
    method = (html / "book" / "method.html").read_text()
    assert 'class="math' in method, "the method page should contain typeset math"
    script = re.search(r'<script[^>]*src="([^"]*tex-mml-chtml\.js)[^"]*"', method).group(1)
    assert (html / "book" / script).resolve() == (html / build_book.MATHJAX_ENTRY).resolve()
    for page in html.rglob("*.html"):
        external = re.findall(r'<(?:script|link|img|iframe)[^>]*(?:src|href)="(https?:)?//', page.read_text())
        assert not external, f"{page.relative_to(html)} loads a resource from outside the site"


def test_gpu_page_counts_are_the_ones_network_evaluations_gives():
    from dode.companion.protocols import network_evaluations

    text = (REPO / "book" / "gpu.md").read_text()
    rows = re.findall(r"^\| (\d\d_[a-z_]+)[^|]*\| ([\d,]+) \|", text, flags=re.M)
    assert len(rows) >= 4
    for stem, count in rows:
        assert int(count.replace(",", "")) == network_evaluations(stem, "paper"), stem
