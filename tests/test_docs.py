"""docs/ and the README: every relative link resolves, and the reference pages say what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from artune.config import FIELD_NAMES, reference_markdown, reference_table

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(
    [REPO / "README.md", REPO / "search_spaces" / "README.md", REPO / "results" / "README.md", *DOCS.glob("*.md")]
)
USAGE = (DOCS / "usage.md").read_text()

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target) and ![alt](target "title")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens, -1 for a repeat."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # a "# comment" in code is no heading
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{counts[slug]}" if slug in counts else slug)
        counts[slug] = counts.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_pages_have_links_to_check():
    assert (DOCS / "benchmarks.md") in PAGES and (DOCS / "experiments.md") in PAGES
    assert len(relative_links(REPO / "README.md")) >= 8


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading '#{anchor}' in {file.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_check_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A `title`: here\n\n[ok](#a-title-here) [gone](missing.md) [bad](#nowhere) `[code](x.md)`\n")
    assert anchors(page) == {"a-title-here"}
    assert relative_links(page) == ["#a-title-here", "missing.md", "#nowhere"]


def test_the_configuration_reference_is_generated_from_trainconfig():
    """docs/configuration.md is the output of the command it names, byte for byte."""
    committed = (DOCS / "configuration.md").read_text()
    command = "python -m artune.config --markdown > docs/configuration.md"
    assert command in committed
    generated = subprocess.run(
        [sys.executable, "-m", "artune.config", "--markdown"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    assert generated == reference_markdown() == committed, f"docs/configuration.md is stale: run {command}"


def test_the_configuration_reference_is_the_one_trainconfig_prints():
    page = (DOCS / "configuration.md").read_text()
    block = page.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert block.strip() == reference_table()
    for name in FIELD_NAMES:
        assert f"| `{name}` |" in block


def test_every_cli_option_is_documented():
    from artune.search import build_parser

    options = {o for action in build_parser()._actions for o in action.option_strings if o.startswith("--")}
    for option in options - {"--help"}:
        assert f"`{option}" in USAGE, f"{option} is not in docs/usage.md"


@pytest.mark.parametrize("module", ["artune.results", "artune.train"])
def test_every_option_of_the_other_commands_is_documented(module):
    """Their own options are in docs/usage.md; train's TrainConfig flags are in docs/configuration.md."""
    help_text = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", help_text)) - {"--help"}
    assert options
    reference = (DOCS / "configuration.md").read_text()
    for option in options:
        if option[2:].replace("-", "_") in FIELD_NAMES:  # --seq_len, or --seq-len: the same knob
            assert f"| `{option[2:].replace('-', '_')}` |" in reference
        else:
            assert f"`{option}" in USAGE, f"{module}'s {option} is not in docs/usage.md"


def test_the_exit_codes_in_usage_are_the_search_commands():
    table = USAGE.split("| exit code | when |")[1].split("\n\n")[0]
    assert re.findall(r"^\| (\d+) \|", table, re.M) == ["0", "1", "2", "3", "4", "130", "141", "143"]

    def search(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "artune.search", *args], cwd=REPO, capture_output=True, text=True, check=False
        )

    assert search("search_spaces/smoke.yaml", "--dry-run").returncode == 0
    bad = search("search_spaces/no_such_space.yaml", "--dry-run")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_search_space_example_is_a_space_the_loader_accepts(tmp_path):
    """A reader copies it: it must load, and every config it can sample must be valid (it was refused once)."""
    from artune.spaces import load_space

    text = (DOCS / "search_spaces.md").read_text()
    example = tmp_path / "example.yaml"
    example.write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    space = load_space(example)
    space.check_configs()
    assert {"d_model", "lr", "optimizer", "warmup"} <= set(space.params)
