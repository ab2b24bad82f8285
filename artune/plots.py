"""Figures of a search: learning curves, the metric against each searched knob, parallel coordinates.

Each function takes a ``SearchResults`` (from ``artune.results.load`` or ``compare``) and returns a
matplotlib ``Figure`` without showing it: a notebook displays it, ``write_plots`` saves all three.
Figures are built from ``matplotlib.figure.Figure``, not pyplot, so they hold no global state and need
no display: ``savefig`` renders them with Agg. A metric argument reads as in ``SearchResults``:
``None`` is the search's own metric. This module depends on ``artune.results``, never the reverse.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

from artune.errors import ResultsError, SpaceError
from artune.files import written_atomically
from artune.results import SPACE_COPY, SearchResults, knob_type
from artune.spaces import Distribution, load_space

BEST_COLOR = "tab:red"
PLOT_FILES = ("learning_curves.png", "metric_vs_knobs.png", "parallel_coordinates.png")


def learning_curves(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """One line per trial of ``metric`` per epoch; the trial with the best value drawn on top, in red. A metric with
    no value per epoch (``epochs_completed``, ``tokens_seen``): the curves of the search's own, the best by it."""
    try:
        column = results.epoch_metric(metric)  # the per-epoch values drawn: valid_loss for last_valid_loss too
    except ResultsError:
        if metric is None or metric not in results.trials:
            raise
        column = results.epoch_metric()
    curves = results.curves(column)
    name, _ = results.metric_column(metric)  # what best() ranks by, as the summary and the other plots do
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
    ax.set(xlabel="epoch", ylabel=column, title=f"{results.name}: {column} per epoch ({curves.shape[1]} trials)")
    ax.grid(alpha=0.3)
    return fig


def metric_vs_knobs(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """One panel per searched knob: each trial's metric against the knob's value, the best trial starred.

    A choice is a category axis (a tick per choice, in the space file's order), an int knob has integer
    ticks, and a knob the space samples on a log scale (loguniform, int with ``log: true``) a log axis.
    """
    name, values = results.metric_column(metric)
    knobs = results.params
    kinds = knob_axes(results)
    has_value = has_finite_value(values)
    best = _best_position(results, name, values)
    columns = min(max(len(knobs), 1), 3)
    rows = -(-max(len(knobs), 1) // columns)

    fig = Figure(figsize=(3.6 * columns, 3.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, (ax, knob) in enumerate(zip(axes, knobs)):
        on = results.active(knob).to_numpy()  # a conditional knob: only the trials that sampled it
        x_on, labels, _ = knob_positions(results.trials[knob][on], kinds[knob])
        x = np.full(len(on), np.nan)
        x[on] = x_on
        y = values.to_numpy(dtype=float, na_value=np.nan)
        ax.scatter(x[has_value & on], y[has_value & on], s=22, alpha=0.7, color="tab:blue")
        if best is not None and on[best]:
            ax.scatter(x[best], y[best], s=140, marker="*", color=BEST_COLOR, zorder=3)
        if not on.all():
            ax.set_title(f"{int((~on).sum())} trials did not sample it", fontsize=8)
        set_knob_axis(ax, kinds[knob], labels, x_on)
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
    elif best is not None:
        key = _trial_key(results.trials.iloc[best])
        label = "/".join(key) if isinstance(key, tuple) else key
        handles = [
            Line2D([], [], ls="", marker="o", ms=5, alpha=0.7, color="tab:blue", label="a trial"),
            Line2D(
                [],
                [],
                ls="",
                marker="*",
                ms=12,
                color=BEST_COLOR,
                label=f"best: {label} ({name} {values.iloc[best]:.4g})",
            ),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    missing = int((~has_value).sum())
    note = f" ({missing} trial{'s' * (missing != 1)} without a value not shown)" if missing else ""
    fig.suptitle(f"{results.name}: {name} ({results.direction(name)}) against each searched knob{note}", fontsize=10)
    return fig


def parallel_coordinates(results: SearchResults, metric: Optional[str] = None) -> Figure:
    """A line per trial across the metric and every searched knob, each scaled to [0, 1], coloured by the metric.

    Each knob's axis is as :func:`knob_axes` gives it (a log axis where the space samples the knob on a log
    scale, or without the space file where its values span more than a decade); a categorical knob's values
    sit at evenly spaced positions. The best trials are drawn last, on top.
    """
    name, values = results.metric_column(metric)
    knobs = results.params
    keep = has_finite_value(values)
    trials, values = results.trials[keep], values[keep]  # a trial without a (finite) value has no colour
    axes_names = [name, *knobs]
    # a conditional knob a trial did not sample: its line has a gap on that axis
    kinds = knob_axes(results)
    scaled_knobs = (_scaled_where(trials[k], results.active(k)[keep].to_numpy(), kinds[k]) for k in knobs)
    scaled, ticks = zip(_scaled(values), *scaled_knobs)
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
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"{directory}: the figures cannot be written there ({exc.strerror or exc})") from None
    paths = []
    for filename, plot in zip(PLOT_FILES, (learning_curves, metric_vs_knobs, parallel_coordinates)):
        path = Path(directory) / filename
        with written_atomically(path) as tmp:  # like the tables: never half a PNG
            plot(results, metric).savefig(tmp, format="png", dpi=dpi)
        paths.append(path)
    return paths


# --- where a knob's values go on an axis


@dataclass(frozen=True)
class KnobAxis:
    """How a knob's values sit on an axis: a category per choice, or an int or float range, maybe on a log scale."""

    kind: str  # choice | int | float
    log: bool = False
    choices: Optional[tuple] = None  # a choice's values as its column holds them, in the space's order
    bounds: Optional[tuple[float, float]] = None  # a range's low and high, where the space file gives them
    step: int = 1  # an int range's step, where the space file gives one


def knob_axes(results: SearchResults) -> dict[str, KnobAxis]:
    """Each searched knob's axis: from the search-space file the search ran (its kinds, choices and log
    scales), where it is still there unchanged; else from the knob's type (``knob_type``) and its values."""
    space = _space_params(results)
    return {knob: knob_axis(knob, results.trials[knob], space.get(knob)) for knob in results.params}


def knob_axis(knob: str, values: pd.Series, dist: Optional[Distribution] = None) -> KnobAxis:
    """The axis of one knob: as ``dist`` (its entry in the space file) samples it, else as its values read."""
    if dist is not None and dist.kind == "choice":
        return KnobAxis("choice", choices=tuple(dist.values))  # as load() gives the column: compile's True, 'auto'
    if dist is not None:
        kind = "int" if dist.kind == "int" else "float"
        step = int(dist.step) if dist.kind == "int" and dist.step else 1
        return KnobAxis(kind, log=dist.kind == "loguniform" or dist.log, bounds=(dist.low, dist.high), step=step)
    if is_categorical(values):
        return KnobAxis("choice")
    try:
        integer = pa.types.is_integer(knob_type(knob))
    except KeyError:  # not a TrainConfig field (a table from an older artune): its dtype says
        integer = pd.api.types.is_integer_dtype(values)
    return KnobAxis("int" if integer else "float", log=spans_decades(values.to_numpy(dtype=float)))


def is_categorical(values: pd.Series) -> bool:
    """Text and bool knobs are categories; so is a numeric knob with missing values (d_ff: none)."""
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    return not numeric or bool(values.isna().any())


def knob_positions(values: pd.Series, axis: Optional[KnobAxis] = None) -> tuple[np.ndarray, Optional[list[str]], bool]:
    """(x per trial, category labels or None for a numeric knob, whether it goes on a log axis).

    Without ``axis``, as the values read: text, bool and numbers with gaps are categories in sorted order,
    and numbers spanning more than a decade go on a log axis."""
    if axis is None:
        axis = knob_axis(str(values.name), values)
    if axis.kind == "choice":
        order = list(axis.choices) if axis.choices is not None else []
        # a value the space does not list (a knob --set on an --extend, say) goes after its choices
        # (by type, then value: compile's column holds True, False and 'auto', which do not compare)
        unlisted = (v for v in dict.fromkeys(values.dropna().tolist()) if v not in order)
        order += sorted(unlisted, key=lambda v: (type(v).__name__, v))
        if values.isna().any() and None not in order:
            order.append(None)
        index = {v: i for i, v in enumerate(order) if v is not None}
        none_at = order.index(None) if None in order else len(order)
        labels = ["none" if v is None else str(v) for v in order]
        x = np.array([index[v] if pd.notna(v) else none_at for v in values], dtype=float)
        return x, labels, False
    return values.to_numpy(dtype=float, na_value=np.nan), None, axis.log


def set_knob_axis(ax: Any, axis: KnobAxis, labels: Optional[list[str]], x: np.ndarray) -> None:
    """Ticks a reader can read: a tick per category, integers on an int axis, 1-2-5 steps on a log axis."""
    if labels == []:  # a search with no trial yet: no category to show, and no range to set
        return
    if labels is not None:
        long = sum(len(label) for label in labels) > 24
        ax.set_xticks(range(len(labels)), labels, rotation=30 if long else 0, ha="right" if long else "center")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        return
    finite = x[np.isfinite(x)]
    ends = [*finite, *(axis.bounds or ())]
    if not ends:
        return
    low, high = float(min(ends)), float(max(ends))
    if axis.log and low > 0:
        ax.set_xscale("log")
        pad = 10 ** (0.05 * max(math.log10(high / low), 0.2))  # a twentieth of the axis each side
        ticks = log_ticks(low, high)
        ax.set_xticks(ticks, tick_labels(ticks))
        ax.xaxis.set_minor_formatter(NullFormatter())  # matplotlib labels minor ticks on a short log axis
        ax.set_xlim(low / pad, high * pad)
        return
    if axis.kind == "int":
        shown = np.unique(np.rint(finite))
        if axis.bounds is not None and (high - low) // axis.step + 1 <= 8:
            shown = np.arange(int(low), int(high) + 1, axis.step)  # every value the space allows (low is its low)
        if 0 < len(shown) <= 8:
            ax.set_xticks(shown, [str(int(v)) for v in shown])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        pad = max(0.5, 0.05 * (high - low))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.5
    ax.set_xlim(low - pad, high + pad)


def log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Ticks from ``low`` to ``high`` on a log axis: 1, 2 and 5 times the powers of ten, or the powers
    alone (every other one, and so on) where those are more than ``most``; finer steps on a short axis."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))

    def at(subs: tuple[int, ...]) -> list[float]:
        steps = (float(f"{m}e{e}") for e in range(first, last + 1) for m in subs)  # 2e-3, not 2 * 10.0**-3
        return [t for t in steps if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]

    ticks = at((1, 2, 5))
    if len(ticks) > most:
        ticks = at((1,))
        ticks = ticks[:: math.ceil(len(ticks) / most)]
    elif len(ticks) < 2:
        ticks = at((1, 2, 3, 4, 5, 6, 7, 8, 9))
    if len(ticks) < 2:  # within one step of 1..9: the ends, to two digits
        ticks = sorted({float(f"{low:.2g}"), float(f"{high:.2g}")})
    return ticks


def tick_labels(ticks: list[float]) -> list[str]:
    """Short labels for log ticks: 0.002 and 50 as such, and 1e-4 (not 1e-04) where a tick is that small."""
    if all(1e-3 <= abs(t) < 1e5 for t in ticks):
        return [f"{t:g}" for t in ticks]
    return [f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e") for t in ticks]


def spans_decades(x: np.ndarray) -> bool:
    """Whether positive values range over more than a factor of 10 (lr 1e-4..1e-2), so a log axis reads best."""
    x = x[np.isfinite(x)]
    return len(x) > 0 and bool(np.all(x > 0)) and x.max() / x.min() > 10


def _scaled(values: pd.Series, axis: Optional[KnobAxis] = None) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values mapped to [0, 1] for a parallel axis, and its (position, label) ticks."""
    x, labels, log = knob_positions(values, axis)
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


def _scaled_where(
    values: pd.Series, on: np.ndarray, axis: Optional[KnobAxis] = None
) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """``_scaled`` over the trials where ``on``; NaN (a gap in the line) for the others."""
    scaled_on, ticks = _scaled(values[on], axis)
    scaled = np.full(len(values), np.nan)
    scaled[on] = scaled_on
    return scaled, ticks


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _trial_key(row: pd.Series) -> Any:
    return (row["search"], row["trial_id"]) if "search" in row.index else row["trial_id"]


def has_finite_value(values: pd.Series) -> np.ndarray:
    """Which trials the plots place: an infinite loss (a validation that overflowed) has no colour or position."""
    return np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))


def _best_position(results: SearchResults, name: str, values: pd.Series) -> Optional[int]:
    values = values.where(has_finite_value(values))
    if not values.notna().any():
        return None
    label = values.idxmin() if results.direction(name) == "min" else values.idxmax()
    return results.trials.index.get_loc(label)


def _space_params(results: SearchResults) -> dict[str, Distribution]:
    """The searched knobs of the space the search started with, with the bytes it had (``space_sha256``): its
    copy in the search's directory, else the file the manifest records; else none. An older manifest's relative
    path is tried from the working directory, then from the directory the results directory sits in (where the
    search ran, with the default ``results/``)."""
    recorded, sha = results.manifest.get("space_file"), results.manifest.get("space_sha256")
    if not recorded or not sha or results.path is None:
        return {}
    path = Path(recorded)
    if not path.is_absolute() and not path.is_file():
        path = results.path.parent.parent / path
    for candidate in (results.path / SPACE_COPY, path):
        try:
            if hashlib.sha256(candidate.read_bytes()).hexdigest() == sha:  # else edited since: not what was sampled
                return dict(load_space(candidate).params)
        except (OSError, SpaceError):
            continue
    return {}
