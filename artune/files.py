"""Files on disk: writing one all at once (readers, and a crash or a power loss, see the previous file or the new
one, never half of one), and a file's sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.<pid>.tmp``) for the block to write; moved onto ``path`` when the
    block ends, and removed where it fails (a full disk, say), so that no partial file is left behind. A killed
    process may still leave one (a search removes those of its tables and manifest when it starts again).

    The data reaches the disk before the rename, and the rename before this returns: without the first, a power
    loss soon after can leave an empty file under the new name (the rename's journal entry lands first)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        sync(tmp)
        os.replace(tmp, path)
        sync(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise


def sync(path: Path) -> None:
    """Flush a file's writes, or a directory's entries, to the disk. A directory's is best effort: some platforms
    and file systems cannot open or flush one (Windows, some network mounts), and there the rename stands as is."""
    directory = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes, read a block at a time (a model's weights may not fit twice in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
