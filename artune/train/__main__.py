"""``python -m artune.train``: the command lives in :mod:`artune.train.cli`."""

from artune import LOADED_AT
from artune.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main(started=LOADED_AT))  # the imports of this process count against a time budget too
