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
    assert "## Side by side" in summary and "| rmsnorm | fwd+bwd |" in summary  # summarize.py's table
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"{n}.png" for n in OPS[:4]), pngs  # the CUDA one has no timings on a CPU
    assert len(list(tmp_path.iterdir())) <= 8  # what the GPU machine sends back: at most 8 files


def _report(stem, header, rows, checks=()):
    return {"title": stem, "stem": stem, "unit": "GB/s", "header": header, "copy_gbs": 4250.0,
            "matmul_tflops": 716.0, "ceiling_source": "measured on NVIDIA H200", "rep_ms": 30, "wall_s": 1.0,
            "checks": list(checks), "notes": [], "rows": rows}


def _row(name, mode, ms, floor_ms, kind, sweep=False, extra_mib=None):
    return {"name": name, "mode": mode, "ms": ms, "rate": None, "frac": floor_ms / ms, "extra_mib": extra_mib,
            "note": "", "floor_ms": floor_ms, "kind": kind, "sweep": sweep}


def test_summarize_side_by_side(tmp_path):
    """summarize.py: one row per op and pass, the default and best sweep, rivals, targets judged on an H200."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks" / "ops"))
    try:
        import summarize
    finally:
        sys.path.pop(0)
    rows = [
        _row("effilab triton", "fwd", 0.070, 0.0632, "effilab"),
        _row("torch F.rms_norm (eager)", "fwd", 0.120, 0.0632, "torch"),
        _row("liger_rms_norm", "fwd", 0.069, 0.0632, "liger"),
        _row("effilab triton", "fwd+bwd", 0.300, 0.158, "effilab"),
        _row("effilab bwd blocked M1 4/SM w4 s2", "fwd+bwd", 0.250, 0.158, "effilab", sweep=True),
        _row("torch F.rms_norm (eager)", "fwd+bwd", 0.314, 0.158, "torch"),
        _row("torch.compile(reference)", "fwd+bwd", 0.672, 0.158, "compile"),
    ]
    (tmp_path / "rmsnorm.json").write_text(json.dumps(_report("rmsnorm", "NVIDIA H200, torch 2.11", rows)))
    (tmp_path / "swiglu.json").write_text(json.dumps(_report("swiglu", "NVIDIA H100 80GB HBM3", [
        _row("effilab triton swiglu(a, b)", "fwd", 0.2, 0.19, "effilab")])))
    md = summarize.table(summarize.load(tmp_path))
    lines = md.splitlines()
    assert len(lines) == 2 + 3  # header, rule, rmsnorm fwd, rmsnorm fwd+bwd, swiglu fwd
    fwd, fb, sw = lines[2:]
    assert fwd.startswith("| rmsnorm | fwd | 0.063 | 0.070 | 0.90 |") and fwd.endswith("| **no** |")  # < 0.95, > Liger
    assert "0.250 (bwd blocked M1 4/SM w4 s2)" in fb and "1.05x (F.rms_norm (eager))" in fb
    assert fb.endswith("| **no** |")  # the default (0.300 ms) misses 0.26 ms, though the sweep has a faster one
    assert sw.endswith("| - |")  # not judged off an H200
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ops" / "summarize.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("## Side by side") and "4250 GB/s" in out


def test_summarize_judges_of_copy_against_the_same_run_anchor(tmp_path):
    """An '(anchor)' copy row of the same pass is the 'of copy' target's reference, and never a rival."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks" / "ops"))
    try:
        import summarize
    finally:
        sys.path.pop(0)
    rows = [
        _row("effilab triton", "fwd", 0.070, 0.0632, "effilab"),  # 0.90 of the recorded ceiling
        _row("liger_rms_norm", "fwd", 0.077, 0.0632, "liger"),
    ]
    header = "NVIDIA H200, torch 2.11"
    (tmp_path / "rmsnorm.json").write_text(json.dumps(_report("rmsnorm", header, rows)))
    assert summarize.table(summarize.load(tmp_path)).splitlines()[2].endswith("| **no** |")
    anchor = _row("torch copy y.copy_(x) (anchor)", "fwd", 0.069, 0.0632, "anchor")
    (tmp_path / "rmsnorm.json").write_text(json.dumps(_report("rmsnorm", header, rows + [anchor])))
    line = summarize.table(summarize.load(tmp_path)).splitlines()[2]
    assert "0.90 (0.99 of same-run copy)" in line and line.endswith("| yes |")
    assert "copy y.copy_" not in line  # the anchor is not "the fastest other"
