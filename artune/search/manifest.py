"""A search's ``manifest.json``: what each run started with, so that ``--resume`` and ``--extend`` replay it.

The one home of that replay and of the fallbacks for manifests written by older versions of artune.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from artune import __version__
from artune.errors import SearchError, SpaceError, StorageError
from artune.files import file_sha256
from artune.humanize import describe_os_error
from artune.results import MANIFEST_FILE, SPACE_COPY, TUNE_DIR, manifest_runs, write_json_atomic
from artune.search.lock import LOCK_FILE
from artune.search.storage import sqlite_file
from artune.spaces import OVERRIDE_FLAGS, SearchSpace, load_space
from artune.study import STUDY_FILE, storage_url

# What a search's start-up writes before its manifest: all a command killed in that window leaves
STARTUP_FILES = {LOCK_FILE, SPACE_COPY, STUDY_FILE, f"{STUDY_FILE}-journal"}

if TYPE_CHECKING:
    from artune.data import Corpus
    from artune.search.plan import Plan


def run_number(run_name: str) -> int:
    """1 for a search's first Ray run (``tune``), k for its (k-1)-th extension (``tune-k``)."""
    return 1 if run_name == TUNE_DIR else int(run_name.rsplit("-", 1)[1])


@dataclass
class Manifest:
    """The manifest of the search in ``directory`` as read (empty for a new search)."""

    directory: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path, flag: str) -> Manifest:
        """The manifest a ``flag`` (--resume, --extend) continues from; a missing or unreadable one is refused."""
        path = directory / MANIFEST_FILE
        if not path.exists() and directory.is_dir() and any(directory.iterdir()):
            if not startup_files_only(directory):  # tables, runs: a search whose record went, or another folder
                raise SearchError(
                    f"{flag}: {directory} holds no {MANIFEST_FILE}, the search's record, beside other files (removed, "
                    f"or not a search's directory), so it cannot be continued: restore {MANIFEST_FILE} from a copy, or "
                    "start a new search under another --name"
                )
            raise SearchError(
                f"{flag}: search {directory.name!r} in {directory.parent} was stopped in its start-up, before it "
                f"began (no {MANIFEST_FILE}): run the same command without {flag} to start it anew"
            )
        if not path.exists():
            raise SearchError(f"{flag}: no search named {directory.name!r} in {directory.parent} (no {MANIFEST_FILE})")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"a JSON {type(data).__name__}, not an object")
        except (OSError, ValueError) as exc:
            raise SearchError(
                f"{flag}: {path} cannot be read ({exc}); it is the search's record, "
                "so it cannot be continued: start a new search under another --name"
            ) from None
        return cls(directory, data)

    @property
    def runs(self) -> list[str]:
        return manifest_runs(self.data)

    @property
    def next_run(self) -> str:
        """The Ray run directory of an --extend."""
        return f"{TUNE_DIR}-{len(self.runs) + 1}"

    @property
    def repeats(self) -> int:
        return self.data.get("repeats", 1)

    @property
    def corpus(self) -> dict[str, Any]:
        """What the manifest records of the corpus the search started with (source, sha256, ...)."""
        return self.data.get("corpus", {})

    def last_run_finished(self) -> bool:
        """Whether the search's last run ended rather than being interrupted (older manifests: its last
        'finished' time is not earlier than its last start)."""
        if "finished_runs" in self.data:
            return self.runs[-1] in self.data["finished_runs"]
        starts = (self.data.get(key, "") for key in ("started", "resumed", "extended"))
        return self.data.get("finished", "") >= max(starts)

    def overrides(self, run_name: str) -> dict[str, dict[str, Any]]:
        """The command-line settings (``settings``) and ``--set`` knobs (``set``) a run started with."""
        if "overrides" in self.data:
            recorded = {"settings": {}, "set": {}, **self.data["overrides"].get(run_name, {})}
            # a time budget is the command's own, never replayed (an early version of this record held it)
            settings = {k: v for k, v in recorded["settings"].items() if k in OVERRIDE_FLAGS and k != "time_budget"}
            return {**recorded, "settings": settings}
        if not self.data:
            return {"settings": {}, "set": {}}
        # A manifest from before artune recorded them: what it recorded of the settings in force
        resources = self.data.get("resources_per_trial", {})
        settings = {
            "epochs": self.data.get("epochs"),
            "seed": self.data.get("seed"),
            "cpu": resources.get("cpu"),
            "gpu": resources.get("gpu"),
        }
        if len(self.data.get("runs", [])) == 1:
            settings["num_samples"] = self.data.get("num_samples")
        return {
            "settings": {k: v for k, v in settings.items() if v is not None},
            "set": dict(self.data.get("fixed", {})),
        }

    def storage(self) -> Optional[str]:
        """The study's URL, following the search where it has moved.

        By default a search keeps its study in its own directory, and the manifest records the file's
        absolute path. A search moved or copied since has its own study with it: the URL is read as that
        one, so that a resume or an extend neither fails on the old path nor writes into the original's.
        """
        url = self.data.get("storage")
        try:
            recorded = sqlite_file(url) if url else None
        except Exception:  # noqa: BLE001 - not a URL: opening the study names it, in one line
            return url
        here = self.directory / STUDY_FILE
        if (
            recorded is not None
            and recorded.name == STUDY_FILE
            and here.exists()
            and recorded.resolve() != here.resolve()
        ):
            return storage_url(self.directory)
        return url

    def check_copy_unchanged(self, copy: SearchSpace, flag: str) -> None:
        """Refuse to go on from the search's own copy of its space (``space.yaml``, what --resume and --extend read)
        where it was edited since the search started: its trials so far did not run it."""
        recorded = self.data.get("space_sha256")
        if not recorded or copy.text_sha256 == recorded:
            return
        original = Path(self.data.get("space_file", ""))
        changes: list[str] = []
        if original.is_file() and file_sha256(original) == recorded:
            with contextlib.suppress(SpaceError):
                changes = space_changes(load_space(original), copy)
        what = "; ".join(changes) if changes else f"sha256 {copy.text_sha256[:12]}, recorded {recorded[:12]}"
        raise SearchError(
            f"{flag}: {copy.path} changed since search {self.data.get('name')!r} started ({what}); restore it"
            + (f" (a copy of {original})" if original.is_file() else "")
            + ", or start a new search under another --name"
        )

    def check_space_unchanged(self, started_with: SearchSpace) -> None:
        """Refuse to resume a search whose space file was edited since it started, naming the change."""
        original = Path(self.data.get("space_file", ""))
        if not original.is_file() or file_sha256(original) == self.data.get("space_sha256"):
            return
        try:
            changes = space_changes(started_with, load_space(original))
        except SpaceError:
            changes = []
        what = "; ".join(changes) if changes else "its text differs"
        raise SearchError(
            f"--resume: {original} changed since search {self.data.get('name')!r} started ({what}); "
            "restore the file, or start a new search under another --name"
        )


def startup_files_only(directory: Path) -> bool:
    """Whether ``directory`` holds only what a search's start-up writes before its manifest (and temporary files)."""
    return all(
        p.name in STARTUP_FILES or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in directory.iterdir()
    )


def space_changes(old: SearchSpace, new: SearchSpace) -> list[str]:
    """Each setting, fixed knob and param that differs between two spaces, as ``section.key: old -> new``."""
    changes = []
    sections = (
        ("search", dataclasses.asdict(old.settings), dataclasses.asdict(new.settings)),
        ("fixed", old.fixed, new.fixed),
        ("params", {k: d.describe() for k, d in old.params.items()}, {k: d.describe() for k, d in new.params.items()}),
    )
    for section, a, b in sections:
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                changes.append(f"{section}.{key}: {a.get(key, '<absent>')} -> {b.get(key, '<absent>')}")
    return changes


def versions() -> dict[str, str]:
    import importlib.metadata

    import optuna
    import ray

    # torch's from its package metadata (the string torch.version gives): the driver never imports torch
    return {
        "artune": __version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "torch": importlib.metadata.version("torch"),
        "python": platform.python_version(),
    }


def write_manifest(plan: Plan, corpus: Corpus, extra: dict[str, Any], new_command: bool = False) -> None:
    """Record the run ``plan`` describes in the search's manifest, with ``extra`` (its start or end time); a
    StorageError where the file cannot be read back or written."""
    path = plan.directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except OSError as exc:
        raise StorageError(f"{plan.directory}: the manifest cannot be read ({describe_os_error(exc)})") from None
    s = plan.space.settings
    manifest.update(
        {
            "name": plan.name,
            "versions": versions(),
            "corpus": {
                "source": corpus.source,
                "sha256": corpus.sha256,
                "vocab_size": corpus.vocab_size,
                "tokenizer": corpus.tokenizer,
                "train_tokens": len(corpus.train),
                "valid_tokens": len(corpus.valid),
            },
            "space_sha256": plan.space.text_sha256,
            "metric": s.metric,
            "mode": s.mode,
            "epochs": s.epochs,
            "seed": s.seed,
            "resources_per_trial": {"workers": s.workers, "cpu": s.cpu, "gpu": s.gpu},  # cpu and gpu per worker
            "fixed": plan.space.fixed,
            # every run's searched knobs: an --extend that fixes a knob an earlier run searched (--set lr=...)
            # leaves it searched across the search, its earlier condition with it
            "params": list(dict.fromkeys([*manifest.get("params", []), *plan.space.params])),
            "conditions": {
                **{
                    name: when for name, when in manifest.get("conditions", {}).items() if name not in plan.space.params
                },
                **{
                    name: {knob: list(values) for knob, values in dist.when.items()}
                    for name, dist in plan.space.params.items()
                    if dist.when
                },
            },
            "repeats": plan.repeats,
            "storage": plan.storage,
            "study_name": plan.name,
            "address": plan.address,
        }
    )
    # the file the search started from, absolute: a --resume from another directory checks the same file
    manifest.setdefault("space_file", str(plan.space.path.resolve()))
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
    try:
        write_json_atomic(manifest, path)
    except OSError as exc:
        raise StorageError(f"{plan.directory}: the manifest cannot be written ({describe_os_error(exc)})") from None
