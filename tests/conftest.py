import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The shared, checksummed copy of Tiny Shakespeare (so no test needs the network), or the one in
    ``ARTUNE_DATA_DIR`` where the checkout has no ``../shared`` beside it (a GPU machine, say)."""
    shared = (REPO / ".." / "shared" / "data" / "tiny_shakespeare.txt").resolve()
    if not shared.exists() and os.environ.get("ARTUNE_DATA_DIR"):
        return Path(os.environ["ARTUNE_DATA_DIR"]).resolve() / "tiny_shakespeare.txt"
    return shared


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
        [sys.executable, "-m", "artune.search", str(REPO / "search_spaces" / "smoke.yaml"),
         "--results-dir", str(results_dir), "--name", "smoke", "--data", str(shakespeare_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )
    return result, results_dir / "smoke"
