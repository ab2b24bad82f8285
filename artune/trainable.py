"""``train_fn(config)``: the Ray Tune function trainable around ``Trainer``.

The flat dict Ray hands over becomes a ``TrainConfig``; the device and thread count come from
what Ray allocated to the trial; every epoch is reported through ``ray.tune.report`` with a
checkpoint, and a restarted trial resumes from ``ray.tune.get_checkpoint()``. Called outside
Tune (in a test or a notebook) it trains the same way and returns the per-epoch metrics.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import ray
from ray import tune

from artune.config import TrainConfig
from artune.data import Corpus
from artune.errors import NoCudaError  # noqa: F401  (re-exported)
from artune.spaces import METRICS
from artune.startup import collector_paused

if TYPE_CHECKING:
    import torch

    from artune.train import Metrics, Trainer

# torch and the trainer are imported inside the functions that run in the trial, not here: the
# search driver imports this module only to hand train_fn to Tune, and never needs torch (whose
# import would delay the search's start; bench search).


TRIAL_INDEX = "__trial_index__"
WARNINGS_KEY = "warnings"  # of a result: the warnings the trial gave since its last report, one a line
WARNING_PREFIXES = ("warning:", "artune:")  # of what artune prints on a trial's stderr as a warning


def _in_tune_session() -> bool:
    """Whether this runs inside a Tune trial: Tune's context names the trial there, and nothing elsewhere."""
    with warnings.catch_warnings():  # outside a trial Ray warns that it returns None, which is the answer
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial Ray configured with ``config``: with ``--repeats``, Ray's Repeater marks
    each run of a config with its index, and run ``i`` trains with the config's seed + ``i``."""
    config = dict(config)
    repeat = config.pop(TRIAL_INDEX, None)
    train_config = TrainConfig.from_dict(config)
    if repeat:
        train_config = dataclasses.replace(train_config, seed=train_config.seed + int(repeat))
    return train_config


def trial_device(config: TrainConfig, in_tune: bool) -> torch.device:
    """CUDA when Ray gave this trial GPUs (Ray sets CUDA_VISIBLE_DEVICES), CPU otherwise.

    An explicit ``device: cpu`` is honoured. With ``auto``, a GPU that torch cannot see is an
    error: training on the CPU instead would be quietly many times slower than what was asked for.
    """
    import torch

    from artune.train import resolve_device

    gpus = ray.get_gpu_ids() if in_tune and ray.is_initialized() else []
    if config.device == "cpu":
        return torch.device("cpu")
    if gpus:
        if not torch.cuda.is_available():
            raise NoCudaError(
                f"Ray allocated GPU(s) {gpus} to this trial but torch sees no CUDA device "
                f"(torch {torch.version.__version__}, cuda build: {torch.version.cuda}); install a CUDA build of "
                "torch on the workers, or set gpu: 0 in the search space"
            )
        return torch.device("cuda", 0)  # the first of the devices Ray made visible
    if config.device == "cuda":
        return resolve_device("cuda")
    return torch.device("cpu") if in_tune else resolve_device(config.device)


def _allocated_cpus() -> Optional[int]:
    resources = tune.get_context().get_trial_resources().required_resources
    cpus = resources.get("CPU", 0)
    return max(1, int(cpus)) if cpus else None


def _warn(message: str) -> None:
    # a trial's stderr goes to its Ray worker log (and the driver's console when log_to_driver is on)
    print(f"artune: {message}", file=sys.stderr, flush=True)


class WarningTap:
    """Collects the warnings a trial gives while it trains, for its next report: Python's warnings, and the
    lines artune prints on stderr as one. Ray starts without ``log_to_driver`` (it costs start-up time), so
    the trial's stderr reaches only its worker's log; the driver prints what comes with each result.
    Everything written still goes to the real stderr."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._partial = ""
        self._stderr, self._showwarning = sys.stderr, warnings.showwarning

    def __enter__(self) -> WarningTap:
        self._stderr, self._showwarning = sys.stderr, warnings.showwarning
        sys.stderr = self  # type: ignore[assignment]
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr, warnings.showwarning = self._stderr, self._showwarning

    def _show(self, message: Any, category: type, filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        self.lines.append(f"{category.__name__}: {message}")
        self._showwarning(message, category, filename, lineno, *args, **kwargs)

    def write(self, text: str) -> int:
        self._stderr.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines += [line.strip() for line in complete if line.strip().startswith(WARNING_PREFIXES)]
        return len(text)

    def flush(self) -> None:
        self._stderr.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...: the real stderr's
        return getattr(self._stderr, name)

    def drain(self) -> dict[str, str]:
        """``{WARNINGS_KEY: lines}`` of the warnings since the last call, or nothing where there were none."""
        lines, self.lines = self.lines, []
        return {WARNINGS_KEY: "\n".join(lines)} if lines else {}


STAGING_PREFIX = "artune-ckpt-"  # + "<pid>@<host>-": each epoch's checkpoint is staged here for tune.report


def _staging_prefix() -> str:
    return f"{STAGING_PREFIX}{os.getpid()}@{socket.gethostname()}-"


def remove_stale_staging(directory: Optional[str] = None) -> list[Path]:
    """Remove the checkpoint staging directories of trial processes that no longer run.

    A worker killed while it hands a checkpoint to Tune (a lost node, a preempted or OOM-killed
    process) cannot clean up its staging copy, which is the size of the model and its optimizer
    state. Each trial that starts removes those its dead predecessors on this host left (the host
    is in the name: containers that share a temp directory do not share their pids).
    """
    removed = []
    for path in Path(directory or tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*@*-*"):
        pid, _, rest = path.name[len(STAGING_PREFIX) :].partition("@")
        host = rest.rsplit("-", 1)[0]  # tempfile's random suffix has no "-"
        if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def resume(trainer: Trainer, checkpoint: "tune.Checkpoint", fresh: Callable[[], Trainer]) -> Trainer:
    """Load Ray's latest checkpoint; if it is corrupt, the previous one Ray kept; else start over.

    Every fallback is said on stderr with the file and the reason; a trainer that failed to load is
    discarded (it may be half-loaded) and a fresh one tried, so a resume never pretends.
    """
    from artune.train import CheckpointError

    with checkpoint.as_directory() as directory:
        latest = Path(directory)
        try:
            trainer.load_checkpoint(latest)
            return trainer
        except CheckpointError as exc:
            _warn(f"{exc}; trying the previous checkpoint")
    # Ray keeps CheckpointConfig.num_to_keep checkpoints as checkpoint_NNNNNN siblings in the trial directory
    # (Ray 2.60.0: see artune/compat.py).
    older = sorted(
        (p for p in Path(checkpoint.path).parent.glob("checkpoint_*") if p.name < Path(checkpoint.path).name),
        reverse=True,
    )
    for candidate in older:
        trainer = fresh()
        try:
            trainer.load_checkpoint(candidate)
            _warn(f"resumed from the previous checkpoint {candidate} (epoch {trainer.epoch})")
            return trainer
        except CheckpointError as exc:
            _warn(str(exc))
    _warn("no loadable checkpoint for this trial: it restarts from epoch 1")
    return fresh()


@dataclass(frozen=True)
class Workers:
    """A trial trained by ``count`` data-parallel workers, each with ``cpu`` CPUs and ``gpu`` GPUs; ``metric``
    and ``mode`` rank its checkpoints, as the search's CheckpointConfig does for a one-process trial.
    ``run_path``: the Tune run's directory, which holds a directory per trial named by its id (the search's
    ``trial_dirname_creator``); Ray Train's run for the trial is stored there."""

    count: int = 1
    cpu: float = 1.0
    gpu: float = 0.0
    metric: str = "valid_loss"
    mode: str = "min"
    run_path: str = ""


def train_fn(
    config: dict[str, Any],
    corpus: Optional[Corpus] = None,
    deadline: Optional[float] = None,
    ended: frozenset[str] = frozenset(),
    workers: Workers = Workers(),
) -> Optional[list[Metrics]]:
    """Train one trial. ``corpus`` is the corpus the driver encoded once (``tune.with_parameters``).

    ``deadline`` (a ``time.time()``; the search's time budget): the trial ends there, mid-epoch,
    keeping what it reported. Tune stops a trial by a call that waits behind the trial's pending
    report, up to a whole epoch (and kills it 15 s later); a trial that ends itself leaves at once.

    ``ended``: the ids of trials that a resumed search's tables record as ended (finished, stopped by
    the scheduler, diverged) after Tune last saved its state (every few seconds), so that Tune's
    state would continue them: such a trial ends at once, without training.

    ``workers``: with more than one, the trial runs Ray Train's TorchTrainer (see ``fit_data_parallel``).

    Inside Tune the metrics go out through ``tune.report`` (with the warnings the trial gave since its
    last report, see ``WarningTap``) and nothing is returned (Tune takes a return value as one more
    result); outside Tune the per-epoch metrics are returned.
    """
    in_tune = _in_tune_session()
    if not in_tune:
        return _train(config, corpus, deadline, None)
    if tune.get_context().get_trial_id() in ended:
        return None
    if workers.count > 1:
        fit_data_parallel(config, corpus, deadline, workers)
        return None
    with WarningTap() as tap:
        _train(config, corpus, deadline, tap)
    return None


def diverged_metrics(epoch: int, exc: Exception) -> Metrics:
    """A diverged trial's one report. Every metric a search can rank by is there, NaN: the searcher reads the
    search's metric from each result."""
    return {"epoch": epoch, "diverged": True, "error": str(exc), **dict.fromkeys(METRICS, float("nan"))}


def _train(
    config: dict[str, Any], corpus: Optional[Corpus], deadline: Optional[float], tap: Optional[WarningTap]
) -> Optional[list[Metrics]]:
    """train_fn's training: inside Tune (``tap`` given) it reports, outside it returns the metrics."""
    with collector_paused():  # a new worker imports torch here, and its optimizer torch's lazy modules: startup.py
        import torch

        from artune.train import DivergedError, Trainer

        in_tune = tap is not None
        train_config = trial_config(config)
        if in_tune:
            remove_stale_staging()
            cpus = _allocated_cpus()
            if cpus:
                torch.set_num_threads(cpus)  # match the CPUs Ray reserved, not the whole node
        device = trial_device(train_config, in_tune)
        trainer = Trainer(train_config, corpus, device=device)

    checkpoint = tune.get_checkpoint() if in_tune else None
    if checkpoint is not None:
        trainer = resume(trainer, checkpoint, lambda: Trainer(train_config, corpus, device=device))

    def report(metrics: Metrics) -> None:
        if tap is None:
            return
        metrics = {**metrics, **tap.drain()}
        if train_config.is_save_models:
            with tempfile.TemporaryDirectory(prefix=_staging_prefix()) as directory:
                trainer.save_checkpoint(directory)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)

    try:
        history = trainer.fit(report, deadline)
    except DivergedError as exc:
        # A diverged trial is a result, not a fault: report it once (no checkpoint of the broken
        # weights) and end normally, so Tune spends no retry on it.
        metrics = diverged_metrics(trainer.epoch + 1, exc)
        if tap is not None:
            tune.report({**metrics, **tap.drain()})
            return None
        return [metrics]
    return None if in_tune else history


# A worker group that lost a worker is started again from the trial's last checkpoint this many times
# (Ray Train's own retries, inside the trial; the search's retries of the trial come after them).
WORKER_GROUP_RESTARTS = 2
WORKERS_KEY = "workers"  # of a result: the trial's data-parallel workers
# of a result: the hex id of the placement group holding the trial's workers, which Ray Train leaves behind
# where Tune ends the trial while it runs (see artune.search.tuner.WorkerGroupCleanup)
PLACEMENT_GROUP_KEY = "workers_placement_group"


def fit_data_parallel(
    config: dict[str, Any], corpus: Optional[Corpus], deadline: Optional[float], workers: Workers
) -> None:
    """Train the trial on ``workers.count`` ranks through Ray Train's TorchTrainer, from inside its Tune trial.

    Ray 2.60 runs Ray Train V2, whose supported way into Tune is this: the trial function fits a TorchTrainer
    whose storage is the trial's own directory (its checkpoints sit there as a one-process trial's do, and a
    trial Tune retries continues the run, from its last checkpoint), and Ray Train's TuneReportCallback hands
    each epoch's result to Tune. The workers hold their own resources; the trial function holds next to none.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if not workers.run_path:
        raise ValueError("a data-parallel trial needs Workers.run_path, the Tune run's directory")
    per_worker = {"CPU": workers.cpu, **({"GPU": workers.gpu} if workers.gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config, "corpus": corpus, "deadline": deadline, "workers": workers},
        scaling_config=ScalingConfig(
            num_workers=workers.count, use_gpu=workers.gpu > 0, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if workers.gpu > 0 else "gloo"),
        run_config=RunConfig(
            # Ray's documented way into Tune: a Train run named after the trial, in the trial's own directory
            name=tune.get_context().get_trial_id(),
            storage_path=workers.run_path,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=WORKER_GROUP_RESTARTS),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=workers.metric, checkpoint_score_order=workers.mode
            ),
        ),
    )
    trainer.fit()


def train_worker(loop: dict[str, Any]) -> None:
    """One rank of a data-parallel trial, in a Ray Train worker whose process group Ray Train set up.

    Every rank trains its rows of each batch and reports each epoch (Ray Train waits for all of them); rank 0
    alone writes the checkpoint, and every rank restores the last one where the worker group was restarted.
    """
    import ray.train
    import ray.util
    import torch
    from ray.train.torch import get_device

    from artune.train import DivergedError, Trainer
    from artune.train.ranks import Ranks

    workers: Workers = loop["workers"]
    corpus, train_config = loop["corpus"], trial_config(loop["config"])
    remove_stale_staging()
    torch.set_num_threads(max(1, int(workers.cpu)))
    device = get_device() if workers.gpu > 0 else torch.device("cpu")
    ranks = Ranks.of_process_group()

    def fresh() -> Trainer:
        return Trainer(train_config, corpus, device=device, ranks=ranks)

    group = ray.util.get_current_placement_group()
    placement = {PLACEMENT_GROUP_KEY: group.id.hex()} if group is not None and ranks.is_first else {}
    with WarningTap() as tap:  # rank 0's report is the one Tune gets: its warnings go with it
        trainer = fresh()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            trainer = resume(trainer, checkpoint, fresh)

        def report(metrics: Metrics) -> None:
            metrics = {**metrics, WORKERS_KEY: ranks.world_size, **placement, **tap.drain()}
            if train_config.is_save_models and ranks.is_first:
                with tempfile.TemporaryDirectory(prefix=_staging_prefix()) as directory:
                    trainer.save_checkpoint(directory)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
            else:
                ray.train.report(metrics, checkpoint=None)

        try:
            trainer.fit(report, loop["deadline"])
        except DivergedError as exc:  # on every rank at once: the loss is the global batches'
            metrics = diverged_metrics(trainer.epoch + 1, exc)
            ray.train.report({**metrics, WORKERS_KEY: ranks.world_size, **placement, **tap.drain()}, checkpoint=None)
