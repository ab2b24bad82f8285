"""The plan of a search as ``--dry-run`` prints it: the settings, then each searched and fixed knob."""

from __future__ import annotations

from typing import TYPE_CHECKING

from artune import plural
from artune.humanize import format_duration, show, show_number
from artune.spaces._sample import sampler_seed

if TYPE_CHECKING:
    from artune.spaces._space import SearchSpace


def describe(space: SearchSpace, run: int = 1, repeats: int = 1) -> str:
    """A readable plan of the sweep's ``run``-th run (``--extend``'s are 2, 3, ...), for ``--dry-run``; with
    ``repeats`` (``--repeats``) ``num_samples`` counts configurations, and the search's header says how many of
    their groups run at once."""
    s = space.settings
    seed = sampler_seed(space, run)
    seeded = f"seed {seed}" if seed == s.seed else f"seed {seed}: {s.seed} + {run - 1}, as run {run} draws anew"
    if s.max_concurrent is not None and s.max_concurrent < s.num_samples:
        slots = f", {s.max_concurrent} at a time"
    else:  # no limit, or one that never binds ("1 trial, 2 at a time" promised what one trial cannot do)
        slots = ", as many at a time as the cluster fits" if s.num_samples > 1 else ""
    scheduler = (
        f"asha (grace_period {s.grace_period}, reduction_factor {show_number(s.reduction_factor)}, max_t {s.epochs})"
        if s.scheduler == "asha"
        else "none (every trial runs all epochs)"
    )
    resources = f"{show_number(s.cpu)} cpu + {show_number(s.gpu)} gpu per trial"
    if s.workers > 1:
        resources = (
            f"{s.workers} data-parallel workers per trial, each {show_number(s.cpu)} cpu + {show_number(s.gpu)} gpu"
        )
    trials = plural(s.num_samples, "trial") + slots
    if repeats > 1:  # "4 trials, 2 at a time" where 8 trials ran, 2 groups of replicates (or more) at a time
        trials = f"{plural(s.num_samples, 'configuration')} x {repeats} repeats = {s.num_samples * repeats} trials"
    lines = [
        f"search space {space.path} (sha256 {space.text_sha256[:12]})",
        f"  {trials}; {resources}; {plural(s.epochs, 'epoch')} each",
        f"  metric {s.metric} ({s.mode}); sampler {s.sampler} ({seeded}); scheduler {scheduler}",
    ]
    if s.time_budget:
        lines.append(
            f"  time budget {format_duration(s.time_budget)}, start-up included: "
            "the search ends then with the best model so far"
        )
    if s.sampler == "grid":
        size = space.grid_points()
        requested = "" if size == s.num_samples else f" ({s.num_samples} trials requested)"
        lines.append(f"  grid of {size} points{requested}")
    width = max([len(n) for n in [*space.params, *space.fixed]] + [8])
    lines.append("  searched:" if space.params else "  searched: nothing (every trial trains the same config)")
    lines += [f"    {name:<{width}}  {dist.describe()}" for name, dist in space.params.items()]
    lines.append("  fixed:" if space.fixed else "  fixed: nothing (TrainConfig defaults)")
    lines += [f"    {name:<{width}}  {show(value)}" for name, value in space.fixed.items()]
    return "\n".join(lines)
