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


HOLD_AN_INSTANCE = """
import sys, ray
context = ray.init(address="local", include_dashboard=False, num_cpus=1)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.mark.parametrize("token", ["4242-0123456789abcdef", None])
def test_auto_refuses_another_searchs_private_instance(token):
    """Ray's --address auto joins any instance running here, a search's private one too (found by a review: a
    dry run with --address auto took the other search's instance, which ends with that search). A `ray start`
    cluster carries no token and is taken."""
    from artune.errors import SearchError
    from artune.search.runtime import refuse_another_searchs_instance
    from artune.search.watchdog import private_instance_driver

    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_VAR, "RAY_ADDRESS")}
    if token:
        env[TOKEN_VAR] = token  # as start_guard marks what the driver starts
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AN_INSTANCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        address = holder.stdout.readline().strip()  # host:port of its GCS
        assert address.rpartition(":")[2].isdigit(), address
        port = int(address.rpartition(":")[2])
        if token:
            assert private_instance_driver(port) == 4242
            with pytest.raises(
                SearchError,
                match=rf"--address auto: the Ray instance Ray finds here \({address}\) "
                r"is the private one of another artune search \(driver pid 4242\)",
            ):
                refuse_another_searchs_instance(address, "--address auto")
        else:
            assert private_instance_driver(port) is None
            refuse_another_searchs_instance(address, "--address auto")  # taken
        assert private_instance_driver(port + 1) is None  # no GCS there
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
