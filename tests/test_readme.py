"""The README is the front door: keep what it states true."""

from __future__ import annotations

import re
from pathlib import Path

from artune.config import FIELD_NAMES, reference_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_the_configuration_reference_is_the_one_trainconfig_prints():
    block = README.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip() == reference_table()
    for name in FIELD_NAMES:
        assert f"| `{name}` |" in block


def test_the_test_command_is_the_one_ci_runs():
    assert "python -m pytest\n" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^python -m pytest\b", ci, re.M)
    assert 'pip install --quiet -e ".[dev]"' in ci and 'pip install -e ".[dev]"' in README


def test_every_cli_option_is_documented():
    from artune.search import build_parser

    options = {o for action in build_parser()._actions for o in action.option_strings if o.startswith("--")}
    for option in options - {"--help"}:
        assert f"`{option}" in README, f"{option} is not in the README"
