"""Trials trained by several workers (DistributedDataParallel over gloo): the same batches and losses as one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil
import pyarrow.parquet as pq
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
GUARD_S = 300  # a hang guard, not a pace


def _ranks(
    world_size: int, out: Path, shakespeare_path: Path, deadlines: tuple = (), knobs: Optional[dict] = None
) -> list[dict]:
    """Run tests/_ddp_worker.py as ``world_size`` real processes (rank r until ``deadlines[r]``, its config changed
    by ``knobs``); each rank's record."""
    out.mkdir()
    env = {**os.environ, "ARTUNE_DATA_DIR": str(shakespeare_path.parent), "DDP_WORKER_CONFIG": json.dumps(knobs or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._ddp_worker", str(rank), str(world_size), str(out)]
            + [str(d) for d in deadlines[rank : rank + 1]],
            cwd=REPO,
            env=env,
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        assert proc.wait(timeout=GUARD_S) == 0
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, shakespeare_path):
    tmp = tmp_path_factory.mktemp("ddp")
    return _ranks(1, tmp / "one", shakespeare_path)[0], _ranks(2, tmp / "two", shakespeare_path)


def test_two_workers_train_on_the_global_batches_of_one(one_and_two):
    one, (rank0, rank1) = one_and_two
    assert len(one["seen"]) == len(rank0["seen"]) == len(rank1["seen"]) == 12  # 2 epochs of 6 batches
    for whole, first, second in zip(one["seen"], rank0["seen"], rank1["seen"]):
        assert first.shape[0] == second.shape[0] == whole.shape[0] // 2
        assert torch.equal(whole[0::2], first) and torch.equal(whole[1::2], second)


def test_two_workers_reach_the_loss_of_one(one_and_two):
    one, ranks = one_and_two
    for rank in ranks:
        assert [m["epoch"] for m in rank["history"]] == [1, 2]
        for single, shared in zip(one["history"], rank["history"]):
            # the whole validation split's loss, after the same steps on the same global batches
            assert shared["valid_loss"] == pytest.approx(single["valid_loss"], abs=1e-3)
            assert shared["train_loss"] == pytest.approx(single["train_loss"], abs=1e-3)
            assert shared["tokens_seen"] == single["tokens_seen"]  # every rank's tokens
    # the ranks agree on every metric they report
    assert [m["valid_loss"] for m in ranks[0]["history"]] == [m["valid_loss"] for m in ranks[1]["history"]]


def test_a_last_batch_of_fewer_rows_than_workers_trains_as_in_one_process(tmp_path, shakespeare_path):
    """Whole shuffled epochs of a short text end in a batch of one row at some offsets: the rank without a row
    adds nothing (its mean loss over nothing was NaN, and every such epoch was taken for a divergence)."""
    text = tmp_path / "short.txt"
    text.write_text(shakespeare_path.read_text(encoding="utf-8")[:400], encoding="utf-8")
    knobs = {"dataset": str(text), "batch_size": 4, "batches_per_epoch": None, "epochs": 6, "valid_loader": "shuffled"}
    (one,) = _ranks(1, tmp_path / "one", shakespeare_path, knobs=knobs)
    ranks = _ranks(2, tmp_path / "two", shakespeare_path, knobs=knobs)
    assert any(batch.shape[0] == 1 for batch in one["seen"])  # the case: a last batch of one row
    for rank in ranks:
        assert [m["epoch"] for m in rank["history"]] == [1, 2, 3, 4, 5, 6]
        for single, shared in zip(one["history"], rank["history"]):
            assert shared["train_loss"] == pytest.approx(single["train_loss"], abs=1e-3)
            assert shared["tokens_seen"] == single["tokens_seen"]


def test_each_rank_draws_dropout_masks_of_its_own_from_the_seed_epoch_and_rank(tmp_path, shakespeare_path):
    """The same random state on every rank gave rank 1's rows rank 0's masks. Each epoch's state comes from the
    seed, epoch and rank alone (the same in a second run), so a run resumed at an epoch draws what it would have."""
    knobs = {"dropout": 0.2, "epochs": 2}
    rank0, rank1 = _ranks(2, tmp_path / "two", shakespeare_path, knobs=knobs)
    firsts = [rank["dropout_states"][0] for rank in (rank0, rank1)]
    assert not torch.equal(*firsts)
    again, _ = _ranks(2, tmp_path / "again", shakespeare_path, knobs=knobs)
    assert all(torch.equal(a, b) for a, b in zip(again["dropout_states"], rank0["dropout_states"]))
    second_epoch = len(rank0["dropout_states"]) // 2
    assert not torch.equal(rank0["dropout_states"][0], rank0["dropout_states"][second_epoch])


def test_workers_train_eagerly_with_compile_true_and_need_no_compiler(tmp_path, shakespeare_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    ranks = _ranks(2, tmp_path / "two", shakespeare_path, knobs={"compile": True, "epochs": 1})
    assert [[m["compiled"] for m in rank["history"]] for rank in ranks] == [[False], [False]]


def test_a_deadline_one_rank_sees_passed_stops_every_rank_at_the_same_step(tmp_path, shakespeare_path):
    # rank 1's clock is past its deadline, rank 0's far from it: both stop before the first step (a rank that
    # went on alone would wait for the other in its gradients' all-reduce until the guard's timeout)
    ranks = _ranks(2, tmp_path / "cut", shakespeare_path, deadlines=(time.time() + 3600, 0.0))
    assert [len(rank["seen"]) for rank in ranks] == [0, 0] and [rank["history"] for rank in ranks] == [[], []]


# --- through the search CLI: Ray Train's TorchTrainer inside each Tune trial


def _search(results: Path, shakespeare_path: Path, ray_tmpdir: str, *args: str, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "artune.search", str(REPO / "search_spaces" / "smoke.yaml")]
    command += ["--results-dir", str(results), "--name", "dp", "--data", str(shakespeare_path), *args]
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir}
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, **popen)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def ray_tmpdir():
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def two_worker_search(tmp_path_factory, shakespeare_path, ray_tmpdir):
    results = tmp_path_factory.mktemp("dp")
    # smoke.yaml's max_concurrent: 2 is held to the trials whose workers fit (one, on 2 CPUs)
    args = ["--workers-per-trial", "2", "--num-samples", "2", "--epochs", "2"]
    proc = _search(results, shakespeare_path, ray_tmpdir, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=GUARD_S * 2)
    return proc.returncode, out, err, results / "dp"


def test_a_search_of_two_worker_trials_finishes_every_trial(two_worker_search):
    code, out, err, run = two_worker_search
    assert code == 0, (out, err)
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(t["status"] in ("completed", "stopped") for t in trials), trials
    assert {t["workers"] for t in trials} == {2}
    assert "trial resources: 2 workers x (1 CPU, 0 GPU), data-parallel" in out, out[:2000]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resources_per_trial"] == {"workers": 2, "cpu": 1, "gpu": 0}, manifest["resources_per_trial"]
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    # every epoch trained the global batches: smoke.yaml's 20 batches of 8 x 32 tokens, over both workers
    assert all(e["tokens_seen"] == e["epoch"] * 20 * 8 * 32 and e["workers"] == 2 for e in epochs), epochs
    # rank 0 wrote each trial's checkpoints into its trial directory, where a one-process trial's are
    for t in trials:
        assert list((run / "tune" / t["trial_id"]).glob("checkpoint_*/checkpoint.pt")), t["trial_id"]


def test_the_best_model_of_a_two_worker_search_loads(two_worker_search):
    from artune.results import load

    results = load(two_worker_search[3])
    best = results.best(1).iloc[0]
    loaded = results.best_model()  # rank 0's checkpoint of the best trial's best epoch
    assert loaded.origin["trial_id"] == best["trial_id"], loaded.origin


def _workers_of(pid: int) -> list[psutil.Process]:
    """Ray Train's worker processes under the search process ``pid`` (its local Ray instance's)."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_resumes_its_trial_from_the_last_checkpoint(tmp_path, shakespeare_path, ray_tmpdir):
    args = ["--workers-per-trial", "2", "--num-samples", "1", "--epochs", "3", "--set", "batches_per_epoch=300"]
    proc = _search(tmp_path, shakespeare_path, ray_tmpdir, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + GUARD_S
        while not list(tmp_path.glob("dp/tune/*/checkpoint_*/checkpoint.pt")):  # epoch 1 is checkpointed
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        victim = workers[1]
        victim.kill()  # mid-epoch 2: the other rank waits on it in the next all-reduce
        out, err = proc.communicate(timeout=GUARD_S * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    assert not victim.is_running()
    (trial,) = pq.read_table(tmp_path / "dp" / "trials.parquet").to_pylist()
    assert trial["status"] == "completed" and trial["epochs_completed"] == 3, trial
    # Tune's own log of the trial's results: epoch 1 once, so the restarted workers went on from its checkpoint
    lines = (tmp_path / "dp" / "tune" / trial["trial_id"] / "result.json").read_text().splitlines()
    reported = [json.loads(line)["epoch"] for line in lines]
    assert reported == [1, 2, 3], reported
    epochs = pq.read_table(tmp_path / "dp" / "epochs.parquet").to_pylist()
    assert [e["tokens_seen"] for e in epochs] == [n * 300 * 8 * 32 for n in (1, 2, 3)]


# --- refused before anything is written


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--workers-per-trial", "0"], ["--workers-per-trial", "workers >= 1 must hold", "but got 0"]),
        (["--gpus-per-trial", "2"], ["--gpus-per-trial", "gpu <= 1 must hold", "--workers-per-trial 2"]),
    ],
)
def test_bad_worker_settings_are_one_line_and_exit_2(tmp_path, shakespeare_path, args, fragments):
    proc = _search(
        tmp_path / "results", shakespeare_path, "/tmp", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(fragment in err for fragment in fragments), err
    assert not (tmp_path / "results").exists()


SMOKE_TEXT = (REPO / "search_spaces" / "smoke.yaml").read_text()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # two GPUs of one worker: the fix is two workers of one GPU each
        (
            SMOKE_TEXT.replace("{cpu: 1, gpu: 0}", "{cpu: 1, gpu: 2}"),
            [":7: search.resources.gpu: gpu <= 1 must hold", "fix: resources: {workers: 2, gpu: 1}"],
        ),
        # every batch_size a trial can sample must give each worker rows: a trial with fewer fails in every retry
        (
            "search: {num_samples: 2, epochs: 1, resources: {workers: 4}}\nfixed: {n_heads: 2}\n"
            "params:\n  batch_size: {choice: [2, 8]}\n",
            [":4: params.batch_size: workers <= batch_size must hold", "workers=4 and batch_size 2"],
        ),
    ],
)
def test_a_space_file_whose_workers_cannot_train_is_refused_naming_its_line(tmp_path, text, fragments):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    command = [sys.executable, "-m", "artune.search", str(space), "--results-dir", str(tmp_path / "results")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=GUARD_S)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(
        f"{space}{fragment}" in result.stderr if fragment.startswith(":") else fragment in result.stderr
        for fragment in fragments
    ), result.stderr
    assert not (tmp_path / "results").exists()


def test_a_trial_of_two_workers_holds_both_workers_resources(tmp_path):
    from artune.search.tuner import trial_resources, trial_slots
    from artune.spaces import load_space

    space = load_space(REPO / "search_spaces" / "smoke.yaml")
    two = space.with_overrides(workers=2, cpu=1)
    # Ray Train's workers hold the CPUs; the trial's own process, next to nothing, so that they fit beside it
    assert trial_resources(two)["cpu"] == 0 and trial_resources(space) == {"cpu": 1, "gpu": 0}
    assert trial_slots(two, {"CPU": 4}) == 2 and trial_slots(space, {"CPU": 4}) == 4
    assert trial_slots(two.with_overrides(gpu=0.5), {"CPU": 8, "GPU": 1}) == 1
    assert "2 data-parallel workers per trial, each 1 cpu + 0 gpu" in two.describe()


def test_workers_that_need_more_cpus_than_the_cluster_are_refused_before_any_trial(
    tmp_path, shakespeare_path, ray_tmpdir
):
    cpus = psutil.cpu_count()  # the local instance's: each worker fits the node, the two do not
    results = tmp_path / "results"
    proc = _search(
        results,
        shakespeare_path,
        ray_tmpdir,
        *["--workers-per-trial", "2", "--cpus-per-trial", str(cpus)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=GUARD_S)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"workers: 2 x cpu: {cpus:g} per trial" in err and "--workers-per-trial" in err, err
    assert not results.exists() or not any(results.iterdir())
