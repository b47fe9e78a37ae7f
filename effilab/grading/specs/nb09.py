"""Exercise specs of notebook 09 — torch.compile.

1. ``FixedBlock``: :class:`effilab.compile_models.BreakyBlock` with ``forward`` rewritten without
   graph breaks: ``torch._dynamo.explain`` must find one graph and no break, and the outputs must
   equal the original block's when the rescaling branch is taken, when it is not, and on padded
   batches.
2. ``compile_for_lengths(model, backend)``: the compiled :class:`~effilab.compile_models.TinyLM`
   of an evaluation loop whose sequence lengths (and later batch sizes) change from call to call:
   at most one recompile (counted by the backend, i.e. Dynamo's graphs), every call run compiled,
   logits equal to eager.
3. ``make_layer_norm_op(namespace)``: the LayerNorm Triton kernels of notebook 08
   (``effilab.ops.layernorm``) registered as custom operators with a fake kernel and autograd;
   forward and backward equal to ``F.layer_norm``'s, ``torch.library.opcheck``'s schema and
   fake-tensor tests pass, and ``torch.compile(fullgraph=True)`` compiles a block that uses it (one
   graph, the operator called in it, not traced into), forward and backward correct.
4. ``make_compiled_step(model, optimizer, backend)``: a compiled bf16 training step of the course
   GPT: losses and parameters equal to the eager step's, every block's matmuls run in compiled
   graphs (forward and backward); on a GPU faster than the eager step (``gpu-real``, 16 × 1024).

Grading cost. Compiling is the slow part of every case, so each seed's run observes everything its
groups judge (one run per seed, memoised; the groups read different observations of it), and the
graphs are compiled by the cheap backends ``eager`` / ``aot_eager`` that the checker passes in
(the recompile and graph-break behaviour is Dynamo's, the same for every backend). Exercise 4's
correctness cases share one backend object, so its graphs compile once per process.

What runs in the sandbox and the references are in :mod:`effilab.grading.specs.nb09_runs`. This
module ships in the student edition: the references are plain PyTorch.
"""
from __future__ import annotations

import torch

from ..calls import Problem, call_student, one_thread
from ..compare import compare_tensors
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import SpeedPart
from .nb09_runs import (COMPILED_HINT, LN_EPS, STEPS, BreakyBlock, _block_case_args, _call, _explain,
                        _judge_compiled, _judge_coverage, _judge_losses, _judge_params, _ln_backward, _ln_case_args,
                        _ln_compiled, _ln_opcheck, _lm_calls, _observe_steps, _problem_text, _reference_steps, _rtol,
                        _run_lengths, _step_cfg, block_reference, eager_train_step, fresh_namespace, ln_reference,
                        lm_reference)
# the references and helpers the tests and the GPU scripts read through this module
from .nb09_runs import STEP_LR, TinyLM, _foreign_targets, _peak, block_ln_reference  # noqa: F401

NOTEBOOK = "09_torch_compile"


#: Required speed-up of the student's compiled training step over the eager step (bf16 autocast,
#: fused AdamW) on gpu-real, batch 16 × 1024. The reference (torch.compile of the whole model) ran
#: 1.211× and 1.215× eager in two H200 runs of 2026-12-02 (spread between steps 0.6 %;
#: benchmarks/RESULTS.md, notebook 09; issue 13's anchor of 2026-12-01 was 1.24×): 1.15 leaves it a
#: 5 % margin. Regional compilation of the blocks measured 1.09× with a 16 % spread, below it.
STEP_SPEED_THRESHOLD = 1.15
SPEED_PRESET, SPEED_BATCH = "gpu-real", 16

MAX_RECOMPILES = 1  # over every call of a case (the issue: ≤ 1 recompile over ≥ 3 lengths)


class _Memo:
    """One run per (function, seed): the groups of an exercise judge different observations of the
    same run, so a run is done once and its result handed to each group's case. The key holds the
    seed's value (a hidden seed *prints* as its index, so a label alone is not unique across
    suites). Only the latest function's runs are kept (another submission, a re-run cell: afresh)."""

    def __init__(self):
        self.fn, self.runs = None, {}

    def get(self, fn, key, compute):
        if fn is not self.fn:
            self.fn, self.runs = fn, {}
        if key not in self.runs:
            self.runs[key] = compute()
        return self.runs[key]






# ==============================================================================================
# 1. Graph breaks
# ==============================================================================================












@register
class GraphBreaks(Exercise):
    name = "FixedBlock"
    notebook = NOTEBOOK
    title = "Remove the graph breaks of a block"
    points = {"correctness": 3.0}
    signature = "class FixedBlock(BreakyBlock) whose forward(x, mask) gives BreakyBlock's output in one graph"
    forbidden_source = ((r"capture_scalar_outputs|capture_dynamic_output_shape_ops|allow_in_graph",
                         "rewrite the code instead of changing what Dynamo may capture"),)
    _memo = _Memo()

    _GROUPS = [
        ("explain", "one graph, no graph break (torch._dynamo.explain on a padded batch)",
         "keep every value a tensor: no .item(), no print, no Python `if` on data; select with torch.where, "
         "and replace boolean indexing (mask.nonzero, h[mask]) by multiplying with the mask"),
        ("big", "max |h| above the clip: outputs equal BreakyBlock's (h rescaled by clip / max|h|)",
         "when max|h| > clip, h is multiplied by clip / max|h| — a rescaling of the whole tensor, not a clamp of "
         "each element: torch.where(peak > clip, h * (clip / peak), h)"),
        ("small", "max |h| below the clip: outputs equal BreakyBlock's (h left as it is)",
         "when max|h| <= clip, h is not changed: the rescaling must happen only under the condition"),
        ("padded", "padded batches: the mean is over the real tokens only",
         "the mean of h over the tokens where mask is True: (h * m).sum(dim=(0, 1)) / m.sum() with "
         "m = mask.unsqueeze(-1).to(h.dtype); the maximum |h| is still taken over every position"),
    ]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        args = [_block_case_args(s, i) for i, s in enumerate(seeds)]
        groups = []
        for check, gname, hint in self._GROUPS:
            cases = []
            for s, a in zip(seeds, args):
                cfg, x = a[0], a[1]
                label = (f"seed {s}: BreakyBlock(dim={cfg['dim']}, hidden={cfg['hidden']}, clip={cfg['clip']:.3f}), "
                         f"x of shape {tuple(x.shape)}")
                cases.append(Case(label, a, meta={"check": check, "run": (int(s), label)}))
            groups.append(Group(gname, cases, hint))
        return groups

    def run(self, fn, case):
        return self._memo.get(fn, case.meta["run"], lambda: self._observe(fn, case.args))

    @staticmethod
    def _observe(fn, args) -> dict:
        cfg, big, small, padded, mask = args
        with one_thread():
            model, err = _call(f"FixedBlock(**{cfg})", fn, **cfg)
            if err:
                return err
            if not isinstance(model, torch.nn.Module):
                return Problem(f"FixedBlock(...) gave a {type(model).__name__}, not an nn.Module",
                               "define class FixedBlock(BreakyBlock) and override forward")
            try:
                model.load_state_dict(BreakyBlock(**cfg).state_dict())
                model.to(big.device)
            except Exception as exc:
                return Problem(f"FixedBlock's parameters are not BreakyBlock's ({str(exc)[:200]})",
                               "subclass BreakyBlock and keep its __init__: only forward changes")
            full = torch.ones(big.shape[:2], dtype=torch.bool, device=big.device)
            out = {name: call_student(model, (x, m)) for name, x, m in
                   (("big", big, full), ("small", small, full), ("padded", padded, mask))}
            out["explain"] = _explain(model, padded, mask)
        return out

    def judge(self, out, case, expected=None):
        check = case.meta["check"]
        got = out[check]
        if isinstance(got, Problem):
            return _problem_text(got)
        if check == "explain":
            if got["graphs"] != 1 or got["breaks"] != 0:
                reasons = "".join(f"\n  - {r}" for r in got["reasons"])
                return (f"torch._dynamo.explain found {got['graphs']} graph(s) and {got['breaks']} graph break(s) "
                        f"(one graph and none expected){reasons}")
            if got["foreign"]:
                return (f"the graph calls your own function(s) {got['foreign'][:3]} whole instead of tracing them "
                        "(allow_in_graph): the graph must hold the block's tensor operations")
            if got["ops"] < 5:
                return f"the graph holds only {got['ops']} operations: the block's work must be in the compiled graph"
            return None
        cfg, big, small, padded, mask = case.args
        x, m = {"big": (big, torch.ones(big.shape[:2], dtype=torch.bool)),
                "small": (small, torch.ones(small.shape[:2], dtype=torch.bool)), "padded": (padded, mask)}[check]
        if not isinstance(got, torch.Tensor):
            return f"forward returned {type(got).__name__}, expected a tensor of shape {tuple(x.shape)}"
        # atol 1e-5: on a GPU the matmuls sum in another order than the CPU reference (every mistake is far off)
        return compare_tensors(got.detach().cpu(), block_reference(cfg, x, m), rtol=1e-5, atol=1e-5)




# ==============================================================================================
# 2. Recompiles
# ==============================================================================================






@register
class Recompiles(Exercise):
    name = "compile_for_lengths"
    notebook = NOTEBOOK
    title = "No recompiles across sequence lengths"
    points = {"correctness": 3.0}
    signature = "compile_for_lengths(model, backend='inductor') -> a callable: idx (B, T) -> logits (B, T, vocab)"
    _memo = _Memo()

    _GROUPS = [
        ("lengths", "three lengths, one batch size: compiled, at most one recompile",
         "torch.compile(model, backend=backend, ...) and return a function of idx that gives the logits; "
         "compile for symbolic shapes from the start (dynamic=True, or torch._dynamo.mark_dynamic on the "
         "length dimension) so a new length does not compile again"),
        ("batches", "lengths and batch sizes change: at most one recompile over all calls",
         "automatic dynamic shapes recompile once per dimension that changes (first the length, then the batch "
         "size): mark both dimensions dynamic, or compile with dynamic=True"),
        ("outputs", "the logits equal the eager model's on every call (same shape, same values)",
         "return model(idx) of the compiled model for exactly the idx given: if you pad to a fixed length, "
         "slice the logits back to (B, T, vocab)"),
    ]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        calls = {s: _lm_calls(s) for s in seeds}
        groups = []
        for check, gname, hint in self._GROUPS:
            cases = []
            for s in seeds:
                shapes = " → ".join(f"{b}×{t}" for b, t in (tuple(i.shape) for i in calls[s]))
                label = f"seed {s}: TinyLM(vocab=64, dim=32), calls on idx of shapes {shapes}"
                cases.append(Case(label, (s, calls[s]), meta={"check": check, "run": (int(s), label)}))
            groups.append(Group(gname, cases, hint))
        return groups

    def run(self, fn, case):
        return self._memo.get(fn, case.meta["run"], lambda: self._observe(fn, *case.args))

    @staticmethod
    def _observe(fn, s: int, calls: list) -> dict:
        with one_thread():
            torch._dynamo.reset()  # recompiles are counted from a cold start
            try:
                return _run_lengths(fn, s, calls)
            finally:
                torch._dynamo.reset()

    def judge(self, out, case, expected=None):
        check = case.meta["check"]
        s, calls = case.args
        if check == "outputs":
            for i, (idx, y) in enumerate(zip(calls, out["logits"])):
                ref = lm_reference(s, idx)
                if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(ref.shape):
                    got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                    return f"call {i} (idx {tuple(idx.shape)}): logits of shape {got}, expected {tuple(ref.shape)}"
                bad = compare_tensors(y.float().cpu(), ref, rtol=1e-4, atol=1e-5, name=f"logits of call {i}")
                if bad:
                    return bad
            return None
        n = 3 if check == "lengths" else len(calls)
        per = out["calls"][:n]
        shapes = [tuple(i.shape) for i in calls[:n]]
        table = ", ".join(f"{b}×{t}: {c} compiled" for (b, t), (c, _) in zip(shapes, per))
        if sum(c for c, _ in per) == 0:
            return ("nothing was compiled through the backend the checker passed: call "
                    "torch.compile(model, backend=backend, ...) with the `backend` argument")
        stale = [i for i, (_, r) in enumerate(per) if r == 0]
        if stale:
            return (f"call {stale[0]} ({shapes[stale[0]][0]}×{shapes[stale[0]][1]}) ran no compiled graph — it "
                    f"fell back to eager (recompile limit or a forced eager stance?). Per call: {table}")
        if out["max_ops"] < 8:
            return f"the compiled graphs hold at most {out['max_ops']} operations: the model itself must be compiled"
        recompiles = sum(c for c, _ in per[1:])
        if recompiles > MAX_RECOMPILES:
            return (f"{recompiles} recompiles after the first call (at most {MAX_RECOMPILES} allowed). "
                    f"Graphs compiled per call: {table}")
        return None




# ==============================================================================================
# 3. A Triton kernel as a custom operator
# ==============================================================================================










@register
class CustomOp(Exercise):
    name = "make_layer_norm_op"
    notebook = NOTEBOOK
    title = "A Triton kernel as a custom operator with autograd, compiled with fullgraph=True"
    points = {"correctness": 4.0}
    signature = "make_layer_norm_op(namespace: str) -> layer_norm(x, weight, bias, eps=1e-5) -> Tensor"
    # nn.LayerNorm is reached through F.layer_norm, so trapping the functions covers it (a trapped class's
    # patched __init_subclass__ reads as "replaced" to the sandbox's integrity check: a known limit of the grader, reported)
    forbidden = ("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.native_layer_norm")
    _memo = _Memo()

    _GROUPS = [
        ("forward", "forward (eager): equals F.layer_norm (fp32 and fp16, 2-D and 3-D inputs)",
         "the forward operator calls effilab.ops.layernorm.layer_norm_forward(x, weight, bias, eps), which "
         "returns (y2d, x2d, mean, rstd); give back y2d viewed as x's shape"),
        ("backward", "backward (eager): dx, dweight and dbias equal autograd through F.layer_norm",
         "register_autograd(backward, setup_context=...): save x, weight, mean and rstd in setup_context; "
         "backward calls a second operator that runs layer_norm_backward(dy, x2d, weight, mean, rstd) and returns "
         "(dx, dweight, dbias, None) — one gradient per input, None for eps"),
        ("fake", "torch.library.opcheck: schema and fake (meta) kernels right for every operator",
         "each operator needs @op.register_fake returning empty tensors with the real outputs' shapes and dtypes "
         "(y like x; mean and rstd are float32, one per row) and must not modify its inputs"),
        ("compiled", "torch.compile(fullgraph=True) of a block using it: one graph that calls your operator, "
                     "forward and backward correct",
         COMPILED_HINT),
    ]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        args = [_ln_case_args(s, i) for i, s in enumerate(seeds)]
        groups = []
        for check, gname, hint in self._GROUPS:
            cases = []
            for s, a in zip(seeds, args):
                label = f"seed {s}: {str(a[0].dtype)[6:]} x of shape {tuple(a[0].shape)}"
                cases.append(Case(label, a, meta={"check": check, "run": (int(s), label)}))
            groups.append(Group(gname, cases, hint))
        return groups

    def run(self, fn, case):
        return self._memo.get(fn, case.meta["run"], lambda: self._observe(fn, case.args))

    @staticmethod
    def _observe(fn, args) -> dict:
        namespace = fresh_namespace("nb09check")
        with one_thread():
            op, err = _call(f"make_layer_norm_op({namespace!r})", fn, namespace)
            if err:
                return err
            if not callable(op):
                return Problem(f"make_layer_norm_op returned {type(op).__name__}, not a function",
                               "return a function layer_norm(x, weight, bias, eps) that calls your operator")
            x, w, b, dy, fc = args
            return {"forward": call_student(op, (x, w, b, LN_EPS)),
                    "backward": _ln_backward(op, x, w, b, dy),
                    "fake": _ln_opcheck(op, namespace, x, w, b, dy),
                    "compiled": _ln_compiled(op, namespace, x, w, b, dy, fc)}

    def judge(self, out, case, expected=None):
        x, w, b, dy, fc = case.args
        check = case.meta["check"]
        got = out[check]
        if isinstance(got, Problem):
            return _problem_text(got)
        if check == "forward":
            if not isinstance(got, torch.Tensor):
                return f"your layer_norm returned {type(got).__name__}, expected a tensor like x"
            if got.dtype != x.dtype or tuple(got.shape) != tuple(x.shape):
                return f"your output is {got.dtype} of shape {tuple(got.shape)}; expected {x.dtype}, {tuple(x.shape)}"
            return compare_tensors(got.cpu(), ln_reference(x, w, b))
        if check == "backward":
            ref = ln_reference(x, w, b, dy)
            for name, mine, exp in zip(("y", "dx", "dweight", "dbias"), (got["y"], got["dx"], got["dw"], got["db"]), ref):
                if not isinstance(mine, torch.Tensor):
                    return f"{name} is {mine!r}: " + ("your backward returned None for it" if name != "y" else "")
                bad = compare_tensors(mine.cpu(), exp, name=name, rtol=max(1e-4, _rtol(x.dtype)), atol=1e-5)
                if bad:
                    return bad
            return None
        if check == "fake":
            if not got["ops"]:
                return (f"no operator of the namespace the checker gave ({got['namespace']}) ran when your layer_norm "
                        "was called: register it with torch.library.custom_op(f\"{namespace}::<name>\", ...)")
            if got["failures"]:
                return "torch.library.opcheck failed:\n  " + "\n  ".join(got["failures"][:4])
            return None
        return _judge_compiled(got, x, w, b, dy, fc)














# ==============================================================================================
# 4. A compiled training step
# ==============================================================================================









def cold_start() -> None:
    """Forget every frame Dynamo compiled before the timed step is built.

    In a notebook the check cell runs after the demos and the correctness runs, which compiled the same
    ``GPT.forward`` at other shapes: left in place, their cache entries and automatic-dynamic history
    make the student's ``torch.compile(model)`` recompile with symbolic shapes (or past the recompile
    limit, not at all). On the H200 (2026-12-02) alice's step measured 1.04× eager in her notebook and
    1.20× out of it; the timing must not depend on which cells ran before."""
    torch._dynamo.reset()


@register
class CompiledStep(Exercise):
    name = "make_compiled_step"
    notebook = NOTEBOOK
    title = "A compiled training step of the course GPT, faster than eager"
    points = {"correctness": 1.5, "speed": 2.0}
    signature = "make_compiled_step(model, optimizer, backend='inductor') -> step(batch) -> loss (a detached 0-dim tensor)"
    _memo = _Memo()
    _expected: dict = {}

    _GROUPS = [
        ("loss", "the losses of three steps equal the eager step's (bf16 autocast, AdamW)",
         "each step: optimizer.zero_grad(set_to_none=True); the forward under torch.autocast(device_type, "
         "dtype=torch.bfloat16); loss.backward(); optimizer.step(); return loss.detach()"),
        ("params", "the parameters after three steps equal the eager step's",
         "one optimizer.step() after each backward, on the model you were given (compiling must not copy it)"),
        ("compiled", "every block's matmuls and the backward run in compiled graphs",
         "compile what the step runs, with the `backend` you are given: torch.compile(model, backend=backend), or "
         "regionally block.compile(backend=backend) for each block — and call the compiled module in the step"),
    ]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        cfg = _step_cfg()
        return [Group(gname, [Case(f"seed {s}: GPT(n_layer={cfg.n_layer}, n_embd={cfg.n_embd}), {STEPS} steps on "
                                   f"4×{cfg.block_size} tokens, compiled with aot_eager", (s,),
                                   meta={"check": check, "run": int(s), "backend": "aot_eager"})
                              for s in seeds], hint)
                for check, gname, hint in self._GROUPS]

    def run(self, fn, case):
        key = (case.meta["run"], case.meta["backend"])
        return self._memo.get(fn, key, lambda: _observe_steps(fn, case.args[0], case.meta["backend"]))

    def expect(self, case):
        if case.meta["check"] not in ("loss", "params", "all"):
            return None
        dev = default_device()
        k = (case.args[0], str(dev))
        if k not in self._expected:
            with one_thread():
                self._expected.clear()
                self._expected[k] = _reference_steps(case.args[0], dev)
        return self._expected[k]

    def judge(self, out, case, expected=None):
        check = case.meta["check"]
        loose = case.meta["backend"] == "inductor"
        if check in ("loss", "params", "all") and expected is None:
            expected = self.expect(case)
        for part in (("loss", "params", "compiled") if check == "all" else (check,)):
            bad = {"loss": _judge_losses, "params": _judge_params, "compiled": _judge_coverage}[part](out, expected, loose)
            if bad:
                return bad
        return None

    def speed_part(self, key):
        s = key.derive("speed")

        def inputs():
            from ...models import GPT, GPTConfig
            from ...train import make_optimizer

            cfg = GPTConfig.preset(SPEED_PRESET)
            model = GPT(cfg, seed=0).cuda()
            g = torch.Generator().manual_seed(s)
            x = torch.randint(0, cfg.vocab_size, (SPEED_BATCH, cfg.block_size + 1), generator=g).cuda()
            return model, make_optimizer(model, lr=1e-4), (x[:, :-1].contiguous(), x[:, 1:].contiguous())

        def call(fn, inp):
            model, opt, batch = inp
            if fn is None:
                return lambda: eager_train_step(model, opt, batch)
            cold_start()
            step = fn(model, opt)  # the student's default backend: Inductor
            return lambda: step(batch)

        return SpeedPart(
            inputs=inputs, baseline=None, call=call, threshold=STEP_SPEED_THRESHOLD, mutate=False,
            gate=Case("seed 0: the small GPT on the GPU, compiled by Inductor", (0,),
                      meta={"check": "all", "run": "gate", "backend": "inductor"}),
            flops=lambda args: args[0].flops_per_token() * SPEED_BATCH * args[0].config.block_size,
            baseline_name="eager step (bf16 autocast, fused AdamW)",
            cpu_note=f"On a GPU your compiled step must be ≥ {STEP_SPEED_THRESHOLD:g}× faster than the eager step "
                     f"({SPEED_PRESET}, batch {SPEED_BATCH}×1024, bf16).",
            advice="compile the whole model with its loss (torch.compile(model, backend=backend), called in the "
                   "step): regional compilation of the blocks compiles faster but leaves the GPU waiting for the host "
                   "between its 24 regions; keep the step free of host syncs (.item(), float(loss))")








