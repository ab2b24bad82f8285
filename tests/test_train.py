import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from artune.batches import sequential_batches
from artune.config import ConfigError, TrainConfig
from artune.optim import lr_lambda
from artune.tokenizers import UnknownTokenError
from artune.train import (
    BF16_MIN_SPEEDUP,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CheckpointError,
    DivergedError,
    Trainer,
    cpu_bf16_speedup,
    cpu_has_native_bf16,
    main,
    resolve_precision,
    steps_per_epoch,
)
from artune.train import compile as compile_module
from artune.train import device as device_module

REPO = Path(__file__).resolve().parent.parent

METRIC_KEYS = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_accuracy",
    "tokens_seen",
    "tokens_per_sec",
    "lr",
    "sample",
    "seconds",
    "compiled",
    "precision_used",
}


@pytest.fixture(scope="module")
def small_text(shakespeare_path, tmp_path_factory) -> Path:
    """The first 20,000 characters of Tiny Shakespeare: real text, small enough for fast epochs."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def tiny(path: Path, **overrides) -> TrainConfig:
    values = dict(
        dataset=str(path),
        d_model=32,
        n_layers=1,
        n_heads=2,
        seq_len=16,
        batch_size=8,
        lr=3e-3,
        epochs=1,
        batches_per_epoch=6,
        sample_tokens=4,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


# --- learning on the real corpus


def test_learns_tiny_shakespeare_below_its_unigram_entropy(shakespeare_path):
    config = TrainConfig(
        dataset="tiny_shakespeare",
        d_model=64,
        n_layers=2,
        n_heads=4,
        seq_len=32,
        batch_size=16,
        lr=3e-3,
        epochs=1,
        batches_per_epoch=200,
        sample_tokens=10,
        device="cpu",
    )
    trainer = Trainer(config, data_dir=shakespeare_path.parent)
    counts = torch.bincount(torch.cat([trainer.train_tokens, trainer.valid_tokens]).long()).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * p.log()).sum())  # nats per character of a model that knows only the frequencies
    assert 3.2 < entropy < 3.4
    before, _ = trainer.validate()
    assert before == pytest.approx(math.log(trainer.corpus.vocab_size), abs=0.1)  # small init: near uniform
    (metrics,) = trainer.fit()
    assert metrics["valid_loss"] < entropy - 0.5, (metrics["valid_loss"], entropy)
    assert metrics["train_loss"] < entropy - 0.3
    assert metrics["valid_accuracy"] > float(p.max()) + 0.05  # beats always guessing the commonest character
    assert metrics["sample"].startswith("It is") and len(metrics["sample"]) == len("It is") + 10


@pytest.mark.parametrize(
    ("positions", "activation", "precision", "rel"),
    [("learned", "gelu", "fp32", 1e-3), ("rope", "swiglu", "fp32", 1e-3), ("rope", "swiglu", "bf16", 2e-2)],
)
def test_compiled_training_sees_one_batch_shape_and_matches_eager(small_text, positions, activation, precision, rel):
    """With compile, the epoch's partial last batch is skipped (a new shape would recompile the model);
    the compiled model's losses are the eager model's (rope and swiglu compile a form of their own; bf16 on a
    CPU compiles its explicit attention, within bf16's rounding)."""
    config = tiny(
        small_text,
        batch_size=24,
        seq_len=16,
        batches_per_epoch=None,
        sample_tokens=0,
        position_encoding=positions,
        activation=activation,
        precision=precision,
    )
    eager, compiled = Trainer(config), Trainer(dataclasses.replace(config, compile=True))
    sizes = [x.shape[0] for x, _ in Trainer(config)._batches()]
    assert sizes[-1] < 24, "the test needs an epoch that ends in a partial batch"
    seen = []
    compiled_forward = compiled.forward
    compiled.forward = lambda x: (seen.append(x.shape), compiled_forward(x))[1]
    loss, _, tokens, _ = compiled.train_epoch()
    assert set(seen) == {torch.Size([24, 16])} and tokens == len(sizes[:-1]) * 24 * 16
    eager.config = dataclasses.replace(config, batches_per_epoch=len(sizes) - 1)
    eager_loss, _, eager_tokens, _ = eager.train_epoch()
    assert eager_tokens == tokens and loss == pytest.approx(eager_loss, rel=rel)
    assert compiled.validate() == pytest.approx(eager.validate(), rel=rel)


def test_compile_on_a_split_without_one_whole_batch_is_refused_not_trained_on_nothing(small_text):
    """compile skips the partial last batch: where that is the only batch an epoch would train on
    nothing and report a train loss of 0.0; eager training takes the partial batch."""
    from artune.data import CorpusError

    config = tiny(small_text, batch_size=512, seq_len=64, batches_per_epoch=None, train_loader="shuffled")
    assert steps_per_epoch(config, len(Trainer(config).corpus.train)) == 1
    with pytest.raises(
        CorpusError, match=r"compile \(true or 'auto'\) trains on whole batches only.*no whole batch of batch_size 512"
    ):
        Trainer(dataclasses.replace(config, compile=True))


def test_compile_without_a_cpp_compiler_is_refused_before_training(small_text, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(ConfigError, match=r"compile: true needs a C\+\+ compiler.*no-such-g\+\+.*compile: false"):
        Trainer(tiny(small_text, compile=True))
    Trainer(tiny(small_text))  # eager needs none


@pytest.mark.parametrize("loader", ["sequential", "shuffled"])
def test_the_lr_schedule_plans_the_steps_an_epoch_takes_with_and_without_compile(small_text, loader):
    """With compile the partial last batch is skipped: the schedule plans without it, so a decaying
    lr reaches lr * lr_min_ratio on the run's last step, not one step short of it."""
    eager = tiny(small_text, batch_size=24, seq_len=16, batches_per_epoch=None, train_loader=loader)
    sizes = [x.shape for x, _ in Trainer(eager)._batches()]
    assert sizes[-1] != sizes[0], "the test needs an epoch that ends in a partial batch"
    for config in (eager, dataclasses.replace(eager, compile=True)):
        trainer = Trainer(config)  # nothing compiles before the model's first call
        taken = [len(list(trainer._batches())) for _ in range(3)]
        planned = steps_per_epoch(config, len(trainer.corpus.train))
        if loader == "sequential":
            assert taken == [planned] * 3
        else:  # the random offset may leave one window fewer than the plan's offset 0
            assert all(planned - 1 <= n <= planned for n in taken) and planned in taken


def test_a_process_compiling_shape_after_shape_never_falls_back_to_eager(small_text):
    """A Ray worker reused across a search over d_model compiles every trial's shape: past dynamo's
    recompile limit (8, lowered here to 1) the model would otherwise run eagerly, with a warning in
    a worker log only. A same-shaped model reuses the compiled code."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    def compiled_frames(d_model: int) -> int:
        before = counters["frames"]["ok"]
        trainer = Trainer(
            tiny(small_text, d_model=d_model, batch_size=4, seq_len=16, batches_per_epoch=1, compile=True)
        )
        trainer.train_epoch()
        return counters["frames"]["ok"] - before

    with torch._dynamo.config.patch(recompile_limit=1):
        assert [compiled_frames(d) for d in (16, 24, 32)] == [1, 1, 1]
        assert compiled_frames(32) == 0  # the same shape again: nothing to compile


def test_compile_auto_compiles_once_the_trial_has_trained_as_long_as_compiling_pays_back(small_text, monkeypatch):
    """compile: auto rents before it buys: eager until the trial has trained AUTO_COMPILE_AFTER_S, and
    then only where as long again is left of its plan."""
    monkeypatch.setattr(compile_module, "_compiled_shape", None)  # as in a new worker
    monkeypatch.setattr(compile_module, "AUTO_COMPILE_AFTER_S", {"cpu": 25.0})
    trainer = Trainer(tiny(small_text, compile="auto", epochs=6))
    assert not trainer.compiled and not trainer.compile_pays()  # nothing trained yet
    trainer.epoch_seconds = 10.0
    pays = {}
    for epoch in range(6):
        trainer.epoch = epoch
        pays[epoch] = trainer.compile_pays()
    assert pays == {0: False, 1: False, 2: False, 3: True, 4: False, 5: False}  # trained >= 25 s and >= 25 s left
    trainer.total_steps = trainer.steps_at(4)  # a deadline planned the run down to 4 epochs: 10 s left after epoch 3
    trainer.epoch = 3
    assert not trainer.compile_pays()


def test_compile_auto_switches_to_the_compiled_model_between_epochs(small_text, monkeypatch):
    torch.compiler.reset()  # as in a new worker
    monkeypatch.setattr(compile_module, "_compiled_shape", None)
    monkeypatch.setattr(compile_module, "AUTO_COMPILE_AFTER_S", {"cpu": 0.0})
    # kept compiled whatever it gains on this machine (the check of the gain: tests/test_compile.py)
    monkeypatch.setattr(compile_module, "AUTO_COMPILE_MIN_SPEEDUP", 0.0)
    config = tiny(small_text, compile="auto", epochs=3, batches_per_epoch=4)
    trainer = Trainer(config)
    paces = []
    history = trainer.fit(lambda metrics: paces.append(trainer.epoch_seconds))
    assert [m["compiled"] for m in history] == [False, True, True]  # epoch 1 had no pace to judge by
    # the pace a deadline plans by leaves the compilation (in the epoch's first step, seconds against the
    # milliseconds of 4 steps) out: judged against that epoch's own seconds, not against another epoch's pace,
    # which a moment's stall of this machine could make as slow
    assert paces[1] < history[1]["seconds"] / 3
    assert paces[2] == pytest.approx(history[2]["seconds"], abs=0.01)  # epoch 3 compiled nothing: its pace is its own
    eager = Trainer(dataclasses.replace(config, compile=False)).fit()
    assert [m["train_loss"] for m in history] == pytest.approx([m["train_loss"] for m in eager], rel=1e-3)
    assert not any(m["compiled"] for m in eager)
    again = Trainer(config)  # this process compiled the shape: nothing left to pay, it compiles at once
    assert again.compile_pays() and again.run_epoch()["compiled"]


def test_compile_auto_trains_on_eagerly_where_torch_compile_fails(small_text, tmp_path, monkeypatch, capsys):
    """A compiler that is there but does not work (inductor's own check of it fails): the trial goes on
    eagerly, says why once, and this process does not try again."""
    import torch._inductor.config  # no public way to break the compiler

    torch.compiler.reset()
    monkeypatch.setattr(compile_module, "_compiled_shape", None)
    monkeypatch.setattr(compile_module, "_compile_failed", None)
    monkeypatch.setattr(compile_module, "AUTO_COMPILE_AFTER_S", {"cpu": 0.0})
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    config = tiny(small_text, compile="auto", epochs=3, batches_per_epoch=2)
    with torch._inductor.config.patch({"cpp.cxx": (None, "/bin/false")}):
        history = Trainer(config).fit()
    assert [m["compiled"] for m in history] == [False, False, False]
    eager = Trainer(dataclasses.replace(config, compile=False)).fit()
    assert [m["train_loss"] for m in history] == pytest.approx([m["train_loss"] for m in eager], rel=1e-5)
    warning = capsys.readouterr().err
    assert warning.count("compile: auto: torch.compile failed in epoch 2") == 1 and "trains eagerly" in warning, warning
    assert not Trainer(config).compile_pays()


def test_compile_true_with_a_compiler_that_fails_is_an_error_line_naming_the_way_out(small_text, tmp_path, monkeypatch):
    """A C++ compiler that is there (so the config's check passes) but fails whatever it compiles."""
    broken = tmp_path / "g++"
    broken.write_text("#!/bin/sh\necho 'g++: internal compiler error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    result = _cli("--dataset", str(small_text), *TINY_CLI, "--compile", "true")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]  # after what the compiler itself said
    assert line.startswith("error: compile true: torch.compile failed in the first step (") and line.endswith(
        "use compile auto (which trains eagerly where compiling fails) or false"
    ), line


def test_compile_auto_without_a_cpp_compiler_trains_eagerly(small_text, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setattr(compile_module, "_compiled_shape", None)
    monkeypatch.setattr(compile_module, "_compile_failed", None)  # (each would keep it eager for another reason)
    monkeypatch.setattr(compile_module, "AUTO_COMPILE_AFTER_S", {"cpu": 0.0})
    history = Trainer(tiny(small_text, compile="auto", epochs=2, batches_per_epoch=2)).fit()
    assert [m["compiled"] for m in history] == [False, False]


# --- metrics and the loop


def test_metrics_have_exactly_the_documented_keys_and_count_tokens(small_text):
    config = tiny(small_text, epochs=2, batches_per_epoch=5)
    seen = []
    history = Trainer(config).fit(callback=seen.append)
    assert seen == history and len(history) == 2  # the callback gets each epoch's dict, once
    per_epoch = 5 * config.batch_size * config.seq_len
    for epoch, metrics in enumerate(history, start=1):
        assert set(metrics) == METRIC_KEYS
        assert metrics["epoch"] == epoch
        assert metrics["tokens_seen"] == epoch * per_epoch
        assert metrics["tokens_per_sec"] > 0 and metrics["seconds"] > 0
        assert 0 <= metrics["train_accuracy"] <= 1 and 0 <= metrics["valid_accuracy"] <= 1
        assert metrics["lr"] == config.lr
        assert isinstance(metrics["sample"], str) and metrics["sample"].startswith(config.prompt)


def test_a_full_sequential_epoch_counts_every_target_token(small_text):
    config = tiny(small_text, train_loader="sequential", batches_per_epoch=None, seq_len=32)
    trainer = Trainer(config)
    (metrics,) = trainer.fit()
    streams = len(trainer.corpus.train) // config.batch_size  # tokens per stream; its last has no target
    assert metrics["tokens_seen"] == config.batch_size * (streams - 1)


def test_callback_is_called_once_per_epoch_in_order(small_text):
    epochs = []
    Trainer(tiny(small_text, epochs=3, batches_per_epoch=2)).fit(callback=lambda m: epochs.append(m["epoch"]))
    assert epochs == [1, 2, 3]


def test_fit_after_the_last_epoch_does_nothing(small_text):
    trainer = Trainer(tiny(small_text, epochs=1, batches_per_epoch=2))
    assert len(trainer.fit()) == 1
    assert trainer.fit() == [] and trainer.epoch == 1


# --- exact resume


@pytest.mark.parametrize(
    "overrides",
    [
        dict(train_loader="shuffled", dataloader_shuffle_with_replacement=False, dropout=0.2),
        dict(train_loader="shuffled", dataloader_shuffle_with_replacement=True, dropout=0.2),
        dict(train_loader="sequential", dropout=0.2, optimizer="noam", lr=0.5, warmup=5),
        dict(train_loader="shuffled", dropout=0.2, optimizer="muon", lr=1e-2, weight_decay=0.1),
    ],
    ids=["shuffled", "with-replacement", "sequential-noam", "shuffled-muon"],
)
def test_resume_is_exact(small_text, tmp_path, overrides):
    config = tiny(small_text, epochs=3, batches_per_epoch=6, **overrides)
    straight = Trainer(config).fit()

    first = Trainer(dataclasses.replace(config, epochs=2))
    first.fit()
    path = first.save_checkpoint(tmp_path)
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer(config)
    resumed.load_checkpoint(path)
    assert resumed.epoch == 2 and resumed.tokens_seen == straight[1]["tokens_seen"]
    (third,) = resumed.fit()

    expected = straight[2]
    assert third["epoch"] == 3
    for key in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "lr"):
        assert third[key] == pytest.approx(expected[key], abs=1e-6, rel=0), key
    assert third["tokens_seen"] == expected["tokens_seen"]
    assert third["sample"] == expected["sample"]


class TorchOptim:
    """The optimizer of artune's earliest checkpoints: torch.optim's fused AdamW and a LambdaLR."""

    def __init__(self, config: TrainConfig, model: torch.nn.Module, total_steps: int) -> None:
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, total_steps))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()


def test_a_checkpoint_written_through_torch_optim_resumes_exactly(small_text, tmp_path):
    """artune's earliest checkpoints hold torch.optim's state and its LambdaLR's (the steps taken)."""
    config = tiny(small_text, epochs=2, optimizer="adamw", weight_decay=0.1, warmup=3, lr_schedule="cosine")
    expected = Trainer(config).fit()[1]
    first = Trainer(config)
    first.optimizer = before = TorchOptim(config, first.model, first.total_steps)
    first.train_epoch()
    first.epoch = 1
    state = first.state_dict()
    state["scheduler"] = before.scheduler.state_dict()
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path)
    (second,) = resumed.fit()
    for key in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "lr", "sample", "tokens_seen"):
        assert second[key] == expected[key], key


def test_a_checkpoint_of_artunes_earlier_optimizer_resumes_exactly(small_text, tmp_path):
    """Format 1 as artune's own fused Adam wrote it, before torch.optim's: the same moments and step
    counts, under one parameter group with fewer keys. The layout of the state is torch.optim's in
    both, so the format stays 1 and such a checkpoint resumes as it would have."""
    config = tiny(small_text, epochs=2, optimizer="adamw", weight_decay=0.1, warmup=3, lr_schedule="cosine")
    expected = Trainer(config).fit()[1]
    first = Trainer(config)
    first.train_epoch()
    first.epoch = 1
    state = first.state_dict()
    new = state["optimizer"]
    (group,) = new["param_groups"]
    state["optimizer"] = {
        "state": {i: {k: new["state"][i][k] for k in ("step", "exp_avg", "exp_avg_sq")} for i in group["params"]},
        "param_groups": [
            {
                "lr": first.optimizer.lr,
                "initial_lr": config.lr,
                "betas": group["betas"],
                "eps": group["eps"],
                "weight_decay": group["weight_decay"],
                "params": group["params"],
            }
        ],
        "steps_taken": new["steps_taken"],
    }
    assert state["format"] == CHECKPOINT_FORMAT == 1
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed = Trainer(config)
    resumed.load_checkpoint(tmp_path)
    (second,) = resumed.fit()
    for key in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "lr", "sample", "tokens_seen"):
        assert second[key] == expected[key], key


def test_a_checkpoint_of_another_format_is_refused_in_one_line(small_text, tmp_path):
    trainer = Trainer(tiny(small_text))
    state = trainer.state_dict()
    state["format"] = CHECKPOINT_FORMAT + 1  # written by a later artune
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError) as refused:
        Trainer(tiny(small_text)).load_checkpoint(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path / CHECKPOINT_FILE}: checkpoint format {CHECKPOINT_FORMAT + 1} is not this artune's "
        f"({CHECKPOINT_FORMAT}); resume it with the artune that wrote it, or start afresh"
    )


@pytest.mark.parametrize(("key", "value"), [("epoch", -3), ("epoch", 2.5), ("tokens_seen", -1), ("epoch", None)])
def test_a_checkpoint_whose_counts_are_not_counts_is_refused_in_one_line(small_text, tmp_path, key, value):
    """A hand-edited checkpoint's negative epoch resumed as if it were one (a review)."""
    state = Trainer(tiny(small_text)).state_dict()
    state[key] = value
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError) as refused:
        Trainer(tiny(small_text)).load_checkpoint(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path / CHECKPOINT_FILE}: checkpoint's {key} is {value!r}, not a count (a whole number, 0 or more)"
    )


def test_capped_sequential_epochs_go_on_where_the_last_one_stopped(small_text):
    """Each capped epoch used to restart at the split's first batch: half of Tiny Shakespeare went unseen."""
    config = tiny(small_text, train_loader="sequential", batch_size=4, seq_len=16, batches_per_epoch=100, epochs=4)
    trainer = Trainer(config)
    one_pass = {x.numpy().tobytes(): i for i, (x, _) in enumerate(sequential_batches(trainer.train_tokens, 4, 16))}
    full = len(one_pass)
    seen = []
    for _ in range(config.epochs):
        seen.append([one_pass[x.numpy().tobytes()] for x, _ in trainer._batches()])
        trainer.epoch += 1
    assert 100 < full < 400 and all(len(epoch) == 100 for epoch in seen)
    flat = [index for epoch in seen for index in epoch]
    # each epoch goes on where the last stopped, wrapping at the end
    assert flat == [i % full for i in range(len(flat))]
    assert len(set(flat)) == full  # every batch of the split trained on


def test_a_capped_sequential_epoch_goes_on_where_the_last_stopped_after_a_resume_with_another_cap(small_text, tmp_path):
    """Resumed with another batches_per_epoch, the next epoch started at (its epoch) x (the new cap): 60
    batches of the split were skipped in this run (here, 120 trained at 60 an epoch, resumed at 40 an
    epoch: it started at batch 80 of its wrap, not 120)."""
    config = tiny(small_text, train_loader="sequential", batch_size=4, seq_len=16, batches_per_epoch=60, epochs=2)
    first = Trainer(config)
    first.fit()
    path = first.save_checkpoint(tmp_path)
    resumed = Trainer(dataclasses.replace(config, batches_per_epoch=40, epochs=4))
    resumed.load_checkpoint(path)
    one_pass = {x.numpy().tobytes(): i for i, (x, _) in enumerate(sequential_batches(resumed.train_tokens, 4, 16))}
    full = len(one_pass)
    seen = []
    for _ in range(2):
        seen += [one_pass[x.numpy().tobytes()] for x, _ in resumed._batches()]
        resumed.epoch += 1
    assert full > 200 and seen == [(120 + i) % full for i in range(80)]


def test_resume_depends_on_both_restored_random_states(small_text, tmp_path):
    # The resume test above can fail: with either random state not restored, epoch 2 comes out different.
    config = tiny(small_text, epochs=2, dropout=0.2)
    expected = Trainer(config).fit()[1]["train_loss"]
    first = Trainer(dataclasses.replace(config, epochs=1))
    first.fit()
    path = first.save_checkpoint(tmp_path)
    for spoil in (lambda t: torch.manual_seed(99), lambda t: t.generator.manual_seed(99)):
        resumed = Trainer(config)
        resumed.load_checkpoint(path)
        spoil(resumed)
        assert resumed.fit()[0]["train_loss"] != pytest.approx(expected, abs=1e-6)


# --- checkpoints


def test_checkpoint_loads_with_weights_only_and_save_is_atomic(small_text, tmp_path):
    trainer = Trainer(tiny(small_text, epochs=2, batches_per_epoch=2))
    trainer.fit()
    path = trainer.save_checkpoint(tmp_path / "run")
    assert path == tmp_path / "run" / CHECKPOINT_FILE
    assert sorted(os.listdir(path.parent)) == [CHECKPOINT_FILE]  # no temporary file left over
    state = torch.load(path, weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT
    assert state["epoch"] == 2 and state["tokens_seen"] == trainer.tokens_seen
    assert state["vocabulary"] == trainer.corpus.vocabulary.itos
    assert state["config"] == trainer.config.to_dict()
    assert state["corpus_sha256"] == trainer.corpus.sha256
    assert set(state["model"]) == set(trainer.model.state_dict())
    # a second save replaces the first, again leaving only the checkpoint
    trainer.save_checkpoint(tmp_path / "run")
    assert sorted(os.listdir(path.parent)) == [CHECKPOINT_FILE]
    # loading restores the weights (into a trainer that starts from other ones)
    other = Trainer(tiny(small_text))
    with torch.no_grad():
        for p in other.model.parameters():
            p.zero_()
    other.load_checkpoint(path.parent)  # a directory means its checkpoint.pt
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[name], value), name


def test_truncated_checkpoint_raises_naming_the_file(small_text, tmp_path):
    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    data = trainer.save_checkpoint(tmp_path / "good").read_bytes()
    broken = tmp_path / "broken.pt"
    for size in (len(data) // 2, 5000, 100):  # torch's reader seeks past the end (EINVAL), or finds no directory
        broken.write_bytes(data[:size])
        with pytest.raises(CheckpointError, match="^" + re.escape(f"{broken}: cannot load checkpoint")) as refused:
            trainer.load_checkpoint(broken)
        assert str(refused.value).endswith(": corrupt or truncated)"), (size, str(refused.value))


def test_a_checkpoint_with_one_bit_flipped_is_refused_naming_the_damaged_entry(small_text, tmp_path):
    """torch.load checks no CRC: a weight's lowest bit flipped resumed without a word on wrong weights, and bytes of
    the optimizer's state flipped ended the resumed run "training loss became nan ... (lr=...)" (a review)."""
    import zipfile

    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    path = trainer.save_checkpoint(tmp_path / "good")
    with zipfile.ZipFile(path) as archive:
        weight = max(archive.infolist(), key=lambda entry: entry.file_size)  # the largest tensor's bytes
        start = weight.header_offset + len(weight.FileHeader()) + len(weight.extra)
    data = bytearray(path.read_bytes())
    data[start + weight.file_size // 2] ^= 1
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data)
    with pytest.raises(CheckpointError) as refused:
        trainer.load_checkpoint(broken)
    assert str(refused.value) == (
        f"{broken}: cannot load checkpoint (damaged: its entry {weight.filename} fails its CRC-32 check)"
    )
    trainer.load_checkpoint(path)  # the whole one loads


def test_a_checkpoint_that_is_no_checkpoint_is_one_line_without_torchs_advice_to_run_its_code(small_text, tmp_path):
    """torch.load's weights-only refusal advised loading the file with weights_only=False (running its code), over
    several lines; artune never does. Its reason stays. For a class's object (a checkpoint another tool pickled
    with its arguments, say) torch words it otherwise, and that advice, numbered, was kept."""
    import argparse
    import os

    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    garbage, hostile, foreign = tmp_path / "garbage.pt", tmp_path / "hostile.pt", tmp_path / "foreign.pt"
    garbage.write_text("garbage\n")
    torch.save({"run": os.getcwd}, hostile)  # a pickle that would call a function
    torch.save({"args": argparse.Namespace(lr=0.1)}, foreign)  # an object of a class
    for path, reason in (
        (garbage, "Unsupported operand"),
        (hostile, "unsupported GLOBAL posix.getcwd"),
        (foreign, "GLOBAL argparse.Namespace was not an allowed global by default;"),
    ):
        with pytest.raises(CheckpointError) as refused:
            trainer.load_checkpoint(path)
        message = str(refused.value)
        assert (
            message.startswith(f"{path}: cannot load checkpoint (not a checkpoint artune wrote") and reason in message
        )
        assert "\n" not in message and "weights_only` set to `False`" not in message and "file an issue" not in message
        assert "add_safe_globals" not in message and "\x1b" not in message and "(2)" not in message, message


def test_a_plain_pickle_as_a_checkpoint_is_refused_without_torchs_protocol_warning(small_text, tmp_path, recwarn):
    """A pickle written by pickle.dump (protocol 4 or 5): torch warned of its protocol in two lines on stderr,
    above artune's one-line refusal."""
    import pickle

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"epoch": 1}, protocol=4))
    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    with pytest.raises(CheckpointError, match="not a checkpoint artune wrote"):
        trainer.load_checkpoint(plain)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)], [str(w.message) for w in recwarn]


def test_missing_checkpoint_raises_naming_the_file(small_text, tmp_path):
    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / CHECKPOINT_FILE}: checkpoint file not found")):
        trainer.load_checkpoint(tmp_path)


def test_checkpoint_from_another_vocabulary_is_refused(small_text, tmp_path):
    other_text = tmp_path / "other.txt"
    other_text.write_text("It is a cat, it sat.\n" * 200, encoding="utf-8")
    path = Trainer(tiny(other_text, batches_per_epoch=1)).save_checkpoint(tmp_path / "other")
    trainer = Trainer(tiny(small_text, batches_per_epoch=1))
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: checkpoint was trained with another vocabulary")):
        trainer.load_checkpoint(path)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())  # untouched


def test_checkpoint_of_another_model_shape_is_refused(small_text, tmp_path):
    path = Trainer(tiny(small_text, d_model=16)).save_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape(f"{path}: checkpoint was trained with d_model=16 (this run: d_model=32)")
    ):
        Trainer(tiny(small_text, d_model=32)).load_checkpoint(path)


def test_a_checkpoint_resumed_with_other_training_settings_is_refused_naming_them(small_text, tmp_path):
    """The optimizer's state would silently put back the checkpoint's lr and weight_decay."""
    path = Trainer(tiny(small_text, lr=3e-3)).save_checkpoint(tmp_path)
    trainer = Trainer(tiny(small_text, lr=1e-2, weight_decay=0.5))
    with pytest.raises(
        CheckpointError,
        match=re.escape("trained with lr=0.003, weight_decay=0.0 (this run: lr=0.01, weight_decay=0.5)"),
    ):
        trainer.load_checkpoint(path)
    # how long, where and how it trains may change
    Trainer(
        tiny(small_text, lr=3e-3, epochs=5, batches_per_epoch=3, sample_tokens=0, precision="fp32")
    ).load_checkpoint(path)


def test_a_checkpoint_of_the_other_position_encoding_is_refused(small_text, tmp_path):
    path = Trainer(tiny(small_text, position_encoding="rope")).save_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=re.escape("trained with position_encoding='rope' (this run: position_encoding='learned')"),
    ):
        Trainer(tiny(small_text)).load_checkpoint(path)
    resumed = Trainer(tiny(small_text, position_encoding="rope"))
    resumed.load_checkpoint(path)
    assert resumed.model.pos_emb is None


def test_a_checkpoint_of_another_activation_is_refused(small_text, tmp_path):
    path = Trainer(tiny(small_text, activation="swiglu")).save_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=re.escape("trained with activation='swiglu' (this run: activation='gelu')")
    ):
        Trainer(tiny(small_text)).load_checkpoint(path)
    # d_ff none, and given as the width none stood for: the same model
    Trainer(tiny(small_text, activation="swiglu", d_ff=tiny(small_text, activation="swiglu").ff_width)).load_checkpoint(
        path
    )


def test_a_checkpoint_without_a_knob_added_since_resumes_only_with_its_default(small_text, tmp_path):
    """A run saved before ``adam_beta2`` existed trained with the default; another value is refused, naming the
    beta2 that default was (none: the optimizer's own)."""
    trainer = Trainer(tiny(small_text, optimizer="adamw"))
    state = trainer.state_dict()
    del state["config"]["adam_beta2"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=re.escape("trained with adam_beta2=0.999 (this run: adam_beta2=0.95)")):
        Trainer(tiny(small_text, optimizer="adamw", adam_beta2=0.95)).load_checkpoint(tmp_path)
    Trainer(tiny(small_text, optimizer="adamw")).load_checkpoint(tmp_path)


@pytest.mark.parametrize("then, now", [(4, 2), (2, 4)])
def test_a_run_resumed_with_another_epoch_size_plans_its_decay_from_the_step_it_reached(
    small_text, tmp_path, then, now
):
    """2 epochs of ``then`` batches, resumed for 2 more of ``now``: the decay ends at the last step of
    epoch 4 (here at 0), not where 4 epochs of ``now`` batches would have, and a second resume at the
    new size keeps that plan."""
    decay = dict(optimizer="adamw", lr_schedule="linear", lr_min_ratio=0.0, epochs=4, sample_tokens=0)
    first = Trainer(tiny(small_text, batches_per_epoch=then, **decay))
    first.run_epoch()
    first.run_epoch()
    first.save_checkpoint(tmp_path / "a")
    resumed = Trainer(tiny(small_text, batches_per_epoch=now, **decay))
    resumed.load_checkpoint(tmp_path / "a")
    assert resumed.total_steps == 2 * then + 2 * now
    third = resumed.run_epoch()
    resumed.save_checkpoint(tmp_path / "b")
    again = Trainer(tiny(small_text, batches_per_epoch=now, **decay))
    again.load_checkpoint(tmp_path / "b")
    assert again.total_steps == 2 * then + 2 * now
    (fourth,) = again.fit()
    assert third["lr"] > 0 and fourth["lr"] == 0.0  # the metric is the lr of the epoch's last step


def test_a_checkpoint_resumes_whether_the_feed_forward_width_is_given_or_left_to_its_default(small_text, tmp_path):
    path = Trainer(tiny(small_text)).save_checkpoint(tmp_path / "default")  # d_ff none: 4 * 32
    Trainer(tiny(small_text, d_ff=128)).load_checkpoint(path)
    path = Trainer(tiny(small_text, d_ff=128)).save_checkpoint(tmp_path / "given")
    Trainer(tiny(small_text)).load_checkpoint(path)
    with pytest.raises(CheckpointError, match=re.escape("trained with d_ff=128 (this run: d_ff=64)")):
        Trainer(tiny(small_text, d_ff=64)).load_checkpoint(path)


def test_a_checkpoint_resumes_whether_adams_beta2_is_given_or_left_to_the_optimizers_own(small_text, tmp_path):
    path = Trainer(tiny(small_text)).save_checkpoint(tmp_path / "default")  # adam_beta2 none: adamw's 0.999
    Trainer(tiny(small_text, adam_beta2=0.999)).load_checkpoint(path)
    with pytest.raises(CheckpointError, match=re.escape("trained with adam_beta2=0.999 (this run: adam_beta2=0.98)")):
        Trainer(tiny(small_text, adam_beta2=0.98)).load_checkpoint(path)


def test_a_checkpoint_of_another_corpus_with_the_same_vocabulary_is_refused(small_text, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(small_text.read_text(encoding="utf-8")[::-1], encoding="utf-8")  # the same characters
    path = Trainer(tiny(other)).save_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="checkpoint was trained on another corpus"):
        Trainer(tiny(small_text)).load_checkpoint(path)


# --- optimizers and schedules


def test_noam_rises_during_warmup_then_decays(small_text):
    warmup, d_model, lr, steps = 4, 32, 2.0, 12
    trainer = Trainer(tiny(small_text, optimizer="noam", lr=lr, warmup=warmup, batches_per_epoch=steps))
    used = []  # the learning rate of each real optimizer step
    step = trainer.optimizer.step

    def recording_step():
        used.append(trainer.optimizer.lr)
        step()

    trainer.optimizer.step = recording_step
    (metrics,) = trainer.fit()
    assert len(used) == steps
    assert metrics["lr"] == used[-1]  # the metric is the lr the epoch's last step used
    peak = lr * d_model**-0.5 * warmup**-0.5
    assert max(used) == pytest.approx(peak)
    assert used.index(max(used)) == warmup - 1  # the warmup-th step
    assert all(a < b for a, b in zip(used[:warmup], used[1:warmup]))
    assert all(a > b for a, b in zip(used[warmup - 1 :], used[warmup:]))
    for step, value in enumerate(used, start=1):  # linear up to the peak, then step**-0.5
        expected = lr * d_model**-0.5 * (step * warmup**-1.5 if step <= warmup else step**-0.5)
        assert value == pytest.approx(expected), step
    assert trainer.optimizer.betas == (0.9, 0.98)


def test_linear_warmup_for_adam():
    f = lr_lambda(TrainConfig(warmup=4), 100)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_lambda(TrainConfig(), 100)(0) == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_warm_up_then_reach_the_floor_at_the_last_planned_step(schedule):
    config = TrainConfig(warmup=10, lr_schedule=schedule, lr_min_ratio=0.1)
    f = lr_lambda(config, 110)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == 1.0 and f(10) == 1.0
    values = [f(s) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert f(109) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # holds the floor beyond the plan
    middle = f(10 + 99 // 2)
    assert middle == pytest.approx(0.55, abs=0.01)  # both pass the midpoint half-way


def test_the_trainer_plans_the_decay_over_epochs_times_batches(shakespeare_path):
    config = TrainConfig(
        dataset=str(shakespeare_path),
        d_model=16,
        n_layers=1,
        n_heads=2,
        seq_len=16,
        batch_size=4,
        epochs=2,
        batches_per_epoch=5,
        lr=1e-2,
        lr_schedule="linear",
        lr_min_ratio=0.0,
        sample_tokens=0,
        device="cpu",
        is_save_models=False,
    )
    trainer = Trainer(config)
    assert trainer.total_steps == 10
    history = trainer.fit()
    # an epoch's lr is its last step's: steps 4 and 9 (0-based) of a decay over steps 0..9
    assert history[0]["lr"] == pytest.approx(1e-2 * (1 - 4 / 9))
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


class Clock:
    """Time a test controls, whatever this machine's speed: it stands still, or advances ``tick`` seconds
    at each look (a step of training is one look)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_pace_a_deadline_plans_by_includes_each_epochs_report(small_text):
    """A search's report writes and sends a checkpoint after every epoch: a pace without it fitted one epoch too
    many to the deadline, which then cut that epoch with its lr still high."""
    clock = Clock(tick=1.0)  # a step is one look: an epoch of 6 steps is about 7 s

    def report(metrics) -> None:
        clock.now += 10.0  # the checkpoint, as long as the epoch

    config = tiny(small_text, epochs=10, lr_schedule="linear", lr_min_ratio=0.0, warmup=0)
    trainer = Trainer(config, clock=clock)
    saved = []

    def report_and_save(metrics) -> None:
        saved.append(trainer.state_dict())  # inside the report, as a search's trial saves its checkpoint
        report(metrics)

    history = trainer.fit(report_and_save, deadline=100.0)
    assert trainer.report_seconds >= 10.0  # the report counted
    assert 0 < len(history) < 10 and history[-1]["lr"] == 0.0  # the decay ended with the last epoch reported
    # a trial resumed from a checkpoint plans by the report's time too (the report before the one it was saved in)
    resumed = Trainer(config, clock=clock)
    resumed.load_state_dict(saved[1])
    assert resumed.report_seconds >= 10.0


@pytest.mark.parametrize("deadline", [64.5, 72.0, 78.0, 85.5])
def test_a_trial_resumed_under_a_deadline_plans_as_the_run_never_stopped(small_text, tmp_path, deadline):
    """The checkpoint kept where the plan began, not where a deadline had ended it: the resumed trial planned anew
    from its whole epochs, lengthening the plan without the margin an uninterrupted run's waits for, its lr higher.
    The clock's pace: a slow first epoch, then fast ones."""

    def run(stop_after=None):
        clock = Clock(tick=1.0)
        config = tiny(small_text, epochs=12, batches_per_epoch=5, lr_schedule="cosine", sample_tokens=0)
        trainer, seen = Trainer(config, clock=clock), []

        def report(metrics) -> None:
            seen.append((metrics["epoch"], metrics["lr"], trainer.planned_epochs))
            clock.tick = 3.0 if trainer.epoch < 1 else 1.0
            if stop_after is not None and trainer.epoch == stop_after:
                trainer.save_checkpoint(tmp_path / "stopped")
                raise KeyboardInterrupt

        clock.tick = 3.0
        try:
            trainer.fit(report, deadline=deadline)
        except KeyboardInterrupt:  # the search's trial ends here: its process, and the clock's look that ends a report
            clock()
            trainer = Trainer(config, clock=clock)
            trainer.load_checkpoint(tmp_path / "stopped")
            trainer.fit(report, deadline=deadline)
        return seen

    assert run(stop_after=2) == run()


def test_a_decay_that_would_outlast_the_deadline_is_planned_to_end_there(small_text):
    trainer = Trainer(tiny(small_text, epochs=10, lr_schedule="linear", lr_min_ratio=0.0), clock=Clock())
    assert trainer.total_steps == 60
    trainer.fit_schedule_to(3.5, epoch_seconds=1.0)  # 3 whole epochs fit
    assert trainer.total_steps == 18 and trainer.optimizer.schedule(17) == 0.0
    trainer.fit_schedule_to(5.5, epoch_seconds=1.0)  # the pace was faster: 5 fit after all
    assert trainer.total_steps == 30
    trainer.fit_schedule_to(100, epoch_seconds=1.0)  # never past the planned epochs
    assert trainer.total_steps == 60
    trainer.fit_schedule_to(-5, epoch_seconds=1.0)  # past: the epoch about to run is the last
    assert trainer.total_steps == 6
    constant = Trainer(tiny(small_text, epochs=10, lr_schedule="constant"), clock=Clock())  # no end to move
    constant.fit_schedule_to(3.5, epoch_seconds=1.0)
    assert constant.total_steps == 60


def test_a_deadline_near_an_epochs_end_does_not_move_the_plan_back_and_forth(small_text):
    """Each epoch the pace jitters: where the deadline falls near the end of an epoch, the plan is
    shortened when the last epoch would not fit, and lengthened again only with a margin."""
    trainer = Trainer(tiny(small_text, epochs=10, lr_schedule="linear", lr_min_ratio=0.0), clock=Clock())
    trainer.fit_schedule_to(3.95, epoch_seconds=1.0)  # 3 epochs fit, not 4
    assert trainer.total_steps == 18
    trainer.fit_schedule_to(4.1, epoch_seconds=1.0)  # 4 would fit, barely: kept at 3
    assert trainer.total_steps == 18
    trainer.fit_schedule_to(3.9, epoch_seconds=1.0)
    assert trainer.total_steps == 18
    trainer.fit_schedule_to(4.5, epoch_seconds=1.0)  # 4 fit with a quarter epoch to spare
    assert trainer.total_steps == 24
    trainer.fit_schedule_to(3.99, epoch_seconds=1.0)  # the fourth no longer fits: shortened at once
    assert trainer.total_steps == 18


def test_a_trial_cut_by_its_deadline_ends_with_its_lr_decayed(small_text):
    """Planned for 1,000 epochs with time for a few: the cosine decay reaches its floor in the last one."""
    clock = Clock(tick=0.1)  # an epoch of 6 steps: 0.7 s of pace, 0.9 s with the looks before it
    trainer = Trainer(
        tiny(small_text, epochs=1000, lr_schedule="cosine", lr_min_ratio=0.1, sample_tokens=0), clock=clock
    )
    history = trainer.fit(deadline=8.0)
    lrs = [m["lr"] for m in history]
    assert clock.now >= 8.0 and 5 <= len(history) < 1000  # the deadline ended it
    assert lrs[0] > 0.9 * 3e-3
    assert lrs[-1] == pytest.approx(0.1 * 3e-3)  # without the deadline's plan: still 0.99 of lr


def test_a_resumed_trial_fits_its_first_epoch_to_the_deadline_at_the_pace_its_checkpoint_kept(small_text, tmp_path):
    config = tiny(small_text, epochs=10, lr_schedule="linear", lr_min_ratio=0.0, sample_tokens=0)
    first = Trainer(config, clock=Clock(tick=0.1))
    first.run_epoch(deadline=math.inf)  # under a deadline each step looks at the clock
    assert first.epoch_seconds == pytest.approx(0.7)  # the epoch's 6 steps and its end, at a tenth of a second each
    path = first.save_checkpoint(tmp_path)
    resumed = Trainer(config, clock=Clock(tick=0.1))  # a new process, with its own clock
    resumed.load_checkpoint(path)
    assert resumed.epoch_seconds == first.epoch_seconds
    plans = []  # the schedule's planned steps as each epoch ends: 10 epochs of 6 steps unless fitted
    resumed.fit(lambda metrics: plans.append(resumed.total_steps), deadline=3.5 * 0.7)
    assert plans[0] == 24  # fitted before its first epoch, at the pace the checkpoint kept: 3 more epochs


def test_noam_refuses_a_second_schedule():
    with pytest.raises(ConfigError, match="lr_schedule must be 'constant'"):
        TrainConfig(optimizer="noam", warmup=10, lr_schedule="cosine")


@pytest.mark.parametrize(
    ("optimizer", "lr", "kind"),
    [
        ("adam", 1e-2, torch.optim.Adam),
        ("adamw", 1e-2, torch.optim.AdamW),
        ("noam", 2.0, torch.optim.Adam),
        ("muon", 1e-2, torch.optim.AdamW),  # and Muon on the blocks' matrices
    ],
)
def test_every_optimizer_trains(small_text, optimizer, lr, kind):
    config = tiny(small_text, optimizer=optimizer, lr=lr, warmup=5, batches_per_epoch=30, weight_decay=0.01)
    trainer = Trainer(config)
    # adamw: decoupled weight decay; adam and noam: L2, as the origin; all fused
    assert type(trainer.optimizer.optimizer) is kind and trainer.optimizer.optimizer.defaults["fused"]
    assert (type(getattr(trainer.optimizer, "muon", None)) is torch.optim.Muon) == (optimizer == "muon")
    before, _ = trainer.validate()
    (metrics,) = trainer.fit()
    assert metrics["valid_loss"] < before - 0.5, (before, metrics["valid_loss"])


# --- divergence


def test_divergence_raises_and_calls_back_nothing(small_text):
    config = tiny(small_text, lr=1e6, grad_norm_clip=1e9, batches_per_epoch=40)
    trainer = Trainer(config)
    seen = []
    with pytest.raises(DivergedError, match=r"training loss became nan in epoch 1 \(lr=1000000.0\)"):
        trainer.fit(callback=seen.append)
    assert seen == [] and trainer.epoch == 0


def test_weights_broken_by_an_epochs_last_step_are_a_divergence_before_the_epoch_is_reported(small_text):
    """The training loss of the step that broke them was finite: the validation's is not."""
    trainer = Trainer(tiny(small_text, lr=1e30, grad_norm_clip=1e9, batches_per_epoch=1))
    seen = []
    with pytest.raises(DivergedError, match=r"^validation loss became nan after epoch 1 \(lr=1e\+30\)"):
        trainer.fit(callback=seen.append)
    assert seen == [] and trainer.epoch == 0


# --- validation and seeds


def test_validation_is_deterministic_and_ignores_the_train_loader(small_text):
    shuffled = Trainer(tiny(small_text, train_loader="shuffled", dropout=0.3))
    shuffled.fit()
    first = shuffled.validate()
    assert shuffled.validate() == first
    sequential = Trainer(tiny(small_text, train_loader="sequential", dropout=0.3))
    sequential.model.load_state_dict(shuffled.model.state_dict())
    assert sequential.validate() == first
    # ...and it does depend on the weights
    sequential.fit()
    assert sequential.validate() != first


def test_same_seed_same_run_different_seed_different_run(small_text):
    keys = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "sample")
    config = tiny(small_text, dropout=0.1, seed=3)
    a = Trainer(config).fit()[0]
    b = Trainer(config).fit()[0]
    c = Trainer(dataclasses.replace(config, seed=4)).fit()[0]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert a["train_loss"] != c["train_loss"] and a["valid_loss"] != c["valid_loss"]


# --- optional diagnostics


def test_log_flags_add_their_statistics(small_text):
    config = tiny(small_text, n_layers=2, is_log_model_params_grads=True, is_log_model_activations=True)
    trainer = Trainer(config)
    (metrics,) = trainer.fit()
    names = [n for n, _ in trainer.model.named_parameters()]
    expected = (
        {f"param_norm/{n}" for n in names}
        | {f"grad_norm/{n}" for n in names}
        | {"grad_norm/total"}
        | {f"activation_{s}/blocks.{i}" for s in ("mean", "std") for i in range(2)}
    )
    assert set(metrics) == METRIC_KEYS | expected
    assert all(math.isfinite(metrics[k]) for k in expected)
    assert metrics["grad_norm/tok_emb.weight"] > 0
    # the flags off: none of these keys
    (plain,) = Trainer(tiny(small_text)).fit()
    assert set(plain) == METRIC_KEYS


def test_gradient_statistics_are_taken_before_clipping(small_text):
    """What clipping compared with grad_norm_clip; after it, no norm could ever exceed the clip."""
    (metrics,) = Trainer(tiny(small_text, grad_norm_clip=1e-3, is_log_model_params_grads=True)).fit()
    per_parameter = [v for k, v in metrics.items() if k.startswith("grad_norm/") and k != "grad_norm/total"]
    assert metrics["grad_norm/total"] > 100 * 1e-3
    assert math.sqrt(sum(v * v for v in per_parameter)) == pytest.approx(metrics["grad_norm/total"], rel=1e-4)


def test_activation_hooks_are_removed_after_validation(small_text):
    trainer = Trainer(tiny(small_text, is_log_model_activations=True))
    trainer.fit()
    assert all(not block._forward_hooks for block in trainer.model.blocks)


# --- prompt


def test_prompt_with_an_unknown_token_is_refused_naming_it_and_the_corpus(small_text):
    with pytest.raises(UnknownTokenError, match=r"^prompt 'It is €' .*1 token\(s\) not in the vocabulary .*: '€'") as e:
        Trainer(tiny(small_text, prompt="It is €"))
    assert f"built from the corpus {small_text}: " in str(e.value)


def test_basic_english_sample_joins_words_with_spaces(small_text):
    config = tiny(small_text, tokenizer="basic_english", prompt="it is", sample_tokens=3)
    (metrics,) = Trainer(config).fit()
    words = metrics["sample"].split(" ")
    assert words[:2] == ["it", "is"] and len(words) == 5


def test_prompt_without_tokens_is_refused_before_training(small_text):
    with pytest.raises(ValueError, match="prompt"):
        Trainer(tiny(small_text, prompt=""))


def test_a_torch_file_that_is_not_a_checkpoint_raises_checkpoint_error(small_text, tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Trainer(tiny(small_text, batches_per_epoch=1)).load_checkpoint(path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda(small_text, tmp_path):
    config = tiny(small_text, epochs=2, device="cuda")
    first = Trainer(dataclasses.replace(config, epochs=1))
    first.fit()
    resumed = Trainer(config)
    resumed.load_checkpoint(first.save_checkpoint(tmp_path))
    assert resumed.epoch == 1 and len(resumed.fit()) == 1


# --- the command line, as a real subprocess


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "artune.train", "--threads", "1", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("knob", [("--d_model", str(10**12)), ("--n_layers", str(10**8))])
def test_cli_a_model_too_large_for_memory_is_one_line_and_exit_1(shakespeare_path, knob):
    """--d_model 10**12 (an embedding of 260 TB) was torch's allocator's 19-line traceback (a review); --n_layers
    10**8 allocated its layers one by one until the kernel's OOM killer ended the run. Both are refused before the
    model is built."""
    result = _cli(*knob, "--epochs", "1", "--data", str(shakespeare_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the model (d_model=") and "GiB to train with adam" in line, line
    assert line.endswith("GiB of this machine; a smaller d_model, d_ff or n_layers may fit"), line


def test_cli_trains_and_prints_each_epoch(shakespeare_path, tmp_path):
    result = _cli(
        "--d_model",
        "32",
        "--n_layers",
        "1",
        "--n_heads",
        "2",
        "--seq_len",
        "16",
        "--batch_size",
        "4",
        "--epochs",
        "1",
        "--batches_per_epoch",
        "5",
        "--sample_tokens",
        "5",
        "--device",
        "cpu",
        "--data",
        str(shakespeare_path.parent),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("epoch   1  train_loss ") and "valid_loss" in line for line in lines), result.stdout
    assert "vocabulary 65" in result.stdout
    state = torch.load(tmp_path / "ckpt" / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 1


def test_cli_bad_value_is_one_error_line_and_exit_2():
    result = _cli("--lr", "-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "lr=-1.0" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_corpus_too_small_for_seq_len_exits_2(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("abcdefghij" * 10, encoding="utf-8")  # 90 train, 10 valid characters
    result = _cli("--dataset", str(small), "--seq_len", "32", "--batch_size", "2", "--d_model", "32", "--n_heads", "2")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: the valid split of ") and "seq_len + 1 = 33" in lines[0]


@pytest.mark.parametrize("threads", ["0", "-1", "1025", "100000", "99999999999"])
def test_cli_threads_outside_1_to_1024_is_one_error_line_and_exit_2(threads):
    """100,000 threads crashed torch (SIGSEGV), and 99999999999 was a traceback."""
    result = _cli("--threads", threads)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --threads must be from 1 to 1024, but got {threads}"], lines


def test_cli_more_threads_than_cpus_trains_and_says_it_is_slower(small_text):
    """A trial of a bigger node replays bit for bit with its thread count: warned of, not refused."""
    usable = len(os.sched_getaffinity(0))
    result = _cli("--threads", str(usable + 1), "--dataset", str(small_text), *TINY_CLI)
    assert result.returncode == 0, result.stderr
    assert f"warning: --threads {usable + 1} is more than the {usable} CPUs this process may use" in result.stderr


def test_cli_an_empty_checkpoint_dir_is_refused_not_taken_for_none():
    """--checkpoint-dir '' trained, exited 0 and wrote no checkpoint."""
    result = _cli("--checkpoint-dir", "")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --checkpoint-dir must name a directory, but got an empty string"
    ], result.stderr


TINY_CLI = [
    "--d_model",
    "32",
    "--n_layers",
    "1",
    "--n_heads",
    "2",
    "--seq_len",
    "16",
    "--batch_size",
    "4",
    "--epochs",
    "1",
    "--batches_per_epoch",
    "2",
    "--sample_tokens",
    "0",
    "--device",
    "cpu",
]


@pytest.mark.parametrize("where", ["file", "below-a-file"])
def test_cli_checkpoint_dir_that_is_a_file_is_refused_before_training(small_text, tmp_path, capsys, where):
    """Found only when the first epoch's checkpoint was written: the epoch's training was lost."""
    file = tmp_path / "notes.txt"
    file.write_text("keep me", encoding="utf-8")
    checkpoint_dir = file if where == "file" else file / "ckpt"
    code = main(["--dataset", str(small_text), "--checkpoint-dir", str(checkpoint_dir), *TINY_CLI])
    assert code == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"error: --checkpoint-dir {checkpoint_dir}: {file} is a file, not a directory; choose another --checkpoint-dir"
    ]
    assert "epoch" not in out and file.read_text(encoding="utf-8") == "keep me"


def test_cli_resume_takes_its_settings_from_the_checkpoint_and_says_when_nothing_is_left(small_text, tmp_path, capsys):
    checkpoint_dir = str(tmp_path / "ckpt")
    assert main(["--dataset", str(small_text), "--checkpoint-dir", checkpoint_dir, *TINY_CLI]) == 0
    capsys.readouterr()
    # no setting given again: the checkpoint's (d_model 32, its corpus, ...) continue
    assert main(["--checkpoint-dir", checkpoint_dir, "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "nothing left to train: the checkpoint finished epoch 1 of epochs=1" in out and "--epochs" in out, out
    assert "epoch   2" not in out and not err
    assert main(["--checkpoint-dir", checkpoint_dir, "--resume", "--epochs", "2"]) == 0  # a change given: epochs
    out, _ = capsys.readouterr()
    assert "epoch   2  train_loss" in out
    state = torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["config"]["d_model"] == 32 and state["config"]["epochs"] == 2


def test_cli_time_budget_passes_its_deadline_to_the_trainer(small_text, capsys):
    """The Trainer's own deadline tests run on a clock they control; here the command line's part: a budget far
    off trains every epoch, one over before the first step trains none (exit 1), a bad one is refused."""
    assert main(["--dataset", str(small_text), "--time-budget", "1h", *TINY_CLI, "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    assert "epoch   2  train_loss" in out and "reached" not in out and not err
    assert main(["--dataset", str(small_text), "--time-budget", "1e-9", *TINY_CLI]) == 1  # over as it starts
    out, err = capsys.readouterr()
    assert "epoch   1" not in out
    assert err.strip().splitlines() == ["error: --time-budget 1e-9 ended before the first epoch: no model"]
    assert main(["--dataset", str(small_text), "--time-budget", "soon", *TINY_CLI]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        "error: --time-budget must be a positive duration such as 900, 90s, 15m or 1.5h, but got 'soon'"
    ]


def test_cli_resume_without_a_checkpoint_is_one_error_line(tmp_path, capsys):
    assert main(["--checkpoint-dir", str(tmp_path / "none"), "--resume"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "checkpoint file not found" in line


def test_cli_from_a_search_trains_its_best_trial_again(smoke_search, shakespeare_path):
    """The trial's knobs come from the search: with the same epochs, it trains the search's epochs again."""
    result, directory = smoke_search
    assert result.returncode == 0, result.stderr
    from artune.results import load

    results = load(directory)
    best = results.trial()
    again = _cli("--from", str(directory), "--data", str(shakespeare_path))
    assert again.returncode == 0, again.stderr
    assert f"the configuration of trial {best['trial_id']} of search smoke; changed here: nothing" in again.stdout
    trained = [float(v) for v in re.findall(r"valid_loss (\S+)", again.stdout)]
    searched = results.epochs[results.epochs["trial_id"] == best["trial_id"]].sort_values("epoch")["valid_loss"]
    assert trained == pytest.approx(searched.round(4).tolist(), abs=1e-4)
    longer = _cli("--from", str(directory), "--epochs", "1", "--d_model", "32", "--data", str(shakespeare_path))
    assert longer.returncode == 0, longer.stderr
    assert "changed here: d_model=32, epochs=1" in longer.stdout and "epoch   2" not in longer.stdout
    other = directory.parent / "other.txt"  # another corpus is a change too
    other.write_text(shakespeare_path.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    elsewhere = _cli("--from", str(directory), "--epochs", "1", "--data", str(other))
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert f"changed here: epochs=1, dataset={other.absolute()}" in elsewhere.stdout, elsewhere.stdout


def test_cli_trial_without_from_and_from_with_resume_are_one_error_line(tmp_path):
    for args, words in [
        (["--trial", "abc"], "--trial abc needs --from SEARCH"),
        (["--results-dir", "elsewhere"], "--results-dir elsewhere needs --from SEARCH"),  # was ignored (a review)
        (["--from", "x", "--resume", "--checkpoint-dir", str(tmp_path)], "give one"),
        (["--from", str(tmp_path / "nosuch")], "--from "),
    ]:
        result = _cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and words in line, line


def test_cli_checkpoint_dir_where_nothing_can_be_written_is_one_error_line(small_text, capsys):
    """/proc: refused before training where permissions say so; as root (who passes every permission
    check), the directory, made before training, cannot be: one line too, not a traceback (nor an epoch first)."""
    checkpoint_dir = "/proc/artune-checkpoints"
    code = main(["--dataset", str(small_text), "--checkpoint-dir", checkpoint_dir, *TINY_CLI])
    _, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --checkpoint-dir {checkpoint_dir}: ")
    if os.access("/proc", os.W_OK):  # root: the directory, made before training, cannot be (it failed after epoch 1)
        assert code == 2 and "/proc/artune-checkpoints: cannot make it (" in line, (code, line)
    else:  # a bad input, refused before training
        assert code == 2 and "/proc is not writable" in line, (code, line)


def test_cli_a_checkpoint_the_disk_cannot_take_is_one_line_exit_4_naming_the_os_error(small_text, tmp_path):
    """A file-size limit stands for a full disk: torch's writer reported it as a RuntimeError and a traceback."""
    import resource
    import signal

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    command = [sys.executable, "-m", "artune.train", "--threads", "1", "--dataset", str(small_text), *TINY_CLI]
    result = subprocess.run(
        [*command, "--checkpoint-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
    )
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line == f"error: --checkpoint-dir {tmp_path}: cannot write the checkpoint of epoch 1 (File too large)"
    assert list(tmp_path.iterdir()) == []  # nor a partial file


def test_cli_a_run_that_diverges_is_one_line_and_exit_1_as_a_search_whose_trials_all_diverged(small_text, capsys):
    assert (
        main(
            [
                "--dataset",
                str(small_text),
                *TINY_CLI,
                "--lr",
                "1e6",
                "--grad_norm_clip",
                "1e9",
                "--batches_per_epoch",
                "40",
            ]
        )
        == 1
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: training loss became ") and "lr=1000000.0" in line, line


def test_cli_refuses_to_overwrite_a_checkpoint_without_resume_and_continues_it_with_resume(
    small_text, tmp_path, capsys
):
    args = ["--dataset", str(small_text), "--checkpoint-dir", str(tmp_path), *TINY_CLI]
    assert main(args) == 0
    first = (tmp_path / CHECKPOINT_FILE).read_bytes()
    capsys.readouterr()

    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"error: --checkpoint-dir {tmp_path} holds a checkpoint ({CHECKPOINT_FILE}); use --resume to continue it, "
        "or choose another --checkpoint-dir"
    ]
    assert "epoch" not in out and (tmp_path / CHECKPOINT_FILE).read_bytes() == first

    assert main([*args, "--resume", "--epochs", "2"]) == 0
    out, _ = capsys.readouterr()
    assert f"resumed from {tmp_path} after epoch 1" in out and "epoch   2  train_loss" in out
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["epoch"] == 2


def test_cli_a_checkpoint_dir_another_run_trains_into_is_refused(small_text, tmp_path, capsys):
    """Two runs started into one --checkpoint-dir each ended with exit 0, and it held one's model (a review): the
    directory is locked for its run, and the lock goes with the run (this process's own next run takes it)."""
    import signal
    import time

    directory = tmp_path / "ckpt"
    first = subprocess.Popen(
        [sys.executable, "-m", "artune.train", "--threads", "1", "--dataset", str(small_text)]
        + ["--checkpoint-dir", str(directory), "--epochs", "100000", "--d_model", "16", "--n_layers", "1"]
        + ["--n_heads", "2", "--batches_per_epoch", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        waited = time.monotonic()
        while not (directory / CHECKPOINT_FILE).exists():  # its first epoch's: the run holds the directory
            assert first.poll() is None and time.monotonic() - waited < 300, first.stderr.read()
            time.sleep(0.1)
        assert main(["--dataset", str(small_text), "--checkpoint-dir", str(directory), "--resume"]) == 2
        assert capsys.readouterr().err == (
            f"error: --checkpoint-dir {directory}: another run is training into it; wait for it to end, or choose "
            "another --checkpoint-dir\n"
        )
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(120) == 130
    trained = torch.load(directory / CHECKPOINT_FILE, weights_only=True)["epoch"]
    again = ["--dataset", str(small_text), "--checkpoint-dir", str(directory), "--resume", "--epochs"]
    assert main([*again, str(trained + 1)]) == 0
    assert main([*again, str(trained + 2)]) == 0  # its own lock went with its run
    assert torch.load(directory / CHECKPOINT_FILE, weights_only=True)["epoch"] == trained + 2
    # a run refused for its corpus makes no directory (it is made, and locked, once every input has been read)
    assert main(["--dataset", str(tmp_path / "missing.txt"), "--checkpoint-dir", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("option", ["--data", "--data-dir"])
def test_cli_data_names_the_corpus_as_in_the_search_command(small_text, capsys, option):
    """--data is the search command's option; --data-dir, the trainer's older name, still works."""
    assert main([option, str(small_text), *TINY_CLI]) == 0
    out = capsys.readouterr().out
    assert "epoch   1  train_loss" in out
    assert "18,000 train / 2,000 valid tokens" in out  # small_text, not the default corpus's 1,003,854 train tokens


def test_cli_resume_of_a_checkpoint_whose_settings_this_artune_does_not_know_names_the_file(
    small_text, tmp_path, capsys
):
    assert main(["--dataset", str(small_text), "--checkpoint-dir", str(tmp_path), *TINY_CLI]) == 0
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    state["config"]["lr_warmup_shape"] = "exponential"  # a knob of a newer artune
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    capsys.readouterr()
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: {tmp_path / CHECKPOINT_FILE}: its settings hold 'lr_warmup_shape', which this artune does not "
        "know; resume it with the artune that wrote it, or start afresh"
    )


def test_cli_resume_of_a_checkpoint_whose_settings_break_a_rule_or_that_is_empty_names_the_file(
    small_text, tmp_path, capsys
):
    """A damaged checkpoint's settings blamed no file ("error: d_model must be an integer"), as if a flag had been
    wrong; an empty checkpoint said "EOFError: " and nothing more."""
    assert main(["--dataset", str(small_text), "--checkpoint-dir", str(tmp_path), *TINY_CLI]) == 0
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    state["config"]["d_model"] = "x"
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    capsys.readouterr()
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / CHECKPOINT_FILE}: its settings do not load (d_model must be"), line
    state["config"]["d_model"], state["config"]["precision"] = 32, "fp16"  # a flag sets this one right
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2", "--precision", "fp32"]) == 0
    capsys.readouterr()
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"")
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line
        == f"error: {tmp_path / CHECKPOINT_FILE}: cannot load checkpoint (an empty file: a copy or a write cut short?)"
    )


def test_cli_dataset_file_is_recorded_absolute_and_resumes_from_another_directory(
    small_text, tmp_path, capsys, monkeypatch
):
    """--dataset small.txt, relative: the checkpoint kept it so, and --resume from another directory read another
    (or no) file."""
    monkeypatch.chdir(small_text.parent)
    assert main(["--dataset", small_text.name, "--checkpoint-dir", str(tmp_path), *TINY_CLI]) == 0
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["config"]["dataset"] == str(small_text)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2"]) == 0
    assert "epoch   2  train_loss" in capsys.readouterr().out


def test_cli_default_dataset_is_not_a_file_of_its_name_in_the_working_directory(
    shakespeare_path, tmp_path, capsys, monkeypatch
):
    (tmp_path / "tiny_shakespeare").write_text("a file named as the default dataset: not the corpus")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARTUNE_DATA_DIR", str(shakespeare_path.parent))
    assert main(["--checkpoint-dir", str(tmp_path / "ck"), *TINY_CLI]) == 0
    assert torch.load(tmp_path / "ck" / CHECKPOINT_FILE, weights_only=True)["config"]["dataset"] == "tiny_shakespeare"


def test_cli_data_file_is_the_dataset_its_checkpoint_records(small_text, tmp_path, capsys):
    """As in a search's trials: the checkpoint names the file trained on, not Tiny Shakespeare."""
    assert main(["--data", str(small_text), "--checkpoint-dir", str(tmp_path), *TINY_CLI]) == 0
    assert torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)["config"]["dataset"] == str(small_text.absolute())
    capsys.readouterr()
    # resumed without --data, the run reads the file its checkpoint names
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2"]) == 0
    assert "epoch   2  train_loss" in capsys.readouterr().out


def test_cli_data_that_another_dataset_would_leave_unread_is_refused_naming_both(small_text, tmp_path, capsys):
    assert main(["--data", str(small_text), "--dataset", str(small_text), *TINY_CLI]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"error: --data {small_text} and --dataset {small_text} both name the corpus: give one"
    assert main(["--data", str(small_text), "--dataset", "tiny_shakespeare", *TINY_CLI]) == 2  # a file: one read
    assert "both name the corpus" in capsys.readouterr().err

    assert main(["--data", str(small_text), "--checkpoint-dir", str(tmp_path), *TINY_CLI]) == 0
    capsys.readouterr()
    directory = str(small_text.parent)  # a directory: Tiny Shakespeare's, where the checkpoint trained on a file
    assert main(["--checkpoint-dir", str(tmp_path), "--resume", "--epochs", "2", "--data", directory]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"error: --data {directory} is not a file, and the checkpoint in {tmp_path} trained on the file "
        f"{small_text.absolute()}: give that file (or a copy of it) with --data, or leave --data out"
    ]
    assert "epoch" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_error_line(small_text, capsys):
    code = main(
        ["--dataset", str(small_text), "--device", "cuda", "--d_model", "32", "--n_heads", "2", "--seq_len", "16"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cuda" in err[0]


# --- precision


def test_explicit_precisions_are_kept_on_every_device():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16


def test_auto_precision_on_this_cpu_follows_its_bf16_hardware_and_the_probe():
    speedup = cpu_bf16_speedup(128)
    assert math.isfinite(speedup) and speedup > 0
    chosen = resolve_precision("auto", torch.device("cpu"), 128)
    if not cpu_has_native_bf16():  # e.g. an AVX2-only CPU: bf16 matmuls take oneDNN's slow path
        assert chosen == torch.float32
    else:
        assert chosen == (torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32)


@pytest.mark.parametrize(
    ("native", "speedup", "expected"),
    [
        (True, 2.3, torch.bfloat16),  # a Zen 4 with AVX512_BF16: bf16 matmuls ~2.3x fp32
        (True, 1.1, torch.float32),  # native, but not faster enough to pay for the casts
        (False, 2.3, torch.float32),  # never without native bf16
    ],
)
def test_auto_precision_picks_bf16_on_a_cpu_only_where_it_is_measured_faster(monkeypatch, native, speedup, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", lambda d_model: speedup)
    assert resolve_precision("auto", torch.device("cpu"), 256) == expected


def test_the_bf16_probe_measures_one_thread_and_leaves_the_processs_threads_as_they_were(monkeypatch):
    """On several threads, other processes' load split the probe's matmuls unevenly: auto chose bf16 or fp32 at
    random from one process to the next on a busy machine whose bf16 matmuls are several times faster."""
    threads_seen = []

    def rate(m, k, n, dtype=torch.float32, seconds=0.2):
        threads_seen.append(torch.get_num_threads())
        return 2.0 if dtype == torch.bfloat16 else 1.0

    monkeypatch.setattr(device_module, "matmul_rate", rate)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert device_module.cpu_bf16_speedup.__wrapped__(64) == 2.0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert threads_seen and set(threads_seen) == {1}


def test_a_resume_under_precision_auto_goes_on_in_the_precision_its_checkpoint_trained_in(
    small_text, tmp_path, monkeypatch
):
    """Another process's probe may choose otherwise (a trial's retry, train --resume): the run went on in fp32
    after two epochs in bf16, and not as it would have."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", lambda d_model: 5.0)  # this process: bf16 pays
    config = tiny(small_text, precision="auto", epochs=3, batches_per_epoch=6)
    straight = Trainer(config).fit()
    assert [m["precision_used"] for m in straight] == ["bf16"] * 3
    first = Trainer(dataclasses.replace(config, epochs=2))
    first.fit()
    path = first.save_checkpoint(tmp_path)
    monkeypatch.setattr(device_module, "cpu_bf16_speedup", lambda d_model: 1.0)  # the next: it does not
    resumed = Trainer(config)
    assert resumed.autocast_dtype == torch.float32
    resumed.load_checkpoint(path)
    (third,) = resumed.fit()
    assert third["precision_used"] == "bf16"
    for key in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy"):
        assert third[key] == pytest.approx(straight[2][key], abs=1e-6, rel=0), key
    # where the run's precision is set, or this machine has no fast bf16, the resume takes its own
    assert Trainer(dataclasses.replace(config, precision="fp32")).autocast_dtype == torch.float32
    explicit = Trainer(dataclasses.replace(config, precision="fp32"))
    explicit.load_checkpoint(path)
    assert explicit.autocast_dtype == torch.float32
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    elsewhere = Trainer(config)
    elsewhere.load_checkpoint(path)
    assert elsewhere.autocast_dtype == torch.float32


@pytest.mark.parametrize(("precision", "used"), [("fp32", "fp32"), ("bf16", "bf16")])
def test_each_epoch_says_the_precision_it_trained_in(small_text, precision, used):
    metrics = Trainer(tiny(small_text, precision=precision, epochs=1)).run_epoch()
    assert metrics["precision_used"] == used


def test_auto_precisions_epochs_say_what_it_resolved_to_here(small_text):
    trainer = Trainer(tiny(small_text, precision="auto", epochs=1))
    expected = {torch.float32: "fp32", torch.bfloat16: "bf16"}[resolve_precision("auto", torch.device("cpu"), 32)]
    assert trainer.run_epoch()["precision_used"] == expected
