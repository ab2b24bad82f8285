"""``python -m artune.search``: a hyperparameter search on Ray Tune with Optuna.

The pipeline, one module each: ``cli`` (the command line) -> ``plan`` (every input checked before Ray
starts; ``storage``, ``manifest`` and ``saved_state`` for what a resume or an extend continues) ->
``driver`` (``corpus`` encoded once, the directory under ``lock``, Ray's ``runtime``, the ``tuner``,
the ``recorder`` writing the tables and the study) -> ``report``.
"""

from __future__ import annotations

import importlib
from typing import Any

from artune.errors import SearchError
from artune.search.cli import build_parser, cli, main, parse_args
from artune.search.corpus import load_plan_corpus
from artune.search.manifest import write_manifest
from artune.search.plan import SPACE_COPY, Mode, Plan, make_plan, parse_sets
from artune.search.runtime import stop_ray
from artune.search.saved_state import check_saved_state

# Names from the modules that import Ray Tune, imported when first asked for: a dry run never imports Ray.
_LAZY = {
    "Recorder": "recorder",
    "merge_ray_results": "recorder",
    "summarize_error": "recorder",
    "MAX_FAILURES": "tuner",
    "build_tuner": "tuner",
}

__all__ = [
    "SPACE_COPY",
    "Mode",
    "Plan",
    "SearchError",
    "build_parser",
    "check_saved_state",
    "cli",
    "load_plan_corpus",
    "main",
    "make_plan",
    "parse_args",
    "parse_sets",
    "stop_ray",
    "write_manifest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"artune.search.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'artune.search' has no attribute {name!r}")
