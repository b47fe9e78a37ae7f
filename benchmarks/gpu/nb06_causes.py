"""Where the time of notebook 06's gpu-real training steps goes: the measured causes behind the
targets of ``nb06_table.py`` that are not met.

    python benchmarks/gpu/nb06_causes.py [--steps NAME …]    # from the repository root, on a GPU

For each training step of ``nb06_table.step_builders`` (full fine-tuning, peft LoRA, effilab LoRA,
peft + bitsandbytes QLoRA, effilab QLoRA; gpu-real, batch 16 × 1024, r = 16 on every Linear): the
step time (CUDA events), the GPU kernel time of one step and the idle rest (``effilab.bench.kernel_times``),
the launches per step, and the kernel time split into matmuls (cuBLAS/CUTLASS/nvjet), attention,
Triton kernels and everything else (PyTorch's elementwise, reductions, copies, casts); then the eight
kernels with most time per step. Prints markdown. About a minute on an H200.

``--nf4-loop`` only runs the reference NF4 quantize and dequantize of the 8192 × 8192 bf16 weight
five times each, for the profiler (the command line is ``NCU_NF4``, printed with ``--print-ncu``).
"""
from __future__ import annotations

import argparse
import gc
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nb06_table  # noqa: E402  (puts the repository root on sys.path, imports effilab first)
from effilab import bench  # noqa: E402
from effilab.grading.nbcode import solution_namespace  # noqa: E402

CLASSES = [("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|splitK", re.I)),
           ("attention", re.compile(r"flash|sdpa|fmha|attention", re.I)),
           ("triton", re.compile(r"^triton_|_kernel$")),
           ("other", re.compile(r""))]


NCU_METRICS = ",".join([
    "gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm__warps_active.avg.pct_of_peak_sustained_active",
    "launch__registers_per_thread", "launch__occupancy_limit_registers", "launch__grid_size",
    "smsp__inst_executed.sum", "smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio"])
NCU_NF4 = ("ncu --clock-control none --kernel-name regex:'nf4_quantize_kernel|absmax_quantize_kernel|nf4_dequantize_kernel' "
           f"--launch-skip 3 --launch-count 3 --metrics {NCU_METRICS} python3 benchmarks/gpu/nb06_causes.py --nf4-loop")


def nf4_loop(ref) -> None:
    w = (torch.randn(8192, 8192, device="cuda") * 0.02).to(torch.bfloat16)
    for _ in range(5):
        q = ref["nf4_quantize"](w, True)
    for _ in range(5):
        ref["nf4_dequantize"](q, w.shape, w.dtype)
    torch.cuda.synchronize()


def classify(name: str) -> str:
    return next(c for c, rx in CLASSES if rx.search(name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", nargs="*", help="substrings of the step names to run (default: all)")
    ap.add_argument("--nf4-loop", action="store_true", help="only the NF4 kernels, 5 calls each (for ncu)")
    ap.add_argument("--print-ncu", action="store_true", help="print the ncu command line of the NF4 kernels")
    args = ap.parse_args(argv)
    if args.print_ncu:
        print(NCU_NF4)
        return 0
    ref = solution_namespace(nb06_table.ROOT / "solutions" / "06_lora_qlora.ipynb")
    if args.nf4_loop:
        nf4_loop(ref)
        return 0
    builders = {k: b for k, b in nb06_table.step_builders(ref).items()
                if not args.steps or any(w in k for w in args.steps)}
    print(f"# notebook 06 training steps on {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| step | ms / step | GPU kernel ms | idle ms | launches | matmul ms | attention ms | triton ms | other ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    tops = {}
    for name, build in builders.items():
        model, step = nb06_table.build_step(build)
        for _ in range(2):
            step()
        t = bench.time_fn(step, warmup=1, min_reps=5, max_reps=20, max_time_s=2.0).median_ms
        total, rows = bench.kernel_times(step)
        by = {c: 0.0 for c, _ in CLASSES}
        for k, ms, _ in rows:
            by[classify(k)] += ms
        launches = sum(c for _, _, c in rows)
        print(f"| {name} | {t:.1f} | {total:.1f} | {t - total:.1f} | {launches} | "
              + " | ".join(f"{by[c]:.1f}" for c, _ in CLASSES) + " |")
        tops[name] = rows[:8]
        del model, step
        gc.collect()
        torch.cuda.empty_cache()
    for name, rows in tops.items():
        print(f"\n## {name}: the eight kernels with most time per step\n")
        for k, ms, c in rows:
            print(f"- {ms:6.2f} ms  ×{c:<4} [{classify(k)}] {k[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
