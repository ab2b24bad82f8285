"""The ``fixed:`` and ``params:`` sections: each knob a TrainConfig field, each value of its type, each
searched knob a distribution Optuna can sample, with a condition that names real knobs and values."""

from __future__ import annotations

from typing import Any, Optional

from artune.config import FIELD_NAMES, ConfigError, as_int, coerce, field_type, unknown_key_message
from artune.humanize import did_you_mean, parse_number, show, show_number
from artune.spaces._distribution import KINDS, OPTIONS, Distribution
from artune.spaces._errors import Errors
from artune.spaces._rules import GRID_LIMIT
from artune.spaces._yaml import key_line

# The knobs that make the corpus: the search encodes it once, before Ray starts, and hands it to every trial.
CORPUS_KNOBS = ("dataset", "tokenizer")
_INVALID = object()  # a refused value (None is a valid one)


def read_fixed(section: Any, label: str, line: int, sources: dict[str, str], errors: Errors) -> dict[str, Any]:
    """The fixed: section's values, each coerced to its knob's type, recording where each came from."""
    fixed: dict[str, Any] = {}
    if section is None:
        return fixed
    if not isinstance(section, dict):
        rule = f"must be a mapping of TrainConfig knobs to values, but got {show(section)}"
        errors.add(f"{label}:{line}", "fixed", rule)
        return fixed
    for key, value in section.items():
        where = f"{label}:{key_line(section, key)}"
        if not _knob_ok(key, where, "fixed", errors):
            continue
        if isinstance(value, dict) and any(k in KINDS for k in value):
            rule = f"a fixed knob takes one value, but got a distribution {show(value)} (fix: move it to params:)"
            errors.add(where, f"fixed.{key}", rule)
            continue
        coerced = _fixed_value(key, value, where, f"fixed.{key}", errors)
        if coerced is not _INVALID:
            fixed[key] = coerced
            sources[f"fixed.{key}"] = where
    return fixed


def read_params(
    section: Any, label: str, line: int, fixed: dict, sources: dict[str, str], errors: Errors
) -> dict[str, Distribution]:
    """The params: section's distributions; a plain value written there goes into ``fixed``."""
    params: dict[str, Distribution] = {}
    if section is None:
        return params
    if not isinstance(section, dict):
        rule = f"must be a mapping of TrainConfig knobs to distributions, but got {show(section)}"
        errors.add(f"{label}:{line}", "params", rule)
        return params
    for key, value in section.items():
        knob_line = key_line(section, key)
        where = f"{label}:{knob_line}"
        if not _knob_ok(key, where, "params", errors):
            continue
        if key in fixed:
            rule = f"a knob is either fixed or searched, but got it in both (fixed at {sources[f'fixed.{key}']})"
            errors.add(where, f"params.{key}", rule)
            continue
        if isinstance(value, dict) and any(k in KINDS for k in value):
            if key in CORPUS_KNOBS:
                rule = (
                    f"{key} is one for the whole search (the corpus is encoded once and every trial trains on it), "
                    f"but got a distribution (fix: one value under fixed:, or --set {key}=...)"
                )
                errors.add(where, f"params.{key}", rule)
                continue
            dist = _distribution(key, value, where, knob_line, errors)
            if dist is not None:
                params[key] = dist
        elif isinstance(value, dict):
            rule = f"a searched knob needs one of {', '.join(KINDS)}, but got {show(value)}"
            errors.add(where, f"params.{key}", rule)
        else:
            # Not a distribution: a fixed value written under params (allowed, it reads naturally).
            coerced = _fixed_value(key, value, where, f"params.{key}", errors)
            if coerced is not _INVALID:
                fixed[key] = coerced
                sources[f"fixed.{key}"] = where
    return params


def _knob_ok(key: Any, where: str, section: str, errors: Errors) -> bool:
    """Whether ``key`` is a TrainConfig field that a file may fix or search (epochs is a search setting)."""
    if key not in FIELD_NAMES:
        errors.add(where, f"{section}.{show(key)}", f"{unknown_key_message(str(key))} (knobs are TrainConfig fields)")
        return False
    if key == "epochs":
        rule = "epochs is a search setting (ASHA's max_t), not a knob (fix: write it under search: as epochs: N)"
        errors.add(where, f"{section}.epochs", rule)
        return False
    return True


def _fixed_value(key: str, value: Any, where: str, name: str, errors: Errors) -> Any:
    """``value`` coerced to the type of knob ``key``, or _INVALID with the reason added to ``errors``."""
    if isinstance(value, list):
        shown = show(value)
        rule = f"a fixed knob takes one value, but got a list {shown} (fix: {{choice: {shown}}} to search it)"
        errors.add(where, name, rule)
        return _INVALID
    try:
        return coerce(key, value)
    except (ConfigError, ValueError, TypeError) as error:
        errors.add(where, name, str(error))
    except OverflowError:
        errors.add(where, name, f"{key} must be a finite number, but got {show(value)}")
    return _INVALID


def _distribution(name: str, spec: dict, where: str, line: int, errors: Errors) -> Optional[Distribution]:
    """The distribution ``spec`` writes for knob ``name``, or None with every reason added to ``errors``."""
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
            rule = f"unknown option for {kind}{did_you_mean(option, OPTIONS[kind])}, expected one of {allowed}"
            errors.add(where, f"{key}.{show(option)}", rule)
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
            errors.add(where, f"{key}.choice", f"choice needs a non-empty list of values, but got {show(values)}")
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
                errors.add(where, f"{key}.choice", f"choice values must be distinct, but got {show(item)} twice")
                ok = False
            coerced.append(item)
        return Distribution(name, "choice", values=tuple(coerced), when=when, line=line) if ok else None

    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        errors.add(where, f"{key}.{kind}", f"{kind} needs [low, high], but got {show(bounds)}")
        return None
    convert = as_int if kind == "int" else parse_number
    rule = "integers (within int64)" if kind == "int" else "finite numbers"
    try:
        low, high = convert(bounds[0]), convert(bounds[1])
    except ValueError:
        errors.add(where, f"{key}.{kind}", f"{kind} bounds must be {rule}, but got {show(bounds)}")
        return None
    if low > high:
        rule = f"low <= high must hold, but got low={show_number(low)}, high={show_number(high)}"
        errors.add(where, f"{key}.{kind}", rule)
        return None
    if kind == "loguniform" and low <= 0:
        rule = f"loguniform needs low > 0, but got low={show_number(low)} (fix: a positive low, or uniform)"
        errors.add(where, f"{key}.loguniform", rule)
        return None
    step: Any = None
    log = kind == "loguniform"
    if kind == "int":
        try:
            step = as_int(spec.get("step", 1))
        except ValueError:
            errors.add(where, f"{key}.step", f"step must be an integer >= 1, but got {show(spec.get('step'))}")
            return None
        log = spec.get("log", False)
        if not isinstance(log, bool):
            errors.add(where, f"{key}.log", f"log must be true or false, but got {show(log)}")
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
            rule = (
                f"high - low must be a multiple of step, but got low={low}, high={high}, step={step} "
                f"(fix: high={high - (high - low) % step})"
            )
            errors.add(where, f"{key}.step", rule)
            return None
    elif kind == "uniform" and "step" in spec:
        try:
            step = parse_number(spec["step"])
        except ValueError:
            step = -1.0
        if step <= 0:
            errors.add(where, f"{key}.step", f"step > 0 must hold, but got {show(spec['step'])}")
            return None
        ratio = (high - low) / step
        # at most GRID_LIMIT steps whatever the sampler: a step that fine is a continuous uniform (no step)
        if abs(ratio - round(ratio)) > 1e-6 or ratio > GRID_LIMIT:
            values = f"low={show_number(low)}, high={show_number(high)}, step={show_number(step)}"
            rule = (
                f"high - low must be a multiple of step, but got {values}"
                if abs(ratio - round(ratio)) > 1e-6
                else f"a step gives at most {GRID_LIMIT} values (leave step out for a continuous uniform), "
                f"but got {values}: {round(ratio) + 1} values"
            )
            errors.add(where, f"{key}.step", rule)
            return None
    if not ok:
        return None
    return Distribution(name, kind, low=low, high=high, step=step, log=log, when=when, line=line)


def _when(name: str, spec: Any, where: str, key: str, errors: Errors) -> Optional[dict[str, tuple]]:
    """The condition ``spec`` writes for knob ``name``, each value coerced to its knob's type, or None."""
    if not isinstance(spec, dict) or not spec:
        rule = f"when needs a mapping of knobs to values, e.g. {{optimizer: noam}}, but got {show(spec)}"
        errors.add(where, key, rule)
        return None
    when: dict[str, tuple] = {}
    for knob, wanted in spec.items():
        if knob not in FIELD_NAMES:
            errors.add(where, f"{key}.{show(knob)}", unknown_key_message(str(knob)))
            return None
        if knob == name:
            rule = f"a knob cannot be conditional on itself, but got {name} in its own when"
            errors.add(where, f"{key}.{knob}", rule)
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
