"""Why notebook 06's NF4 dequantize (8192 × 8192 → bf16, double quantization) runs at ~2.2 TB/s and
not at copy speed: the reference kernel against variants of itself that each remove one suspect.

    python3 benchmarks/gpu/nb06_dequant.py             # on a GPU, from the repository root, ~30 s
    python3 benchmarks/gpu/nb06_dequant.py --ncu-loop  # only the launches ncu profiles (see NCU below)

The reference (``solutions/06_lora_qlora.ipynb``, cell ``nf4_dequantize_solution``) reads 32 MiB of
packed codes and 1 MiB of absmax codes and writes 128 MiB of bf16: 168 MB a call. Each value costs one
gather from the 16-entry NF4 table (``tl.load(code_ptr + codes)``, a scalar load per value), one
multiply and a store. The variants are the same cell text with one change (``solution_namespace``'s
``replace``), all timed in the same run the same way (effilab.bench: CUDA events after an L2 flush),
next to ``w.clone()`` (the copy anchor) and bitsandbytes' ``dequantize_4bit`` when importable:

* ``BLOCKS`` 16 / 32 / 64 / 256 blocks of 64 values per program (the reference uses 128: on the H200,
  2026-12-02, 32 gave 75.4 µs (2.24 TB/s) and 128 58.1 µs (2.91 TB/s), as fast as without the lookup);
* ``no lookup``: the table gather replaced by arithmetic on the code (wrong values, same bytes): how
  much of the time the per-value gather costs;
* ``single quant``: the absmax stored in fp32 (no 8-bit absmax decode): what double quantization costs.

Each variant's output is compared with the reference's (except ``no lookup``) before it is timed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import effilab  # noqa: E402,F401  (before triton)
from effilab import bench  # noqa: E402
from effilab.grading.nbcode import solution_namespace  # noqa: E402

NB = ROOT / "solutions" / "06_lora_qlora.ipynb"
CELL = "nf4_dequantize_solution"
LOOKUP = "out = tl.load(code_ptr + codes) * a[:, None]"
BLOCKS = "if INTERPRET else 128"
VARIANTS = {
    "reference (BLOCKS 128)": {},
    **{f"BLOCKS {b}": {CELL: (BLOCKS, f"if INTERPRET else {b}")} for b in (16, 32, 64, 256)},
    "no lookup (wrong values, same bytes)": {CELL: (LOOKUP, "out = (codes.to(tl.float32) * 0.125 - 1.0) * a[:, None]")},
}
NCU_METRICS = ",".join([
    "gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram__bytes_read.sum",
    "dram__bytes_write.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active", "launch__registers_per_thread", "launch__grid_size",
    "smsp__inst_executed.sum", "smsp__inst_executed_op_global_ld.sum", "smsp__inst_executed_op_global_st.sum",
    "l1tex__throughput.avg.pct_of_peak_sustained_active", "lts__t_sector_hit_rate.pct"])
# the second reference dequantize and both of the no-lookup variant, with the sections
# that name the limiter; the regex keeps the quantize launches out
NCU = ("ncu --clock-control none --kernel-name regex:nf4_dequantize_kernel --launch-skip 1 --launch-count 3 "
       "--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy "
       f"--section LaunchStats --metrics {NCU_METRICS} python3 benchmarks/gpu/nb06_dequant.py --ncu-loop")


def weight():
    g = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(8192, 8192, device="cuda", generator=g) * 0.02).to(torch.bfloat16)


def ms(fn) -> float:
    return bench.time_fn(fn, warmup=3, min_reps=20, max_reps=200, max_time_s=0.5).median_ms


def ncu_loop() -> None:
    """Two reference dequantize launches, then two of the no-lookup variant (ncu skips the first two)."""
    w = weight()
    ref = solution_namespace(NB)
    var = solution_namespace(NB, VARIANTS["no lookup (wrong values, same bytes)"])
    q = ref["nf4_quantize"](w, True)
    for ns in (ref, ref, var, var):
        ns["nf4_dequantize"](q, w.shape, w.dtype)
    torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ncu-loop", action="store_true", help="only the launches for ncu")
    ap.add_argument("--print-ncu", action="store_true", help="print the ncu command line")
    args = ap.parse_args(argv)
    if args.print_ncu:
        print(NCU)
        return 0
    if args.ncu_loop:
        ncu_loop()
        return 0
    w = weight()
    ref = solution_namespace(NB)
    q2 = ref["nf4_quantize"](w, True)
    q1 = ref["nf4_quantize"](w, False)
    expect = ref["nf4_dequantize"](q2, w.shape, w.dtype)
    io = w.numel() // 2 + q2["absmax"].numel() * q2["absmax"].element_size() + w.numel() * 2
    print(f"# NF4 dequantize 8192 × 8192 → bf16 on {torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"{io / 1e6:.1f} MB moved a call\n")
    print("| variant | ms | TB/s | × copy time |\n|---|---:|---:|---:|")
    copy = ms(lambda: w.clone())
    print(f"| copy (w.clone(), read + write {2 * w.numel() * 2 / 1e6:.0f} MB) | {copy:.4f} | "
          f"{2 * w.numel() * 2 / copy / 1e9:.2f} | 1.00 |")
    rows = {}
    for name, replace in VARIANTS.items():
        try:
            ns = ref if not replace else solution_namespace(NB, replace)
            y = ns["nf4_dequantize"](q2, w.shape, w.dtype)
            if "wrong values" not in name and not torch.equal(y, expect):
                print(f"| {name} | differs from the reference: not timed | | |")
                continue
            rows[name] = ms(lambda ns=ns: ns["nf4_dequantize"](q2, w.shape, w.dtype))
        except Exception as e:  # a variant that does not compile is reported, not fatal
            print(f"| {name} | failed: {type(e).__name__}: {str(e)[:80]} | | |")
            continue
        print(f"| {name} | {rows[name]:.4f} | {io / rows[name] / 1e9:.2f} | {rows[name] / copy:.2f} |")
    io1 = w.numel() // 2 + q1["absmax"].numel() * 4 + w.numel() * 2
    t1 = ms(lambda: ref["nf4_dequantize"](q1, w.shape, w.dtype))
    print(f"| single quant (fp32 absmax) | {t1:.4f} | {io1 / t1 / 1e9:.2f} | {t1 / copy:.2f} |")
    try:
        import bitsandbytes.functional as bnbf

        qb, st = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        tb = ms(lambda: bnbf.dequantize_4bit(qb, st, quant_type="nf4"))
        print(f"| bitsandbytes dequantize_4bit | {tb:.4f} | {io / tb / 1e9:.2f} | {tb / copy:.2f} |")
    except ImportError:
        print("| bitsandbytes | not importable | | |")
    print(f"\nncu: {NCU}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
