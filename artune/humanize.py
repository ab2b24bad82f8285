"""Reading what a person wrote, and showing values back to them: durations, numbers, near-misses.

Standard library only, and nothing about artune's own files, so that any module or CLI can use it.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable


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


def format_duration(seconds: float) -> str:
    """``90 s``, or ``1.5 min`` from a minute on."""
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def as_int(value: Any) -> int:
    """An integer from YAML, the CLI or Ray: 3, 3.0 and '3' are 3; True, 3.5, 1e30 (a float past 2**53, not exactly
    an integer) and one past int64 (what torch and Optuna hold) raise ValueError."""
    if isinstance(value, bool) or (isinstance(value, int) and not -(2**63) <= value < 2**63):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, str):
        if is_whole(value):  # digits: exact, whatever their count ('1e3' is a float's)
            return as_int(int(value))
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if number.is_integer() and abs(number) < 2**53:
                return int(number)
    raise ValueError(value)


def is_whole(value: Any) -> bool:
    """An int, or text that is only an integer's digits (and a sign): whole, whatever its size."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value) is not None
    )


def parse_number(value: Any) -> float:
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


def did_you_mean(value: Any, allowed: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the allowed value closest to ``value``, or '' where none is close."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def show(value: Any, limit: int = 60) -> str:
    """A value as one short line: repr for text, plain for numbers."""
    text = repr(value) if not isinstance(value, float) else show_number(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_number(value: Any) -> str:
    """A number in short form: 2 for 2.0, and any other float as ``%g`` writes it (0.0001, 1e-05)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if not isinstance(value, float) else f"{value:g}"


def root_cause(exc: BaseException) -> str:
    """``Type: first line`` of the exception an error was raised from, at the bottom of its chain: a storage
    layer's wrapper ("an exception is raised during the commit") hides what happened (a refused connection)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return f"{type(exc).__name__}: {first_line(exc)}"


def describe_os_error(exc: OSError) -> str:
    """An OSError in a line: its errno, the OS's reason and the file (where the error names one: pyarrow's do not)."""
    if not exc.errno:
        return str(exc)
    named = f": {exc.filename}" if exc.filename is not None else ""
    return f"[Errno {exc.errno}] {exc.strerror}{named}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")


def first_line(exc: BaseException) -> str:
    """An exception's message, its first line only (a driver's or a server's message may run to pages), with what
    is not printable escaped as ``repr`` does (a damaged file's bytes in pyarrow's: ``don't know what type: \\x0f``)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def show_knob(value: Any) -> str:
    """A knob's value in a status line: a float to three significant digits (0.00401), anything else as it is."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
