"""One running process per search: an exclusive flock on ``RESULTS/NAME/.lock``."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO, Any, Optional

from artune.errors import SearchError

LOCK_FILE = ".lock"


class SearchLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.handle: Optional[IO[str]] = None

    def __enter__(self) -> SearchLock:
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise SearchError(
                f"search {self.path.parent.name!r} is running in another process (lock {self.path})"
            ) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def held_elsewhere(directory: Path) -> bool:
    """Whether a live process holds the search's lock (the kernel drops a dead process's flock)."""
    path = directory / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
