"""GPU check of the shared training pieces (effilab.models.gpt, effilab.data, effilab.train).

Run on the course's H100 from the repository root:

    python benchmarks/train_gpu_check.py --json "$OUT/train_gpu_check.json"

What it does (about a minute on an H100; well under 4 minutes):

1. trains the ``gpu-real`` preset (GPT-2-small shape, byte vocabulary, ~86 M parameters) for 30
   steps each in fp32 (TF32 off), TF32 and bf16 autocast from the same initial weights and batches,
   and prints step time, tokens/s, model TFLOP/s, MFU (against the datasheet peak of that
   precision, and against the bf16 peak), peak memory and the loss after 30 steps: the numbers
   that seed notebook 02's thresholds;
2. measures the memory breakdown of one fp32 AdamW step (weights + grads + optimizer must be
   exactly 16 bytes per parameter) and prints it next to ``effilab.memory.training_memory``;
3. (unless ``--quick``) times bf16 steps with and without activation checkpointing of every block
   on ``gpu-real`` and ``gpu-deep16``: peak memory and step time, to seed notebook 03.

The script exits non-zero if a check fails (16N equality, non-finite or non-decreasing losses,
bf16 slower than fp32).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import effilab  # noqa: E402,F401  (before triton)
import torch  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from effilab import data as D  # noqa: E402
from effilab import train as TR  # noqa: E402
from effilab.models import GPT, GPTConfig  # noqa: E402


def gib(n):
    return None if n is None else n / 2**30


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_precision(cfg, text, precision, steps, batch_size, lr, device):
    model = GPT(cfg, seed=0)
    log = TR.train(model, text, steps=steps, batch_size=batch_size, lr=lr, device=device,
                   precision=precision, seed=0, progress=False, warmup_steps=5)
    from effilab.device import info

    mfu_bf16 = TR.mfu(log.tokens_per_s, log.flops_per_token, info(), dtype=torch.bfloat16)
    row = dict(
        precision=precision,
        step_ms=log.median_step_s * 1e3,
        tokens_per_s=log.tokens_per_s,
        model_tflops=log.tflops,
        mfu=log.mfu,
        mfu_vs_bf16_peak=mfu_bf16,
        peak_mem_gib=gib(log.peak_memory_bytes),
        loss_first=log.losses[0],
        loss_last10=log.final_loss(10),
        first_step_ms=log.step_times_s[0] * 1e3,
    )
    del model, log
    free()
    return row


def run_checkpointing(preset, text, steps, batch_size, use_ckpt, device):
    cfg = GPTConfig.preset(preset)
    model = GPT(cfg, seed=0)
    if use_ckpt:
        model.set_block_wrapper(lambda block, x: checkpoint(block, x, use_reentrant=False))
    log = TR.train(model, text, steps=steps, batch_size=batch_size, lr=3e-4, device=device,
                   precision="bf16", seed=0, progress=False, timing_warmup=3)
    row = dict(preset=preset, checkpointing=use_ckpt, batch_size=batch_size,
               step_ms=log.median_step_s * 1e3, tokens_per_s=log.tokens_per_s, mfu=log.mfu,
               peak_mem_gib=gib(log.peak_memory_bytes), loss_last=log.losses[-1])
    del model, log
    free()
    return row


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpu-real")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--quick", action="store_true", help="skip the checkpointing section")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--device", default="cuda",
                    help="cuda (the check); cpu only to smoke-test the script with --preset cpu-tiny")
    ap.add_argument("--ckpt-presets", default="gpu-real,gpu-deep16")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: this check is for the course's GPU machine")
        return 2
    from effilab.device import info

    t_start = time.perf_counter()
    dev = info()
    print(dev.summary())
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    text = D.corpus(4_000_000)
    ci = D.corpus_info(text, 4_000_000)
    print(f"corpus: {ci['n_bytes']:,} bytes of the Python {ci['python']} stdlib (sha256 {ci['sha256']})")
    cfg = GPTConfig.preset(args.preset)
    n = GPT.param_formula(cfg)["total"]
    print(f"model: {args.preset} {cfg}  ({n / 1e6:.1f} M parameters)")
    print(f"training: {args.steps} steps of batch {args.batch_size} x {cfg.block_size} tokens, AdamW lr {args.lr}")
    failures: list[str] = []
    results: dict = {"device": dev.name, "torch": torch.__version__, "python": platform.python_version(),
                     "corpus": ci, "preset": args.preset, "config": cfg.to_dict(), "n_params": n,
                     "steps": args.steps, "batch_size": args.batch_size}

    # 1. precisions ---------------------------------------------------------------------------
    rows = []
    for p in args.precisions.split(","):
        row = run_precision(cfg, text, p.strip(), args.steps, args.batch_size, args.lr, args.device)
        rows.append(row)
        print(f"  {p:>5}: {row['step_ms']:.1f} ms/step, loss {row['loss_first']:.3f} -> "
              f"{row['loss_last10']:.3f}", flush=True)
        if not all(math.isfinite(row[k]) for k in ("loss_first", "loss_last10")):
            failures.append(f"{p}: non-finite loss")
        elif not row["loss_last10"] < row["loss_first"] - 0.5:
            failures.append(f"{p}: loss did not drop ({row['loss_first']:.3f} -> {row['loss_last10']:.3f})")
    results["precisions"] = rows
    print()
    hdr = (f"{'precision':>9} | {'step ms':>8} | {'tokens/s':>10} | {'TFLOP/s':>7} | {'MFU':>6} | "
           f"{'MFU/bf16pk':>10} | {'peak GiB':>8} | {'loss end':>8} | {'1st step ms':>11}")
    print(hdr)
    print("-" * len(hdr))
    # loss end: mean training loss of the last 10 steps
    for r in rows:
        print(f"{r['precision']:>9} | {r['step_ms']:8.1f} | {r['tokens_per_s']:10,.0f} | "
              f"{r['model_tflops']:7.1f} | {pct(r['mfu']):>6} | {pct(r['mfu_vs_bf16_peak']):>10} | "
              f"{fmt(r['peak_mem_gib'], '8.2f'):>8} | {r['loss_last10']:8.3f} | {r['first_step_ms']:11.0f}")
    by = {r["precision"]: r for r in rows}
    if "fp32" in by and "bf16" in by:
        speedup = by["fp32"]["step_ms"] / by["bf16"]["step_ms"]
        print(f"\nbf16 autocast vs fp32: {speedup:.2f}x faster per step")
        results["bf16_speedup_vs_fp32"] = speedup
        if speedup < 1.0:
            failures.append(f"bf16 slower than fp32 ({speedup:.2f}x)")
    if "fp32" in by and "tf32" in by:
        results["tf32_speedup_vs_fp32"] = by["fp32"]["step_ms"] / by["tf32"]["step_ms"]
        print(f"TF32 vs fp32: {results['tf32_speedup_vs_fp32']:.2f}x faster per step")

    # 2. memory breakdown ---------------------------------------------------------------------
    from effilab.memory import format_bytes, training_memory

    model = GPT(cfg, seed=0)
    batch = D.get_batch(text, 4, cfg.block_size, seed=0)
    mb = TR.measure_memory_breakdown(model, batch, lambda ps: torch.optim.AdamW(ps, lr=1e-4),
                                     device=args.device)
    del model
    free()
    formula = training_memory(n, "fp32_adam", activation_bytes=mb["activations"])
    state = mb["weights"] + mb["grads"] + mb["optimizer"]
    print(f"\nmemory of one fp32 AdamW step, batch 4 x {cfg.block_size}:")
    for k in ("weights", "grads", "optimizer", "master_weights", "activations"):
        print(f"  {k:>14}: measured {format_bytes(mb[k]):>11}   formula {format_bytes(formula[k]):>11}")
    print(f"  weights+grads+optimizer = {state:,.0f} B = {state / n:.4f} bytes/param "
          f"(optimizer step counters: {mb.optimizer_scalars} B)")
    results["memory_breakdown"] = {**dict(mb), "optimizer_scalars": mb.optimizer_scalars,
                                   "method": mb.activation_method}
    if state != 16 * n:
        failures.append(f"weights+grads+optimizer = {state} != 16 N = {16 * n}")

    # 3. checkpointing ------------------------------------------------------------------------
    if not args.quick:
        print("\nbf16, activation checkpointing of every block (torch.utils.checkpoint, non-reentrant):")
        ck = []
        for preset in args.ckpt_presets.split(","):
            for use in (False, True):
                r = run_checkpointing(preset, text, 10, args.batch_size, use, args.device)
                ck.append(r)
                print(f"  {preset:>10} ckpt={str(use):>5}: {r['step_ms']:7.1f} ms/step, "
                      f"MFU {pct(r['mfu'])}, peak {fmt(r['peak_mem_gib'], '.2f')} GiB",
                      flush=True)
        results["checkpointing"] = ck

    results["failures"] = failures
    results["wall_s"] = time.perf_counter() - t_start
    print(f"\ntotal {results['wall_s']:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"wrote {args.json}")
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
