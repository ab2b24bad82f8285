"""Search-space files -> validated Optuna spaces.

A search-space file (YAML, format in ``search_spaces/README.md``) has three sections: ``search``
(how many trials, on what resources, with which sampler and scheduler), ``fixed`` (TrainConfig knobs
held constant) and ``params`` (TrainConfig knobs searched). ``load_space`` checks all of it before
Ray starts, and ``SearchSpace.check_configs`` checks that every corner of the space builds a valid
TrainConfig, so no trial is spent on a typo. Optuna is imported lazily; Ray is never imported here.

The modules, in the order a file travels through them: ``_yaml`` (parse, keeping lines), ``_load`` (the
file), ``_settings`` (the ``search:`` section), ``_knobs`` (``fixed:`` and ``params:``), ``_rules`` (rules
across sections), ``_space`` and ``_distribution`` (the validated space), ``_corners`` (every corner a valid
TrainConfig), ``_sample`` (the Optuna adapter) and ``_describe`` (the ``--dry-run`` plan).
"""

from artune.errors import SpaceError
from artune.humanize import parse_duration
from artune.spaces._corners import MAX_CORNERS
from artune.spaces._distribution import Distribution
from artune.spaces._load import load_space
from artune.spaces._settings import METRICS, OVERRIDE_FLAGS, SAMPLERS, SCHEDULERS, SETTING_NAMES, SearchSettings
from artune.spaces._space import SearchSpace

__all__ = [
    "MAX_CORNERS",
    "METRICS",
    "OVERRIDE_FLAGS",
    "SAMPLERS",
    "SCHEDULERS",
    "SETTING_NAMES",
    "Distribution",
    "SearchSettings",
    "SearchSpace",
    "SpaceError",
    "load_space",
    "parse_duration",
]
