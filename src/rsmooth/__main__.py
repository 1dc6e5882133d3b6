"""``python -m rsmooth``: the command line (see :mod:`rsmooth.cli`)."""

from rsmooth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
