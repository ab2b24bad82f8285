"""``python -m artune.search [SPACE] [options]``: a hyperparameter search on Ray Tune with Optuna.

The pipeline: validate everything (space file, overrides, results directory, corpus, cluster)
before Ray starts -> encode the corpus once -> Tuner(train_fn, OptunaSearch, ASHA) -> every
result recorded into ``results/<name>/`` as it arrives -> a summary. A bad input is one line on
stderr and exit code 2; a search in which no trial succeeded exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import importlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from artune import LOADED_AT, ArgumentParser, __version__, plural, stdout_closed
from artune.config import (
    ConfigError, FIELD_NAMES, TrainConfig, coerce, compiler_message, missing_compiler, unknown_key_message,
)
from artune.results import (
    DEFAULT_RESULTS_DIR, EPOCH_COLUMNS, MANIFEST_FILE, TRIALS_FILE, EPOCHS_FILE, TrialRecord, read_records,
    write_json_atomic, write_tables,
)
from artune import spaces
from artune.spaces import SearchSpace, SpaceError, load_space
from artune.errors import SearchError
from artune.study import STUDY_FILE, open_study, storage_url, sync_study, warm_start_storage

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SPACE_COPY = "space.yaml"
LOCK_FILE = ".lock"
TUNE_DIR = "tune"
CONNECT_TIMEOUT_S = 5.0
NODE_LOOKUP_S = 10.0  # a local raylet not in the GCS by then: Ray's own lookup takes over (30 s more, then its error)
MAX_FAILURES = 2  # retries of a trial that raised, each from its last checkpoint
BUDGET_END_S = 2.0  # of a time budget, kept for the end: Tune's, the final tables, Ray's shutdown
OVERRIDE_FLAGS = {"num_samples": "--num-samples", "max_concurrent": "--max-concurrent", "cpu": "--cpus-per-trial",
                  "gpu": "--gpus-per-trial", "epochs": "--epochs", "seed": "--seed", "time_budget": "--time-budget"}
ENDED = ("completed", "stopped", "diverged")  # table statuses of trials that a resumed search does not train again
DEADLINE_LAG_S = 0.5  # running trials end this long after Tune's budget has stopped the search
# What the driver needs once Ray is up (Ray Tune with its pandas): imported while ray.init waits for
# Ray's processes, which leave part of the CPU idle (see open_study_while_ray_starts; opening the study
# there imports Optuna's SQL storage).
NEEDED_AFTER_RAY_INIT = ("ray.tune", "ray.tune.search.optuna")


# --- the command line


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m artune.search",
        description="Run a hyperparameter search over artune's trainer with Ray Tune and Optuna.",
    )
    parser.add_argument("space", nargs="?", default=None, help=f"search-space YAML file (default: {DEFAULT_SPACE.name} shipped in search_spaces/)")
    parser.add_argument("--name", help="search name: results go to RESULTS_DIR/NAME (default: <space>-<date>-<time>)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, help="where searches are written (default: results/)")
    parser.add_argument("--data", help="the corpus: a text file, or the directory holding tiny_shakespeare.txt (default: $ARTUNE_DATA_DIR or the cache)")
    parser.add_argument("--num-samples", type=int, help="trials to run")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (default: the cluster's trial slots)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs reserved per trial")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs reserved per trial (fractions share a GPU)")
    parser.add_argument("--epochs", type=int, help="training epochs per trial (ASHA's max_t)")
    parser.add_argument("--seed", type=int, help="sampler seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fix a trainer knob (repeatable)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    parser.add_argument("--storage", help="Optuna storage URL for the study (default: sqlite:///RESULTS_DIR/NAME/optuna.db)")
    parser.add_argument("--repeats", type=int, help="runs of each sampled configuration, with the trainer's seed, seed + 1, ... (the sampler sees their mean; default 1)")
    parser.add_argument("--time-budget", type=parse_duration, help="end the search after this long, start-up included (e.g. 900, 15m, 1h)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search --name")
    parser.add_argument("--extend", action="store_true", help="add --num-samples trials to the finished search --name, the sampler warm-started from its history")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; start nothing")
    return parser


def parse_duration(text: str) -> float:
    """'900', '90s', '15m', '1.5h' -> seconds (the search setting time_budget reads the same)."""
    try:
        return spaces.parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 900, 90s, 15m or 1h, but got {text!r}") from None


def parse_sets(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SearchError(f"--set {item!r}: expected KEY=VALUE, e.g. --set seq_len=128")
        if key not in FIELD_NAMES:
            raise SearchError(f"--set {key}: {unknown_key_message(key)}")
        values[key] = value.strip()
    return values


# --- the plan: everything validated before Ray starts


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


@dataclass
class Plan:
    space: SearchSpace
    name: str
    directory: Path
    data_dir: Optional[str]
    address: Optional[str]
    resume: bool
    extend: bool
    storage: str
    repeats: int
    time_budget_s: Optional[float]
    started: float  # time.monotonic() when the command started: the time budget counts from here
    command: list[str]
    run_name: str = TUNE_DIR  # this run's Ray experiment directory under the search directory
    restore_state_from: Optional[Path] = None  # Tune's staging copy of a saved state a killed driver cut short
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # {"settings": ..., "set": ...} from the command line
    stopwatch: Stopwatch = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.stopwatch = Stopwatch(self.started)

    @property
    def tune_path(self) -> Path:
        return self.directory / self.run_name


def check_name(name: str) -> str:
    if not NAME_RULE.match(name) or name in (".", ".."):
        raise SearchError(
            f"--name {name!r}: a search name is letters, digits, '_', '-' and '.', starting with a letter "
            "or digit, with no path in it (results always go under --results-dir)"
        )
    return name


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a SQLite URL (None for another database; the URL is checked by check_storage)."""
    from sqlalchemy.engine import make_url  # Optuna's storage layer

    parsed = make_url(url)
    return Path(parsed.database or ":memory:") if parsed.get_backend_name() == "sqlite" else None


def absolute_storage(url: str) -> str:
    """A SQLite URL whose file is relative, made absolute: the manifest records the URL, and a later --resume
    or --extend from another directory would otherwise open (and create) another, empty database there."""
    from sqlalchemy.engine import make_url

    database = sqlite_file(url)
    if database is None or database == Path(":memory:") or database.is_absolute():
        return url
    return make_url(url).set(database=str(database.absolute())).render_as_string(hide_password=False)


def study_exists(url: str, name: str) -> bool:
    """Whether the Optuna storage at ``url`` holds a study ``name``, read without creating anything (a database
    that cannot be read is reported where the search opens its study)."""
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        return False
    from sqlalchemy import create_engine, inspect, text

    try:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                if not inspect(connection).has_table("studies"):  # Optuna's table of studies
                    return False
                found = connection.execute(text("SELECT 1 FROM studies WHERE study_name = :name"), {"name": name})
                return found.first() is not None
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 - SQLAlchemy's errors share no useful base; see above
        return False


def recorded_storage(manifest: dict[str, Any], directory: Path) -> Optional[str]:
    """The study's URL that a search's manifest records, following the search where it has moved.

    By default a search keeps its study in its own directory, and the manifest records the file's
    absolute path. A search moved or copied since has its own study with it: the URL is read as that
    one, so that a resume or an extend neither fails on the old path nor writes into the original's.
    """
    url = manifest.get("storage")
    try:
        recorded = sqlite_file(url) if url else None
    except Exception:  # noqa: BLE001 - not a URL: opening the study names it, in one line
        return url
    here = Path(directory) / STUDY_FILE
    if recorded is not None and recorded.name == STUDY_FILE and here.exists() and recorded.resolve() != here.resolve():
        return storage_url(directory)
    return url


def check_storage(url: str) -> None:
    """A --storage URL must name a database SQLAlchemy can open here, before Ray starts and a search directory exists."""
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(url).get_dialect()
        try:
            dialect.import_dbapi()  # SQLAlchemy 2
        except (AttributeError, NotImplementedError):
            dialect.dbapi()  # SQLAlchemy 1.4, or a dialect that keeps the older name
    except ImportError as exc:
        raise SearchError(f"--storage {url!r}: its database driver is not installed ({exc}); install it, or use sqlite:///path.db") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's URL and plugin errors share no base but Exception
        raise SearchError(f"--storage {url!r}: not a database URL ({exc}); e.g. sqlite:///path.db or postgresql://user@host/db") from None
    database = sqlite_file(url)
    if database == Path(":memory:"):
        raise SearchError(f"--storage {url!r}: an in-memory database keeps nothing once the search ends; "
                          "give a file (sqlite:///path.db) or a database server's URL")
    if database is not None:
        folder = database.absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise SearchError(f"--storage {url!r}: the database file's directory {folder} is not a writable directory")


def check_results_dir(path: Path) -> Path:
    path = path.expanduser()
    probe = path
    try:
        while not probe.exists():
            probe = probe.parent
    except OSError as exc:  # a parent this user may not look into (EACCES)
        raise SearchError(f"--results-dir {path}: cannot look into {probe.parent} ({exc.strerror or exc}); "
                          "choose another --results-dir") from None
    if not probe.is_dir():
        raise SearchError(f"--results-dir {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SearchError(f"--results-dir {path}: {probe} is not writable; choose another --results-dir")
    try:  # what permission bits do not tell (a read-only mount, /proc): a directory made and removed at once
        made = tempfile.mkdtemp(prefix=".artune-probe-", dir=probe)
    except OSError as exc:
        raise SearchError(f"--results-dir {path}: cannot create a directory in {probe} ({exc.strerror or exc}); "
                          "choose another --results-dir") from None
    with contextlib.suppress(OSError):
        os.rmdir(made)
    return path.resolve()


def make_plan(args: argparse.Namespace, started: Optional[float] = None) -> Plan:
    started = time.monotonic() if started is None else started
    space_path = Path(args.space) if args.space else DEFAULT_SPACE
    results_dir = check_results_dir(Path(args.results_dir))
    if args.resume and args.extend:
        raise SearchError("--resume and --extend: choose one (resume continues an interrupted search, extend grows a finished one)")
    if (args.resume or args.extend) and not args.name:
        raise SearchError(f"--{'resume' if args.resume else 'extend'} needs --name: the name of the search to continue")
    if args.repeats is not None and args.repeats < 1:
        raise SearchError(f"--repeats must be >= 1, but got {args.repeats}")
    if args.storage:
        check_storage(args.storage)
        args.storage = absolute_storage(args.storage)
    name = check_name(args.name or f"{space_path.stem}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    directory = results_dir / name
    manifest: dict[str, Any] = {}
    run_name = TUNE_DIR
    restore_state_from = None
    if args.resume or args.extend:
        flag = "--resume" if args.resume else "--extend"
        if not (directory / MANIFEST_FILE).exists():
            raise SearchError(f"{flag}: no search named {name!r} in {results_dir} (no {MANIFEST_FILE})")
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise SearchError(f"{flag}: {directory / MANIFEST_FILE} cannot be read ({exc}); it is the search's record, "
                              "so it cannot be continued: start a new search under another --name") from None
        space = load_space(directory / SPACE_COPY)  # the space the search started with
        if args.space and not Path(args.space).is_file():
            raise SearchError(f"{flag}: space file not found: {args.space} (or leave it out: the search keeps its own copy)")
        if args.space and Path(args.space).read_bytes() != (directory / SPACE_COPY).read_bytes():
            raise SearchError(
                f"{flag}: {args.space} differs from the space search {name!r} started with "
                f"({directory / SPACE_COPY}); run without the SPACE argument, or start a new --name"
            )
        if args.resume:
            check_space_unchanged(manifest, space)
        runs = manifest.get("runs", [TUNE_DIR])
        run_name = runs[-1] if args.resume else f"{TUNE_DIR}-{len(runs) + 1}"
        # A run that was stopped before Ray Tune began it (before tuner.pkl) has nothing to resume
        tune_began = (directory / runs[-1] / "tuner.pkl").exists()
        if args.resume:
            if not tune_began:
                raise SearchError(f"--resume: the last run of search {name!r} ({directory / runs[-1]}) was stopped before "
                                  "Ray Tune began it, so there is nothing to continue; --extend it, or start a new --name")
            restore_state_from = check_saved_state(directory / run_name)
        if args.extend and args.num_samples is None:
            raise SearchError("--extend needs --num-samples: how many trials to add")
        if args.extend and tune_began and not last_run_finished(manifest):
            raise SearchError(f"--extend: search {name!r} is unfinished (its last run was interrupted); "
                              f"continue it with --resume first, then extend it")
    else:
        if directory.exists() and any(directory.iterdir()):
            raise SearchError(
                f"--name {name!r}: {directory} already holds a search; use --resume to continue it, "
                "--extend to grow it, or choose another --name"
            )
        if args.storage and study_exists(args.storage, name):
            raise SearchError(f"--name {name!r}: the database {args.storage} already holds a study of that name (another "
                              "search's, made elsewhere); a new search would add its trials to it: choose another --name")
        space = load_space(space_path)
    given = {key: value for key, value in dict(
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, cpu=args.cpus_per_trial,
        gpu=args.gpus_per_trial, epochs=args.epochs, seed=args.seed,
    ).items() if value is not None}
    sets = parse_sets(args.set) if args.set else {}
    # A resumed or extended search keeps the command-line settings its last run started with. (A time
    # budget is the command's own: the one given now, else the space file's.)
    started_with = recorded_overrides(manifest, run_name if args.resume else manifest.get("runs", [TUNE_DIR])[-1])
    space = space.with_overrides(OVERRIDE_FLAGS, **started_with["settings"])
    if started_with["set"]:
        space = space.with_fixed(started_with["set"])
    repeats = manifest.get("repeats", 1) if (args.resume or args.extend) else 1
    if args.resume:
        changed = [OVERRIDE_FLAGS[key] for key, value in given.items() if value != getattr(space.settings, key)]
        changed += [f"--set {key}" for key, value in sets.items() if key not in FIELD_NAMES or coerce(key, value) != space.fixed.get(key)]
        changed += ["--repeats"] * (args.repeats is not None and args.repeats != repeats)
        recorded = recorded_storage(manifest, directory)
        database = sqlite_file(args.storage) if args.storage is not None and args.storage != (recorded or args.storage) else None
        if database is not None and not database.exists():
            # the way to point a search at a study kept elsewhere, but a database that is not there would be a new, empty study
            changed.append(f"--storage (no database at {args.storage}; the study is in {recorded})")
        if changed:
            raise SearchError(
                f"--resume continues search {name!r} as it started, so {', '.join(changed)} cannot change; "
                "add trials with --extend, or start a new search under another --name"
            )
    repeats = args.repeats or repeats
    data = args.data
    data_file = Path(data).expanduser() if data is not None and Path(data).expanduser().is_file() else None
    started_on_file = (args.resume or args.extend) and started_with["set"].get("dataset")
    if data is not None and started_on_file and data_file is None:
        raise SearchError(f"--data {data}: search {name!r} trained on the file {started_with['set']['dataset']}; "
                          "give that file (or a copy of it) with --data, or leave --data out")
    if data_file and "dataset" in sets:
        raise SearchError(f"--data {data} and --set dataset={sets['dataset']} both name the corpus: give one")
    if data_file and (started_on_file if (args.resume or args.extend) else space.fixed.get("dataset", "tiny_shakespeare") == "tiny_shakespeare"):
        # --data FILE is the corpus: the trials' configs, and so the tables, name it, as --set dataset=FILE would
        # (given again to a resume or extend, it is read and checked against the corpus the search started with)
        sets = {**sets, "dataset": str(data_file.absolute())}
    overrides = {"settings": {**started_with["settings"], **given}, "set": {**started_with["set"], **sets}}
    space = space.with_overrides(OVERRIDE_FLAGS, **overrides["settings"], time_budget=args.time_budget)
    if overrides["set"]:
        space = space.with_fixed(overrides["set"])
    space.check_configs()
    if repeats > 1 and "seed" in space.params:
        raise SearchError(f"--repeats {repeats}: each repeat runs its config with the next seed, but seed is searched "
                          f"({space.path}: params.seed): fix the seed (--set seed=N) or leave --repeats out")
    compiles = any(value is True for value in possible_values(space, space_defaults(space), "compile"))  # 'auto' does without
    compiler = missing_compiler() if not args.address and compiles else None
    if compiler:  # (a cluster's nodes have toolchains of their own: a trial there says what its node lacks)
        raise SearchError(compiler_message(compiler, turn_off="--set compile=false"))
    if args.address:
        check_address(args.address)
    if (args.resume or args.extend) and data is None and manifest.get("corpus", {}).get("source"):
        data = manifest["corpus"]["source"]  # the corpus the search started with
    return Plan(
        space, name, directory, data, args.address, args.resume, args.extend,
        storage_url(directory, args.storage or recorded_storage(manifest, directory)), repeats, space.settings.time_budget, started,
        [sys.executable, "-m", "artune.search", *sys.argv[1:]], run_name, restore_state_from, overrides,
    )


def last_run_finished(manifest: dict[str, Any]) -> bool:
    """Whether the search's last run ended (rather than being interrupted): the manifest names its finished runs
    (a manifest from before that: its last 'finished' time is not earlier than its last start)."""
    runs = manifest.get("runs", [TUNE_DIR])
    if "finished_runs" in manifest:
        return runs[-1] in manifest["finished_runs"]
    return manifest.get("finished", "") >= max(manifest.get(k, "") for k in ("started", "resumed", "extended"))


def recorded_overrides(manifest: dict[str, Any], run_name: str) -> dict[str, dict[str, Any]]:
    """The command-line settings (``settings``) and ``--set`` knobs (``set``) a search's run started with."""
    if "overrides" in manifest:
        recorded = {"settings": {}, "set": {}, **manifest["overrides"].get(run_name, {})}
        # a time budget is the command's own, never replayed (an early version of this record held it)
        return {**recorded, "settings": {k: v for k, v in recorded["settings"].items() if k in OVERRIDE_FLAGS and k != "time_budget"}}
    if not manifest:
        return {"settings": {}, "set": {}}
    # A manifest from before artune recorded them: what it recorded of the settings in force
    resources = manifest.get("resources_per_trial", {})
    settings = {"epochs": manifest.get("epochs"), "seed": manifest.get("seed"), "cpu": resources.get("cpu"), "gpu": resources.get("gpu")}
    if len(manifest.get("runs", [])) == 1:
        settings["num_samples"] = manifest.get("num_samples")
    return {"settings": {k: v for k, v in settings.items() if v is not None}, "set": dict(manifest.get("fixed", {}))}


def check_space_unchanged(manifest: dict[str, Any], started_with: SearchSpace) -> None:
    """Refuse to resume a search whose space file was edited since it started, naming the change."""
    original = Path(manifest.get("space_file", ""))
    if not original.is_file() or sha256_file(original) == manifest.get("space_sha256"):
        return
    try:
        changes = space_changes(started_with, load_space(original))
    except SpaceError:
        changes = []
    what = "; ".join(changes) if changes else "its text differs"
    raise SearchError(
        f"--resume: {original} changed since search {manifest.get('name')!r} started ({what}); "
        "restore the file, or start a new search under another --name"
    )


def check_saved_state(tune_path: Path) -> Optional[Path]:
    """Check the Ray Tune state --resume continues from; where a killed driver cut it short, find its whole copy.

    Tune writes its state into Ray's session directory, then copies it into the run directory without
    an atomic rename: a driver killed during the copy leaves the newest ``experiment_state-*.json`` (or
    its searcher's state beside it) empty or cut short, and Tune would resume from it without a word,
    losing the trials it listed, or fail on it.
    (Tune reads the newest by name, as here.) The staging copy outlives the driver: Ray never deletes
    a session directory. Returns the staging directory to restore the state from, or None where the
    saved state is whole; refuses where neither is.
    """
    states = sorted(tune_path.glob("experiment_state-*.json"))
    if not states:
        return None
    newest = states[-1]
    problem = torn_file(newest)
    if problem is None:
        return None
    torn, what = problem
    staged = staged_state(newest)
    if staged is None:
        raise SearchError(
            f"--resume: Ray Tune's saved state {torn} is {what}: the driver was stopped while Tune wrote it, "
            f"and no whole copy of it is left in Tune's staging directories under {ray_temp_dir()} (a cluster started "
            "with ray start --temp-dir DIR keeps them in DIR: give RAY_TMPDIR=DIR), so the trials it listed cannot be "
            "continued; the tables keep every result so far, so start the search again under another --name"
        )
    return staged.parent


def torn_file(state: Path) -> Optional[tuple[Path, str]]:
    """The first file of a saved state that is empty, or (the state itself, JSON) does not parse, with what is
    wrong with it; None where all are whole. Beside the state, named by the same start: the searcher's
    pickles (``searcher-state-*.pkl``, and ``search_gen_state-*.json``, a pickle despite its name)."""
    stamp = state.stem.removeprefix("experiment_state-")
    for path in [state, *sorted(p for p in state.parent.glob(f"*-{stamp}.*") if p != state)]:
        try:
            if path.stat().st_size == 0:
                return path, "empty"
            if path == state:
                json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return path, f"unreadable ({error})"
    return None


def ray_temp_dir() -> Path:
    """Where a Ray instance started on this machine keeps its sessions (Ray's own rule)."""
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(base or "/tmp") / "ray"


def staged_state(state: Path) -> Optional[Path]:
    """Ray Tune's staging copy of the saved state ``state``, where one is whole; the newest of several.

    Tune stages a run's files in ``<session>/artifacts/<start>/<run>/driver_artifacts/``; the state's
    name holds the run's start to the second, and the copy must list a trial of this run.
    """
    tune_path = state.parent
    pattern = f"session_*/artifacts/*/{tune_path.name}/driver_artifacts/{state.name}"
    # RAY_TMPDIR may also name a cluster's `ray start --temp-dir`, which holds its sessions itself (no ray/ below)
    roots = {ray_temp_dir(), *([Path(os.environ["RAY_TMPDIR"])] if os.environ.get("RAY_TMPDIR") else [])}
    candidates = sorted((p for root in roots for p in root.glob(pattern)), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if torn_file(candidate) is not None:
            continue
        try:
            trials = [json.loads(trial)["trial_id"] for trial, _ in json.loads(candidate.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if any((tune_path / trial_id).is_dir() for trial_id in trials):
            return candidate
    return None


def restore_saved_state(plan: Plan) -> None:
    """Put Tune's staging copy of the run's saved state in place of the one a killed driver cut short.

    Every file of the staging directory (the state, the searcher's state, the Tuner), each written
    whole and renamed into place: the set Tune meant to copy, from one moment.
    """
    staging = plan.restore_state_from
    try:
        for source in sorted(p for p in staging.iterdir() if p.is_file()):
            target = plan.tune_path / source.name
            partial = target.with_name(f".{source.name}.restoring")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
    except OSError as exc:
        raise SearchError(f"--resume: cannot restore Ray Tune's saved state from {staging} ({exc}); "
                          "start the search again under another --name") from None
    print(
        f"warning: Ray Tune's saved state in {plan.tune_path} was cut short (its driver was killed while Tune "
        f"copied it); restored it from Tune's own staging copy in {staging}",
        file=sys.stderr, flush=True,
    )


def space_changes(old: SearchSpace, new: SearchSpace) -> list[str]:
    changes = []
    for section, a, b in (("search", dataclasses.asdict(old.settings), dataclasses.asdict(new.settings)),
                          ("fixed", old.fixed, new.fixed),
                          ("params", {k: d.describe() for k, d in old.params.items()}, {k: d.describe() for k, d in new.params.items()})):
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                changes.append(f"{section}.{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return changes


def check_address(address: str) -> None:
    """Fail in seconds when nothing answers at ``address`` (Ray alone retries for minutes)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        # Through Ray's client, Tune runs on the cluster, and with it the callback that writes the tables and
        # the study: they would be written on the head (or nowhere), while this driver, seeing no result,
        # would write its empty tables over the search's at a time budget's end.
        raise SearchError(f"--address {address}: Ray's client runs the search's Tune loop on the cluster, where "
                          "artune cannot keep its tables; run the search as a Ray job on the head (ray job submit, "
                          "see the README) or on a node of the cluster with --address HOST:6379")
    if address.startswith(("http://", "https://")):
        raise SearchError(f"--address {address}: that is the dashboard's address (what ray job submit takes); give the "
                          "cluster's: HOST:6379")
    try:
        parsed = urlparse(address if "://" in address else f"tcp://{address}")
        host, port = parsed.hostname, parsed.port  # .port raises on a port that is not a number in 0-65535
    except ValueError:
        host = port = None
    if not host or not port:
        raise SearchError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise SearchError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); "
            "is the head running (ray start --head) and the port open?"
        ) from None


def load_plan_corpus(plan: Plan, fetch: bool = True) -> Any:
    """The corpus every trial trains on, encoded once, and checked against every setting the space can give:
    the windows and batches fit, the prompt's tokens are in its vocabulary. (``fetch``: see load_corpus.)"""
    from artune.data import CorpusError, check_fits, load_corpus
    from artune.tokenizers import UnknownTokenError, get_tokenizer

    fixed = space_defaults(plan.space)
    try:
        corpus = load_corpus(fixed.dataset, fixed.tokenizer, plan.data_dir, fetch=fetch)
        # The loaders' needs grow with seq_len and with batch_size, each alone: the largest of each is the test.
        seq_len, batch_size = (int(max(possible_values(plan.space, fixed, key))) for key in ("seq_len", "batch_size"))
        whole_batches = any(possible_values(plan.space, fixed, "compile"))  # true or 'auto'
        for train_loader in sorted(set(possible_values(plan.space, fixed, "train_loader"))):
            for valid_loader in sorted(set(possible_values(plan.space, fixed, "valid_loader"))):
                check_fits(corpus, seq_len, batch_size, train_loader=train_loader, valid_loader=valid_loader,
                           whole_batches=whole_batches)
    except CorpusError as exc:
        if not fetch:
            raise
        raise SearchError(str(exc)) from None
    samples = max(possible_values(plan.space, fixed, "sample_tokens")) > 0
    for prompt in possible_values(plan.space, fixed, "prompt"):
        try:
            tokens = corpus.vocabulary.encode(get_tokenizer(fixed.tokenizer)(prompt))
        except UnknownTokenError as exc:
            raise SearchError(f"prompt {prompt!r} (the greedy sample's start): {exc}; give one this corpus can "
                              f"encode, e.g. --set prompt=...") from None
        if samples and not tokens:
            raise SearchError(f"prompt must give at least one {fixed.tokenizer} token when sample_tokens > 0 (the greedy "
                              f"sample continues it), but got {prompt!r}; give one, e.g. --set prompt=..., or --set sample_tokens=0")
    manifest_path = plan.directory / MANIFEST_FILE
    if (plan.resume or plan.extend) and manifest_path.exists():
        started_with = json.loads(manifest_path.read_text()).get("corpus", {})
        if started_with.get("sha256") and started_with["sha256"] != corpus.sha256:
            raise SearchError(
                f"--{'resume' if plan.resume else 'extend'}: the corpus {corpus.source} (sha256 {corpus.sha256[:12]}) is not the one "
                f"search {plan.name!r} started with ({started_with.get('source')}, sha256 {started_with['sha256'][:12]}); "
                "give that corpus with --data"
            )
    return corpus


def space_defaults(space: SearchSpace) -> TrainConfig:
    """Every knob the space does not search: its fixed value, else TrainConfig's default."""
    return TrainConfig.from_dict({k: v for k, v in space.fixed.items() if k in FIELD_NAMES})


def possible_values(space: SearchSpace, fixed: TrainConfig, key: str) -> list[Any]:
    """The values a knob can take in a search: its choices or its bounds (and, searched under a condition, its
    default), or its fixed value."""
    dist = space.params.get(key)
    if dist is None:
        return [getattr(fixed, key)]
    values = list(dist.values) if dist.kind == "choice" else [dist.low, dist.high]
    return values + [getattr(fixed, key)] * bool(dist.when)  # where its condition is off, the knob keeps its default


# --- running on Ray


def token_auth_enabled() -> bool:
    """Whether Ray will authenticate to the cluster with a token (``RAY_AUTH_MODE=token``; off by default)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # Ray moved it: read the setting it comes from
        return os.environ.get("RAY_AUTH_MODE", "disabled").lower() == "token"
    return is_token_auth_enabled()


def keep_ray_on_loopback() -> None:
    """Make the Ray instance this process starts listen on 127.0.0.1 only.

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray swaps a loopback address for the
    host's routable one, and its servers then listen on every interface. Ray's single-machine mode
    (the setting it uses on macOS and Windows) keeps the node address, and so every server, on
    loopback. Ray reads the setting when it is imported (and its worker processes inherit it).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # imported already (artune used as a library): set what the import read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def set_ray_environment(plan: Plan) -> None:
    """The settings Ray and Ray Tune read from the environment: before anything imports them."""
    if not plan.address:
        keep_ray_on_loopback()
        # The local raylet would start one idle worker per CPU for the first driver. No trial can use
        # them: Tune starts each trial actor with a runtime env of its own (env_vars), and a prestarted
        # worker serves only tasks without one. Starting them cost ray.init about 1 s of a 2-core machine.
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # artune checkpoints every epoch on purpose (resume loses at most one epoch); Ray's hint about it is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's automatic loggers include TensorBoard's, whose tensorboardX imports torch into the driver
    # (1.6 s, on the path of every search); build_tuner adds the JSON and CSV loggers itself.
    # TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 brings the TensorBoard files back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A trial that ends without training (its deadline passed before its first epoch, or a resume's
    # tables saw it end) returns without a result. Tune 2.60 then checks that its final result holds
    # the metric, and its exemption for "the trial just returned" misses the flattened config/... keys
    # of that result: the search would end in a ValueError. The metric's name is checked by artune
    # (spaces.METRICS) before Ray starts, and the searcher and ASHA take a result without it as such.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


def open_study_while_ray_starts(plan: Plan) -> Future:
    """Import what the driver needs after ray.init, and open the Optuna study, in a thread.

    ray.init spends seconds waiting for Ray's processes to start, and they leave part of the CPU idle;
    the thread uses it (bench/search_overhead.py measures the start-up). Ray itself is imported whole
    before, in the calling thread, so that only ray.init's few lazy imports meet the thread's (where
    two threads meet in a circular import, Python raises rather than hangs). Where the thread fails,
    the driver opens the study itself afterwards, and a real error is raised there.
    """

    def run() -> Any:
        for name in NEEDED_AFTER_RAY_INIT:
            importlib.import_module(name)
        return open_study(plan.storage, plan.name, plan.space.settings.mode)

    import ray  # noqa: F401  (see above)

    pool = ThreadPoolExecutor(1, thread_name_prefix="artune-study")
    study = pool.submit(run)
    pool.shutdown(wait=False)
    return study


def init_ray(plan: Plan) -> None:
    import ray

    if plan.address:
        try:
            ray.init(address=plan.address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line and nothing is left
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            hint = ("; a driver must run on a node of the cluster (or go through ray job submit)"
                    if "node info" in str(exc).lower() else
                    "" if token_auth_enabled() else
                    "; if the head uses Ray's token authentication, set RAY_AUTH_MODE=token (with the head's "
                    "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
            raise SearchError(f"--address {plan.address}: Ray could not connect ({type(exc).__name__}: {first}){hint}") from None
        if not token_auth_enabled():
            print(
                f"warning: connected to {plan.address} with Ray's token authentication off (RAY_AUTH_MODE is not "
                "'token'): anyone who reaches the cluster can run code on it; keep it on a private network",
                file=sys.stderr, flush=True,
            )
    else:
        # A private local instance ("local": never a cluster that `ray start` left running here),
        # on loopback only (see keep_ray_on_loopback), no dashboard.
        try:
            with quick_node_lookup():
                ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user gets one line and nothing is left
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise SearchError(f"Ray could not start a local instance ({type(exc).__name__}: {first}); "
                              f"its logs are under {ray_temp_dir()}") from None
    resources = ray.cluster_resources()
    s = plan.space.settings
    if s.gpu > 0 and resources.get("GPU", 0) < s.gpu:
        raise SearchError(
            f"gpu: {s.gpu} per trial, but the cluster has {resources.get('GPU', 0):g} GPUs; "
            "lower --gpus-per-trial or add GPU nodes"
        )
    if resources.get("CPU", 0) < s.cpu:
        raise SearchError(f"cpu: {s.cpu} per trial, but the cluster has {resources.get('CPU', 0):g} CPUs; lower --cpus-per-trial")
    # A trial runs on one node: the cluster's totals can hold it while no node does (two 1-GPU nodes, 2 GPUs a trial).
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(n.get("CPU", 0) >= s.cpu and n.get("GPU", 0) >= s.gpu for n in nodes):
        shapes = ", ".join(sorted({f"{n.get('CPU', 0):g} CPUs and {n.get('GPU', 0):g} GPUs" for n in nodes}))
        raise SearchError(f"resources: {s.cpu:g} CPUs and {s.gpu:g} GPUs per trial, but no node has that much (nodes: "
                          f"{shapes}); a trial runs on one node: lower --cpus-per-trial or --gpus-per-trial")


@contextlib.contextmanager
def quick_node_lookup() -> Iterator[None]:
    """``ray.init`` of a local instance, up to a second sooner: the new node is looked up every 20 ms.

    Once it has started the raylet, ``ray.init`` looks the new node up in the GCS (0.1 s later), and
    Ray's lookup (``GlobalStateAccessor::GetNode``) sleeps a whole second between tries: a raylet
    that registers 0.7 s in is found 1.1 s in, one that registers at 1.2 s, 2.1 s in. Here the node
    table is read every 20 ms first, so Ray's own lookup, run after it as before, finds the node at
    its first try. Anything unexpected in Ray's private modules leaves the lookup to Ray alone.
    """
    try:
        from ray._private import services, state

        lookup, client_options = services.get_node, services._get_gcs_client_options
    except (ImportError, AttributeError):
        yield
        return

    def get_node(*args: Any, **kwargs: Any) -> Any:
        try:
            gcs_address, node_id = args[:2]
            table = state.GlobalState()
            table._initialize_global_state(client_options(gcs_address))
            try:
                give_up = time.monotonic() + NODE_LOOKUP_S
                while not any(n.get("NodeID") == node_id and n.get("Alive") for n in table.node_table()):
                    if time.monotonic() > give_up:
                        break
                    time.sleep(0.02)
            finally:
                table.disconnect()
        except Exception:  # noqa: BLE001 - Ray's own lookup below still runs, and reports what is wrong
            pass
        return lookup(*args, **kwargs)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = lookup


def stop_ray() -> None:
    """``ray.shutdown()``, a second sooner; a no-op where Ray was never imported or started.

    Ray's shutdown stops the GCS before the autoscaler monitor of a local instance, and the monitor's
    SIGTERM handler then waits on that GCS until Ray kills it after a 1-s grace. The monitor has
    nothing to save for a local instance, so it goes first, killed (``Node.kill_monitor``, the
    call Ray's own tests use). A driver connected to a cluster started no processes: nothing to
    kill there. Anything unexpected in Ray's private node object leaves Ray's own shutdown to it.
    """
    ray = sys.modules.get("ray")
    if ray is None:
        return
    try:
        node = ray._private.worker._global_node
        if node is not None and node.head:
            node.kill_monitor(check_alive=False)
    except Exception:  # noqa: BLE001 - only a second is at stake; ray.shutdown below does the rest
        pass
    ray.shutdown()


def run_number(run_name: str) -> int:
    """1 for a search's first Ray run (``tune``), k for its (k-1)-th extension (``tune-k``)."""
    return 1 if run_name == TUNE_DIR else int(run_name.rsplit("-", 1)[1])


def trial_slots(space: SearchSpace, resources: dict[str, float]) -> int:
    s = space.settings
    slots = int(resources.get("CPU", 1) // s.cpu)
    if s.gpu > 0:
        slots = min(slots, int(resources.get("GPU", 0) // s.gpu))
    return max(1, slots)


def repoint_searcher_state(tune_path: Path) -> None:
    """Point the experiment in Tune's saved searcher state at ``tune_path``, where the search is now.

    Tune re-points the trials it restores at the directory it resumes from, but creates every new
    trial from the experiment its searcher saved, whose storage is where the search first ran: the
    new trials of a moved search failed ("Unable to set up cluster storage" naming the old path, three
    times each), and those of a copy wrote into the original. The state is rewritten whole, as Tune
    writes it; where Ray's private layout differs, it is left as it is.
    """
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(str(tune_path), pattern)
    storage = getattr((state or {}).get("experiment"), "storage", None)
    if storage is None or not hasattr(storage, "storage_fs_path") or Path(storage.experiment_fs_path) == tune_path:
        return
    storage.storage_fs_path, storage.experiment_dir_name = tune_path.parent.as_posix(), tune_path.name
    newest = max(tune_path.glob(pattern))
    _atomic_save(state, str(tune_path), newest.name, f"tmp-{newest.name}")


def build_tuner(plan: Plan, corpus: Any, recorder: Any):
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    from artune.trainable import train_fn

    s = plan.space.settings
    time_budget = deadline = None
    if plan.time_budget_s:
        # Start-up counts too, and so does the end (Tune's, the tables, Ray's shutdown). Tune's
        # budget stops the search (no new trial) a moment before the running trials' deadline
        # ends them: Tune's own stop of a running trial waits for its next report.
        time_budget = max(1.0, plan.time_budget_s - (time.monotonic() - plan.started) - BUDGET_END_S)
        deadline = time.time() + time_budget + DEADLINE_LAG_S
    # A trial Tune's saved state would continue, though the tables saw it end after Tune last saved it
    # (a killed driver): it is not trained again.
    ended = frozenset(tid for tid, record in recorder.records.items() if record.status in ENDED) if plan.resume else frozenset()
    trainable = tune.with_resources(
        tune.with_parameters(train_fn, corpus=corpus, deadline=deadline, ended=ended), {"cpu": s.cpu, "gpu": s.gpu})
    callbacks = [recorder, JsonLoggerCallback(), CSVLoggerCallback()]  # each trial's result.json, progress.csv
    # ASHA takes a percentile of each rung's results, NaNs left out: a rung that holds only a diverged
    # trial's NaN makes numpy warn on the driver's stderr, though nothing is wrong (that trial has ended).
    warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
    if plan.resume:
        repoint_searcher_state(plan.tune_path)
        tuner = tune.Tuner.restore(str(plan.tune_path), trainable, resume_unfinished=True, resume_errored=True)
        # Tune restores its run and tune configs from the first run's tuner.pkl: its callbacks would be
        # that run's recorder, unpickled (this driver's would see no result: a Ctrl-C would pass for the
        # end, and the budget's end would write the tables as they were before the resume), and its time
        # budget that run's. Ray has no public way to give them anew (ray-project/ray#41364).
        restored = getattr(tuner, "_local_tuner", None)  # private: a later Ray may not have it
        if restored is not None:
            restored.get_run_config().callbacks = callbacks
            restored._tune_config.time_budget_s = time_budget
        return tuner
    concurrency = s.max_concurrent or trial_slots(plan.space, ray.cluster_resources())
    # The searcher's own in-memory study; with --extend it starts out holding every earlier trial,
    # so the sampler is warm-started from the search's whole history.
    storage, warm = warm_start_storage(recorder.records.values(), plan.space, plan.name)
    if warm:
        print(f"sampler warm-started from {warm} earlier trials", flush=True)
    searcher = OptunaSearch(
        space=plan.space.define_by_run, metric=s.metric, mode=s.mode, sampler=plan.space.make_sampler(run_number(plan.run_name)),
        storage=storage, study_name=plan.name,
    )
    search_alg = ConcurrencyLimiter(searcher, max_concurrent=max(concurrency, plan.repeats))
    if plan.repeats > 1:
        # each sampled config runs `repeats` times (seeds seed, seed+1, ...); the sampler sees their mean
        search_alg = Repeater(search_alg, repeat=plan.repeats, set_index=True)
    if s.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=s.epochs, grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, search_alg=search_alg, scheduler=scheduler,
            num_samples=s.num_samples * plan.repeats, time_budget_s=time_budget,
            trial_dirname_creator=lambda trial: trial.trial_id,
            # A finished trial's worker process takes the next trial of the same resources: no new
            # process, no re-import of torch, no second fetch of the corpus (bench search).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=plan.run_name, storage_path=str(plan.directory), verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def make_recorder(plan: Plan, study: Any = None):
    """A Tune callback that records every result into the parquet tables and the study as it arrives."""
    from ray import tune

    directory, epochs, space, storage, name = plan.directory, plan.space.settings.epochs, plan.space, plan.storage, plan.name
    manifest_path = directory / MANIFEST_FILE
    runs = json.loads(manifest_path.read_text()).get("runs", []) if manifest_path.exists() else []
    runs = runs if plan.run_name in runs else [*runs, plan.run_name]  # an extend's new run is not in the manifest yet
    metric, mode = space.settings.metric, space.settings.mode

    class Recorder(tune.Callback):
        REFRESH_S = 2.0  # rewrite the tables at most this often while trials run

        def __init__(self) -> None:
            self.records: dict[str, TrialRecord] = read_records(directory)  # a resumed search carries on its tables
            self._written = 0.0
            self._study = None  # (given after: a closure over it would pickle the DB connection with the class)
            self.unfinished, self.cut_short = 0, []
            self.ended: set[str] = set()  # trials Tune reported ended (complete or error) in this run
            self.spent: dict[str, list[float]] = {}  # the seconds of each epoch trained in this run, by trial

        def __getstate__(self) -> dict:
            # Ray pickles callbacks with the experiment; the study's DB connection stays behind
            return {**self.__dict__, "_study": None}

        def setup(self, **info: Any) -> None:
            self.ended, self.spent = set(), {}
            self.records = read_records(directory)
            # The tables are refreshed every REFRESH_S: a driver killed in between may have missed
            # results that Ray recorded. Ray's own per-trial result files fill those in.
            for run in runs:
                merge_ray_results(self.records, directory / run)

        def finish(self, budget_spent: bool) -> int:
            """After fit: how many trials were left unfinished (the search was interrupted).

            Trials Tune stopped without ending them were cut short by the time budget when it was
            spent (they are 'stopped'), otherwise by Ctrl-C (they stay unfinished for --resume).
            """
            if budget_spent:
                for record in self.cut_short:
                    record.status = "stopped"
                self.cut_short = []
                self.write(force=True)
            return self.unfinished + len(self.cut_short)

        @property
        def study(self) -> Any:
            if self._study is None:
                self._study = open_study(storage, name, mode)
            return self._study

        def _record(self, trial: Any) -> TrialRecord:
            if trial.trial_id not in self.records:
                config = {k: v for k, v in trial.config.items() if k in FIELD_NAMES}
                full = TrainConfig.from_dict(config).to_dict()
                repeat = trial.config.get("__trial_index__")  # Ray's Repeater: which run of a repeated config
                if repeat is not None:
                    full["seed"] += int(repeat)
                self.records[trial.trial_id] = TrialRecord(trial.trial_id, full, config_id=config_id(full))
            return self.records[trial.trial_id]

        def write(self, force: bool = False) -> None:
            now = time.monotonic()
            if force or now - self._written >= self.REFRESH_S:
                write_tables(directory, self.records.values())
                self._written = now
            if force:
                sync_study(self.study, self.records.values(), space, metric)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            record = self._record(trial)
            self.spent.setdefault(trial.trial_id, [])
            if record.status not in ENDED:  # a resumed trial the tables saw end ends at once (train_fn's `ended`)
                record.status, record.error = "running", None  # an errored trial --resume runs again starts clean

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            record = self._record(trial)
            metrics = {k: result[k] for k in result if k in _EPOCH_KEYS or "/" in k}
            record.add_epoch(metrics)
            if "seconds" in metrics:
                self.spent.setdefault(trial.trial_id, []).append(metrics["seconds"])
            if metrics.get("diverged"):
                print(f"[{trial.trial_id}] diverged in epoch {metrics['epoch']}: {metrics.get('error')}", flush=True)
            else:
                print(
                    f"[{trial.trial_id}] epoch {metrics['epoch']}/{epochs}  valid_loss {metrics['valid_loss']:.4f}  "
                    f"valid_acc {metrics['valid_accuracy']:.3f}  {metrics['tokens_per_sec']:,.0f} tok/s",
                    flush=True,
                )
            self.write()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended.add(trial.trial_id)
            record = self._record(trial)
            if record.status != "diverged":
                record.status = "completed" if len(record.epochs) >= epochs else "stopped"
            self.write(force=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended.add(trial.trial_id)
            record = self._record(trial)
            record.status = "error"
            record.error = error_line(trial)
            print(f"[{trial.trial_id}] error: {record.error}", flush=True)
            self.write(force=True)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            # Settle every status from Ray's own view: a trial that ended while the driver was down
            # (then resumed) gets no on_trial_complete, and an interrupted one none at all.
            # On Ctrl-C, Tune saves its state, then stops the running trials (TERMINATED, but with no
            # on_trial_complete): those are unfinished, and --resume continues them from that state.
            self.unfinished, self.cut_short = 0, []
            for trial in trials:
                record = self._record(trial)
                if trial.status == "TERMINATED" and trial.trial_id not in self.ended and record.status in ("running", "pending") \
                        and len(record.epochs) < epochs:
                    self.cut_short.append(record)  # by Ctrl-C, or by the time budget
                elif trial.status == "TERMINATED":
                    if record.status in ("running", "pending"):
                        record.status = "completed" if len(record.epochs) >= epochs else "stopped"
                elif trial.status == "ERROR":
                    if record.status != "error":
                        record.status, record.error = "error", error_line(trial)
                else:
                    self.unfinished += 1
            self.write(force=True)

    recorder = Recorder()
    recorder._study = study
    return recorder


_EPOCH_KEYS = {*EPOCH_COLUMNS, "diverged", "error"} - {"trial_id"}  # what a trial reports of an epoch, not Tune's own keys


def merge_ray_results(records: dict[str, TrialRecord], tune_path: Path) -> None:
    """Add the epochs Ray wrote to each trial's result.json that the tables do not hold yet."""
    for trial_dir in sorted(tune_path.glob("*/result.json")):
        trial_id = trial_dir.parent.name
        record = records.get(trial_id)
        if record is None:  # started and reported within one table refresh before the driver died
            params = trial_dir.parent / "params.json"
            try:
                config = json.loads(params.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            full = TrainConfig.from_dict({k: v for k, v in config.items() if k in FIELD_NAMES}).to_dict()
            if config.get("__trial_index__") is not None:
                full["seed"] += int(config["__trial_index__"])
            record = records[trial_id] = TrialRecord(trial_id, full, "running", config_id=config_id(full))
        # The file holds every attempt of the trial in order: replayed into a record of its own, a retry's
        # epochs replace the failed attempt's there too, and only what the last attempt left is added.
        replayed = TrialRecord(trial_id, record.config)
        for line in trial_dir.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if "epoch" in result:
                replayed.add_epoch({k: v for k, v in result.items() if k in _EPOCH_KEYS or "/" in k})
        for epoch in sorted(set(replayed.epochs) - set(record.epochs)):
            record.add_epoch(replayed.epochs[epoch])


def config_id(config: dict[str, Any]) -> str:
    """Names a configuration whatever its seed, so the replicates of one config share it."""
    knobs = {k: v for k, v in sorted(config.items()) if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:10]


def error_line(trial: Any) -> str:
    """One line on the trial's latest failure (see ``summarize_error``).

    Tune writes the trace to the trial's local directory first and to storage later, so the local
    file is read first.
    """
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    return summarize_error(text or str(trial.get_error() or ""))


def summarize_error(text: str) -> str:
    """The latest failure in a Tune error file, in one line: the exception's type and message (its
    trace's last line), or for a lost actor (its node or process died) the reason Ray gives."""
    latest = re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1]  # the file holds every failure
    lines = [line.strip() for line in latest.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    reason = next((line for line in lines if line.startswith("The actor died because")), None)
    if reason is not None:
        reason = reason.split(" Node Id")[0].rstrip(".")
        return reason if reason in lines[-1] else f"{reason} ({lines[-1]})"
    return lines[-1]


# --- manifest and summary


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import importlib.metadata

    import optuna
    import ray

    # torch's from its package metadata (the same string as torch.__version__): the driver never imports torch
    return {"artune": __version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "torch": importlib.metadata.version("torch"), "python": platform.python_version()}


def write_manifest(plan: Plan, corpus: Any, extra: dict[str, Any], new_command: bool = False) -> None:
    path = plan.directory / MANIFEST_FILE
    manifest = json.loads(path.read_text()) if path.exists() else {}
    s = plan.space.settings
    manifest.update({
        "name": plan.name, "versions": versions(),
        "corpus": {"source": corpus.source, "sha256": corpus.sha256, "vocab_size": corpus.vocab_size,
                   "tokenizer": corpus.tokenizer, "train_tokens": len(corpus.train), "valid_tokens": len(corpus.valid)},
        "space_sha256": plan.space.text_sha256,
        "metric": s.metric, "mode": s.mode, "epochs": s.epochs, "seed": s.seed,
        "resources_per_trial": {"cpu": s.cpu, "gpu": s.gpu}, "fixed": plan.space.fixed,
        # every run's searched knobs: an --extend that fixes a knob an earlier run searched (--set lr=...)
        # leaves it searched across the search, its earlier condition with it
        "params": list(dict.fromkeys([*manifest.get("params", []), *plan.space.params])),
        "conditions": {**{name: when for name, when in manifest.get("conditions", {}).items() if name not in plan.space.params},
                       **{name: {knob: list(values) for knob, values in dist.when.items()}
                          for name, dist in plan.space.params.items() if dist.when}},
        "repeats": plan.repeats, "storage": plan.storage,
        "study_name": plan.name, "address": plan.address,
    })
    manifest.setdefault("space_file", str(plan.space.path))  # the file the search started from
    runs = manifest.setdefault("runs", [])
    if plan.run_name not in runs:
        runs.append(plan.run_name)
        manifest["num_samples"] = manifest.get("num_samples", 0) + s.num_samples
    if new_command:
        manifest.setdefault("commands", []).append(plan.command)
    manifest.setdefault("overrides", {})[plan.run_name] = plan.overrides
    if "finished" in extra:
        manifest["finished_runs"] = sorted({*manifest.get("finished_runs", []), plan.run_name})
    manifest.update(extra)
    write_json_atomic(manifest, path)


def summarise(plan: Plan) -> tuple[str, bool]:
    from artune.results import load

    results = load(plan.directory)
    trials = results.trials
    counts = trials["status"].value_counts().to_dict()
    ok = bool(counts.get("completed", 0) + counts.get("stopped", 0))
    lines = [f"search {plan.name}: {plural(len(trials), 'trial')} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    best = results.best(1)
    if len(best):
        row = best.iloc[0]
        knobs = ", ".join(f"{k}={_fmt(row[k])}" for k in plan.space.params)
        column, _ = results.metric_column()
        lines.append(f"best trial {row['trial_id']}: {column.replace('_', ' ', 1)} {row[column]:.4f} after {plural(int(row['epochs_completed']), 'epoch')} ({knobs})")
        sample = results.epochs[results.epochs.trial_id == row["trial_id"]].sort_values("epoch")["sample"]
        if len(sample):
            lines.append(f"its last sample: {sample.iloc[-1]!r}")
    lines.append(f"results: {plan.directory / TRIALS_FILE}, {plan.directory / EPOCHS_FILE}, {plan.directory / MANIFEST_FILE}")
    return "\n".join(lines), ok


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def describe_plan(plan: Plan) -> str:
    s = plan.space.settings
    where = plan.address or "a local Ray instance started here (127.0.0.1, dashboard off)"
    return "\n".join([
        f"search {plan.name!r}{' (resume)' if plan.resume else ''} on {where}",
        plan.space.describe(),
        f"trial resources: {s.cpu:g} CPU, {s.gpu:g} GPU; concurrency: {s.max_concurrent or 'the cluster trial slots'}",
        *([f"repeats: each sampled configuration runs {plan.repeats} times (the trainer's seed, seed + 1, ...): "
           f"{s.num_samples * plan.repeats} trials in all; the sampler sees their mean"] if plan.repeats > 1 else []),
        f"writes: {plan.directory}/ ({TRIALS_FILE}, {EPOCHS_FILE}, {MANIFEST_FILE}, {SPACE_COPY}, {plan.run_name}/)",
        f"Optuna study: {plan.name!r} in {plan.storage}",
        *([f"restores Ray Tune's saved state (cut short by a killed driver) from {plan.restore_state_from}"]
          if plan.restore_state_from else []),
    ])


def describe_corpus(plan: Plan) -> str:
    """The dry run's corpus line: the corpus checked as the search will check it, without downloading it."""
    from artune.data import CorpusError, NotFetched

    try:
        corpus = load_plan_corpus(plan, fetch=False)
    except NotFetched as exc:
        return f"corpus: {exc.path} is not here yet; the search downloads it from {exc.url}"
    except CorpusError as exc:
        raise SearchError(str(exc)) from None
    return (f"corpus: {corpus.source} ({len(corpus.train):,} train / {len(corpus.valid):,} valid {corpus.tokenizer} tokens, "
            f"vocabulary {corpus.vocab_size}, sha256 {corpus.sha256[:12]}), checked against the space")


# --- main


class _Lock:
    """One running process per search: an exclusive flock on RESULTS/NAME/.lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.handle = None

    def __enter__(self) -> "_Lock":
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise SearchError(f"search {self.path.parent.name!r} is running in another process (lock {self.path})") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def run(plan: Plan) -> int:
    plan.stopwatch.lap("plan")  # Python's imports, the arguments and the space validated
    corpus = load_plan_corpus(plan)
    plan.stopwatch.lap("corpus")
    created = not plan.directory.exists()
    try:
        plan.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"--results-dir {plan.directory.parent}: cannot create {plan.directory} ({exc.strerror or exc})") from None
    try:
        with _Lock(plan.directory):
            if not (plan.resume or plan.extend):
                shutil.copyfile(plan.space.path, plan.directory / SPACE_COPY)
            if plan.restore_state_from:
                restore_saved_state(plan)
            return _run_locked(plan, corpus)
    except BaseException:  # a refusal, a failure or a Ctrl-C before the search began
        if created and not (plan.directory / MANIFEST_FILE).exists():
            shutil.rmtree(plan.directory, ignore_errors=True)  # nothing was run: leave nothing behind
        raise


def _run_locked(plan: Plan, corpus: Any) -> int:
    print(describe_plan(plan), flush=True)
    study = None
    try:
        set_ray_environment(plan)
        study = open_study_while_ray_starts(plan)
        init_ray(plan)  # inside the try: a refusal after ray.init (no GPUs, say) still shuts Ray down
        plan.stopwatch.lap("ray_init")
        now = dt.datetime.now().isoformat(timespec="seconds")
        failed = study.exception()
        if failed:
            logging.getLogger(__name__).debug("the study's thread failed; opening it here", exc_info=failed)
        recorder = make_recorder(plan, None if failed else study.result())
        try:
            recorder.study  # the study (and its schema) exists before any trial ends
        except Exception as exc:  # noqa: BLE001 - whatever the database says, before the search has written anything
            raise SearchError(f"--storage {plan.storage}: the Optuna study cannot be opened there ({type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]})") from None
        write_manifest(plan, corpus, {"resumed" if plan.resume else "extended" if plan.extend else "started": now}, new_command=True)
        plan.stopwatch.lap("study")  # what of importing Ray Tune and opening the study ray.init did not cover
        tuner = build_tuner(plan, corpus, recorder)
        tuning_started = plan.stopwatch.lap("tuner")  # the searcher, the corpus into Ray's object store
        tuner.fit()  # Ray Tune catches Ctrl-C itself: fit then returns with trials left unfinished
        finished = time.monotonic()
        budget_spent = bool(plan.time_budget_s) and finished - plan.started >= plan.time_budget_s - BUDGET_END_S - 1.0
        interrupted = recorder.finish(budget_spent)
        timings = {**plan.stopwatch.phases, "startup_s": round(tuning_started - plan.started, 3),
                   "tuning_s": round(finished - tuning_started, 3)}
        if not interrupted:
            write_manifest(plan, corpus, {"finished": dt.datetime.now().isoformat(timespec="seconds"), "timings": timings})
    finally:
        if study is not None:
            wait([study])  # where ray.init failed, the study's thread ends before the caller cleans up
        stop_ray()  # a no-op where ray.init never ran or failed
    if interrupted:
        print(
            f"interrupted: {plural(interrupted, 'trial')} unfinished; the tables hold every result so far; "
            f"continue with: python -m artune.search --resume --name {plan.name} --results-dir {plan.directory.parent}",
            file=sys.stderr,
        )
        return 130
    summary, ok = summarise(plan)
    print(summary)
    if plan.time_budget_s:
        print(budget_report(plan, finished - plan.started, recorder.spent, recorder.records))
    return 0 if ok else 1


def budget_report(plan: Plan, elapsed: float, spent: dict[str, list[float]], records: dict[str, TrialRecord]) -> str:
    """How this command's time budget was spent: each trial that ran in it, with the epochs it trained
    in it and their seconds (a resumed or extended search's earlier runs had budgets of their own)."""
    budget = plan.time_budget_s
    lines = [f"time budget {budget:.0f} s: used {elapsed:.0f} s ({elapsed / budget:.0%})"]
    for trial_id, seconds in sorted(spent.items(), key=lambda item: -sum(item[1])):
        total, epochs = sum(seconds), plural(len(seconds), "epoch")
        lines.append(f"  {trial_id}  {records[trial_id].status:<9} {epochs:>10}  {total:7.1f} s  ({total / budget:.1%} of the budget)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None, started: Optional[float] = None) -> int:
    """The command. ``started``: the ``time.monotonic()`` its time budget counts from (default: now)."""
    args = parse_args(argv)
    plan = None
    try:
        plan = make_plan(args, started)
        if args.dry_run:
            corpus = describe_corpus(plan)  # a bad corpus is an error line, not a plan
            print(describe_plan(plan))
            print(corpus)
            return 0
        return run(plan)
    except (SearchError, SpaceError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if plan is not None and (plan.directory / MANIFEST_FILE).exists():
            print(f"interrupted: the tables hold every result so far; continue with --resume --name {plan.name}",
                  file=sys.stderr)
        else:
            print("interrupted before the search began: nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return stdout_closed()


def cli() -> None:
    """The console entry point: ``main``, then a quick exit.

    Once the results are written and the summary printed, nothing is left to do; the interpreter's
    own teardown of torch, Ray's core worker and gRPC would take about 1.7 s more on a 2-core machine.
    """
    code = main(started=LOADED_AT)  # the imports of this process count against a time budget too
    stop_ray()  # whatever path main left by, the local Ray instance goes with it (no-op if none)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the last lines' reader went away
        code = stdout_closed()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    cli()
