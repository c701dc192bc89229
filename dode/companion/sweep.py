"""``python -m dode.sweep STEM --profile P --results-dir DIR [--params FILE] [--set NAME=VALUE ...]``.

Runs the quality sweep of a sweep notebook (:data:`SWEEPS`) with the notebook's parameters: the profile's
values (:data:`dode.companion.protocols.PROTOCOLS`), overridden by a YAML (or JSON) file of parameters and
then by each ``--set`` (its value read as YAML: ``--set seeds=[0,1]``, ``--set batch_size=16``). The results
file is the notebook's, so the notebook run afterwards finds every cell done and only draws.

Started by ``torchrun --nproc_per_node=N`` (one node or several), the N processes share the sweep: rank 0
fits the lambdas once and broadcasts them, the evaluation batches are dealt to the ranks, their features
gathered, and rank 0 alone writes the file, cell by cell (:mod:`dode.companion.distributed`,
:func:`dode.companion.experiments.quality_sweep`). The file does not depend on N. Rerunning the same command
after a crash resumes it; with torchrun's ``--max-restarts`` that happens by itself.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from dode.companion.experiments import PROFILES, run_sweep, settings
from dode.companion.protocols import PROTOCOLS

__all__ = ["SWEEPS", "parameters", "parser", "main"]

#: the notebooks whose computation is one quality sweep (dode.companion.experiments.run_sweep)
SWEEPS = (
    "02_noise_prediction",
    "03_data_prediction",
    "04_dpm_solver_pp",
    "07_formulations",
    "08_ablation_K_B",
    "09_lookahead_fixed",
)


def parameters(params_file: str | Path | None, assignments: list[str]) -> dict:
    """The parameters a file (a YAML mapping) and ``NAME=VALUE`` assignments (YAML values) give; the
    assignments win."""
    given: dict = {}
    if params_file is not None:
        loaded = yaml.safe_load(Path(params_file).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--params must name a YAML mapping of parameter: value, got {type(loaded).__name__}"
            )
        given.update(loaded)
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set takes NAME=VALUE (e.g. --set seeds=[0,1]), got {item!r}")
        given[name.strip()] = yaml.safe_load(value)
    return given


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dode.sweep``."""
    parser = argparse.ArgumentParser(prog="python -m dode.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("stem", choices=SWEEPS, help="the sweep notebook")
    parser.add_argument("--profile", required=True, choices=PROFILES)
    parser.add_argument("--results-dir", required=True, help="where <stem>.nc is read and written")
    parser.add_argument("--params", default=None, help="a YAML file of the notebook's parameters")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="one parameter (repeatable)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    try:
        # a run's configuration file serves every notebook (notebooks/paper.example.yaml): the sweep takes
        # the keys its notebook defines and leaves the others (nproc, other notebooks' keys) to them
        takes = set(PROTOCOLS[args.stem][args.profile])
        from_file = parameters(args.params, [])
        left = sorted(set(from_file) - takes)
        if left and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"note: {args.stem} does not take {', '.join(left)} of {args.params} (left to the notebooks)"
            )
        given = {k: v for k, v in from_file.items() if k in takes} | parameters(None, args.set)
        cfg = settings(PROTOCOLS[args.stem], args.profile, **given)
    except ValueError as err:
        command.error(str(err))
    path = run_sweep(args.stem, cfg, args.results_dir, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"results: {path}")
    return 0
