"""Why a compiled training step of the course GPT is or is not faster than eager: one run, several ways
of compiling, each with its step time, its host time, its GPU kernel time and dynamo's counters.

    python benchmarks/gpu/nb09_regional.py [--only NAME …]      # from the repository root, on a GPU

Rows (``gpu-real``, bf16 autocast, batch 16 × 1024, fused AdamW, the eager step of ``specs/nb09``):

* ``eager``; ``whole``: ``torch.compile(model)``; ``regional``: ``block.compile()`` for every block, the
  rest eager; ``regional+head``: the blocks and a compiled final LayerNorm + head + loss (the first
  reference solution of exercise 4); ``whole+opt``: the whole model and ``torch.compile`` of the
  optimizer step; ``whole+ca``: the whole model with compiled autograd (the backward traced as one
  graph).

Columns: the median step time (CUDA events, ``effilab.bench.time_fn``); the host's own time per step
(the step returns before the GPU finishes: host time ≈ step time means the step is launch-bound);
the sum of GPU kernel times of one step (``torch.profiler``: step time − kernel time is the GPU's idle
time); frames compiled, recompiles and unique graphs (``torch._dynamo.utils.counters``); the first
step's wall time. Then the ten kernels with the most GPU time per row, to see what compiling fused.
Prints markdown.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import effilab  # noqa: F401  (before triton: the course's import order)
from effilab import bench
from effilab.grading.specs import nb09
from effilab.models import GPT, GPTConfig
from effilab.train import make_optimizer
import torch.nn.functional as F

BATCH = nb09.SPEED_BATCH


def _setup():
    cfg = GPTConfig.preset(nb09.SPEED_PRESET)
    model = GPT(cfg, seed=0).cuda()
    x = torch.randint(0, cfg.vocab_size, (BATCH, cfg.block_size + 1),
                      generator=torch.Generator().manual_seed(0)).cuda()
    return model, make_optimizer(model, lr=1e-4), (x[:, :-1].contiguous(), x[:, 1:].contiguous())


def eager(model, opt):
    return lambda b: nb09.eager_train_step(model, opt, b)


def whole(model, opt):
    m = torch.compile(model)
    return lambda b: nb09.eager_train_step(m, opt, b)


def regional(model, opt):
    for block in model.blocks:
        block.compile()
    return lambda b: nb09.eager_train_step(model, opt, b)


def regional_head(model, opt):
    for block in model.blocks:
        block.compile()

    @torch.compile
    def head_and_loss(x, targets):
        logits = model.lm_head(model.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def step(batch):
        idx, targets = batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = model.drop(model.wte(idx) + model.wpe(pos))
            loss = head_and_loss(model.forward_blocks(x), targets)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def whole_opt(model, opt):
    m = torch.compile(model)
    opt_step = torch.compile(opt.step)

    def step(batch):
        idx, targets = batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(idx, targets)[1]
        loss.backward()
        opt_step()
        return loss.detach()
    return step


def whole_ca(model, opt):
    m = torch.compile(model)

    def step(batch):
        idx, targets = batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(idx, targets)[1]
        with torch._dynamo.compiled_autograd._enable(torch.compile):
            loss.backward()
        opt.step()
        return loss.detach()
    return step


ROWS = {"eager": eager, "whole": whole, "regional": regional, "regional+head": regional_head,
        "whole+opt": whole_opt, "whole+ca": whole_ca}


def _host_ms(step, batch, n=10) -> float:
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        step(batch)
        ts.append((time.perf_counter() - t) * 1e3)
        torch.cuda.synchronize()
    return statistics.median(ts)


def row(name):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model, opt, batch = _setup()
    step = ROWS[name](model, opt)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(batch)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t = bench.time_fn(lambda: step(batch), warmup=3, max_time_s=2.0)
    host = _host_ms(step, batch)
    kern, top = bench.kernel_times(lambda: step(batch))
    stats = dict(frames=counters["stats"]["unique_graphs"], ok=counters["frames"]["ok"],
                 recompiles=sum(counters["recompiles"].values()) if counters["recompiles"] else 0,
                 breaks=sum(counters["graph_break"].values()))
    del model, opt, step
    torch.cuda.empty_cache()
    return dict(name=name, first=first, ms=t.median_ms, spread=t.spread, host=host, kern=kern, top=top, **stats)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args(argv)
    names = [n for n in ROWS if not args.only or n in args.only]
    print(f"# compiled training steps on {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print(f"{nb09.SPEED_PRESET}, batch {BATCH}×1024, bf16 autocast, fused AdamW\n")
    out = []
    for n in names:
        try:
            out.append(row(n))
        except Exception as e:  # one failing way of compiling must not hide the others
            print(f"- {n}: FAILED {type(e).__name__}: {str(e)[:400]}")
    base = next((r["ms"] for r in out if r["name"] == "eager"), None)
    print("| step | ms / step (spread) | × eager | host ms / step | GPU kernel ms / step | idle ms | "
          "unique graphs | frames ok | recompiles | graph breaks | first step s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        sp = f"{base / r['ms']:.3f}×" if base else "—"
        print(f"| {r['name']} | {r['ms']:.2f} ({r['spread']:.1%}) | {sp} | {r['host']:.2f} | {r['kern']:.2f} | "
              f"{r['ms'] - r['kern']:.2f} | {r['frames']} | {r['ok']} | {r['recompiles']} | {r['breaks']} | {r['first']:.1f} |")
    for r in out:
        print(f"\n## {r['name']}: the ten kernels with most GPU time per step\n")
        for k, ms, c in r["top"][:10]:
            print(f"- {ms:7.3f} ms  ×{c:<4} {k[:110]}")


if __name__ == "__main__":
    main()
