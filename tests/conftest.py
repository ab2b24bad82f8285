import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """Ray's token (~/.ray/auth_token), made once before any test: each local ray.init makes it where it is
    missing, with a plain write, and two pytest-xdist workers' first instances on a fresh machine would race
    on it (one instance's later processes reading the other's token). Only in the controlling process."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not hasattr(config, "workerinput") and ray and not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([ray, "get-auth-token", "--generate"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The shared, checksummed copy of Tiny Shakespeare (so no test needs the network), or the one in
    ``ARTUNE_DATA_DIR`` where the checkout has no ``../shared`` beside it (a GPU machine, say)."""
    shared = (REPO / ".." / "shared" / "data" / "tiny_shakespeare.txt").resolve()
    if not shared.exists() and os.environ.get("ARTUNE_DATA_DIR"):
        return Path(os.environ["ARTUNE_DATA_DIR"]).resolve() / "tiny_shakespeare.txt"
    return shared


@pytest.fixture(scope="session", autouse=True)
def no_ray_address_from_the_shell():
    """Every test starts its own Ray instance: a RAY_ADDRESS exported for a cluster would make ray.init()
    and the search CLI (its --address default) join that cluster. A test that means a cluster says so."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_reaches_the_searches_a_test_starts():
    """A suite started as a shell's background job (``nohup ... &``, a CI script's) ignores SIGINT, and the
    searches its tests start inherit that: a Ctrl-C test's search then ran to its end. Such a test passed only
    where an earlier test had run a Tuner in this process (Ray Tune leaves its SIGINT handler in place), as
    tests/test_faults.py does before it in a serial run, and failed on a pytest-xdist worker that had run none."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="module")
def ray_env_restored():
    """For a fixture that calls ray.init in this process: a new local instance sets RAY_AUTH_MODE=token in
    os.environ, which every later test's subprocess would inherit. Put it back once that Ray is shut down."""
    saved = os.environ.get("RAY_AUTH_MODE")
    yield
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture
def private_ray_tmpdir():
    """A RAY_TMPDIR of the test's own, for ``ray.cluster_utils.Cluster``: it writes its address into the
    temp dir's ``ray_current_cluster`` and deletes that file at shutdown, which in the default /tmp/ray
    would hijack, then forget, a cluster that `ray start` runs on this machine."""
    # Short, under /tmp: Ray's unix socket paths (session dir + name) must stay under 108 bytes.
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", path)
        yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_in_the_test_process():
    """The machine has 2 cores and Ray's trial workers use them: a 2-thread torch in the test
    process as well oversubscribes them and slows every step several-fold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory, shakespeare_path):
    """One real smoke search through the CLI, shared by the tests that read a finished search."""
    results_dir = tmp_path_factory.mktemp("results")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "artune.search",
            str(REPO / "search_spaces" / "smoke.yaml"),
            "--results-dir",
            str(results_dir),
            "--name",
            "smoke",
            "--data",
            str(shakespeare_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,  # a hang guard: under 2 minutes on 2 cores, several times that on one slow core
        env=os.environ.copy(),
    )
    return result, results_dir / "smoke"


@pytest.fixture(scope="module")
def ray_tmpdir():
    """A RAY_TMPDIR of the module's own, for the searches it runs through the CLI: what a killed driver's Ray
    instance leaves is found by that variable in its processes' environment and ended by pid at the module's end,
    and no search joins another test's instance. (``pytestmark = pytest.mark.usefixtures("ray_tmpdir")``.)"""
    from tests._searches import reap

    # Short, under /tmp: Ray's unix socket paths (session dir + name) must stay under 108 bytes.
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", path)
        yield path
    reap(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, shakespeare_path) -> Path:
    """The first 60,000 characters of Tiny Shakespeare: validation (10% of it) takes a fraction of a second."""
    from tests._searches import write_small_corpus

    return write_small_corpus(shakespeare_path, tmp_path_factory.mktemp("corpus") / "small.txt")
