"""What the end-to-end tests share: the real CLI as a child process read as it runs, a small corpus and a
tiny model for quick searches, Ray Tune's saved state read back, the tables read back, and the processes of the
private Ray instances a test started (found by their RAY_TMPDIR, ended by their pid)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pyarrow.parquet as pq
import pytest

from artune.results import EPOCHS_FILE, TRIALS_FILE
from artune.search.journal import JOURNAL_FILE
from tests.test_search import REPO

psutil = pytest.importorskip("psutil")

EPOCH_LINE = re.compile(r"^\[(\w+)\] epoch (\d+)/(\d+) ")

# The smallest model that still trains: an epoch is a second or two on a busy 2-core machine.
TINY_FIXED = """
fixed:
  seq_len: 32
  batch_size: 8
  batches_per_epoch: 30
  n_layers: 1
  n_heads: 2
  sample_tokens: 4
  device: cpu
  is_save_models: true
"""


def tiny_space(samples: int, epochs: int, concurrency: int = 2, batches: int = 30, comment: str = "") -> str:
    """A search of ``samples`` random-lr trials of TINY_FIXED's model, one CPU each, every trial to ``epochs``
    (no scheduler: what runs does not depend on timing)."""
    return f"""
search:
  num_samples: {samples}
  max_concurrent: {concurrency}
  resources: {{cpu: 1, gpu: 0}}
  epochs: {epochs}
  sampler: random
  seed: 0
  scheduler: none{f"            # {comment}" if comment else ""}
{TINY_FIXED.replace("batches_per_epoch: 30", f"batches_per_epoch: {batches}")}
  d_model: 32
params:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
"""


# --- helpers


def write_small_corpus(shakespeare: Path, path: Path) -> Path:
    """The first 60,000 characters of Tiny Shakespeare: validation (10% of it) takes a fraction of a second."""
    path.write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def processes_with_ray_tmpdir(ray_tmpdir: str) -> list:
    """Every live process started under ``ray_tmpdir`` (drivers, GCS, raylets, agents, trial workers), not this one:
    by the variable in its environment, or by a file it holds open there. Ray's dashboard agent writes its process
    title over its environment, which then reads as blanks; its log files under the session directory stay open."""
    found = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and (proc.environ().get("RAY_TMPDIR") == ray_tmpdir or holds_a_file_under(proc.pid, ray_tmpdir))
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def holds_a_file_under(pid: int, directory: str) -> bool:
    """Whether the process holds a file under ``directory`` open (deleted since, too)."""
    prefix = directory.rstrip("/") + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def reap(ray_tmpdir: str) -> int:
    """SIGKILL, by pid, what is left of the Ray instances started under ``ray_tmpdir``; how many there were.

    Round after round until none is left: a raylet killed after its dashboard agent has already started another
    (seen: an agent that outlived the reap, adopted by init, holding Ray's default agent port 52365, so that a
    later head's jobs API had no agent)."""
    killed: set[int] = set()
    for _ in range(20):
        left = processes_with_ray_tmpdir(ray_tmpdir)
        if not left:
            break
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        killed.update(proc.pid for proc in left)
    return len(killed)


def signal_workers(ray_tmpdir: str, signum: int) -> list:
    """Send ``signum`` to the workers (titled ``ray::ImplicitFunc.train``, ``ray::IDLE``, ...: the trials' actors,
    idle workers; not Ray's ``ray::...Agent`` processes) of the instance under ``ray_tmpdir``; the processes reached."""
    reached = []
    for proc in processes_with_ray_tmpdir(ray_tmpdir):
        try:
            title = (proc.cmdline() or [""])[0]
            if title.startswith("ray::") and not title.endswith("Agent"):
                proc.send_signal(signum)
                reached.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return reached


def wait_for_ray_to_end(ray_tmpdir: str, timeout: float = 60) -> int:
    """How many processes of the instance(s) under ``ray_tmpdir`` outlive their driver by ``timeout``; those end."""
    deadline = time.monotonic() + timeout
    while processes_with_ray_tmpdir(ray_tmpdir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return reap(ray_tmpdir)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory``, by relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def tune_state(directory: Path) -> dict[str, dict]:
    """What Ray Tune will resume from: the search's newest experiment_state-*.json, per trial.

    ``{trial_id: {"status": "RUNNING"|"TERMINATED"|..., "epoch": last reported epoch or 0, "num_failures": n}}``;
    ``{}`` while no state was written (or while it is being copied into place).
    """
    return state_trials(newest_state(directory))


def state_trials(data: Optional[dict]) -> dict[str, dict]:
    """A saved state's trials, as tune_state gives them."""
    if not data:
        return {}
    trials = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        last = runtime.get("last_result") or {}
        trials[trial["trial_id"]] = {
            "status": trial["status"],
            "epoch": int(last.get("epoch") or 0),
            "num_failures": runtime.get("num_failures", 0),
        }
    return trials


def newest_state_file(directory: Path) -> Optional[Path]:
    files = sorted((directory / "tune").glob("experiment_state-*.json"))  # named by start time: the last is the newest
    return files[-1] if files else None


def newest_state(directory: Path) -> Optional[dict]:
    """The search's newest experiment_state-*.json: {} while there is none, None where it does not parse."""
    newest = newest_state_file(directory)
    if newest is None:
        return {}
    try:
        return json.loads(newest.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def torn_state(directory: Path) -> bool:
    """Whether the newest saved state is empty or cut short: a kill inside Tune's copy of it."""
    return newest_state(directory) is None


class Search:
    """``python -m artune.search`` as a child process in its own session (``job``: in a process group of its own
    in this session, as a shell's job or a batch script's command), its output read as it comes."""

    def __init__(self, *args: str, env: Optional[dict[str, str]] = None, job: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artune.search", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **({"process_group": 0} if job else {"start_new_session": True}),
            env={**os.environ, **(env or {})},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def epochs(self) -> dict[str, list[int]]:
        """The epochs each trial reported, in the order the progress lines came."""
        seen: dict[str, list[int]] = {}
        for line in list(self.out):
            match = EPOCH_LINE.match(line)
            if match:
                seen.setdefault(match.group(1), []).append(int(match.group(2)))
        return seen

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the readers drain
                pytest.fail(
                    f"the search ended (exit {self.proc.returncode}) before {what}:\n"
                    f"{self.stdout[-3000:]}\n{self.stderr[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
            time.sleep(0.2)

    def hold_at(self, condition: Callable[[], bool], timeout: float, what: str, ray_tmpdir: str) -> None:
        """wait_for, with the search's Ray workers (its trials) let run only in short slices between looks: frozen
        (SIGSTOP) while the driver catches up and ``condition`` is asked, then let go (SIGCONT) for ``SLICE_S``. A
        moment a few epochs long then cannot pass between two looks however fast the machine (a tiny trial's epoch
        can take a tenth of a second; seen passing unseen at 0.2-s polling). Returns with the workers frozen: the
        caller kills the driver (``reap`` ends them: SIGKILL ends a stopped process), or brings its fault and then
        ``release``s them. ``timeout`` counts the time the workers run: held, they run ``SLICE_S`` of every
        ``SLICE_S + CATCH_UP_S``, so the wall-clock wait is that many times longer (a hang guard, on any machine)."""
        deadline = time.monotonic() + timeout * (self.SLICE_S + self.CATCH_UP_S) / self.SLICE_S
        while True:
            frozen = signal_workers(ray_tmpdir, signal.SIGSTOP)
            time.sleep(self.CATCH_UP_S)  # the driver takes in what the workers reported before they stopped
            if condition():
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                signal_workers(ray_tmpdir, signal.SIGCONT)
                self.wait_for(condition, 0, what)  # fails, saying why
            for proc in frozen:
                try:
                    proc.send_signal(signal.SIGCONT)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(self.SLICE_S)

    SLICE_S, CATCH_UP_S = 0.05, 0.3

    @staticmethod
    def release(ray_tmpdir: str) -> None:
        """Let the workers ``hold_at`` froze run again (after the fault the test brings, where the search goes on)."""
        signal_workers(ray_tmpdir, signal.SIGCONT)

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the search did not end within {timeout:.0f} s:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
        for reader in self._readers:
            reader.join(10)
        return rc


def lagging_trials(state: dict[str, dict], epochs) -> dict[str, tuple[int, int]]:
    """Running trials whose last epoch in Ray's saved state is not yet in epochs.parquet: {id: (state, table)}."""
    lagging = {}
    for trial_id, trial in state.items():
        in_table = (
            int(epochs.loc[epochs.trial_id == trial_id, "epoch"].max()) if (epochs.trial_id == trial_id).any() else 0
        )
        if trial["status"] == "RUNNING" and trial["epoch"] > in_table:
            lagging[trial_id] = (trial["epoch"], in_table)
    return lagging


def ray_epochs(directory: Path, trial_id: str) -> list[int]:
    """The epochs a trial reported, by Ray's own log of its results (tune/<trial>/result.json), every attempt."""
    lines = (directory / "tune" / trial_id / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def journal_epochs(directory: Path, trial_id: str) -> list[int]:
    """The epochs a trial reported, by the search's journal (artune/search/journal.py), every attempt: Ray's own
    result.json may have been cut short by a kill inside Ray's copy of it."""
    lines = [json.loads(line) for line in (directory / JOURNAL_FILE).read_text().splitlines() if line.strip()]
    return [line["epoch"]["epoch"] for line in lines if line["trial_id"] == trial_id and "epoch" in line]


def tables(directory: Path):
    return pq.read_table(directory / TRIALS_FILE).to_pandas(), pq.read_table(directory / EPOCHS_FILE).to_pandas()


def assert_every_trial_completed_once(directory: Path, num_samples: int, epochs: int) -> None:
    trials, rows = tables(directory)
    assert len(trials) == num_samples and trials["trial_id"].is_unique, trials[["trial_id", "status"]]
    assert (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    assert (trials["epochs_completed"] == epochs).all()
    assert not rows.duplicated(["trial_id", "epoch"]).any()
    assert len(rows) == num_samples * epochs
    for trial_id, group in rows.groupby("trial_id"):
        assert sorted(group["epoch"]) == list(range(1, epochs + 1)), trial_id
    assert set(rows["trial_id"]) == set(trials["trial_id"])
