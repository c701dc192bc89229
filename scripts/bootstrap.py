#!/usr/bin/env python3
"""Create `.venv` and install the project into it, once.

Called by every Makefile target that runs project code. It uses only the standard library, so it runs
with any `python3` >= 3.10 before anything is installed.

It installs exactly the versions of requirements.lock, the environment's one lock (refreshed by
`python scripts/lock.py`), in one pip command, `pip install --no-deps -r requirements.lock -e .`: torch and
torchvision with everything else, and nothing resolved, since the lock is complete (tests/test_lock.py
checks it against pyproject.toml). A stamp inside the venv records a hash of pyproject.toml and the lock;
while the hash is unchanged the bootstrap costs a few milliseconds and installs nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MIN_PYTHON = (3, 10)
STAMP_NAME = ".dode-install-stamp"
LOCK = "requirements.lock"
INPUTS = ("pyproject.toml", LOCK)
# The build machines' pip configuration names local package folders that do not all exist; pip warns
# about each of them on every run. The warnings are harmless and drown the useful output.
HARMLESS_PIP_LINE = re.compile(r"Location '.*' is ignored|^\s*$")


def inputs_hash(repo: Path) -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update(name.encode() + b"\0" + (repo / name).read_bytes() + b"\0")
    return digest.hexdigest()


def pip_command(venv_python: Path, repo: Path) -> list[str]:
    """The locked packages and the project in one command: `--no-deps`, so pip installs the lock's versions
    and resolves nothing (a dependency missing from the lock fails tests/test_lock.py, not the install)."""
    return [
        str(venv_python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "-r",
        str(repo / LOCK),
        "-e",
        str(repo),
    ]


def run_pip(command: list[str], repo: Path) -> int:
    """Run pip, streaming its output minus the harmless location warnings."""
    process = subprocess.Popen(
        command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        if not HARMLESS_PIP_LINE.search(line):
            sys.stdout.write(line)
            sys.stdout.flush()
    return process.wait()


def bootstrap(repo: Path, venv: Path) -> int:
    if sys.version_info < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        print(f"bootstrap: {sys.executable} is Python {sys.version.split()[0]}; dode needs >= {wanted}")
        return 2
    if venv.is_symlink():
        # A linked venv belongs to another checkout (or to the user): installing here would re-point its
        # editable `dode` at this checkout. The Makefile puts this checkout first on PYTHONPATH instead.
        print(
            f"bootstrap: {venv.name} links to {os.readlink(venv)}; using it as it is (remove the link for "
            "a venv of this checkout's own)"
        )
        return 0

    venv_python = venv / "bin" / "python"
    stamp = venv / STAMP_NAME
    wanted = inputs_hash(repo)
    if venv_python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return 0

    start = time.monotonic()
    if not venv_python.exists():
        print(f"bootstrap: creating {venv} with {sys.executable} ({sys.version.split()[0]})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(
        f"bootstrap: installing dode and the versions of {LOCK} into .venv (first time: several minutes, "
        "torch alone is a few GB) ...",
        flush=True,
    )
    status = run_pip(pip_command(venv_python, repo), repo)
    if status != 0:
        print(
            f"bootstrap: pip failed with exit status {status}; .venv is left as it is, run make again "
            "after fixing the cause"
        )
        return status
    stamp.write_text(wanted + "\n")
    print(f"bootstrap: done in {time.monotonic() - start:.0f} s", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=".venv", help="virtual environment folder (default: .venv)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    return bootstrap(repo, (repo / args.venv).absolute())


if __name__ == "__main__":
    sys.exit(main())
