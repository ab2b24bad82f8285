"""Figures of a search: learning curves, the metric against each searched knob, parallel coordinates.

Each function takes a ``SearchResults`` (from ``artune.results.load`` or ``compare``) and returns a
matplotlib ``Figure`` without showing it: a notebook displays it, ``write_plots`` saves all three.
Figures are built from ``matplotlib.figure.Figure``, not pyplot, so they hold no global state and need
no display: ``savefig`` renders them with Agg. A metric argument reads as in ``SearchResults``:
``None`` is the search's own metric. This module depends on ``artune.results``, never the reverse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from artune.errors import ResultsError
from artune.results import SearchResults

BEST_COLOR = "tab:red"
PLOT_FILES = ("learning_curves.png", "metric_vs_knobs.png", "parallel_coordinates.png")


def learning_curves(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """One line per trial of ``metric`` per epoch; the trial with the best value drawn on top, in red."""
    metric = results.epoch_metric(metric)
    curves = results.curves(metric)
    name, _ = results.metric_column(metric)  # what best() ranks by: best_valid_loss for valid_loss
    best = results.best(1, metric)
    best_key = _trial_key(best.iloc[0]) if len(best) else None
    if best_key not in curves.columns:  # no epoch rows for it (a trial with none, or a table mid-rewrite)
        best_key = None
    searches = list(dict.fromkeys(results.epochs["search"])) if "search" in results.epochs else []

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for key in curves.columns:
        if key == best_key:
            continue
        series = curves[key].dropna()
        # after compare(), one colour per search; otherwise every other trial in grey
        group = key[0] if searches else "other trials"
        color = f"C{searches.index(group) % 10}" if searches else "0.55"
        ax.plot(
            series.index,
            series.to_numpy(),
            color=color,
            lw=1,
            alpha=0.6,
            marker="o",
            ms=2.5,
            label=None if group in labelled else group,
        )
        labelled.add(group)
    if best_key is not None:
        series = curves[best_key].dropna()
        label = "/".join(best_key) if isinstance(best_key, tuple) else best_key
        ax.plot(
            series.index,
            series.to_numpy(),
            color=BEST_COLOR,
            lw=2.5,
            marker="o",
            ms=4,
            zorder=3,
            label=f"best: {label} ({name} {best.iloc[0][name]:.4g})",
        )
    if curves.empty:
        ax.text(0.5, 0.5, "no epochs recorded yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=metric, title=f"{results.name}: {metric} per epoch ({curves.shape[1]} trials)")
    ax.grid(alpha=0.3)
    return fig


def metric_vs_knobs(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """One panel per searched knob: each trial's metric against the knob's value, the best trial starred."""
    name, values = results.metric_column(metric)
    knobs = results.params
    has_value = values.notna().to_numpy()
    best = _best_position(results, name, values)
    columns = min(max(len(knobs), 1), 3)
    rows = -(-max(len(knobs), 1) // columns)

    fig = Figure(figsize=(3.6 * columns, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, (ax, knob) in enumerate(zip(axes, knobs)):
        on = results.active(knob).to_numpy()  # a conditional knob: only the trials that sampled it
        x_on, labels, log = knob_positions(results.trials[knob][on])
        x = np.full(len(on), np.nan)
        x[on] = x_on
        y = values.to_numpy(dtype=float, na_value=np.nan)
        ax.scatter(x[has_value & on], y[has_value & on], s=22, alpha=0.7, color="tab:blue")
        if best is not None and on[best]:
            ax.scatter(x[best], y[best], s=140, marker="*", color=BEST_COLOR, zorder=3, label="best")
        if not on.all():
            ax.set_title(f"{int((~on).sum())} trials did not sample it", fontsize=8)
        if labels is not None:  # a categorical knob: one tick per category
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif log:
            ax.set_xscale("log")
        ax.set_xlabel(knob)
        if i % columns == 0:
            ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    for ax in axes[len(knobs) :]:
        ax.set_axis_off()
    if not knobs:
        axes[0].text(
            0.5,
            0.5,
            "no searched knobs: manifest.json lists no params\nand no knob differs between trials",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    missing = int((~has_value).sum())
    note = f" ({missing} trial{'s' * (missing != 1)} without a value not shown)" if missing else ""
    fig.suptitle(f"{results.name}: {name} ({results.direction(name)}) against each searched knob{note}", fontsize=10)
    return fig


def parallel_coordinates(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """A line per trial across the metric and every searched knob, each scaled to [0, 1], coloured by the metric.

    Numeric knobs spanning more than a decade are scaled on a log axis; a categorical knob's values
    sit at evenly spaced positions. The best trials are drawn last, on top.
    """
    name, values = results.metric_column(metric)
    knobs = results.params
    keep = values.notna()
    trials, values = results.trials[keep], values[keep]  # a trial without a value has no colour
    axes_names = [name, *knobs]
    # a conditional knob a trial did not sample: its line has a gap on that axis
    knob_axes = (_scaled_where(trials[k], results.active(k)[keep].to_numpy()) for k in knobs)
    scaled, ticks = zip(_scaled(values), *knob_axes)
    y = np.column_stack(scaled)  # (trials with a value, axes)
    v = values.to_numpy(dtype=float)

    fig = Figure(figsize=(max(6.0, 1.7 * len(axes_names) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    minimise = results.direction(name) == "min"
    cmap = colormaps["viridis" if minimise else "viridis_r"]  # the best trials dark, the worst pale, either way
    norm = Normalize(np.min(v), np.max(v)) if len(v) else Normalize(0, 1)
    order = np.argsort(-v if minimise else v, kind="stable")  # worst first, so the best end up on top
    positions = np.arange(len(axes_names))
    for row in order:
        ax.plot(positions, y[row], color=cmap(norm(v[row])), lw=1.4, alpha=0.85)
    ax.vlines(positions, 0, 1, color="0.2", lw=0.8)
    for i, axis_ticks in enumerate(ticks):
        for at, text in axis_ticks:
            ax.text(
                i - 0.04,
                at,
                text,
                ha="right",
                va="center",
                fontsize=7,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7},
            )
    if not len(v):
        ax.text(0.5, 0.5, "no trial has a value yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(positions, axes_names, rotation=15)
    ax.set_xlim(-0.6, len(axes_names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{results.name}: {len(v)} trials, coloured by {name} ({results.direction(name)})", fontsize=10)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=name)
    return fig


def write_plots(
    results: SearchResults, metric: Optional[str] = None, directory: Optional[os.PathLike] = None, dpi: int = 100
) -> list[Path]:
    """Write the three figures as PNGs (default: beside the search's tables); the paths written."""
    if directory is None:
        if results.path is None:
            raise ResultsError("compared searches have no directory of their own: pass write_plots(..., directory=DIR)")
        directory = results.path
    paths = []
    for filename, plot in zip(PLOT_FILES, (learning_curves, metric_vs_knobs, parallel_coordinates)):
        path = Path(directory) / filename
        tmp = path.with_name(f".{filename}.{os.getpid()}.tmp")  # atomic, like the tables: never half a PNG
        plot(results, metric).savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
        paths.append(path)
    return paths


# --- where a knob's values go on an axis


def is_categorical(values: pd.Series) -> bool:
    """Text and bool knobs are categories; so is a numeric knob with missing values (d_ff: none)."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    return not numeric or bool(values.isna().any())


def knob_positions(values: pd.Series) -> tuple[np.ndarray, Optional[list[str]], bool]:
    """(x per trial, category labels or None for a numeric knob, whether a log axis suits it)."""
    if is_categorical(values):
        categories = sorted(values.dropna().unique().tolist())
        labels = [str(c) for c in categories] + (["none"] if values.isna().any() else [])
        index = {c: i for i, c in enumerate(categories)}
        x = np.array([index[v] if pd.notna(v) else len(categories) for v in values], dtype=float)
        return x, labels, False
    x = values.to_numpy(dtype=float)
    return x, None, spans_decades(x)


def spans_decades(x: np.ndarray) -> bool:
    """Whether positive values range over more than a factor of 10 (lr 1e-4..1e-2), so a log axis reads best."""
    x = x[np.isfinite(x)]
    return len(x) > 0 and bool(np.all(x > 0)) and x.max() / x.min() > 10


def _scaled(values: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] for a parallel axis, and its (position, label) ticks."""
    x, labels, log = knob_positions(values)
    if labels is not None:
        spread = max(len(labels) - 1, 1)
        at = [i / spread if len(labels) > 1 else 0.5 for i in range(len(labels))]
        return (x / spread if len(labels) > 1 else np.full_like(x, 0.5)), list(zip(at, labels))
    t = np.log10(x) if log else x
    finite = t[np.isfinite(t)]
    if not len(finite):
        return np.full_like(t, 0.5), []
    low, high = finite.min(), finite.max()
    if high == low:
        return np.full_like(t, 0.5), [(0.5, _fmt(x[np.isfinite(t)][0]))]
    unique = np.unique(x[np.isfinite(t)])
    shown = unique if len(unique) <= 6 else np.array([unique.min(), unique.max()])
    ticks = [(((np.log10(u) if log else u) - low) / (high - low), _fmt(u)) for u in shown]
    return (t - low) / (high - low), ticks


def _scaled_where(values: pd.Series, on: np.ndarray) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """``_scaled`` over the trials where ``on``; NaN (a gap in the line) for the others."""
    scaled_on, ticks = _scaled(values[on])
    scaled = np.full(len(values), np.nan)
    scaled[on] = scaled_on
    return scaled, ticks


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _trial_key(row: pd.Series) -> Any:
    return (row["search"], row["trial_id"]) if "search" in row.index else row["trial_id"]


def _best_position(results: SearchResults, name: str, values: pd.Series) -> Optional[int]:
    if not values.notna().any():
        return None
    label = values.idxmin() if results.direction(name) == "min" else values.idxmax()
    return results.trials.index.get_loc(label)
