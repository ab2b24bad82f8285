"""The search's storage failing under it, for real: the results directory on a small tmpfs of its own that is
filled up, or made immutable, while trials train. The search stops in one line naming the path and the
errno (exit 4), spends no retry on it, keeps its tables, and ``--resume`` once the storage is fixed trains every
unfinished trial, the one that failed included.

Mounting needs root (CI runs as root); elsewhere the module is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests._searches import (
    Search,
    assert_every_trial_completed_once,
    reap,
    tables,
    tiny_space,
    write_small_corpus,
)
from tests.test_search import cli

pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's
SAMPLES, EPOCHS = 2, 3
SPACE = tiny_space(SAMPLES, EPOCHS)
EXIT_STORAGE_FAILED = 4


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def mounted_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``64m``) of the test's own; the test is skipped where none can be mounted (it needs
    root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = Path(tempfile.mkdtemp(prefix="artune-tmpfs-"))
    result = mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs():
    """A 64 MiB tmpfs of the test's own: room for the search, until the test takes it away."""
    with mounted_tmpfs("64m") as path:
        yield path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shakespeare_path) -> dict:
    root = tmp_path_factory.mktemp("storage")
    (root / "space.yaml").write_text(SPACE)
    return {"space": str(root / "space.yaml"), "data": str(write_small_corpus(shakespeare_path, root / "small.txt"))}


class FullDisk:
    """The file system of ``directory`` filled, and kept full until ``free()``: space a deletion or a truncation
    frees (Ray removing an old checkpoint, copying a file over itself) is taken again at once, as a disk that
    something else keeps filling would. Otherwise a write could find that space and the search go on."""

    def __init__(self, directory: Path) -> None:
        self.files = [directory / "filler", directory / "filler-again"]
        self.stop = threading.Event()
        self._take(self.files[0], 1 << 20)  # the first: at once
        self.thread = threading.Thread(target=self._keep_full, daemon=True)
        self.thread.start()

    def _take(self, path: Path, chunk: int) -> None:
        with open(path, "ab", buffering=0) as file:
            while chunk >= 512:
                try:
                    file.write(b"\0" * chunk)
                except OSError:
                    chunk //= 8  # the last pages, in smaller writes

    def _keep_full(self) -> None:
        while not self.stop.wait(0.005):
            self._take(self.files[1], 1 << 16)

    def free(self) -> None:
        self.stop.set()
        self.thread.join()
        for path in self.files:
            path.unlink(missing_ok=True)


def run_until_the_storage_fails(
    inputs: dict, results: Path, break_storage, ray_tmpdir: str
) -> tuple[Search, int, list[str]]:
    search = Search(inputs["space"], "--name", "s", "--results-dir", str(results), "--data", inputs["data"])
    # held, so that the search still has epochs to write when the storage breaks, however fast the machine
    # the epoch line is printed just before the tables are first written
    search.hold_at(
        lambda: sum(map(len, search.epochs().values())) >= 1 and (results / "s" / "trials.parquet").exists(),
        300,
        "a first epoch in the tables",
        ray_tmpdir,
    )
    trials_before = (results / "s" / "trials.parquet").read_bytes()
    break_storage()
    search.release(ray_tmpdir)
    rc = search.finish(600)
    errors = [line for line in search.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in search.stderr, search.stderr[-4000:]
    assert rc == EXIT_STORAGE_FAILED and len(errors) == 1, (rc, search.stdout[-2000:], search.stderr[-3000:])
    assert "--resume --name s" in errors[0]
    # no retry was spent: each trial started once (the lines a trial's start prints)
    starts = [line.split("]")[0] for line in search.out if "] started:" in line]
    assert len(starts) == len(set(starts)), starts
    # the tables are readable, and hold at least what they held before the storage failed
    trials, _ = tables(results / "s")
    assert len(trials) >= 1 and not (trials["status"] == "error").any(), trials[["trial_id", "status", "error"]]
    assert len((results / "s" / "trials.parquet").read_bytes()) >= 1 and trials_before
    return search, rc, errors


def resume_to_the_end(results: Path) -> None:
    result = cli("--resume", "--name", "s", "--results-dir", str(results), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_every_trial_completed_once(results / "s", SAMPLES, EPOCHS)


def test_a_full_disk_stops_the_search_in_one_line_and_resume_finishes_it(tmpfs, inputs, ray_tmpdir):
    results = tmpfs / "results"
    full: list[FullDisk] = []
    try:
        _, _, errors = run_until_the_storage_fails(inputs, results, lambda: full.append(FullDisk(tmpfs)), ray_tmpdir)
    finally:
        for disk in full:
            disk.free()
    assert "[Errno 28]" in errors[0] and str(tmpfs) in errors[0], errors[0]
    reap(ray_tmpdir)
    resume_to_the_end(results)


def test_an_immutable_results_directory_stops_the_search_in_one_line_and_resume_finishes_it(tmpfs, inputs, ray_tmpdir):
    """Made unwritable mid-search as a tester did (``chattr -R +i``: nothing can be created, renamed or opened
    for writing there, even by root)."""
    results = tmpfs / "results"

    def chattr(flag: str) -> None:
        result = subprocess.run(["chattr", "-R", flag, str(results / "s")], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    try:
        _, _, errors = run_until_the_storage_fails(inputs, results, lambda: chattr("+i"), ray_tmpdir)
    finally:
        chattr("-i")
    assert "[Errno 1]" in errors[0] and str(results / "s") in errors[0], errors[0]
    reap(ray_tmpdir)
    resume_to_the_end(results)


def test_a_sqlite_study_that_cannot_be_written_is_named_with_the_oss_reason(tmp_path):
    """SQLite says only "unable to open database file"; the line names what the OS says of the directory."""
    if os.geteuid() != 0:
        pytest.skip("chattr needs root")
    from artune.search.storage import sqlite_write_error

    folder = tmp_path / "s"
    folder.mkdir()
    url = f"sqlite:///{folder}/optuna.db"
    assert sqlite_write_error(url) is None and list(folder.iterdir()) == []  # the probe leaves nothing
    assert sqlite_write_error("postgresql://user@127.0.0.1/db") is None
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("chattr is not supported on this file system")
    try:
        error = sqlite_write_error(url)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, timeout=60)
    assert error is not None and error.errno == 1 and str(folder) in str(error.filename)
