"""Notebook 06 on the GPU: the reference solution against the libraries, all in one run.

    python benchmarks/gpu/nb06_table.py          # from the repo root, on a CUDA GPU

Prints markdown tables for benchmarks/RESULTS.md and one line per target of the brief (met or not,
with the measured numbers):

1. NF4 quantize / dequantize, 8192 × 8192 bf16, double quantization: the reference kernels of
   solutions/06_lora_qlora.ipynb against bitsandbytes' quantize_4bit / dequantize_4bit and a device
   copy — ms, TB/s of the bytes that must move, bits per parameter.
2. The LoRA linear at the course GPT's MLP shape (M 16384, K 768, N 3072, r 16, bf16): F.linear
   alone, peft's lora.Linear (bf16 and fp32 adapters), the reference LoRALinear (one addmm), the
   fused Triton kernel — ms and TFLOP/s.
3. A training step of the course GPT gpu-real (86 M parameters, batch 16 × 1024, every Linear
   adapted at r = 16, AdamW): full fine-tuning (fp32 master weights, bf16 autocast), peft LoRA,
   the reference LoRA, peft + bitsandbytes QLoRA (Linear4bit, NF4, double quantization, bf16
   compute), the reference QLoRA — ms per step and peak memory.
"""
from __future__ import annotations

import copy
import gc
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import effilab  # noqa: E402,F401  (before triton)
from effilab import bench, lora, nf4  # noqa: E402
from effilab.grading.nbcode import solution_namespace  # noqa: E402
from effilab.models import GPT, GPTConfig  # noqa: E402

R, ALPHA, BATCH = 16, 32, 16


def ms(fn, **kw) -> float:
    return bench.time_fn(fn, max_time_s=kw.pop("max_time_s", 1.5), **kw).median_ms


def nf4_table(ref) -> dict:
    import bitsandbytes.functional as bf

    w = (torch.randn(8192, 8192, device="cuda") * 0.02).to(torch.bfloat16)
    n = w.numel()
    moved_q, moved_d = 2 * n + n // 2 + n // 64, n // 2 + n // 64 + 2 * n
    q_bnb, st = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    mine = ref["nf4_quantize"](w, True)
    rows = {
        "copy (w.clone(), read + write)": (ms(lambda: w.clone()), 4 * n),
        "quantize, bitsandbytes": (ms(lambda: bf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                             compress_statistics=True)), moved_q),
        "quantize, effilab (reference)": (ms(lambda: ref["nf4_quantize"](w, True)), moved_q),
        "dequantize, bitsandbytes": (ms(lambda: bf.dequantize_4bit(q_bnb, st)), moved_d),
        "dequantize, effilab (reference)": (ms(lambda: ref["nf4_dequantize"](mine, w.shape, w.dtype)), moved_d),
    }
    print("\n| 8192×8192 bf16, double quantization | ms | TB/s |\n|---|---|---|")
    for name, (t, b) in rows.items():
        print(f"| {name} | {t:.4f} | {b / t / 1e9:.2f} |")
    bits = nf4.bits_per_param(mine, n), nf4.bits_per_param(nf4.bnb_quantize(w, True), n)
    print(f"\nbits per parameter: effilab {bits[0]:.4f}, bitsandbytes {bits[1]:.4f}")
    tb = {k: b / t / 1e9 for k, (t, b) in rows.items()}
    return {"quant_tbs": tb["quantize, effilab (reference)"], "dequant_tbs": tb["dequantize, effilab (reference)"],
            "bnb_quant_tbs": tb["quantize, bitsandbytes"], "bnb_dequant_tbs": tb["dequantize, bitsandbytes"]}


def fused_table(ref) -> None:
    M, K, N = 16384, 768, 3072
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    lin = torch.nn.Linear(K, N, device="cuda", dtype=torch.bfloat16)
    A = torch.randn(R, K, device="cuda", dtype=torch.bfloat16) / K ** 0.5
    B = torch.randn(N, R, device="cuda", dtype=torch.bfloat16) * 0.05
    peft16 = lora.peft_lora(torch.nn.Sequential(copy.deepcopy(lin)), R, ALPHA, targets=("0",), fp32_adapters=False)
    peft32 = lora.peft_lora(torch.nn.Sequential(copy.deepcopy(lin)), R, ALPHA, targets=("0",), fp32_adapters=True)
    mine = ref["LoRALinear"](copy.deepcopy(lin), R, ALPHA)
    flops = 2 * M * N * K + 2 * M * R * (K + N)
    rows = {"F.linear alone (no adapter)": lambda: torch.nn.functional.linear(x, lin.weight, lin.bias),
            "peft lora.Linear, bf16 adapters": lambda: peft16(x),
            "peft lora.Linear, fp32 adapters (peft's default)": lambda: peft32(x),
            "effilab LoRALinear (one addmm)": lambda: mine(x),
            "effilab fused lora_linear (Triton)": lambda: ref["lora_linear"](x, lin.weight, lin.bias, A, B, ALPHA / R)}
    print(f"\n| LoRA linear, M={M} K={K} N={N} r={R}, bf16 | ms | TFLOP/s |\n|---|---|---|")
    times = {}
    with torch.no_grad():
        for name, fn in rows.items():
            times[name] = ms(fn)
            print(f"| {name} | {times[name]:.4f} | {flops / times[name] / 1e9:.0f} |")
    print(f"fused vs peft (bf16 adapters): {times['peft lora.Linear, bf16 adapters'] / times['effilab fused lora_linear (Triton)']:.2f}×")


def _step_fn(model, autocast: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=all(p.dtype == torch.float32 for p in params))
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 256, (BATCH, 1025), generator=g).cuda()
    x, y = tok[:, :-1].contiguous(), tok[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
    return step


def _bnb_qlora(model):
    import bitsandbytes as bnb

    def make(lin):
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=torch.bfloat16,
                              compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(lin.weight.detach().cpu(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.detach().cpu(), requires_grad=False)
        return q
    lora.adapt(model, make)
    model = model.cuda()
    return lora.peft_lora(model, R, ALPHA)


def step_builders(ref) -> dict:
    """name -> () -> (model, autocast, kind) for the five gpu-real training steps of the table."""
    cfg = GPTConfig.preset("gpu-real")
    return {
        "full fine-tuning (fp32 master, bf16 autocast)": lambda: (GPT(cfg).cuda(), True, "full"),
        "peft LoRA (fp32 base, bf16 autocast)": lambda: (lora.peft_lora(GPT(cfg).cuda(), R, ALPHA), True, None),
        "effilab LoRA (fp32 base, bf16 autocast)":
            lambda: (lora.adapt(GPT(cfg).cuda(), lambda lin: ref["LoRALinear"](lin, R, ALPHA)), True, None),
        "peft + bitsandbytes QLoRA (NF4, bf16 compute)": lambda: (_bnb_qlora(GPT(cfg)), True, None),
        "effilab QLoRA (NF4, bf16 model)":
            lambda: (_ours_qlora(ref, cfg), False, None),
    }


def build_step(build):
    """The model and its step function from one of :func:`step_builders`' entries."""
    model, autocast, kind = build()
    if kind == "full":
        model.requires_grad_(True)
    return model, _step_fn(model, autocast)


def step_table(ref) -> dict:
    builders = step_builders(ref)
    out = {}
    print(f"\n| gpu-real, batch {BATCH}×1024, r={R} on every Linear | ms / step | peak GiB |\n|---|---|---|")
    for name, build in builders.items():
        model, step = build_step(build)
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        t = ms(step, warmup=2, min_reps=5, max_reps=30, max_time_s=3.0)
        out[name] = (t, peak)
        print(f"| {name} | {t:.1f} | {peak:.2f} |")
        del model, step
        gc.collect()
        torch.cuda.empty_cache()
    return out


def _ours_qlora(ref, cfg):
    model = lora.build_gpt(cfg, device="cuda", dtype=torch.bfloat16,
                           convert=lambda block: lora.adapt(block, lambda lin: ref["QLoRALinear"](lin, R, ALPHA)))
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def main() -> int:
    print("python", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())
    ref = solution_namespace(ROOT / "solutions" / "06_lora_qlora.ipynb")
    q = nf4_table(ref)
    fused_table(ref)
    steps = step_table(ref)
    full, peft_l, ours_l, peft_q, ours_q = (steps[k] for k in steps)
    print("\n targets of the brief (issue 11):")
    for ok, line in (
        (q["quant_tbs"] >= 2.5, f"NF4 quantize ≥ 2.5 TB/s: {q['quant_tbs']:.2f} (bitsandbytes {q['bnb_quant_tbs']:.2f})"),
        (q["dequant_tbs"] >= 3.4, f"NF4 dequantize ≥ 3.4 TB/s: {q['dequant_tbs']:.2f} (bitsandbytes {q['bnb_dequant_tbs']:.2f})"),
        (ours_l[0] <= 1.05 * full[0], f"LoRA step ≤ 1.05× full: {ours_l[0] / full[0]:.3f}×"),
        (peft_l[0] >= 1.3 * ours_l[0], f"LoRA step ≥ 1.3× faster than peft: {peft_l[0] / ours_l[0]:.2f}×"),
        (peft_q[0] >= 1.4 * ours_q[0], f"QLoRA step ≥ 1.4× faster than peft + bitsandbytes: {peft_q[0] / ours_q[0]:.2f}×"),
        (ours_q[1] < ours_l[1], f"QLoRA peak below LoRA's: {ours_q[1]:.2f} GiB vs {ours_l[1]:.2f} GiB"),
    ):
        print(f"  [{'met' if ok else 'NOT met'}] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
