"""Where RMSNorm forward + backward (16384 × 4096 bf16) spends its time outside the kernels: the
host's time per call, the CUDA-event time (effilab.bench and, as the benchmarks time it, triton's
do_bench), and the GPU kernel time of one call, for effilab's
autograd path and F.rms_norm; then the host's hottest Python functions in effilab's path (cProfile).

    python benchmarks/ops/rmsnorm_host.py        # on a CUDA GPU, ~20 s
"""
from __future__ import annotations

import cProfile
import pstats
import statistics
import time

import torch
import torch.nn.functional as F

import effilab  # noqa: F401  (before triton)
import triton
from effilab import bench
from effilab.ops.rmsnorm import rms_norm

N, D, EPS = 16384, 4096, 1e-6


def host_ms(f, n=30) -> float:
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(ts)


def main() -> None:
    x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (1 + 0.1 * torch.randn(D, device="cuda")).to(torch.bfloat16).requires_grad_()
    dy = torch.randn_like(x)
    cands = {"effilab rms_norm": lambda: torch.autograd.grad(rms_norm(x, w, EPS), (x, w), dy),
             "F.rms_norm": lambda: torch.autograd.grad(F.rms_norm(x, (D,), w, EPS), (x, w), dy)}
    print(f"# RMSNorm fwd+bwd {N}×{D} bf16 on {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| path | host ms / call | CUDA-event ms / call | do_bench ms / call | GPU kernel ms / call | kernels |")
    print("|---|---:|---:|---:|---:|---|")
    for name, f in cands.items():
        for _ in range(5):
            f()
        ev = bench.time_fn(f, max_time_s=1.0).median_ms
        # the benchmarks' timer (benchmarks/ops/_common.py: do_bench, 30 ms budget) on the same call
        db = float(triton.testing.do_bench(f, warmup=25, rep=30, return_mode="median"))
        total, rows = bench.kernel_times(f, 5)
        ks = ", ".join(f"{k[:40]} {ms * 1e3:.0f} µs ×{c}" for k, ms, c in rows[:5])
        print(f"| {name} | {host_ms(f):.3f} | {ev:.3f} | {db:.3f} | {total:.3f} | {ks} |")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20):
        cands["effilab rms_norm"]()
    torch.cuda.synchronize()
    prof.disable()
    print("\n## effilab rms_norm: host functions by own time, 20 calls\n```")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    print("```")


if __name__ == "__main__":
    main()
