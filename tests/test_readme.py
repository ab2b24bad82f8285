"""The README is the front door: short, and true about what it states."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    """Reference material goes to docs/ (tests/test_docs.py keeps it linked and true)."""
    assert len(README.splitlines()) <= 200


def test_the_test_command_is_the_one_ci_runs():
    command = re.search(r"^(python -m pytest[^#\n]*?)\s*(#.*)?$", README, re.M).group(1)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(command)}$", ci, re.M), command
    assert 'pip install --quiet -e ".[dev]"' in ci and 'pip install -e ".[dev]"' in README


def test_the_install_puts_cpu_torch_first_as_ci_does():
    """The README's install: torch's CPU wheel (in the range pyproject.toml allows), then the package; .ci/run
    installs torch before the package too."""
    cpu = README.index('pip install "torch>=2.13,<2.14" --index-url https://download.pytorch.org/whl/cpu')
    assert cpu < README.index("pip install -e .  ") < README.index('pip install -e ".[dev]"')  # to use it; the tests
    assert '"torch>=2.13,<2.14"' in (REPO / "pyproject.toml").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("pip install --quiet torch==2.13.") < ci.index('pip install --quiet -e ".[dev]"')


def test_every_docs_page_is_linked_from_the_readme():
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in README, f"the README does not link docs/{page.name}"


def test_the_commands_the_readme_runs_name_files_that_exist():
    for space in re.findall(r"python -m artune\.search (search_spaces/\S+\.yaml)", README):
        assert (REPO / space).is_file(), space
