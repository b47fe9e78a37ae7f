"""Notebook 07's benchmark table (run by benchmarks/gpu/nb07.sh on the GPU; prints markdown).

1. W4A16 at (M, N, K) = (1, 4096, 4096) and (16, 4096, 4096), group 128, bf16 activations:
   effilab's reference kernel in every launch config of ``effilab.ops.w4a16.CONFIGS`` (and its
   default), the reference solution of the notebook, bf16 ``torch.matmul`` with the dense weight,
   bitsandbytes ``gemv_4bit`` (NF4, block 64; M = 1 only) and torchao's int4 weight-only matmul
   where it is installed and runs. Medians of CUDA-event times with an L2 flush (effilab.bench).
2. The perplexity table of the course model (fp16, RTN / GPTQ / AWQ at 3 and 4 bits, group 128) with
   the reference quantizers, on all 254 held-out windows.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401
from effilab import bench
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs.nb07 import w4a16_inputs
from effilab.ops.w4a16 import CONFIGS, w4a16_matmul


def _us(fn) -> float:
    return bench.time_fn(fn, warmup=10, min_reps=50, max_reps=500, max_time_s=1.0).median_ms * 1e3


def kernel_table() -> None:
    ref = solution_namespace("solutions/07_quantization.ipynb")
    for m in (1, 16):
        n = k = 4096
        x, qw, sc, zp, g = w4a16_inputs(0, m, n, k, 128, torch.bfloat16, "cuda")
        q = torch.stack([qw & 15, qw >> 4], -1).reshape(n, k)
        gi = torch.arange(k, device="cuda") // g
        wd = ((q.float() - zp.float()[:, gi]) * sc.float()[:, gi]).to(torch.bfloat16)
        w_bytes = n * k // 2 + (n * k // g) * 3
        rows = [("bf16 torch.matmul (dense)", _us(lambda: torch.matmul(x, wd.T)), 2 * n * k)]
        rows.append(("effilab w4a16 (default config)", _us(lambda: w4a16_matmul(x, qw, sc, zp, g)), w_bytes))
        for cfg in CONFIGS["gemv" if m < 16 else "dot"]:
            rows.append((f"effilab w4a16 {cfg}", _us(lambda c=cfg: w4a16_matmul(x, qw, sc, zp, g, config=c)), w_bytes))
        rows.append(("notebook reference solution", _us(lambda: ref["w4a16_matmul"](x, qw, sc, zp, g)), w_bytes))
        if m == 1:
            try:
                import bitsandbytes.functional as bnbF

                nf4, state = bnbF.quantize_4bit(wd, blocksize=64, quant_type="nf4")
                rows.append(("bitsandbytes gemv_4bit NF4 b64", _us(lambda: bnbF.gemv_4bit(x, nf4.t(), state=state)),
                             n * k // 2 + (n * k // 64) * 4))
            except Exception as exc:  # report, keep going
                print(f"bitsandbytes: {type(exc).__name__}: {exc}")
        try:
            from torchao.quantization import Int4WeightOnlyConfig, quantize_

            lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
            lin.weight.data = wd
            quantize_(lin, Int4WeightOnlyConfig(group_size=128))
            rows.append(("torchao int4 weight-only g128", _us(lambda: lin(x)), w_bytes))
        except Exception as exc:
            print(f"torchao int4 weight-only: not run ({type(exc).__name__}: {str(exc)[:120]})")
        base = rows[0][1]
        print(f"\n### W4A16, M = {m}, N = K = 4096, group 128, bf16 activations\n")
        print("| kernel | µs | × bf16 | GB/s (weights) | bytes/param |\n|---|---|---|---|---|")
        for name, us, nbytes in rows:
            print(f"| {name} | {us:.2f} | {base / us:.2f} | {nbytes / us / 1e3:.0f} | {nbytes / (n * k):.3f} |")


def ppl_table() -> None:
    from effilab.quant import course_texts, load_course_model, perplexity, windows
    from effilab.quant import model as cm
    from effilab.quant import reference as R

    ev = windows(course_texts()["heldout"], 254)
    calib = windows(course_texts()["calib"], 16, seed=0)
    fp = perplexity(load_course_model(), ev)
    print(f"\n### Perplexity of the course model (254 held-out windows), fp16 {fp:.4f}\n")
    print("| method | 3 bits | 4 bits | gap at 4 bits | gap at 3 bits |\n|---|---|---|---|---|")
    for method in ("rtn", "gptq", "awq"):
        res = {}
        for bits in (3, 4):
            model = load_course_model()
            for name in cm.linear_names(model):
                layer = model.get_submodule(name)
                W = layer.weight.data
                if method == "rtn":
                    layer.weight.data = R.fake_quantize(W, bits, 128)
                    continue
                X = cm.linear_inputs(model, calib, [name])[name]
                if method == "gptq":
                    layer.weight.data = R.dequantize_grouped(*R.gptq_quantize(W, X, bits, 128))
                else:
                    s = R.awq_search_scales(W, X, bits, 128)
                    layer.weight.data = R.fake_quantize(W * s, bits, 128) / s
            res[bits] = perplexity(model, ev)
        print(f"| {method} | {res[3]:.4f} | {res[4]:.4f} | {res[4] - fp:+.4f} | {res[3] - fp:+.4f} |")


if __name__ == "__main__":
    kernel_table()
    ppl_table()
