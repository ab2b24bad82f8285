from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The shared, checksummed copy of Tiny Shakespeare (so no test needs the network)."""
    return (REPO / ".." / "shared" / "data" / "tiny_shakespeare.txt").resolve()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_in_the_test_process():
    """The machine has 2 cores and Ray's trial workers use them: a 2-thread torch in the test
    process as well oversubscribes them and slows every step several-fold."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
