"""Checking that every corner of a space builds a valid TrainConfig, before any trial is spent on it."""

from __future__ import annotations

import itertools
import math
import re
from typing import TYPE_CHECKING, Any, Iterator

from artune.errors import ConfigError
from artune.spaces._errors import Errors

if TYPE_CHECKING:
    from artune.spaces._space import SearchSpace

MAX_CORNERS = 256  # beyond this many corner configs, check_configs checks every pair of params instead


def check_configs(space: SearchSpace) -> None:
    """Build a TrainConfig for every corner of the space; raise SpaceError naming the lines at fault.

    Corners are every choice, every value of a narrow int range and the ends of wider ranges.
    Where their product exceeds MAX_CORNERS, every pair of knobs is crossed instead, with every
    corner of the knobs their conditions read (the others at their first corner), which still
    catches the usual two-knob rules such as n_heads | d_model, conditional knobs included.
    """
    names = list(space.params)
    corners = {name: space.params[name].corners() for name in names}
    total = math.prod(len(c) for c in corners.values())
    if total <= MAX_CORNERS:
        combos: Any = itertools.product(*(corners[n] for n in names))
    else:
        combos = _pairwise(space, names, corners)
    broken: list[tuple[str, dict[str, Any]]] = []  # the rule each invalid config broke, and the config
    invalid = 0
    seen: set[tuple] = set()
    for combo in combos:
        sampled: dict[str, Any] = {}
        for name, value in zip(names, combo, strict=True):
            if not space.params[name].when or space.holds(space.params[name].when, sampled):
                sampled[name] = value
        key = tuple(sorted(sampled.items(), key=lambda kv: kv[0]))
        if key in seen:
            continue
        seen.add(key)
        try:
            space.config_for(sampled)
        except (ConfigError, ValueError, TypeError, OverflowError, ArithmeticError) as error:
            broken += [(message, sampled) for message in str(error).split("; ")]
            invalid += 1
    # where no config the space can sample is valid, a --set that the errors name is the one to change
    none_valid = invalid == len(seen)
    found: dict[tuple[str, str], list[str]] = {}  # (line, knob): the rule each invalid config broke there
    for message, sampled in broken:
        found.setdefault(_blame(space, message, sampled, none_valid), []).append(message)
    errors = Errors()
    for (where, key_name), messages in found.items():
        if key_name.startswith("fixed.") and len(set(messages)) == 1:  # the fixed value alone breaks the rule
            errors.add(where, key_name, messages[0])
            continue
        more = f" (and {len(messages) - 1} more such configs)" if len(messages) > 1 else ""
        errors.add(where, key_name, f"a config this space can sample is invalid: {messages[0]}{more}")
    errors.raise_if_any()


def _pairwise(space: SearchSpace, names: list[str], corners: dict[str, list]) -> Iterator[tuple]:
    base = [corners[n][0] for n in names]
    yield tuple(base)
    index = {name: k for k, name in enumerate(names)}
    for i, j in itertools.combinations(range(len(names)), 2):
        # the pair, and what switches either of them on: a pair whose condition is false at the
        # others' first corner would otherwise never be built
        conditions = _condition_knobs(space, names[i], names[j])
        varied = [i, j] + sorted(index[p] for p in conditions if index[p] not in (i, j))
        for values in itertools.product(*(corners[names[k]] for k in varied)):
            combo = list(base)
            for k, value in zip(varied, values, strict=True):
                combo[k] = value
            yield tuple(combo)


def _condition_knobs(space: SearchSpace, *names: str) -> set[str]:
    """The searched knobs that the conditions of ``names`` read, and those of their conditions in turn."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        when = space.params[todo.pop()].when or {}
        for knob in when:
            if knob in space.params and knob not in found:
                found.add(knob)
                todo.append(knob)
    return found


def _blame(space: SearchSpace, message: str, sampled: dict[str, Any], none_valid: bool) -> tuple[str, str]:
    """Where a TrainConfig error is to be fixed: the file line of the first searched knob it mentions, else of a
    fixed one (one given on the command line first: what the user just typed). Where no config the space can
    sample is valid (``none_valid``), a ``--set`` it mentions comes first: no value of the searched knob fits it."""

    def mentioned(name: str) -> bool:
        return re.search(rf"\b{re.escape(name)}\b", message) is not None

    typed = [name for name in space.fixed if space.sources.get(f"fixed.{name}", "").startswith("--")]
    for name in typed if none_valid else []:
        if mentioned(name):
            return space.sources[f"fixed.{name}"], f"fixed.{name}"
    for name in space.params:
        if name in sampled and mentioned(name):
            return f"{space.path}:{space.params[name].line}", f"params.{name}"
    for name in sorted(space.fixed, key=lambda name: name not in typed):
        if mentioned(name):
            return space.sources.get(f"fixed.{name}", f"{space.path}:1"), f"fixed.{name}"
    if mentioned("epochs"):
        return space.sources.get("search.epochs", f"{space.path}:1"), "search.epochs"
    for name in space.params:
        if mentioned(name):
            return f"{space.path}:{space.params[name].line}", f"params.{name}"
    return f"{space.path}:1", "fixed"
