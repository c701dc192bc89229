"""The runner honours the order the notebooks declare in their metadata (``run_notebooks.METADATA_KEY``): a
notebook starts after its needs, at any ``--jobs``; the longest chain of work starts first; the notebooks
that run alone run with nothing beside them; and the declared needs are what the notebooks' code reads."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import json
import os
import re
import threading
import time
from pathlib import Path

import nbformat
import pytest

from dode.companion import claims, run_notebooks
from tests.test_notebooks import make_book, write_notebook

REPO = Path(__file__).resolve().parent.parent

#: the book's shape as it matters to the order: expected seconds, needs, runs alone
FAKE = {
    "01_a": (17, (), False),
    "02_long": (1000, (), False),
    "03_b": (373, (), False),
    "10_timing": (75, (), True),
    "12_testbed": (16, (), False),
    "13_peers": (420, ("12_testbed",), False),
    "11_reproduction": (9, ("01_a", "02_long", "03_b", "10_timing", "12_testbed", "13_peers"), True),
}


def fake_run(jobs: int, fail: str | None = None, keep_going: bool = True):
    """Schedule FAKE with a pool of ``jobs`` threads whose 'notebooks' sleep a few milliseconds (ordered by
    their expected time, never asserted on); returns the events ("start"/"end", name) in order, the names
    reported as skipped and the notebooks in book order."""
    notebooks = [run_notebooks.BookNotebook(n, Path(f"{n}.ipynb"), Path(f"x/{n}.ipynb")) for n in FAKE]
    plans = {n: run_notebooks.Plan(needs, alone, cost) for n, (cost, needs, alone) in FAKE.items()}
    expected = {n: cost for n, (cost, _, _) in FAKE.items()}
    events, lock, skipped = [], threading.Lock(), []

    def work(name):
        with lock:
            events.append(("start", name))
        time.sleep(0.01 + expected[name] / 20_000)
        with lock:
            events.append(("end", name))
        return 0.0, (RuntimeError("broken") if name == fail else None)

    with cf.ThreadPoolExecutor(jobs) as pool:
        run_notebooks.schedule(
            notebooks,
            plans,
            expected,
            jobs,
            lambda nb, alone: pool.submit(work, nb.name),
            lambda nb, wall, error: error is None or keep_going,
            lambda nb, needs: skipped.append((nb.name, needs)),
        )
    return events, skipped


def at(events, kind, name):
    return events.index((kind, name))


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_a_notebook_starts_only_after_its_needs_and_the_alone_ones_run_alone(jobs):
    events, skipped = fake_run(jobs)
    assert not skipped and sorted(n for k, n in events if k == "end") == sorted(FAKE)
    # the race of the last build: 13 read 12's results before 12 had written them
    assert at(events, "start", "13_peers") > at(events, "end", "12_testbed")
    assert all(
        at(events, "start", "11_reproduction") > at(events, "end", n) for n in FAKE if n != "11_reproduction"
    )
    for alone in ("10_timing", "11_reproduction"):  # nothing runs beside it
        start, end = at(events, "start", alone), at(events, "end", alone)
        assert events[start + 1] == ("end", alone) and end == start + 1


def test_the_longest_chain_starts_first_so_that_two_lanes_stay_busy():
    events, _ = fake_run(2)
    starts = [n for k, n in events if k == "start"]
    # 02 (1,000 s) first; then 12 (16 s), since 13 (420 s) waits for it: 436 s ahead of it, more than 03's 373
    assert starts[:3] == ["02_long", "12_testbed", "13_peers"]
    assert starts[-2:] == ["10_timing", "11_reproduction"]


def test_a_notebook_whose_need_failed_is_not_run_and_is_reported():
    events, skipped = fake_run(2, fail="12_testbed")
    assert ("start", "13_peers") not in events and ("start", "11_reproduction") not in events
    assert skipped == [("13_peers", ["12_testbed"]), ("11_reproduction", ["12_testbed", "13_peers"])]
    # without --keep-going nothing new starts after the failure
    events, skipped = fake_run(1, fail="02_long", keep_going=False)
    assert [n for k, n in events if k == "start"] == ["02_long"]


def test_plans_are_checked(tmp_path):
    path = tmp_path / "01_x.ipynb"
    write_notebook(path, "x = 1")
    nb = json.loads(path.read_text())
    for bad, message in (
        ({"need": []}, "keys among needs, runs_alone, cost"),
        ({"needs": "02_y"}, "must be a list of notebook names"),
        ({"runs_alone": 1}, "must be true or false"),
        ({"cost": -3}, "must be a number of seconds"),
    ):
        nb["metadata"][run_notebooks.METADATA_KEY] = bad
        path.write_text(json.dumps(nb))
        with pytest.raises(run_notebooks.BookLayoutError, match=message):
            run_notebooks.notebook_plan(path)
    book = [run_notebooks.BookNotebook("01_x", path, path)]
    nb["metadata"][run_notebooks.METADATA_KEY] = {"needs": ["09_missing"]}
    path.write_text(json.dumps(nb))
    with pytest.raises(run_notebooks.BookLayoutError, match="01_x needs 09_missing"):
        run_notebooks.book_plans(book)


RACE_TOC = """
format: jb-book
root: book/intro
chapters:
  - file: book/executed/01_writes_late
  - file: book/executed/02_reads
"""


def _declare(path: Path, **plan) -> None:
    nb = json.loads(path.read_text())
    nb["metadata"]["dode"] = plan  # run_notebooks.METADATA_KEY, spelled out as a notebook's author writes it
    path.write_text(json.dumps(nb))


def test_the_runner_runs_a_notebook_after_the_one_whose_results_it_reads(tmp_path, capsys):
    """Two real notebooks at --jobs 2: 02 reads the file that 01 writes after a pause. Before the needs were
    declared and honoured, both started at once and 02 failed (the race of page 13 and page 12)."""
    repo = make_book(tmp_path, RACE_TOC, {})
    params = 'profile = "cpu"\nresults_dir = "x"'
    late = "import pathlib, time\ntime.sleep(1)\npathlib.Path(results_dir, '01.txt').write_text('ok')"
    write_notebook(repo / "notebooks" / "01_writes_late.ipynb", late, parameters=params)
    reads = "import pathlib\nassert pathlib.Path(results_dir, '01.txt').read_text() == 'ok'"
    write_notebook(repo / "notebooks" / "02_reads.ipynb", reads, parameters=params)
    _declare(repo / "notebooks" / "02_reads.ipynb", needs=["01_writes_late"])
    results_dir = repo / "data" / "results"
    results_dir.mkdir(parents=True)
    assert run_notebooks.run(repo, "smoke", results_dir=results_dir, progress=False, jobs=2) == 0, (
        capsys.readouterr()
    )
    # --only: the need is not run, and its existing results are used
    assert (
        run_notebooks.run(repo, "smoke", only=["02_reads"], results_dir=results_dir, progress=False, jobs=2)
        == 0
    )
    out = capsys.readouterr().out
    assert "note: 02_reads needs 01_writes_late, not selected: their existing results under" in out
    assert "[1/1] 02_reads" in out


# ---- the book's own declarations ----


def _code(stem: str) -> str:
    cells = nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4).cells
    return "\n".join(c.source for c in cells if c.cell_type == "code")


def test_the_declared_needs_are_what_the_notebooks_read():
    book = run_notebooks.book_notebooks(REPO)
    plans = run_notebooks.book_plans(book)
    names = [nb.name for nb in book]
    for name in names:
        source = _code(name)
        if "claims.page_verdicts(" in source:  # its verdicts read the results of claims.page_reads too
            assert set(claims.page_reads(name)) <= set(plans[name].needs), name
        if name != "11_reproduction":  # and no page waits for results it does not read
            assert set(plans[name].needs) == set(claims.page_reads(name)), name
    # 11 gathers everything: the results files its code loads, and every other notebook of the book
    loaded = set()
    for node in ast.walk(ast.parse(re.sub(r"^[%!].*$", "", _code("11_reproduction"), flags=re.M))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            loaded.add(node.value)
    assert loaded and loaded <= set(plans["11_reproduction"].needs)
    assert set(plans["11_reproduction"].needs) == set(names) - {"11_reproduction"}
    evidence = {stem for stems in claims.EVIDENCE.values() for stem in stems}
    assert evidence <= set(plans["11_reproduction"].needs)
    # 11 gathers every result: it runs alone; no other does (page 10's timings are ratios within one process)
    assert {n for n in names if plans[n].runs_alone} == {"11_reproduction"}
    # the longest notebook starts first on a fresh clone (no run times yet: the cost hints decide)
    expected = run_notebooks.expected_seconds(plans, "cpu", REPO / "nowhere.csv")
    rank = run_notebooks.priorities(plans, expected, names)
    assert max(names, key=rank.get) == max(names, key=lambda n: plans[n].cost or 0.0)
    assert {"02_noise_prediction", "13_peers"} == set(sorted(names, key=rank.get)[-2:])  # one in each lane


def test_a_worker_gives_a_notebook_that_runs_alone_the_runner_threads_again(monkeypatch):
    """A worker process runs several notebooks: after one beside others (one thread), one that runs alone
    gets the runner's own thread settings back, not the single thread left in the worker's environment."""
    seen = []
    monkeypatch.setattr(
        run_notebooks, "execute", lambda *a, **k: seen.append(os.environ.get("OMP_NUM_THREADS"))
    )
    monkeypatch.setattr(run_notebooks, "_STARTING_THREADS", {"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": "4"})
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    assert run_notebooks._execute_in_worker(True)[1] is None
    assert run_notebooks._execute_in_worker(False)[1] is None
    assert seen == ["1", None] and os.environ["MKL_NUM_THREADS"] == "4"
