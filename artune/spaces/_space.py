"""A loaded, validated search space, and the command line's changes to it (settings, ``--set``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import artune.spaces._corners as _corners
import artune.spaces._describe as _describe
import artune.spaces._sample as _sample
from artune.config import FIELD_NAMES, FIELDS, ConfigError, TrainConfig, coerce, unknown_key_message
from artune.humanize import did_you_mean
from artune.spaces._distribution import Distribution
from artune.spaces._errors import Errors
from artune.spaces._rules import check_grid_fits, check_space
from artune.spaces._settings import SETTING_NAMES, SearchSettings, check_settings

if TYPE_CHECKING:
    import optuna


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

    def with_overrides(self, flags: Optional[dict[str, str]] = None, **overrides: Any) -> SearchSpace:
        """The space with CLI settings applied (None: keep the file's), revalidated; ``flags`` names each
        setting's command-line option in errors (default ``--<setting>``)."""
        errors = Errors()
        raw = dict(self.raw_settings)
        sources = dict(self.sources)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in SETTING_NAMES:
                errors.add(
                    f"--{name.replace('_', '-')}", None, f"unknown search setting{did_you_mean(name, SETTING_NAMES)}"
                )
                continue
            raw[name] = value
            sources[f"search.{name}"] = (flags or {}).get(name, f"--{name.replace('_', '-')}")
        errors.raise_if_any()
        settings = check_settings(raw, sources, errors)
        errors.raise_if_any()
        space = dataclasses.replace(self, settings=settings, sources=sources, raw_settings=raw)
        check_space(space, errors)
        errors.raise_if_any()
        return space

    def with_fixed(self, updates: dict[str, Any], flags: Optional[dict[str, str]] = None) -> SearchSpace:
        """The space with ``--set key=value`` applied: the value is coerced, a searched knob becomes fixed.
        ``flags`` names the option a value came from where it is not ``--set`` (``--data FILE``)."""
        errors = Errors()
        fixed = dict(self.fixed)
        params = dict(self.params)
        sources = dict(self.sources)
        for key, value in updates.items():
            where = (flags or {}).get(key, f"--set {key}={value}")
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
        check_space(space, errors)
        errors.raise_if_any()
        return space

    # ---------------------------------------------------------------- conditions

    def baseline(self, name: str) -> Any:
        """A knob's value when it is not sampled: fixed, the epochs setting, or TrainConfig's default."""
        if name in self.fixed:
            return self.fixed[name]
        if name == "epochs":
            return self.settings.epochs
        return FIELDS[name].default

    def possible_values(self, name: str) -> list[Any]:
        """The values a knob can take in a trial: its choices or its bounds (and, searched under a condition, its
        baseline), or its baseline. Knob by knob, not a TrainConfig of the fixed knobs alone: that would check
        them against defaults no trial trains with (a fixed ``optimizer: noam`` with a searched ``warmup``)."""
        dist = self.params.get(name)
        if dist is None:
            return [self.baseline(name)]
        values = list(dist.values) if dist.kind == "choice" else [dist.low, dist.high]
        return values + [self.baseline(name)] * bool(dist.when)  # where its condition is off: the baseline

    def holds(self, when: dict[str, tuple], sampled: dict[str, Any]) -> bool:
        """Whether a condition holds for the values sampled so far (a knob not sampled: its baseline)."""
        return all(one_of(sampled[k] if k in sampled else self.baseline(k), allowed) for k, allowed in when.items())

    def active(self, config: dict[str, Any]) -> list[str]:
        """The searched knobs that ``define_by_run`` samples for a config (conditionals whose ``when`` holds)."""
        return [name for name, dist in self.params.items() if not dist.when or self.holds(dist.when, config)]

    def config_for(self, sampled: dict[str, Any]) -> TrainConfig:
        """The TrainConfig a trial with these sampled values trains (raises ConfigError if invalid)."""
        return TrainConfig.from_dict({**self.fixed, "epochs": self.settings.epochs, **sampled})

    # ---------------------------------------------------------------- the rest, in their own modules

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Sample every knob on an Optuna trial; return the constants for Ray to merge into the config."""
        return _sample.define_by_run(self, trial)

    def grid(self) -> dict[str, list]:
        """The grid sampler's grid: every value of every searched knob."""
        return _sample.grid(self)

    def make_sampler(self, run: int = 1) -> optuna.samplers.BaseSampler:
        """The Optuna sampler the settings name, seeded for the ``run``-th run of the search (``--extend``)."""
        return _sample.make_sampler(self, run)

    def check_configs(self) -> None:
        """Build a TrainConfig for every corner of the space; raise SpaceError naming the lines at fault."""
        _corners.check_configs(self)

    def grid_points(self) -> int:
        """How many points the grid sampler's grid holds (a knob without a finite set counts as one)."""
        return math.prod(d.grid_size() or 1 for d in self.params.values())

    def check_grid_fits(self, drawn: int = 0) -> None:
        """A grid search's trials fit the points not run yet; raise SpaceError naming num_samples."""
        check_grid_fits(self, drawn)

    def describe(self, run: int = 1, repeats: int = 1) -> str:
        """A readable plan of the sweep's ``run``-th run, each configuration ``repeats`` times, for ``--dry-run``."""
        return _describe.describe(self, run, repeats)


def one_of(value: Any, allowed: Any) -> bool:
    """Whether ``value`` is one of ``allowed``; a float within rounding of an allowed number counts (a stepped
    uniform's 0.05 steps sample 0.15000000000000002, which a condition writes 0.15)."""
    if value in allowed:
        return True
    return isinstance(value, float) and any(
        isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(value, a, rel_tol=1e-9)
        for a in allowed
    )
