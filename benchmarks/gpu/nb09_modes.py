"""Notebook 09 on the GPU: the training step of the course GPT, eager against compiled, and the
speed part of the reference solution as the grader measures it.

    python benchmarks/gpu/nb09_modes.py            # from the repository root, on the GPU machine

1. One table, both rows in this run (``gpu-real``, bf16 autocast, batch 16 × 1024, fused AdamW): the
   eager step and the reference solution of exercise 4 (``torch.compile`` of the whole model, the
   anchor of issue 13: 1.24× after 24.5 s on an H200). For each: the first step's wall time
   (compile + one step), the median step time, tokens/s, MFU, and the break-even step count against
   eager. Regional compilation and the other ways of compiling the step are compared, with their
   host and idle GPU time, by ``benchmarks/gpu/nb09_regional.py``.
2. ``check("make_compiled_step", reference, "speed")`` three times: the ratio, yours / baseline ms,
   and the points the grader would give — to calibrate ``STEP_SPEED_THRESHOLD`` in
   ``effilab/grading/specs/nb09.py``.

Prints markdown; every number is measured here. Takes about a minute on an H200.
"""
from __future__ import annotations

import math
import time

import torch

import effilab  # noqa: F401  (before triton: the course's import order)
from effilab import bench, train
from effilab.compiling import break_even_steps, dynamo_logs
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb09
from effilab.models import GPT, GPTConfig
from effilab.train import make_optimizer

BATCH = nb09.SPEED_BATCH


def _inputs():
    cfg = GPTConfig.preset(nb09.SPEED_PRESET)
    model = GPT(cfg, seed=0).cuda()
    x = torch.randint(0, cfg.vocab_size, (BATCH, cfg.block_size + 1), generator=torch.Generator().manual_seed(0)).cuda()
    return model, make_optimizer(model, lr=1e-4), (x[:, :-1].contiguous(), x[:, 1:].contiguous())


def _row(name, make):
    torch._dynamo.reset()
    model, opt, batch = _inputs()
    step = make(model, opt)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with dynamo_logs():
        step(batch)
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t = bench.time_fn(lambda: step(batch), warmup=3, max_time_s=1.5)
    tokens = BATCH * model.config.block_size
    tps = tokens / (t.median_ms * 1e-3)
    mfu = train.mfu(tps, model.flops_per_token())
    del model, opt
    torch.cuda.empty_cache()
    return name, first, t.median_ms, tps, float("nan") if mfu is None else mfu


def main() -> None:
    print(f"# notebook 09 — training step on {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print(f"{nb09.SPEED_PRESET}, batch {BATCH}×1024, bf16 autocast, fused AdamW\n")
    ref = solution_namespace("solutions/09_torch_compile.ipynb")
    rows = [_row("eager", lambda m, o: (lambda b: nb09.eager_train_step(m, o, b))),
            _row("reference: torch.compile(model)", ref["make_compiled_step"])]
    eager_ms = rows[0][2]
    print("| step | first step (s) | ms / step | speed-up | tokens/s | MFU | pays after (steps) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, first, ms, tps, mfu in rows:
        compile_s = max(0.0, first - rows[0][1]) if name != "eager" else 0.0
        even = break_even_steps(compile_s, eager_ms, ms) if name != "eager" else 0.0
        print(f"| {name} | {first:.1f} | {ms:.2f} | {eager_ms / ms:.3f}× | {tps:,.0f} | {mfu:.3f} | "
              f"{'—' if name == 'eager' else ('never' if math.isinf(even) else f'{even:,.0f}')} |")
    print(f"\n## speed part of the reference (threshold {nb09.STEP_SPEED_THRESHOLD}×), 3 runs\n")
    for run in range(3):
        t0 = time.time()
        v = check("make_compiled_step", ref["make_compiled_step"], "speed", verbose=False)
        d = v.details
        print(f"run {run}: ratio {d.get('ratio', float('nan')):.3f}×  yours {d.get('yours_ms', float('nan')):.2f} ms  "
              f"eager {d.get('baseline_ms', float('nan')):.2f} ms  points {v.points}/{v.max_points}  "
              f"({time.time() - t0:.0f} s)")
        if run == 0:
            print("    " + "\n    ".join(v.report().splitlines()[1:]))


if __name__ == "__main__":
    main()
