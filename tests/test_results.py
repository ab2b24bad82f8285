"""artune.results and artune.plots on real parquet tables written by the project's own writer."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from artune.config import FIELD_NAMES
from artune.plots import (
    PLOT_FILES,
    knob_positions,
    learning_curves,
    metric_vs_knobs,
    parallel_coordinates,
    write_plots,
)
from artune.results import (
    EPOCHS_FILE,
    MANIFEST_FILE,
    TRIALS_FILE,
    ResultsError,
    TrialRecord,
    compare,
    load,
    read_records,
    write_json_atomic,
    write_tables,
)
from artune.results import tables as tables_module
from artune.results.cli import main
from tests import _results_fixture as fx

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture search, read only by the tests that take it."""
    return fx.build_search(tmp_path_factory.mktemp("results") / fx.NAME)


def rewrite_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest.update(changes)
    manifest = {k: v for k, v in manifest.items() if v is not None}
    write_json_atomic(manifest, directory / MANIFEST_FILE)


# --- load


def test_load_types_every_knob_column(search: Path) -> None:
    trials = load(search).trials
    assert trials["d_model"].dtype == "int64"
    assert trials["lr"].dtype == "float64"
    assert trials["dataloader_shuffle_with_replacement"].dtype == "bool"
    assert pd.api.types.is_string_dtype(trials["optimizer"])
    assert trials["d_ff"].dtype == "Int64" and trials["d_ff"].isna().all()  # none stays none, not NaN in a float column
    assert trials["epochs_completed"].dtype == "int64"
    assert set(FIELD_NAMES) <= set(trials.columns)


def test_load_gives_a_row_per_trial_and_per_trial_epoch(search: Path) -> None:
    results = load(search)
    assert sorted(results.trials["trial_id"]) == sorted(fx.TRIALS)
    expected = {(t, e) for t, spec in fx.TRIALS.items() for e in range(1, len(spec[-1]) + 1)}
    assert len(results.epochs) == len(expected) == 15  # the diverged epoch of t4 is not a row
    assert set(zip(results.epochs["trial_id"], results.epochs["epoch"])) == expected
    row = results.epochs[(results.epochs.trial_id == "t0") & (results.epochs.epoch == 2)].iloc[0]
    assert row["valid_loss"] == 2.0 and row["sample"] == fx.sample("t0", 2)
    statuses = results.trials.set_index("trial_id")["status"]
    assert statuses.to_dict() == {t: spec[6] for t, spec in fx.TRIALS.items()}
    assert results.trials.set_index("trial_id").loc["t5", "error"] == "RuntimeError: CUDA out of memory"


def test_a_retried_trials_epochs_replace_the_failed_attempts(tmp_path: Path) -> None:
    # attempt 1 reached epoch 4 and died; attempt 2 restarted from epoch 1 (no checkpoint) and was
    # stopped after its second: the tables hold attempt 2's two epochs, not 2 of one and 2 of the other
    record = TrialRecord("t0", {"lr": 0.001, "d_model": 32}, config_id="c0")
    for attempt, epochs in ((1, 4), (2, 2)):
        for epoch in range(1, epochs + 1):
            record.add_epoch({"epoch": epoch, "valid_loss": 10.0 * attempt + epoch, "valid_accuracy": 0.5})
    record.status = "stopped"
    write_tables(tmp_path, [record])
    epochs = load(tmp_path).epochs
    assert list(epochs["epoch"]) == [1, 2] and list(epochs["valid_loss"]) == [21.0, 22.0]
    trial = load(tmp_path).trials.iloc[0]
    assert trial["epochs_completed"] == 2 and trial["last_valid_loss"] == 22.0
    # a retry from its checkpoint of epoch 3 re-trains epoch 4 only
    for epoch in (3, 4, 4):
        record.add_epoch({"epoch": epoch, "valid_loss": 30.0 + epoch, "valid_accuracy": 0.5})
    assert sorted(record.epochs) == [1, 2, 3, 4] and record.epochs[4]["valid_loss"] == 34.0


def test_a_load_between_a_running_searchs_two_table_writes_reads_one_write_of_both(tmp_path: Path, monkeypatch) -> None:
    """A running search rewrites epochs.parquet, then trials.parquet, every 2 s: a load() that read the trials before
    one such write and the epochs after it got epoch rows of a trial its trials lacked, and a trial's
    epochs_completed behind its rows (the notebook's own checks failed on a live search)."""
    import artune.results.frames as frames

    record = TrialRecord("t0", {"lr": 0.001}, config_id="c0")
    record.add_epoch({"epoch": 1, "valid_loss": 3.0, "valid_accuracy": 0.2})
    write_tables(tmp_path, [record])
    later = TrialRecord("t1", {"lr": 0.002}, config_id="c1")
    record.add_epoch({"epoch": 2, "valid_loss": 2.5, "valid_accuracy": 0.3})
    later.add_epoch({"epoch": 1, "valid_loss": 2.9, "valid_accuracy": 0.2})
    read, writes = frames.read_table, []

    def read_then_the_search_writes(path: Path):
        table = read(path)
        if path.name == "trials.parquet" and not writes:  # the search's next write, between the two reads
            writes.append(write_tables(tmp_path, [record, later]))
        return table

    monkeypatch.setattr(frames, "read_table", read_then_the_search_writes)
    results = load(tmp_path)
    assert list(results.trials["trial_id"]) == ["t0", "t1"] and list(results.trials["epochs_completed"]) == [2, 1]
    assert sorted(zip(results.epochs["trial_id"], results.epochs["epoch"])) == [("t0", 1), ("t0", 2), ("t1", 1)]
    # a pair a killed driver left between its two writes (or tables from before the stamp) loads as it is
    monkeypatch.setattr(frames, "read_table", read)
    epochs = pq.read_table(tmp_path / "epochs.parquet")
    write_tables(tmp_path, [record])
    pq.write_table(epochs, tmp_path / "epochs.parquet")
    assert set(load(tmp_path).epochs["trial_id"]) == {"t0", "t1"}


def test_a_table_renamed_over_as_it_is_read_reads_whole(tmp_path: Path) -> None:
    """pyarrow opened a path twice (its footer, then its data): a running search's rename between the two failed
    load() with "cannot read the table (Couldn't deserialize thrift ...)" in 1 of 673 loads, and a read loop beside
    a writer in 33 of 2,326 (a review). A table is read through one open file."""
    import threading

    from artune.results.tables import read_parquet

    records = [TrialRecord(f"t{i}", {"lr": 0.001 * (i + 1)}) for i in range(50)]
    for number, record in enumerate(records):
        for epoch in range(1, 1 + number % 7):
            record.add_epoch({"epoch": epoch, "valid_loss": 3.0 - epoch / 10, "valid_accuracy": 0.2})
    write_tables(tmp_path, records)
    stop = threading.Event()

    def the_search_writes() -> None:  # two sizes in turn: the footer of one never fits the other's data
        while not stop.is_set():
            for count in (20, 50):
                write_tables(tmp_path, records[:count])

    writer = threading.Thread(target=the_search_writes)
    writer.start()
    try:
        for _ in range(400):
            assert read_parquet(tmp_path / "trials.parquet").num_rows in (20, 50)
    finally:
        stop.set()
        writer.join()


def test_compile_true_false_and_auto_share_one_column_and_come_back_as_given(tmp_path: Path) -> None:
    records = [TrialRecord(f"t{i}", {"compile": value}) for i, value in enumerate((True, False, "auto"))]
    write_tables(tmp_path, records)
    assert pq.read_table(tmp_path / TRIALS_FILE).column("compile").to_pylist() == ["true", "false", "auto"]
    assert list(load(tmp_path).trials["compile"]) == [True, False, "auto"]
    assert [r.config["compile"] for r in read_records(tmp_path).values()] == [True, False, "auto"]  # for --resume
    write_tables(tmp_path, records[:2])
    assert load(tmp_path).trials["compile"].dtype == bool  # without 'auto', a bool column as before


def test_load_by_name_under_results_dir(search: Path) -> None:
    assert load(fx.NAME, results_dir=search.parent).path == search


def test_load_of_a_missing_search_names_both_places(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no trials\.parquet in nowhere or .*nowhere"):
        load("nowhere", results_dir=tmp_path)
    with pytest.raises(ResultsError, match=r"no trials\.parquet in nowhere"):  # a notebook's except ResultsError
        load("nowhere", results_dir=tmp_path)


def test_a_trial_without_an_epoch_has_the_searchs_workers_and_no_seconds(tmp_path: Path) -> None:
    """An errored trial that trained no epoch had no workers (the column became float64 with NaN in pandas, the
    good trials' counts too) and NaN seconds."""
    write_tables(tmp_path, fx.records())  # t5: an error before its first epoch
    write_json_atomic(fx.manifest(), tmp_path / MANIFEST_FILE)
    trials = load(tmp_path).trials.set_index("trial_id")
    assert trials["workers"].dtype == np.int64 and trials.loc["t5", "workers"] == 1
    assert trials.loc["t5", "seconds"] == 0.0 and trials.loc["t0", "seconds"] == 8.0
    write_tables(tmp_path, fx.records(), workers=2)  # a data-parallel search: the trial was to have two
    assert load(tmp_path).trials.set_index("trial_id").loc["t5", "workers"] == 2


def test_load_of_a_corrupt_table_names_the_file(tmp_path: Path) -> None:
    (tmp_path / TRIALS_FILE).write_bytes(b"not parquet")
    with pytest.raises(ResultsError, match=r"trials\.parquet: cannot read the table"):
        load(tmp_path)


def test_a_search_whose_epochs_table_is_missing_is_refused_naming_it(tmp_path: Path) -> None:
    """A copy without epochs.parquet loaded as a search whose trials had no epoch (a review: artune.sample then
    blamed the checkpoints, "none of its finished epochs [] has a checkpoint")."""
    directory = fx.build_search(tmp_path / "s")
    (directory / EPOCHS_FILE).unlink()
    with pytest.raises(ResultsError, match=rf"^{re.escape(str(directory / EPOCHS_FILE))}: missing, though trials"):
        load(directory)
    result = subprocess.run(
        [sys.executable, "-m", "artune.results", str(directory)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "epochs.parquet: missing" in result.stderr


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts the process's threads in Linux's /proc")
def test_a_search_whose_tables_are_damaged_exits_2_every_time(tmp_path: Path) -> None:
    """A damaged epochs.parquet read after a sound trials.parquet: the one line, then, now and then, the
    interpreter's exit aborted by the threads Arrow's read had started (exit 134; a review saw 6 of 8)."""
    directory = fx.build_search(tmp_path / "s")
    data = (directory / EPOCHS_FILE).read_bytes()
    (directory / EPOCHS_FILE).write_bytes(data[: len(data) // 2])
    threads = "len(os.listdir('/proc/self/task'))"
    code = "import os, sys\nfrom pathlib import Path\nfrom artune.results.tables import TRIALS_FILE, read_parquet\n"
    code += f"before = {threads}\nread_parquet(Path(sys.argv[1]) / TRIALS_FILE)\nprint(before, {threads})"
    counts = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True, timeout=300)
    before, after = counts.stdout.split()
    assert before == after, counts.stderr  # the read started no thread of Arrow's
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-m", "artune.results", str(directory)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 2 and "epochs.parquet: cannot read the table" in result.stderr, result.stderr
    # its middle damaged, the footer whole: pyarrow's message ends in a newline and holds the damaged bytes
    (directory / EPOCHS_FILE).write_bytes(data[:100] + bytes(b ^ 0x5A for b in data[100:-200]) + data[-200:])
    with pytest.raises(ResultsError) as refused:
        load(directory)
    assert str(refused.value).isprintable(), str(refused.value)
    result = subprocess.run(
        [sys.executable, "-m", "artune.results", str(directory)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_a_manifest_that_cannot_be_read_or_is_not_an_object_is_a_results_error_naming_it(search: Path, tmp_path):
    for name, make in [
        ("unreadable", lambda path: path.mkdir()),
        ("a list", lambda path: path.write_text("[]")),
        ("not UTF-8", lambda path: path.write_bytes(b'{"name": "\xff"}')),
    ]:
        directory = tmp_path / name
        directory.mkdir()
        (directory / TRIALS_FILE).write_bytes((search / TRIALS_FILE).read_bytes())
        make(directory / MANIFEST_FILE)
        with pytest.raises(
            ResultsError, match=rf"^{directory / MANIFEST_FILE}: (cannot be read|not a search's|not valid)"
        ):
            load(directory)


def test_a_manifest_edited_to_another_mode_or_metric_is_an_error_naming_it(search: Path, tmp_path):
    """A mode of 'sideways' ranked as 'max' without a word; an unknown metric's error did not name the manifest."""
    manifest = json.loads((search / MANIFEST_FILE).read_text())
    for name, edit, fragment in [
        ("mode", {"mode": "sideways"}, "mode: must be 'min' or 'max', but got 'sideways'"),
        ("metric", {"metric": "perplexity"}, "metric: unknown metric 'perplexity'"),
    ]:
        directory = tmp_path / name
        shutil.copytree(search, directory)
        (directory / MANIFEST_FILE).write_text(json.dumps({**manifest, **edit}))
        with pytest.raises(ResultsError, match=rf"^{re.escape(str(directory / MANIFEST_FILE))}: {re.escape(fragment)}"):
            load(directory).best(1)


def test_an_os_error_is_described_with_the_files_it_names_and_none_it_does_not() -> None:
    from artune.humanize import describe_os_error

    full = "Error writing bytes to file. Detail: [errno 28] No space left on device"
    assert describe_os_error(OSError(28, full)) == f"[Errno 28] {full}"  # pyarrow's: no file named
    assert describe_os_error(OSError(28, "No space left on device", "/r/t.parquet")).endswith("device: /r/t.parquet")
    assert describe_os_error(OSError(2, "No such file", "a", None, "b")) == "[Errno 2] No such file: a -> b"


# --- best, curves, summary


def test_best_ranks_by_the_manifest_metric_and_skips_trials_without_a_value(search: Path) -> None:
    results = load(search)
    best = results.best(3)
    assert best["trial_id"].tolist() == ["t3", "t0", "t1"]
    assert best["best_valid_loss"].tolist() == [1.5, 1.7, 1.9]
    assert best.iloc[0]["best_valid_loss"] == results.trials["best_valid_loss"].min()
    assert len(results.best(100)) == 5  # t5 errored before its first epoch
    with pytest.raises(ValueError, match="best\\(k\\) needs k >= 1, but got k=0"):
        results.best(0)


def test_best_leads_with_the_metric_and_the_searched_knobs(search: Path) -> None:
    """Every column stays, but pandas' display folds the middle of 46: the knobs searched must not be there."""
    best = load(search).best(5)
    lead = ["trial_id", "best_valid_loss", *fx.PARAMS, "status", "epochs_completed"]
    assert best.columns[: len(lead)].tolist() == lead
    assert set(best.columns) == set(load(search).trials.columns)
    assert load(search).best(1, metric="train_loss").columns[:2].tolist() == ["trial_id", "best_train_loss"]


def test_a_trial_its_epochs_and_its_config(search: Path) -> None:
    results = load(search)
    assert results.trial()["trial_id"] == fx.BEST_TRIAL
    assert results.trial_epochs("t0") == {4: 1.7, 3: 1.8, 2: 2.0, 1: 2.5}  # best first
    config = results.config("t2")
    assert (config.d_model, config.lr, config.optimizer, config.dataloader_shuffle_with_replacement) == (
        128,
        1e-2,
        "adamw",
        True,
    )
    assert config.d_ff is None and config.epochs == fx.EPOCHS
    with pytest.raises(ResultsError, match="no trial 'nosuch' in .*trials.parquet \\(its trials: t0, t1"):
        results.trial("nosuch")
    with pytest.raises(ResultsError, match="trial t5 of .* finished no epoch \\(error\\)"):
        results.trial("t5")  # its model is what a caller of trial() wants
    # a trial that finished no epoch has its configuration all the same (config("t5") was refused so): a failed
    # trial's is what one looks at, or trains again with a change (python -m artune.train --from S --trial t5)
    failed = results.config("t5")
    assert (failed.d_model, failed.lr, failed.optimizer, failed.seed) == (64, 3e-4, "adamw", 0)


def test_best_honours_the_manifest_mode(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / "s")
    rewrite_manifest(directory, mode="max")
    assert load(directory).best(1).iloc[0]["trial_id"] == "t4"  # highest best_valid_loss: 2.9


def test_best_by_a_metric_the_trials_table_does_not_summarise(search: Path) -> None:
    results = load(search)
    best = results.best(2, metric="train_loss")  # best over each trial's epochs: valid_loss + 0.1
    assert best["trial_id"].tolist() == ["t3", "t0"]
    assert best["best_train_loss"].tolist() == pytest.approx([1.6, 1.8])
    assert results.best(1, metric="valid_accuracy").iloc[0]["trial_id"] == "t3"  # accuracy: the highest wins
    assert results.best(2, metric="epochs_completed")["epochs_completed"].tolist() == [4, 4]  # the most wins


def test_unknown_metric_lists_the_choices(search: Path) -> None:
    expected = r"unknown metric 'valid_perplexity': expected one of train_loss, .*valid_loss, .*best_valid_loss"
    with pytest.raises(ResultsError, match=expected):
        load(search).best(1, metric="valid_perplexity")
    # the progress lines' short name for an accuracy
    with pytest.raises(ResultsError, match=r"unknown metric 'valid_acc' \(did you mean 'valid_accuracy'\?\)"):
        load(search).best(1, metric="valid_acc")


def test_metric_errors_count_the_per_layer_statistics_and_suggest_a_name(tmp_path: Path) -> None:
    """With per-layer statistics logged, an unknown metric's line listed every grad_norm/... column (1,600
    characters); the learning curves' error gave no "did you mean"; workers, a resource, was offered as a metric."""
    records = fx.records()
    for record in records:
        for metrics in record.epochs.values():
            metrics.update({"grad_norm/total": 1.0, "grad_norm/blocks.0": 0.5, "param_norm/blocks.0": 2.0})
    write_tables(tmp_path, records)
    write_json_atomic(fx.manifest(), tmp_path / MANIFEST_FILE)
    results = load(tmp_path)
    with pytest.raises(ResultsError) as error:
        results.best(1, metric="valid_perplexity")
    message = str(error.value)
    assert "and 3 per-layer statistics (grad_norm/..., param_norm/...)" in message and "blocks.0" not in message
    assert "valid_loss" in message and "workers" not in message
    with pytest.raises(ResultsError, match="unknown metric 'workers'"):
        results.best(1, metric="workers")
    with pytest.raises(ResultsError, match=r"no per-epoch values of 'valid_acc' \(did you mean 'valid_accuracy'\?\)"):
        learning_curves(results, "valid_acc")


def test_active_of_an_unknown_knob_is_refused(search: Path) -> None:
    """A typo in the knob's name answered that every trial had sampled it."""
    with pytest.raises(ResultsError, match=r"unknown knob 'd_modle' \(did you mean 'd_model'\?\)"):
        load(search).active("d_modle")


def test_curves_pivot_epochs_per_trial(search: Path) -> None:
    curves = load(search).curves("valid_loss")
    assert curves.shape == (4, 5)
    assert curves["t0"].tolist() == [2.5, 2.0, 1.8, 1.7]
    assert curves["t2"].isna().tolist() == [False, False, True, True]  # stopped after 2 epochs
    assert load(search).curves("best_valid_loss").equals(curves)  # the trials-column name reads the same


def test_summary_is_compact_and_best_first(search: Path) -> None:
    summary = load(search).summary()
    columns = ["trial_id", "status", "config_id", *fx.PARAMS, "epochs_completed", "best_valid_loss"]
    assert summary.columns.tolist() == columns
    assert summary["trial_id"].tolist() == ["t3", "t0", "t1", "t2", "t4", "t5"]
    assert summary.iloc[-1]["status"] == "error" and math.isnan(summary.iloc[-1]["best_valid_loss"])
    assert summary.set_index("trial_id").loc["t2", "epochs_completed"] == 2


def test_direction_of_each_metric_and_of_an_unknown_one(search: Path) -> None:
    """direction() of a mistyped metric answered 'min' (a review), where every other call names it."""
    results = load(search)
    assert [results.direction(m) for m in ("best_valid_loss", "valid_accuracy", "train_loss")] == ["min", "max", "min"]
    with pytest.raises(ResultsError, match=r"unknown metric 'valid_acc' \(did you mean 'valid_accuracy'\?\)"):
        results.direction("valid_acc")


def test_status_counts_in_status_order(search: Path) -> None:
    assert load(search).status_counts().to_dict() == {"completed": 3, "stopped": 1, "diverged": 1, "error": 1}


def test_params_come_from_the_manifest(search: Path) -> None:
    assert load(search).params == fx.PARAMS


def test_params_without_a_manifest_list_are_the_knobs_that_differ_between_configs(tmp_path: Path) -> None:
    results = load(fx.build_search(tmp_path / "s", params_in_manifest=False))
    assert sorted(results.params) == sorted(fx.PARAMS)  # seed differs too, but only inside config "a"


def test_manifest_params_without_a_column_are_an_error(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / "s")
    rewrite_manifest(directory, params=["d_model", "n_experts"])
    with pytest.raises(ResultsError, match=r"params \['n_experts'\]"):
        load(directory).params  # noqa: B018 - the property raises


# --- replicates


def test_aggregate_pools_replicates_by_config_id(search: Path) -> None:
    pooled = load(search).aggregate("best_valid_loss")
    assert pooled["config_id"].tolist() == ["c", "a", "b", "d", "e"]  # best mean first, no value last
    a = pooled.set_index("config_id").loc["a"]
    assert a["mean"] == pytest.approx(1.8) and a["std"] == pytest.approx(math.sqrt(0.02)) and a["count"] == 2
    assert a["d_model"] == 64 and a["optimizer"] == "adam"
    assert pooled.set_index("config_id").loc["e", "count"] == 0  # its one run errored
    assert (a["min_epochs"], a["max_epochs"]) == (4, 4)


def test_aggregate_shows_replicates_that_trained_for_different_lengths(tmp_path: Path) -> None:
    """ASHA stops each replicate on its own: the pooled row says so."""
    directory = tmp_path / "s"
    directory.mkdir()
    records = fx.records()
    stopped = next(r for r in records if r.trial_id == "t1")
    stopped.epochs = {k: v for k, v in stopped.epochs.items() if k <= 2}
    stopped.status = "stopped"
    write_tables(directory, records)
    write_json_atomic(fx.manifest(), directory / MANIFEST_FILE)
    a = load(directory).aggregate().set_index("config_id").loc["a"]
    assert (a["count"], a["min_epochs"], a["max_epochs"]) == (2, 2, 4)


def test_aggregate_without_config_ids_treats_each_trial_as_its_own_config(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    records = fx.records()
    for record in records:
        record.config_id = None
    write_tables(directory, records)
    write_json_atomic(fx.manifest(), directory / MANIFEST_FILE)
    pooled = load(directory).aggregate()
    assert pooled["config_id"].tolist() == ["t3", "t0", "t1", "t2", "t4", "t5"]
    assert pooled["count"].tolist() == [1, 1, 1, 1, 1, 0]


# --- compare


def test_compare_stacks_searches_with_a_search_column(search: Path, tmp_path: Path) -> None:
    other = fx.build_search(tmp_path / "other")
    rewrite_manifest(other, name=None)  # named by its directory then
    both = compare(search, other)
    assert both.trials["search"].value_counts().to_dict() == {"fixture": 6, "other": 6}
    assert both.epochs.groupby("search").size().to_dict() == {"fixture": 15, "other": 15}
    assert both.curves().columns.names == ["search", "trial_id"]
    summary = both.summary()
    assert summary.columns[0] == "search" and summary.iloc[0]["trial_id"] == "t3"
    assert len(both.aggregate()) == 10  # configs are per search
    assert both.params == fx.PARAMS and both.manifest["searches"] == ["fixture", "other"]
    # a trial id both searches hold: trial_epochs merged the two trials' epochs (a review)
    with pytest.raises(ResultsError, match=r"trial 't0' is in searches fixture, other of compare\(\)'s stack"):
        both.trial_epochs("t0")


def test_compare_warns_of_searches_on_different_corpora(tmp_path: Path) -> None:
    shakespeare = {
        "source": "/data/tiny_shakespeare.txt",
        "sha256": "86c4e6aa9db7" + "0" * 52,
        "tokenizer": "character",
    }
    search, same, other = (fx.build_search(tmp_path / name) for name in ("first", "same", "other"))
    for directory in (search, same):
        rewrite_manifest(directory, corpus=shakespeare)
    rewrite_manifest(other, corpus={**shakespeare, "source": "/data/moby.txt", "sha256": "ab" * 32})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(search, same)  # one corpus: no word
    with pytest.warns(UserWarning, match="different corpora .*tiny_shakespeare.txt sha256 86c4e6aa9db7.*moby.txt") as w:
        both = compare(search, other)
    assert w[0].filename == __file__  # the warning points at the caller's line
    assert len(both.trials) == 12  # stacked still: the curves side by side are worth a look
    rewrite_manifest(other, corpus={**shakespeare, "tokenizer": "basic_english"})
    with pytest.warns(UserWarning, match="basic_english"):
        compare(search, other)


def test_compare_of_a_compared_stack_is_an_error_not_a_mix_of_searches(search: Path, tmp_path: Path) -> None:
    both = compare(search, fx.build_search(tmp_path / "other"))
    with pytest.raises(ResultsError, match=r"compare\(\) of a compare\(\)'s stack: pass the searches themselves"):
        compare(both, fx.build_search(tmp_path / "third"))


def test_compare_of_one_search_twice_is_an_error(search: Path) -> None:
    with pytest.raises(ResultsError, match="twice"):
        compare(search, search)


# --- atomic writes and resume


def test_a_leftover_tmp_file_from_a_crashed_write_is_ignored(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / "s")
    (directory / f".{TRIALS_FILE}.99999.tmp").write_bytes(b"PAR1 half a table")
    assert len(load(directory).trials) == 6


def test_an_interrupted_write_leaves_the_previous_table_readable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = fx.build_search(tmp_path / "s")

    def crash_midway(table, where, *args, **kwargs) -> None:
        Path(where).write_bytes(b"PAR1 the first bytes of a table")
        raise KeyboardInterrupt  # the search is killed mid-write

    monkeypatch.setattr(tables_module.pq, "write_table", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        write_tables(directory, fx.records()[:2])
    monkeypatch.undo()
    assert not list(directory.glob(f".{EPOCHS_FILE}.*.tmp"))  # the interrupted write removed its partial file...
    (directory / f".{EPOCHS_FILE}.12345.tmp").write_bytes(b"PAR1 the first bytes")  # ...which a SIGKILL leaves
    back = load(directory)  # either way the reader sees the previous complete tables
    assert len(back.trials) == 6 and back.epochs["trial_id"].nunique() == 5


def test_read_records_of_tables_written_before_a_knob_existed_gives_it_its_default(tmp_path: Path) -> None:
    """--resume and --extend of a search an older artune wrote: its table has no column for a newer knob."""
    directory = fx.build_search(tmp_path / "s")
    table = pq.read_table(directory / TRIALS_FILE)
    pq.write_table(table.drop_columns(["adam_beta2"]), directory / TRIALS_FILE)
    back = read_records(directory)
    assert back.keys() == {r.trial_id for r in fx.records()}
    assert all(record.config["adam_beta2"] is None for record in back.values())
    write_tables(directory, back.values())
    assert "adam_beta2" in pq.read_table(directory / TRIALS_FILE).column_names


def test_read_records_round_trips_the_tables(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / "s")
    original = {r.trial_id: r for r in fx.records()}
    back = read_records(directory)
    assert back.keys() == original.keys()
    for trial_id, record in back.items():
        expected = original[trial_id]
        assert (record.status, record.error, record.config_id) == (expected.status, expected.error, expected.config_id)
        assert record.config == expected.config
        kept = {e: m for e, m in expected.epochs.items() if not m.get("diverged")}
        assert record.epochs.keys() == kept.keys()
        for epoch, metrics in kept.items():
            assert {k: record.epochs[epoch][k] for k in metrics} == metrics
    again = tmp_path / "again"
    again.mkdir()
    write_tables(again, back.values())
    for name in (TRIALS_FILE, EPOCHS_FILE):
        assert pq.read_table(again / name).equals(pq.read_table(directory / name))


# --- plots


def test_knob_positions_choose_categories_and_log_axes(search: Path) -> None:
    trials = load(search).trials
    _, labels, log = knob_positions(trials["lr"])
    assert labels is None and log  # 1e-4 .. 3e-2 spans more than a decade
    _, labels, log = knob_positions(trials["d_model"])
    assert labels is None and not log  # 32 .. 128
    x, labels, _ = knob_positions(trials["optimizer"])
    assert labels == ["adam", "adamw"] and x.tolist() == [0, 0, 1, 0, 1, 1]
    _, labels, _ = knob_positions(trials["dataloader_shuffle_with_replacement"])
    assert labels == ["False", "True"]


def test_learning_curves_highlight_the_best_trial(search: Path) -> None:
    ax = learning_curves(load(search)).axes[0]
    best = [line for line in ax.get_lines() if line.get_label().startswith("best: t3")]
    assert len(best) == 1 and best[0].get_ydata().tolist() == [3.0, 2.8, 2.6, 1.5]
    assert len(ax.get_lines()) == 5


def test_learning_curves_by_the_last_value_highlight_the_trial_the_summary_ranks_first(tmp_path: Path) -> None:
    """--metric last_valid_loss: a trial that ended at 2.0 beats one that reached 1.0 and ended at 3.0."""
    records = []
    for trial_id, losses in {"early": (1.0, 3.0), "steady": (2.0, 2.0)}.items():
        record = TrialRecord(trial_id, {"n_heads": 2})
        for epoch, loss in enumerate(losses, 1):
            record.add_epoch({"epoch": epoch, "valid_loss": loss, "valid_accuracy": 0.5, "train_loss": loss})
        record.status = "completed"
        records.append(record)
    write_tables(tmp_path, records)
    results = load(tmp_path)
    assert results.best(1, "last_valid_loss")["trial_id"].tolist() == ["steady"]
    ax = learning_curves(results, "last_valid_loss").axes[0]
    (best,) = [line for line in ax.get_lines() if line.get_label().startswith("best: ")]
    assert best.get_label() == "best: steady (last_valid_loss 2)" and best.get_ydata().tolist() == [2.0, 2.0]
    assert ax.get_ylabel() == "valid_loss"


def test_learning_curves_of_a_best_trial_without_epoch_rows(tmp_path: Path) -> None:
    """Its summary can be newer than the epochs (a table read mid-rewrite), or its epochs missing."""
    directory = fx.build_search(tmp_path / "s")
    epochs = pq.read_table(directory / EPOCHS_FILE).to_pandas()
    epochs[epochs["trial_id"] != fx.BEST_TRIAL].to_parquet(directory / EPOCHS_FILE)
    ax = learning_curves(load(directory)).axes[0]
    assert len(ax.get_lines()) == 4 and not any(line.get_label().startswith("best") for line in ax.get_lines())
    assert main([str(directory)]) == 0


def test_a_condition_on_a_knob_left_unset_holds_for_the_trials_that_left_it_unset(tmp_path: Path) -> None:
    """`when: {d_ff: none}`: pandas reads a none back as <NA>, which isin([None]) never matched, so every trial
    counted as not having sampled the knob and the plots dropped them all."""
    directory = fx.build_search(tmp_path / "s")  # d_ff is none in every trial (TrainConfig's default)
    rewrite_manifest(directory, conditions={"dataloader_shuffle_with_replacement": {"d_ff": [None, 256]}})
    assert load(directory).active("dataloader_shuffle_with_replacement").all()
    rewrite_manifest(directory, conditions={"dataloader_shuffle_with_replacement": {"d_ff": [256]}})
    assert not load(directory).active("dataloader_shuffle_with_replacement").any()


def test_a_condition_on_a_stepped_uniforms_value_holds_within_rounding(tmp_path: Path) -> None:
    """A trial sampled 0.15 of a 0.05-step uniform as 0.15000000000000002, which isin([0.15]) did not match: the
    plots left out the trials that had sampled the conditional knob."""
    records = fx.records()
    for record in records:
        record.config["dropout"] = 3 * 0.05 if record.trial_id in ("t0", "t3") else 0.2
    write_tables(tmp_path, records)
    write_json_atomic({**fx.manifest(), "conditions": {"n_layers": {"dropout": [0.15]}}}, tmp_path / MANIFEST_FILE)
    results = load(tmp_path)
    assert results.trials.loc[results.active("n_layers"), "trial_id"].tolist() == ["t0", "t3"]


def test_compared_searches_trials_are_active_by_their_own_searchs_knobs_and_conditions(tmp_path: Path) -> None:
    """compare() of searches with different conditions applied none, and drew each trial at the default of a knob
    its own search never searched."""
    knob = "dataloader_shuffle_with_replacement"
    a, b = fx.build_search(tmp_path / "a"), fx.build_search(tmp_path / "b")
    rewrite_manifest(a, name="a", conditions={knob: {"optimizer": ["adamw"]}})
    rewrite_manifest(b, name="b", params=[p for p in fx.PARAMS if p != knob], conditions={})
    both = compare(a, b)
    active = both.active(knob)
    assert both.trials.loc[active, ["search", "trial_id"]].values.tolist() == [["a", "t2"], ["a", "t4"], ["a", "t5"]]
    assert both.active("d_model").all()


def test_plots_leave_out_the_trials_that_did_not_sample_a_conditional_knob(tmp_path: Path) -> None:
    """Where its condition was off, a trial's column holds TrainConfig's default, which no one chose."""
    directory = fx.build_search(tmp_path / "s")
    rewrite_manifest(directory, conditions={"dataloader_shuffle_with_replacement": {"optimizer": ["adamw"]}})
    results = load(directory)
    active = results.active("dataloader_shuffle_with_replacement")
    assert results.trials.loc[active, "trial_id"].tolist() == ["t2", "t4", "t5"]  # the adamw trials
    assert results.active("d_model").all()

    panels = [ax for ax in metric_vs_knobs(results).axes if ax.axison]
    replace = panels[fx.PARAMS.index("dataloader_shuffle_with_replacement")]
    assert replace.get_title() == "3 trials did not sample it"
    (points,) = replace.collections  # t2 and t4 have a value; the best trial (t3, adam) is not starred here
    assert len(points.get_offsets()) == 2
    assert len(panels[0].collections) == 2  # d_model: every trial, and the star

    ax = parallel_coordinates(results).axes[0]
    axis = 1 + fx.PARAMS.index("dataloader_shuffle_with_replacement")
    at_axis = [line.get_ydata()[axis] for line in ax.get_lines()]
    assert sum(np.isnan(at_axis)) == 3  # t0, t1, t3: a gap in their lines


def test_metric_vs_knobs_has_a_panel_per_knob(search: Path) -> None:
    axes = [ax for ax in metric_vs_knobs(load(search)).axes if ax.axison]
    assert [ax.get_xlabel() for ax in axes] == fx.PARAMS
    assert axes[1].get_xscale() == "log" and axes[0].get_xscale() == "linear"
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["adam", "adamw"]


def test_parallel_coordinates_colour_by_the_metric(search: Path) -> None:
    fig = parallel_coordinates(load(search))
    ax, colorbar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["best_valid_loss", *fx.PARAMS]
    assert colorbar.get_ylabel() == "best_valid_loss"
    lines = [line.get_ydata() for line in ax.get_lines()]
    assert len(lines) == 5 and all(0 <= y <= 1 for ys in lines for y in ys)


def test_a_trial_with_an_infinite_metric_is_left_out_of_the_plots_colours_and_counts(tmp_path: Path) -> None:
    """A validation that overflowed: +inf would stretch the colour scale over every other trial."""
    directory = fx.build_search(tmp_path / "s")
    trials = pq.read_table(directory / TRIALS_FILE).to_pandas()
    trials.loc[trials["trial_id"] == "t0", "best_valid_loss"] = float("inf")
    trials.to_parquet(directory / TRIALS_FILE)
    results = load(directory)
    ax, colorbar = parallel_coordinates(results).axes
    assert len(ax.get_lines()) == 4 and np.isfinite(colorbar.get_ylim()).all()
    finite = results.trials["best_valid_loss"][np.isfinite(results.trials["best_valid_loss"])]
    assert colorbar.get_ylim() == pytest.approx((finite.min(), finite.max()))
    panel = [a for a in metric_vs_knobs(results).axes if a.axison][0]
    assert len(panel.collections[0].get_offsets()) == 4


def test_plots_are_written_into_a_directory_made_for_them(search: Path, tmp_path: Path) -> None:
    """A directory that did not exist failed on a hidden temporary file's name; one that cannot be made is named."""
    paths = write_plots(load(search), directory=tmp_path / "figures" / "today")
    assert [p.name for p in paths] == list(PLOT_FILES) and all(p.stat().st_size > 5000 for p in paths)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ResultsError, match=r"a_file/figures: the figures cannot be written there"):
        write_plots(load(search), directory=tmp_path / "a_file" / "figures")


def test_plots_of_compared_searches_need_a_directory(search: Path, tmp_path: Path) -> None:
    both = compare(search, fx.build_search(tmp_path / "other"))
    with pytest.raises(ResultsError, match="directory="):
        write_plots(both)
    assert all(p.stat().st_size > 5000 for p in write_plots(both, directory=tmp_path))


# --- the package's imports


def test_results_never_import_the_figures_and_the_figures_import_first() -> None:
    """plots depends on results, never the reverse: the driver writes tables without matplotlib, and
    either package imports first in a fresh interpreter (a cycle would fail one of the two orders)."""
    code = (
        "import sys; import artune.results, artune.results.frames, artune.results.tables; "
        "print(sorted(m for m in ('artune.plots', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    for first in ("artune.plots", "artune.results.cli"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {first}, artune.results"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


# --- the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "artune.results", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def test_cli_prints_the_summary_and_writes_three_pngs(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / fx.NAME)
    result = run_cli(fx.NAME, "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "search fixture: 6 trials (3 completed, 1 stopped, 1 diverged, 1 error), best first by best_valid_loss (min)"
    )
    assert lines[1].split()[:2] == ["trial_id", "status"]
    assert lines[2].split()[:2] == ["t3", "completed"] and lines[2].split()[-1] == "1.5000"  # as the search prints it
    for name in ("learning_curves.png", "metric_vs_knobs.png", "parallel_coordinates.png"):
        path = directory / name
        assert f"wrote {path}" in lines
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_cli_of_a_missing_search_is_one_error_line(tmp_path: Path) -> None:
    result = run_cli(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no trials.parquet in ") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("file", "edit", "fragment"),
    [
        ("epochs.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]), "trial_id t0, epoch 1 has two rows"),
        ("trials.parquet", lambda t: pa.concat_tables([t, t.slice(1, 1)]), "trial_id t1 has two rows"),
        (
            "trials.parquet",
            lambda t: t.set_column(
                t.column_names.index("best_valid_loss"),
                "best_valid_loss",
                pa.array([None if v is None else str(v) for v in t.column("best_valid_loss").to_pylist()]),
            ),
            "column 'best_valid_loss' holds string, not numbers",
        ),
    ],
)
def test_cli_of_tables_another_tool_edited_is_one_error_line(tmp_path: Path, file, edit, fragment) -> None:
    """An epoch's row twice failed the curves' pivot, a loss as text a ranking's format (tracebacks, exit 1), and a
    trial's row twice counted it twice (a review)."""
    directory = fx.build_search(tmp_path / "s")
    pq.write_table(edit(pq.read_table(directory / file)), directory / file)
    result = run_cli(str(directory))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr == f"error: {directory / file}: {fragment}; is it a table artune wrote?\n"


def test_cli_of_a_search_that_has_not_written_its_tables_yet_says_so(tmp_path: Path) -> None:
    """Before its first epoch a running search (or one killed then) has its manifest and no tables: "is it a
    finished or running search?" asked that of a running one (a review)."""
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / "manifest.json").write_text('{"name": "s"}')
    result = run_cli(str(directory))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr == (
        f"error: no trials.parquet in {directory}: its search has written its manifest and no table yet (a running "
        "search writes them at its first trial's first epoch, or end; a killed one goes on with --resume)\n"
    )


def test_cli_of_a_search_with_no_trial_yet_says_so_and_draws_nothing(tmp_path: Path, capsys) -> None:
    """It printed "0 trials ()", pandas' "Empty DataFrame" and three empty figures (a review)."""
    directory = tmp_path / "empty"
    directory.mkdir()
    write_tables(directory, [])
    assert main([str(directory)]) == 0
    assert capsys.readouterr().out == f"search empty: no trial yet (its tables in {directory} hold none)\n"
    assert not list(directory.glob("*.png"))


def test_cli_interrupted_while_it_writes_the_figures_exits_130_and_keeps_the_last_ones(tmp_path: Path, monkeypatch):
    """Ctrl-C halfway through a figure's write (the press raised there): no traceback, the figure as it was."""
    from matplotlib.figure import Figure

    directory = fx.build_search(tmp_path / "s")
    assert main([str(directory)]) == 0
    before = (directory / "learning_curves.png").read_bytes()

    def pressed(fig, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", pressed)
    assert main([str(directory), "--metric", "train_loss"]) == 130
    assert (directory / "learning_curves.png").read_bytes() == before
    assert not list(directory.glob(".*.tmp"))


def test_cli_that_cannot_write_a_figure_exits_4_in_one_line_and_keeps_the_others(tmp_path: Path, capsys) -> None:
    """A write that fails (here a directory where the second figure goes; a full disk alike) is the storage's
    failure, exit 4 as a search's, not a bad input's 2: one line naming the directory, the figure before it written."""
    directory = fx.build_search(tmp_path / "s")
    (directory / PLOT_FILES[1]).mkdir()
    assert main([str(directory)]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"error: {directory}: the figures cannot be written there (") and len(err.splitlines()) == 1
    assert (directory / PLOT_FILES[0]).read_bytes()[:8] == PNG_MAGIC
    assert not list(directory.glob(".*.tmp"))


def test_cli_of_a_metric_with_no_value_per_epoch_draws_every_figure(tmp_path: Path) -> None:
    """--metric epochs_completed, one the CLI offers: it printed the summary, then exited 2 with no figure (the
    learning curves had no per-epoch column of it); they draw the search's own metric, the best by the asked one."""
    directory = fx.build_search(tmp_path / "s")
    assert main([str(directory), "--metric", "epochs_completed"]) == 0
    assert all((directory / name).stat().st_size > 0 for name in PLOT_FILES)
    ax = learning_curves(load(directory), "epochs_completed").axes[0]
    assert ax.get_ylabel() == "valid_loss"
    assert [line.get_label() for line in ax.get_lines() if line.get_label().startswith("best")] == [
        "best: t0 (epochs_completed 4)"
    ]


def test_cli_of_an_unknown_metric_is_one_error_line(search: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(search), "--metric", "perplexity"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown metric 'perplexity'") and len(err.splitlines()) == 1


def test_the_summary_prints_a_loss_in_4_decimals_a_rate_in_whole_tokens_and_a_tiny_value_in_4_figures():
    from artune.results.cli import metric_text

    assert [metric_text(v) for v in (2.99984, 0.0, 29330.4, 0.000123456, 0.5)] == [
        "2.9998",
        "0.0000",
        "29,330",
        "0.0001235",
        "0.5000",
    ]
