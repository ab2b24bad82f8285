"""Writing a file all at once: readers (and a crash) see the previous file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.<pid>.tmp``) for the block to write; moved onto ``path`` when the
    block ends, and removed where it fails (a full disk, say), so that no partial file is left behind. A killed
    process may still leave one (a search removes those of its tables and manifest when it starts again)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise
