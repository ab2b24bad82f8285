"""The memory check before a model is built (artune/train/device.py): what a model's training holds, the memory a
process may use (its cgroup's limit included), and the refusal's line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from artune.errors import ModelTooLarge
from artune.models import GPT, ModelConfig
from artune.optim import muon_matrices
from artune.train import device as device_module
from artune.train.device import cgroup_memory_limit, device_memory, fitting, training_bytes

MODEL = ModelConfig(vocab_size=65, seq_len=32, d_model=64, n_layers=2, n_heads=4, d_ff=256)


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "noam", "muon"])
def test_training_bytes_count_weights_gradients_the_optimizers_moments_and_ropes_tables(optimizer, positions):
    model = ModelConfig(**{**MODEL.__dict__, "position_encoding": positions})
    gpt = GPT(model)
    matrices, others = muon_matrices(gpt)
    moments = (
        sum(p.numel() for p in matrices) + 2 * sum(p.numel() for p in others)
        if optimizer == "muon"
        else 2 * gpt.num_parameters()
    )
    tables = sum(b.numel() for name, b in gpt.named_buffers() if "rope" in name)
    assert training_bytes(model, optimizer) == 4 * (2 * gpt.num_parameters() + moments + tables)


def test_a_model_is_refused_where_its_training_takes_more_than_the_memory_and_kept_where_it_fits(monkeypatch):
    need = training_bytes(MODEL, "adamw")
    monkeypatch.setattr(device_module, "device_memory", lambda device: (need, "of this machine"))
    assert fitting(MODEL, "adamw", torch.device("cpu")) is MODEL
    monkeypatch.setattr(device_module, "device_memory", lambda device: (need - 1, "its cgroup allows"))
    with pytest.raises(ModelTooLarge) as refused:
        fitting(MODEL, "adamw", torch.device("cpu"))
    assert str(refused.value) == (
        f"the model (d_model=64, n_layers=2, d_ff=256, vocab_size=65, seq_len=32) has {GPT(MODEL).num_parameters():,} "
        f"parameters: {need / 2**30:,.1f} GiB to train with adamw (weights, gradients, its state), more than the "
        f"{(need - 1) / 2**30:,.1f} GiB its cgroup allows; a smaller d_model, d_ff or n_layers may fit"
    )
    assert isinstance(refused.value, MemoryError)  # what a caller catching out-of-memory catches
    monkeypatch.setattr(device_module, "device_memory", lambda device: None)  # not known: not checked
    assert fitting(MODEL, "adamw", torch.device("meta")) is MODEL


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cgroup_limit_is_the_least_of_the_process_cgroup_and_those_above_it(tmp_path):
    own, root = tmp_path / "cgroup", tmp_path / "sys"
    # cgroup v2: the job's cgroup unlimited, the slice above it at 8 GiB, the root without the file
    write(own, "0::/slice/job\n")
    write(root / "slice" / "job" / "memory.max", "max\n")
    write(root / "slice" / "memory.max", f"{8 * 2**30}\n")
    assert cgroup_memory_limit(own, root) == 8 * 2**30
    # cgroup v1's memory controller, among others; its "unlimited" is a huge number
    write(own, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{2**30}\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_limit(own, root) == 2**30
    # a namespace's view: its own cgroup is the mount's root
    write(own, "0::/\n")
    write(root / "memory.max", "max\n")
    assert cgroup_memory_limit(own, root) is None
    assert cgroup_memory_limit(tmp_path / "none", root) is None


def test_the_memory_of_a_cpu_is_the_machines_or_its_cgroups_where_that_is_less(monkeypatch):
    total, what = device_memory(torch.device("cpu"))
    assert total > 0 and what in ("of this machine", "its cgroup allows")
    monkeypatch.setattr(device_module, "cgroup_memory_limit", lambda: 2**30)
    assert device_memory(torch.device("cpu")) == (2**30, "its cgroup allows")
    assert device_memory(torch.device("meta")) is None
