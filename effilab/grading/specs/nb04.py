"""Exercise specs of notebook 04 — gradient accumulation.

1. ``accumulate_gradients(model, micro_batches)``: forward and backward one micro-batch at a time
   so that the accumulated ``.grad`` equals the gradient of the full batch's mean token loss —
   the sum of token losses over the **total** token count of all micro-batches, not a mean of the
   micro-batches' means. Graded on uneven micro-batches of variable-length, right-padded sequences.
   Memory part: peak activation memory of the accumulated step at most ``MEMORY_BUDGET`` of the
   full-batch step's (4 equal micro-batches; CPU: saved-tensor accounting over forward and backward;
   GPU: the allocator's peak).
2. ``scaled_lr(base_lr, base_batch, new_batch, rule)``: the linear and square-root scaling rules.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ...data import variable_length_batch
from ...models.gpt import GPT, GPTConfig
from ..compare import compare_tensors
from ..calls import Problem, as_float, call_student, clone, mutated, one_thread
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import MemoryPart

NOTEBOOK = "04_gradient_accumulation"
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7
N_MICRO = 4
MEMORY_BUDGET = 0.40  # peak activation memory of 4 micro-batches / of the full batch (ideal 0.25)
GPU_PRESET, GPU_BATCH, GPU_LEN = "gpu-real", 16, 1024
CPU_MEM_LAYERS, CPU_MEM_BATCH, CPU_MEM_LEN = 4, 16, 64




def _data(s: int) -> torch.Tensor:
    return torch.randint(0, 256, (20_000,), generator=torch.Generator().manual_seed(77 + s), dtype=torch.uint8)


def make_micro_batches(s: int, sizes, max_lens, min_lens=None, device="cpu"):
    """Micro-batches (x, y, mask) of ``sizes[i]`` sequences right-padded to ``max_lens[i]``."""
    data = _data(s)
    min_lens = min_lens or [None] * len(sizes)
    return [variable_length_batch(data, b, T, mn, seed=1000 * s + i, device=device)
            for i, (b, T, mn) in enumerate(zip(sizes, max_lens, min_lens))]


def full_batch(micro_batches):
    """Concatenate micro-batches, right-padding each to the longest (padding never counts)."""
    T = max(x.shape[1] for x, _, _ in micro_batches)

    def pad(t):
        return torch.nn.functional.pad(t, (0, T - t.shape[1]))

    return tuple(torch.cat([pad(mb[i]) for mb in micro_batches]) for i in range(3))


def reference_gradients(model: GPT, micro_batches):
    """(loss, {name: grad}) of the full batch's mean token loss, in one forward and backward."""
    x, y, mask = full_batch(micro_batches)
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y, loss_mask=mask)
    loss.backward()  # the full batch in one step
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@register
class AccumulateGradients(Exercise):
    single_thread = True
    name = "accumulate_gradients"
    notebook = NOTEBOOK
    title = "Gradient accumulation over uneven micro-batches, normalised by the total token count"
    points = {"correctness": 3.0, "memory": 1.0}
    signature = "accumulate_gradients(model: GPT, micro_batches: list[(x, y, mask)]) -> float (the mean token loss)"

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        layouts = {
            "a single micro-batch (the full batch itself)":
                [([b], [T], None) for b, T in ((4, 64), (3, 40), (6, 33), (1, 64), (5, 17))],
            "equal micro-batches of full-length sequences (equal token counts)":
                [([2] * k, [T] * k, [T] * k) for k, T in ((2, 64), (4, 32), (3, 48), (2, 21), (5, 16))],
            "uneven micro-batches of variable-length padded sequences":
                [([3, 1, 4, 2], [64, 20, 48, 33], None), ([2, 5], [64, 64], [4, 48]), ([1, 1, 6], [64, 9, 30], None),
                 ([4, 2, 2], [16, 64, 40], [2, 50, 8]), ([5, 3], [50, 61], [1, 45])],
            "many small micro-batches, some of one short sequence":
                [([1] * 6, [64, 5, 33, 12, 64, 3], [40, 1, 1, 1, 60, 1]), ([1, 3, 1, 2], [7, 64, 2, 30], None),
                 ([2, 1, 1], [64, 4, 64], [2, 1, 64]), ([1] * 5, [64, 11, 23, 2, 50], None),
                 ([3, 1], [40, 3], [1, 3])],
        }
        hints = {
            "a single micro-batch (the full batch itself)":
                "model(x, y, loss_mask=mask, reduction='sum') returns (logits, loss_sum, n_tokens); the mean "
                "token loss is loss_sum / n_tokens",
            "equal micro-batches of full-length sequences (equal token counts)":
                "accumulate: call backward once per micro-batch; the .grad of every parameter adds up",
            "uneven micro-batches of variable-length padded sequences":
                "not a mean of the micro-batches' means: count the real tokens of ALL micro-batches first "
                "(sum of mask.sum()), then backward each micro-batch's loss_sum / total_tokens",
            "many small micro-batches, some of one short sequence":
                "a micro-batch with few tokens must weigh little: divide every micro-batch's summed loss by "
                "the total token count of the whole batch",
        }
        out = []
        for gname, items in layouts.items():
            cases = [Case(f"micro-batch sizes {sizes}, padded lengths {lens}, seed {s}",
                          (make_micro_batches(s, sizes, lens, mins),), meta={"s": s})
                     for s, (sizes, lens, mins) in zip(seeds, items)]
            out.append(Group(gname, cases, hints[gname]))
        return out

    def run(self, fn, case):
        """The student's accumulation on a fresh model: the returned loss and every .grad."""
        dev = default_device()
        mbs = [tuple(t.to(dev) for t in mb) for mb in case.args[0]]
        model = GPT(GPTConfig.preset("cpu-tiny"), seed=case.meta["s"]).to(dev).train()
        given = clone(mbs)
        out = call_student(fn, (model, given))
        if isinstance(out, Problem):
            return out
        if mutated(mbs, given, "a micro-batch"):
            return Problem("the micro-batches were modified; leave the inputs untouched")
        loss = as_float(out, "the full batch's mean token loss")
        if isinstance(loss, Problem):
            return loss
        return {"loss": loss, "grads": {n: p.grad for n, p in model.named_parameters()}}

    def expect(self, case):
        dev = default_device()
        model = GPT(GPTConfig.preset("cpu-tiny"), seed=case.meta["s"]).to(dev).train()
        loss, grads = reference_gradients(model, [tuple(t.to(dev) for t in mb) for mb in case.args[0]])
        return {"loss": float(loss), "grads": grads}

    def judge(self, out, case, expected=None):
        expected = expected if expected is not None else self.expect(case)
        for n, want in expected["grads"].items():
            got = out["grads"].get(n)
            if got is None:  # nothing accumulated
                return f"no gradient in {n}.grad: call backward on each micro-batch's loss"
            # GPU: other reduction orders
            rtol, atol = (GRAD_RTOL, GRAD_ATOL) if default_device().type == "cpu" else (1e-3, 1e-5)
            problem = compare_tensors(got.to(want.device), want, rtol=rtol, atol=atol, name=f"grad of {n}", max_show=3)
            if problem:
                return problem
        if not math.isclose(out["loss"], expected["loss"], rel_tol=1e-5, abs_tol=1e-6):
            return (f"the returned loss {out['loss']:.6f} is not the full batch's mean token loss "
                    f"{expected['loss']:.6f}")
        return None

    # -- memory ---------------------------------------------------------------------------------
    def memory_part(self, key):
        s = key.derive("memory")
        on_gpu = torch.cuda.is_available()

        def inputs() -> dict:
            dev = default_device()
            if on_gpu:
                cfg, B, T = GPTConfig.preset(GPU_PRESET), GPU_BATCH, GPU_LEN
            else:
                cfg, B, T = GPTConfig.preset("cpu-tiny", n_layer=CPU_MEM_LAYERS), CPU_MEM_BATCH, CPU_MEM_LEN
            mbs = make_micro_batches(s, [B // N_MICRO] * N_MICRO, [T] * N_MICRO, [T // 2] * N_MICRO, device=dev)
            return {"model": GPT(cfg, seed=s).to(dev).train(), "mbs": mbs}

        def call(fn, inp):
            model, mbs = inp["model"], inp["mbs"]
            x, y, mask = full_batch(mbs)

            def step():
                model.zero_grad(set_to_none=not on_gpu)  # GPU: gradients allocated before measuring
                with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext():
                    if fn is not None:
                        return fn(model, mbs)
                    _, loss = model(x, y, loss_mask=mask)
                    loss.backward()  # the full batch in one step
                return loss.detach()
            return step

        def check(out, inp):
            _, want = reference_gradients(inp["model"], inp["mbs"])
            for n, w in want.items():
                g = out.get(n)
                if g is None:  # nothing accumulated
                    return f"no gradient in {n}.grad"
                if on_gpu:  # other reductions (and bf16 autocast): compare by relative error
                    err = float((g.float().to(w.device) - w).norm() / w.norm().clamp(min=1e-12))
                    if err > 5e-2:
                        return f"grad of {n}: relative error {err:.3g}"
                else:
                    problem = compare_tensors(g, w, rtol=GRAD_RTOL, atol=GRAD_ATOL, name=f"grad of {n}", max_show=2)
                    if problem:
                        return problem
            return None

        how = (f"peak_memory, {GPU_PRESET}, {GPU_BATCH}×{GPU_LEN} tokens, bf16 autocast" if on_gpu else
               f"peak bytes saved for backward, cpu-tiny with {CPU_MEM_LAYERS} blocks, {CPU_MEM_BATCH} sequences "
               f"of up to {CPU_MEM_LEN} tokens")
        return MemoryPart(
            inputs=inputs, call=call, check=check, ratio=MEMORY_BUDGET, meter="auto", context=one_thread,
            output=lambda inp, ret: {n: p.grad for n, p in inp["model"].named_parameters()},
            model=lambda inp: inp["model"], what=f"{how}, {N_MICRO} micro-batches against the full batch",
            advice="call backward after each micro-batch's forward, so that its activations are freed before "
                   "the next one; never sum the losses of all micro-batches first")


@register
class ScaledLR(Exercise):
    name = "scaled_lr"
    notebook = NOTEBOOK
    title = "Learning-rate scaling rules: linear and square root"
    points = {"correctness": 1.0}
    signature = "scaled_lr(base_lr: float, base_batch: int, new_batch: int, rule: str) -> float"

    def cases(self, suite, key):
        g = torch.Generator().manual_seed(case_seeds(suite, key)[0] + 5)

        def draws(k, up=True):
            out = []
            for _ in range(k):
                lr = float(10 ** (-5 + 3 * torch.rand(1, generator=g)))
                b = int(2 ** int(torch.randint(3, 9, (1,), generator=g)))
                f = int(torch.randint(2, 17, (1,), generator=g))
                out.append((lr, b, b * f) if up else (lr, b * f, b))
            return out

        lin = [Case(f"linear, {a}", (*a, "linear"), meta={"rule": "linear"}) for a in draws(5)]
        sq = [Case(f"sqrt, {a}", (*a, "sqrt"), meta={"rule": "sqrt"}) for a in draws(5)]
        down = [Case(f"{r}, smaller batch {a}", (*a, r), meta={"rule": r}) for a in draws(5, up=False)
                for r in ("linear", "sqrt")]
        bad = [Case(f"rule {r!r}", (1e-3, 32, 64, r), meta={"rule": "bad"})
               for r in ("cubic", "Linear ", "", "SQRT", "sqrt2")]
        return [
            Group("linear rule (Goyal et al. 2017)", lin, "linear: lr × new_batch / base_batch"),
            Group("square-root rule (Krizhevsky 2014; Adam-like optimizers)", sq,
                  "sqrt: lr × sqrt(new_batch / base_batch)"),
            Group("smaller batches scale the rate down", down, "the same formulas hold for new_batch < base_batch"),
            Group("an unknown rule raises ValueError", bad, "raise ValueError(f'unknown rule {rule!r}') for any "
                                                             "other rule"),
        ]

    def run(self, fn, case):
        if case.meta["rule"] != "bad":
            return super().run(fn, case)
        try:
            out = fn(*case.args)
        except Exception as exc:  # the exception is the answer here: its type is judged
            return {"raised": "ValueError" if isinstance(exc, ValueError) else type(exc).__name__,
                    "message": str(exc)[:200]}
        return {"returned": out if isinstance(out, (int, float, str)) or out is None else repr(out)[:100]}

    def judge(self, out, case, expected=None):
        lr, b0, b1, rule = case.args
        if rule not in ("linear", "sqrt"):
            if "returned" in out:
                return f"expected ValueError, got {out['returned']!r}"
            if out["raised"] != "ValueError":
                return f"expected ValueError, got {out['raised']}: {out['message']}"
            return None
        e = lr * b1 / b0 if rule == "linear" else lr * math.sqrt(b1 / b0)
        if isinstance(out, torch.Tensor):
            out = float(out)
        if not isinstance(out, (int, float)) or isinstance(out, bool):
            return f"return a float, got {type(out).__name__}"
        if not math.isclose(float(out), e, rel_tol=1e-9):
            return f"yours {float(out):.6g}, expected {e:.6g}"
        return None
