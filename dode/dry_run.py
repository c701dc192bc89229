"""``python -m dode.dry_run``: the paper route scaled down, then the book (see :mod:`dode.companion.dry_run`)."""

import sys

from dode.companion.dry_run import main

if __name__ == "__main__":
    sys.exit(main())
