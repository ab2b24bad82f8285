"""``python -m artune.train``: the command lives in :mod:`artune.train.cli`."""

from artune.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
