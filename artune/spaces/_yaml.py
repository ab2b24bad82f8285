"""A YAML reader for search-space files that keeps each mapping's and key's line, for error messages.

It is PyYAML's SafeLoader (plain data only), which also reports duplicate keys and reads 1e-3 as a number.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from artune.errors import SpaceError


class _Map(dict):
    """A YAML mapping that remembers its own line and each key's line (1-based)."""

    line = 1
    lines: dict


class _Seq(list):
    """A YAML sequence that remembers its line (1-based)."""

    line = 1


# YAML 1.1 reads 1e-3 (and 1.0e3, without a signed exponent) as text; a search-space file means a number.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader (no python tags) that keeps line numbers, reports duplicate keys and reads 1e-3 as a float."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int, int]] = []


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    # Duplicates are looked for among the mapping's own keys: keys merged in with '<<' may be overridden.
    own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged = len(node.value) - own
    data = _Map()
    data.line = node.start_mark.line + 1
    data.lines = {}
    first_lines: dict[Any, int] = {}
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            problem = "found a key that is a list or mapping"
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, problem, key_node.start_mark
            ) from None
        if index >= merged:
            if key in first_lines:
                loader.duplicates.append((key, line, first_lines[key]))
            else:
                first_lines[key] = line
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line
    return data


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    data = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    data.line = node.start_mark.line + 1
    return data


# YAML 1.1 also reads 1:30 as 90 (base 60) and 012 as 10 (octal), where a search-space file means a duration or
# a twelve: numbers here are YAML 1.2's, decimal (or 0x hexadecimal), and 1:30 or 012 stay text, which the rules
# then read as such (a duration's form is refused; 012 is 12).
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBERS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def parse_yaml(text: str, label: str) -> tuple[Any, list[tuple[Any, int, int]]]:
    """The document in ``text``, and each duplicate key as (key, line, first line); SpaceError where it is not
    YAML of plain data. ``label`` (the file's name) starts every error."""
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here already
        return loader.get_single_data(), loader.duplicates
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else f"{label}:1"
        problem = " ".join(str(error.problem or error.context or "invalid YAML").split())
        tag = re.search(r"constructor for the tag '([^']*)'", problem)
        if tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            kind = "python tags are" if "python/" in shown else "custom tags are"
            rule = f"a search-space file holds plain data only, so {kind} refused, but got {shown}"
            raise SpaceError(f"{where}: {rule}") from None
        context = " ".join(str(error.context).split()) if error.context and error.problem else ""
        raise SpaceError(f"{where}: YAML syntax: {problem}" + (f" ({context})" if context else "")) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise SpaceError(
            f"{label}:{line}: a search-space file must be printable text, but got character U+{error.character:04X}"
        ) from None
    except yaml.YAMLError as error:
        raise SpaceError(f"{label}:1: YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise SpaceError(f"{label}:1: YAML: nesting is too deep (or an alias refers to itself)") from None
    finally:
        if loader is not None:
            loader.dispose()


def line_of(value: Any, default: int = 1) -> int:
    """The line a parsed mapping or sequence starts on (``default`` for a scalar)."""
    return getattr(value, "line", default)


def key_line(mapping: Any, key: Any, default: int = 1) -> int:
    """The line of ``key`` in a parsed mapping, else the mapping's own line."""
    lines = getattr(mapping, "lines", None)
    if lines is not None and key in lines:
        return lines[key]
    return getattr(mapping, "line", default)
