"""W4A16 kernel sweep on the GPU: every variant of effilab.ops.w4a16 × a small config grid, against
dense bf16 ``torch.matmul``, bitsandbytes NF4 (``gemv_4bit`` at M = 1, ``matmul_4bit`` above, if
importable) and an empty Triton kernel, all timed in the same run the same way (effilab.bench:
medians of CUDA events after an L2 flush). Shapes (group 128, bf16): 1×4096×4096, 16×4096×4096,
1×11008×4096 and 1×4096×11008 (M × N × K). Each variant's output is checked against the
dequantize-then-matmul reference before it is timed; a variant that fails or does not compile is
reported and skipped. Prints one markdown table per shape (µs, × bf16, GB/s of weight bytes), the
best config per shape and the lines to paste into ``_config``.

    python3 benchmarks/gpu/w4a16_sweep.py              # ≤ 90 s on an H200 (--budget stops the grid early)
    python3 benchmarks/gpu/w4a16_sweep.py --ncu        # also print ncu command lines for the best configs
    python3 benchmarks/gpu/w4a16_sweep.py --run-one gemv,1,16,1024,0,4,2,1 --shape 1,4096,4096   # for ncu
    EFFILAB_BENCH_SMOKE=1 python3 benchmarks/gpu/w4a16_sweep.py   # CPU interpreter, tiny shapes (tests)
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

import effilab  # noqa: F401  (before triton)
import triton
import triton.language as tl
from effilab import bench
from effilab.ops import w4a16 as W
from effilab.ops.w4a16 import Config, launch_plan, w4a16_matmul, w4a16_reference

import os

SMOKE = os.environ.get("EFFILAB_BENCH_SMOKE") == "1"  # CPU interpreter, tiny shapes: checks the script only
DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 4096, 4096), (16, 4096, 4096), (1, 11008, 4096), (1, 4096, 11008)]
if SMOKE:
    SHAPES = [(1, 64, 512), (16, 32, 256), (1, 96, 256), (1, 32, 768)]
GROUP = 128
SHARES = (0.4, 0.82, 0.91, 1.0)  # the shapes' deadlines, fractions of --budget from the start
NCU_METRICS = ",".join([
    "gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram__bytes_read.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",  # achieved occupancy
    "sm__maximum_warps_per_active_cycle_pct", "lts__t_sector_hit_rate.pct", "launch__registers_per_thread",
    "launch__grid_size", "smsp__inst_executed.sum"])


@triton.jit
def _empty(y_ptr):
    tl.store(y_ptr, 1.0)


def us(fn) -> float:
    if SMOKE:
        return bench.time_fn(fn, warmup=0, min_reps=1, max_reps=1, max_time_s=0.01, device=DEV).median_ms * 1e3
    return bench.time_fn(fn, warmup=5, min_reps=30, max_reps=300, max_time_s=0.3, device=DEV).median_ms * 1e3


def inputs(m, n, k, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=DEV).to(torch.bfloat16)
    qw = torch.randint(0, 256, (n, k // 2), generator=g, device=DEV, dtype=torch.int32).to(torch.uint8)
    sc = (torch.rand(n, k // GROUP, generator=g, device=DEV) * 0.02 + 0.002).to(torch.bfloat16)
    zp = torch.randint(0, 16, (n, k // GROUP), generator=g, device=DEV, dtype=torch.int32).to(torch.uint8)
    return x, qw, sc, zp


def grid_for(m: int):
    """The configs tried at M rows: each list of CONFIGS, and the first GEMV at fixed K splits."""
    if SMOKE:  # one of each kind; bf16 tl.dot fails in the interpreter: shows a failure being reported
        return [Config("gemv", 1, 16, 128, 2), Config("gemv", 4, 16, 128, 0), Config("dot", 16, 16, 64, 2)]
    if m == 1:
        base = W.CONFIGS["gemv"]
        return base + [base[0]._replace(split=s) for s in (1, 2, 4, 8)]
    return W.CONFIGS["dot"] + W.CONFIGS["gemv_rows"] + [W.CONFIGS["dot"][0]._replace(split=s) for s in (1, 2, 4)]


def parse_config(text: str) -> Config:
    f = text.split(",")
    return Config(f[0], *map(int, f[1:7]), *(bool(int(v)) for v in f[7:8]))


def config_str(c: Config) -> str:
    return ",".join([c.kernel, *(str(int(v)) for v in c[1:])])


def ok_output(y, ref) -> str | None:
    if y.shape != ref.shape or y.dtype != ref.dtype:
        return f"shape/dtype {tuple(y.shape)} {y.dtype}"
    r = ref.float()
    err = (y.float() - r).abs()
    allowed = 2e-2 * (r.abs() + r.pow(2).mean().sqrt())
    if not torch.isfinite(y).all() or (err > allowed).any():
        return f"wrong: max err {err.max().item():.3g} (rms ref {r.pow(2).mean().sqrt().item():.3g})"
    return None


def tinygemm(x, q, sc, zp, ref):
    """PyTorch's own int4 weight-only matmul (the tinygemm kernel torchao's ``Int4WeightOnlyConfig``
    calls) on the same weights, or None where this PyTorch or device lacks it. Its format: two codes a
    byte, the even one in the high nibble, and w = (q - 8) * scale + zero per group, so zero =
    (8 - zp) * scale reproduces (q - zp) * scale; (K / group, N, 2) bf16 scales and zeros."""
    try:
        packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()
        w = torch._convert_weight_to_int4pack(packed, 8)
        s = sc.float().T
        sz = torch.stack([s, (8 - zp.float().T) * s], -1).to(torch.bfloat16).contiguous()
        fn = lambda: torch._weight_int4pack_mm(x, w, GROUP, sz)  # noqa: E731
        bad = ok_output(fn(), ref)
    except Exception as exc:  # report, keep going
        print(f"_weight_int4pack_mm not run: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        return None
    if bad:
        print(f"_weight_int4pack_mm not timed: {bad}")
        return None
    return fn


def sweep_shape(m, n, k, floor_us, deadline, rows_out):
    x, qw, sc, zp = inputs(m, n, k)
    ref = w4a16_reference(x, qw, sc, zp, GROUP)
    q = torch.stack([qw & 15, qw >> 4], -1).reshape(n, k)
    gi = torch.arange(k, device=DEV) // GROUP
    wd = ((q.float() - zp.float()[:, gi]) * sc.float()[:, gi]).to(torch.bfloat16)
    w_bytes = n * k // 2 + (n * k // GROUP) * 3
    rows = [("empty Triton kernel (one store)", "", floor_us, 0)]
    dense = us(lambda: torch.matmul(x, wd.T))
    rows.append(("bf16 torch.matmul (dense)", "", dense, 2 * n * k))
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbF

        nf4, state = bnbF.quantize_4bit(wd, blocksize=64, quant_type="nf4")
        if m == 1:
            rows.append(("bitsandbytes gemv_4bit NF4 b64", "", us(lambda: bnbF.gemv_4bit(x, nf4.t(), state=state)),
                         n * k // 2 + (n * k // 64) * 4))
        else:
            rows.append(("bitsandbytes matmul_4bit NF4 b64", "", us(lambda: bnb.matmul_4bit(x, nf4.t(), quant_state=state)),
                         n * k // 2 + (n * k // 64) * 4))
    except Exception as exc:  # report, keep going
        print(f"bitsandbytes not run: {type(exc).__name__}: {str(exc)[:160]}")
    tiny = tinygemm(x, q, sc, zp, ref)
    if tiny is not None:
        rows.append(("PyTorch _weight_int4pack_mm (tinygemm: torchao's int4 weight-only kernel)", "",
                     us(tiny), n * k // 2 + (n * k // GROUP) * 4))
    best = None
    for cfg in [None] + grid_for(m):
        label = "heuristic default" if cfg is None else "variant"
        if time.time() > deadline:
            print(f"  skipped (time budget): {cfg}")
            continue
        try:
            c, bk, split, per, grid = launch_plan(m, n, k, cfg, x.device)
            desc = f"{config_str(c)} → BLOCK_K {bk}, split {split}, grid {grid}"
            bad = ok_output(w4a16_matmul(x, qw, sc, zp, GROUP, config=cfg), ref)
            if bad is None:  # a second call: the split-K counters must have been reset
                bad = ok_output(w4a16_matmul(x, qw, sc, zp, GROUP, config=cfg), ref)
            if bad:
                print(f"  FAILED check {desc}: {bad}")
                continue
            t = us(lambda: w4a16_matmul(x, qw, sc, zp, GROUP, config=cfg))
        except Exception as exc:
            print(f"  FAILED {cfg}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc(limit=2, file=sys.stdout)
            continue
        rows.append((f"effilab w4a16 {c.kernel} ({label})", desc, t, w_bytes))
        if cfg is not None and (best is None or t < best[0]):
            best = (t, c._replace(split=split), desc)
    print(f"\n### W4A16, M × N × K = {m} × {n} × {k}, group {GROUP}, bf16 activations\n")
    print("| kernel | config (kernel,BM,BN,BK,split,warps,stages,fast_cvt) | µs | × bf16 | GB/s (weights) |\n|---|---|---|---|---|")
    for name, desc, t, nbytes in rows:
        print(f"| {name} | {desc} | {t:.2f} | {dense / t:.2f} | {nbytes / t / 1e3:.0f} |")
    if best:
        print(f"\n**best at {m}×{n}×{k}: {best[0]:.2f} µs ({dense / best[0]:.2f}× bf16), {best[2]}**")
        rows_out.append(((m, n, k), best))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=75.0, help="seconds after which the remaining configs are skipped")
    ap.add_argument("--ncu", action="store_true", help="print ncu command lines for the best config per shape")
    ap.add_argument("--run-one", help="kernel,BM,BN,BK,split,warps,stages,fast_cvt: run it 20 times (for ncu)")
    ap.add_argument("--shape", default="1,4096,4096", help="M,N,K for --run-one")
    a = ap.parse_args()
    if a.run_one:
        m, n, k = map(int, a.shape.split(","))
        args = inputs(m, n, k)
        for _ in range(20):
            w4a16_matmul(*args, GROUP, config=parse_config(a.run_one))
        if DEV == "cuda":
            torch.cuda.synchronize()
        return
    t0 = time.time()
    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"{torch.cuda.get_device_name() if DEV == 'cuda' else 'CPU interpreter (smoke run)'}")
    y = torch.empty(1, device=DEV)
    floor_us = us(lambda: _empty[(1,)](y))
    best = []
    for (m, n, k), share in zip(SHAPES, SHARES):  # the last two shapes reuse the compiled kernels
        sweep_shape(m, n, k, floor_us, t0 + share * a.budget, best)
    print("\n### Best config per shape (paste into effilab/ops/w4a16.py: _config / CONFIGS)\n")
    for shape, (t, c, desc) in best:
        print(f"* {shape}: {t:.2f} µs  Config{tuple(c)}")
    if a.ncu:
        print("\n### ncu command lines (run from the repository root)\n")
        for (m, n, k), (t, c, desc) in best:
            print(f"ncu --clock-control none --kernel-name regex:w4a16 --launch-skip 5 --launch-count 1 "
                  f"--metrics {NCU_METRICS} python3 benchmarks/gpu/w4a16_sweep.py --run-one {config_str(c)} "
                  f"--shape {m},{n},{k}")
    print(f"\nsweep took {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
