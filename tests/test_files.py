"""Files are written all at once: a failed write keeps the previous file and leaves no partial one behind."""

from __future__ import annotations

import pytest
import torch

from artune.files import written_atomically
from artune.train import checkpoint


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("before")
    with pytest.raises(OSError, match="disk full"):
        with written_atomically(path) as tmp:
            tmp.write_text("half of it")
            raise OSError("disk full")
    assert path.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]
    with written_atomically(path) as tmp:
        tmp.write_text("after")
    assert path.read_text() == "after" and sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_whole(tmp_path):
    """torch.save creates its file before it fails to pickle (or to write) the state: that partial file goes."""
    saved = checkpoint.save({"epoch": 1}, tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        checkpoint.save({"epoch": 2, "not picklable": lambda: None}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.name]
    assert torch.load(saved)["epoch"] == 1


def test_the_new_file_reaches_the_disk_before_its_rename_and_the_rename_before_the_write_returns(tmp_path, monkeypatch):
    """A power loss soon after a write must not leave an empty file under the new name: the data is flushed
    first (os.fsync of the temporary file), then renamed, then the directory's entry is flushed."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "trials.parquet"
    with written_atomically(path) as tmp:
        tmp.write_text("rows")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[1][1] == str(path) and events[2][1] == str(tmp_path)
    assert path.read_text() == "rows"
