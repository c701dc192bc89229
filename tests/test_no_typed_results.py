"""No page states a result of this build by hand.

The rule. Hand-written markdown (the notebooks' markdown cells, book/intro.md, book/timings.md) may contain:

- integers that are constants of the protocol or the model, and labels: NFE labels, equation, section,
  figure and table numbers ("Eq. 10", "section 3.1", "Supplementary 10.4"), sizes such as 8x8, $T = 1000$;
- maths (``$...$``, ``$$...$$``) and code spans (names, options);
- the paper's own numbers inside a quote of the paper: a blockquote line (``> ...``) or a paragraph that
  opens with ``**Paper.**``.

Outside those it may not contain what only a run can tell: decimal numbers, percentages, "N of M" or
"N/M" counts, "N times" / "Nx" / "N-fold" factors, durations ("43 s", "25 minutes"), counts of samples,
seeds, noises or images (they are protocol numbers that go stale: the protocol line is rendered from the
stored parameters), and blanket verdicts about this run ("at every NFE"). Such sentences are rendered by
code (:mod:`dode.companion.readings`) from the results files.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_STRIP = [
    re.compile(r"```.*?```", re.S),  # fenced blocks (directives, code)
    re.compile(r"\$\$.*?\$\$", re.S),  # display maths
    re.compile(r"\$[^$\n]+\$"),  # inline maths
    re.compile(r"`[^`\n]*`"),  # code spans and the targets of roles
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"\b(?:[Ss]ec(?:tion)?s?\.?|Supplementary|Supp\.|Eq\.|Eqs\.|Fig\.|Tab\.)\s+\d+(?:\.\d+)*"),
]

RULES = {
    "decimal number": re.compile(r"(?<![\w.])\d+\.\d+"),
    "percentage": re.compile(r"\d\s*%"),
    "N of M count": re.compile(r"\b\d+\s+(?:of|out of)\s+\d+\b|\b\d+/\d+\b"),
    "factor": re.compile(r"\b\d+(?:\.\d+)?(?:\s*[x×](?![\d\w])|\s+times\b|-fold\b)"),
    "duration": re.compile(r"\b\d[\d,.]*\s*(?:s|ms|sec|seconds?|min|minutes?|h|hours?)\b"),
    "sample count": re.compile(
        r"\b\d[\d,]*\s+(?:evaluation\s+|fresh\s+|fitting\s+)?(?:samples|seeds|noises|images|trajectories)\b"
    ),
    "verdict on this run": re.compile(
        r"at\s+every\s+NFE\s+(?:of\s+this\s+run|from\s+\d+\s+to\s+\d+|(?:that\s+)?we\s+measured)"
    ),
}


def _quoted_paper(text: str) -> str:
    """``text`` without the paper's quotes: blockquote lines and paragraphs that open with **Paper.**"""
    paragraphs = re.split(r"\n\s*\n", text)
    kept = [p for p in paragraphs if not p.lstrip().startswith("**Paper.**")]
    return "\n\n".join(
        "\n".join(line for line in p.splitlines() if not line.lstrip().startswith(">")) for p in kept
    )


def typed_results(text: str) -> list[str]:
    """Every place in ``text`` (markdown) that states a result by hand, as ``"rule: context"``."""
    text = _quoted_paper(text)
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    found = []
    for rule, pattern in RULES.items():
        for m in pattern.finditer(text):
            context = text[max(0, m.start() - 40) : m.end() + 20].replace("\n", " ")
            found.append(f"{rule}: ...{context}...")
    return found


def _markdown_cells(notebook: dict) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown"]


#: the reproduction page's markdown belongs to the verdicts (its own test); every other notebook is checked
PAGES = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name.startswith("11_"))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.stem)
def test_notebook_markdown_types_no_result(path):
    found = [hit for cell in _markdown_cells(json.loads(path.read_text())) for hit in typed_results(cell)]
    assert not found, (
        f"{path.name} states results by hand (render them with dode.companion.readings):\n" + "\n".join(found)
    )


@pytest.mark.parametrize("name", ["intro.md", "timings.md"])
def test_static_pages_type_no_result(name):
    found = typed_results((ROOT / "book" / name).read_text())
    assert not found, f"book/{name} states results by hand:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "it beat Heun at NFE 5 and 9 in the former run (2,000 samples each)",
        "D-EDM improves at every NFE from 5 to 19 that we measured",
        "neighbouring outputs have cosine similarity above 0.999 in both models",
        "about 94 % of all pairs above 0.9",
        "worse in 3 of 3 seeds",
        "on 2 cores it took 25 minutes",
        "D-DPM-Solver-3 improves FD 2.3-fold; the placement is 3 times better",
        "PD is cut to about 1/4000 of the paper's images",
    ],
)
def test_checker_flags_typed_results(text):
    assert typed_results(text)


@pytest.mark.parametrize(
    "text",
    [
        "D-ODE replaces $d_k$ by $\\tilde d_k = d_k + \\lambda_k (d_k - d_{k-1})$ (Eq. 10, section 3.1).",
        "Heun at odd NFEs; 8x8 digits; $T = 1000$; Supplementary 10.4; Fig. 8b-c; `lr=3e-4`.",
        "**Paper.** D-DDIM reaches FID 8.67 at NFE 10 against 18.85 for DDIM.",
        "> The paper reports FID 79.21 for D-DDIM-Sep at NFE 10.",
        "The reading below is computed from {doc}`11_reproduction`.",
    ],
)
def test_checker_allows_constants_maths_and_quotes(text):
    assert typed_results(text) == []


def _old(path: str) -> str:
    try:
        return subprocess.run(
            ["git", "show", f"a6e2398:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the repository's history is not available (a source archive)")


def test_checker_catches_the_old_typed_page_03():
    """The release before this rule typed page 03's verdicts by hand ("beats Heun at every NFE of this
    run" while its own table said otherwise): the checker flags that text."""
    found = [
        hit
        for cell in _markdown_cells(json.loads(_old("notebooks/03_data_prediction.ipynb")))
        for hit in typed_results(cell)
    ]
    assert any(hit.startswith("verdict on this run") for hit in found)
    assert any(hit.startswith("sample count") for hit in found)


@pytest.mark.parametrize(
    "path, rule",
    [
        ("book/intro.md", "verdict on this run"),  # "at every NFE from 5 to 19"
        ("book/timings.md", "duration"),  # "1,505 s (25.1 min) in all"
        ("notebooks/01_denoiser_correlation.ipynb", "percentage"),  # "about 94 % of all pairs"
        ("notebooks/10_timing.ipynb", "duration"),  # "7.7 s instead of 0.83 s"
    ],
)
def test_checker_catches_the_old_typed_pages(path, rule):
    text = _old(path)
    cells = _markdown_cells(json.loads(text)) if path.endswith(".ipynb") else [text]
    assert any(hit.startswith(rule) for cell in cells for hit in typed_results(cell))
