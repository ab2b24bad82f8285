"""``python -m artune.results``: the command lives in :mod:`artune.results.cli`."""

import sys

from artune.results.cli import main

if __name__ == "__main__":
    sys.exit(main())
