"""The benchmarks/ops scripts run end to end (EFFILAB_BENCH_SMOKE=1: tiny shapes, CPU interpreter).

Checks the scripts and run_all.sh, not the speed: the real runs need the GPU machine.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPS = ["rmsnorm", "swiglu", "cross_entropy", "flash_attention", "cuda_rmsnorm"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke run is for machines without a GPU")
def test_run_all_smoke(tmp_path):
    for name in OPS[:4]:
        pytest.importorskip(f"effilab.ops.{name}", reason="instructor-only solution absent")
    env = dict(os.environ, EFFILAB_BENCH_SMOKE="1", PYTHON=sys.executable, TRITON_INTERPRET="1")
    out = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "ops" / "run_all.sh"), "--out", str(tmp_path), "--no-sweep"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    summary = (tmp_path / "summary.md").read_text()
    for name in OPS:
        assert f"bench_{name} FAILED" not in out.stdout
    for title in ("RMSNorm", "SwiGLU", "Cross-entropy", "Attention forward", "CUDA C++ RMSNorm"):
        assert f"## {title}" in summary, title
    assert "FAIL" not in summary
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"{n}.png" for n in OPS[:4]), pngs  # the CUDA one has no timings on a CPU
    assert len(list(tmp_path.iterdir())) <= 8  # what the GPU machine sends back: at most 8 files
