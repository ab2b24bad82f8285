"""``python -m artune.results PATH_OR_NAME``: print a search's summary and write its figures beside its tables.

The one module of this package that imports :mod:`artune.plots`: the CLI is the edge that uses both,
so that the data modules never import the figures that depend on them.
"""

from __future__ import annotations

import sys
from typing import Optional

from artune import ArgumentParser, plural, stdout_closed
from artune.errors import ResultsError
from artune.results.frames import SearchResults, load
from artune.results.tables import DEFAULT_RESULTS_DIR


def describe(results: SearchResults, metric: Optional[str] = None, top: int = 20) -> str:
    """The summary the CLI prints: counts by status, then the trials best first."""
    name, _ = results.metric_column(metric)
    if not len(results.trials):  # a search stopped before its first trial began, or one running that just began
        return f"search {results.name}: no trial yet (its tables in {results.path} hold none)"
    counts = results.status_counts()
    table = results.summary(metric)
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [
        (
            f"search {results.name}: {plural(len(results.trials), 'trial')} ({statuses}), "
            f"best first by {name} ({results.direction(name)})"
        ),
        table.head(top).to_string(
            index=False,
            float_format=lambda x: f"{x:.4g}",
            # the metric as the search's summary prints it (2.9998, not 4 figures' 3), a rate in whole tokens
            formatters={name: metric_text} if name in table and table[name].dtype.kind == "f" else None,
        ),
    ]
    if len(table) > top:
        lines.append(f"... {len(table) - top} more trials (--top {len(table)} shows every one)")
    return "\n".join(lines)


def metric_text(value: float) -> str:
    """A loss or an accuracy with 4 decimals, a rate in whole tokens, a tiny value (an lr) in 4 figures."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4g}"  # (NaN prints as nan)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m artune.results",
        description="Summarise a search and write learning_curves.png, metric_vs_knobs.png and "
        "parallel_coordinates.png beside its parquet tables.",
    )
    parser.add_argument(
        "search", metavar="PATH_OR_NAME", help="a results directory, or a search name under --results-dir"
    )
    parser.add_argument(
        "--results-dir", default=DEFAULT_RESULTS_DIR, help=f"where searches live (default: {DEFAULT_RESULTS_DIR})"
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="rank and plot by this metric, e.g. valid_loss, valid_accuracy, best_valid_loss (default: the search's)",
    )
    parser.add_argument("--top", type=int, default=20, help="trials shown in the table (default: 20)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        print(f"error: --top must be >= 1, but got {args.top}", file=sys.stderr)
        return 2
    try:
        results = load(args.search, args.results_dir)
        print(describe(results, args.metric, args.top), flush=True)
        if not len(results.trials):
            return 0  # no figure of nothing
        from artune.plots import write_plots  # matplotlib only once the summary is out

        try:
            written = write_plots(results, args.metric)
        except OSError as error:  # the disk, not the input (full, read-only): exit 4, as a search's storage failing
            print(
                f"error: {results.path}: the figures cannot be written there ({error.strerror or error})",
                file=sys.stderr,
            )
            return 4
        for path in written:
            print(f"wrote {path}", flush=True)
    except BrokenPipeError:  # the output piped into `head`, say
        return stdout_closed()
    except (OSError, ResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a figure half-written is a temporary file, never the last figure (files.py)
        return 130
    return 0
