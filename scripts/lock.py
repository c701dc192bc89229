#!/usr/bin/env python3
"""Refresh requirements.lock, the one lock of the whole environment, from pyproject.toml.

    python scripts/lock.py              # after changing a dependency in pyproject.toml or constraints.txt
    python scripts/lock.py --upgrade    # move every package to its newest allowed release

The lock pins every package that `pip install -e '.[all,test]'` brings, resolved for Python 3.11 on Linux
x86-64 (the build machines and the GPU box) under the torch pins of constraints.txt. scripts/bootstrap.py
installs exactly these (`make book`, `make test`), and environment.yml's pip section installs through it as
constraints. It holds versions, not file hashes: pip's hash-checking mode refuses the editable project in
the same command (and a hashed constraints file switches it on), so a hashed lock would split both installs
in two. uv resolves it (`pip install uv` once, anywhere on PATH); the versions already in the lock are kept
unless a changed requirement or `--upgrade` moves them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = "requirements.lock"
EXTRAS = ("all", "test")
# soupsieve (under jupyter-book's theme) needs Python >= 3.11.5; conda's python=3.11 is newer than that
PYTHON_VERSION = "3.11.5"
REFRESH_COMMAND = "python scripts/lock.py"


def compile_command(uv: str, extra_args: list[str]) -> list[str]:
    extras = [arg for extra in EXTRAS for arg in ("--extra", extra)]
    return [
        uv,
        "pip",
        "compile",
        "pyproject.toml",
        *extras,
        "--constraint",
        "constraints.txt",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        "x86_64-manylinux_2_28",
        "--custom-compile-command",
        REFRESH_COMMAND,
        "--output-file",
        LOCK,
        *extra_args,
    ]


def main(argv: list[str]) -> int:
    uv = shutil.which("uv")
    if uv is None:
        print("lock: uv is not on PATH; install it with `pip install uv` and run again", file=sys.stderr)
        return 2
    return subprocess.run(compile_command(uv, argv), cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
