"""The plan of a search: every input checked and resolved before Ray starts or a trial is spent."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import enum
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from artune.config import FIELD_NAMES, coerce, compiler_message, missing_compiler, unknown_key_message
from artune.errors import SearchError
from artune.humanize import first_line
from artune.results import EPOCHS_FILE, MANIFEST_FILE, SPACE_COPY, TRIALS_FILE, TUNE_DIR, read_records
from artune.results.tables import read_parquet
from artune.search.journal import reported_in
from artune.search.lock import LOCK_FILE, held_elsewhere
from artune.search.manifest import Manifest, startup_files_only
from artune.search.runtime import check_address
from artune.search.saved_state import check_saved_state, tune_began
from artune.search.storage import (
    absolute_storage,
    check_storage,
    check_study_readable,
    sqlite_file,
    study_exists,
    study_trials,
)
from artune.spaces import OVERRIDE_FLAGS, SearchSpace, load_space
from artune.study import grid_draws, storage_url

DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Mode(enum.Enum):
    """What a command does with its search: start it, continue it where it was interrupted, or grow it."""

    NEW = "new"
    RESUME = "resume"
    EXTEND = "extend"

    @property
    def flag(self) -> str:
        return f"--{self.value}"


class Stopwatch:
    """The seconds of each start-up phase, each counted from the end of the one before (manifest timings)."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> float:
        now = time.monotonic()
        self.phases[f"{phase}_s"] = round(now - self.last, 3)
        self.last = now
        return now


@dataclass(kw_only=True)
class Plan:
    space: SearchSpace  # with the command line's settings and --set knobs applied
    name: str
    directory: Path  # RESULTS_DIR/NAME
    mode: Mode
    manifest: Manifest  # as the command found it (empty for a new search)
    data_dir: Optional[str]
    address: Optional[str]
    storage: str
    repeats: int
    time_budget_s: Optional[float]
    started: float  # time.monotonic() when the command started: the time budget counts from here
    command: list[str]
    run_name: str = TUNE_DIR  # this run's Ray experiment directory under the search directory
    restore_state_from: Optional[Path] = None  # Tune's staging copy of a saved state a killed driver cut short
    takeover: bool = False  # a new search in the directory a start-up killed before its manifest left
    fresh_run: bool = False  # a resumed run that was stopped before Ray Tune began it: it starts anew
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"settings": ..., "set": ...} given
    address_label: str = "--address"  # or RAY_ADDRESS, where the address came from there
    stopwatch: Stopwatch = field(init=False)

    def __post_init__(self) -> None:
        self.stopwatch = Stopwatch(self.started)

    @property
    def tune_path(self) -> Path:
        return self.directory / self.run_name

    def concurrency(self, slots: Optional[int] = None) -> Optional[int]:
        """What the searcher lets run at once: max_concurrent, else the cluster's trial ``slots`` (None where neither
        is known, as before Ray starts). Data-parallel trials no more than the slots: Tune counts such a trial as next
        to nothing, and past the slots its workers would only wait for others'. With --repeats it counts
        configurations' groups of replicates, at least one whole group."""
        s = self.space.settings
        concurrency = s.max_concurrent or slots
        if concurrency is None:
            return None
        if s.workers > 1 and slots is not None:
            concurrency = min(concurrency, slots)
        return max(concurrency, self.repeats)

    @property
    def resume_command(self) -> str:
        """The command that continues this search, whatever directory it is in."""
        return (
            f"python -m artune.search --resume --name {self.name} "
            f"--results-dir {shlex.quote(str(self.directory.parent))}"
        )


def make_plan(args: argparse.Namespace, started: Optional[float] = None) -> Plan:
    """Check every input of the command and resolve what it runs; a bad one raises SearchError (one line)."""
    started = time.monotonic() if started is None else started
    space_path = Path(args.space) if args.space else DEFAULT_SPACE
    results_dir = check_results_dir(Path(args.results_dir))
    mode = check_mode(args)
    if args.repeats is not None and args.repeats < 1:
        raise SearchError(f"--repeats must be >= 1, but got {args.repeats}")
    if args.storage:
        check_storage(args.storage)
        args.storage = absolute_storage(args.storage)
    name = check_name(default_name(space_path) if args.name is None else args.name)
    directory = results_dir / name
    run_name, restore_state_from, takeover, fresh_run = TUNE_DIR, None, False, False
    if mode is Mode.NEW:
        manifest = Manifest(directory)
        takeover = check_new(directory, name, args.storage)
        space = load_space(space_path)
    else:
        manifest = Manifest.read(directory, mode.flag)
        if held_elsewhere(directory):  # before the checks that would take a running search for an interrupted one
            raise SearchError(
                f"{mode.flag}: search {name!r} is running in another process (lock {directory / LOCK_FILE}); "
                "wait for it to end"
            )
        space = load_space(directory / SPACE_COPY)  # the space the search started with
        check_same_space(args.space, directory, mode)
        manifest.check_copy_unchanged(space, mode.flag)
        if mode is Mode.RESUME:
            manifest.check_space_unchanged(space)
        run_name = manifest.runs[-1] if mode is Mode.RESUME else manifest.next_run
        restore_state_from = check_continuable(mode, manifest, args.num_samples)
        fresh_run = mode is Mode.RESUME and not tune_began(directory / run_name)
        check_tables(directory, mode)
    given = {
        key: getattr(args, key) for key in OVERRIDE_FLAGS if key != "time_budget" and getattr(args, key) is not None
    }
    sets = parse_sets(args.set) if args.set else {}
    # A resumed or extended search keeps the command-line settings its last run started with. (A time
    # budget is the command's own: the one given now, else the space file's.)
    started_with = manifest.overrides(run_name if mode is Mode.RESUME else manifest.runs[-1])
    space = space.with_overrides(OVERRIDE_FLAGS, **started_with["settings"])
    if started_with["set"]:
        space = space.with_fixed(started_with["set"])
    repeats = manifest.repeats
    if mode is Mode.RESUME:
        check_resumed_as_started(args, name, space, manifest, given, sets, repeats)
    repeats = args.repeats or repeats
    typed, sets = sets, data_as_set(args.data, mode, name, space, started_with["set"], sets, manifest.corpus)
    overrides = {"settings": {**started_with["settings"], **given}, "set": {**started_with["set"], **sets}}
    space = space.with_overrides(OVERRIDE_FLAGS, **overrides["settings"], time_budget=args.time_budget)
    if overrides["set"]:  # an error about the corpus names --data FILE where that gave it
        from_data = "dataset" in sets and "dataset" not in typed
        space = space.with_fixed(overrides["set"], {"dataset": f"--data {args.data}"} if from_data else None)
    space.check_configs()
    if mode is not Mode.RESUME:  # (a resume draws what its run started to)
        grid = mode is Mode.EXTEND and space.settings.sampler == "grid"
        space.check_grid_fits(len(grid_draws(read_records(directory).values(), space)) if grid else 0)
    if repeats > 1 and "seed" in space.params:
        raise SearchError(
            f"--repeats {repeats}: each repeat runs its config with the next seed, but seed is searched "
            f"({space.path}: params.seed): fix the seed (--set seed=N) or leave --repeats out"
        )
    if mode is not Mode.RESUME:  # a resume runs as its search started (and may change no resources)
        check_cuda_has_a_gpu(space)
    # not 'auto'; and data-parallel trials train eagerly
    compiles = space.settings.workers == 1 and any(value is True for value in space.possible_values("compile"))
    compiler = missing_compiler() if not args.address and compiles else None
    if compiler:  # (a cluster's nodes have toolchains of their own: a trial there says what its node lacks)
        raise SearchError(compiler_message(compiler, turn_off="--set compile=false"))
    address_label = getattr(args, "address_label", "--address")
    if args.address:
        check_address(args.address, address_label)
    storage = storage_url(directory, args.storage or manifest.storage())
    if mode is not Mode.NEW or args.storage:  # a database already there must read as one (a text file, say)
        check_study_readable(storage, mode.flag if mode is not Mode.NEW else "--storage")
    data = args.data
    source = manifest.corpus.get("source")
    if mode is not Mode.NEW and data is None and source and Path(source).exists():
        # the corpus the search started with; where it is gone (the search copied to another machine), the corpus
        # is found as a new search finds it (ARTUNE_DATA_DIR, the cache), and its sha256 must be the recorded one
        data = source
    return Plan(
        space=space,
        name=name,
        directory=directory,
        mode=mode,
        manifest=manifest,
        data_dir=data,
        address=args.address,
        address_label=address_label,
        storage=storage,
        repeats=repeats,
        time_budget_s=space.settings.time_budget,
        started=started,
        command=[sys.executable, "-m", "artune.search", *getattr(args, "argv", sys.argv[1:])],
        run_name=run_name,
        restore_state_from=restore_state_from,
        takeover=takeover,
        fresh_run=fresh_run,
        overrides=overrides,
    )


def default_name(space_path: Path) -> str:
    """A new search's name where --name is not given: the space file's name (the characters a name may hold) and the
    time, e.g. ``smoke-20261206-203000``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", space_path.stem).lstrip("_.-")[:80] or "search"
    return f"{stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def check_mode(args: argparse.Namespace) -> Mode:
    if args.resume and args.extend:
        raise SearchError(
            "--resume and --extend: choose one (resume continues an interrupted search, extend grows a finished one)"
        )
    mode = Mode.RESUME if args.resume else Mode.EXTEND if args.extend else Mode.NEW
    if mode is not Mode.NEW and not args.name:
        raise SearchError(f"{mode.flag} needs --name: the name of the search to {mode.flag[2:]}")
    return mode


def check_name(name: str) -> str:
    if not NAME_RULE.match(name) or name in (".", ".."):
        raise SearchError(
            f"--name {name!r}: a search name is letters, digits, '_', '-' and '.', starting with a letter "
            "or digit, with no path in it (results always go under --results-dir)"
        )
    return name


def check_results_dir(path: Path) -> Path:
    path = path.expanduser()
    probe = path
    try:
        while not probe.exists():
            probe = probe.parent
    except OSError as exc:  # a parent this user may not look into (EACCES)
        raise SearchError(
            f"--results-dir {path}: cannot look into {probe.parent} ({exc.strerror or exc}); "
            "choose another --results-dir"
        ) from None
    if not probe.is_dir():
        raise SearchError(f"--results-dir {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SearchError(f"--results-dir {path}: {probe} is not writable; choose another --results-dir")
    try:  # what permission bits do not tell (a read-only mount, /proc): a directory made and removed at once
        made = tempfile.mkdtemp(prefix=".artune-probe-", dir=probe)
    except OSError as exc:
        raise SearchError(
            f"--results-dir {path}: cannot create a directory in {probe} ({exc.strerror or exc}); "
            "choose another --results-dir"
        ) from None
    with contextlib.suppress(OSError):
        os.rmdir(made)
    return path.resolve()


def check_new(directory: Path, name: str, storage: Optional[str]) -> bool:
    """A new search takes a name that neither its results directory nor its --storage holds yet; True where the
    directory holds only what a start-up killed before the search began left: the new search takes it over."""
    if directory.exists() and not directory.is_dir():
        raise SearchError(f"--name {name!r}: {directory} is a file, not a search's directory; choose another --name")
    takeover = directory.exists() and any(directory.iterdir())
    if takeover and held_elsewhere(directory):  # running, or in its start-up, in another process
        raise SearchError(f"--name {name!r}: the search is running in another process (lock {directory / LOCK_FILE})")
    if takeover and not startup_leftover(directory, name, storage):
        if not (directory / MANIFEST_FILE).exists() and not startup_files_only(directory):
            raise SearchError(
                f"--name {name!r}: {directory} holds files but no {MANIFEST_FILE} (a search whose record was removed, "
                "or not a search's directory); choose another --name"
            )
        raise SearchError(
            f"--name {name!r}: {directory} already holds a search; use --resume to continue it, "
            "--extend to grow it, or choose another --name"
        )
    if storage and study_exists(storage, name) and not takeover:
        raise SearchError(
            f"--name {name!r}: the database {storage} already holds a study of that name (another "
            "search's, made elsewhere); a new search would add its trials to it: choose another --name"
        )
    return takeover


def startup_leftover(directory: Path, name: str, storage: Optional[str]) -> bool:
    """Whether ``directory`` (its lock free) is what a start-up killed before the manifest was written left: no
    manifest, only the files a start-up writes first, and a study that holds no trial."""
    if (directory / MANIFEST_FILE).exists():
        return False
    if not startup_files_only(directory):
        return False
    try:
        return study_trials(storage or storage_url(directory), name) == 0
    except Exception:  # noqa: BLE001 - SQLAlchemy's errors share no useful base
        return storage is None  # its own database, cut short by the kill as Optuna made it: nothing in it


def check_same_space(space: Optional[str], directory: Path, mode: Mode) -> None:
    """A SPACE given to a resume or an extend must be the file the search started with."""
    if not space:
        return
    if not Path(space).is_file():
        raise SearchError(
            f"{mode.flag}: space file not found: {space} (or leave it out: the search keeps its own copy)"
        )
    if Path(space).read_bytes() != (directory / SPACE_COPY).read_bytes():
        raise SearchError(
            f"{mode.flag}: {space} differs from the space search {directory.name!r} started with "
            f"({directory / SPACE_COPY}); run without the SPACE argument, or start a new --name"
        )


def check_continuable(mode: Mode, manifest: Manifest, num_samples: Optional[int]) -> Optional[Path]:
    """Whether the search's last run can be resumed (or the search extended); for a resume, the staging copy
    of Tune's saved state to restore first, where a killed driver cut it short."""
    name, last = manifest.directory.name, manifest.directory / manifest.runs[-1]
    began = tune_began(last)
    if mode is Mode.RESUME:
        if not began and reported_in(manifest.directory, manifest.runs[-1]):
            # its state removed after it ran (a deleted tune/, say): begun anew, it ran num_samples trials more
            raise SearchError(
                f"--resume: search {name!r} cannot be resumed: its last run's Ray Tune state ({last}) is gone, "
                "though its trials reported results (the tables keep every one): add trials with --extend "
                "--num-samples N (its unfinished trials are then recorded lost), or start a new --name"
            )
        # a run stopped before Ray Tune began it has nothing to resume: the resume starts it anew (Plan.fresh_run)
        return check_saved_state(last) if began else None
    if num_samples is None:
        raise SearchError("--extend needs --num-samples: how many trials to add")
    if began and not manifest.last_run_finished():
        raise SearchError(
            f"--extend: search {name!r} is unfinished (its last run was interrupted); "
            f"continue it with --resume first, then extend it"
        )
    return None


def check_tables(directory: Path, mode: Mode) -> None:
    """The tables a resume or an extend carries on (its first write rewrites them) must read whole, before Ray."""
    damaged = "the search's record is damaged: restore the file from a copy, or start a new search under another --name"
    counted = False  # trials.parquet counts finished epochs: artune writes epochs.parquet before it
    for path in (directory / TRIALS_FILE, directory / EPOCHS_FILE):
        try:
            table = read_parquet(path)
        except FileNotFoundError:
            if counted:
                raise SearchError(
                    f"{mode.flag}: {path} is missing, though {TRIALS_FILE} counts epochs; {damaged}"
                ) from None
            continue
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors share no base narrower than Exception
            why = f"{type(exc).__name__}: {first_line(exc)}"
            raise SearchError(f"{mode.flag}: {path} cannot be read ({why}); {damaged}") from None
        counted = "epochs_completed" in table.column_names and any(table.column("epochs_completed").to_pylist())


def check_resumed_as_started(
    args: argparse.Namespace,
    name: str,
    space: SearchSpace,
    manifest: Manifest,
    given: dict[str, Any],
    sets: dict[str, str],
    repeats: int,
) -> None:
    """A resume continues its search as it started: no setting, knob, --repeats or study may change."""
    changed = [OVERRIDE_FLAGS[key] for key, value in given.items() if value != getattr(space.settings, key)]
    changed += [
        f"--set {key}"
        for key, value in sets.items()
        if key not in FIELD_NAMES or coerce(key, value) != space.fixed.get(key)
    ]
    changed += ["--repeats"] * (args.repeats is not None and args.repeats != repeats)
    recorded = manifest.storage()
    if args.storage is not None and args.storage != (recorded or args.storage):
        # the way to point a search at its study kept elsewhere (a moved database), but a database that is not there,
        # or that holds no study of this name, would be a new, empty study, the search's trials left in the other
        database = sqlite_file(args.storage)
        if database is not None and not database.exists():
            changed.append(f"--storage (no database at {args.storage}; the study is in {recorded})")
        else:
            check_study_readable(args.storage, "--storage")
            if not study_exists(args.storage, name):
                changed.append(f"--storage ({args.storage} holds no study {name!r}; the study is in {recorded})")
    if changed:
        raise SearchError(
            f"--resume continues search {name!r} as it started, so {', '.join(changed)} cannot change; "
            "add trials with --extend, or start a new search under another --name"
        )


def data_as_set(
    data: Optional[str],
    mode: Mode,
    name: str,
    space: SearchSpace,
    started_with: dict[str, Any],
    sets: dict[str, str],
    corpus: Optional[dict[str, Any]] = None,
) -> dict[str, str]:
    """``--set`` with ``--data FILE`` as the corpus knob ``dataset``, which the trials' configs and the tables name.

    Given again to a resume or extend, the file is read and checked against the corpus the search started with.
    """
    data_file = Path(data).expanduser() if data is not None and Path(data).expanduser().is_file() else None
    started_on_file = mode is not Mode.NEW and started_with.get("dataset")
    if data is not None and started_on_file and data_file is None:
        raise SearchError(
            f"--data {data}: search {name!r} trained on the file {started_with['dataset']}; "
            "give that file (or a copy of it) with --data, or leave --data out"
        )
    if data is None and started_on_file not in (False, None, "tiny_shakespeare") and "dataset" not in sets:
        replayed = Path(started_on_file).expanduser()
        read = (corpus or {}).get("source")  # the file the search read: a relative path given, resumed elsewhere
        if not replayed.is_file() and not (read and Path(read).is_file()):  # (said as a --set never given)
            what = "not a file" if replayed.exists() else "gone"
            raise SearchError(
                f"{mode.flag}: search {name!r} trained on the file {started_on_file}, which is {what} now; "
                "give that file (or a copy of it) with --data"
            )
    if data_file and "dataset" in sets:
        raise SearchError(f"--data {data} and --set dataset={sets['dataset']} both name the corpus: give one")
    dataset = sets.get("dataset", space.fixed.get("dataset", "tiny_shakespeare"))
    if data is not None and mode is Mode.NEW and dataset != "tiny_shakespeare":
        # --data is Tiny Shakespeare's directory or a corpus file of its own: the space's corpus would win unseen
        if "dataset" in sets:
            where, fix = f"--set dataset={dataset}", "give one"
        else:
            where = f"{space.sources.get('fixed.dataset', str(space.path))}: fixed.dataset ({dataset})"
            fix = "leave --data out, or the dataset out of the space"
        raise SearchError(f"--data {data} and {where} both name the corpus: {fix}")
    if data_file and (mode is Mode.NEW or started_on_file):  # a new search's corpus is Tiny Shakespeare here
        return {**sets, "dataset": str(data_file.absolute())}
    return sets


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as a dict, each key a trainer knob."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SearchError(f"--set {item!r}: expected KEY=VALUE, e.g. --set seq_len=128")
        if key not in FIELD_NAMES:
            raise SearchError(f"--set {key}: {unknown_key_message(key)}")
        if key in values and not same_value(key, values[key], value.strip()):  # the last one silently won
            raise SearchError(f"--set {key}: given twice, as {values[key]} and {value.strip()}: give one")
        values[key] = value.strip()
    return values


def same_value(key: str, first: str, second: str) -> bool:
    """Whether two --set texts give a knob one value (1e-3 and 0.001); a value that does not coerce is judged later."""
    try:
        return first == second or coerce(key, first) == coerce(key, second)
    except (ValueError, TypeError, OverflowError):  # ConfigError is a ValueError
        return False


def check_cuda_has_a_gpu(space: SearchSpace) -> None:
    """``device: cuda`` in a trial that Ray gives no GPU would train on a GPU that Ray did not reserve for it, or
    fail in every trial where the node has none: refused before Ray starts."""
    if space.settings.gpu > 0 or "cuda" not in space.possible_values("device"):
        return
    if "device" in space.params:
        where = f"{space.path}:{space.params['device'].line}: params.device"
    else:
        source = space.sources.get("fixed.device", str(space.path))
        where = source if source.startswith("--") else f"{source}: fixed.device"
    raise SearchError(
        f"{where}: device 'cuda' needs a GPU for each trial, but the trials get none (resources.gpu is 0): "
        "add --gpus-per-trial 1 (resources: {gpu: 1}), or use device auto or cpu"
    )
