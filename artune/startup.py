"""Python's cyclic garbage collector at a process's start and end.

Each collection walks every object the collector tracks, and a process that has imported Ray, Ray Tune, Optuna,
pandas or torch tracks hundreds of thousands. While those imports run, collections fire every few hundred
allocations and find next to nothing to free: modules, classes and functions live as long as the process. At exit,
the interpreter collects again, several times, while it tears its modules down. What each of these costs a search,
and what leaving the collector out of them saves, is in docs/benchmarks.md (search overhead).

Only public ``gc`` calls; reference counting frees what it always frees, and a paused collector is resumed.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import Iterator, NoReturn

_paused_at_start = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside the block (a trial's import of torch, its optimizer's lazy imports); the
    collector is as it was after it. Nothing is frozen: a reused worker's next trial collects this one's cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def pause_collector() -> None:
    """At a command's start: no cyclic collection until ``resume_collector``."""
    global _paused_at_start
    if gc.isenabled():
        gc.disable()
        _paused_at_start = True


def resume_collector() -> None:
    """Once the command has started: what it holds now (its modules, its plan) lives to its end, so later
    collections leave it out (``gc.freeze``), and the collector runs again. A no-op unless ``pause_collector``
    paused it: a search run in-process by a test or a notebook leaves their collector alone."""
    global _paused_at_start
    if _paused_at_start:
        _paused_at_start = False
        gc.freeze()
        gc.enable()


def exit_without_collecting(code: int) -> NoReturn:
    """``sys.exit(code)``, its teardown without the collections over every object: the atexit handlers and the
    flush of open files still run (unlike ``os._exit``), only cycles that nothing needs any more are left to
    the end of the process."""
    gc.freeze()
    sys.exit(code)
