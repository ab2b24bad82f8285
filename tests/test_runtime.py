"""The Ray runtime's start (artune/search/runtime.py): a Ctrl-C while Ray starts is never lost; the environment it
sets before Ray is imported."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from artune.search.runtime import PROBES_LOST, RAYLET, ClusterWatch, interrupts_kept


@pytest.fixture(autouse=True)
def pythons_own_ctrl_c():
    """Each test starts from Python's own SIGINT handler, as a search's driver does: a Tuner run earlier in this
    process (another test file's, on the same pytest-xdist worker) leaves Ray Tune's in its place."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class InterruptedWhenDeleted:
    """Takes a Ctrl-C in ``__del__``, where Python prints an exception as ignored and goes on, as it does in the
    hook a fork runs in the parent (logging's lock release, when Ray's ``Popen`` starts a process)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_python_ignored_while_ray_started_is_raised_where_the_start_returns(capsys):
    went_on = False
    hook = sys.unraisablehook
    with pytest.raises(KeyboardInterrupt):
        with interrupts_kept():
            InterruptedWhenDeleted()  # deleted at once: Python ignores its KeyboardInterrupt
            went_on = True
    assert went_on  # (what a search did: it ran on as if no key had been pressed)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook
    assert "Traceback" not in capsys.readouterr().err  # the ignored one is not reported: it is raised


class TerminatedWhenDeleted:
    """Ray's SIGTERM handler (``sys.exit(signum)``, set by ``ray.init``) run in ``__del__``, where Python prints the
    SystemExit as ignored and goes on, as in the hook a fork runs in the parent."""

    def __del__(self) -> None:
        sys.exit(signal.SIGTERM)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_sigterm_python_ignored_while_ray_started_is_raised_where_the_start_returns(capsys, sigint):
    """The search ran to its end after a SIGTERM in Ray's start, with a traceback of the ignored exit (a review)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint == "ignored" else None
    try:
        went_on = False
        with pytest.raises(SystemExit) as exit_:
            with interrupts_kept():
                TerminatedWhenDeleted()
                went_on = True
        assert went_on and exit_.value.code == signal.SIGTERM
        assert "Traceback" not in capsys.readouterr().err
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_is_raised_at_once_and_without_one_nothing_is():
    with pytest.raises(KeyboardInterrupt):
        with interrupts_kept():
            signal.raise_signal(signal.SIGINT)
            pytest.fail("the start went on after a Ctrl-C")
    with interrupts_kept():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_that_the_shell_ignores_stays_ignored():
    """A background job's SIGINT is ignored: the start leaves it so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_kept():
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# mlflow's telemetry is off where one of these is set (CI's, pytest's own; mlflow/telemetry/utils.py lists more)
_QUIET = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def test_mlflow_that_ray_tune_imports_keeps_its_telemetry_off_unless_the_search_logs_to_it(tmp_path):
    """Ray Tune's usage tagging of a Tuner's callbacks imports mlflow wherever it is installed; mlflow's import
    writes an installation id under ~/.config/mlflow for its telemetry. A search that never logs to MLflow
    leaves none; one that does (``log: [mlflow]``) keeps mlflow's own default."""
    pytest.importorskip("mlflow")

    def installation_id_written(log: tuple, home: Path) -> bool:
        script = (
            "from types import SimpleNamespace as N\n"
            "from artune.search.runtime import set_ray_environment\n"
            f"set_ray_environment(N(address='127.0.0.1:1', space=N(settings=N(log={log!r}))))\n"
            "import mlflow\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in _QUIET} | {"HOME": str(home)}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
        return (home / ".config" / "mlflow" / "telemetry.json").exists()

    if not installation_id_written(("mlflow",), tmp_path / "logs"):
        pytest.skip("mlflow's telemetry is off in this environment (a CI variable mlflow knows, say)")
    assert not installation_id_written((), tmp_path / "never")


def test_a_start_that_fails_after_a_lost_sigterm_ends_as_the_sigterm_does():
    """ray.init failing once a SIGTERM had reached its processes too: the failure's line and exit 2, not 143."""
    with pytest.raises(SystemExit) as exit_:
        with interrupts_kept():
            TerminatedWhenDeleted()
            raise RuntimeError("Ray could not start")
    assert exit_.value.code == signal.SIGTERM
    with pytest.raises(RuntimeError):  # without a signal, the failure is the failure
        with interrupts_kept():
            raise RuntimeError("Ray could not start")


def test_a_sigterm_in_rays_start_leaves_artunes_handler_and_one_with_sigint_ignored_still_ends(monkeypatch):
    """Ray's own handler (sys.exit) stayed after a SIGTERM in its start: a second SIGTERM ended the driver with exit
    15 and no word. And with SIGINT ignored (a shell's background job), a SIGTERM only noted itself."""
    from types import SimpleNamespace

    from artune.search import runtime

    def rays_start(plan):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as ray.init's first line does
        raise SystemExit(signal.SIGTERM)

    monkeypatch.setattr(runtime, "start_ray", rays_start)
    with runtime.sigterm_as_interrupt():
        with pytest.raises(KeyboardInterrupt):
            runtime.init_ray(SimpleNamespace(address=None))
        assert runtime.terminated() and signal.getsignal(signal.SIGTERM).__name__ == "terminate"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with runtime.sigterm_as_interrupt():
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            assert runtime.terminated()
    finally:
        signal.signal(signal.SIGINT, previous)


class WatchProbes(ClusterWatch):
    """The cluster watch on real sockets of this machine, without Ray: ``lost`` records instead of ending the
    process."""

    def __init__(self, targets: dict) -> None:  # (no Ray: the targets are given)
        self.targets, self.stopped, self.probes, self.found = targets, threading.Event(), 0, None

    def lost(self, what: str, where: str, exc: OSError, how: str) -> None:
        self.found = (what, self.probes)
        self.stopped.set()


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then closed: a refused connection)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(("what", "probes"), [(RAYLET, 1), ("the head's GCS", PROBES_LOST)])
def test_a_refused_raylet_is_lost_at_once_and_the_gcs_after_its_probes(monkeypatch, what, probes):
    """A raylet is never restarted on its port: its first refusal ends the search (with exit 3), before Ray's core
    worker ends the driver with exit 1 seconds later, which raced the watch's three probes on a busy machine. The
    head's GCS may be restarted (Ray's GCS fault tolerance): three in a row."""
    watch = WatchProbes({what: ("127.0.0.1", closed_port())})
    real = socket.create_connection

    def counted(*args, **kwargs):
        watch.probes += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    monkeypatch.setattr("artune.search.runtime.PROBE_EVERY_S", 0.01)
    thread = threading.Thread(target=watch.watch, daemon=True)
    thread.start()
    thread.join(60)
    assert watch.found == (what, probes)
