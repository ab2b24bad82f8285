from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The shared, checksummed copy of Tiny Shakespeare (so no test needs the network)."""
    return (REPO / ".." / "shared" / "data" / "tiny_shakespeare.txt").resolve()
