"""``python -m dode.preflight``: check a run's files before any sampling (see :mod:`dode.companion.preflight`)."""

import sys

from dode.companion.preflight import main

if __name__ == "__main__":
    sys.exit(main())
