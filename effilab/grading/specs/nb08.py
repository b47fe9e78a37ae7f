"""Exercise specs of notebook 08 — operator fusion with Triton.

1. ``rms_norm(x, weight, eps)``: fused RMSNorm forward; odd shapes, rows of any length, fp32/fp16
   (bf16 on a GPU), eps inside the square root; on a GPU faster than the unfused eager version.
2. ``swiglu(a, b)``: fused ``silu(a) * b``; on a GPU faster than eager. ``swiglu_backward(a, b, g)``
   (extra points): ``(da, db)``.
3. ``cross_entropy(logits, target)``: mean cross-entropy over the non-ignored rows (ignore_index
   −100) with an online softmax over vocabulary chunks; on a GPU its extra peak memory must stay
   far below one fp32 copy of the logits.
4. ``flash_attention(q, k, v, causal)``: attention forward without the S×S score matrix; on a GPU,
   O(S) extra memory and faster than naive attention.

This module ships in the student edition: the references below are plain PyTorch, never the
instructor-only kernels of ``effilab.ops``.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from ..compare import compare_tensors
from ..core import Case, Exercise, Group, case_seeds, default_device, half_dtypes, register
from ..measure import MemoryPart, SpeedPart
from ..provenance import KernelRule

NOTEBOOK = "08_operator_fusion"

# The checker's own references, taken at import: while graded code runs the grader replaces these
# student-facing names by trapping stubs (grader.traps), so the references and baselines below
# never look them up through torch.nn.functional at call time.
_silu = F.silu
_cross_entropy = F.cross_entropy

# Speed and memory thresholds: calibrated from benchmarks/RESULTS.md (bf16; benchmarks/gpu/nb08.sh prints
# the reference solution's ratios three times each). Per GPU class, the reference measured:
#   H100 (2026-11-23): RMSNorm 7.2–11.1×, SwiGLU 7.0–7.2×, attention 7.4–7.5×
#   H200 (2026-12-02, the course's grading GPU): RMSNorm 12.4–12.5×, SwiGLU 8.2–8.3×, attention 6.5×
# The lowest ratio of either class is at least 1.6× its threshold (RMSNorm 3.6×, SwiGLU 2.3×, attention
# 6.5 / 4.0 = 1.6×), so one value serves both classes; a class measuring closer than that would need its own.
RMS_SPEED_THRESHOLD = 2.0  # the brief's goal; × the unfused eager RMSNorm (fp32 then cast)
SWIGLU_SPEED_THRESHOLD = 3.0  # × eager silu(a.float()) * b.float(), cast back
ATTN_SPEED_THRESHOLD = 4.0  # × naive attention (S×S scores materialised), non-causal
CE_MEMORY_FRACTION = 0.25  # extra peak memory ≤ this × the bytes of the (bf16) logits
ATTN_MEMORY_FACTOR = 4.0  # extra peak memory ≤ this × the bytes of the output

# GPU problem sizes of the speed and memory parts
RMS_SPEED_SHAPE = (16384, 4096)
SWIGLU_SPEED_SHAPE = (16384, 11008)
CE_MEMORY_SHAPE = (4096, 128256)
ATTN_SPEED_SHAPE = (4, 16, 4096, 64)  # (B, H, S, D)
ATTN_MEMORY_SHAPE = (1, 8, 16384, 64)




_half_dtypes = half_dtypes  # fp16; bf16 on a GPU that has it (effilab.grading.core.half_dtypes)


def _gen(s: int, dev="cpu") -> torch.Generator:
    """A generator on ``dev`` when that is a GPU: GPU-sized inputs are drawn where they live (drawing
    hundreds of millions of values on the CPU and copying them would dominate the grading time)."""
    d = torch.device(dev)
    return torch.Generator(device=d if d.type == "cuda" else "cpu").manual_seed(s)


def _check_tensor(out, like_shape, dtype, name="output") -> str | None:
    if not isinstance(out, torch.Tensor):
        return f"return a torch.Tensor, got {type(out).__name__}"
    if tuple(out.shape) != tuple(like_shape):
        return f"your {name} has shape {tuple(out.shape)}, expected {tuple(like_shape)}"
    if out.dtype != dtype:
        return f"your {name} has dtype {out.dtype}, expected {dtype} (the dtype of the input)"
    return None


def _rows_view(args, pick: int):
    """256 random consecutive rows of a row-wise op's timed input and output (the rest is not sent)."""
    x = args[0]
    rows = x.shape[0]
    r0 = pick % max(1, rows - 255)
    sl = slice(r0, min(rows, r0 + 256))
    return tuple(a[sl] if isinstance(a, torch.Tensor) and a.dim() == x.dim() else a for a in args), sl


# ==============================================================================================
# 1. RMSNorm
# ==============================================================================================
def rms_norm_eager(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The unfused eager RMSNorm in fp32, cast back: the reference and the speed baseline."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _rms_inputs(s: int, shape, dtype, dev, scale=None, zero_rows=0):
    """x and weight. Without ``scale``, |x| ≥ 0.5 everywhere: mean squares far above eps, so only the
    eps group (tiny or zero rows, a given ``scale``) tells eps inside the root from eps outside it."""
    g = _gen(s, dev)
    x = torch.randn(shape, generator=g, device=g.device)
    x = x + 0.5 * torch.where(x < 0, -1.0, 1.0) if scale is None else x * scale
    if zero_rows:
        x.view(-1, shape[-1])[:zero_rows] = 0.0
    w = torch.randn(shape[-1], generator=g, device=g.device) * 0.5 + 1.0
    return x.to(dtype).to(dev), w.to(dtype).to(dev)


@register
class RMSNorm(Exercise):
    name = "rms_norm"
    forbidden = ("torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm", "torch.nn.modules.normalization",
                 "effilab.ops")
    notebook = NOTEBOOK
    kernel = True  # the work is done by the student's own Triton kernels
    title = "A fused RMSNorm forward in Triton"
    points = {"correctness": 3.0, "speed": 2.0}
    signature = "rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor"

    def cases(self, suite, key):
        dev = default_device()
        seeds = case_seeds(suite, key)
        big = (1823, 781) if dev.type == "cuda" else (611, 781)
        pow2 = [(64, 512), (4, 1024), (3, 5, 256), (1, 2048), (33, 128)]
        odd = [big, (3, 5, 67), (7, 1), (2, 4097), (129, 1000)]
        half = [(1823, 781) if dev.type == "cuda" else (257, 781), (3, 5, 67), (5, 3), (2, 4097), (31, 333)]
        hdts = _half_dtypes()

        def case(s, shape, dtype, eps=1e-6, **kw):
            x, w = _rms_inputs(s, shape, dtype, dev, **kw)
            extra = f", eps {eps:g}" + (f", |x| ~ {kw['scale']:g}" if "scale" in kw else "")
            extra += f", {kw['zero_rows']} all-zero rows" if kw.get("zero_rows") else ""
            return Case(f"seed {s}, {str(dtype)[6:]} x of shape {shape}{extra}", (x, w, eps))

        return [
            Group("fp32, rows whose length is a power of two", [case(s, shp, torch.float32) for s, shp in zip(seeds, pow2)],
                  "one program per row (or per few rows): load the row, sum of squares in fp32, "
                  "multiply by rsqrt(mean + eps) and by the weight, store"),
            Group("fp32, odd shapes (1823×781 on a GPU, 3×5×67, rows of 1 and 4097 elements)",
                  [case(s, shp, torch.float32) for s, shp in zip(seeds, odd)],
                  "the block is a power of two ≥ the row length: mask the loads and stores of the tail "
                  "(other=0.0) and divide the sum of squares by the true row length, not by BLOCK"),
            Group("fp16" + (" and bf16" if len(hdts) > 1 else "") + ", odd shapes (computed in fp32)",
                  [case(s, shp, hdts[i % len(hdts)]) for i, (s, shp) in enumerate(zip(seeds, half))],
                  "load with .to(tl.float32), compute in fp32, store in the output's dtype "
                  "(y_ptr.dtype.element_ty); the output has x's dtype"),
            Group("eps inside the square root (tiny and all-zero rows)",
                  [case(s, (16, 512), torch.float32, eps=e, scale=sc, zero_rows=z)
                   for s, e, sc, z in zip(seeds, (1e-2, 1e-3, 1e-5, 1e-2, 1e-6), (1e-3, 1e-2, 1e-3, 0.0, 1e-4),
                                          (0, 2, 0, 16, 3))],
                  "rstd = 1 / sqrt(mean(x²) + eps): eps goes under the root (an all-zero row must give 0, not NaN)"),
        ]

    def judge(self, out, case, expected=None):
        x, w, eps = case.args
        bad = _check_tensor(out, x.shape, x.dtype)
        if bad:
            return bad
        return compare_tensors(out, rms_norm_eager(x, w, eps))

    def speed_part(self, key):
        s = key.derive("speed")
        n_rows, n_cols = RMS_SPEED_SHAPE
        return SpeedPart(
            inputs=lambda: _rms_inputs(s, RMS_SPEED_SHAPE, torch.bfloat16, "cuda") + (1e-6,),
            baseline=rms_norm_eager, threshold=RMS_SPEED_THRESHOLD, own_kernels=True, view=_rows_view,
            gate_label=f"the timed input ({n_rows}×{n_cols} bf16; 256 random rows judged)",
            bytes_moved=2 * n_rows * n_cols * 2 + 2 * n_cols,
            baseline_name="eager RMSNorm",
            advice="read each row once and write it once: keep the whole row in registers, one row per program "
                   "for rows of 4096, num_warps 8 or 16")


# ==============================================================================================
# 2. SwiGLU
# ==============================================================================================
def swiglu_eager(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) * b in fp32, cast back: the reference and the speed baseline."""
    return (_silu(a.float()) * b.float()).to(a.dtype)


def swiglu_backward_reference(a, b, grad_out):
    af, bf, gf = a.double(), b.double(), grad_out.double()
    sig = torch.sigmoid(af)
    da = gf * bf * sig * (1 + af * (1 - sig))
    db = gf * af * sig
    return da.to(a.dtype), db.to(b.dtype)


def _swiglu_inputs(s, shape, dtype, dev, big=False, with_grad=False):
    g = _gen(s, dev)
    a = torch.randn(shape, generator=g, device=g.device) * (30.0 if big else 2.0)
    if big:  # |a| ≤ 80 as the group says: exp(80) is finite in fp32, so a correct kernel overflows nowhere
        a = a.clamp(-80.0, 80.0)
    if big and a.numel() >= 4:
        a.view(-1)[:4] = torch.tensor([80.0, -80.0, 0.0, -11.0])
    b = torch.randn(shape, generator=g, device=g.device)
    out = [a.to(dtype).to(dev), b.to(dtype).to(dev)]
    if with_grad:
        out.append(torch.randn(shape, generator=g, device=g.device).to(dtype).to(dev))
    return tuple(out)


def _swiglu_groups(suite, key, with_grad):
    dev = default_device()
    seeds = case_seeds(suite, key)
    big = (1823, 781) if dev.type == "cuda" else (411, 781)
    shapes = [big, (3, 5, 67), (1,), (65537,), (7, 1000)]
    hdts = _half_dtypes()

    def case(s, shp, dtype, large=False):
        args = _swiglu_inputs(s, shp, dtype, dev, big=large, with_grad=with_grad)
        return Case(f"seed {s}, {str(dtype)[6:]} inputs of shape {shp}" + (", |a| up to 80" if large else ""), args)

    return [
        Group("fp32, odd shapes (1823×781 on a GPU, 3×5×67, 1, 65537)",
              [case(s, shp, torch.float32) for s, shp in zip(seeds, shapes)],
              "treat a and b as flat contiguous arrays: one program per BLOCK elements, mask the tail"),
        Group("fp16" + (" and bf16" if len(hdts) > 1 else "") + " (computed in fp32)",
              [case(s, shp, hdts[i % len(hdts)]) for i, (s, shp) in enumerate(zip(seeds, shapes[1:] + [(333,)]))],
              "load, .to(tl.float32), compute, and store in the output's dtype"),
        Group("large |a| (up to 80): no overflow, no NaN",
              [case(s, (4099,), torch.float32 if i % 2 == 0 else torch.float16, large=True)
               for i, s in enumerate(seeds)],
              "silu(a) = a * sigmoid(a) = a / (1 + exp(-a)); compute in fp32 (tl.sigmoid works) so exp(-a) "
              "cannot overflow a half-precision intermediate"),
    ]


@register
class SwiGLU(Exercise):
    name = "swiglu"
    forbidden = ("torch.nn.functional.silu", "torch.nn.SiLU", "effilab.ops")
    notebook = NOTEBOOK
    kernel = True  # the work is done by the student's own Triton kernels
    title = "A fused SwiGLU forward: silu(a) * b"
    points = {"correctness": 2.0, "speed": 1.0}
    signature = "swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor"

    def cases(self, suite, key):
        return _swiglu_groups(suite, key, with_grad=False)

    def judge(self, out, case, expected=None):
        a, b = case.args
        bad = _check_tensor(out, a.shape, a.dtype)
        return bad or compare_tensors(out, swiglu_eager(a, b))

    def speed_part(self, key):
        s = key.derive("speed")
        n = math.prod(SWIGLU_SPEED_SHAPE)
        return SpeedPart(
            inputs=lambda: _swiglu_inputs(s, SWIGLU_SPEED_SHAPE, torch.bfloat16, "cuda"), baseline=swiglu_eager,
            threshold=SWIGLU_SPEED_THRESHOLD, own_kernels=True, view=_rows_view,
            gate_label="the timed input (16384×11008 bf16; 256 random rows judged)",
            bytes_moved=3 * n * 2, baseline_name="eager silu(a) * b",
            advice="one pass: read a and b once, write the output once; BLOCK of 1024–4096 elements")


@register
class SwiGLUBackward(Exercise):
    name = "swiglu_backward"
    forbidden = ("effilab.ops",)
    notebook = NOTEBOOK
    kernel = True  # the work is done by the student's own Triton kernels
    title = "SwiGLU backward (extra): da and db in one kernel"
    points = {"correctness": 1.0}
    signature = "swiglu_backward(a, b, grad_out) -> (da, db)"

    def cases(self, suite, key):
        return _swiglu_groups(suite, key, with_grad=True)

    def judge(self, out, case, expected=None):
        a, b, g = case.args
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return f"return a tuple (da, db); got {type(out).__name__}"
        da, db = swiglu_backward_reference(a, b, g)
        for nm, y, e in (("da", out[0], da), ("db", out[1], db)):
            bad = _check_tensor(y, a.shape, a.dtype, nm)
            bad = bad or compare_tensors(y, e, name=nm)
            if bad:
                return bad
        return None


# ==============================================================================================
# 3. Cross-entropy with an online softmax
# ==============================================================================================
IGNORE_INDEX = -100


def cross_entropy_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows whose target is not −100, in float64, as a 0-dim fp32 tensor."""
    return _cross_entropy(logits.double(), target, ignore_index=IGNORE_INDEX).float()


def _ce_inputs(s, n, v, dtype, dev, scale=3.0, offset=0.0, ignore=0.0, peak_last=False):
    g = _gen(s, dev)
    x = torch.randn(n, v, generator=g, device=g.device) * scale + offset
    if peak_last:  # each row's max in its last column: the running max grows in the last chunk, whatever
        x[:, -1] = x.amax(1) + 5.0 * scale  # the block size (< V), so a sum never rescaled is caught on every key
    t = torch.randint(0, v, (n,), generator=g, device=g.device)
    if ignore:
        drop = torch.rand(n, generator=g, device=g.device) < ignore
        drop[0] = True
        drop[-1] = False  # never all ignored
        t[drop] = IGNORE_INDEX
    return x.to(dtype).to(dev), t.to(dev)


@register
class CrossEntropy(Exercise):
    name = "cross_entropy"
    forbidden = ("torch.nn.functional.cross_entropy", "torch.nn.functional.log_softmax", "torch.nn.functional.nll_loss",
                 "torch.nn.CrossEntropyLoss", "effilab.ops")
    notebook = NOTEBOOK
    # the student's kernel writes one loss per row; the mean over the non-ignored rows may be taken with torch
    kernel = KernelRule(frozenset({"sum", "ne", "eq", "div", "clamp", "clamp_min"}),
                        "the mean of your kernel's per-row losses over the non-ignored rows")
    title = "Cross-entropy with an online softmax over vocabulary chunks"
    points = {"correctness": 3.0, "memory": 1.0}
    signature = "cross_entropy(logits: torch.Tensor[N, V], target: torch.Tensor[N] (int64)) -> 0-dim fp32 tensor"

    def cases(self, suite, key):
        dev = default_device()
        seeds = case_seeds(suite, key)
        big_v = 50257 if dev.type == "cuda" else 32771
        wide_v = 16387 if dev.type == "cuda" else 4099  # more than one chunk of any block up to 8192 (4096 on a CPU)
        nv = [(37, 1000), (5, big_v), (64, 5003), (1, 17), (129, 2049)]
        hdts = _half_dtypes()

        def case(s, n, v, dtype=torch.float32, **kw):
            x, t = _ce_inputs(s, n, v, dtype, dev, **kw)
            desc = ", ".join(f"{k} {val:g}" for k, val in kw.items() if k != "peak_last")
            desc += ", each row's max in its last column" if kw.get("peak_last") else ""
            return Case(f"seed {s}, {str(dtype)[6:]} logits {n}×{v}" + (f", {desc}" if desc else ""), (x, t))

        return [
            Group("fp32, V not a multiple of the block (1000, 32771, 5003, 17, 2049)",
                  [case(s, n, v) for s, (n, v) in zip(seeds, nv)],
                  "walk over the vocabulary in chunks of BLOCK_V, masking the last one (other=-inf for the max "
                  "and the sum); loss = logsumexp(row) - row[target]"),
            Group("ignore_index = -100: those rows are skipped, the mean is over the others",
                  [case(s, n, v, ignore=0.3) for s, (n, v) in zip(seeds, nv[:1] + [(40, 3001), (64, 5003), (9, 17), (129, 2049)])],
                  "a row whose target is -100 contributes 0 to the sum and is not counted in the denominator; "
                  "never load logits[row, -100]"),
            Group("large and small logits (offsets ±1e4, scale 100, scale 1e-3), the row's max in its last chunk: no "
                  "overflow, the running sum rescaled",
                  [case(s, 33, wide_v, scale=sc, offset=o, peak_last=True) for s, sc, o in
                   zip(seeds, (100.0, 3.0, 1e-3, 50.0, 3.0), (0.0, 1e4, 0.0, -1e4, 80.0))],
                  "online softmax: keep a running max m and a running sum d of exp(x - m); when the max grows "
                  "to m', rescale d by exp(m - m') before adding the new chunk"),
            Group("fp16" + (" and bf16" if len(hdts) > 1 else "") + " logits (accumulate in fp32)",
                  [case(s, n, v, hdts[i % len(hdts)]) for i, (s, (n, v)) in enumerate(zip(seeds, nv))],
                  "load the logits .to(tl.float32); the loss is an fp32 scalar whatever the logits' dtype"),
        ]

    def judge(self, out, case, expected=None):
        x, t = case.args
        if not isinstance(out, torch.Tensor):
            return f"return a 0-dim float32 torch.Tensor, got {type(out).__name__}"
        if out.dim() != 0 or out.dtype != torch.float32:
            return f"return a 0-dim float32 tensor (like F.cross_entropy); got shape {tuple(out.shape)}, {out.dtype}"
        return compare_tensors(out.detach().cpu(), cross_entropy_reference(x.cpu(), t.cpu()), rtol=1e-4, atol=1e-4,
                               name="loss")

    def memory_part(self, key):
        s = key.derive("memory")
        n, v = CE_MEMORY_SHAPE
        logits_bytes = n * v * 2

        def check(out, inputs):
            x, t = inputs
            bad = self.judge(out, Case("", (x[:0], t[:0])), None) if not isinstance(out, torch.Tensor) else None
            if bad:
                return bad
            ref = cross_entropy_reference(x, t)  # on the grading device: 4096 × 128256 logits
            return compare_tensors(out.to(ref.device).float(), ref, rtol=1e-4, atol=1e-4, name="loss")

        return MemoryPart(
            inputs=lambda: _ce_inputs(s, n, v, torch.bfloat16, "cuda", ignore=0.1),
            call=lambda fn, inp: (lambda: fn(*inp)), check=check, meter="cuda",
            budget_bytes=int(CE_MEMORY_FRACTION * logits_bytes),
            what=f"{CE_MEMORY_FRACTION:g} × the {n}×{v} bf16 logits; one fp32 copy of them would be 2×",
            cpu_note=f"On a GPU the extra peak memory of your call must be ≤ {CE_MEMORY_FRACTION:g} × the {n}×{v} "
                     "bf16 logits.",
            advice="do not call .float() on the logits or build probabilities: read each chunk, update a "
                   "running max and sum in registers, write one float per row")


# ==============================================================================================
# 4. Flash attention
# ==============================================================================================
ATTN_TOL = {torch.float32: (5e-3, 5e-3),  # tl.dot on fp32 uses tf32 on a GPU
            torch.float16: (5e-3, 2e-3), torch.bfloat16: (2e-2, 1e-2)}


def attention_naive(q, k, v, causal=False):
    """softmax(q kᵀ / √d) v with the S×S scores materialised (in q's dtype): the speed baseline."""
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def attention_reference(q, k, v, causal=False):
    """Naive attention in float64, cast back to q's dtype: the correctness reference."""
    return attention_naive(q.double().cpu(), k.double().cpu(), v.double().cpu(), causal).to(q.dtype)


def _attn_inputs(s, shape, dtype, dev):
    g = _gen(s, dev)
    return tuple(torch.randn(shape, generator=g, device=g.device).to(dtype).to(dev) for _ in range(3))


@register
class FlashAttention(Exercise):
    name = "flash_attention"
    forbidden = ("torch.nn.functional.scaled_dot_product_attention", "torch.nn.attention", "effilab.ops")
    notebook = NOTEBOOK
    kernel = True  # the work is done by the student's own Triton kernels
    title = "FlashAttention forward: online softmax over key blocks"
    points = {"correctness": 3.0, "speed": 1.0, "memory": 1.0}
    signature = "flash_attention(q, k, v, causal: bool = False) -> torch.Tensor  # q, k, v: (B, H, S, D)"

    def cases(self, suite, key):
        dev = default_device()
        seeds = case_seeds(suite, key)
        gpu = dev.type == "cuda"
        short = [(1, 2, 16, 16), (2, 1, 5, 32), (1, 1, 1, 16), (1, 2, 11, 64), (1, 1, 3, 32)]
        long_ = [(1, 2, 67, 32), (1, 1, 130, 16), (2, 1, 97, 64), (1, 1, 257, 16), (1, 2, 40, 32)]
        if gpu:
            long_ = [(2, 3, 1023, 64), (1, 4, 130, 128), (2, 2, 517, 64), (1, 1, 2049, 32), (1, 2, 40, 32)]
        causal = [(1, 2, 17, 32), (1, 1, 67, 16), (1, 2, 1, 16), (1, 1, 130, 32), (2, 1, 50, 64)]
        # half precision: the 2nd and 4th are causal; every S > 128 spans several key blocks even with
        # the 64- or 128-wide key blocks of a GPU kernel, so the online rescaling is exercised here too
        half = [(1, 2, 16, 32), (1, 1, 300, 16), (1, 1, 257, 64), (1, 2, 200, 32), (1, 1, 7, 16)]
        hdts = _half_dtypes()

        def case(s, shape, dtype, c):
            q, k, v = _attn_inputs(s, shape, dtype, dev)
            return Case(f"seed {s}, {str(dtype)[6:]} q, k, v of shape (B, H, S, D) = {shape}, causal={c}",
                        (q, k, v, c))

        return [
            Group("non-causal, fp32, short sequences (S ≤ 16: one key block)",
                  [case(s, shp, torch.float32, False) for s, shp in zip(seeds, short)],
                  "one program per (query block, batch·head): s = q kᵀ · scale with scale = 1/√D; mask the "
                  "query rows and key columns past S (keys past S get -inf)"),
            Group("non-causal, fp32, long sequences (many key blocks, S not a multiple of the block)",
                  [case(s, shp, torch.float32, False) for s, shp in zip(seeds, long_)],
                  "online softmax across key blocks: m_new = max(m, rowmax(s)); alpha = exp(m - m_new); "
                  "l = l·alpha + rowsum(p); acc = acc·alpha + p v; at the end O = acc / l"),
            Group("causal, fp32 (key j > query i masked out)",
                  [case(s, shp, torch.float32, True) for s, shp in zip(seeds, causal)],
                  "with causal=True set s[i, j] = -inf where key index j > query index i (compare the "
                  "absolute offsets, not the offsets inside the block)"),
            Group("fp16" + (" and bf16" if len(hdts) > 1 else "") + ", causal and not",
                  [case(s, shp, hdts[i % len(hdts)], i % 2 == 1)
                   for i, (s, shp) in enumerate(zip(seeds, half))],
                  "tl.dot on fp16/bf16 tiles accumulates in fp32; cast p to v's dtype before p @ v; "
                  "store the output in q's dtype"),
        ]

    def judge(self, out, case, expected=None):
        q, k, v, c = case.args
        bad = _check_tensor(out, q.shape, q.dtype)
        if bad:
            return bad
        rtol, atol = ATTN_TOL[q.dtype]
        return compare_tensors(out.cpu(), attention_reference(q, k, v, c), rtol=rtol, atol=atol)

    def speed_part(self, key):
        s = key.derive("speed")
        B, H, S, D = ATTN_SPEED_SHAPE

        def view(args, pick):  # the float64 reference on the whole input is slow: judge 256 queries of one head
            q, k, v, c = args
            b, h, s0 = pick % q.shape[0], (pick >> 8) % q.shape[1], (pick >> 16) % (q.shape[2] - 255)
            idx = (slice(b, b + 1), slice(h, h + 1))
            return (q[idx][:, :, s0:s0 + 256], k[idx], v[idx], c), idx + (slice(s0, s0 + 256),)

        return SpeedPart(
            inputs=lambda: _attn_inputs(s, ATTN_SPEED_SHAPE, torch.bfloat16, "cuda") + (False,),
            baseline=attention_naive, threshold=ATTN_SPEED_THRESHOLD, own_kernels=True, view=view,
            gate_label="the timed input (256 random queries of a random head judged)", flops=4.0 * B * H * S * S * D,
            baseline_name="naive attention",
            advice="BLOCK_M = 128, BLOCK_N = 64, num_warps = 8 and num_stages = 3 are good starting points on an H100")

    def memory_part(self, key):
        s = key.derive("memory")
        B, H, S, D = ATTN_MEMORY_SHAPE
        out_bytes = B * H * S * D * 2
        budget = int(ATTN_MEMORY_FACTOR * out_bytes)
        scores = B * H * S * S * 2
        assert scores > 16 * budget  # S² scores (even in bf16) would never fit the budget
        from ...memory import format_bytes

        def check(out, inputs):  # causal: the first 1024 queries see only the first 1024 keys
            q, k, v, c = inputs
            return self.judge(out[:1, :1, :1024] if isinstance(out, torch.Tensor) else out,
                              Case("", (q[:1, :1, :1024], k[:1, :1, :1024], v[:1, :1, :1024], c)))

        return MemoryPart(
            inputs=lambda: _attn_inputs(s, ATTN_MEMORY_SHAPE, torch.bfloat16, "cuda") + (True,),
            call=lambda fn, inp: (lambda: fn(*inp)), check=check, meter="cuda", budget_bytes=budget,
            what=f"{ATTN_MEMORY_FACTOR:g} × the output at S = {S}; the S×S scores alone would take {format_bytes(scores)}",
            cpu_note=f"On a GPU the extra peak memory of your call must be ≤ {ATTN_MEMORY_FACTOR:g} × the output at "
                     f"S = {S}.",
            advice="never build the S×S score matrix: keep one BLOCK_M×BLOCK_N tile of scores in registers")
