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
