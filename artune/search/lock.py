"""One running process per search: an exclusive flock on ``RESULTS/NAME/.lock``."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO, Any, Optional

from artune.errors import SearchError, StorageError
from artune.humanize import describe_os_error

LOCK_FILE = ".lock"


class SearchLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.handle: Optional[IO[str]] = None

    def __enter__(self) -> SearchLock:
        try:
            self.handle = open(self.path, "a+")
        except OSError as exc:  # a read-only or immutable search directory, say
            raise self._refused(exc) from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise SearchError(
                f"search {self.path.parent.name!r} is running in another process (lock {self.path})"
            ) from None
        except OSError as exc:  # a file system without locks (an NFS mount without its lock service, say)
            self.handle.close()
            raise self._refused(exc) from None
        return self

    def _refused(self, exc: OSError) -> StorageError:
        return StorageError(
            f"{self.path.parent}: the search's lock cannot be taken ({describe_os_error(exc)}); "
            "the search's directory must be writable, on a file system that locks files"
        )

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


def held_elsewhere(directory: Path) -> bool:
    """Whether a live process holds the search's lock (the kernel drops a dead process's flock)."""
    path = directory / LOCK_FILE
    try:
        # "r+" creates nothing (a dry run writes nothing); write access, as NFS's exclusive lock needs
        handle = open(path, "r+")
    except OSError:  # none yet, or one that cannot be opened: SearchLock says why where it takes the lock
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a lock this file system refuses: SearchLock says so where it takes the lock
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
