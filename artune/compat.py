"""The one place artune leans on another project's internals.

Each use says why, the versions it was checked on, the public behaviour it falls back to where the
internal has moved, and the test that holds it. Nothing else under ``artune/`` may import
``ray._private``, Ray Tune's or Ray Train's internals, or ``torch._*``.

Ray Tune's files on disk are read (never imported) where the stage that needs them is, each site checked on Ray
2.60.0 and saying so: its saved state and staging copies (``search/saved_state.py``, its
``tune_began`` too: ``experiment_state-*.json``, ``tuner.pkl``), its error files (``search/recorder.py``'s
``summarize_error`` and ``storage_error``: the ``Failure # N`` sections) and its checkpoint directories
(``trainable.py``'s ``resume``: the ``checkpoint_NNNNNN`` siblings). Where their layout changes, those
readers find nothing and the search goes on as Tune alone would; tests/test_search.py, tests/test_faults.py
and tests/test_storage_faults.py hold them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

# --------------------------------------------------------------------------- torch
# Each site was checked on torch 2.13.0. torch is imported inside the functions: the search driver
# imports this module and never imports torch.


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX tiles).

    ``precision: auto`` tries bf16 on a CPU only where it does: elsewhere oneDNN's bf16 path is far
    slower than fp32. torch asks the CPU through the private ``torch.cpu._is_avx512_bf16_supported``
    and ``torch.cpu._is_amx_tile_supported`` and has no public question for it. Fallback where they
    have moved: False, so 'auto' trains in fp32, as on a CPU without bf16. Test: tests/test_compat_torch.py.
    """
    import torch

    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(check()) for check in checks if check is not None)


# --------------------------------------------------------------------------- Ray
# Each site was checked on Ray 2.60.0. Ray is imported inside the functions: artune's trainer and its
# tests run without Ray.


def keep_local_ray_on_loopback() -> None:
    """Make the Ray instance this process starts listen on 127.0.0.1 only (a security fix, not speed).

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray swaps a loopback address for the
    host's routable one, and its servers then listen on every interface. Ray's single-machine mode
    (its setting on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps every server on
    loopback. Ray reads that setting into ``ray._private.ray_constants`` when it is imported, so where
    Ray is imported already (artune used as a library) the constant is set too. Fallback where the
    constant has moved: the environment variable alone, which holds whenever Ray is imported after
    this call (the CLI's path). Test: tests/test_security.py.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" not in sys.modules:
        return
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False


@contextlib.contextmanager
def ctrl_c_taken_by_tune() -> Iterator[threading.Event]:
    """Around ``Tuner.fit``: an event set where Ray Tune took a Ctrl-C (or its SIGUSR1), whether a trial ran or not.

    Tune's handler ends fit's loop and says so only in a log line, and fit returns as at a search's end: a Ctrl-C
    that fell between two trials (none running, the searcher with trials left) was taken for the search's end.
    Tune's handler puts back the SIGINT handler it found (``_setup_signal_catching`` in ray/tune/tune.py), and a
    fit that ends by itself leaves Tune's in place: the one found before fit, in place after it, means Tune took
    a signal. Nothing is set here in the meantime, so a Ctrl-C or a SIGTERM before Tune's handler is set is
    handled as without this block. Both of Tune's handlers (SIGINT, SIGUSR1) go at the block's end: a notebook's
    next search starts from the process's own. Fallback where Tune keeps its handler, sets none, or is told to
    set none (``TUNE_DISABLE_SIGINT_HANDLER``): the event stays clear, and such a Ctrl-C ends the search as Tune
    alone would. Test: tests/test_compat_ray.py.
    """
    taken = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # (only the main thread sets handlers)
        yield taken
        return
    sigint, sigusr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    try:
        yield taken
    finally:
        tune_sets_one = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0").strip() in ("", "0")
        if tune_sets_one and sigint is not None and signal.getsignal(signal.SIGINT) is sigint:
            taken.set()  # Tune's handler ran and put the process's back
        for signum, handler in ((signal.SIGINT, sigint), (signal.SIGUSR1, sigusr1)):
            if handler is not None:  # (None: set outside Python, and it cannot be put back)
                signal.signal(signum, handler)


def give_restored_tuner(tuner: Any, callbacks: list, time_budget_s: Optional[float]) -> bool:
    """Give a restored Tuner this driver's callbacks and time budget (ray-project/ray#41364).

    ``Tuner.restore`` takes the run and tune configs from the first run's ``tuner.pkl``: its callbacks
    would be that run's recorder, unpickled, which this driver never sees (a Ctrl-C would pass for the
    end, and the budget's end would write the tables as they were before the resume), and its time
    budget that run's. Ray has no public way to give them anew. Returns False where the private
    ``_local_tuner`` has moved: the resume then runs with the old callbacks, as public Ray does.
    Test: tests/test_faults.py (a resumed search records its new epochs).
    """
    restored = getattr(tuner, "_local_tuner", None)
    if restored is None or not hasattr(restored, "_tune_config"):
        return False
    restored.get_run_config().callbacks = callbacks
    restored._tune_config.time_budget_s = time_budget_s
    return True


def repoint_searcher_state(tune_path: Path) -> None:
    """Point the experiment in Tune's saved searcher state at ``tune_path``, where the search is now.

    Tune re-points the trials it restores at the directory it resumes from, but creates every new
    trial from the experiment its searcher saved, whose storage is where the search first ran: the
    new trials of a moved search failed ("Unable to set up cluster storage" naming the old path), and
    those of a copy wrote into the original. The state is rewritten whole, as Tune writes it. Fallback
    where Tune's private layout differs: the state is left as it is (a search resumed where it ran
    is unaffected). Test: tests/test_search.py (a moved search resumes).
    """
    try:
        from ray.tune.search.search_generator import SearchGenerator
        from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint
    except ImportError:
        return
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(str(tune_path), pattern)
    storage = getattr((state or {}).get("experiment"), "storage", None)
    if storage is None or not hasattr(storage, "storage_fs_path") or Path(storage.experiment_fs_path) == tune_path:
        return
    storage.storage_fs_path, storage.experiment_dir_name = tune_path.parent.as_posix(), tune_path.name
    newest = max(tune_path.glob(pattern))
    _atomic_save(state, str(tune_path), newest.name, f"tmp-{newest.name}")


def forget_ended_running_trials(tune_path: Path, unfinished: frozenset[str]) -> frozenset[str]:
    """Make Tune's saved searcher count as running only ``unfinished``: the trials its saved state will run again.

    Tune saves its trials (``experiment_state-*.json``) and its searcher (``search_gen_state-*.json``: the
    concurrency limit's running trials) as separate files, copied one after the other into the search's
    directory: a driver killed between the copies, or a disk that filled during them, leaves a searcher that
    counts as running trials the saved state holds as ended. Tune never tells the searcher of their end again:
    with every slot of the limit so held, the resume suggested nothing and waited for ever (seen once after a
    full disk; the test makes such a state). Each wrapper's ``live_trials`` (``ConcurrencyLimiter``'s, and
    ``BudgetCutoff``'s, which is the same) is cut to ``unfinished`` (and the groups of repeats with a trial in it),
    the state rewritten whole as Tune writes it. Returns the trials forgotten. Fallback where Tune's private layout
    differs: nothing forgotten (the resume waits as public Ray would). Tests: tests/test_compat_ray.py,
    tests/test_faults.py (the settle test).
    """
    try:
        from ray.tune.search.search_generator import SearchGenerator
        from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint
    except ImportError:
        return frozenset()
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(str(tune_path), pattern)
    unfinished = set(unfinished)
    for wrapper in (state or {}).values():
        # With repeats, the limit counts a group of trials by its first trial's id: the group runs while one of its
        # trials does, or while the Repeater has trials of it still to start.
        for group in wrapper.get("_groups", []) if isinstance(wrapper, dict) else []:
            members = getattr(group, "_trials", None)
            if isinstance(members, dict) and (unfinished & set(members) or not group.full()):
                unfinished.add(group.primary_trial_id)
    forgotten: set[str] = set()
    for key, wrapper in (state or {}).items():
        live = wrapper.get("live_trials") if key.startswith("name:") and isinstance(wrapper, dict) else None
        if not isinstance(live, set) or not live - unfinished:
            continue
        forgotten |= live - unfinished
        wrapper["live_trials"] = live & unfinished
        if isinstance(wrapper.get("num_unfinished_live_trials"), int):
            wrapper["num_unfinished_live_trials"] = len(wrapper["live_trials"])
    if forgotten:
        newest = max(tune_path.glob(pattern))
        _atomic_save(state, str(tune_path), newest.name, f"tmp-{newest.name}")
    return frozenset(forgotten)


def ray_auto_address() -> Optional[str]:
    """The cluster that ``ray.init(address="auto")`` would join: ``RAY_ADDRESS``, else the one ``ray start`` last
    started on this machine, else any running here (Ray's ``get_ray_address_from_environment``, which has no public
    counterpart). artune checks it before Ray connects: Ray itself retries a cluster that does not answer (a stale
    ``ray_current_cluster``) for minutes. Raises LookupError where Ray finds none. Fallback where the function has
    moved: None, and Ray resolves ``auto`` itself as it connects. Test: tests/test_compat_ray.py.
    """
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:
        return None
    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:  # "Could not find any running Ray instance"
        raise LookupError("no Ray cluster found") from None
    except Exception:  # noqa: BLE001 - a Ray whose lookup changed: it resolves auto itself, as it connects
        return None


def kill_local_monitor_first() -> None:
    """Kill the autoscaler monitor of the local Ray instance this process started, before ``ray.shutdown``.

    Speed only, kept because it is measured to save more than 2% of a search command (docs/benchmarks.md,
    'search overhead'): Ray's shutdown stops the GCS before the monitor, whose SIGTERM handler then waits on
    that GCS until Ray kills it after a 1-s grace. A local instance's monitor has nothing to save.
    ``Node.kill_monitor`` is the call Ray's own tests use. Fallback where Ray's private node has moved, or
    for a driver connected to a cluster (it started no monitor): nothing, and Ray's shutdown does it all.
    Test: tests/test_compat_ray.py.
    """
    try:
        from ray._private import worker

        node = worker._global_node
        if node is not None and node.head:
            node.kill_monitor(check_alive=False)
    except Exception:  # noqa: BLE001 - only a second is at stake; ray.shutdown stops the monitor anyway
        pass
