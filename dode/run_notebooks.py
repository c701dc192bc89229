"""``python -m dode.run_notebooks``: execute the book's notebooks (see :mod:`dode.companion.run_notebooks`)."""

import sys

from dode.companion.run_notebooks import main

if __name__ == "__main__":
    sys.exit(main())
