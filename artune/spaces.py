"""Search-space files -> validated Optuna spaces.

A search-space file (YAML, format in ``search_spaces/README.md``) has three sections: ``search``
(how many trials, on what resources, with which sampler and scheduler), ``fixed`` (TrainConfig knobs
held constant) and ``params`` (TrainConfig knobs searched). ``load_space`` checks all of it before
Ray starts, and ``check_configs`` checks that every corner of the space builds a valid TrainConfig,
so no trial is spent on a typo. Every error names the file and line, the key, the rule and the value.

The searcher is Optuna's define-by-run interface: ``SearchSpace.define_by_run`` is handed to Ray's
``OptunaSearch(space=...)`` and a knob keeps its TrainConfig name as its Optuna parameter name.
Optuna is imported lazily (only ``make_sampler`` needs it); Ray is never imported here.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from artune import plural
from artune.config import FIELD_NAMES, FIELDS, ConfigError, TrainConfig, as_int, coerce, field_type, unknown_key_message
from artune.errors import SpaceError  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import optuna

SECTIONS = ("search", "fixed", "params")
KINDS = ("loguniform", "uniform", "int", "choice")
OPTIONS = {"loguniform": ("when",), "uniform": ("step", "when"), "int": ("step", "log", "when"), "choice": ("when",)}
# Each metric the trainable reports, and the direction in which it gets better.
METRICS = {
    "valid_loss": "min",
    "valid_accuracy": "max",
    "train_loss": "min",
    "train_accuracy": "max",
    "tokens_per_sec": "max",
}
SAMPLERS = ("tpe", "random", "grid", "qmc", "cmaes")
SAMPLER_PACKAGES = {"qmc": "scipy", "cmaes": "cmaes"}  # imported lazily by Optuna's samplers; artune depends on both
SCHEDULERS = ("asha", "none")
# The knobs that make the corpus: the search encodes it once, before Ray starts, and hands it to every trial.
CORPUS_KNOBS = ("dataset", "tokenizer")
SEARCH_KEYS = ("metric", "mode", "num_samples", "max_concurrent", "resources", "epochs", "sampler", "seed", "scheduler", "time_budget")
RESOURCE_KEYS = ("cpu", "gpu")
SCHEDULER_KEYS = ("name", "grace_period", "reduction_factor")
MAX_CORNERS = 256  # beyond this many corner configs, check_configs checks every pair of params instead
ENUMERATE_INT = 32  # int ranges up to this many values are checked value by value, wider ones at their ends
GRID_LIMIT = 100_000  # most grid points the grid sampler is allowed to enumerate


# --------------------------------------------------------------------------- settings and params


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section, flattened; each is overridable from the CLI."""

    metric: str = "valid_loss"
    mode: str = "min"
    num_samples: int = 16
    max_concurrent: Optional[int] = None  # None: as many as the cluster has trial slots for
    cpu: float = 1.0  # per trial
    gpu: float = 0.0  # per trial; fractions share a GPU
    epochs: int = 10  # training epochs per trial, and ASHA's max_t
    sampler: str = "tpe"
    seed: Optional[int] = 0  # the sampler's seed (TrainConfig.seed seeds the model)
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    time_budget: Optional[float] = None  # seconds for the whole search, start-up included; None: no limit


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SearchSettings))
# Where each setting lives in the file, for error messages.
SETTING_KEYS = {
    **{name: f"search.{name}" for name in SETTING_NAMES},
    "cpu": "search.resources.cpu",
    "gpu": "search.resources.gpu",
    "scheduler": "search.scheduler.name",
    "grace_period": "search.scheduler.grace_period",
    "reduction_factor": "search.scheduler.reduction_factor",
}


@dataclass(frozen=True)
class Distribution:
    """One searched knob. ``when`` maps knobs to the values that switch this one on (None: always)."""

    name: str
    kind: str  # loguniform | uniform | int | choice
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None  # int: >= 1; uniform: None (continuous) or the grid spacing
    log: bool = False
    values: Optional[tuple] = None  # choice only
    when: Optional[dict[str, tuple]] = None
    line: int = 0

    def describe(self) -> str:
        if self.kind == "choice":
            text = "choice [" + ", ".join(_show(v) for v in self.values) + "]"
        else:
            text = f"{self.kind} [{_num(self.low)}, {_num(self.high)}]"
            if self.kind == "int" and self.step != 1:
                text += f" step {self.step}"
            if self.kind == "int" and self.log:
                text += " log"
            if self.kind == "uniform" and self.step is not None:
                text += f" step {_num(self.step)}"
        if self.when:
            text += "  when " + " and ".join(
                f"{k} == {_show(v[0])}" if len(v) == 1 else f"{k} in [{', '.join(_show(x) for x in v)}]"
                for k, v in self.when.items()
            )
        return text

    def optuna_distribution(self) -> "optuna.distributions.BaseDistribution":
        """The Optuna distribution ``define_by_run`` samples this knob from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "loguniform":
            return FloatDistribution(self.low, self.high, log=True)
        if self.kind == "uniform":
            return FloatDistribution(self.low, self.high, step=self.step)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step), log=self.log)
        return CategoricalDistribution(list(self.values))

    def grid_values(self) -> Optional[list]:
        """Every value this knob can take, or None where it is continuous."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        if self.kind == "uniform" and self.step is not None:
            # In decimal, from the numbers as written (as Optuna adjusts a step's high), so 0.1 + 2 * 0.1
            # is 0.3, not 0.30000000000000004: past high, which the grid sampler warns about and uses anyway.
            low, step = Decimal(repr(self.low)), Decimal(repr(self.step))
            return [min(float(low + i * step), self.high) for i in range(self.grid_size())]
        return None

    def grid_size(self) -> Optional[int]:
        if self.kind == "choice":
            return len(self.values)
        if self.kind == "int":
            return (int(self.high) - int(self.low)) // int(self.step) + 1
        if self.kind == "uniform" and self.step is not None:
            return int(round((self.high - self.low) / self.step)) + 1
        return None

    def corners(self) -> list:
        """The values check_configs builds configs from: every value where few, else the ends."""
        size = self.grid_size()
        if size is not None and size <= ENUMERATE_INT:
            return self.grid_values()
        if self.kind == "choice":
            return list(self.values)
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return [low] if low == high else [low, high]


@dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search-space file. Build it with ``load_space``."""

    path: Path
    text_sha256: str
    fixed: dict[str, Any]
    params: dict[str, Distribution]  # in sampling order: a conditional knob after what it depends on
    settings: SearchSettings
    # Where each fixed knob and setting came from ('file:line' or '--option'), for error messages.
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The settings as written (mode None where the file leaves it to the metric), for overrides.
    raw_settings: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------- overrides

    def with_overrides(self, flags: Optional[dict[str, str]] = None, **overrides: Any) -> "SearchSpace":
        """The space with CLI settings applied (None: keep the file's), revalidated; ``flags`` names each
        setting's command-line option in errors (default ``--<setting>``)."""
        errors = _Errors()
        raw = dict(self.raw_settings)
        sources = dict(self.sources)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in SETTING_NAMES:
                errors.add(f"--{name.replace('_', '-')}", None, f"unknown search setting{_did_you_mean(name, SETTING_NAMES)}")
                continue
            raw[name] = value
            sources[f"search.{name}"] = (flags or {}).get(name, f"--{name.replace('_', '-')}")
        errors.raise_if_any()
        settings = _settings(raw, sources, errors, overridden=True)
        errors.raise_if_any()
        space = dataclasses.replace(self, settings=settings, sources=sources, raw_settings=raw)
        _check_space(space, errors)
        errors.raise_if_any()
        return space

    def with_fixed(self, updates: dict[str, Any]) -> "SearchSpace":
        """The space with ``--set key=value`` applied: the value is coerced, a searched knob becomes fixed."""
        errors = _Errors()
        fixed = dict(self.fixed)
        params = dict(self.params)
        sources = dict(self.sources)
        for key, value in updates.items():
            where = f"--set {key}={value}"
            if key not in FIELD_NAMES:
                errors.add(where, None, unknown_key_message(str(key)))
                continue
            if key == "epochs":
                errors.add(where, None, "epochs is a search setting (ASHA's max_t), not a fixed knob (fix: --epochs N)")
                continue
            try:
                fixed[key] = coerce(key, value)
            except (ConfigError, ValueError, TypeError, OverflowError) as error:
                errors.add(where, None, str(error))
                continue
            params.pop(key, None)
            sources[f"fixed.{key}"] = where
        errors.raise_if_any()
        space = dataclasses.replace(self, fixed=fixed, params=params, sources=sources)
        _check_space(space, errors)
        errors.raise_if_any()
        return space

    # ---------------------------------------------------------------- sampling

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Sample every knob on an Optuna trial; return the constants for Ray to merge into the config.

        A conditional knob is suggested only when its ``when`` holds against the values sampled so
        far (or fixed, or TrainConfig's default); otherwise it is left out and keeps its default.
        """
        sampled: dict[str, Any] = {}
        for name, dist in self.params.items():
            if dist.when and not self._holds(dist.when, sampled):
                continue
            if dist.kind == "loguniform":
                sampled[name] = trial.suggest_float(name, dist.low, dist.high, log=True)
            elif dist.kind == "uniform":
                sampled[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
            elif dist.kind == "int":
                sampled[name] = trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step), log=dist.log)
            else:
                # Choices are coerced to the knob's type at load, so they are plain None/bool/int/float/str,
                # which Optuna's CategoricalDistribution and its storages accept.
                sampled[name] = trial.suggest_categorical(name, list(dist.values))
        return {**self.fixed, "epochs": self.settings.epochs}

    def active(self, config: dict[str, Any]) -> list[str]:
        """The searched knobs that ``define_by_run`` samples for a config (conditionals whose ``when`` holds)."""
        return [name for name, dist in self.params.items() if not dist.when or self._holds(dist.when, config)]

    def _baseline(self, name: str) -> Any:
        """A knob's value when it is not sampled: fixed, the epochs setting, or TrainConfig's default."""
        if name in self.fixed:
            return self.fixed[name]
        if name == "epochs":
            return self.settings.epochs
        return FIELDS[name].default

    def _holds(self, when: dict[str, tuple], sampled: dict[str, Any]) -> bool:
        return all((sampled[k] if k in sampled else self._baseline(k)) in allowed for k, allowed in when.items())

    def grid(self) -> dict[str, list]:
        """The grid sampler's grid: every value of every searched knob."""
        return {name: dist.grid_values() for name, dist in self.params.items()}

    def make_sampler(self, run: int = 1) -> "optuna.samplers.BaseSampler":
        """The Optuna sampler the settings name, seeded with ``settings.seed`` for a search's first run and
        ``seed + run - 1`` for the ``run``-th (``--extend``): a sampler that draws without looking at the
        history (random, QMC, TPE's first trials) would otherwise repeat the first run's draws."""
        import optuna

        s = self.settings
        # An extension's k-th run draws anew (seed + k - 1), but for the grid: its k-th trial runs the k-th
        # point of the grid as the seed shuffles it, so the same shuffle makes the warm-started trials (numbered
        # first) the points already run and an extension's trials the points after them.
        seed = None if s.seed is None else (s.seed + (0 if s.sampler == "grid" else run - 1)) % 2**32
        with warnings.catch_warnings():
            # group=True and QMCSampler are marked experimental; that is not news to a user of a sweep.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if s.sampler == "tpe":
                # Multivariate TPE models the knobs jointly; group splits the joint model where
                # conditional knobs make trials' search spaces differ. constant_liar makes the concurrent
                # asks of a Ray sweep see running trials as bad, so they spread out instead of repeating.
                return optuna.samplers.TPESampler(
                    seed=seed,
                    multivariate=True,
                    group=any(d.when for d in self.params.values()),
                    constant_liar=True,
                    n_startup_trials=max(2, min(10, s.num_samples // 4)),
                )
            if s.sampler == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            if s.sampler == "grid":
                return optuna.samplers.GridSampler(self.grid(), seed=seed)
            if s.sampler == "qmc":
                # Scrambling is what makes the seed matter. Choices are drawn at random, not by QMC.
                return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
            # CMA-ES optimises the numeric knobs; choices fall back to random sampling.
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)

    # ---------------------------------------------------------------- checks and description

    def config_for(self, sampled: dict[str, Any]) -> TrainConfig:
        """The TrainConfig a trial with these sampled values trains (raises ConfigError if invalid)."""
        return TrainConfig.from_dict({**self.fixed, "epochs": self.settings.epochs, **sampled})

    def check_configs(self) -> None:
        """Build a TrainConfig for every corner of the space; raise SpaceError naming the lines at fault.

        Corners are every choice, every value of a narrow int range and the ends of wider ranges.
        Where their product exceeds MAX_CORNERS, every pair of knobs is crossed instead, with every
        corner of the knobs their conditions read (the others at their first corner), which still
        catches the usual two-knob rules such as n_heads | d_model, conditional knobs included.
        """
        names = list(self.params)
        corners = {name: self.params[name].corners() for name in names}
        total = math.prod(len(c) for c in corners.values())
        if total <= MAX_CORNERS:
            combos: Any = itertools.product(*(corners[n] for n in names))
        else:
            combos = self._pairwise(names, corners)
        found: dict[tuple[str, str], list[str]] = {}  # (line, knob): the rule each invalid config broke there
        seen: set[tuple] = set()
        for combo in combos:
            sampled: dict[str, Any] = {}
            for name, value in zip(names, combo):
                if not self.params[name].when or self._holds(self.params[name].when, sampled):
                    sampled[name] = value
            key = tuple(sorted(sampled.items(), key=lambda kv: kv[0]))
            if key in seen:
                continue
            seen.add(key)
            try:
                self.config_for(sampled)
            except (ConfigError, ValueError, TypeError, OverflowError, ArithmeticError) as error:
                for message in str(error).split("; "):
                    found.setdefault(self._blame(message, sampled), []).append(message)
        errors = _Errors()
        for (where, key_name), messages in found.items():
            more = f" (and {len(messages) - 1} more such configs)" if len(messages) > 1 else ""
            errors.add(where, key_name, f"a config this space can sample is invalid: {messages[0]}{more}")
        errors.raise_if_any()

    def _pairwise(self, names: list[str], corners: dict[str, list]) -> Any:
        base = [corners[n][0] for n in names]
        yield tuple(base)
        index = {name: k for k, name in enumerate(names)}
        for i, j in itertools.combinations(range(len(names)), 2):
            # the pair, and what switches either of them on: a pair whose condition is false at the
            # others' first corner would otherwise never be built
            varied = [i, j] + sorted(index[p] for p in self._condition_knobs(names[i], names[j]) if index[p] not in (i, j))
            for values in itertools.product(*(corners[names[k]] for k in varied)):
                combo = list(base)
                for k, value in zip(varied, values):
                    combo[k] = value
                yield tuple(combo)

    def _condition_knobs(self, *names: str) -> set[str]:
        """The searched knobs that the conditions of ``names`` read, and those of their conditions in turn."""
        found: set[str] = set()
        todo = list(names)
        while todo:
            when = self.params[todo.pop()].when or {}
            for knob in when:
                if knob in self.params and knob not in found:
                    found.add(knob)
                    todo.append(knob)
        return found

    def _blame(self, message: str, sampled: dict[str, Any]) -> tuple[str, str]:
        """The file line of the first knob a TrainConfig error mentions: a searched one, else a fixed one
        (one given on the command line first: what the user just typed)."""
        mentioned = lambda name: re.search(rf"\b{re.escape(name)}\b", message) is not None  # noqa: E731
        for name in self.params:
            if name in sampled and mentioned(name):
                return f"{self.path}:{self.params[name].line}", f"params.{name}"
        for name in sorted(self.fixed, key=lambda name: not self.sources.get(f"fixed.{name}", "").startswith("--")):
            if mentioned(name):
                return self.sources.get(f"fixed.{name}", f"{self.path}:1"), f"fixed.{name}"
        if mentioned("epochs"):
            return self.sources.get("search.epochs", f"{self.path}:1"), "search.epochs"
        for name in self.params:
            if mentioned(name):
                return f"{self.path}:{self.params[name].line}", f"params.{name}"
        return f"{self.path}:1", "fixed"

    def describe(self) -> str:
        """A readable plan of the sweep, for ``--dry-run``."""
        s = self.settings
        slots = "as many at a time as the cluster fits" if s.max_concurrent is None else f"{s.max_concurrent} at a time"
        scheduler = (
            f"asha (grace_period {s.grace_period}, reduction_factor {_num(s.reduction_factor)}, max_t {s.epochs})"
            if s.scheduler == "asha"
            else "none (every trial runs all epochs)"
        )
        lines = [
            f"search space {self.path} (sha256 {self.text_sha256[:12]})",
            f"  {plural(s.num_samples, 'trial')}, {slots}; {_num(s.cpu)} cpu + {_num(s.gpu)} gpu per trial; "
            f"{plural(s.epochs, 'epoch')} each",
            f"  metric {s.metric} ({s.mode}); sampler {s.sampler} (seed {s.seed}); scheduler {scheduler}",
        ]
        if s.time_budget:
            lines.append(f"  time budget {_duration(s.time_budget)}, start-up included: the search ends then with the best model so far")
        if s.sampler == "grid":
            size = math.prod(d.grid_size() or 1 for d in self.params.values())
            lines.append(f"  grid of {size} points" + ("" if size == s.num_samples else f" ({s.num_samples} trials requested)"))
        width = max([len(n) for n in [*self.params, *self.fixed]] + [8])
        lines.append("  searched:" if self.params else "  searched: nothing (every trial trains the same config)")
        lines += [f"    {name:<{width}}  {dist.describe()}" for name, dist in self.params.items()]
        lines.append("  fixed:" if self.fixed else "  fixed: nothing (TrainConfig defaults)")
        lines += [f"    {name:<{width}}  {_show(value)}" for name, value in self.fixed.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- loading


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
        raise SpaceError(f"{label}: search-space file not found (fix: pass a path such as search_spaces/smoke.yaml)") from None
    except OSError as error:
        raise SpaceError(f"{label}: cannot read the search-space file: {error.strerror or error}") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SpaceError(f"{label}:{line}: a search-space file must be UTF-8 text, but got byte {data[error.start]:#04x}") from None
    document, duplicates = _parse_yaml(text, label)
    errors = _Errors()
    for key, line, first in duplicates:
        errors.add(f"{label}:{line}", _show(key), f"keys must be unique, but got {_show(key)} again (first at line {first})")
    if document is None:
        errors.add(f"{label}:1", None, "the file is empty, but a search space needs a params: section (see search_spaces/README.md)")
        errors.raise_if_any()
    if not isinstance(document, dict):
        errors.add(
            f"{label}:{_line_of(document)}",
            None,
            f"the top level must be a mapping with sections search:, fixed:, params:, but got {_show(document)}",
        )
        errors.raise_if_any()
    for key in document:
        if key not in SECTIONS:
            errors.add(f"{label}:{_key_line(document, key)}", _show(key), f"unknown section{_did_you_mean(key, SECTIONS)}, expected one of search, fixed, params")
    sources: dict[str, str] = {}
    raw = _read_search(document.get("search"), label, _key_line(document, "search"), sources, errors)
    fixed = _read_fixed(document.get("fixed"), label, _key_line(document, "fixed"), sources, errors)
    params = _read_params(document.get("params"), label, _key_line(document, "params"), fixed, sources, errors)
    settings = _settings(raw, sources, errors, overridden=False)
    # The rules across sections run even when something above was refused, so that every problem is reported
    # at once. A condition that reads a refused knob (or epochs, with the settings refused) is not judged:
    # it would be judged against a default the file does not mean. Refused settings leave the grid unchecked.
    unknown = frozenset(_refused_knobs(document, fixed, params) | ({"epochs"} if settings is None else set()))
    space = SearchSpace(path=path, text_sha256=sha, fixed=fixed, params=params, settings=settings or SearchSettings(), sources=sources, raw_settings=raw)
    _check_space(space, errors, unknown)
    errors.raise_if_any()
    return dataclasses.replace(space, params=_sampling_order(space.params))


# --------------------------------------------------------------------------- YAML with line numbers


class _Map(dict):
    """A YAML mapping that remembers its own line and each key's line (1-based)."""

    line = 1
    lines: dict


class _Seq(list):
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
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found a key that is a list or mapping", key_node.start_mark
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


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def _parse_yaml(text: str, label: str) -> tuple[Any, list]:
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
            raise SpaceError(f"{where}: a search-space file holds plain data only, so {kind} refused, but got {shown}") from None
        context = " ".join(str(error.context).split()) if error.context and error.problem else ""
        raise SpaceError(f"{where}: YAML syntax: {problem}" + (f" ({context})" if context else "")) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise SpaceError(f"{label}:{line}: a search-space file must be printable text, but got character U+{error.character:04X}") from None
    except yaml.YAMLError as error:
        raise SpaceError(f"{label}:1: YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise SpaceError(f"{label}:1: YAML: nesting is too deep (or an alias refers to itself)") from None
    finally:
        if loader is not None:
            loader.dispose()


def _line_of(value: Any, default: int = 1) -> int:
    return getattr(value, "line", default)


def _key_line(mapping: Any, key: Any, default: int = 1) -> int:
    lines = getattr(mapping, "lines", None)
    if lines is not None and key in lines:
        return lines[key]
    return getattr(mapping, "line", default)


# --------------------------------------------------------------------------- sections


class _Errors:
    """Every problem found, in file order of discovery, reported together as one line."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, key: Optional[str], rule: str) -> None:
        self.items.append(f"{where}: {key}: {rule}" if key else f"{where}: {rule}")

    def raise_if_any(self) -> None:
        if self.items:
            # In file order, so the message reads like the file (CLI options, lineless, come first).
            def line(item: str) -> int:
                found = re.match(r"[^ ]*?:(\d+)[:\s]", item)
                return int(found.group(1)) if found else 0

            raise SpaceError("; ".join(sorted(dict.fromkeys(self.items), key=line)))


def _read_search(section: Any, label: str, line: int, sources: dict[str, str], errors: _Errors) -> dict[str, Any]:
    """The search: section as raw setting values (checked by _settings), recording where each came from."""
    raw: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SearchSettings)}
    raw["mode"] = None  # None: follow the metric
    for name in SETTING_NAMES:
        sources[f"search.{name}"] = f"{label}:{line}"
    if section is None:
        return raw
    if not isinstance(section, dict):
        errors.add(f"{label}:{line}", "search", f"must be a mapping of settings, but got {_show(section)}")
        return raw
    for key, value in section.items():
        where = f"{label}:{_key_line(section, key)}"
        if key not in SEARCH_KEYS:
            errors.add(where, f"search.{_show(key)}", f"unknown setting{_did_you_mean(key, SEARCH_KEYS)}, expected one of {', '.join(SEARCH_KEYS)}")
        elif key == "resources":
            _read_group(value, where, "search.resources", RESOURCE_KEYS, {}, raw, sources, errors)
        elif key == "scheduler":
            if isinstance(value, str) or value is None:
                raw["scheduler"] = "none" if value is None else value
                sources["search.scheduler"] = where
            else:
                _read_group(value, where, "search.scheduler", SCHEDULER_KEYS, {"name": "scheduler"}, raw, sources, errors)
        else:
            raw[key] = value
            sources[f"search.{key}"] = where
    return raw


def _read_group(value: Any, where: str, prefix: str, keys: tuple, rename: dict, raw: dict, sources: dict, errors: _Errors) -> None:
    if not isinstance(value, dict):
        errors.add(where, prefix, f"must be a mapping with keys {', '.join(keys)}, but got {_show(value)}")
        return
    label = where.rsplit(":", 1)[0]
    for key, item in value.items():
        item_where = f"{label}:{_key_line(value, key)}"
        if key not in keys:
            errors.add(item_where, f"{prefix}.{_show(key)}", f"unknown key{_did_you_mean(key, keys)}, expected one of {', '.join(keys)}")
            continue
        name = rename.get(key, key)
        raw[name] = item
        sources[f"search.{name}"] = item_where


def _read_fixed(section: Any, label: str, line: int, sources: dict[str, str], errors: _Errors) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    if section is None:
        return fixed
    if not isinstance(section, dict):
        errors.add(f"{label}:{line}", "fixed", f"must be a mapping of TrainConfig knobs to values, but got {_show(section)}")
        return fixed
    for key, value in section.items():
        where = f"{label}:{_key_line(section, key)}"
        if not _knob_ok(key, where, "fixed", errors):
            continue
        if isinstance(value, dict) and any(k in KINDS for k in value):
            errors.add(where, f"fixed.{key}", f"a fixed knob takes one value, but got a distribution {_show(value)} (fix: move it to params:)")
            continue
        coerced = _fixed_value(key, value, where, f"fixed.{key}", errors)
        if coerced is not _INVALID:
            fixed[key] = coerced
            sources[f"fixed.{key}"] = where
    return fixed


def _read_params(section: Any, label: str, line: int, fixed: dict, sources: dict[str, str], errors: _Errors) -> dict[str, Distribution]:
    params: dict[str, Distribution] = {}
    if section is None:
        return params
    if not isinstance(section, dict):
        errors.add(f"{label}:{line}", "params", f"must be a mapping of TrainConfig knobs to distributions, but got {_show(section)}")
        return params
    for key, value in section.items():
        key_line = _key_line(section, key)
        where = f"{label}:{key_line}"
        if not _knob_ok(key, where, "params", errors):
            continue
        if key in fixed:
            errors.add(where, f"params.{key}", f"a knob is either fixed or searched, but got it in both (fixed at {sources[f'fixed.{key}']})")
            continue
        if isinstance(value, dict) and any(k in KINDS for k in value):
            if key in CORPUS_KNOBS:
                errors.add(where, f"params.{key}", f"{key} is one for the whole search (the corpus is encoded once and every "
                           f"trial trains on it), but got a distribution (fix: one value under fixed:, or --set {key}=...)")
                continue
            dist = _distribution(key, value, where, key_line, errors)
            if dist is not None:
                params[key] = dist
        elif isinstance(value, dict):
            errors.add(where, f"params.{key}", f"a searched knob needs one of {', '.join(KINDS)}, but got {_show(value)}")
        else:
            # Not a distribution: a fixed value written under params (allowed, it reads naturally).
            coerced = _fixed_value(key, value, where, f"params.{key}", errors)
            if coerced is not _INVALID:
                fixed[key] = coerced
                sources[f"fixed.{key}"] = where
    return params


_INVALID = object()


def _knob_ok(key: Any, where: str, section: str, errors: _Errors) -> bool:
    if key not in FIELD_NAMES:
        errors.add(where, f"{section}.{_show(key)}", f"{unknown_key_message(str(key))} (knobs are TrainConfig fields)")
        return False
    if key == "epochs":
        errors.add(where, f"{section}.epochs", "epochs is a search setting (ASHA's max_t), not a knob (fix: write it under search: as epochs: N)")
        return False
    return True


def _fixed_value(key: str, value: Any, where: str, name: str, errors: _Errors) -> Any:
    if isinstance(value, list):
        errors.add(where, name, f"a fixed knob takes one value, but got a list {_show(value)} (fix: {{choice: {_show(value)}}} to search it)")
        return _INVALID
    try:
        return coerce(key, value)
    except (ConfigError, ValueError, TypeError) as error:
        errors.add(where, name, str(error))
    except OverflowError:
        errors.add(where, name, f"{key} must be a finite number, but got {_show(value)}")
    return _INVALID


def _distribution(name: str, spec: dict, where: str, line: int, errors: _Errors) -> Optional[Distribution]:
    kinds = [k for k in spec if k in KINDS]
    key = f"params.{name}"
    if len(kinds) > 1:
        errors.add(where, key, f"a searched knob takes exactly one of {', '.join(KINDS)}, but got {', '.join(kinds)}")
        return None
    kind = kinds[0]
    ok = True
    for option in spec:
        if option != kind and option not in OPTIONS[kind]:
            allowed = ", ".join(OPTIONS[kind])
            errors.add(where, f"{key}.{_show(option)}", f"unknown option for {kind}{_did_you_mean(option, OPTIONS[kind])}, expected one of {allowed}")
            ok = False
    ftype, _ = field_type(name)
    tname = {int: "an integer", float: "a number", bool: "true/false", str: "text"}.get(ftype, ftype.__name__)
    if kind in ("loguniform", "uniform") and ftype is not float:
        fix = "{int: [low, high]} or {choice: [...]}" if ftype is int else "{choice: [...]}"
        errors.add(where, key, f"{kind} draws real numbers, but {name} is {tname} (fix: use {fix})")
        return None
    if kind == "int" and ftype not in (int, float):
        errors.add(where, key, f"int draws integers, but {name} is {tname} (fix: use {{choice: [...]}})")
        return None

    when = _when(name, spec.get("when"), f"{where}", f"{key}.when", errors) if "when" in spec else None
    if "when" in spec and when is None:
        ok = False
    if kind == "choice":
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            errors.add(where, f"{key}.choice", f"choice needs a non-empty list of values, but got {_show(values)}")
            return None
        coerced: list = []
        for value in values:
            try:
                item = coerce(name, value)
            except (ConfigError, ValueError, TypeError, OverflowError) as error:
                errors.add(where, f"{key}.choice", str(error))
                ok = False
                continue
            if item in coerced:
                errors.add(where, f"{key}.choice", f"choice values must be distinct, but got {_show(item)} twice")
                ok = False
            coerced.append(item)
        return Distribution(name, "choice", values=tuple(coerced), when=when, line=line) if ok else None

    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        errors.add(where, f"{key}.{kind}", f"{kind} needs [low, high], but got {_show(bounds)}")
        return None
    convert = as_int if kind == "int" else _as_number
    rule = "integers" if kind == "int" else "finite numbers"
    try:
        low, high = convert(bounds[0]), convert(bounds[1])
    except ValueError:
        errors.add(where, f"{key}.{kind}", f"{kind} bounds must be {rule}, but got {_show(bounds)}")
        return None
    if low > high:
        errors.add(where, f"{key}.{kind}", f"low <= high must hold, but got low={_num(low)}, high={_num(high)}")
        return None
    if kind == "loguniform" and low <= 0:
        errors.add(where, f"{key}.loguniform", f"loguniform needs low > 0, but got low={_num(low)} (fix: a positive low, or uniform)")
        return None
    step: Any = None
    log = kind == "loguniform"
    if kind == "int":
        try:
            step = as_int(spec.get("step", 1))
        except ValueError:
            errors.add(where, f"{key}.step", f"step must be an integer >= 1, but got {_show(spec.get('step'))}")
            return None
        log = spec.get("log", False)
        if not isinstance(log, bool):
            errors.add(where, f"{key}.log", f"log must be true or false, but got {_show(log)}")
            return None
        if step < 1:
            errors.add(where, f"{key}.step", f"step >= 1 must hold, but got step={step}")
            return None
        if log and low < 1:
            errors.add(where, f"{key}.int", f"log needs low >= 1, but got low={low}")
            return None
        if log and step != 1:
            errors.add(where, f"{key}.step", f"log needs step 1 (Optuna's rule), but got step={step}")
            return None
        if (high - low) % step:
            errors.add(where, f"{key}.step", f"high - low must be a multiple of step, but got low={low}, high={high}, step={step} (fix: high={high - (high - low) % step})")
            return None
    elif kind == "uniform" and "step" in spec:
        try:
            step = _as_number(spec["step"])
        except ValueError:
            step = -1.0
        if step <= 0:
            errors.add(where, f"{key}.step", f"step > 0 must hold, but got {_show(spec['step'])}")
            return None
        ratio = (high - low) / step
        if abs(ratio - round(ratio)) > 1e-6 or ratio > GRID_LIMIT:
            errors.add(where, f"{key}.step", f"high - low must be a multiple of step (at most {GRID_LIMIT} steps), but got low={_num(low)}, high={_num(high)}, step={_num(step)}")
            return None
    if not ok:
        return None
    return Distribution(name, kind, low=low, high=high, step=step, log=log, when=when, line=line)


def _when(name: str, spec: Any, where: str, key: str, errors: _Errors) -> Optional[dict[str, tuple]]:
    if not isinstance(spec, dict) or not spec:
        errors.add(where, key, f"when needs a mapping of knobs to values, e.g. {{optimizer: noam}}, but got {_show(spec)}")
        return None
    when: dict[str, tuple] = {}
    for knob, wanted in spec.items():
        if knob not in FIELD_NAMES:
            errors.add(where, f"{key}.{_show(knob)}", unknown_key_message(str(knob)))
            return None
        if knob == name:
            errors.add(where, f"{key}.{knob}", f"a knob cannot be conditional on itself, but got {name} in its own when")
            return None
        allowed = []
        for value in wanted if isinstance(wanted, list) else [wanted]:
            try:
                allowed.append(coerce(knob, value))
            except (ConfigError, ValueError, TypeError, OverflowError) as error:
                errors.add(where, f"{key}.{knob}", str(error))
                return None
        if not allowed:
            errors.add(where, f"{key}.{knob}", "when needs at least one value per knob, but got []")
            return None
        when[knob] = tuple(allowed)
    return when


def _settings(raw: dict[str, Any], sources: dict[str, str], errors: _Errors, overridden: bool) -> Optional[SearchSettings]:
    """Check the raw settings; errors name the file line or the CLI option each value came from."""
    values: dict[str, Any] = {}

    def fail(name: str, rule: str) -> None:
        where = sources.get(f"search.{name}", "")
        errors.add(where, None if where.startswith("--") else SETTING_KEYS[name], rule)

    def number(name: str, convert: Any, check: Any, rule: str, allow_none: bool = False) -> None:
        value = raw[name]
        if value is None and allow_none:
            values[name] = None
            return
        try:
            converted = convert(value)
        except ValueError:
            converted = None
        if converted is None or not check(converted):
            fail(name, f"{rule}, but got {_show(value)}")
        else:
            values[name] = converted

    def one_of(name: str, allowed: tuple) -> None:
        value = raw[name]
        if value not in allowed:
            fail(name, f"{name} must be one of {', '.join(allowed)}, but got {_show(value)}{_did_you_mean(value, allowed)}")
        else:
            values[name] = value

    one_of("metric", tuple(METRICS))
    number("num_samples", as_int, lambda v: v >= 1, "num_samples >= 1 must hold (an integer)")
    number("max_concurrent", as_int, lambda v: v >= 1, "max_concurrent >= 1 must hold (or null: as many as fit)", allow_none=True)
    number("cpu", _as_number, lambda v: v > 0, "cpu > 0 must hold (cpus per trial)")
    number("gpu", _as_number, lambda v: v >= 0 and (v <= 1 or v.is_integer()), "gpu >= 0 must hold, and a value above 1 must be whole (gpus per trial)")
    number("epochs", as_int, lambda v: v >= 1, "epochs >= 1 must hold (an integer)")
    number("seed", as_int, lambda v: 0 <= v < 2**32, "seed must be an integer from 0 to 2**32 - 1 (or null)", allow_none=True)
    one_of("sampler", SAMPLERS)
    one_of("scheduler", SCHEDULERS)
    number("grace_period", as_int, lambda v: v >= 1, "grace_period >= 1 must hold (an integer)")
    number("reduction_factor", _as_number, lambda v: v > 1, "reduction_factor > 1 must hold")
    number("time_budget", parse_duration, lambda v: True,
           "time_budget must be a positive duration such as 900, 90s, 15m or 1.5h (or null: no limit)", allow_none=True)

    if "metric" in values:
        expected = METRICS[values["metric"]]
        mode = raw["mode"]
        if mode is None:
            values["mode"] = expected
        elif mode not in ("min", "max"):
            fail("mode", f"mode must be min or max, but got {_show(mode)}")
        elif mode != expected:
            # Blame the one the user just typed on the command line, if either.
            blamed = "metric" if sources.get("search.metric", "").startswith("--") and not sources.get("search.mode", "").startswith("--") else "mode"
            fail(blamed, f"{values['metric']} is better when {'lower' if expected == 'min' else 'higher'}, so mode must be {expected}, but got mode={mode}")
        else:
            values["mode"] = mode
    sampler = values.get("sampler")
    if sampler in SAMPLER_PACKAGES and importlib.util.find_spec(SAMPLER_PACKAGES[sampler]) is None:
        package = SAMPLER_PACKAGES[sampler]
        fail("sampler", f"sampler '{sampler}' needs {package}, which artune depends on, but it is not installed, so this install of artune is broken (fix: reinstall it, pip install -e . in its clone)")
        values.pop("sampler")
    if values.get("scheduler") == "asha" and "grace_period" in values and "epochs" in values:
        if values["grace_period"] > values["epochs"]:
            blamed = "epochs" if sources.get("search.epochs", "").startswith("--") and not sources.get("search.grace_period", "").startswith("--") else "grace_period"
            fail(blamed, f"grace_period <= epochs must hold (ASHA's max_t is epochs), but got grace_period={values['grace_period']}, epochs={values['epochs']}")
    if len(values) < len(SETTING_NAMES):
        return None
    return SearchSettings(**values)


def _refused_knobs(document: dict, fixed: dict, params: dict) -> set:
    """The knobs the file writes under fixed: or params: with no settled value: refused, or both fixed and searched."""
    written = [set(section) if isinstance(section, dict) else set() for section in (document.get("fixed"), document.get("params"))]
    return {k for k in written[0] | written[1] if k not in fixed and k not in params} | (written[0] & written[1])


def _check_space(space: SearchSpace, errors: _Errors, unknown: frozenset = frozenset()) -> None:
    """Rules that span params, fixed and settings: conditions that can hold, no cycles, a finite grid.

    A condition that reads a knob in ``unknown`` (refused by an earlier check) is not judged.
    """
    for name, dist in space.params.items():
        where = f"{space.path}:{dist.line}"
        for knob, allowed in (dist.when or {}).items():
            if knob in unknown:
                continue
            if knob in space.params:
                other = space.params[knob]
                possible = any(_can_take(other, v) for v in allowed) or (other.when is not None and space._baseline(knob) in allowed)
                if not possible:
                    errors.add(where, f"params.{name}.when.{knob}", f"the condition can never hold, since {knob} is {other.describe()}, but got {_show(list(allowed))}")
            elif space._baseline(knob) not in allowed:
                origin = "fixed" if knob in space.fixed else ("search.epochs" if knob == "epochs" else "TrainConfig's default")
                errors.add(where, f"params.{name}.when.{knob}", f"the condition can never hold, since {knob} is {_show(space._baseline(knob))} ({origin}), but got {_show(list(allowed))}")
    cycle = _find_cycle(space.params)
    if cycle:
        first = space.params[cycle[0]]
        errors.add(f"{space.path}:{first.line}", f"params.{cycle[0]}.when", f"conditions must not form a cycle, but got {' -> '.join(cycle)}")
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
                    f"the grid sampler{via} needs a finite set of values, but {name} is {dist.describe()} (fix: {{choice: [...]}}, a uniform step, or another sampler)",
                )
            else:
                size *= count
        if size > GRID_LIMIT:
            errors.add(space.sources.get("search.sampler", f"{space.path}:1"), None, f"the grid must have at most {GRID_LIMIT} points, but got {size} (fix: fewer values, or another sampler)")


def _can_take(dist: Distribution, value: Any) -> bool:
    if dist.kind == "choice":
        return value in dist.values
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not dist.low <= value <= dist.high:
        return False
    if dist.kind == "int":
        return float(value).is_integer() and (int(value) - int(dist.low)) % int(dist.step) == 0
    return True


def _find_cycle(params: dict[str, Distribution]) -> Optional[list[str]]:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> Optional[list[str]]:
        state[name] = 1
        for dep in params[name].when or {}:
            if dep not in params:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [name, dep]
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


def _sampling_order(params: dict[str, Distribution]) -> dict[str, Distribution]:
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


# --------------------------------------------------------------------------- small helpers


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def parse_duration(value: Any) -> float:
    """Seconds from 900, '900', '1e3', '90s', '15m' or '1.5h'; ValueError unless positive and finite."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*([smh]?)\s*", str(value))
        if not match:
            raise ValueError(value)
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(value)
    return seconds


def _as_number(value: Any) -> float:
    """A finite float from YAML or the CLI: 3, 3e-4 and '3e-4' are numbers; True, nan and inf are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ValueError(value) from None
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _did_you_mean(value: Any, allowed: Any) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any, limit: int = 60) -> str:
    """A value as one short line: repr for text, plain for numbers."""
    if isinstance(value, _Map):
        value = dict(value)
    elif isinstance(value, _Seq):
        value = list(value)
    text = repr(value) if not isinstance(value, float) else _num(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if not isinstance(value, float) else f"{value:g}"
