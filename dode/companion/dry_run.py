"""The paper route in minutes: every notebook of the book on the user's checkpoints, scaled down, then the book.

    python -m dode.dry_run --params paper.yaml [--scale FILE] [--profile paper] [--jobs N] [--keep-going]

What a GPU box's user runs before the full ``paper`` run (book/gpu.md): each notebook runs with the paper
profile's models, checkpoints, Inception and FID statistics from the configuration file, its parameters cut
down by the scale file (``notebooks/dry_run.yaml`` unless ``--scale`` names another:
:func:`dode.companion.protocols.scale_down`), into its own results folder, ``data/results/<profile>-dry/``,
which is emptied first: a dry run never resumes from, is refused by, or mixes with results of another
scale, and never touches the full run's ``data/results/<profile>/``. The book is then built from it
(:func:`dode.companion.build_book.build`), so every page that the full run will draw is drawn once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from dode.companion import build_book, run_notebooks
from dode.companion.protocols import check_scale

#: the stock scale, relative to the repository root
DEFAULT_SCALE = "notebooks/dry_run.yaml"


def read_scale(path: str | Path) -> dict:
    """The caps of a scale file (YAML; :data:`dode.companion.protocols.SCALE_KEYS`), checked."""
    path = Path(path)
    if not path.is_file():
        raise run_notebooks.BookLayoutError(f"--scale {path}: no such file")
    try:
        return check_scale(yaml.safe_load(path.read_text()) or {})
    except ValueError as error:
        raise run_notebooks.BookLayoutError(f"--scale {path}: {error}") from error


def dry_run(
    repo: Path,
    params: dict,
    scale: dict,
    profile: str = "paper",
    jobs: int = 1,
    keep_going: bool = False,
    progress: bool = True,
) -> int:
    """Run every notebook of the book scaled down by ``scale`` into a fresh ``data/results/<profile>-dry/``,
    then build the book; returns a process exit status (0: every notebook ran and the book built)."""
    results_dir = run_notebooks.default_results_dir(repo, run_notebooks.run_label(profile, dry=True))
    if results_dir.exists():
        print(
            f"dry run: removing the previous dry run's results, {results_dir.relative_to(repo)}/", flush=True
        )
        shutil.rmtree(results_dir)
    status = run_notebooks.run(
        repo,
        profile,
        keep_going=keep_going,
        results_dir=results_dir,
        progress=progress,
        params=params,
        jobs=jobs,
        scale=scale,
    )
    if status != 0:
        print("dry run: a notebook failed (above); the book is not built", flush=True)
        return status
    return build_book.build(repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dode.dry_run",
        description="Run every notebook on the paper run's files, scaled down, then build the book.",
    )
    parser.add_argument(
        "--params", type=Path, required=True, metavar="FILE", help="the run's configuration file (paper.yaml)"
    )
    parser.add_argument(
        "--scale", type=Path, metavar="FILE", help=f"the caps of the dry run (default: {DEFAULT_SCALE})"
    )
    parser.add_argument(
        "--profile",
        default="paper",
        choices=run_notebooks.PROFILES,
        help="the profile whose protocol is scaled down (default: paper)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at a time (default 1)")
    parser.add_argument("--keep-going", action="store_true", help="run the rest after a notebook fails")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: cwd)")
    args = parser.parse_args(argv)
    repo = args.repo.absolute()
    try:
        params = run_notebooks.read_params(args.params)
        scale = read_scale(args.scale or repo / DEFAULT_SCALE)
        return dry_run(repo, params, scale, args.profile, jobs=args.jobs, keep_going=args.keep_going)
    except run_notebooks.BookLayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
