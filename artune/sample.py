"""``python -m artune.sample SEARCH``: text from a search's best model (or a trial's), or from an exported one.

The text goes to stdout, alone; where the model came from goes to stderr.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Optional

from artune import ArgumentParser, stdout_closed
from artune.errors import CheckpointError, UserError
from artune.inference import LoadedModel, check_device, from_export, from_search, is_export
from artune.results import DEFAULT_RESULTS_DIR, MANIFEST_FILE, TRIALS_FILE, load


def open_model(
    source: str | os.PathLike,
    trial_id: Optional[str] = None,
    results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR,
    device: str = "cpu",
) -> LoadedModel:
    """The model of ``source``: an exported directory, else a search (a directory, or a name under
    ``results_dir``), whose best trial (or ``trial_id``) gives its best epoch's checkpoint."""
    if is_export(source):
        if trial_id is not None:
            raise UserError(f"--trial {trial_id}: {source} is an exported model, which holds one trial's only")
        return from_export(source, device)
    try:
        results = load(source, results_dir)
    except FileNotFoundError as exc:  # where: where it looked for a search
        if (Path(getattr(exc, "where", source)) / MANIFEST_FILE).is_file():  # a search without its tables yet
            raise UserError(str(exc)) from None
        raise UserError(
            f"{source}: neither a search (no {TRIALS_FILE} in {getattr(exc, 'where', source)}) nor an exported model "
            "(python -m artune.export writes one)"
        ) from None
    return from_search(results, trial_id, device)


def describe(loaded: LoadedModel) -> str:
    """One line: which search, trial and epoch, and its metric."""
    o = loaded.origin
    if not o:
        return "a model with no record of its search"
    value = o.get("value")
    shown = f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
    return f"search {o.get('search')}, trial {o.get('trial_id')}, epoch {o.get('epoch')}: {o.get('metric')} {shown}"


def add_source_options(parser: ArgumentParser) -> None:
    """The options that pick a search's model, with ``open_model``'s defaults (here and in ``artune.export``)."""
    parser.add_argument("--trial", metavar="ID", help="this trial's model instead of the best trial's")
    parser.add_argument(
        "--results-dir", default=DEFAULT_RESULTS_DIR, help=f"where searches live (default: {DEFAULT_RESULTS_DIR})"
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m artune.sample",
        description="Print text from a search's best model (best trial, best epoch), a trial's, or an exported model.",
    )
    parser.add_argument("search", metavar="SEARCH", help="a results directory, a search name, or an exported model")
    parser.add_argument("--prompt", help="the text to continue (default: the prompt the model trained with)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to add to the prompt (default: 200)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy, the trainer's own sample (default); above: drawn"
    )
    parser.add_argument("--top-k", type=int, help="draw among the K likeliest tokens only (with --temperature)")
    parser.add_argument("--seed", type=int, help="seeds the draws of --temperature (default: a fresh draw)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_source_options(parser)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    ended = True  # the text on stdout ends its line: a Ctrl-C ends an unended one, and the shell's prompt starts anew
    try:
        for flag, value, low in (("--tokens", args.tokens, 0), ("--top-k", args.top_k, 1)):
            if value is not None and value < low:
                raise UserError(f"{flag} must be >= {low}, but got {value}")
        if args.seed is not None and not -(2**63) <= args.seed < 2**64:  # what torch's generator takes
            raise UserError(f"--seed must be from -2**63 to 2**64 - 1, but got {args.seed}")
        if not 0 <= args.temperature < math.inf:
            raise UserError(f"--temperature must be a finite number >= 0, but got {args.temperature}")
        drawn_only = [f for f, v in (("--top-k", args.top_k), ("--seed", args.seed)) if v is not None]
        if drawn_only and args.temperature == 0:  # greedy decoding takes the likeliest token: nothing is drawn
            raise UserError(
                f"{' and '.join(drawn_only)} {'shape' if len(drawn_only) > 1 else 'shapes'} the draws of "
                "--temperature: give --temperature T > 0 too"
            )
        loaded = open_model(args.search, args.trial, args.results_dir, _device(args.device))
        # checked before the origin line: a prompt the vocabulary cannot encode is one line on stderr
        pieces = loaded.stream(args.prompt, args.tokens, args.temperature, args.top_k, args.seed)
        print(describe(loaded), file=sys.stderr, flush=True)
        for piece in pieces:  # as they come: a long sample shows from its first token
            print(piece, end="", flush=True)
            ended = piece.endswith("\n") if piece else ended
        print(flush=True)
    except (UserError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed()
    except KeyboardInterrupt:
        if not ended:
            with contextlib.suppress(OSError):
                print(flush=True)
        return 130
    return 0


def _device(name: str) -> str:
    check_device(name, "--device")
    return name


if __name__ == "__main__":
    sys.exit(main())
