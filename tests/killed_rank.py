"""``python -m dode.sweep``, except that rank 1 kills itself (SIGKILL, as the OOM killer or a lost node
would) when it starts its ``KILL_AFTER + 1``-th sampling run, once: the file ``KILL_MARKER`` records that it
did, so a restarted or rerun sweep is left alone. For the resume tests of tests/test_sweep.py."""

import os
import signal
from pathlib import Path

from dode.companion import experiments, sweep

_sample_stats = experiments.sample_stats
_calls = 0


def _dying_sample_stats(*args, **kwargs):
    global _calls
    _calls += 1
    marker = Path(os.environ["KILL_MARKER"])
    if os.environ.get("RANK") == "1" and _calls > int(os.environ["KILL_AFTER"]) and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return _sample_stats(*args, **kwargs)


experiments.sample_stats = _dying_sample_stats

if __name__ == "__main__":
    raise SystemExit(sweep.main())
