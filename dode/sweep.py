"""``python -m dode.sweep STEM --profile P --results-dir DIR``: a sweep notebook's computation, in one process
or sharded over the processes torchrun starts (see :mod:`dode.companion.sweep` and book/gpu.md)."""

from dode.companion.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
