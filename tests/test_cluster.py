"""A search against a real multi-process Ray cluster on 127.0.0.1 through ``--address``."""

from __future__ import annotations

import pytest

from artune.results import load
from tests._searches import Search, reap, tables
from tests.test_search import SMOKE, cli

cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture
def cluster(private_ray_tmpdir, monkeypatch):
    # A cluster without Ray's token authentication, whatever an earlier ray.init left in this environment.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # A head and a worker node, each its own set of processes (GCS, raylet, workers), one CPU each.
    head = {"num_cpus": 1, "include_dashboard": False}
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=head)
    cluster.add_node(num_cpus=1, wait=False)
    cluster.wait_for_nodes(timeout=300)  # cluster_utils waits 30 s by default: a slow machine's node may take longer
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
def test_search_on_a_two_node_cluster_through_address(cluster, tmp_path, shakespeare_path):
    result = cli(
        str(SMOKE),
        "--address",
        cluster.address,
        "--results-dir",
        str(tmp_path),
        "--name",
        "cluster",
        "--data",
        str(shakespeare_path),
        "--num-samples",
        "2",
        "--set",
        "batches_per_epoch=10",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"on the Ray cluster at {cluster.address}\n" in result.stdout
    # --address auto: the header names the cluster Ray finds (it said "search 'x' on auto")
    planned = cli(
        str(SMOKE),
        "--address",
        "auto",
        "--data",
        str(shakespeare_path),
        "--dry-run",
        env={"RAY_ADDRESS": cluster.address},
    )
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert f"on the Ray cluster at {cluster.address} (--address auto)\n" in planned.stdout, planned.stdout[:300]
    # The test cluster runs without Ray's token authentication, so artune warns about it once connected.
    assert "token authentication off" in result.stderr and "private network" in result.stderr
    results = load(tmp_path / "cluster")
    assert len(results.trials) == 2
    assert set(results.trials["status"]) <= {"completed", "stopped"}


@pytest.mark.slow
def test_a_trial_larger_than_every_node_is_refused_though_the_cluster_totals_hold_it(
    cluster,
    tmp_path,
    shakespeare_path,
):
    """Two 1-CPU nodes hold 2 CPUs, but a 2-CPU trial would wait for ever: it runs on one node."""
    result = cli(
        str(SMOKE),
        "--address",
        cluster.address,
        "--results-dir",
        str(tmp_path),
        "--name",
        "big",
        "--data",
        str(shakespeare_path),
        "--cpus-per-trial",
        "2",
    )
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    expected = "error: resources: 2 CPUs and 0 GPUs per trial, but no node has that much (nodes: 1 CPUs and 0 GPUs)"
    assert last.startswith(expected), last
    assert not (tmp_path / "big").exists()


def head_only():
    return cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})


@pytest.mark.slow
def test_a_cluster_lost_mid_search_ends_in_one_line_with_exit_3_and_resume_goes_on_on_a_new_head(
    tmp_path, shakespeare_path, private_ray_tmpdir, monkeypatch
):
    """The head's raylet killed while the search runs through --address: it was exit 1 after Ray's tracebacks and a
    log line of its core worker, no word of artune's. Now one line naming --resume, exit 3; and --resume on a new
    head trains the search to its end."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    common = ["--results-dir", str(tmp_path), "--name", "lost", "--data", str(shakespeare_path)]
    first = head_only()
    try:
        search = Search(
            str(SMOKE), "--address", first.address, *common, "--epochs", "4", "--set", "batches_per_epoch=40"
        )
        search.hold_at(lambda: search.epochs(), 240, "an epoch line", private_ray_tmpdir)
        first.head_node.kill_raylet()
        search.release(private_ray_tmpdir)
        rc = search.finish(120)
    finally:
        first.shutdown()
        reap(private_ray_tmpdir)
    last = search.stderr.strip().splitlines()[-1]
    assert rc == 3, (rc, search.stderr[-3000:])
    assert last.startswith("error: lost the Ray cluster at") and "--resume --name lost" in last, last

    second = head_only()
    try:
        resumed = Search("--resume", "--address", second.address, *common[:4])
        assert resumed.finish(1200) == 0, resumed.stderr[-3000:]
    finally:
        second.shutdown()
        reap(private_ray_tmpdir)
    trials, rows = tables(tmp_path / "lost")
    ended = trials[trials.status.isin(["completed", "stopped"])]
    # the others were begun after Tune's last save (sampled again), or failed with the cluster and were saved so
    lost = trials[~trials.status.isin(["completed", "stopped"])]
    with_the_cluster = lost["error"].str.contains(r"^The actor \w+ (?:is unavailable|died)", regex=True)
    assert len(ended) == 4 and (lost["error"].str.startswith("lost:") | with_the_cluster).all(), trials[
        ["trial_id", "status", "error"]
    ]
    assert not rows.duplicated(["trial_id", "epoch"]).any()
