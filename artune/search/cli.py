"""``python -m artune.search [SPACE] [options]``: the command line. A bad input is one line on stderr and
exit code 2; a search in which no trial succeeded exits 1; an interrupted one 130 (see docs/usage.md)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Optional

from artune import LOADED_AT, ArgumentParser, stdout_closed
from artune.errors import StorageError, UserError
from artune.humanize import parse_duration as _parse_duration
from artune.results import DEFAULT_RESULTS_DIR, MANIFEST_FILE
from artune.search.plan import DEFAULT_SPACE, Mode, Plan, make_plan
from artune.search.runtime import sigterm_as_interrupt, stop_ray, terminated
from artune.spaces import SearchSettings
from artune.startup import exit_without_collecting, pause_collector

EXIT_BAD_INPUT = 2


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        # the console script (`artune`) or the module: the name the user typed, in the usage line and the errors
        prog="artune" if os.path.basename(sys.argv[0]) == "artune" else "python -m artune.search",
        description="Run a hyperparameter search over artune's trainer with Ray Tune and Optuna.",
    )
    parser.add_argument(
        "space",
        nargs="?",
        default=None,
        help=f"search-space YAML file (default: {DEFAULT_SPACE.name} shipped in search_spaces/)",
    )
    parser.add_argument("--name", help="search name: results go to RESULTS_DIR/NAME (default: <space>-<date>-<time>)")
    parser.add_argument(
        "--results-dir", default=DEFAULT_RESULTS_DIR, help="where searches are written (default: results/)"
    )
    parser.add_argument(
        "--data",
        help="the corpus: a text file, or the directory holding tiny_shakespeare.txt "
        "(default: $ARTUNE_DATA_DIR or the cache)",
    )
    add_setting_flags(parser)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fix a trainer knob (repeatable)"
    )
    parser.add_argument(
        "--address",
        help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)",
    )
    parser.add_argument(
        "--storage", help="Optuna storage URL for the study (default: sqlite:///RESULTS_DIR/NAME/optuna.db)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="runs of each sampled configuration, with the trainer's seed, "
        "seed + 1, ... (the sampler sees their mean; default 1)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search --name")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="add --num-samples trials to the finished search --name, the sampler warm-started from its history",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    return parser


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One option per search setting the command line overrides, as SearchSettings names and documents it."""
    hints = typing.get_type_hints(SearchSettings)
    for setting in dataclasses.fields(SearchSettings):
        if "flag" not in setting.metadata:
            continue
        kind = next(t for t in typing.get_args(hints[setting.name]) or (hints[setting.name],) if t is not type(None))
        convert = parse_duration if setting.name == "time_budget" else kind
        flag = setting.metadata["flag"]
        parser.add_argument(
            flag,
            dest=setting.name,
            type=convert,
            action="append" if setting.metadata.get("repeatable") else "store",
            help=setting.metadata["help"],
            metavar=flag.lstrip("-").replace("-", "_").upper(),
        )


def parse_duration(text: str) -> float:
    """'900', '90s', '15m', '1.5h' -> seconds (the search setting time_budget reads the same)."""
    try:
        return _parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 900, 90s, 15m or 1h, but got {text!r}"
        ) from None


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given: the manifest records it
    args.address_label = "--address"  # what messages call the address: where the user gave it
    if args.address is None and os.environ.get("RAY_ADDRESS"):
        args.address, args.address_label = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if args.log is not None:  # --log a --log b, or --log a,b: the setting's tuple (as SearchSettings reads it)
        args.log = tuple(dict.fromkeys(name.strip() for value in args.log for name in value.split(",") if name.strip()))
    return args


def main(argv: Optional[list[str]] = None, started: Optional[float] = None) -> int:
    """The command. ``started``: the ``time.monotonic()`` its time budget counts from (default: now)."""
    args = parse_args(argv)
    with sigterm_as_interrupt():
        return _main(args, started)


def _main(args: argparse.Namespace, started: Optional[float]) -> int:
    from artune.search.corpus import describe_corpus
    from artune.search.driver import EXIT_INTERRUPTED, EXIT_STORAGE_FAILED, EXIT_TERMINATED, run
    from artune.search.report import describe_plan

    plan = None
    try:
        plan = make_plan(args, started)
        if args.dry_run:
            corpus = describe_corpus(plan)  # a bad corpus is an error line, not a plan
            print(describe_plan(plan, dry_run=True))
            print(corpus)
            print("dry run: the plan and its inputs are checked; nothing was started or written")
            return 0
        return run(plan)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_FAILED
    except KeyboardInterrupt:
        by = "terminated (SIGTERM)" if terminated() else "interrupted"
        if plan is not None and plan.mode is Mode.EXTEND and not extension_recorded(plan):
            print(
                f"{by} before the extension began: nothing was added; run the --extend command again", file=sys.stderr
            )
        elif plan is not None and (plan.directory / MANIFEST_FILE).exists():
            print(f"{by}: the tables hold every result so far; continue with: {plan.resume_command}", file=sys.stderr)
        else:
            print(f"{by} before the search began: nothing was written", file=sys.stderr)
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    except BrokenPipeError:
        return stdout_closed()


def extension_recorded(plan: Plan) -> bool:
    """Whether the manifest holds the --extend's run yet (it is written once Ray is up and the study open): before,
    --resume would continue the finished search, and nothing of the extension."""
    from artune.search.manifest import Manifest

    try:
        return plan.run_name in Manifest.read(plan.directory, plan.mode.flag).runs
    except (UserError, OSError):
        return False


def cli() -> Any:
    """The console entry point (``artune``, ``python -m artune.search``)."""
    pause_collector()  # until the search starts (tune_search): see artune/startup.py
    code = main(started=LOADED_AT)  # the imports of this process count against a time budget too
    stop_ray()  # whatever path main left by, the local Ray instance goes with it (no-op if none)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the last lines' reader went away
        code = stdout_closed()
    exit_without_collecting(code)
