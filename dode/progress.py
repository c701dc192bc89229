"""Progress bars that reach the terminal and never the output of an executed notebook.

A kernel run by papermill captures everything written to its ``sys.stderr`` into the notebook, so a bar
drawn there would end up, update by update, on the book's pages. ``dode.companion.run_notebooks`` therefore
names a run log in ``$DODE_PROGRESS_LOG`` and shows that file on its own terminal while the notebook runs;
every bar of ``dode`` writes to that log when it is set, and to ``sys.stderr`` otherwise (a terminal, or a
notebook opened by hand, where a live bar is what the user wants).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import IO

__all__ = ["LOG_ENV", "progress_bar", "progress_stream"]

#: the environment variable that names the file progress bars are written to
LOG_ENV = "DODE_PROGRESS_LOG"

_streams: dict[str, IO[str]] = {}


@atexit.register
def _close_streams() -> None:
    """Close the run logs at exit: they are kept open all run long, and a file left to the interpreter's
    shutdown is a ResourceWarning."""
    while _streams:
        _streams.popitem()[1].close()


def progress_stream() -> IO[str]:
    """The run log named by ``$DODE_PROGRESS_LOG`` (opened once, appended to), else ``sys.stderr``."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return sys.stderr
    if path not in _streams:  # kept open: bars come and go all run long
        _streams[path] = open(path, "a", buffering=1, encoding="utf-8")
    return _streams[path]


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` drawn on :func:`progress_stream` (plain tqdm: ``tqdm.auto`` would need
    ipywidgets in a kernel and warn about IProgress without them)."""
    from tqdm import tqdm

    kwargs.setdefault("file", progress_stream())
    if kwargs["file"] is not sys.stderr:
        kwargs.setdefault("ncols", 100)  # a log file has no width of its own
    return tqdm(iterable, **kwargs)
