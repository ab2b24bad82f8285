"""check_configs: every corner of a space builds a valid TrainConfig, or the error names the line at fault."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from artune.spaces import MAX_CORNERS, SpaceError, load_space
from tests.test_spaces import line_of, write


def test_check_configs_names_the_offending_line(tmp_path: Path) -> None:
    text = "fixed:\n  n_heads: 4\nparams:\n  lr: {loguniform: [1e-4, 1e-2]}\n  d_model: {choice: [64, 96, 90]}\n"
    space = load_space(write(tmp_path, text))
    with pytest.raises(SpaceError) as info:
        space.check_configs()
    message = str(info.value)
    assert "n_heads must divide d_model, but got d_model=90, n_heads=4" in message
    assert line_of(message) == [5] and "params.d_model" in message


def test_check_configs_sees_conditions(tmp_path: Path) -> None:
    # noam needs warmup > 0: conditional warmup from 1 is fine, an unconditional one from 0 is not.
    optimizer = "params:\n  optimizer: {choice: [adam, noam]}\n"
    load_space(write(tmp_path, optimizer + "  warmup: {int: [1, 9], when: {optimizer: noam}}\n")).check_configs()
    bad = load_space(write(tmp_path, optimizer + "  warmup: {int: [0, 9]}\n", "b.yaml"))
    with pytest.raises(SpaceError, match=r"b\.yaml:2: params\.optimizer: .*noam' needs warmup > 0"):
        bad.check_configs()


def test_check_configs_many_corners_checks_pairs(tmp_path: Path) -> None:
    knobs = "\n".join(f"  {k}: {{uniform: [0.1, 0.5]}}" for k in ("dropout", "weight_decay", "grad_norm_clip", "lr"))
    text = (
        f"params:\n  d_model: {{choice: [32, 48, 64, 80, 96, 99]}}\n  n_heads: {{choice: [1, 2, 4, 8]}}\n"
        f"{knobs}\n  seq_len: {{int: [8, 64], step: 8}}\n"
    )
    space = load_space(write(tmp_path, text))
    with pytest.raises(SpaceError, match="d_model=99, n_heads=2"):
        space.check_configs()


def test_check_configs_pairs_vary_what_switches_a_knob_on(tmp_path: Path) -> None:
    """Past MAX_CORNERS, a pair whose knob is conditional is crossed with the values of its condition:
    at the others' first corner (optimizer adam) n_heads is never sampled."""
    text = (
        "params:\n  d_model: {choice: [96, 64]}\n  optimizer: {choice: [adam, adamw]}\n"
        "  n_heads: {choice: [4, 3], when: {optimizer: adamw}}\n  n_layers: {int: [1, 16]}\n"
        "  weight_decay: {choice: [0.0, 0.1]}\n  dropout: {choice: [0.0, 0.1]}\n  warmup: {int: [0, 20]}\n"
    )
    space = load_space(write(tmp_path, text))
    assert math.prod(len(d.corners()) for d in space.params.values()) > MAX_CORNERS
    with pytest.raises(SpaceError, match=r"d_model=64, n_heads=3"):
        space.check_configs()


def test_check_configs_every_value_of_an_int_range_of_up_to_32_and_one_line_per_knob(tmp_path: Path) -> None:
    text = "params:\n  d_model: {int: [96, 672], step: 32}\n  n_heads: {choice: [3, 6]}\n"  # 19 values
    with pytest.raises(SpaceError) as info:
        load_space(write(tmp_path, text)).check_configs()
    message = str(info.value)
    assert message.count("params.d_model") == 1, message
    expected = "n_heads must divide d_model, but got d_model=128, n_heads=3 (and 23 more such configs)"
    assert message.endswith(expected), message
