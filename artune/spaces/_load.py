"""Reading a search-space file: its bytes, its YAML, its three sections, then the rules across them.

Every problem is reported at once, in one SpaceError; each names the file and line, the key, the rule
and the value received.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from artune.errors import SpaceError
from artune.humanize import did_you_mean, show
from artune.spaces._errors import Errors
from artune.spaces._knobs import read_fixed, read_params
from artune.spaces._rules import check_space, sampling_order
from artune.spaces._settings import SearchSettings, check_settings, read_search
from artune.spaces._space import SearchSpace
from artune.spaces._yaml import key_line, line_of, parse_yaml

SECTIONS = ("search", "fixed", "params")


def load_space(path: str | Path) -> SearchSpace:
    """Read, parse and validate a search-space file; raise SpaceError listing every problem."""
    path = Path(path)
    label = str(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))
        fix = f" (fix: name a file inside it, e.g. {path / inside[0]})" if inside else ""
        raise SpaceError(f"{label}: a search-space file must be a YAML file, but got a directory{fix}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpaceError(
            f"{label}: search-space file not found (fix: pass a path such as search_spaces/smoke.yaml)"
        ) from None
    except OSError as error:
        raise SpaceError(f"{label}: cannot read the search-space file: {error.strerror or error}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SpaceError(
            f"{label}:{line}: a search-space file must be UTF-8 text, but got byte {data[error.start]:#04x}"
        ) from None
    document, duplicates = parse_yaml(text, label)
    errors = Errors()
    for key, line, first in duplicates:
        errors.add(
            f"{label}:{line}", show(key), f"keys must be unique, but got {show(key)} again (first at line {first})"
        )
    if document is None:
        rule = (
            "the file is empty (or only comments), but a search space holds at least one of its sections search:, "
            "fixed:, params: (see docs/search_spaces.md)"
        )
        errors.add(f"{label}:1", None, rule)
        errors.raise_if_any()
    if not isinstance(document, dict):
        errors.add(
            f"{label}:{line_of(document)}",
            None,
            f"the top level must be a mapping with sections search:, fixed:, params:, but got {show(document)}",
        )
        errors.raise_if_any()
    for key in document:
        if key not in SECTIONS:
            rule = f"unknown section{did_you_mean(key, SECTIONS)}, expected one of search, fixed, params"
            errors.add(f"{label}:{key_line(document, key)}", show(key), rule)
    sources: dict[str, str] = {}
    raw = read_search(document.get("search"), label, key_line(document, "search"), sources, errors)
    fixed = read_fixed(document.get("fixed"), label, key_line(document, "fixed"), sources, errors)
    params = read_params(document.get("params"), label, key_line(document, "params"), fixed, sources, errors)
    settings = check_settings(raw, sources, errors)
    # The rules across sections run even when something above was refused, so that every problem is reported
    # at once. A condition that reads a refused knob (or epochs, with the settings refused) is not judged:
    # it would be judged against a default the file does not mean. Refused settings leave the grid unchecked.
    unknown = frozenset(_refused_knobs(document, fixed, params) | ({"epochs"} if settings is None else set()))
    space = SearchSpace(
        path=path,
        text_sha256=sha,
        fixed=fixed,
        params=params,
        settings=settings or SearchSettings(),
        sources=sources,
        raw_settings=raw,
    )
    check_space(space, errors, unknown)
    errors.raise_if_any()
    return dataclasses.replace(space, params=sampling_order(space.params))


def _refused_knobs(document: dict, fixed: dict, params: dict) -> set:
    """The knobs the file writes under fixed: or params: with no settled value: refused, or both fixed and searched."""
    sections = (document.get("fixed"), document.get("params"))
    written = [set(section) if isinstance(section, dict) else set() for section in sections]
    return {k for k in written[0] | written[1] if k not in fixed and k not in params} | (written[0] & written[1])
