"""Searches that share one real PostgreSQL study: the server started from the system's binaries in a
temporary directory, listening on 127.0.0.1 only; two searches into one database, an --extend, a --resume
after the driver was SIGKILLed, a server that goes away mid-search, and one that refuses the connection.

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it where it is missing). Where
they are not found the module is skipped, unless ``ARTUNE_REQUIRE_POSTGRES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from artune.results import TRIALS_FILE
from artune.search.saved_state import LOST_ERROR
from tests._searches import Search, processes_with_ray_tmpdir, reap, write_small_corpus
from tests.test_search import assert_one_error_line, cli

pytest.importorskip("psycopg", reason="the PostgreSQL driver (the dev extra installs psycopg)")

pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's

SAMPLES, EPOCHS = 2, 2
SPACE = f"""
search:
  num_samples: {SAMPLES}
  max_concurrent: 1
  resources: {{cpu: 1, gpu: 0}}
  epochs: {EPOCHS}
  sampler: random
  seed: 0
  scheduler: none
fixed:
  seq_len: 32
  batch_size: 8
  batches_per_epoch: 40
  d_model: 32
  n_layers: 1
  n_heads: 2
  sample_tokens: 4
  device: cpu
  is_save_models: true
params:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
"""


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, or Debian's versioned directory."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(directory, "initdb").exists():
            return Path(directory)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A PostgreSQL server of its own: a data directory under /tmp, trust authentication on 127.0.0.1."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir, self.root = bin_dir, root
        self.data, self.sockets = root / "data", root / "sockets"
        self.port = free_port()
        self.url = f"postgresql://artune@127.0.0.1:{self.port}/postgres"
        self.sockets.mkdir()
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its files and processes go to `postgres`
            shutil.chown(root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "artune", "-A", "trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # Not under the tests' RAY_TMPDIR: the reaper of a killed search's Ray processes finds them by it
        env = {k: v for k, v in os.environ.items() if k != "RAY_TMPDIR"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root, env=env)
        assert result.returncode == 0, f"{tool}: {result.stdout}\n{result.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -F"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def server():
    bin_dir = postgres_bin()
    if bin_dir is None:
        if os.environ.get("ARTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("ARTUNE_REQUIRE_POSTGRES=1 but no initdb/pg_ctl found (Debian: apt-get install postgresql)")
        pytest.skip("PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    os.chmod(root, 0o755)
    server = Server(bin_dir, root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def space(tmp_path_factory, shakespeare_path) -> dict:
    root = tmp_path_factory.mktemp("pg-space")
    (root / "space.yaml").write_text(SPACE)
    corpus = write_small_corpus(shakespeare_path, root / "small.txt")
    return {"space": str(root / "space.yaml"), "data": str(corpus), "results": root / "results"}


def search_args(space: dict, name: str, url: str) -> list[str]:
    return [
        space["space"],
        "--name",
        name,
        "--results-dir",
        str(space["results"]),
        "--data",
        space["data"],
        "--storage",
        url,
    ]


def assert_truthful(url: str, name: str, directory: Path, samples: int, lost: bool = False) -> None:
    """The study holds exactly one finished Optuna trial per artune trial, as the tables end it; none RUNNING.
    With ``lost``: a trial started after Tune last saved its state (a kill) is sampled again under a new id, and
    the one lost is recorded so (``error``, its Optuna trial FAIL), as tests/test_random_kill.py has it."""
    trials = pq.read_table(directory / TRIALS_FILE).to_pandas()
    completed = trials[trials["status"] == "completed"]
    others = trials[trials["status"] != "completed"]
    assert len(completed) == samples, trials[["trial_id", "status", "error"]]
    assert (lost and others["error"].str.startswith(LOST_ERROR).all()) or others.empty, others[["trial_id", "error"]]
    ends = {"completed": optuna.trial.TrialState.COMPLETE, "error": optuna.trial.TrialState.FAIL}
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states, states
    by_id = {}
    for trial in study.get_trials(deepcopy=False):
        by_id.setdefault(trial.user_attrs["trial_id"], []).append(trial)
    assert sorted(by_id) == sorted(trials["trial_id"]), (sorted(by_id), list(trials["trial_id"]))
    status = dict(zip(trials["trial_id"], trials["status"]))
    for trial_id, found in by_id.items():
        assert len(found) == 1, (trial_id, [t.state for t in found])
        assert found[0].state == ends[status[trial_id]], (trial_id, status[trial_id], found[0].state)
        if status[trial_id] == "completed":
            assert sorted(found[0].intermediate_values) == list(range(1, EPOCHS + 1)), found[0].intermediate_values


def test_two_searches_share_one_database_and_an_extend_grows_one(server, space):
    first = Search(*search_args(space, "pg-a", server.url))
    second = Search(*search_args(space, "pg-b", server.url))
    assert first.finish(900) == 0, first.stderr[-3000:]
    assert second.finish(900) == 0, second.stderr[-3000:]
    assert_truthful(server.url, "pg-a", space["results"] / "pg-a", SAMPLES)
    assert_truthful(server.url, "pg-b", space["results"] / "pg-b", SAMPLES)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=server.url)}
    assert {"pg-a", "pg-b"} <= names

    # --extend takes the URL from the manifest: the same database, the same study, two more trials
    result = cli(
        "--extend", "--name", "pg-a", "--results-dir", str(space["results"]), "--num-samples", "2", timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_truthful(server.url, "pg-a", space["results"] / "pg-a", SAMPLES + 2)
    assert_truthful(server.url, "pg-b", space["results"] / "pg-b", SAMPLES)


def test_resume_after_the_driver_was_killed_leaves_the_study_truthful(server, space, ray_tmpdir):
    search = Search(*search_args(space, "pg-kill", server.url))
    search.hold_at(lambda: sum(map(len, search.epochs().values())) >= 1, 300, "a first epoch", ray_tmpdir)
    os.killpg(search.proc.pid, signal.SIGKILL)
    search.finish(60)
    reap(ray_tmpdir)  # the killed driver's Ray processes
    result = cli("--resume", "--name", "pg-kill", "--results-dir", str(space["results"]), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_truthful(server.url, "pg-kill", space["results"] / "pg-kill", SAMPLES, lost=True)


def test_a_server_that_refuses_the_connection_is_one_line_before_anything_is_written(space, tmp_path):
    results = tmp_path / "nothing-here"
    url = f"postgresql://artune@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    result = cli(*search_args({**space, "results": results}, "pg-none", url))
    assert_one_error_line(result, "--storage", "127.0.0.1", "refused")
    assert not results.exists()
    assert not processes_with_ray_tmpdir(os.environ["RAY_TMPDIR"])


def test_a_server_that_never_answers_is_one_line_after_the_connect_timeout(space, tmp_path):
    results = tmp_path / "nothing-here"
    with socket.socket() as silent:  # the kernel completes the handshake; nothing ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql://artune@127.0.0.1:{silent.getsockname()[1]}/postgres"
        result = cli(*search_args({**space, "results": results}, "pg-silent", url))  # cli's timeout: a hang guard
    assert_one_error_line(result, "--storage", "127.0.0.1", "no answer in 10 s", "?connect_timeout=N")
    assert not results.exists()


def test_a_server_lost_mid_search_ends_in_one_line_and_resume_finishes_it(server, space, ray_tmpdir):
    search = Search(*search_args(space, "pg-lost", server.url))
    search.hold_at(lambda: sum(map(len, search.epochs().values())) >= 1, 300, "a first epoch", ray_tmpdir)
    server.stop()
    search.release(ray_tmpdir)
    try:
        rc = search.finish(600)
    finally:
        server.start()
    reap(ray_tmpdir)
    errors = [line for line in search.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in search.stderr, search.stderr[-3000:]
    assert rc == 4 and len(errors) == 1 and "--resume" in errors[0], (rc, search.stderr[-3000:])
    assert "the Optuna study's database" in errors[0], errors[0]
    directory = space["results"] / "pg-lost"
    assert (directory / TRIALS_FILE).exists()
    result = cli("--resume", "--name", "pg-lost", "--results-dir", str(space["results"]), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_truthful(server.url, "pg-lost", directory, SAMPLES)


def _open_storage(url: str, barrier) -> str:
    from artune.study import get_storage

    barrier.wait()  # every process creates the tables at the same moment
    try:
        get_storage(url)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which names it
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return "ok"


def test_searches_that_open_one_new_database_at_once_all_open_it(server):
    """Two searches started together on a database without Optuna's tables both create them: on PostgreSQL the
    second failed (UniqueViolation on pg_type, seen in CI). Six processes at once, three fresh databases."""
    import multiprocessing

    import psycopg

    context = multiprocessing.get_context("spawn")
    for round_ in range(3):
        name = f"race{round_}"
        with psycopg.connect(server.url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
        barrier = context.Manager().Barrier(6)
        with context.Pool(6) as pool:
            outcomes = pool.starmap(_open_storage, [(url, barrier)] * 6)
        assert outcomes == ["ok"] * 6, outcomes
