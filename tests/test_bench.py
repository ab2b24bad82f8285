"""python -m bench refuses a bad --compile-set, naming the key, rule and value, before it measures anything."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("bogus=1", "--compile-set: unknown key 'bogus'"),
        ("lr=x", "--compile-set: lr must be a number, but got 'x'"),
        ("lr", "--compile-set: expected KEY=VALUE, but got 'lr'"),
        ("activation=swiglue", "did you mean 'swiglu'"),
    ],
)
def test_a_bad_compile_set_is_refused_before_measuring(item, fragment):
    result = subprocess.run(
        [sys.executable, "-m", "bench", "compile", "--compile-set", item],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert fragment in lines[-1] and "Traceback" not in result.stderr, result.stderr
