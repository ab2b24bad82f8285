"""One searched knob: its kind, bounds or values, its condition, and the values it can take."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Optional

from artune.humanize import show, show_number
from artune.spaces._sample import optuna_distribution

if TYPE_CHECKING:
    import optuna

KINDS = ("loguniform", "uniform", "int", "choice")
OPTIONS = {"loguniform": ("when",), "uniform": ("step", "when"), "int": ("step", "log", "when"), "choice": ("when",)}
ENUMERATE_INT = 32  # int ranges up to this many values are checked value by value, wider ones at their ends


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
        """The knob as one line, as a search-space file would write it: ``int [1, 8] step 2  when ...``."""
        if self.kind == "choice":
            text = "choice [" + ", ".join(show(v) for v in self.values) + "]"
        else:
            text = f"{self.kind} [{show_number(self.low)}, {show_number(self.high)}]"
            if self.kind == "int" and self.step != 1:
                text += f" step {self.step}"
            if self.kind == "int" and self.log:
                text += " log"
            if self.kind == "uniform" and self.step is not None:
                text += f" step {show_number(self.step)}"
        if self.when:
            text += "  when " + " and ".join(
                f"{k} == {show(v[0])}" if len(v) == 1 else f"{k} in [{', '.join(show(x) for x in v)}]"
                for k, v in self.when.items()
            )
        return text

    def optuna_distribution(self) -> "optuna.distributions.BaseDistribution":
        """The Optuna distribution ``define_by_run`` samples this knob from."""
        return optuna_distribution(self)

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
        """How many values this knob can take, or None where it is continuous."""
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

    def can_take(self, value: Any) -> bool:
        """Whether this knob can be sampled as ``value``."""
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.kind == "int":
            return float(value).is_integer() and (int(value) - int(self.low)) % int(self.step) == 0
        if self.kind == "uniform" and self.step is not None:  # on the grid, within rounding (0.15 of 0.05 steps)
            steps = (value - self.low) / self.step
            return abs(steps - round(steps)) < 1e-6
        return True
