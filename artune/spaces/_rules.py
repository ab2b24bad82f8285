"""The rules that span a space's sections: conditions that can hold, no cycles, a finite grid that holds the
trials."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from artune.config import ConfigError, TrainConfig
from artune.humanize import show
from artune.spaces._errors import Errors

if TYPE_CHECKING:
    from artune.spaces._distribution import Distribution
    from artune.spaces._space import SearchSpace

GRID_LIMIT = 100_000  # most grid points the grid sampler is allowed to enumerate


def check_space(space: SearchSpace, errors: Errors, unknown: frozenset = frozenset()) -> None:
    """Rules that span params, fixed and settings: conditions that can hold, no cycles, a finite grid.

    A condition that reads a knob in ``unknown`` (refused by an earlier check) is not judged.
    """
    for name, dist in space.params.items():
        where = f"{space.path}:{dist.line}"
        for knob, allowed in (dist.when or {}).items():
            if knob in unknown:
                continue
            key = f"params.{name}.when.{knob}"
            if knob in space.params:
                other = space.params[knob]
                # a value the knob cannot be sampled as: a typo beside a good one, or a number off its steps
                never = [v for v in allowed if not other.can_take(v)]
                if other.when is not None:  # where its own condition is off, the knob keeps its baseline
                    never = [v for v in never if v != space.baseline(knob)]
                if other.kind in ("uniform", "loguniform") and other.step is None:
                    errors.add(
                        where,
                        key,
                        f"a condition on a continuous knob holds only by chance, since {knob} is {other.describe()}; "
                        f"give {knob} a step, or make it a choice",
                    )
                elif len(never) == len(allowed):
                    errors.add(
                        where,
                        key,
                        f"the condition can never hold, since {knob} is {other.describe()}, "
                        f"but got {show(list(allowed))}",
                    )
                elif never:
                    rule = f"{knob} is {other.describe()}, so it is never {show(never)}, but the condition has it"
                    errors.add(where, key, rule)
            elif space.baseline(knob) not in allowed:
                wrong = fixed_value_error(knob, space.fixed[knob]) if knob in space.fixed else None
                if wrong is not None:  # a typo in the fixed value: that line is the one to fix, not the condition
                    errors.add(space.sources.get(f"fixed.{knob}", f"{space.path}:1"), f"fixed.{knob}", wrong)
                    continue
                if knob in space.fixed:
                    origin = "fixed"
                elif knob == "epochs":
                    origin = "search.epochs"
                else:
                    origin = "TrainConfig's default"
                errors.add(
                    where,
                    key,
                    f"the condition can never hold, since {knob} is {show(space.baseline(knob))} "
                    f"({origin}), but got {show(list(allowed))}",
                )
    workers = space.settings.workers
    batch_size = space.baseline("batch_size")
    # each data-parallel worker takes rows of every global batch: one with none would have nothing to train
    # (a batch_size below 1 is the config's own error, named where it was given)
    if "batch_size" not in space.params and isinstance(batch_size, int) and 1 <= batch_size < workers:
        source = space.sources.get("search.workers", f"{space.path}:1")
        errors.add(
            source,
            None if source.startswith("--") else "search.resources.workers",  # a flag names itself
            f"workers <= batch_size must hold (each worker takes rows of every batch), "
            f"but got workers={workers}, batch_size={batch_size}",
        )
    elif "batch_size" in space.params and workers > 1:
        dist = space.params["batch_size"]
        values = space.possible_values("batch_size")
        smallest = min((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 1), default=None)
        if smallest is not None and smallest < workers:
            given = space.sources.get("search.workers", "")
            from_flag = f" ({given})" if given.startswith("--") else ""
            errors.add(
                f"{space.path}:{dist.line}",
                "params.batch_size",
                f"workers <= batch_size must hold for every batch_size a trial can get (each worker takes rows of "
                f"every batch), but got workers={workers}{from_flag} and batch_size {smallest}",
            )
    cycle = find_cycle(space.params)
    if cycle:
        first = space.params[cycle[0]]
        errors.add(
            f"{space.path}:{first.line}",
            f"params.{cycle[0]}.when",
            f"conditions must not form a cycle, but got {' -> '.join(cycle)}",
        )
    if space.settings.sampler == "grid":
        size = 1
        for name, dist in space.params.items():
            count = dist.grid_size()
            if count is None:
                source = space.sources.get("search.sampler", "")
                via = f" (set by {source})" if source.startswith("--") else ""
                errors.add(
                    f"{space.path}:{dist.line}",
                    f"params.{name}",
                    f"the grid sampler{via} needs a finite set of values, but {name} is {dist.describe()} "
                    "(fix: {choice: [...]}, a uniform step, or another sampler)",
                )
            else:
                size *= count
        if size > GRID_LIMIT:
            rule = f"the grid must have at most {GRID_LIMIT} points, but got {size}"
            rule += " (fix: fewer values, or another sampler)"
            source = space.sources.get("search.sampler", f"{space.path}:1")
            errors.add(source, None if source.startswith("--") else "search.sampler", rule)


def find_cycle(params: dict[str, Distribution]) -> Optional[list[str]]:
    """The knobs of one cycle of conditions (the first knob again at the end), or None where there is none."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> Optional[list[str]]:
        state[name] = 1
        for dep in params[name].when or {}:
            if dep not in params:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep] if dep in path else [name, dep]
            if state.get(dep) is None:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[name] = 2
        return None

    for name in params:
        if state.get(name) is None:
            found = visit(name, [name])
            if found:
                return found
    return None


def sampling_order(params: dict[str, Distribution]) -> dict[str, Distribution]:
    """File order, except that a conditional knob moves after the knobs its condition reads."""
    ordered: dict[str, Distribution] = {}

    def place(name: str) -> None:
        if name in ordered:
            return
        for dep in params[name].when or {}:
            if dep in params:
                place(dep)
        ordered[name] = params[name]

    for name in params:
        place(name)
    return ordered


def fixed_value_error(knob: str, value: object) -> Optional[str]:
    """What is wrong with a fixed knob's value by itself (``optimizer: nom``), or None: the rules of its own field,
    not those that read another knob (``n_heads`` must divide ``d_model``)."""
    try:
        TrainConfig.from_dict({knob: value})
    except (ConfigError, ValueError, TypeError) as error:
        own = [m for m in str(error).split("; ") if m.startswith(f"{knob} must be")]
        return own[0] if own else None
    return None


def check_grid_fits(space: SearchSpace, drawn: int = 0) -> None:
    """A grid search's num_samples fits the grid points not drawn yet (``drawn`` by an extended search's earlier
    runs): past them, Optuna's grid sampler draws points again, trials that train a trained configuration.
    Checked once the command line's settings apply (a file without num_samples has the default's 16)."""
    s = space.settings
    if s.sampler != "grid":
        return
    size = space.grid_points()
    left = max(0, size - drawn)
    if s.num_samples <= left:
        return
    source = space.sources.get("search.num_samples", f"{space.path}:1")
    key = None if source.startswith("--") else "search.num_samples"
    setting = "--num-samples" if key is None else "num_samples:"
    if drawn:
        points = f"the grid has {size} points and the search's earlier runs drew {drawn}: {left} left"
        fix = f"{setting} {left}" if left else "every point has run: nothing is left to extend"
    else:
        points, fix = f"the grid has {size} points, a trial each", f"{setting} {size}; --repeats R runs each R times"
    errors = Errors()
    rule = f"{points}, but num_samples is {s.num_samples}: {s.num_samples - left} of them would train a point "
    errors.add(source, key, rule + f"already trained (fix: {fix})")
    errors.raise_if_any()
