"""``python -m artune.export SEARCH OUT``: a search's best model (or a trial's) as a standalone directory.

OUT holds ``model.safetensors``, ``config.json`` (the TrainConfig and the model's shape), ``vocab.json`` (the
vocabulary and the tokenizer's name) and a ``README.md`` model card; it loads with torch and artune, without
Ray or the search (``python -m artune.sample OUT``, or :func:`artune.inference.from_export`).
"""

from __future__ import annotations

import sys
from typing import Optional

from artune import ArgumentParser, stdout_closed
from artune.errors import CheckpointError, UserError
from artune.inference import write_export
from artune.sample import add_source_options, describe, open_model


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m artune.export",
        description="Write a search's best model (best trial, best epoch) to a directory that loads without Ray.",
    )
    parser.add_argument(
        "search", metavar="SEARCH", help="a results directory, a search name under --results-dir, or an export"
    )
    parser.add_argument("out", metavar="OUT", help="the directory to write: new, or empty")
    add_source_options(parser)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = open_model(args.search, args.trial, args.results_dir)
        try:
            out = write_export(loaded, args.out)
        except OSError as exc:  # the disk, not the input (full, read-only): exit 4, as a search's storage failing
            print(f"error: {args.out}: cannot write the export ({exc.strerror or exc})", file=sys.stderr)
            return 4
    except (UserError, CheckpointError, OSError) as exc:  # an OSError here is the search's files failing to read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        print(f"wrote {out} ({describe(loaded)})")
    except BrokenPipeError:  # the export is written; its reader went away
        return stdout_closed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
