"""Exercise specs of notebook 03 — gradient checkpointing.

1. ``checkpoint(fn, *args)``: an own activation checkpoint as a ``torch.autograd.Function``: the
   forward runs ``fn`` without keeping its intermediates, the backward recomputes it. Graded on the
   tiny GPT with every block checkpointed: loss and every gradient equal to plain backprop, with
   dropout off and **with dropout on** (the recomputation must replay the same dropout masks: save
   and restore the CPU RNG state, and the CUDA one on a GPU), a function of several tensors, and
   the saved-tensor accounting (only the inputs are kept).
2. ``segments_for(n_layers)``: the √L policy — about √L contiguous segments of near-equal size.
3. ``best_n_segments(n_layers, layer_bytes, input_bytes)``: the memory model's answer — the
   segment count that minimises ``k · input_bytes + ceil(L / k) · layer_bytes``.
4. ``checkpointed_blocks(model, x, segments)``: run the GPT's blocks with each segment checkpointed
   as one unit. Correctness (gradients equal), memory (peak activation memory of a training step at
   L = 16 at most 1/3 of the un-checkpointed one: on a CPU from saved-tensor accounting over forward
   *and* backward, recomputation included; on a GPU from the allocator's peak) and speed (GPU
   only: a step at most 40 % slower than without checkpointing).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ...models.gpt import GPT, GPTConfig
from ..compare import compare_tensors
from ...memory import peak_saved_bytes, SavedTensorMeter  # noqa: F401  (re-exported: tests and nb04 use them)
from ..calls import Problem, one_thread, student_error
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import MemoryPart, SpeedPart

NOTEBOOK = "03_gradient_checkpointing"
MEMORY_RATIO = 1 / 3  # peak activation memory with √L checkpointing / without, at L = 16
TIME_OVERHEAD = 0.40  # a checkpointed step may be at most 40 % slower (GPU)
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7

__all__ = ["one_thread", "peak_saved_bytes", "SavedTensorMeter", "reference_segments", "MEMORY_RATIO", "TIME_OVERHEAD"]


# ==============================================================================================
# Shared helpers: the GPT scenario
# ==============================================================================================
def reference_segments(n_layers: int) -> list[tuple[int, int]]:
    """round(√L) contiguous segments whose sizes differ by at most one (larger ones first)."""
    k = max(1, min(n_layers, round(math.sqrt(n_layers))))
    bounds = [0]
    for j in range(k):
        bounds.append(bounds[-1] + n_layers // k + int(j < n_layers % k))
    return [(bounds[j], bounds[j + 1]) for j in range(k)]


def _batch(s: int, B: int, T: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_007 + s)
    x = torch.randint(0, 256, (B, T), generator=g)
    y = torch.randint(0, 256, (B, T), generator=g)
    return x.to(dev), y.to(dev)


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _gpt_step(model: GPT, x, y, seed: int, autocast: bool = False):
    """One forward + backward from a fixed RNG state; returns (loss, {name: grad})."""
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(seed)
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(x, y)
                loss.backward()  # (graded step)
        else:
            _, loss = model(x, y)
            loss.backward()  # (graded step)
    return loss.detach(), {n: (None if p.grad is None else p.grad.detach().clone())
                           for n, p in model.named_parameters()}


def _compare_step(got, want) -> str | None:
    (loss_g, grads_g), (loss_w, grads_w) = got, want
    if not torch.allclose(loss_g.float(), loss_w.float(), rtol=1e-5, atol=1e-6):
        return f"the loss differs: yours {float(loss_g):.6f}, without checkpointing {float(loss_w):.6f}"
    for name, gw in grads_w.items():
        gg = grads_g[name]
        if gg is None:
            return (f"no gradient reached {name}: your checkpoint's output is cut off from the graph "
                    "(does backward return the inputs' gradients, and do the parameters inside fn get theirs?)")
        # on a GPU, attention kernels may reduce in another order from one call to the next: a looser bound
        rtol, atol = (GRAD_RTOL, GRAD_ATOL) if default_device().type == "cpu" else (1e-3, 1e-5)
        problem = compare_tensors(gg, gw, rtol=rtol, atol=atol, name=f"grad of {name}", max_show=3)
        if problem:
            return problem
    return None


def _with_blocks(model: GPT, run_blocks: Callable | None) -> GPT:
    """Route the model's residual stream through ``run_blocks(model, x)`` (None: the plain blocks)."""
    if run_blocks is None:
        model.__dict__.pop("forward_blocks", None)
    else:
        model.forward_blocks = lambda x: run_blocks(model, x)
    return model


# ==============================================================================================
# 1. checkpoint
# ==============================================================================================
@register
class Checkpoint(Exercise):
    single_thread = True
    name = "checkpoint"
    notebook = NOTEBOOK
    title = "An own activation checkpoint (torch.autograd.Function), RNG-preserving"
    points = {"correctness": 4.0}
    signature = "checkpoint(fn, *args) -> fn(*args), recomputed in backward"

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        shapes = [(4, 64), (3, 37), (2, 50), (5, 23), (1, 61)]
        layers = [2, 3, 2, 4, 3]
        plain = [Case(f"GPT {L} blocks, batch {B}×{T}, seed {s}", meta=dict(kind="gpt", dropout=0.0, s=s, B=B, T=T, L=L))
                 for s, (B, T), L in zip(seeds, shapes, layers)]
        drop = [Case(f"GPT {L} blocks, dropout {p}, batch {B}×{T}, seed {s}",
                     meta=dict(kind="gpt", dropout=p, s=s, B=B, T=T, L=L))
                for s, (B, T), L, p in zip(seeds, shapes, layers, [0.1, 0.2, 0.1, 0.3, 0.1])]
        multi = [Case(f"fn(a, w, b) with b needing no gradient, seed {s}", meta=dict(kind="multi", s=s))
                 for s in seeds]
        saved = [Case(f"GPT {L} blocks, batch {B}×{T}: bytes saved for backward",
                      meta=dict(kind="saved", dropout=0.0, s=s, B=B, T=T, L=L))
                 for s, (B, T), L in zip(seeds, shapes, layers)]
        return [
            Group("no dropout: same loss and gradients as without checkpointing (every GPT block checkpointed)",
                  plain, "forward: run fn under torch.no_grad() and ctx.save_for_backward(*args); backward: "
                         "detach the saved inputs, requires_grad_(), recompute fn under torch.enable_grad(), "
                         "torch.autograd.backward(outputs, grad_outputs) and return the inputs' .grad "
                         "(None for fn itself)"),
            Group("dropout > 0: the recomputation replays the same dropout masks (gradients equal)", drop,
                  "the recomputation draws new random numbers unless you replay them: save "
                  "torch.get_rng_state() (and torch.cuda.get_rng_state() on a GPU) in forward, and in "
                  "backward restore it inside torch.random.fork_rng() before recomputing"),
            Group("a function of several tensors, one of which needs no gradient", multi,
                  "return one gradient per input of forward: None for fn, x.grad for each tensor input "
                  "(None where the input does not require grad)"),
            Group("keeps only its inputs for backward (no intermediate activations)", saved,
                  "run fn under torch.no_grad() in forward: only the tensors you pass to "
                  "ctx.save_for_backward may stay alive until backward"),
        ]

    def run(self, fn, case):
        return self._run(fn, case.meta, use=True)

    def expect(self, case):
        """The same computation without checkpointing, on the grading device (dropout masks and
        reduction orders are the device's)."""
        return self._run(None, case.meta, use=False)

    def _run(self, ckpt, m, use: bool):
        dev = default_device()
        if m["kind"] == "multi":
            g = torch.Generator().manual_seed(m["s"])
            a = torch.randn(7, 33, generator=g).to(dev).requires_grad_()
            w = torch.randn(33, 19, generator=g).to(dev).requires_grad_()
            b = torch.randn(7, 19, generator=g).to(dev)

            def f(a, w, b):
                return torch.nn.functional.gelu(a @ w) * b

            try:
                out = ckpt(f, a, w, b) if use else f(a, w, b)
                if not isinstance(out, torch.Tensor):
                    return Problem("checkpoint(fn, *args) must return what fn returns (a tensor here), got "
                                   f"{type(out).__name__}")
                (out.square().sum()).backward()
            except Exception as exc:  # the student's bug, reported, never raised
                return student_error(exc)
            return {"output": out.detach(), "grad of a": a.grad, "grad of w": w.grad}
        cfg = GPTConfig.preset("cpu-tiny", n_layer=m["L"], dropout=m["dropout"])
        x, y = _batch(m["s"], m["B"], m["T"], dev)
        model = GPT(cfg, seed=m["s"]).to(dev).train()
        try:
            if m["kind"] == "saved":
                from ...memory import saved_activation_bytes

                if use:
                    model.set_block_wrapper(lambda block, h: ckpt(block, h))
                rep = saved_activation_bytes(lambda: model(x, y)[1], model=model)
                in_blocks = sum(v for k, v in rep.by_module.items() if k.startswith("blocks."))
                return {"saved": int(rep.total_bytes), "outside": int(rep.total_bytes - in_blocks)}
            if use:
                model.set_block_wrapper(lambda block, h: ckpt(block, h))
            loss, grads = _gpt_step(model, x, y, seed=m["s"])
        except Exception as exc:
            return student_error(exc)
        return {"loss": loss, "grads": grads}

    def judge(self, out, case, expected=None):
        m = case.meta
        expected = expected if expected is not None else self.expect(case)
        if m["kind"] == "multi":
            for nm in ("output", "grad of a", "grad of w"):
                if out[nm] is None:
                    return f"{nm} is None: no gradient reached that input"
                p = compare_tensors(out[nm], expected[nm], rtol=GRAD_RTOL, atol=1e-6, name=nm, max_show=3)
                if p:
                    return p
            return None
        if m["kind"] == "saved":
            cfg = GPTConfig.preset("cpu-tiny", n_layer=m["L"])
            inputs = m["L"] * m["B"] * m["T"] * cfg.n_embd * 4
            allowed = expected["outside"] + inputs + 4096
            if out["saved"] > allowed:
                return (f"{out['saved']} bytes saved for backward with your checkpoint, at most {allowed} "
                        f"allowed (the blocks' inputs, {inputs} B, plus what lies outside the blocks); "
                        f"without checkpointing {expected['saved']} B — your forward keeps intermediates")
            return None
        return _compare_step((out["loss"], out["grads"]), (expected["loss"], expected["grads"]))


# ==============================================================================================
# 2. segments_for
# ==============================================================================================
@register
class SegmentsFor(Exercise):
    name = "segments_for"
    notebook = NOTEBOOK
    title = "The √L segment policy"
    points = {"correctness": 1.0}
    signature = "segments_for(n_layers: int) -> list[tuple[int, int]]  # (start, end), end exclusive"

    def cases(self, suite, key):
        g = torch.Generator().manual_seed(case_seeds(suite, key)[0])
        small = [1, 2, 3, 4, 5]
        square = [9, 16, 25, 36, 64]
        other = sorted(set(int(v) for v in torch.randint(6, 200, (5,), generator=g)))
        hint = ("k = round(math.sqrt(n_layers)) segments; sizes n_layers // k or one more; consecutive "
                "(start, end) pairs that start at 0, end at n_layers and touch each other")
        return [Group(name, [Case(f"n_layers = {n}", (n,)) for n in ns], hint)
                for name, ns in (("small depths (1 … 5)", small), ("perfect squares", square),
                                 ("other depths", other))]

    def judge(self, out, case, expected=None):
        (n,) = case.args
        try:
            segs = [(int(a), int(b)) for a, b in out]
        except Exception:
            return f"return a list of (start, end) pairs, got {out!r}"[:300]
        if not segs or segs[0][0] != 0 or segs[-1][1] != n or any(b != c for (_, b), (c, _) in zip(segs, segs[1:])):
            return f"yours {segs}: the segments must be consecutive, start at 0 and end at {n} (end exclusive)"
        if any(b <= a for a, b in segs):
            return f"yours {segs}: every segment must hold at least one layer"
        k, r = len(segs), math.sqrt(n)
        if k not in {max(1, math.floor(r)), math.ceil(r), round(r)}:
            return f"yours has {k} segments; about √{n} = {r:.2f} expected ({reference_segments(n)})"
        sizes = [b - a for a, b in segs]
        if max(sizes) - min(sizes) > 1:
            return f"segment sizes {sizes} differ by more than one; e.g. {reference_segments(n)}"
        return None


# ==============================================================================================
# 3. best_n_segments: the memory model
# ==============================================================================================
def model_peak_bytes(n_layers: int, k: int, layer_bytes: float, input_bytes: float) -> float:
    """Peak activation bytes with k segments: k segment inputs + one segment's layers recomputed."""
    return k * input_bytes + (-(-n_layers // k)) * layer_bytes


def expected_best_n_segments(n_layers: int, layer_bytes: float, input_bytes: float) -> int:
    best = min(range(1, n_layers + 1), key=lambda k: (model_peak_bytes(n_layers, k, layer_bytes, input_bytes), k))
    return best


@register
class BestNSegments(Exercise):
    name = "best_n_segments"
    notebook = NOTEBOOK
    title = "The memory model: the best number of segments"
    points = {"correctness": 1.0}
    signature = "best_n_segments(n_layers: int, layer_bytes: float, input_bytes: float) -> int"

    def cases(self, suite, key):
        out = []
        g = torch.Generator().manual_seed(case_seeds(suite, key)[0] + 17)
        for name, ratio_lo, ratio_hi in (("a layer keeps as much as its input (a = b)", 1, 1),
                                         ("a layer keeps far more than its input (a ≫ b, a Transformer)", 8, 40),
                                         ("inputs dearer than layers (a < b)", 0.05, 0.5)):
            cases = []
            for i in range(6):
                n = int(torch.randint(2, 97, (1,), generator=g))
                b = float(torch.randint(1, 64, (1,), generator=g)) * 2**20
                a = b * (ratio_lo + (ratio_hi - ratio_lo) * float(torch.rand(1, generator=g)))
                cases.append(Case(f"n_layers={n}, layer_bytes={a:.6g}, input_bytes={b:.6g}", (n, a, b)))
            out.append(Group(name, cases, "try every k from 1 to n_layers: peak(k) = k · input_bytes + "
                                          "ceil(n_layers / k) · layer_bytes; keep the smallest k on a tie"))
        return out

    def judge(self, out, case, expected=None):
        n, a, b = case.args
        e = expected_best_n_segments(n, a, b)
        if isinstance(out, bool) or not isinstance(out, int) and not (isinstance(out, float) and out.is_integer()):
            return f"return an int, got {out!r}"
        if int(out) != e:
            mine = model_peak_bytes(n, int(out), a, b) if 1 <= int(out) <= n else float("nan")
            return (f"yours {int(out)} (peak {mine:.6g} B), expected {e} (peak {model_peak_bytes(n, e, a, b):.6g} B)")
        return None


# ==============================================================================================
# 4. checkpointed_blocks: √L segments on the GPT; memory and speed
# ==============================================================================================
# The GPU measurement: 16 blocks of GPT-2-small width, a batch of 8 × 1024 tokens, bf16 autocast
GPU_PRESET, GPU_BATCH = "gpu-deep16", 8
CPU_MEMORY_CFG = dict(n_layer=16)  # cpu-tiny with 16 blocks
CPU_MEMORY_BATCH = (4, 64)


@register
class CheckpointedBlocks(Exercise):
    single_thread = True
    name = "checkpointed_blocks"
    notebook = NOTEBOOK
    title = "Checkpoint the GPT by segments"
    points = {"correctness": 2.0, "memory": 2.0, "speed": 1.0}
    signature = "checkpointed_blocks(model: GPT, x: Tensor[B, T, C], segments: list[(start, end)]) -> Tensor[B, T, C]"

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        specs = {
            "one segment per block": [(L, [(i, i + 1) for i in range(L)]) for L in (2, 3, 4, 5, 3)],
            "√L segments (16 blocks in 4 segments, 9 in 3, …)": [(L, reference_segments(L)) for L in (16, 9, 7, 4, 12)],
            "uneven segments given by the caller": [(7, [(0, 3), (3, 5), (5, 7)]), (5, [(0, 1), (1, 5)]),
                                                    (6, [(0, 4), (4, 6)]), (4, [(0, 4)]), (8, [(0, 2), (2, 7), (7, 8)])],
        }
        hint = ("for each (start, end): define run(h) that applies model.blocks[start:end] in order, then "
                "x = checkpoint(run, x); your checkpoint from exercise 1 (or torch.utils.checkpoint) does the rest")
        out = []
        for gname, items in specs.items():
            cases = [Case(f"{L} blocks, segments {segs}, seed {s}", meta=dict(L=L, segs=segs, s=s))
                     for s, (L, segs) in zip(seeds, items)]
            out.append(Group(gname, cases, hint))
        return out

    def run(self, fn, case):
        return self._step(fn, case.meta)

    def expect(self, case):
        return self._step(None, case.meta)

    @staticmethod
    def _step(fn, m):
        """One training step of the tiny GPT with ``fn`` running the blocks (None: the plain blocks)."""
        dev = default_device()
        try:
            model = GPT(GPTConfig.preset("cpu-tiny", n_layer=m["L"]), seed=m["s"]).to(dev).train()
            x, y = _batch(m["s"], 3, 40, dev)
            if fn is not None:
                _with_blocks(model, lambda mod, h: fn(mod, h, list(m["segs"])))
            loss, grads = _gpt_step(model, x, y, m["s"])
        except Exception as exc:
            return student_error(exc)
        return {"loss": loss, "grads": grads}

    def judge(self, out, case, expected=None):
        expected = expected if expected is not None else self.expect(case)
        return _compare_step((out["loss"], out["grads"]), (expected["loss"], expected["grads"]))

    # -- memory and speed: a training step of a 16-block GPT ---------------------------------------
    @staticmethod
    def _scenario(key, for_speed: bool = False) -> Callable[[], dict]:
        s = key.derive("memory" if not for_speed else "speed")

        def inputs() -> dict:
            on_gpu = torch.cuda.is_available()
            cfg = GPTConfig.preset(GPU_PRESET) if on_gpu else GPTConfig.preset("cpu-tiny", **CPU_MEMORY_CFG)
            B, T = (GPU_BATCH, cfg.block_size) if on_gpu else CPU_MEMORY_BATCH
            dev = default_device()
            x, y = _batch(s, B, T, dev)
            return {"model": GPT(cfg, seed=s).to(dev).train(), "x": x, "y": y,
                    "segs": reference_segments(cfg.n_layer), "gpu": on_gpu, "B": B, "T": T}
        return inputs

    @staticmethod
    def _training_step(fn, inp) -> Callable[[], torch.Tensor]:
        """The measured call: zero the gradients, forward and backward with ``fn`` running the blocks."""
        model, x, y, segs = inp["model"], inp["x"], inp["y"], inp["segs"]

        def go():
            model.zero_grad(set_to_none=False)  # after the first step: gradients stay allocated, not measured
            _with_blocks(model, (lambda mod, h: fn(mod, h, segs)) if fn is not None else None)
            try:
                if inp["gpu"]:
                    # cache_enabled=False: autocast's cache of bf16 weight copies is not activation
                    # memory (it is the same with or without checkpointing) and would blur the ratio
                    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                        _, loss = model(x, y)
                        loss.backward()  # (graded step)
                else:
                    _, loss = model(x, y)
                    loss.backward()  # (graded step)
            finally:
                _with_blocks(model, None)
            return loss.detach()
        return go

    def memory_part(self, key):
        def check(out, inp):
            want = _gpt_step(inp["model"], inp["x"], inp["y"], 1, autocast=inp["gpu"])
            got = (out["loss"], out["grads"])
            return _loose_compare(got, want) if inp["gpu"] else _compare_step(got, want)

        on_gpu = torch.cuda.is_available()
        how = (f"peak_memory of a training step beyond weights and gradients, {GPU_PRESET}, batch {GPU_BATCH}×1024, "
               "bf16 autocast (weight-cast cache off)" if on_gpu else
               "peak bytes saved for backward over forward + backward (recomputation included), cpu-tiny with "
               f"{CPU_MEMORY_CFG['n_layer']} blocks, batch {CPU_MEMORY_BATCH[0]}×{CPU_MEMORY_BATCH[1]}")
        return MemoryPart(
            inputs=self._scenario(key), call=self._training_step, check=check, ratio=MEMORY_RATIO, meter="auto",
            output=lambda inp, loss: {"loss": loss, "grads": {n: p.grad for n, p in inp["model"].named_parameters()}},
            model=lambda inp: inp["model"], what=how, context=one_thread,
            extra={"segments": reference_segments(16), "device": "cuda" if on_gpu else "cpu"},
            advice="checkpoint each segment as one unit; inside it nothing may be kept — and do not keep "
                   "references to activations yourself")

    def speed_part(self, key):
        return SpeedPart(
            inputs=self._scenario(key, for_speed=True), call=self._training_step, baseline=None,
            threshold=1.0 / (1.0 + TIME_OVERHEAD), mutate=False, baseline_name="no checkpointing",
            explain=lambda r: f"time overhead {100 * (1 / r - 1):.1f} % (at most {100 * TIME_OVERHEAD:.0f} %)",
            gate=Case("16 blocks in √L segments (tiny GPT on the GPU)",
                      meta=dict(L=16, segs=reference_segments(16), s=0)),
            cpu_note=f"On a GPU a checkpointed training step may take at most {1 + TIME_OVERHEAD:.2f}× the plain one "
                     f"({GPU_PRESET}, √L segments).",
            advice="checkpoint whole segments (one recomputation per block, not more); recompute under the "
                   "forward's autocast state (save torch.is_autocast_enabled / get_autocast_dtype in ctx: backward "
                   "runs outside the caller's autocast, and an fp32 recomputation is several times slower); avoid "
                   "extra copies or .item() syncs in your checkpoint")


def _loose_compare(got, want) -> str | None:
    """bf16 autocast on a GPU: the same computation, compared with bf16-level tolerance."""
    (lg, gg), (lw, gw) = got, want
    if not torch.allclose(lg.float(), lw.float(), rtol=2e-2, atol=1e-3):
        return f"the loss differs: yours {float(lg):.5f}, without checkpointing {float(lw):.5f}"
    for n, w in gw.items():
        if gg[n] is None:
            return f"no gradient reached {n}"
        err = (gg[n].float() - w.float()).norm() / w.float().norm().clamp(min=1e-12)
        if float(err) > 5e-2:
            return f"grad of {n}: relative error {float(err):.3g}"
    return None
