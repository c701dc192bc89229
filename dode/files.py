"""File helpers shared by the core and the companion: content hashes, atomic writes, the git state.

Standard library only, so the core (:mod:`dode.lambdas`) can use them without the companion's dependencies.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

__all__ = [
    "REPO_ROOT",
    "asset",
    "sha256_file",
    "content_sha256",
    "atomic_write",
    "git_state",
    "git_commit",
]

# the checkout dode runs from (git state, the companion's results); an installed copy has no git state there
REPO_ROOT = Path(__file__).resolve().parent.parent


def asset(*parts: str) -> Path:
    """A file or folder shipped inside the package under ``dode/assets/`` (the embedded models, the digit
    classifier, the digits' reference statistics and split record), found with :mod:`importlib.resources`
    so that it resolves the same in a checkout and in an installed wheel."""
    root = resources.files(__package__) / "assets"
    if not isinstance(root, Path):
        # a zipped install: safetensors and numpy read real files, so the assets must be unpacked
        raise RuntimeError(f"dode's assets must be installed as files on disk, not inside {root}")
    return root.joinpath(*parts)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> hash: a multi-GB checkpoint is hashed once per process, however often
# it is loaded; a file changed in place gets a new mtime and is hashed again
_CONTENT_HASHES: dict[tuple, str] = {}


def content_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, or of a folder's content: the sorted relative paths of its files, each with
    its own sha256 (so a diffusers folder is identified by its weights and configs, not by where it lies).
    Hidden entries (``.cache/``, ``.gitattributes``...) are skipped: they are bookkeeping, not content."""
    path = Path(path).resolve()
    if path.is_file():
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _CONTENT_HASHES:
            _CONTENT_HASHES[key] = sha256_file(path)
        return _CONTENT_HASHES[key]
    if not path.is_dir():
        raise FileNotFoundError(f"cannot hash {path}: no such file or folder")
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{content_sha256(file)}\n".encode())
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temp file in ``path``'s folder, then ``os.replace`` it onto ``path``.

    A crash at any point leaves the old file (or none) and no temp file behind; the new file gets the
    permissions of a normally created one (``mkstemp`` makes it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def git_state(paths: tuple[str, ...] = (), root: str | Path | None = None) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the checkout at ``root``; ``dirty`` asks only about tracked ``paths`` (all
    tracked files when empty). ``("unknown", None)`` outside a git checkout."""
    root = Path(root) if root else REPO_ROOT
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return commit, bool(status)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def git_commit(paths: tuple[str, ...] = (), root: str | Path | None = None) -> str:
    """The commit as recorded in results files and model cards: ``<sha>``, ``<sha>+dirty`` or ``unknown``."""
    commit, dirty = git_state(paths, root)
    return commit + ("+dirty" if dirty else "")
