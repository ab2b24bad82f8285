"""artune.plots' axes, read from the real matplotlib figures (Agg), not from pixels: a choice is a category axis
in the space file's order, an int knob has integer ticks, a log-sampled knob a log axis whose labels do not
overlap, and the best trial's star is named in a legend."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from artune.config import TrainConfig
from artune.plots import knob_axes, log_ticks, metric_vs_knobs, parallel_coordinates, tick_labels
from artune.results import MANIFEST_FILE, SPACE_COPY, TrialRecord, load, write_json_atomic, write_tables

REPO = Path(__file__).resolve().parent.parent
PARAMS = ["d_model", "n_layers", "lr", "grad_norm_clip", "dataloader_shuffle_with_replacement"]
# The smoke space's knobs, d_model's choices listed largest first: the axis keeps the file's order.
SPACE = (REPO / "search_spaces" / "smoke.yaml").read_text().split("params:")[0] + (
    "params:\n"
    "  d_model: {choice: [64, 32]}\n"
    "  n_layers: {int: [1, 2]}\n"
    "  lr: {loguniform: [1e-4, 1e-2]}\n"
    "  grad_norm_clip: {uniform: [0.5, 2.0]}\n"
    "  dataloader_shuffle_with_replacement: {choice: [true, false]}\n"
)
# trial: d_model, n_layers, lr, grad_norm_clip, with replacement, best valid loss
TRIALS = {
    "a": (32, 1, 1.5e-4, 0.7, True, 2.4),
    "b": (64, 2, 3.0e-4, 1.9, False, 2.1),
    "c": (64, 1, 8.0e-4, 1.2, True, 1.8),
    "d": (32, 2, 4.0e-3, 0.9, False, 2.6),
}
BEST = "c"


def write_search(directory: Path, *, space: bool = True) -> Path:
    directory.mkdir(parents=True)
    records = []
    for trial_id, (d_model, n_layers, lr, clip, replace, loss) in TRIALS.items():
        config = TrainConfig(
            d_model=d_model,
            n_layers=n_layers,
            lr=lr,
            grad_norm_clip=clip,
            dataloader_shuffle_with_replacement=replace,
            n_heads=2,
            epochs=1,
        ).to_dict()
        record = TrialRecord(trial_id, config)
        record.add_epoch({"epoch": 1, "valid_loss": loss, "valid_accuracy": 0.5, "train_loss": loss})
        record.status = "completed"
        records.append(record)
    write_tables(directory, records)
    manifest = {"name": "knobs", "metric": "valid_loss", "mode": "min", "params": PARAMS}
    if space:
        path = directory.parent / "space.yaml"
        path.write_text(SPACE)
        manifest |= {"space_file": str(path), "space_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    write_json_atomic(manifest, directory / MANIFEST_FILE)
    return directory


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_search(tmp_path_factory.mktemp("plots") / "knobs")


def panels(results) -> dict:
    fig = metric_vs_knobs(results)
    return fig, {ax.get_xlabel(): ax for ax in fig.axes if ax.axison}


def ticks(ax) -> tuple[list[float], list[str]]:
    return list(ax.get_xticks()), [t.get_text() for t in ax.get_xticklabels()]


def assert_tick_labels_do_not_overlap(fig) -> None:
    """Every tick label drawn (major and minor) is clear of its neighbours on the rendered figure."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        low, high = sorted(ax.get_xlim())
        drawn = [
            label.get_window_extent(renderer)
            for tick in [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]
            if low <= tick.get_loc() <= high
            for label in (tick.label1,)
            if label.get_visible() and label.get_text()
        ]
        drawn.sort(key=lambda box: box.x0)
        for left, right in zip(drawn, drawn[1:]):
            assert left.x1 <= right.x0, (ax.get_xlabel(), [t.get_text() for t in ax.get_xticklabels(which="both")])


def test_a_choice_is_a_category_axis_in_the_space_files_order(search: Path) -> None:
    _, axes = panels(load(search))
    ax = axes["d_model"]
    assert ticks(ax) == ([0, 1], ["64", "32"])  # not 40 and 50 on a numeric axis
    assert ax.get_xlim() == (-0.5, 1.5)
    (points, _star) = ax.collections
    assert [x for x, _ in points.get_offsets()] == [1, 0, 0, 1]  # 32, 64, 64, 32
    assert ticks(axes["dataloader_shuffle_with_replacement"])[1] == ["True", "False"]


def test_an_int_knob_has_integer_ticks(search: Path) -> None:
    _, axes = panels(load(search))
    assert ticks(axes["n_layers"]) == ([1, 2], ["1", "2"])  # not 1.2, 1.4


def test_an_int_knob_with_a_step_has_ticks_only_at_the_values_it_allows(tmp_path: Path) -> None:
    """`int: [1, 5], step: 2` was ticked at 1, 2, 3, 4, 5: values the space never draws."""
    directory = write_search(tmp_path / "knobs")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("n_layers: {int: [1, 2]}", "n_layers: {int: [1, 5], step: 2}"))
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["space_sha256"] = hashlib.sha256(space.read_bytes()).hexdigest()
    write_json_atomic(manifest, directory / MANIFEST_FILE)
    _, axes = panels(load(directory))
    assert ticks(axes["n_layers"]) == ([1, 3, 5], ["1", "3", "5"])


def test_a_loguniform_knob_is_a_log_axis_with_labels_that_do_not_overlap(search: Path) -> None:
    fig, axes = panels(load(search))
    ax = axes["lr"]
    assert ax.get_xscale() == "log"
    assert ticks(ax) == ([1e-4, 1e-3, 1e-2], ["1e-4", "1e-3", "1e-2"])
    low, high = ax.get_xlim()
    assert low < 1e-4 and high > 1e-2  # the space's whole range, where the trials sit in it
    assert axes["grad_norm_clip"].get_xscale() == "linear"
    assert_tick_labels_do_not_overlap(fig)


def test_the_best_trials_star_has_a_legend(search: Path) -> None:
    fig, axes = panels(load(search))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a trial", f"best: {BEST} (best_valid_loss 1.8)"]
    (_, star) = axes["lr"].collections
    assert star.get_offsets().tolist() == [[8e-4, 1.8]]


def test_a_relative_space_file_is_found_from_where_the_search_ran(tmp_path: Path, monkeypatch) -> None:
    """`python -m artune.search search_spaces/x.yaml` records the path as typed; a notebook runs in notebooks/."""
    directory = write_search(tmp_path / "results" / "knobs")
    (tmp_path / "results" / "space.yaml").rename(tmp_path / "space.yaml")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    write_json_atomic({**manifest, "space_file": "space.yaml"}, directory / MANIFEST_FILE)
    monkeypatch.chdir(directory)  # not where the search ran
    assert knob_axes(load(directory))["d_model"].choices == (64, 32)


def test_the_space_is_read_from_the_copy_the_search_keeps_where_its_file_is_gone(tmp_path: Path) -> None:
    """A search's directory keeps the space it started with (space.yaml): a moved search, or one whose file
    was deleted since, still has its choices' order."""
    directory = write_search(tmp_path / "results" / "knobs")
    (tmp_path / "results" / "space.yaml").rename(directory / SPACE_COPY)
    assert knob_axes(load(directory))["d_model"].choices == (64, 32)


def test_without_the_space_file_the_knobs_types_decide(tmp_path: Path) -> None:
    """A search whose space file is gone (or edited since): the int columns get integer ticks at the values
    the trials took, bools are categories, and lr, over more than a decade, is on a log axis (where matplotlib's
    own labels of its minor ticks, 2x10^-4 to 6x10^-3, ran into each other)."""
    for directory in (write_search(tmp_path / "gone", space=False), write_search(tmp_path / "edited")):
        if directory.name == "edited":
            (tmp_path / "space.yaml").write_text(SPACE.replace("[64, 32]", "[32, 64, 128]"))
        results = load(directory)
        assert {k: a.kind for k, a in knob_axes(results).items()} == {
            "d_model": "int",
            "n_layers": "int",
            "lr": "float",
            "grad_norm_clip": "float",
            "dataloader_shuffle_with_replacement": "choice",
        }
        fig, axes = panels(results)
        assert ticks(axes["d_model"]) == ([32, 64], ["32", "64"])
        assert ticks(axes["n_layers"]) == ([1, 2], ["1", "2"])
        assert ticks(axes["dataloader_shuffle_with_replacement"])[1] == ["False", "True"]
        assert axes["lr"].get_xscale() == "log"
        assert ticks(axes["lr"]) == ([2e-4, 5e-4, 1e-3, 2e-3], ["2e-4", "5e-4", "1e-3", "2e-3"])
        assert_tick_labels_do_not_overlap(fig)


def test_parallel_coordinates_take_the_space_files_order(search: Path) -> None:
    ax = parallel_coordinates(load(search)).axes[0]
    column = 1 + PARAMS.index("d_model")
    labels = {t.get_text(): t.get_position()[1] for t in ax.texts if round(t.get_position()[0]) == column}
    assert labels == {"64": 0.0, "32": 1.0}


@pytest.mark.parametrize("space", [True, False])
def test_a_searched_switch_of_bools_and_auto_is_one_category_per_value(tmp_path: Path, space: bool) -> None:
    """compile's column holds True, False and 'auto', which do not sort together: a category each, in the space's
    order where its file is there, else bools before text."""
    directory = tmp_path / "switch"
    directory.mkdir()
    records = []
    for trial_id, (compile_, loss) in {"a": (True, 2.0), "b": (False, 1.9), "c": ("auto", 1.8)}.items():
        record = TrialRecord(trial_id, TrainConfig(compile=compile_, n_heads=2, epochs=1).to_dict())
        record.add_epoch({"epoch": 1, "valid_loss": loss, "valid_accuracy": 0.5, "train_loss": loss})
        record.status = "completed"
        records.append(record)
    write_tables(directory, records)
    manifest = {"name": "switch", "metric": "valid_loss", "mode": "min", "params": ["compile"]}
    if space:
        path = tmp_path / "space.yaml"
        path.write_text(SPACE.split("params:")[0] + "params:\n  compile: {choice: [auto, true, false]}\n")
        manifest |= {"space_file": str(path), "space_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    write_json_atomic(manifest, directory / MANIFEST_FILE)
    results = load(directory)
    labels = ["auto", "True", "False"] if space else ["False", "True", "auto"]
    _, axes = panels(results)
    assert ticks(axes["compile"]) == ([0, 1, 2], labels)
    ax = parallel_coordinates(results).axes[0]
    assert sorted((t.get_position()[1], t.get_text()) for t in ax.texts if round(t.get_position()[0]) == 1) == [
        (0.0, labels[0]),
        (0.5, labels[1]),
        (1.0, labels[2]),
    ]


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1e-3, 1e-2, [1e-3, 2e-3, 5e-3, 1e-2]),  # a decade: 1-2-5
        (1e-4, 1e-2, [1e-4, 1e-3, 1e-2]),  # two: the powers of ten alone
        (1e-9, 1e3, [1e-9, 1e-6, 1e-3, 1, 1e3]),  # thirteen powers: every third
        (2.5e-3, 4.5e-3, [3e-3, 4e-3]),  # short: steps of one
        (3.1e-3, 4.7e-3, [3.1e-3, 4.7e-3]),  # shorter still: its ends
    ],
)
def test_log_ticks(low: float, high: float, expected: list[float]) -> None:
    assert log_ticks(low, high) == pytest.approx(expected)


def test_tick_labels_are_short() -> None:
    assert tick_labels([0.001, 0.002, 0.01]) == ["0.001", "0.002", "0.01"]
    assert tick_labels([1e-4, 1e-3, 1e-2]) == ["1e-4", "1e-3", "1e-2"]
    assert tick_labels([1e-1, 1e6]) == ["1e-1", "1e6"]


def test_a_search_with_no_trial_yet_draws_its_figures_without_a_warning(tmp_path: Path) -> None:
    """A category axis with no category (matplotlib warned of a singular range, which the CLI printed)."""
    import warnings

    from artune.plots import write_plots

    write_tables(tmp_path, [])
    manifest = {"name": "empty", "metric": "valid_loss", "mode": "min", "params": ["optimizer", "lr"]}
    write_json_atomic(manifest, tmp_path / MANIFEST_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(write_plots(load(tmp_path))) == 3
