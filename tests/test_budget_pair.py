"""bench/budget_pair.py stays runnable: two tiny trials side by side to one deadline, through its CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SPACE = """
search: {epochs: 50}
fixed: {seq_len: 16, batch_size: 4, batches_per_epoch: 5, n_layers: 1, n_heads: 2, sample_tokens: 0,
        optimizer: adamw, lr_schedule: cosine, device: cpu}
params:
  d_model: {choice: [16, 32]}
  lr: {loguniform: [1e-3, 1e-2]}
"""


def run(args, tmp_path, shakespeare_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return subprocess.run(
        [sys.executable, "-m", "bench.budget_pair", "--space", str(space), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ARTUNE_DATA_DIR": str(shakespeare_path.parent)},
    )


def test_two_sides_train_to_one_deadline_with_their_decay_fitted_to_it(tmp_path, shakespeare_path):
    """On a simulated clock (a tenth of a second per look), so that what fits is the same on any machine."""
    report = tmp_path / "pair.json"
    result = run(
        [
            "--seconds",
            "4",
            "--tick",
            "0.1",
            "--set",
            "d_model=16",
            "--set",
            "lr=3e-3",
            "--a",
            "lr_min_ratio=0.1",
            "--b",
            "lr_min_ratio=0.0",
            "--json",
            str(report),
        ],
        tmp_path,
        shakespeare_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["configs"]["a"]["lr_min_ratio"] == 0.1 and data["configs"]["b"]["lr_min_ratio"] == 0.0
    assert data["configs"]["a"]["d_model"] == 16 and data["configs"]["a"]["epochs"] == 50
    assert len(data["epochs"]["a"]) == len(data["epochs"]["b"])  # one deadline, one pace
    for side, floor in (("a", 0.1), ("b", 0.0)):
        epochs = data["epochs"][side]
        assert 3 <= len(epochs) < 50  # the deadline ended it, not its 50 epochs
        assert epochs[0]["lr"] > 0.9 * 3e-3  # undecayed at first
        assert epochs[-1]["lr"] == pytest.approx(floor * 3e-3, abs=1e-12)  # its decay ends with the last epoch that fit
        assert f"side {side} (d_model=16 lr=3e-3 lr_min_ratio=" in result.stdout


def test_a_searched_knob_left_open_is_one_line(tmp_path, shakespeare_path):
    result = run(["--seconds", "1", "--set", "d_model=16"], tmp_path, shakespeare_path)
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: the trial needs a value for each searched knob: --set lr=..."
    )


def test_an_unknown_knob_is_one_line(tmp_path, shakespeare_path):
    result = run(
        ["--seconds", "1", "--set", "d_model=16", "--set", "lr=3e-3", "--a", "d_modle=32"], tmp_path, shakespeare_path
    )
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: --set d_modle: ")
        and "\n" not in result.stderr.strip()
    )
