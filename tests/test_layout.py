"""The house rules of artune/'s layout, held by the code itself: no import cycle, no module grown into several,
other projects' internals in compat.py only, Ray at the edges only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ARTUNE = Path(__file__).resolve().parent.parent / "artune"
MODULES = {
    ".".join(path.relative_to(ARTUNE.parent).with_suffix("").parts).removesuffix(".__init__"): path
    for path in sorted(ARTUNE.rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def runtime_imports(path: Path) -> set[str]:
    """Every module an artune module imports when it runs (module level or inside a function), without the
    imports under ``if TYPE_CHECKING:``, which only a type checker follows."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)  # `from pkg import module`
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH = {name: {m for m in runtime_imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_no_module_imports_one_that_imports_it():
    cycles, state = [], {}

    def walk(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(GRAPH[name]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt, [*trail, nxt])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            walk(name, [name])
    assert not cycles, cycles


def test_no_module_holds_more_than_about_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(sizes.values()) <= 500, {name: n for name, n in sizes.items() if n > 500}


def test_other_projects_internals_are_used_in_compat_only():
    # ray._private and the like, and issue 24's own check (grep "_private\|torch\._"), which a name such as
    # refuse_private_instance would fail
    internal = re.compile(r"ray\._private|ray\.[a-z_.]*\._internal|_raylet|torch\._[a-z]|_private|torch\._")
    outside = [
        f"{name}:{n}"
        for name, path in MODULES.items()
        if name != "artune.compat"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if internal.search(line)
    ]
    assert not outside, outside


def test_ray_is_imported_at_the_edges_only():
    """The trainer runs, and is tested, without Ray: only the trainable, the search driver and compat.py (inside
    its functions) import it."""
    edges = {"artune.trainable", "artune.compat"}
    importers = {name for name, path in MODULES.items() if any(m.split(".")[0] == "ray" for m in runtime_imports(path))}
    assert importers - edges == {name for name in importers if name.startswith("artune.search.")}
    assert (
        importers & {"artune.train", "artune.train.trainer", "artune.config", "artune.data", "artune.models"} == set()
    )
