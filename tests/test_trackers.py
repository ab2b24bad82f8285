"""``--log`` (the trackers): named and checked before Ray starts. What they record is read back in test_live.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from artune.search import make_plan, parse_args
from artune.spaces import SpaceError

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "search_spaces" / "smoke.yaml"


def without(module: str, *args: str) -> subprocess.CompletedProcess:
    """The search's command line in a Python where ``module`` cannot be imported (as where it is not installed)."""
    code = f"import sys; sys.modules[{module!r}] = None; from artune.search.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("tracker", "module"), [("mlflow", "mlflow"), ("tensorboard", "tensorboardX")])
def test_a_tracker_whose_package_is_missing_is_refused_in_one_line_naming_the_extra(tmp_path, tracker, module):
    result = without(module, str(SMOKE), "--results-dir", str(tmp_path), "--name", "t", "--log", tracker)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"error: --log: {tracker} needs {module}, which is not installed "
        f"(fix: pip install -e '.[{tracker}]' in artune's clone)"
    ]
    assert not (tmp_path / "t").exists()  # refused before anything was made, Ray included


def test_the_trackers_are_named_once_whatever_the_form_and_an_unknown_one_is_refused(tmp_path):
    plan = make_plan(
        parse_args([str(SMOKE), "--results-dir", str(tmp_path), "--log", "mlflow,tensorboard", "--log", "mlflow"])
    )
    assert plan.space.settings.log == ("mlflow", "tensorboard")
    assert make_plan(parse_args([str(SMOKE), "--results-dir", str(tmp_path)])).space.settings.log == ()
    with pytest.raises(SpaceError, match=r"^--log: log must name tensorboard or mlflow, but got 'wandb'$"):
        make_plan(parse_args([str(SMOKE), "--results-dir", str(tmp_path), "--log", "wandb"]))
    space = tmp_path / "s.yaml"
    space.write_text(SMOKE.read_text().replace("  epochs: 3\n", "  epochs: 3\n  log: tensorboard\n"))
    assert make_plan(parse_args([str(space), "--results-dir", str(tmp_path)])).space.settings.log == ("tensorboard",)
