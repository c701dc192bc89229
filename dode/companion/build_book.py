"""Build the Jupyter Book into book/_build/html, fully offline once MathJax is cached.

    python -m dode.companion.build_book [--all]

Run `python -m dode.companion.run_notebooks` first: the book renders the executed copies in book/executed/ and
never executes anything itself (`execute_notebooks: off` in _config.yml).

MathJax is served from the built site, not from a CDN. The npm package `mathjax` is installed once into
`.cache/mathjax/` (gitignored) and its `es5/` folder is staged as `.cache/book-extra/mathjax/`.
`_config.yml` names `.cache/book-extra` in `html_extra_path`, so Sphinx copies it to the root of the site
(`book/_build/html/mathjax/`). It must not live in `_static/`: Jupyter Book adds every .js and .css file
found there to every page. `mathjax_path` is given relative to `_static/`, which Sphinx resolves from each
page's own depth.

The static pages' numbers are rendered, not typed: :func:`render_generated` writes ``book/generated/``
(git-ignored) from the results files before every build -- ``intro_findings.md`` (the verdict on every
claim, :func:`dode.companion.readings.intro_findings`), ``intro_anomalies.md`` (where a curve of the
introduction's figure rises with NFE and which section explains it, :func:`dode.companion.anomalies.
summary_spikes`), ``timings_summary.md`` (this build's wall times,
:func:`dode.companion.readings.timings_summary`) and ``versions.md`` (the package versions and device each
results file was computed with, :func:`dode.companion.readings.versions_table`) -- which book/intro.md and
book/timings.md include -- and ``api.md``, the API reference generated from the public API's docstrings
(:func:`dode.companion.api_reference.render`), which book/api.md includes.

A built page that shows progress-bar output fails the build (:func:`pages_with_progress_bars`): the runner
sends the bars to the terminal (:mod:`dode.progress`), and one that reaches a page is a bar drawn past it.

The book never publishes an error: an executed notebook holding an error output, or a traceback printed to
a stream (a caught exception's ``traceback.print_exc()``, a warning turned into a failure), is refused
before anything is built (:func:`cells_with_errors`), naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dode.companion.run_notebooks import (
    RESULTS_DIR,
    RUN_TIMES_FILE,
    BookLayoutError,
    book_notebooks,
    default_results_dir,
)

MATHJAX_VERSION = "3.2.2"
MATHJAX_CACHE = ".cache/mathjax"  # npm --prefix folder
EXTRA_PATH = ".cache/book-extra"  # html_extra_path: its contents are copied to the site's root
MATHJAX_ENTRY = "mathjax/tex-mml-chtml.js"  # relative to the site's root
GENERATED = "book/generated"  # includes rendered from the results files (render_generated)
SUMMARY_FIGURE = "book/executed/summary.png"  # drawn by notebook 11; book/intro.md opens with it
#: a tqdm bar as it lands in a page: "runs:  42%|████▏     | 5/12 [00:03<00:04, ...]"
PROGRESS_BAR = re.compile(r"\d{1,3}%\|[^|\n]{0,200}\|\s*\d+/\d+\s*\[")
#: how Python starts a printed traceback, in a stream output of a cell
TRACEBACK = "Traceback (most recent call last)"


def ensure_mathjax(repo: Path) -> Path:
    """Stage MathJax under .cache/book-extra/mathjax, installing it with npm the first time."""
    staged = repo / EXTRA_PATH / "mathjax"
    version_file = staged / ".dode-mathjax-version"
    if version_file.is_file() and version_file.read_text().strip() == MATHJAX_VERSION:
        return staged
    npm = shutil.which("npm")
    if npm is None:
        raise BookLayoutError(
            "npm is not on PATH; it is needed once to fetch MathJax for offline math "
            "(Debian: apt-get install npm; conda: conda install -c conda-forge nodejs)"
        )
    prefix = repo / MATHJAX_CACHE
    package = prefix / "node_modules" / "mathjax"
    if not (package / "es5").is_dir() or _package_version(package) != MATHJAX_VERSION:
        print(f"book: installing MathJax {MATHJAX_VERSION} with npm into {MATHJAX_CACHE}/", flush=True)
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-save",
                f"mathjax@{MATHJAX_VERSION}",
            ],
            check=True,
        )
    if staged.exists():
        shutil.rmtree(staged)
    # The whole es5 distribution: MathJax loads fonts and TeX extensions (\boldsymbol, \cancel, ...) lazily.
    shutil.copytree(package / "es5", staged)
    version_file.write_text(MATHJAX_VERSION + "\n")
    return staged


def _package_version(package: Path) -> str | None:
    import json

    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def built_profile(repo: Path) -> str:
    """The profile of the last notebook run (run_times.csv), whose results the executed pages show."""
    path = repo / RESULTS_DIR / RUN_TIMES_FILE
    if path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        rows = [r for r in rows if r.get("profile")]  # not the placeholder row of an empty table
        if rows:
            return max(rows, key=lambda r: r["finished (UTC)"] or "")["profile"]
    return "cpu"


def render_generated(repo: Path) -> Path:
    """Write the static pages' generated includes into book/generated/ from this build's results."""
    from dode.companion import anomalies, api_reference, plots, readings
    from dode.companion.claims import load_results

    out = repo / GENERATED
    out.mkdir(parents=True, exist_ok=True)
    results_dir = default_results_dir(repo, built_profile(repo))
    (out / "intro_findings.md").write_text(readings.intro_findings(results_dir) + "\n")
    (out / "intro_anomalies.md").write_text(
        anomalies.summary_spikes(load_results(results_dir, plots.SUMMARY_STEMS)) + "\n"
    )
    (out / "timings_summary.md").write_text(readings.timings_summary(repo) + "\n")
    (out / "versions.md").write_text(readings.versions_table(results_dir) + "\n")
    (out / "api.md").write_text(api_reference.render())
    return out


def pages_with_progress_bars(html: Path) -> list[str]:
    """The pages of a built site (relative paths) that show progress-bar output."""
    return sorted(
        str(page.relative_to(html))
        for page in html.rglob("*.html")
        if PROGRESS_BAR.search(page.read_text(errors="replace"))
    )


def cells_with_errors(notebook: Path) -> list[str]:
    """The cells of an executed notebook that show an error: ``"cell N (execution count C): what"`` for each
    code cell (N counted from 1 over all cells) with an ``error`` output, or a stream output that prints a
    traceback. papermill stops at the first error, but a notebook executed elsewhere (or with errors
    allowed) may hold several, and a caught exception's printed traceback is a stream, not an error."""
    cells = json.loads(notebook.read_text())["cells"]
    found = []
    for number, cell in enumerate(cells, start=1):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") == "error":
                what = f"{output.get('ename', 'error')}: {output.get('evalue', '')}".strip()
            elif output.get("output_type") == "stream" and TRACEBACK in "".join(output.get("text", "")):
                what = f"a traceback printed to {output.get('name', 'a stream')}"
            else:
                continue
            found.append(f"cell {number} (execution count {cell.get('execution_count')}): {what[:200]}")
            break
    return found


def refuse_errors(notebooks) -> None:
    """Raise :class:`BookLayoutError` naming every executed notebook and cell that shows an error."""
    problems = [
        f"{nb.executed}: {cell}"
        for nb in notebooks
        if nb.executed.is_file()
        for cell in cells_with_errors(nb.executed)
    ]
    if problems:
        raise BookLayoutError(
            "the book would publish an error; fix the notebook(s) and run them again "
            "(`python -m dode.companion.run_notebooks --only NAME`):\n  " + "\n  ".join(problems)
        )


def build(repo: Path, rebuild_all: bool = False, path_output: Path | None = None) -> int:
    """Build the book of `repo` into `<path_output>/_build/html` (default: book/_build/html)."""
    missing = [nb for nb in book_notebooks(repo) if not nb.executed.is_file()]
    if missing:
        names = ", ".join(nb.name for nb in missing)
        raise BookLayoutError(
            f"not executed yet: {names}; run `python -m dode.companion.run_notebooks` (or make book)"
        )
    refuse_errors(book_notebooks(repo))
    if not (repo / SUMMARY_FIGURE).is_file():
        raise BookLayoutError(
            f"{SUMMARY_FIGURE} (the introduction's figure) is missing; notebook 11_reproduction draws it: "
            "run `python -m dode.companion.run_notebooks` (or make book)"
        )
    ensure_mathjax(repo)
    render_generated(repo)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(jupyter_book if jupyter_book.exists() else "jupyter-book"),
        "build",
        str(repo),
        "--path-output",
        str(path_output or repo / "book"),
        "--warningiserror",
        "--keep-going",
    ]
    if rebuild_all:
        command.append("--all")
    start = time.perf_counter()
    status = subprocess.run(command, cwd=repo).returncode
    if status != 0:
        print(f"book: jupyter-book build failed (exit status {status}); see the warnings above", flush=True)
        return status
    html = (path_output or repo / "book") / "_build" / "html"
    if not (html / MATHJAX_ENTRY).is_file():
        print(f"book: {html / MATHJAX_ENTRY} is missing: check html_extra_path in _config.yml", flush=True)
        return 1
    noisy = pages_with_progress_bars(html)
    if noisy:
        print(
            f"book: progress-bar output on {', '.join(noisy)}: a bar was drawn on the kernel's stderr instead "
            "of dode.progress.progress_bar (rerun those notebooks after the fix)",
            flush=True,
        )
        return 1
    print(f"book: built {html}/index.html in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the Jupyter Book into book/_build/html.")
    parser.add_argument("--all", action="store_true", help="rebuild every page, not only changed ones")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    args = parser.parse_args(argv)
    try:
        return build(args.repo.absolute(), rebuild_all=args.all)
    except BookLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
