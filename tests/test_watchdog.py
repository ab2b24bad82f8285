"""The guard's choice of processes (artune/search/watchdog.py): those the driver marked, and those Ray titled that
hold a file open under the instance's session directory (Ray's agents write their titles over their environment,
which then reads as blanks), never a user's process that reads a log there, nor the driver itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from artune.search.watchdog import TOKEN_VAR, marked

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard reads /proc")


def follow(path, title: str, env: dict | None = None) -> subprocess.Popen:
    """`tail -f path`, under the process title ``title`` (bash's exec -a)."""
    proc = subprocess.Popen(["bash", "-c", f'exec -a "{title}" tail -f "{path}"'], env=env)
    deadline = time.monotonic() + 60
    while not any(os.path.realpath(f"/proc/{proc.pid}/fd/{fd}") == str(path) for fd in _fds(proc.pid)):
        assert time.monotonic() < deadline and proc.poll() is None, "tail did not start"
        time.sleep(0.05)
    return proc


def _fds(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def test_the_guard_takes_rays_processes_under_the_session_and_leaves_a_users(tmp_path):
    session = tmp_path / "session_1"
    session.mkdir()
    log, other = session / "dashboard_agent.log", tmp_path / "other.log"
    log.write_text("")
    other.write_text("")
    token = f"{os.getpid()}-0123456789abcdef"  # the driver's pid first, as start_guard makes it: this process
    agent = follow(log, "ray::DashboardAgent")  # no token: as an agent whose environment reads blank
    idle = follow(log, "ray::IDLE")
    module = follow(log, "ray-dashboard-JobHead-0 (python)")  # a dashboard's module process
    user = follow(log, "tail")  # a user's `tail -f` of the same log
    worker = follow(other, "python", env={**os.environ, TOKEN_VAR: token})  # marked, holding nothing there
    try:
        found = set(marked(token, [os.fsencode(session)]))
        assert {agent.pid, idle.pid, module.pid, worker.pid} <= found
        assert user.pid not in found and os.getpid() not in found
        assert set(marked(token, [os.fsencode(tmp_path / "session_2")])) == {worker.pid}
    finally:
        for proc in (agent, idle, module, user, worker):
            proc.kill()
            proc.wait()


APART = """
import os, signal, sys, time
from artune.search import watchdog

signal.signal(signal.SIGTERM, signal.default_int_handler)  # as the search's CLI takes it (sigterm_as_interrupt)

watchdog.start_guard()
own = os.getpgrp()
try:
    with watchdog.ray_apart():  # where ray.init runs: this process in the guard's group
        assert os.getpgrp() != own
        os.killpg(own, getattr(signal, sys.argv[1]))  # a terminal's Ctrl-C, or Slurm's kill -TERM -PGID
        time.sleep(60)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted", os.getpgrp() == own)
finally:
    watchdog.stop_guard()
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_drivers_group_reaches_it_while_ray_starts_apart(tmp_path, signame):
    """For Ray's start the driver sits in the guard's process group: a signal to its own group (empty then) reached
    no one, and the search ran to its end. Here the driver leads a group of its own, as a shell's job does."""
    script = tmp_path / "apart.py"
    script.write_text(APART)
    result = subprocess.run(
        [sys.executable, "-X", "dev", str(script), signame],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=os.setpgrp,
    )
    assert result.stdout.split() == ["interrupted", "True"], (result.stdout, result.stderr[-2000:])
    assert "ResourceWarning" not in result.stderr, result.stderr[-2000:]  # the relay's pipes closed
