"""bench/gpu_check.py stays runnable: its dry run on the CPU (the real run needs a CUDA machine)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_on_cpu(shakespeare_path, tmp_path):
    report = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--small",
            "--batch-sizes",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--json",
            str(report),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard: two compilations on a slow machine's one core
        env={**os.environ, "ARTUNE_DATA_DIR": str(shakespeare_path.parent)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    variants = json.loads(report.read_text())["variants"]
    assert set(variants) == {
        f"{label}, {encoding}, batch 2"
        for label in ("fp32 (tf32)", "bf16 autocast", "bf16 + compile")
        for encoding in ("rope", "learned")
    }
    for r in variants.values():
        assert "error" not in r and r["tokens_per_sec"] > 0 and r["steps"] >= 2
    assert "| variant | positions | batch | tokens/s | ms/step | MFU |" in result.stdout
