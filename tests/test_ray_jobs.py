"""The search submitted as a Ray job, as docs/cluster.md says: a head started with `ray start --head` and its
dashboard on 127.0.0.1 (the `cluster` extra), `ray job submit ... -- python -m artune.search ... --address auto`,
then the tables read from the `--results-dir` the job was given.

Skipped where the dashboard's packages are missing (artune installed without the `cluster` extra), unless
``ARTUNE_REQUIRE_CLUSTER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from artune.results import load
from tests._searches import reap, write_small_corpus
from tests.test_search import REPO, SMOKE

RAY = Path(sys.executable).parent / "ray"  # the ray CLI of this environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_installed() -> bool:
    try:
        import aiohttp  # noqa: F401  - the dashboard's web server, which ray[default] adds
        import ray.dashboard  # noqa: F401
    except ImportError:
        return False
    return RAY.exists()


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node cluster with the dashboard (the jobs API), its sessions under a RAY_TMPDIR of its own."""
    if not dashboard_installed():
        if os.environ.get("ARTUNE_REQUIRE_CLUSTER") == "1":
            pytest.fail("ARTUNE_REQUIRE_CLUSTER=1 but Ray's dashboard is not installed (pip install -e '.[cluster]')")
        pytest.skip("Ray's dashboard is not installed (the cluster extra: pip install -e '.[cluster]')")
    ray_tmpdir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths stay under 108 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    start = subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            # Every port of its own: Ray's defaults (the dashboard agent's 52365 above all) may be held by another
            # Ray instance on the machine, and a head whose agent cannot listen takes no job ("No available agent
            # to submit job", seen in CI with every retry)
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--num-cpus=2",
            f"--temp-dir={ray_tmpdir}",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
        yield {"env": env, "jobs": f"http://127.0.0.1:{dashboard}"}
    finally:
        reap(ray_tmpdir)  # its processes only: `ray stop` would end every Ray instance on the machine
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


# Right after `ray start` returns, the head's dashboard agent may not have registered yet: the jobs API then
# waits 10 s for it (Ray's WAIT_AVAILABLE_AGENT_TIMEOUT) and refuses with this line, before any job exists.
# A loaded machine can take longer than that, so the submission is retried on it, by count, not by clock.
NO_AGENT_YET = "No available agent to submit job"
SUBMIT_TRIES = 30


def submit_job(command: list[str], env: dict) -> subprocess.CompletedProcess:
    for _ in range(SUBMIT_TRIES):
        submit = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
        if NO_AGENT_YET not in submit.stdout + submit.stderr:
            return submit
    return submit


def test_a_search_submitted_as_a_ray_job_writes_its_tables_where_it_was_told(head, tmp_path, shakespeare_path):
    corpus = write_small_corpus(shakespeare_path, tmp_path / "small.txt")
    results = tmp_path / "results"
    submit = submit_job(
        [
            str(RAY),
            "job",
            "submit",
            "--address",
            head["jobs"],
            "--",
            sys.executable,
            "-m",
            "artune.search",
            str(SMOKE),
            "--address",
            "auto",
            "--results-dir",
            str(results),
            "--name",
            "job",
            "--data",
            str(corpus),
            "--num-samples",
            "2",
            "--set",
            "batches_per_epoch=10",
        ],
        head["env"],
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0 and "succeeded" in output, output[-4000:]
    assert "search 'job'" in output  # the driver's own lines, streamed back by the jobs API
    searched = load(results / "job")
    assert len(searched.trials) == 2
    assert set(searched.trials["status"]) <= {"completed", "stopped"}
    assert len(searched.epochs) >= 2
