"""The torch section of artune/compat.py: each site gives torch's answer, and its fallback where the internal
has moved."""

from pathlib import Path

import pytest
import torch

from artune.compat import cpu_has_native_bf16

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="reads the CPU's flags from /proc/cpuinfo")
def test_native_bf16_is_what_the_cpu_flags_say():
    flags = set(next(line for line in CPUINFO.read_text().splitlines() if line.startswith("flags")).split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})


def test_native_bf16_falls_back_to_false_where_torchs_internals_have_moved(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert cpu_has_native_bf16() is False
