"""artune.startup: the collector paused and resumed as it says, and an exit without the teardown's collections
that still runs the atexit handlers and flushes open files."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from artune import startup


@pytest.fixture
def collector():
    """The test process's collector as it was, whatever a test does to it."""
    enabled = gc.isenabled()
    yield
    startup._paused_at_start = False
    gc.unfreeze()
    set_collector(enabled)


def set_collector(enabled: bool) -> None:
    if enabled:
        gc.enable()
    else:
        gc.disable()


@pytest.mark.parametrize("enabled", [True, False])
def test_collector_paused_restores_the_collector_as_it_was(collector, enabled):
    set_collector(enabled)
    with startup.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled
    with pytest.raises(RuntimeError), startup.collector_paused():
        raise RuntimeError("a failed import")
    assert gc.isenabled() is enabled


def test_collector_paused_freezes_nothing(collector):
    frozen = gc.get_freeze_count()
    with startup.collector_paused():
        kept = [[] for _ in range(1000)]
    assert gc.get_freeze_count() == frozen and kept


def test_resume_freezes_what_the_start_up_made_and_runs_the_collector_again(collector):
    gc.unfreeze()
    startup.pause_collector()
    assert not gc.isenabled()
    startup.resume_collector()
    assert gc.isenabled() and gc.get_freeze_count() > 0
    gc.unfreeze()
    startup.resume_collector()  # once only
    assert gc.get_freeze_count() == 0


def test_resume_without_a_pause_leaves_a_test_or_notebook_collector_alone(collector):
    gc.unfreeze()
    gc.disable()  # the caller's own choice
    startup.resume_collector()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_exit_without_collecting_runs_atexit_and_flushes_files(tmp_path):
    out = tmp_path / "buffered.txt"
    script = textwrap.dedent(
        f"""
        import atexit
        from artune.startup import exit_without_collecting

        atexit.register(lambda: open({str(tmp_path / "atexit.txt")!r}, "w").write("ran"))
        handle = open({str(out)!r}, "w", buffering=1 << 20)
        handle.write("kept")
        loop = []
        loop.append(loop)  # a cycle the teardown no longer collects
        print("last line", end="")
        exit_without_collecting(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "last line"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert out.read_text() == "kept"
