"""Exercise specs of notebook 05 — 8-bit optimizers (this module: the code map and block-wise
quantization; :mod:`.nb05_optim`: the fused 8-bit AdamW step and the factored second moment).

1. ``create_dynamic_map(signed, max_exponent_bits, total_bits)``: equal to
   ``bitsandbytes.functional.create_dynamic_map`` (fp32; within :data:`MAP_RTOL`, so a float64
   construction rounded once passes).
2. ``quantize_blockwise(x, code, blocksize) -> (codes, absmax)``, Triton: ``absmax`` equal to
   bitsandbytes' bit for bit; each code bitsandbytes' or a nearest one (see :func:`_code_problem`);
   values exactly halfway between two codes take the lower code. On a GPU faster than
   bitsandbytes' ``quantize_blockwise``. ``dequantize_blockwise(codes, absmax, code, blocksize,
   dtype)``, Triton: ``code[q] · absmax`` bit for bit.

bitsandbytes is the judge: imported lazily, in the grader's process (and the notebook's), never
where student code runs for a correctness case. This module ships in the student edition: the
references are plain PyTorch (:mod:`effilab.quant8`), never the instructor-only kernels.
"""
from __future__ import annotations

import functools
import math

import torch

from ...quant8 import dequantize_blockwise_torch, midpoints, n_blocks, quantize_blockwise_torch
from ..compare import compare_tensors
from ..core import Case, CaseResult, Exercise, Group, case_seeds, default_device, half_dtypes, register
from ..measure import SpeedPart

NOTEBOOK = "05_8bit_optimizers"

#: create_dynamic_map: relative tolerance against bitsandbytes' fp32 map. The maps' neighbouring
#: values differ by ≥ 0.7 % (relative), a map built in float64 and rounded once differs from
#: bitsandbytes' fp32 arithmetic by ≤ 1 ulp (1.2e-7): 1e-6 accepts the second, rejects any wrong value.
MAP_RTOL = 1e-6
#: A code other than bitsandbytes' is accepted when it is at least as near to ``s = x / absmax`` as
#: the nearest code, up to this many fp32 ulps of ``s``: a reciprocal instead of a division rounds
#: ``s`` differently by ≤ 1 ulp, Triton's default fp32 division on a GPU (div.full.f32) by ≤ 2.
CODE_ULPS = 4.0
#: Speed: ≥ this × bitsandbytes' quantize_blockwise(blocksize 256) on 2**28 fp32 values.
QUANT_SPEED_THRESHOLD = 1.0  # H200, 2026-12-02 (benchmarks/RESULTS.md): the reference 1.22× bitsandbytes (2 runs,
# spread 0.05 %); bnb 0.84 TB/s = 20 % of copy. At least as fast as bitsandbytes, a 22 % margin
# (issue #10); the notebook's binary search does 8 L1 gathers per value, the reference's lookup table 2
QUANT_SPEED_N = 1 << 28
QUANT_JUDGED = 1 << 20  # the timed output is judged on its first 2**20 values (the float64 judge is slow)


@functools.lru_cache(maxsize=1)
def bnb_functional():
    """``bitsandbytes.functional``, imported on first use (a few seconds; it pulls in torch._dynamo).
    Its import-time deprecation warnings are the library's, not the student's: they are dropped."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional as bnbf
    return bnbf


@functools.lru_cache(maxsize=1)
def _maps_cpu() -> tuple[torch.Tensor, torch.Tensor]:
    f = bnb_functional()
    return f.create_dynamic_map(signed=True), f.create_dynamic_map(signed=False)


def dynamic_maps(device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' dynamic maps (signed, for m; unsigned, for v), fresh copies on ``device``."""
    return tuple(m.clone().to(device) for m in _maps_cpu())


def _gen(s: int, dev="cpu") -> torch.Generator:
    d = torch.device(dev)
    return torch.Generator(device=d if d.type == "cuda" else "cpu").manual_seed(int(s))


_half_dtypes = half_dtypes  # fp16; bf16 on a GPU that has it (effilab.grading.core.half_dtypes)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ==============================================================================================
# 1. The dynamic code map
# ==============================================================================================
@register
class CreateDynamicMap(Exercise):
    name = "create_dynamic_map"
    forbidden = ("bitsandbytes",)
    notebook = NOTEBOOK
    title = "The dynamic 8-bit code map, signed (for m) and unsigned (for v)"
    points = {"correctness": 2.0}
    signature = ("create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) "
                 "-> torch.Tensor (256 sorted float32 values)")

    _GROUPS = [
        ("signed maps, every bit but the sign an exponent bit (8, 7, 6, 5, 4 bits; padded with zeros to 256)",
         [(True, b - 1, b) for b in (8, 7, 6, 5, 4)],
         "for each exponent i = 0 … e-1 take the 2^(i + total_bits-1-e) means of neighbouring points of "
         "torch.linspace(0.1, 1, 2^(i + total_bits-1-e) + 1) (float32), times 10^(i - e + 1), with both signs; "
         "add 0 and 1.0, pad with zeros to 256 values and sort"),
        ("unsigned maps for v ≥ 0 (8, 7, 6, 5, 4 bits): no sign bit, so one more fraction bit per exponent",
         [(False, b - 1, b) for b in (8, 7, 6, 5, 4)],
         "unsigned: 2^(i + total_bits - e) + 1 linspace points per exponent (twice as many means as signed), "
         "positive values only"),
        ("signed maps with spare bits (max_exponent_bits < total_bits - 1): the extra linear values",
         [(True, 6, 8), (True, 5, 8), (True, 3, 8), (True, 4, 6), (True, 2, 4)],
         "with e < total_bits - 1 exponent bits, 2^(total_bits-1-e) - 1 more means of "
         "linspace(0.1, 1, 2^(total_bits-1-e)) go in at the largest scale (10^0), with both signs"),
    ]

    def cases(self, suite, key):
        return [Group(name, [Case(f"create_dynamic_map(signed={s}, max_exponent_bits={e}, total_bits={b})",
                                  (s, e, b)) for s, e, b in configs], hint)
                for name, configs, hint in self._GROUPS]

    def judge(self, out, case, expected=None):
        if not isinstance(out, torch.Tensor):
            return f"return a torch.Tensor, got {type(out).__name__}"
        if out.dtype != torch.float32 or tuple(out.shape) != (256,):
            return f"return 256 float32 values (bitsandbytes pads smaller maps with zeros); got {out.dtype} {tuple(out.shape)}"
        ref = bnb_functional().create_dynamic_map(*case.args)
        mine = out.detach().cpu()
        if not bool((mine[1:] >= mine[:-1]).all()):
            return CaseResult(False, "your map is not sorted ascending", "sort the values: torch.sort(code).values")
        return compare_tensors(mine, ref, rtol=MAP_RTOL, atol=0.0, name="map")


# ==============================================================================================
# 2. Block-wise quantization and dequantization
# ==============================================================================================
def _block_scales(g: torch.Generator, nb: int, spread: float) -> torch.Tensor:
    """One scale per block, log-uniform over ±``spread`` decades: absmax differs from block to block."""
    return 10.0 ** ((torch.rand(nb, generator=g, device=g.device) * 2 - 1) * spread)


def _quant_input(s: int, shape, bs: int, dtype=torch.float32, dev="cpu", signed=True, kind="normal"):
    """x for quantize_blockwise: heavy-tailed values whose scale changes from block to block."""
    g = _gen(s, dev)
    n = math.prod(shape)
    nb = max(1, n_blocks(n, bs))
    x = torch.randn(n, generator=g, device=g.device) * torch.exp(torch.randn(n, generator=g, device=g.device))
    x = x * _block_scales(g, nb, 2.0).repeat_interleave(bs)[:n]
    if kind == "extreme":
        x = _extreme(x, g, bs)
    if not signed:
        x = x.abs()
    if dtype != torch.float32:
        x = x.clamp(-6e4, 6e4)  # inside fp16's range
    return x.view(shape).to(dtype).to(dev)


def _extreme(x: torch.Tensor, g: torch.Generator, bs: int) -> torch.Tensor:
    """Zeros (whole blocks and inside blocks), |x| from 1e-30 to 1e30 and subnormals beside normal values."""
    n = x.numel()
    nb = n_blocks(n, bs)
    scale = 10.0 ** torch.randint(-30, 31, (nb,), generator=g, device=g.device).float()
    x = x / x.abs().amax().clamp_min(1e-30) * scale.repeat_interleave(bs)[:n]
    x[torch.rand(n, generator=g, device=g.device) < 0.1] = 0.0
    if nb > 2:
        x[bs:2 * bs] = 0.0  # an all-zero block
        sub = torch.rand(min(bs, n - 2 * bs), generator=g, device=g.device) < 0.3
        x[2 * bs:3 * bs][sub] = 1e-40  # subnormals inside a block of normal values
    return x


def _tie_input(s: int, n: int, bs: int, code: torch.Tensor, dev="cpu"):
    """Values exactly on midpoints between codes, in blocks whose absmax is a power of two (so that
    x / absmax is exact however it is computed): the tie rule decides every one of them."""
    g = _gen(s, "cpu")
    mids = midpoints(code)
    mids = mids[(mids.abs() > 1e-3) & (mids.abs() < 1.0)]  # normal-sized midpoints, absmax stays the max
    nb = n_blocks(n, bs)
    pow2 = 2.0 ** torch.randint(-8, 9, (nb,), generator=g).float()
    x = mids[torch.randint(0, mids.numel(), (n,), generator=g)]
    x[::bs] = 1.0  # each block's absmax: exactly 1, then scaled by a power of two
    return (x * pow2.repeat_interleave(bs)[:n]).to(dev)


def _split_output(out, x: torch.Tensor, bs: int):
    """(q, absmax) or the message that says what is wrong with their kinds and shapes."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return None, f"return a tuple (codes, absmax); got {type(out).__name__}"
    q, absmax = out
    nb = n_blocks(x.numel(), bs)
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8 or tuple(q.shape) != tuple(x.shape):
        return None, (f"codes must be a uint8 tensor of x's shape {tuple(x.shape)}; got "
                      f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32 or absmax.numel() != nb:
        return None, (f"absmax must be {nb} float32 values (one per block of {bs}); got "
                      f"{getattr(absmax, 'dtype', type(absmax).__name__)} with {getattr(absmax, 'numel', lambda: '?')()} values")
    return (q.detach().cpu().reshape(-1), absmax.detach().cpu().reshape(-1).contiguous()), None


def _absmax_problem(mine: torch.Tensor, ref: torch.Tensor, bs: int) -> CaseResult | None:
    bad = compare_tensors(mine, ref, exact=True, name="absmax")
    if not bad:
        return None
    hint = ""
    if mine.numel() > 1 and bool((mine == mine[0]).all()) and not bool((ref == ref[0]).all()):
        hint = (f"all your absmax values are equal: compute one absmax per block of {bs} values "
                "(tl.max(tl.abs(x), axis=1) over a [blocks, BLOCK] tile), not one per tensor or per tile")
    elif mine.numel() > 1 and bool((mine >= ref).all()):
        hint = ("your absmax is too large in some blocks: each block's maximum must cover exactly its own "
                f"{bs} values (one row of the tile), not the whole tile or tensor")
    return CaseResult(False, bad, hint)


def _code_problem(x: torch.Tensor, q: torch.Tensor, q_ref: torch.Tensor, absmax: torch.Tensor,
                  code: torch.Tensor, bs: int) -> str | None:
    """None when every code is bitsandbytes' or a nearest one.

    bitsandbytes' CUDA kernel takes the nearest code by a binary search; its CPU build rounds
    ``s`` to a 65 536-bin grid over [-1, 1] first (a lookup table), so on a CPU its code is not the
    nearest when codes are closer together than 3e-5 (|s| ≲ 3e-3). A code that differs from
    bitsandbytes' passes when it is at least as near to ``s`` (in float64) as the nearest code,
    within :data:`CODE_ULPS` fp32 ulps of ``s``. In an all-zero block every code decodes to 0."""
    diff = (q != q_ref).nonzero().flatten()
    if diff.numel() == 0:
        return None
    a = absmax.double()[diff // bs]
    keep = a > 0
    diff, a = diff[keep], a[keep]
    if diff.numel() == 0:
        return None
    c = code.double().cpu()
    s = x.reshape(-1).double().cpu()[diff] / a
    nearest = torch.bucketize(s, (c[:-1] + c[1:]) / 2)
    best = (s - c[nearest]).abs()
    mine = (s - c[q[diff].long()]).abs()
    slack = CODE_ULPS * 2.0 ** -23 * s.abs().clamp_min(2.0 ** -126) + 1e-45
    bad = mine > best + slack
    if not bool(bad.any()):
        return None
    idx = diff[bad]
    lines = []
    for j in idx[:5].tolist():
        k = int((diff == j).nonzero()[0])
        lines.append(f"  at [{j}]: x = {float(x.reshape(-1)[j]):.9g}, absmax = {float(a[k]):.9g}, x/absmax = "
                     f"{float(s[k]):.9g}: yours code {int(q[j])} (= {float(c[q[j]]):.9g}), the nearest is "
                     f"code {int(nearest[k])} (= {float(c[nearest[k]]):.9g}); bitsandbytes: {int(q_ref[j])}")
    return (f"{int(bad.sum())} of {q.numel()} codes are not the nearest code to x / absmax\n"
            "first mismatches:\n" + "\n".join(lines))


@register
class QuantizeBlockwise(Exercise):
    name = "quantize_blockwise"
    notebook = NOTEBOOK
    kernel = True  # the codes and absmax are written by the student's own Triton kernel
    title = "Block-wise 8-bit quantization in Triton, equal to bitsandbytes"
    points = {"correctness": 3.0, "speed": 1.0}
    signature = ("quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int = 256) "
                 "-> (codes uint8 of x's shape, absmax float32 of ceil(x.numel() / blocksize))")

    def cases(self, suite, key):
        dev = default_device()
        gpu = dev.type == "cuda"
        seeds = case_seeds(suite, key)
        signed, unsigned = dynamic_maps(dev)

        def case(s, shape, bs, dtype=torch.float32, sign=True, kind="normal"):
            x = _quant_input(s, shape, bs, dtype, dev, sign, kind)
            code = signed if sign else unsigned
            what = f"seed {s}: {_dt(dtype)} x of shape {tuple(shape)}, blocksize {bs}, {'signed' if sign else 'unsigned'} map"
            return Case(what + (", with zeros, 1e-30…1e30 and subnormals" if kind == "extreme" else ""),
                        (x, code.clone(), bs), meta={"check": "codes"})

        def tie(s, n, bs, sign):
            code = signed if sign else unsigned
            return Case(f"seed {s}: {n} values exactly halfway between two codes, blocksize {bs}, "
                        f"{'signed' if sign else 'unsigned'} map", (_tie_input(s, n, bs, code.cpu(), dev), code.clone(), bs),
                        meta={"check": "ties"})

        big = (1823, 781) if gpu else (211, 77)
        many = [((64, 256), 256, True), ((128, 64), 64, False), ((4, 4096), 4096, True), ((16, 1024), 1024, True),
                ((300, 128), 128, False)]
        odd = [((257,), 256, True), ((4097,), 4096, True), (big, 256, True), ((3, 5, 67), 64, False), ((1000,), 512, True)]
        hd = _half_dtypes()
        return [
            Group("one block (n ≤ blocksize): absmax = max |x|, codes the nearest to x / absmax",
                  [case(s, shp, bs, sign=sg) for s, (shp, bs, sg) in
                   zip(seeds, [((200,), 256, True), ((64,), 64, True), ((4096,), 4096, False), ((1,), 64, True),
                               ((3, 5, 7), 128, True)])],
                  "one program per block (or per few blocks): load the block, absmax = tl.max(tl.abs(x)), "
                  "s = x / absmax, then the index of the nearest code (count the midpoints below s)"),
            Group("many blocks, n a multiple of the block (blocksize 64 … 4096): one absmax per block",
                  [case(s, shp, bs, sign=sg) for s, (shp, bs, sg) in zip(seeds, many)],
                  "view x as (blocks, blocksize) and reduce each row: tl.max(tl.abs(x), axis=1); store one absmax "
                  "per row"),
            Group("a partial last block (n = 257, 4097, 1000; 2-D and 3-D inputs)",
                  [case(s, shp, bs, sign=sg) for s, (shp, bs, sg) in zip(seeds, odd)],
                  "mask the loads past n with other=0.0 (a zero never raises the absmax) and the stores past n; "
                  "the last block's absmax covers only its real values"),
            Group("half-precision inputs (fp16; bf16 too on a GPU): absmax and codes from the values in fp32",
                  [case(s, shp, bs, hd[i % len(hd)], sg) for i, (s, (shp, bs, sg)) in enumerate(zip(seeds, odd))],
                  "load with .to(tl.float32); absmax is float32 whatever x's dtype"),
            Group("zeros, 1e-30 … 1e30 and subnormals (an all-zero block has absmax 0)",
                  [case(s, shp, bs, sign=sg, kind="extreme") for s, (shp, bs, sg) in zip(seeds, many)],
                  "an all-zero block has absmax 0: divide by tl.where(absmax > 0, absmax, 1.0) so that s = 0; "
                  "divide x by absmax rather than multiplying by 1/absmax (1/1e-38 overflows)"),
            Group("exact ties: a value halfway between two codes takes the lower code",
                  [tie(s, n, bs, sg) for s, (n, bs, sg) in
                   zip(seeds, [(4096, 256, True), (1000, 64, False), (8192, 1024, True), (777, 128, True),
                               (2048, 256, False)])],
                  "the nearest code's index is the number of midpoints (code[k] + code[k+1]) / 2 strictly below "
                  "s: compare with `mid < s`, not `mid <= s` and not by distances"),
        ]

    def judge(self, out, case, expected=None):
        x, code, bs = case.args
        parts, bad = _split_output(out, x, bs)
        if bad:
            return bad
        q, absmax = parts
        xc, cc = x.detach().cpu(), code.detach().cpu()
        if case.meta.get("check") == "ties":
            q_ref, a_ref = quantize_blockwise_torch(xc, cc, bs)
            prob = _absmax_problem(absmax, a_ref, bs)
            if prob:
                return prob
            return compare_tensors(q, q_ref.reshape(-1), name="codes", describe_input=lambda ix: (
                f"x/absmax = {float(xc.reshape(-1)[ix[0]] / a_ref[ix[0] // bs]):.9g}, exactly between codes "
                f"{int(q_ref.reshape(-1)[ix[0]])} and {int(q_ref.reshape(-1)[ix[0]]) + 1}"))
        q_b, st = bnb_functional().quantize_blockwise(xc.contiguous().clone(), code=cc.clone(), blocksize=bs)
        a_b = st.absmax.float().reshape(-1)
        prob = _absmax_problem(absmax, a_b, bs)
        if prob:
            return prob
        return _code_problem(xc, q, q_b.reshape(-1), a_b, cc, bs)

    def speed_part(self, key):
        s = key.derive("speed")

        def inputs():
            signed, _ = dynamic_maps("cuda")
            return (_quant_input(s, (QUANT_SPEED_N,), 256, torch.float32, "cuda"), signed, 256)

        def view(args, out):
            x, code, bs = args
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                return args, out
            return (x[:QUANT_JUDGED], code, bs), (out[0][:QUANT_JUDGED], out[1][:QUANT_JUDGED // bs])

        return SpeedPart(
            inputs=inputs, baseline=bnb_quantize, threshold=QUANT_SPEED_THRESHOLD, own_kernels=True, view=view,
            gate_label=f"the timed input ({QUANT_SPEED_N} fp32 values, blocksize 256; first {QUANT_JUDGED} judged)",
            bytes_moved=QUANT_SPEED_N * 5 + 4 * (QUANT_SPEED_N // 256),
            baseline_name="bitsandbytes quantize_blockwise",
            advice="read x once and write one byte per value: tiles of several blocks per program (e.g. 16 × 256 "
                   "values, 8 warps); the nearest-code search is 8 gathers from a table that stays in L1")


def bnb_quantize(x, code, blocksize=256):
    """bitsandbytes' quantize_blockwise with our signature: the speed baseline."""
    q, st = bnb_functional().quantize_blockwise(x, code=code, blocksize=blocksize)
    return q, st.absmax


@register
class DequantizeBlockwise(Exercise):
    name = "dequantize_blockwise"
    notebook = NOTEBOOK
    kernel = True
    title = "Block-wise dequantization in Triton: code[q] · absmax"
    points = {"correctness": 1.0}
    signature = ("dequantize_blockwise(codes: torch.Tensor (uint8), absmax: torch.Tensor, code: torch.Tensor, "
                 "blocksize: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor of codes' shape")

    def cases(self, suite, key):
        dev = default_device()
        seeds = case_seeds(suite, key)
        signed, unsigned = dynamic_maps("cpu")
        hd = _half_dtypes()

        def case(s, shape, bs, dtype=torch.float32, sign=True, kind="normal"):
            x = _quant_input(s, shape, bs, torch.float32, "cpu", sign, kind)
            code = signed if sign else unsigned
            q, a = quantize_blockwise_torch(x, code, bs)
            return Case(f"seed {s}: {tuple(shape)} codes, blocksize {bs}, {_dt(dtype)} output"
                        + (", all-zero blocks and extreme absmax" if kind == "extreme" else ""),
                        (q.to(dev), a.to(dev), code.to(dev), bs, dtype))

        shapes = [((64, 256), 256), ((257,), 256), ((3, 5, 67), 64), ((4097,), 4096), ((33, 100), 128)]
        return [
            Group("fp32 output, bit for bit (blocksize 64 … 4096, partial last blocks)",
                  [case(s, shp, bs) for s, (shp, bs) in zip(seeds, shapes)],
                  "y = tl.load(code_ptr + q) * tl.load(absmax_ptr + offs // blocksize): one gather per value, the "
                  "block of value i is i // blocksize"),
            Group("half-precision output (fp16; bf16 too on a GPU): computed in fp32, rounded once",
                  [case(s, shp, bs, hd[i % len(hd)]) for i, (s, (shp, bs)) in enumerate(zip(seeds, shapes))],
                  "compute code[q] * absmax in fp32 and store with .to(y_ptr.dtype.element_ty)"),
            Group("all-zero blocks and absmax from 1e-30 to 1e30",
                  [case(s, shp, bs, kind="extreme") for s, (shp, bs) in zip(seeds, shapes)],
                  "a zero absmax gives 0 whatever the code; do not divide or normalise, just multiply"),
        ]

    def judge(self, out, case, expected=None):
        q, a, code, bs, dtype = case.args
        if not isinstance(out, torch.Tensor):
            return f"return a torch.Tensor, got {type(out).__name__}"
        if out.dtype != dtype or tuple(out.shape) != tuple(q.shape):
            return f"return a {dtype} tensor of the codes' shape {tuple(q.shape)}; got {out.dtype} {tuple(out.shape)}"
        ref = dequantize_blockwise_torch(q.cpu(), a.cpu(), code.cpu(), bs, dtype)
        return compare_tensors(out.detach().cpu(), ref, exact=True, name="output")


from . import nb05_optim  # noqa: E402,F401  (exercises 3 and 4 register themselves)
