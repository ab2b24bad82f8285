"""notebooks/analyse_results.ipynb runs top to bottom (its cells assert on what they show) in a real kernel."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests import _results_fixture as fx
from tests._importance_fixture import add_trials

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "analyse_results.ipynb"


@pytest.fixture(scope="module")
def search_for_notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The search the notebook analyses: the fixture tables plus an Optuna study with 41 COMPLETE trials, the
    fewest that give parameter importances (swap in a real search here)."""
    directory = fx.build_search(tmp_path_factory.mktemp("results") / fx.NAME, optuna_db=True)
    add_trials(directory, 36)
    return directory


@pytest.fixture(scope="module")
def few_trials_search(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture search with its own study alone: 5 COMPLETE trials, too few for importances."""
    return fx.build_search(tmp_path_factory.mktemp("results") / fx.NAME, optuna_db=True)


def execute(directory: Path | str, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("ARTUNE_RESULTS", str(directory))  # the kernel inherits this process's environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str = "text/plain") -> list[str]:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and mime == "text/plain":
                found.append(output["text"])
            elif mime in output.get("data", {}):
                found.append(output["data"][mime])
    return found


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_notebook_runs_on_a_finished_search(search_for_notebook: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute(search_for_notebook, monkeypatch)  # a failing assert in any cell raises CellExecutionError
    text = "\n".join(outputs(notebook))
    assert f"search {fx.NAME!r} in {search_for_notebook}" in text
    assert "importance" in text and "skipped" not in text  # the Optuna study was found and read
    best = f"trial {fx.BEST_TRIAL}, epoch 4, best_valid_loss {fx.BEST_LOSS:.4f}, prompt 'It is':"
    assert f"{best}\n{fx.sample(fx.BEST_TRIAL, 4)}" in text
    assert len(outputs(notebook, "image/png")) == 3  # curves, knob effects, parallel coordinates


def test_the_notebook_takes_a_search_relative_to_the_repository(
    few_trials_search: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ARTUNE_RESULTS=results/<name> jupyter lab notebooks/...` from the repository: the kernel runs in notebooks/.
    With 5 finished trials the notebook says they are too few for importances, rather than show numbers."""
    relative = os.path.relpath(few_trials_search, REPO)
    assert not (NOTEBOOK.parent / relative).exists()  # not found from the kernel's own directory
    notebook = execute(relative, monkeypatch)
    text = "\n".join(outputs(notebook))
    assert f"search {fx.NAME!r} in {REPO / relative}" in text
    assert "skipped: too few finished trials for parameter importances: the study has 5 COMPLETE" in text
    assert not any("importance" in html for html in outputs(notebook, "text/html"))  # no table of numbers


def test_the_notebook_runs_on_a_search_where_no_trial_has_a_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = tmp_path / fx.NAME
    directory.mkdir()
    failed = [r for r in fx.records() if r.status in ("diverged", "error")]
    for record in failed:  # diverged in its first epoch: no value at all
        record.epochs = {epoch: m for epoch, m in record.epochs.items() if m.get("diverged")}
    fx.write_tables(directory, failed)
    fx.write_json_atomic(fx.manifest(), directory / fx.MANIFEST_FILE)
    text = "\n".join(outputs(execute(directory, monkeypatch)))
    assert "no trial has a best_valid_loss yet: {'diverged': 1, 'error': 1}" in text
    assert "no best trial: no trial has a value" in text


@pytest.mark.slow
def test_the_notebook_runs_on_a_real_search(smoke_search, monkeypatch: pytest.MonkeyPatch) -> None:
    result, directory = smoke_search
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = execute(directory, monkeypatch)
    text = "\n".join(outputs(notebook))
    assert f"search 'smoke' in {directory}" in text
    # the search's own Optuna study was found; a smoke search (ASHA leaves one trial COMPLETE) may
    # have too few finished trials for importances, and the notebook says so instead of failing
    assert "no Optuna study" not in text and "importance" in text
    assert len(outputs(notebook, "image/png")) == 3
