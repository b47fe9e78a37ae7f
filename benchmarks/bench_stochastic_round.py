"""Stochastic rounding fp32 → bf16: the reference Triton kernel (from solutions/01) vs eager PyTorch.

Sets the speed threshold of notebook 01's exercise 3 and records the numbers behind it:

    python benchmarks/bench_stochastic_round.py --out benchmarks/results

For each size: median time (CUDA events, L2 flushed, effilab.bench), the same through
triton.testing.do_bench as a cross-check, achieved GB/s (4 B read + 2 B written per element) and
its fraction of the measured copy bandwidth, and the speed-up over eager PyTorch. Then the
exercise's own speed verdict five times over, for its spread (coefficient of variation).
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import effilab  # noqa: E402,F401  (before triton)
import torch  # noqa: E402

from effilab import bench, device  # noqa: E402
from effilab.formats import stochastic_round_bf16_torch  # noqa: E402
from effilab.grading import check  # noqa: E402
from effilab.grading.nbcode import solution_namespace  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--repeats", type=int, default=5, help="speed verdicts for the spread")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    import triton
    import triton.testing

    ns = solution_namespace(ROOT / "solutions" / "01_float_formats.ipynb")
    sr = ns["stochastic_round_bf16"]
    info = device.info()
    rows = []
    for log2n in (20, 24, 26, 28):
        n = 1 << log2n
        x = torch.randn(n, device="cuda") * 100
        assert check("stochastic_round_bf16", sr, verbose=False).passed
        cmp = bench.compare({"eager": lambda: stochastic_round_bf16_torch(x, 1), "triton": lambda: sr(x, 1)})
        tt, te = cmp.timings["triton"], cmp.timings["eager"]
        db = triton.testing.do_bench(lambda: sr(x, 1), return_mode="median")
        tp = bench.throughput(tt.median_ms, bytes=6 * n)
        rows.append(dict(n=f"2^{log2n}", eager_ms=te.median_ms, triton_ms=tt.median_ms, do_bench_ms=db,
                         speedup=te.median_ms / tt.median_ms, gbs=tp.gbs,
                         frac_copy=tp.frac_measured_bandwidth, spread=tt.spread))
    # launch configurations of the reference kernel at the exercise's size
    kernel = ns["stochastic_round_bf16_kernel"]
    x = torch.randn(1 << 28, device="cuda")
    outb = torch.empty(x.shape, dtype=torch.bfloat16, device="cuda").view(torch.int16)
    sweep = []
    for block in (1024, 2048, 4096, 8192, 16384):
        for warps in (4, 8, 16):
            grid = (triton.cdiv(x.numel(), block),)
            ms = triton.testing.do_bench(lambda: kernel[grid](x, outb, x.numel(), 1, BLOCK=block, num_warps=warps),
                                         return_mode="median")
            sweep.append((block, warps, ms, 6 * x.numel() / ms / 1e6))
    del x, outb
    verdicts = []
    for _ in range(args.repeats):
        v = check("stochastic_round_bf16", sr, "speed", seed=0, verbose=False)
        verdicts.append(v)
    ratios = [v.details["ratio"] for v in verdicts]
    cv = statistics.stdev(ratios) / statistics.mean(ratios) if len(ratios) > 1 else 0.0
    lines = [
        f"# Stochastic rounding fp32 → bf16 on {info.name}",
        "",
        f"Measured {dt.date.today().isoformat()}, torch {torch.__version__}, triton {triton.__version__}. "
        "Reproduce: `python benchmarks/bench_stochastic_round.py`.",
        "",
        "| n | eager PyTorch ms | Triton ms | do_bench ms | speed-up | GB/s | of copy bw | IQR/median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        frac = f"{100 * r['frac_copy']:.0f}%" if r["frac_copy"] else "n/a"
        lines.append(f"| {r['n']} | {r['eager_ms']:.3f} | {r['triton_ms']:.3f} | {r['do_bench_ms']:.3f} | "
                     f"{r['speedup']:.2f}× | {r['gbs']:.0f} | {frac} | {100 * r['spread']:.1f}% |")
    lines += ["", "Kernel alone at 2^28 elements (do_bench median), BLOCK × num_warps:", "",
              "| BLOCK | num_warps | ms | GB/s |", "|---|---|---|---|"]
    lines += [f"| {b} | {w} | {ms:.3f} | {g:.0f} |" for b, w, ms, g in sweep]
    lines += ["", f"Exercise speed verdict ×{len(ratios)} (2^28 elements): ratios "
              + ", ".join(f"{r:.2f}" for r in ratios)
              + f"; mean {statistics.mean(ratios):.2f}×, CV {100 * cv:.2f}%; points "
              + ", ".join(f"{v.points:g}" for v in verdicts)]
    text = "\n".join(lines)
    (out / "stochastic_round.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
