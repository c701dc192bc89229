"""Execute the book's notebooks with papermill, in the order of `_toc.yml` and of the needs they declare.

    python -m dode.run_notebooks [--profile smoke|cpu|paper] [--params FILE] [--only NAME ...] [--keep-going]
                                 [--list]

Conventions (shared with tests/test_notebooks.py):

- The clean source of a notebook is `notebooks/<name>.ipynb`; `_toc.yml` lists it as `book/executed/<name>`,
  which is where this runner writes the executed copy that the book renders. Adding a notebook to the book
  is one line in `_toc.yml`.
- Every notebook has a cell tagged `parameters` that defines `profile` (the runner passes the chosen one).
  A notebook that also defines `results_dir` writes its results to `<results_dir>/<name>.nc`; the runner
  passes the path of `data/results/` relative to `notebooks/`. One that defines `figures_dir` gets the
  folder of the executed copies (`book/executed/`, relative to `notebooks/`), where it may leave a figure
  that a page of the book shows (notebook 11 draws the introduction's).
- Notebooks run with `notebooks/` as their working directory, as when opened by hand in Jupyter.
- Notebooks resume from their own results files, so re-running is cheap and the runner simply executes
  every listed notebook again.
- ``--params FILE`` (YAML, e.g. ``notebooks/paper.example.yaml``) gives parameters to every notebook: each
  notebook gets the file's keys that its `parameters` cell defines (``papermill -f FILE`` takes the same
  file for one notebook). A key that no notebook of the book defines is reported (a typo would otherwise
  be ignored silently).
- Progress bars never enter an executed notebook: the runner names a run log in ``$DODE_PROGRESS_LOG``
  (``<results>/logs/<name>.log``), where every bar of ``dode`` is drawn (:mod:`dode.progress`), and shows that
  log on its own terminal while the notebook runs.
- The executed copy is folded for the reader (:func:`fold_for_the_book`): the code sits behind a toggle, the
  figures and tables it draws stay in view, and the parameters cell shows once, as papermill injected it.

- Order: a notebook's metadata may declare, under ``"dode"`` (:data:`METADATA_KEY`), the notebooks whose
  results it reads (``"needs": ["12_exact_testbed"]``), that it must run with nothing beside it
  (``"runs_alone": true``: 11, which gathers every result; page 10's timings are ratios measured in one
  process on one thread, so it shares the machine like the others) and its expected wall time in
  seconds on the cpu profile (``"cost": 1000``, a hint used until ``run_times.csv`` holds a time of the same
  profile). At any ``--jobs`` a notebook starts only after all its needs finished successfully (one whose
  need failed is not run, and reported); among the notebooks ready to start, the one with the longest
  expected chain of work ahead (its own time and that of the notebooks waiting on it) starts first, so the
  lanes stay busy; one that runs alone starts when nothing runs and nothing else is ready. With ``--only``,
  needs that are not selected are not run: their existing results are used (the runner says so).

The wall time of each notebook is recorded in `data/results/run_times.csv`, which `book/timings.md` shows.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from dode.files import atomic_write
from dode.progress import LOG_ENV

PROFILES = ("smoke", "cpu", "paper")
EXECUTED_PREFIX = "book/executed/"
SOURCE_DIR = "notebooks"
RESULTS_DIR = "data/results"
RUN_TIMES_FILE = "run_times.csv"
LOGS_DIR = "logs"  # under the results folder: one progress log per notebook
#: ``run started (UTC)`` names the runner's invocation a row comes from: a partial rerun (``--only``) keeps the
#: rows of the notebooks it did not run, and their times belong to an earlier run
RUN_TIMES_COLUMNS = ("notebook", "profile", "wall time (s)", "finished (UTC)", "run started (UTC)", "machine")
KERNEL_NAME = "python3"


#: the key of a notebook's metadata under which it declares how the runner schedules it (see the module's
#: docstring): ``needs`` (notebook stems), ``runs_alone`` (bool), ``cost`` (seconds on the cpu profile)
METADATA_KEY = "dode"
PLAN_KEYS = ("needs", "runs_alone", "cost")


class BookLayoutError(RuntimeError):
    """`_toc.yml` and `notebooks/` disagree, or a notebook breaks the parameter conventions."""


@dataclass(frozen=True)
class Plan:
    """What a notebook's metadata declares for its scheduling (:data:`METADATA_KEY`)."""

    needs: tuple[str, ...] = ()
    runs_alone: bool = False
    cost: float | None = None


def notebook_plan(source: Path) -> Plan:
    """The scheduling a notebook declares in its metadata (none: no needs, not alone, no cost hint)."""
    meta = json.loads(source.read_text()).get("metadata", {}).get(METADATA_KEY, {})
    where = f"{source.name}: metadata[{METADATA_KEY!r}]"
    if not isinstance(meta, dict) or set(meta) - set(PLAN_KEYS):
        raise BookLayoutError(
            f"{where} must be a mapping with keys among {', '.join(PLAN_KEYS)}, got {meta!r}"
        )
    needs = meta.get("needs", [])
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise BookLayoutError(f"{where}['needs'] must be a list of notebook names, got {needs!r}")
    alone = meta.get("runs_alone", False)
    if not isinstance(alone, bool):
        raise BookLayoutError(f"{where}['runs_alone'] must be true or false, got {alone!r}")
    cost = meta.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0):
        raise BookLayoutError(f"{where}['cost'] must be a number of seconds >= 0, got {cost!r}")
    return Plan(tuple(needs), alone, None if cost is None else float(cost))


def book_plans(notebooks: list[BookNotebook]) -> dict[str, Plan]:
    """Every notebook's :class:`Plan`, checked: needs name notebooks of the book, and no cycle."""
    plans = {nb.name: notebook_plan(nb.source) for nb in notebooks}
    for name, plan in plans.items():
        unknown = sorted(set(plan.needs) - set(plans))
        if unknown or name in plan.needs:
            raise BookLayoutError(
                f"{name} needs {', '.join(unknown) or name}, which must be other notebooks of the book: "
                f"{', '.join(plans)}"
            )
    state: dict[str, int] = {}  # 1: on the current path, 2: checked

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise BookLayoutError(f"the notebooks' needs form a cycle: {' -> '.join([*path, name])}")
        state[name] = 1
        for need in plans[name].needs:
            visit(need, [*path, name])
        state[name] = 2

    for name in plans:
        visit(name, [])
    return plans


def expected_seconds(plans: dict[str, Plan], profile: str, run_times: Path) -> dict[str, float]:
    """Each notebook's expected wall time: its last time of the same profile in ``run_times`` (the runner's
    table), else its declared cost hint, else 0."""
    last = {}
    if run_times.is_file():
        with run_times.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    if row.get("profile") == profile:
                        last[row["notebook"]] = float(row["wall time (s)"])
                except (KeyError, TypeError, ValueError):
                    continue
    return {name: last.get(name, plan.cost or 0.0) for name, plan in plans.items()}


@dataclass(frozen=True)
class BookNotebook:
    name: str  # the file stem, e.g. "03_teacher_grid"
    source: Path  # notebooks/<name>.ipynb, clean, as committed
    executed: Path  # book/executed/<name>.ipynb, what the book renders


def toc_entries(toc_path: Path) -> list[str]:
    """Every `file:` entry of a Jupyter Book v1 table of contents, in reading order (root first)."""
    if not toc_path.is_file():
        raise BookLayoutError(f"no table of contents at {toc_path}")
    toc = yaml.safe_load(toc_path.read_text()) or {}
    entries: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    entries.append(node[key])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return entries


def book_notebooks(repo: Path) -> list[BookNotebook]:
    """The notebooks that `_toc.yml` puts in the book, in reading order, each with its clean source."""
    notebooks = []
    for entry in toc_entries(repo / "_toc.yml"):
        entry = entry.removesuffix(".ipynb")
        if not entry.startswith(EXECUTED_PREFIX):
            continue
        name = entry[len(EXECUTED_PREFIX) :]
        source = repo / SOURCE_DIR / f"{name}.ipynb"
        if "/" in name or not source.is_file():
            raise BookLayoutError(
                f"_toc.yml lists '{entry}', but there is no notebook {SOURCE_DIR}/{name}.ipynb to execute "
                f"(entries under {EXECUTED_PREFIX} must name a notebook in {SOURCE_DIR}/)"
            )
        notebooks.append(BookNotebook(name, source, repo / EXECUTED_PREFIX / f"{name}.ipynb"))
    return notebooks


def notebooks_outside_book(repo: Path) -> list[Path]:
    """Notebooks in notebooks/ that `_toc.yml` does not list (they are tested but not in the book)."""
    listed = {nb.source for nb in book_notebooks(repo)}
    return [path for path in sorted((repo / SOURCE_DIR).glob("*.ipynb")) if path not in listed]


def machine_description() -> str:
    """What ran the notebooks, for the timings table: the GPU's name, else the CPU core count.

    Asks nvidia-smi rather than torch, whose import alone takes seconds.
    """
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi:
        try:
            query = [nvidia_smi, "--query-gpu=name", "--format=csv,noheader"]
            names = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
            gpus = [name.strip() for name in names.splitlines() if name.strip()]
            if gpus:
                return gpus[0] if len(gpus) == 1 else f"{len(gpus)} x {gpus[0]}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"CPU, {os.cpu_count()} cores"


def record_run_times(path: Path, new_rows: list[dict[str, str]], book_order: list[str]) -> None:
    """Merge this run's rows into the table, keeping earlier rows of notebooks not run this time."""
    rows: dict[str, dict[str, str]] = {}
    if path.is_file():
        with path.open(newline="") as f:
            rows = {row["notebook"]: row for row in csv.DictReader(f) if row.get("notebook") in book_order}
    rows.update({row["notebook"]: row for row in new_rows})
    ordered = [rows[name] for name in book_order if name in rows]
    if not ordered:
        # An empty table is an error for the csv-table directive that shows this file.
        ordered = [{"notebook": "(no notebook has run yet)"}]
    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=RUN_TIMES_COLUMNS, restval="", extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(ordered)
    content = text.getvalue()
    atomic_write(path, lambda tmp: tmp.write_text(content))


def notebook_parameters(source: Path) -> dict:
    import papermill

    parameters = papermill.inspect_notebook(str(source))
    if "profile" not in parameters:
        raise BookLayoutError(
            f'{source.name} has no `profile` parameter: define `profile = "cpu"` in a cell tagged '
            "`parameters`"
        )
    return parameters


def read_params(path: str | Path) -> dict:
    """The parameters of a run configuration file: a YAML mapping of notebook parameters (not ``profile``,
    which the command line chooses)."""
    path = Path(path)
    if not path.is_file():
        raise BookLayoutError(f"--params {path}: no such file")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise BookLayoutError(f"--params {path} must hold a YAML mapping of notebook parameters")
    if "profile" in params:
        raise BookLayoutError(f"--params {path} sets `profile`; choose it with --profile instead")
    return params


def unused_params(params: dict, notebooks: list[BookNotebook]) -> list[str]:
    """The keys of ``params`` that none of ``notebooks`` takes (the runner reports them: likely typos)."""
    known = set().union(*(notebook_parameters(nb.source) for nb in notebooks)) if notebooks else set()
    return sorted(set(params) - known)


class _Tail(threading.Thread):
    """Copies what a notebook's kernel appends to its run log onto this process's terminal, as it comes."""

    def __init__(self, path: Path, out) -> None:
        super().__init__(daemon=True)
        self.path, self.out, self.finished = path, out, threading.Event()

    def run(self) -> None:
        with self.path.open(errors="replace") as log:
            while True:
                done = self.finished.is_set()  # read once more after the kernel stopped writing
                chunk = log.read()
                if chunk:
                    self.out.write(chunk)
                    self.out.flush()
                elif done:
                    return
                else:
                    self.finished.wait(0.25)

    def stop(self) -> None:
        self.finished.set()
        self.join()


def run_parameters(
    name: str, profile: str, declared, results_dir: str | None = None, figures_dir: str | None = None
) -> dict:
    """What the runner passes to papermill: ``profile``, ``results_dir`` and ``figures_dir`` where the
    notebook declares them, and every other declared parameter at its value in the profile's protocol
    (``dode.companion.protocols.PROTOCOLS[name][profile]``). The notebook would fill in the same values
    itself; passed explicitly, they appear in the page's injected parameters cell, so the page shows every
    value its run used."""
    from dode.companion.protocols import PROTOCOLS

    parameters = {"profile": profile}
    if "results_dir" in declared and results_dir is not None:
        parameters["results_dir"] = results_dir
    if "figures_dir" in declared and figures_dir is not None:
        parameters["figures_dir"] = figures_dir
    table = PROTOCOLS.get(name, {}).get(profile, {})
    parameters.update({k: v for k, v in table.items() if k in declared and k not in parameters})
    return parameters


def papermill_parameters(
    notebook: BookNotebook,
    profile: str,
    results_dir: Path,
    params: dict | None = None,
    scale: dict | None = None,
) -> dict:
    """The parameters :func:`execute` hands to papermill: :func:`run_parameters`, the ones of ``params`` that
    the notebook defines over them, and with a dry run's ``scale`` all of them capped
    (:func:`dode.companion.protocols.scale_down`, whose ``ValueError`` names a notebook it cannot scale)."""
    # results_dir relative to the notebook's working directory: the injected cell shows up in the book, and
    # an absolute path would print this machine's folders there
    relative = os.path.relpath(results_dir.absolute(), notebook.source.parent)
    figures = os.path.relpath(notebook.executed.parent.absolute(), notebook.source.parent)
    declared = notebook_parameters(notebook.source)
    parameters = run_parameters(notebook.name, profile, declared, relative, figures)
    parameters.update({k: v for k, v in (params or {}).items() if k in declared})
    if scale is None:
        return parameters
    from dode.companion.protocols import scale_down

    return scale_down(notebook.name, parameters, scale)


def execute(
    notebook: BookNotebook,
    profile: str,
    results_dir: Path,
    progress: bool = True,
    params: dict | None = None,
    scale: dict | None = None,
) -> float:
    """Run one notebook with papermill; returns its wall time in seconds. Raises on failure.

    ``params``: further parameters (from ``--params FILE``); the notebook gets the ones it defines, over
    the protocol's values. ``scale``: a dry run's caps (:func:`dode.companion.protocols.scale_down`), applied
    to both. The kernel draws its progress bars in ``<results_dir>/logs/<name>.log`` (shown
    on stderr here when ``progress``), so none of them is captured into the executed notebook."""
    import papermill

    parameters = papermill_parameters(notebook, profile, results_dir, params, scale)
    notebook.executed.parent.mkdir(parents=True, exist_ok=True)
    log = results_dir / LOGS_DIR / f"{notebook.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{notebook.name} (profile={profile})\n")
    tail = _Tail(log, sys.stderr) if progress else None
    if tail:
        tail.start()
    previous = os.environ.get(LOG_ENV)
    os.environ[LOG_ENV] = str(log.absolute())  # the kernel inherits this process's environment
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook.source),
            str(notebook.executed),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            cwd=str(notebook.source.parent),
            # papermill's own bar (cells done) would fight the kernel's bars for the same terminal line
            progress_bar=False,
            # the kernel's own log is not the reader's concern: start-up warnings (e.g. about its local TCP
            # transport) and, on a loaded machine, "KeyboardInterrupt caught in kernel" when the client
            # interrupts a kernel slow to shut down after the last cell. The notebook's own warnings and
            # errors still land in its outputs, and a failing cell fails the run.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    finally:
        if previous is None:
            os.environ.pop(LOG_ENV, None)
        else:
            os.environ[LOG_ENV] = previous
        if tail:
            tail.stop()
            sys.stderr.write("\n")
    _fold_executed(notebook.executed)
    return time.perf_counter() - start


#: Jupyter Book's cell tags: the input behind a toggle, the whole cell behind one, the cell left out
FOLD_TAGS = ("hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell")
_RICH_OUTPUTS = ("display_data", "execute_result")


def fold_for_the_book(nb: dict) -> dict:
    """Tag the cells of an executed notebook so that its page opens with the text and the figures.

    - The source's ``parameters`` cell is left out: papermill's ``injected-parameters`` cell, which holds
      the values this run used, follows it and is shown instead, folded.
    - A code cell that draws something (a figure, a table) shows it with the code folded (``hide-input``);
      one that only computes or prints is folded whole (``hide-cell``).
    - A cell whose source already carries one of :data:`FOLD_TAGS` keeps its own choice.
    """
    injected = any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(tag in FOLD_TAGS for tag in tags):
            continue
        if "parameters" in tags and injected:
            tags.append("remove-cell")
        elif "injected-parameters" in tags:
            tags.append("hide-input")
        elif any(out.get("output_type") in _RICH_OUTPUTS for out in cell.get("outputs", [])):
            tags.append("hide-input")
        else:
            tags.append("hide-cell")
    return nb


def _fold_executed(path: Path) -> None:
    import json

    nb = fold_for_the_book(json.loads(path.read_text()))
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def failure_message(notebook: BookNotebook, profile: str, wall: float, error: Exception, repo: Path) -> str:
    import papermill

    where = ""
    if isinstance(error, papermill.PapermillExecutionError):
        where = f" in cell In [{error.exec_count}]"
        reason = f"{error.ename}: {error.evalue}"
    else:
        reason = f"{type(error).__name__}: {error}"
    executed = notebook.executed.relative_to(repo) if notebook.executed.is_file() else None
    message = (
        f"FAILED: notebook {SOURCE_DIR}/{notebook.name}.ipynb (profile={profile}) failed{where} "
        f"after {wall:.1f} s\n  {reason}"
    )
    if executed:
        message += f"\n  the executed copy with the full traceback: {executed}"
    return message


def default_results_dir(repo: Path, profile: str) -> Path:
    """``data/results`` for the book's default profile (cpu), ``data/results/<profile>`` for the others, so
    a smoke or paper run never meets (or is refused by) the cpu results of the same notebook; ``profile``
    may be a dry run's :func:`run_label` (``paper-dry``), whose small results never meet the full run's."""
    base = repo / RESULTS_DIR
    return base if profile == "cpu" else base / profile


#: what a dry run's profile is recorded as (run_times.csv, its results folder): ``<profile>-dry``
DRY_SUFFIX = "-dry"


def run_label(profile: str, dry: bool = False) -> str:
    """The name a run is recorded under: its profile, or ``<profile>-dry`` for a dry run (scaled down)."""
    return f"{profile}{DRY_SUFFIX}" if dry else profile


def _timed(function, *args, **kwargs) -> tuple[float, Exception | None]:
    """``function``'s wall time and the exception it raised (None if none)."""
    start = time.perf_counter()
    try:
        function(*args, **kwargs)
    except Exception as error:
        return time.perf_counter() - start, error
    return time.perf_counter() - start, None


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: their values when the worker process started (the runner's own): a worker runs several notebooks, and
#: one that runs alone must not inherit the single thread set for a notebook it ran before
_STARTING_THREADS = {name: os.environ.get(name) for name in _THREAD_VARIABLES}


def _execute_in_worker(one_thread: bool, *args, **kwargs) -> tuple[float, Exception | None]:
    """:func:`execute` in a worker process; ``one_thread``: its kernel computes on one thread, so that two
    notebooks on two cores do not fight over them (torch's two threads per small convolution gain less
    than a second process does); otherwise on the threads the runner itself was given."""
    for name in _THREAD_VARIABLES:
        value = "1" if one_thread else _STARTING_THREADS[name]
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    wall, error = _timed(execute, *args, **kwargs)
    if error is not None and not _picklable(error):
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return wall, error


def _picklable(error: Exception) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return False
    return True


def priorities(plans: dict[str, Plan], expected: dict[str, float], names) -> dict[str, float]:
    """Each notebook's expected chain of work ahead: its own expected time plus the longest chain among the
    notebooks of ``names`` that need it. Starting the longest chain first keeps the lanes busy to the end
    (page 12 before shorter notebooks, since 13, the second longest, waits for it)."""
    names = set(names)
    memo: dict[str, float] = {}

    def chain(name: str) -> float:
        if name not in memo:
            after = [chain(d) for d in names if name in plans[d].needs]
            memo[name] = expected.get(name, 0.0) + max(after, default=0.0)
        return memo[name]

    return {name: chain(name) for name in names}


def schedule(notebooks, plans, expected, jobs, submit, finished, skipped) -> None:
    """Run ``notebooks`` (in book order) at most ``jobs`` at a time, honouring their plans:

    - a notebook starts only when each of its needs among ``notebooks`` has finished successfully (a need
      outside ``notebooks`` is taken as done: its existing results are used); one whose need failed or was
      skipped is not run, and ``skipped(notebook, needs)`` reports it;
    - among the notebooks ready to start, the longest chain of work ahead (:func:`priorities`) starts first,
      book order breaking ties;
    - one that runs alone starts only when nothing runs and no other notebook is ready, and nothing starts
      beside it.

    ``submit(notebook, alone)`` starts one and returns a :class:`concurrent.futures.Future` of
    ``(wall, error)``; ``finished(notebook, wall, error)`` records its outcome and says whether the run goes
    on (after a failure without ``--keep-going`` nothing new starts)."""
    import concurrent.futures as cf

    names = [nb.name for nb in notebooks]
    rank = priorities(plans, expected, names)
    waiting = list(notebooks)
    succeeded: set[str] = set()
    dropped: set[str] = set()  # failed or skipped
    running: dict[cf.Future, BookNotebook] = {}
    go_on = True
    while waiting or running:
        if go_on:
            for nb in list(waiting):
                lost = [n for n in plans[nb.name].needs if n in dropped]
                if lost:
                    waiting.remove(nb)
                    dropped.add(nb.name)
                    skipped(nb, lost)
            ready = [
                nb for nb in waiting if all(n in succeeded or n not in names for n in plans[nb.name].needs)
            ]
            alone_running = any(plans[nb.name].runs_alone for nb in running.values())
            regular = [nb for nb in ready if not plans[nb.name].runs_alone]
            while regular and len(running) < jobs and not alone_running:
                nb = max(regular, key=lambda n: rank[n.name])  # max keeps the first (book order) on ties
                regular.remove(nb)
                waiting.remove(nb)
                running[submit(nb, False)] = nb
            if not running and ready and not regular:
                nb = ready[0]
                waiting.remove(nb)
                running[submit(nb, True)] = nb
        if not running:
            break
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in done:
            nb = running.pop(future)
            wall, error = future.result()
            (succeeded if error is None else dropped).add(nb.name)
            go_on = finished(nb, wall, error) and go_on


class _Inline:
    """Runs a submitted call at once, in this process (``--jobs 1``), and returns its finished future."""

    @staticmethod
    def submit(function, *args, **kwargs):
        import concurrent.futures as cf

        future: cf.Future = cf.Future()
        future.set_result(function(*args, **kwargs))
        return future


def run(
    repo: Path,
    profile: str,
    only: list[str] | None = None,
    keep_going: bool = False,
    results_dir: Path | None = None,
    progress: bool = True,
    params: dict | None = None,
    jobs: int = 1,
    scale: dict | None = None,
) -> int:
    """Execute the book's notebooks; returns a process exit status (0 when every notebook succeeded).

    Notebooks run in the order of :func:`schedule` (their declared needs first); ``jobs > 1`` runs that many
    at a time, each in a process of its own (its progress log named in that process's environment) and,
    beside others, on one thread. ``scale``: a dry run (:func:`dode.companion.protocols.scale_down` caps
    every notebook's parameters), recorded as the profile ``<profile>-dry`` (:func:`run_label`), whose
    results go to their own folder."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of notebooks run at a time, got {jobs!r}")
    label = run_label(profile, dry=scale is not None)
    results_dir = results_dir or default_results_dir(repo, label)
    notebooks = book = book_notebooks(repo)
    book_order = [nb.name for nb in notebooks]
    unused = unused_params(params, notebooks) if params else []
    if unused:
        print(f"note: --params sets {', '.join(unused)}, which no notebook of the book takes (ignored)")
    if only:
        unknown = sorted(set(only) - set(book_order))
        if unknown:
            raise BookLayoutError(
                f"--only names notebooks that _toc.yml does not list: "
                f"{', '.join(unknown)}; listed: {', '.join(book_order) or 'none'}"
            )
        notebooks = [nb for nb in notebooks if nb.name in only]
    for path in notebooks_outside_book(repo):
        print(f"note: {SOURCE_DIR}/{path.name} is not listed in _toc.yml, so it is not part of the book")
    if scale is not None:  # a notebook the scale cannot cut down stops the dry run before anything runs
        problems = []
        for nb in notebooks:
            try:
                papermill_parameters(nb, profile, results_dir, params, scale)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            raise BookLayoutError("the dry run's scale does not apply: " + "; ".join(problems))

    print(
        f"running {len(notebooks)} notebook(s) with profile={profile}"
        f"{' scaled down (dry run)' if scale is not None else ''}, results in "
        f"{os.path.relpath(results_dir, repo)}/",
        flush=True,
    )
    machine = machine_description() if notebooks else ""
    done: list[dict[str, str]] = []
    failures, not_run = [], []
    total_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    def finished(index: int, notebook: BookNotebook, wall: float, error: Exception | None) -> bool:
        """Record one notebook's outcome; whether the run goes on."""
        if error is not None:  # papermill, kernel or I/O failure: all end the notebook alike
            failures.append(notebook.name)
            print(failure_message(notebook, profile, wall, error, repo), flush=True)
            return keep_going
        print(f"[{index}/{len(notebooks)}] {notebook.name}: {wall:.1f} s", flush=True)
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        row = {"notebook": notebook.name, "profile": label, "wall time (s)": f"{wall:.1f}"}
        done.append({**row, "finished (UTC)": when, "run started (UTC)": started, "machine": machine})
        return True

    def skipped(notebook: BookNotebook, needs: list[str]) -> None:
        not_run.append(notebook.name)
        print(f"SKIPPED: {notebook.name} needs {', '.join(needs)}, which did not finish", flush=True)

    plans = book_plans(book)
    selected = {nb.name for nb in notebooks}
    for nb in notebooks:
        outside = [n for n in plans[nb.name].needs if n not in selected]
        if outside:
            print(
                f"note: {nb.name} needs {', '.join(outside)}, not selected: their existing results under "
                f"{os.path.relpath(results_dir, repo)}/ are used",
                flush=True,
            )
    expected = expected_seconds(plans, label, repo / RESULTS_DIR / RUN_TIMES_FILE)
    index = {name: i for i, name in enumerate((nb.name for nb in notebooks), start=1)}

    def record(notebook: BookNotebook, wall: float, error: Exception | None) -> bool:
        return finished(index[notebook.name], notebook, wall, error)

    options = dict(progress=progress, params=params, scale=scale)  # execute()'s, inline or in a worker

    try:
        if jobs == 1:

            def submit(notebook: BookNotebook, alone: bool):
                return _Inline.submit(_timed, execute, notebook, profile, results_dir, **options)

            schedule(notebooks, plans, expected, 1, submit, record, skipped)
        else:
            import concurrent.futures as cf
            import multiprocessing

            with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:

                def submit(notebook: BookNotebook, alone: bool):
                    # a notebook beside others computes on one thread; one that runs alone on all of them
                    return pool.submit(
                        _execute_in_worker, not alone, notebook, profile, results_dir, **options
                    )

                schedule(notebooks, plans, expected, jobs, submit, record, skipped)
    finally:  # an interrupted run still records the notebooks that finished
        # the book shows the last run of each notebook, whatever its profile (a column says which)
        record_run_times(repo / RESULTS_DIR / RUN_TIMES_FILE, done, book_order)
    print(f"{len(done)} notebook(s) ran in {time.perf_counter() - total_start:.1f} s", flush=True)
    if not_run:
        print(f"not run, a need failed: {', '.join(not_run)}", flush=True)
    if failures:
        print(f"FAILED notebook(s): {', '.join(failures)}", flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dode.run_notebooks", description="Execute the book's notebooks with papermill."
    )
    parser.add_argument("--profile", default="cpu", choices=PROFILES, help="run profile (default: cpu)")
    parser.add_argument(
        "--params",
        type=Path,
        metavar="FILE",
        help="YAML file of notebook parameters for every notebook (e.g. notebooks/paper.example.yaml)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (file stems)")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a notebook fails")
    parser.add_argument(
        "--jobs", type=int, default=1, help="notebooks run at a time, each kernel on one thread (default 1)"
    )
    parser.add_argument("--list", action="store_true", help="list the book's notebooks and exit")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    args = parser.parse_args(argv)
    repo = args.repo.absolute()
    try:
        if args.list:
            for notebook in book_notebooks(repo):
                print(notebook.source.relative_to(repo))
            return 0
        params = read_params(args.params) if args.params else None
        return run(
            repo, args.profile, only=args.only, keep_going=args.keep_going, params=params, jobs=args.jobs
        )
    except BookLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
