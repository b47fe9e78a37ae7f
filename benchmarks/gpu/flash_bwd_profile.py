"""The launches Nsight Compute profiles for effilab's Triton FlashAttention-2 backward: B4 H32 S4096 D128
bf16, non-causal, the default backward configuration, three backward passes after one warm-up pass.

    python3 benchmarks/gpu/flash_bwd_profile.py               # run them (a dry run without ncu)
    python3 benchmarks/gpu/flash_bwd_profile.py --print-ncu   # the ncu command line (see NCU)

Each backward launches ``_bwd_preprocess`` (delta = rowsum(dO * O)), ``_bwd_dkdv_kernel`` and
``_bwd_dq_kernel``; NCU skips the warm-up pass's three and profiles the next three.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import effilab  # noqa: E402,F401  (before triton)
from effilab.ops.flash_attention import flash_attention  # noqa: E402

SHAPE = (4, 32, 4096, 128)
NCU = ("ncu --clock-control none --kernel-name regex:_bwd_ --launch-skip 3 --launch-count 3 "
       "--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis "
       "--section WarpStateStats --section Occupancy --section LaunchStats "
       "--metrics sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,"
       "sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active,gpu__time_duration.sum "
       "python3 benchmarks/gpu/flash_bwd_profile.py")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print-ncu", action="store_true", help="print the ncu command line")
    args = ap.parse_args(argv)
    if args.print_ncu:
        print(NCU)
        return 0
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(SHAPE, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    do = torch.randn(SHAPE, device="cuda", generator=g, dtype=torch.bfloat16)
    o = flash_attention(q, k, v, False)
    for _ in range(4):  # one warm-up (compiles), then the three ncu profiles
        torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
