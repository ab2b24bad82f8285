"""A guard that ends the processes of a search's local Ray instance with its driver, however the driver ends.

The kernel kills Ray's GCS and raylet with the driver that started them; what the raylet started (its agents,
idle workers) ends only once it notices the raylet gone, and has been seen adopted by init for a minute after a
SIGKILLed driver (issue 28), holding memory and cores. The driver marks every process it starts from then on
with a token in the environment (Ray's processes, and theirs, inherit it), and starts this guard in a process
group of its own with a pipe from the driver as its stdin: end-of-file there means the driver is gone, by any
death or by its normal end, after ``ray.shutdown``. The guard then ends every process that carries the token, or
that Ray titled and that holds a file open under the instance's session directory (``guard_session``): SIGTERM,
then SIGKILL to those left after a grace.

Ray's processes are started in the guard's process group too (``ray_apart``), not the driver's: a signal to the
driver's group (``kill -TERM -PGID``, what Slurm sends; a terminal's Ctrl-C) reaches the driver alone, which
stops the search in order and Ray with it, rather than killing Ray under a driver that is still saving. While
the driver is in the guard's group for Ray's start, a relay stays in its own and passes such signals on to it.
No Ray API is involved: nothing here depends on its version.

Run as a script (``python -I watchdog.py TOKEN``, or ``--relay PID``): it imports nothing of artune's, so it starts
at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Iterator, Optional

TOKEN_VAR = "ARTUNE_SEARCH_GUARD"
GRACE_S = 3.0  # after SIGTERM: Ray's processes flush their logs and exit; what is left then is SIGKILLed
ROUNDS = 3  # scans: a process may start another while the first ones end

_guard: Optional[subprocess.Popen] = None


def start_guard() -> None:
    """Mark the processes this driver starts from now on, and start the guard that ends them when it ends."""
    global _guard
    if _guard is not None or not sys.platform.startswith("linux"):  # /proc is Linux's
        return
    token = f"{os.getpid()}-{os.urandom(8).hex()}"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}  # the guard, unmarked, never ends itself
    _guard = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # a process group of its own: see ray_apart
        **({"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}),
        env=env,
    )
    os.environ[TOKEN_VAR] = token


@contextlib.contextmanager
def ray_apart() -> Iterator[None]:
    """Around ``ray.init``: the processes it starts (and theirs) join the guard's process group, not the driver's.

    A process joins another group of its session with setpgid; the driver joins the guard's for the time of the
    start, then goes back. Meanwhile a relay holds its place in its own group: a Ctrl-C, or a ``kill -INT -PGID``,
    sent to that group in those seconds reached no one (the search then ran to its end). A session leader
    (started by setsid) cannot change its group: Ray's processes then share its group, as without this.
    """
    if _guard is None or os.getsid(0) == os.getpid():  # no guard, or a session leader
        yield
        return
    own = os.getpgrp()
    relay = start_relay()
    try:
        os.setpgid(0, _guard.pid)
    except OSError:
        stop_relay(relay)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0 if own == os.getpid() else own)  # 0: a group of its own again, as it led one
        stop_relay(relay)


RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)  # what a terminal or a scheduler sends


def start_relay() -> subprocess.Popen:
    """A process in this one's group that passes the signals of ``RELAYED`` on to it, until its stdin closes.
    Returns once its handlers are in place (it says so on its stdout)."""
    relay = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), "--relay", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != TOKEN_VAR},  # not Ray's: the guard leaves it be
    )
    relay.stdout.read(1)  # type: ignore[union-attr]
    return relay


def stop_relay(relay: subprocess.Popen) -> None:
    """End the relay; a signal it passed on before it ended has been sent (it ends only at end-of-file)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        relay.stdin.close()  # type: ignore[union-attr]
        relay.wait(5)
    if relay.poll() is None:
        relay.kill()
        relay.wait()
    relay.stdout.close()  # type: ignore[union-attr]


def guard_session(directory: str) -> None:
    """Tell the guard the instance's session directory, once ``ray.init`` has made it: a process that holds a file
    open under it is the instance's too. Ray's dashboard and runtime-env agents write their process titles over
    their environment, which then reads as blanks: by the token alone they outlived a SIGKILLed driver."""
    if _guard is None or _guard.stdin is None or not directory:
        return
    try:
        _guard.stdin.write(os.fsencode(directory) + b"\n")
        _guard.stdin.flush()
    except OSError:
        pass


def stop_guard(timeout: float = 2 * GRACE_S + 5) -> None:
    """The driver's normal end, once Ray is shut down: close the pipe, so that the guard ends what is left of
    the instance (nothing, normally), and wait for it."""
    global _guard
    guard, _guard = _guard, None
    os.environ.pop(TOKEN_VAR, None)
    if guard is None:
        return
    try:
        guard.stdin.close()
        guard.wait(timeout)
    except (OSError, subprocess.TimeoutExpired):
        pass


def marked(token: str, directories: list[bytes]) -> list[int]:
    """The pids of the live processes whose environment holds the token, or that Ray titled and that hold a file
    open under one of ``directories`` (this user's: others' cannot be read)."""
    mark = f"{TOKEN_VAR}={token}".encode()
    driver = token.split("-", 1)[0]  # start_guard's token begins with the driver's pid: at its normal end it waits
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or entry == driver:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                if mark in file.read().split(b"\0") or (ray_titled(entry) and holds_a_file_under(entry, directories)):
                    found.append(int(entry))
        except OSError:  # gone, or another user's
            pass
    return found


def private_instance_driver(port: int) -> Optional[int]:
    """The pid of the artune search whose private local instance has its GCS on ``port``, or None where no marked
    process of an instance names that GCS (a ``ray start`` cluster is unmarked). Ray's ``auto`` joins any instance
    it finds running here (by the ``--gcs-address`` its raylet was started with), a search's private one too,
    which ends with that search."""
    if not sys.platform.startswith("linux"):
        return None
    suffix = f":{port}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                args = file.read().split(b"\0")
            if not any(a.startswith((b"--gcs-address=", b"--gcs_address=")) and a.endswith(suffix) for a in args):
                continue
            with open(f"/proc/{entry}/environ", "rb") as file:
                for variable in file.read().split(b"\0"):
                    name, _, token = variable.partition(b"=")
                    if name == TOKEN_VAR.encode():
                        driver = token.split(b"-", 1)[0]  # start_guard's token begins with the driver's pid
                        return int(driver) if driver.isdigit() else 0
        except OSError:  # gone, or another user's
            continue
    return None


RAY_TITLES = (b"ray::", b"ray-dashboard-")  # Ray 2.60's setproctitle calls: workers, agents, dashboard modules


def ray_titled(pid: str) -> bool:
    """Whether the process's title is one Ray gives its own (``ray::DashboardAgent``, ``ray::IDLE``): a user's
    ``tail -f`` of a log in the session directory is not the instance's."""
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read(64).startswith(RAY_TITLES)


def holds_a_file_under(pid: str, directories: list[bytes]) -> bool:
    prefixes = tuple(directory.rstrip(b"/") + b"/" for directory in directories)
    if not prefixes:
        return False
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(os.fsencode(f"/proc/{pid}/fd/{fd}")).startswith(prefixes):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def end_marked(token: str, directories: list[bytes]) -> None:
    for _ in range(ROUNDS):
        pids = marked(token, directories)
        if not pids:
            return
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        signal_all([pid for pid in pids if alive(pid)], signal.SIGKILL)


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def relay(pid: int) -> None:
    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):  # the driver gone: its stdin's end-of-file follows
            if os.getpgid(pid) != os.getpgrp():  # back in this group, the driver has the signal itself
                os.kill(pid, signum)

    for signum in RELAYED:
        signal.signal(signum, forward)
    sys.stdout.buffer.write(b"+")
    sys.stdout.buffer.flush()
    sys.stdin.buffer.read()  # until the driver is back in its group (or gone); a signal interrupts it, then it goes on


def main(token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the driver's to handle; the guard waits for its end
    said = sys.stdin.buffer.read()  # blocks until the driver closes the pipe or dies; guard_session's lines
    end_marked(token, [line for line in said.splitlines() if line.startswith(b"/")])


if __name__ == "__main__":
    if sys.argv[1] == "--relay":
        relay(int(sys.argv[2]))
    else:
        main(sys.argv[1])
