"""The ``search:`` section: its settings, their command-line flags, how they are read and their rules.

``SearchSettings`` is the one home of the settings' names: the flag and ``--help`` text of each one the
command line overrides live in its field's metadata, and ``OVERRIDE_FLAGS`` is read from there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Optional

from artune.config import as_int
from artune.humanize import did_you_mean, parse_duration, parse_number, show
from artune.spaces._errors import Errors
from artune.spaces._yaml import key_line

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
# Each tracker a search can also log to (Ray Tune's own logger callbacks): the module it needs, and the
# pyproject extra that installs it.
TRACKERS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
SEARCH_KEYS = (
    "metric",
    "mode",
    "num_samples",
    "max_concurrent",
    "resources",
    "epochs",
    "sampler",
    "seed",
    "scheduler",
    "time_budget",
    "log",
)
RESOURCE_KEYS = ("workers", "cpu", "gpu")
SCHEDULER_KEYS = ("name", "grace_period", "reduction_factor")


def _flag(flag: str, text: str, repeatable: bool = False, **kwargs: Any) -> Any:
    """A setting the command line overrides with ``flag``; ``text`` is its ``--help``; a ``repeatable``
    flag may be given several times (and takes a comma-separated list)."""
    return field(metadata={"flag": flag, "help": text, "repeatable": repeatable}, **kwargs)


def tracker_names(value: Any) -> Any:
    """``log``'s value as a tuple of names (a name, a list, or comma-separated names), or as given where it is
    none of these (check_settings says why)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        return value
    return tuple(dict.fromkeys(name.strip() for item in items for name in item.split(",") if name.strip()))


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section, flattened. A field with a flag is one the command line overrides too."""

    metric: str = "valid_loss"
    mode: str = "min"
    num_samples: int = _flag("--num-samples", "trials to run", default=16)
    max_concurrent: Optional[int] = _flag(
        "--max-concurrent", "trials running at once (default: the cluster's trial slots)", default=None
    )
    cpu: float = _flag("--cpus-per-trial", "CPUs reserved per trial", default=1.0)
    gpu: float = _flag("--gpus-per-trial", "GPUs reserved per trial (fractions share a GPU)", default=0.0)
    # Several workers: a trial trains data-parallel, each worker with the cpu and gpu above (Ray Train)
    workers: int = _flag(
        "--workers-per-trial",
        "data-parallel workers per trial, each with --cpus-per-trial and --gpus-per-trial (default 1: one process)",
        default=1,
    )
    epochs: int = _flag("--epochs", "training epochs per trial (ASHA's max_t)", default=10)
    sampler: str = "tpe"
    seed: Optional[int] = _flag("--seed", "sampler seed", default=0)  # TrainConfig.seed seeds the model
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    time_budget: Optional[float] = _flag(
        "--time-budget", "end the search after this long, start-up included (e.g. 900, 15m, 1h)", default=None
    )
    log: tuple[str, ...] = _flag(
        "--log",
        f"also log every trial's knobs and epochs to a tracker: {' or '.join(TRACKERS)} (repeatable)",
        repeatable=True,
        default=(),
    )


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SearchSettings))
# Each setting the command line overrides, and its option (the driver builds its parser from the metadata).
OVERRIDE_FLAGS = {f.name: f.metadata["flag"] for f in dataclasses.fields(SearchSettings) if "flag" in f.metadata}
# Where each setting lives in the file, for error messages.
SETTING_KEYS = {
    **{name: f"search.{name}" for name in SETTING_NAMES},
    "cpu": "search.resources.cpu",
    "gpu": "search.resources.gpu",
    "workers": "search.resources.workers",
    "scheduler": "search.scheduler.name",
    "grace_period": "search.scheduler.grace_period",
    "reduction_factor": "search.scheduler.reduction_factor",
}


def check_settings(raw: dict[str, Any], sources: dict[str, str], errors: Errors) -> Optional[SearchSettings]:
    """Check the raw settings; errors name the file line or the CLI option each value came from."""
    values: dict[str, Any] = {}

    def from_cli(name: str) -> bool:
        return sources.get(f"search.{name}", "").startswith("--")

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
            fail(name, f"{rule}, but got {show(value)}")
        else:
            values[name] = converted

    def one_of(name: str, allowed: tuple) -> None:
        value = raw[name]
        if value not in allowed:
            hint = did_you_mean(value, allowed)
            fail(name, f"{name} must be one of {', '.join(allowed)}, but got {show(value)}{hint}")
        else:
            values[name] = value

    one_of("metric", tuple(METRICS))
    number("num_samples", as_int, lambda v: v >= 1, "num_samples >= 1 must hold (an integer)")
    number(
        "max_concurrent",
        as_int,
        lambda v: v >= 1,
        "max_concurrent >= 1 must hold (or null: as many as fit)",
        allow_none=True,
    )
    number("cpu", parse_number, lambda v: v > 0, "cpu > 0 must hold (cpus per trial)")
    number("gpu", parse_number, lambda v: v >= 0, "gpu >= 0 must hold (GPUs per worker)")
    number("workers", as_int, lambda v: v >= 1, "workers >= 1 must hold (an integer: data-parallel workers per trial)")
    number("epochs", as_int, lambda v: v >= 1, "epochs >= 1 must hold (an integer)")
    number(
        "seed",
        as_int,
        lambda v: 0 <= v < 2**32,
        "seed must be an integer from 0 to 2**32 - 1 (or null)",
        allow_none=True,
    )
    one_of("sampler", SAMPLERS)
    one_of("scheduler", SCHEDULERS)
    number("grace_period", as_int, lambda v: v >= 1, "grace_period >= 1 must hold (an integer)")
    number("reduction_factor", parse_number, lambda v: v > 1, "reduction_factor > 1 must hold")
    number(
        "time_budget",
        parse_duration,
        lambda v: True,
        "time_budget must be a positive duration such as 900, 90s, 15m or 1.5h (or null: no limit)",
        allow_none=True,
    )

    if "metric" in values:
        expected = METRICS[values["metric"]]
        mode = raw["mode"]
        if mode is None:
            values["mode"] = expected
        elif mode not in ("min", "max"):
            fail("mode", f"mode must be min or max, but got {show(mode)}")
        elif mode != expected:
            better = "lower" if expected == "min" else "higher"
            fail("mode", f"{values['metric']} is better when {better}, so mode must be {expected}, but got mode={mode}")
        else:
            values["mode"] = mode
    if values.get("gpu", 0) > 1:
        # a worker trains on one device: the rest of its GPUs would be reserved and sit idle
        gpus = int(values["gpu"])
        fix = (
            f"--workers-per-trial {gpus} --gpus-per-trial 1"
            if from_cli("gpu")
            else f"resources: {{workers: {gpus}, gpu: 1}}"
        )
        fix = f" (fix: {fix}, for {gpus} data-parallel workers)" if float(values["gpu"]).is_integer() else ""
        fail(
            "gpu",
            f"gpu <= 1 must hold (GPUs per worker: each worker trains on one GPU), but got {show(raw['gpu'])}{fix}",
        )
        values.pop("gpu")
    trackers = tracker_names(raw["log"])
    if not isinstance(trackers, tuple):
        fail("log", f"log must be a tracker's name or a list of them ({', '.join(TRACKERS)}), but got {show(trackers)}")
    else:
        for name in trackers:
            if name not in TRACKERS:
                hint = did_you_mean(name, TRACKERS)
                fail("log", f"log must name {' or '.join(TRACKERS)}, but got {show(name)}{hint}")
            elif importlib.util.find_spec(TRACKERS[name][0]) is None:
                module, extra = TRACKERS[name]
                fix = f"pip install -e '.[{extra}]' in artune's clone"
                fail("log", f"{name} needs {module}, which is not installed (fix: {fix})")
        if all(name in TRACKERS and importlib.util.find_spec(TRACKERS[name][0]) for name in trackers):
            values["log"] = trackers
    sampler = values.get("sampler")
    if sampler in SAMPLER_PACKAGES and importlib.util.find_spec(SAMPLER_PACKAGES[sampler]) is None:
        package = SAMPLER_PACKAGES[sampler]
        fail(
            "sampler",
            f"sampler '{sampler}' needs {package}, which artune depends on, but it is not installed, "
            "so this install of artune is broken (fix: reinstall it, pip install -e . in its clone)",
        )
        values.pop("sampler")
    if values.get("scheduler") == "asha" and "grace_period" in values and "epochs" in values:
        if values["grace_period"] > values["epochs"]:
            blamed = "epochs" if from_cli("epochs") else "grace_period"  # blame what was typed on the command line
            fail(
                blamed,
                "grace_period <= epochs must hold (ASHA's max_t is epochs), "
                f"but got grace_period={values['grace_period']}, epochs={values['epochs']}",
            )
    if len(values) < len(SETTING_NAMES):
        return None
    return SearchSettings(**values)


def read_search(section: Any, label: str, line: int, sources: dict[str, str], errors: Errors) -> dict[str, Any]:
    """The search: section as raw setting values (checked by check_settings), recording where each came from."""
    raw: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SearchSettings)}
    raw["mode"] = None  # None: follow the metric
    for name in SETTING_NAMES:
        sources[f"search.{name}"] = f"{label}:{line}"
    if section is None:
        return raw
    if not isinstance(section, dict):
        errors.add(f"{label}:{line}", "search", f"must be a mapping of settings, but got {show(section)}")
        return raw
    for key, value in section.items():
        where = f"{label}:{key_line(section, key)}"
        if key not in SEARCH_KEYS:
            rule = f"unknown setting{did_you_mean(key, SEARCH_KEYS)}, expected one of {', '.join(SEARCH_KEYS)}"
            errors.add(where, f"search.{show(key)}", rule)
        elif key == "resources":
            _read_group(value, where, "search.resources", RESOURCE_KEYS, {}, raw, sources, errors)
        elif key == "scheduler":
            if isinstance(value, str) or value is None:
                raw["scheduler"] = "none" if value is None else value
                sources["search.scheduler"] = where
            else:
                rename = {"name": "scheduler"}
                _read_group(value, where, "search.scheduler", SCHEDULER_KEYS, rename, raw, sources, errors)
        else:
            raw[key] = value
            sources[f"search.{key}"] = where
    return raw


def _read_group(
    value: Any, where: str, prefix: str, keys: tuple, rename: dict, raw: dict, sources: dict, errors: Errors
) -> None:
    """A group of settings (``resources:``, ``scheduler:``) into ``raw``, each key renamed by ``rename``."""
    if not isinstance(value, dict):
        errors.add(where, prefix, f"must be a mapping with keys {', '.join(keys)}, but got {show(value)}")
        return
    label = where.rsplit(":", 1)[0]
    for key, item in value.items():
        item_where = f"{label}:{key_line(value, key)}"
        if key not in keys:
            rule = f"unknown key{did_you_mean(key, keys)}, expected one of {', '.join(keys)}"
            errors.add(item_where, f"{prefix}.{show(key)}", rule)
            continue
        name = rename.get(key, key)
        raw[name] = item
        sources[f"search.{name}"] = item_where
