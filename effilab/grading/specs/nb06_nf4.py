"""Exercise specs of notebook 06, part 2 — NF4 quantization in Triton, equal to bitsandbytes.

3. ``nf4_quantize(w, double_quant=True) -> dict``: NF4 codes of blocks of 64 values, two per byte
   (element 2i in the high nibble), the fp32 absmax per block — or, double-quantised, the absmax
   in 8 bits (the dynamic code, blocks of 256) with an fp32 ``absmax2`` per 256 blocks and their
   mean as ``offset``. Judged against ``bitsandbytes.functional.quantize_4bit(quant_type="nf4",
   blocksize=64, compress_statistics=…)``; storage ≤ :data:`MAX_BITS` bits per parameter measured
   on large tensors. Speed (GPU): against bitsandbytes' ``quantize_4bit``.
4. ``nf4_dequantize(q, shape, dtype) -> Tensor``: the inverse, equal to bitsandbytes'
   ``dequantize_4bit``. Speed (GPU): against bitsandbytes' ``dequantize_4bit``.

How codes are judged. Rounding to the nearest code is exact arithmetic on ``x / absmax``, but the
quotient is computed in float32 (bitsandbytes: ``x * (1 / absmax)``), and bitsandbytes' own
backends do not agree on every element: its CUDA kernel compares against hard-coded float
midpoints, its CPU code (for the 8-bit absmax codes) uses an approximate table search. A code
passes when it is the nearest code to the exact quotient (float64), or bitsandbytes' own choice on
the grading device, or when the quotient lies within float32 rounding (:data:`TIE_RTOL`) of the
midpoint between the code and the nearest one. An all-zero block (absmax 0) decodes to 0 whatever
its codes. ``tests/test_nb06_checkers.py`` checks that bitsandbytes' own output passes.
"""
from __future__ import annotations

import math

import torch

from ...nf4 import BLOCKSIZE, BLOCKSIZE2, bits_per_param, dynamic_code, n_blocks, nf4_code
from ..compare import compare_tensors
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import SpeedPart, faster_than
from .nb06 import NOTEBOOK, gen

MAX_BITS = 4.13  # NF4 + double quantization: 4 + 8/64 + 32/(64·256) = 4.127 bits per parameter (QLoRA §3)
TIE_RTOL = 1e-6  # x / absmax in float32 is off by at most ~2.4e-7 relative: a wider window around each midpoint
OFFSET_RTOL = 1e-5  # the mean of the absmax, summed in another order (atomics, a tree): ~1e-6 relative at 2^18 blocks
# GPU problem sizes of the speed parts: a 8192 × 8192 bf16 weight (67 M parameters, 128 MiB)
SPEED_SHAPE = (8192, 8192)
# H200, 2026-12-02 (benchmarks/RESULTS.md, notebook 06; results/nb06/calibration_2026-12-02.txt), the
# reference over four runs: quantize 4.18–5.25× bitsandbytes' quantize_4bit (0.22–0.27 vs 0.89–1.16 ms),
# dequantize 1.11–1.40× dequantize_4bit (75.4–75.5 µs, 2.24 TB/s, against 84–105 µs); with a host-to-device
# copy of the code tables per call they were 2.93× and 0.61×. Quantize's 3.5 leaves the slowest run a 16 %
# margin; dequantize asks for bitsandbytes' speed (the reference's worst run: 11 % above it).
# The reference's dequantize launch then went from 32 to 128 blocks a program (results/open_causes_2026-12-02/
# nb06_dequant.md): 58.1 µs, 2.91 TB/s, 1.46× dequantize_4bit's 84.7 µs in the same run; the threshold stays 1.0,
# which the old launch (the worst run 1.11×) also passes.
QUANT_SPEED_THRESHOLD = 3.5
DEQUANT_SPEED_THRESHOLD = 1.0  # at least as fast as bitsandbytes; faster kernels: the kernels-at-the-limit issue
DEQUANT_BASELINE = "bitsandbytes' dequantize_4bit"

_FORBIDDEN = ("bitsandbytes", "effilab.nf4.bnb_quantize", "effilab.nf4.bnb_dequantize", "effilab.nf4.bnb_round_trip")


# ==============================================================================================
# Helpers shared by the judges
# ==============================================================================================
def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` 4-bit codes of a packed byte tensor (high nibble first), as int64."""
    p = packed.reshape(-1).to(torch.int64)
    return torch.stack([p >> 4, p & 15], dim=1).reshape(-1)[:n]


def block_absmax(w: torch.Tensor) -> torch.Tensor:
    """float32 max |w| over consecutive blocks of 64 values of the flattened tensor (the last may be partial)."""
    flat = w.reshape(-1).float().abs()
    nb = n_blocks(flat.numel())
    return torch.nn.functional.pad(flat, (0, nb * BLOCKSIZE - flat.numel())).view(nb, BLOCKSIZE).amax(1)


def code_problem(codes: torch.Tensor, s: torch.Tensor, table: torch.Tensor, window: torch.Tensor,
                 free: torch.Tensor | None, theirs: torch.Tensor | None, what: str, where) -> str | None:
    """None when every code is acceptable for the exact scaled values ``s`` (float64), else a report.

    Acceptable: the nearest entry of ``table``; ``theirs`` (bitsandbytes' choice); anything where
    ``free`` (a zero scale); the other side of a midpoint that ``s`` lies within ``window`` of."""
    mids = (table[:-1] + table[1:]) / 2
    nearest = torch.bucketize(s, mids)
    ok = codes == nearest
    if free is not None:
        ok |= free
    if theirs is not None:
        ok |= codes == theirs
    lo = torch.minimum(codes, nearest).clamp(0, table.numel() - 2)
    ok |= ((codes - nearest).abs() == 1) & ((s - mids[lo]).abs() <= window)
    bad = (~ok).nonzero().view(-1)
    if not bad.numel():
        return None
    lines = []
    for i in bad[:3].tolist():
        c, e = int(codes[i]), int(nearest[i])
        shown = f"code {c} ({float(table[c]):.6g})" if 0 <= c < table.numel() else f"code {c} (out of range)"
        lines.append(f"  {where(i)}: scaled value {float(s[i]):.7g}: yours {shown}, nearest code {e} "
                     f"({float(table[e]):.6g})")
    return f"{bad.numel()} of {codes.numel()} {what} are not the nearest code\n" + "\n".join(lines)


def _expect_keys(out, double_quant: bool) -> str | None:
    if not isinstance(out, dict):
        return f"return a dict of tensors ('packed', 'absmax', …), got {type(out).__name__}"
    want = {"packed", "absmax"} | ({"absmax2", "offset"} if double_quant else set())
    if set(out) != want:
        return (f"with double_quant={double_quant} return exactly the keys {sorted(want)}; yours has {sorted(out)}")
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    return f"{bad} must be tensors" if bad else None


def _shape_problem(out, n: int, double_quant: bool) -> str | None:
    nb = n_blocks(n)
    want = {"packed": ((n + 1) // 2, torch.uint8), "absmax": (nb, torch.uint8 if double_quant else torch.float32)}
    if double_quant:
        want |= {"absmax2": (n_blocks(nb, BLOCKSIZE2), torch.float32), "offset": (1, torch.float32)}
    for k, (count, dtype) in want.items():
        t = out[k]
        if t.numel() != count or t.dtype != dtype:
            return (f"{k!r} must hold {count} value{'s' if count > 1 else ''} of {dtype} for a tensor of {n} values; "
                    f"yours: {t.numel()} of {t.dtype}" + (" (two 4-bit codes per byte)" if k == "packed" else ""))
    return None


def _swapped(packed: torch.Tensor) -> torch.Tensor:
    p = packed.to(torch.int64)
    return ((p & 15) << 4) | (p >> 4)


# ==============================================================================================
# 3. nf4_quantize
# ==============================================================================================
def quantize_problem(out, w: torch.Tensor, double_quant: bool) -> str | None:
    """The judge of one quantized state against the weight it came from (any device)."""
    from ...nf4 import bnb_quantize

    problem = _expect_keys(out, double_quant)
    if problem:
        return problem
    n = w.numel()
    problem = _shape_problem(out, n, double_quant)
    if problem:
        return problem
    dev = w.device
    out = {k: v.to(dev).reshape(-1) for k, v in out.items()}
    ref = bnb_quantize(w, double_quant)
    amax = block_absmax(w)
    if not double_quant:
        problem = compare_tensors(out["absmax"], amax, exact=True, name="absmax (max |w| of each block of 64)")
        if problem:
            return problem
    table = nf4_code(dev).double()
    block = torch.arange(n, device=dev) // BLOCKSIZE
    s = w.reshape(-1).double() / amax.double().clamp_min(1e-300)[block]
    codes = unpack(out["packed"], n)

    def where(i):
        return f"element {i} (block {i // BLOCKSIZE})"

    problem = code_problem(codes, s, table, TIE_RTOL * s.abs(), (amax == 0)[block], unpack(ref["packed"], n),
                           "4-bit codes", where)
    if problem:
        swapped = unpack(_swapped(out["packed"]), n)
        if code_problem(swapped, s, table, TIE_RTOL * s.abs(), (amax == 0)[block], None, "", where) is None:
            return ("your bytes hold the right codes in the wrong nibbles: element 2i goes in the HIGH nibble "
                    "(byte = code[2i] << 4 | code[2i + 1]), as bitsandbytes packs them")
        return problem
    return _double_quant_problem(out, amax, ref) if double_quant else None


def _double_quant_problem(out, amax: torch.Tensor, ref: dict) -> str | None:
    """The 8-bit absmax codes, absmax2 and offset, judged with the student's own offset and absmax2
    once those are shown to be bitsandbytes' (up to the order of a sum)."""
    dev = amax.device
    off = out["offset"].reshape(()).float()
    mean = amax.double().mean()
    if not abs(float(off) - float(mean)) <= OFFSET_RTOL * abs(float(mean)) + 1e-30:
        return (f"offset {float(off):.8g}: it must be the mean of the fp32 absmax values, {float(mean):.8g} "
                f"(bitsandbytes: {float(ref['offset']):.8g})")
    centred = amax - off  # float32, as the kernel computes it
    nb = amax.numel()
    nb2 = n_blocks(nb, BLOCKSIZE2)
    a2 = torch.nn.functional.pad(centred.abs(), (0, nb2 * BLOCKSIZE2 - nb)).view(nb2, BLOCKSIZE2).amax(1)
    problem = compare_tensors(out["absmax2"], a2, rtol=1e-6, atol=1e-30,
                              name="absmax2 (max |absmax − offset| of each group of 256 blocks)")
    if problem:
        return problem
    group = torch.arange(nb, device=dev) // BLOCKSIZE2
    a2g = out["absmax2"].double()[group]
    s2 = centred.double() / a2g.clamp_min(1e-300)
    window = TIE_RTOL * s2.abs() + 2.0 ** -22 * (amax.double() + off.double().abs()) / a2g.clamp_min(1e-300)
    return code_problem(out["absmax"].to(torch.int64), s2, dynamic_code(dev).double(), window, (a2g == 0),
                        ref["absmax"].to(torch.int64), "8-bit absmax codes",
                        lambda i: f"absmax of block {i} ({float(amax[i]):.7g}, group {i // BLOCKSIZE2})")


def _weights(s: int, shape, dtype=torch.float32, zero_block: bool = False, outlier: bool = False) -> torch.Tensor:
    g = gen(s)
    w = torch.randn(shape, generator=g) * 0.05
    flat = w.view(-1)
    if zero_block and flat.numel() > BLOCKSIZE:
        flat[BLOCKSIZE:2 * BLOCKSIZE] = 0.0  # a pruned block: absmax 0
    if outlier and flat.numel() > 3:
        flat[int(torch.randint(0, flat.numel(), (1,), generator=g))] *= 40.0  # one block dominated by an outlier
    return w.to(dtype)


@register
class NF4Quantize(Exercise):
    name = "nf4_quantize"
    notebook = NOTEBOOK
    title = "NF4 quantization with double quantization, in Triton, equal to bitsandbytes"
    points = {"correctness": 3.0, "speed": 1.0}
    signature = ("nf4_quantize(w: Tensor, double_quant: bool = True) -> {'packed': uint8, 'absmax': float32 | uint8"
                 "[, 'absmax2': float32, 'offset': float32 0-dim]}")
    kernel = True
    forbidden = _FORBIDDEN

    def cases(self, suite, key):
        gpu = default_device().type == "cuda"
        seeds = case_seeds(suite, key)

        def case(s, shape, double_quant=False, dtype=torch.float32, **kw):
            extra = "".join(f", {k.replace('_', ' ')}" for k, v in kw.items() if v)
            return Case(f"seed {s}: {str(dtype)[6:]} w of shape {shape}, double_quant={double_quant}{extra}",
                        (_weights(s, shape, dtype, **kw), double_quant))

        big = (1823, 781) if gpu else (61, 781)
        large = (4096, 1024) if gpu else (128, 512)
        return [
            Group("one block (n ≤ 64 values): absmax and the nearest NF4 code of every value",
                  [case(s, shp) for s, shp in zip(seeds, [(64,), (7,), (1,), (2, 32), (63,)])],
                  "absmax = max |w| of the block; code = index of the NF4 value nearest to w / absmax "
                  "(compare with the 15 midpoints between consecutive NF4 values)"),
            Group("many blocks: one absmax per block of 64 values of the flattened tensor (a zero block, an outlier)",
                  [case(s, shp, **kw) for s, shp, kw in zip(seeds, [(128, 64), (33, 128), (4096,), (3, 5, 64), (64, 96)],
                                                            [{}, {"zero_block": True}, {"outlier": True}, {}, {}])],
                  "each group of 64 consecutive values (w.reshape(-1)) has its own absmax: one program per "
                  "block (or per row of blocks), never one scale for the whole tensor"),
            Group("odd sizes: a partial last block and an odd count (one padding nibble)",
                  [case(s, shp) for s, shp in zip(seeds, [big, (3, 5, 67), (4097,), (65,), (2, 4097)])],
                  "mask the loads past the end (other=0.0): the last block is shorter, and with an odd count "
                  "the last byte holds one code and a padding nibble"),
            Group("bf16 and fp16 weights (quantized from their exact fp32 values)",
                  [case(s, shp, dtype=dt) for s, shp, dt in zip(seeds, [(64, 64), (3, 67), (256,), big, (5, 64)],
                                                                [torch.bfloat16, torch.float16] * 3)],
                  "load, .to(tl.float32), then do everything in fp32; absmax is stored as float32"),
            Group("double quantization: 8-bit absmax codes (dynamic code, groups of 256), absmax2 and offset",
                  [case(s, shp, True) for s, shp in zip(seeds, [(64 * 300,), (257, 64), (64,), (3, 17 * 64 * 16 + 5),
                                                                 (1000, 64)])],
                  "offset = mean of all the fp32 absmax; absmax2 = max |absmax − offset| per 256 blocks; each "
                  "absmax's code = nearest value of dynamic_code() to (absmax − offset) / absmax2"),
            Group(f"storage ≤ {MAX_BITS} bits per parameter with double quantization (large tensors)",
                  [case(s, shp, True) for s, shp in zip(seeds, [large, (large[1], large[0]), (2, large[0], 256),
                                                                 (large[0] * 4, 128), (large[0], large[1] + 64)])],
                  "uint8 codes for the absmax (not float32), one float32 absmax2 per 256 blocks and a 0-dim offset: "
                  "4 + 8/64 + 32/16384 ≈ 4.127 bits per parameter"),
        ]

    def judge(self, out, case, expected=None):
        w, double_quant = case.args
        problem = quantize_problem(out, w, double_quant)
        if problem:
            return problem
        if double_quant and w.numel() >= 1 << 16:  # the storage group's sizes: the fixed 4 bytes of offset vanish
            bits = bits_per_param(out, w.numel())
            if bits > MAX_BITS:
                return f"your state takes {bits:.4f} bits per parameter; at most {MAX_BITS} with double quantization"
        return None

    def speed_part(self, key):
        s = key.derive("speed")
        n = math.prod(SPEED_SHAPE)
        return SpeedPart(
            inputs=lambda: (_gpu_weights(s), True), baseline=_bnb_quantize_4bit, threshold=QUANT_SPEED_THRESHOLD,
            own_kernels=True, bytes_moved=2 * n + n // 2 + n // BLOCKSIZE, baseline_name="bitsandbytes quantize_4bit",
            gate_label=f"the timed input ({SPEED_SHAPE[0]}×{SPEED_SHAPE[1]} bf16, double_quant=True)",
            cpu_note=f"On a GPU yours must be ≥ {QUANT_SPEED_THRESHOLD:g}× faster than bitsandbytes' quantize_4bit "
                     f"({SPEED_SHAPE[0]}×{SPEED_SHAPE[1]} bf16, double quantization).",
            advice="one pass over the weight: each program quantizes many blocks (a 2-D tile of blocks × 64), "
                   "accumulates its part of the absmax sum with one atomic add, and a second small kernel "
                   "quantizes the absmax")


def _gpu_weights(s: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(int(s))
    return (torch.randn(SPEED_SHAPE, generator=g, device="cuda") * 0.05).to(torch.bfloat16)


def _bnb_quantize_4bit(w, double_quant=True):
    """The speed baseline: bitsandbytes' own call (grader's process only)."""
    import bitsandbytes.functional as bf

    return bf.quantize_4bit(w, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=double_quant)


# ==============================================================================================
# 4. nf4_dequantize
# ==============================================================================================
def _state(s: int, shape, double_quant: bool) -> dict:
    """A quantized state from bitsandbytes itself (cases are built in the grader's process)."""
    from ...nf4 import bnb_quantize

    return bnb_quantize(_weights(s, shape), double_quant)


def _random_state(s: int, shape, device) -> dict:
    """A valid double-quantised state drawn at random (the speed input: built alike in the sandbox)."""
    g = torch.Generator(device=device).manual_seed(int(s))
    n = math.prod(shape)
    nb = n_blocks(n)
    return {"packed": torch.randint(0, 256, ((n + 1) // 2,), generator=g, device=device, dtype=torch.uint8),
            "absmax": torch.randint(0, 256, (nb,), generator=g, device=device, dtype=torch.uint8),
            "absmax2": torch.rand(n_blocks(nb, BLOCKSIZE2), generator=g, device=device) * 0.05 + 0.02,
            "offset": torch.full((), 0.1, device=device)}


@register
class NF4Dequantize(Exercise):
    name = "nf4_dequantize"
    notebook = NOTEBOOK
    title = "NF4 dequantization in Triton, equal to bitsandbytes' dequantize_4bit"
    points = {"correctness": 2.0, "speed": 1.0}
    signature = "nf4_dequantize(q: dict, shape: tuple, dtype: torch.dtype) -> Tensor of that shape and dtype"
    kernel = True
    forbidden = _FORBIDDEN

    def cases(self, suite, key):
        gpu = default_device().type == "cuda"
        seeds = case_seeds(suite, key)
        big = (1823, 781) if gpu else (61, 781)

        def case(s, shape, double_quant, dtype=torch.float32):
            return Case(f"seed {s}: a state of shape {shape} (double_quant={double_quant}) → {str(dtype)[6:]}",
                        (_state(s, shape, double_quant), tuple(shape), dtype))

        return [
            Group("fp32 absmax, fp32 output: w = nf4[code] · absmax[block]",
                  [case(s, shp, False) for s, shp in zip(seeds, [(64, 64), (128,), (33, 128), (3, 64), (64, 320)])],
                  "byte j holds codes 2j (high nibble, byte >> 4) and 2j + 1 (low nibble, byte & 15); "
                  "w = nf4_code[code] * absmax[index // 64]"),
            Group("odd sizes: a partial last block, an odd count (ignore the padding nibble)",
                  [case(s, shp, False) for s, shp in zip(seeds, [big, (3, 5, 67), (4097,), (1,), (2, 4097)])],
                  "mask the stores past n: the last byte's low nibble is padding when n is odd"),
            Group("double-quantised absmax: dynamic[code] · absmax2[block // 256] + offset",
                  [case(s, shp, True) for s, shp in zip(seeds, [(64 * 300,), (257, 64), (64,), big, (1000, 64)])],
                  "absmax of block b = dynamic_code[absmax_code[b]] * absmax2[b // 256] + offset, in fp32, "
                  "then as without double quantization"),
            Group("bf16 and fp16 outputs (computed in fp32, rounded once)",
                  [case(s, shp, dq, dt) for s, shp, dq, dt in zip(seeds, [(64, 64), (3, 67), big, (256,), (5, 64)],
                                                                  [False, True] * 3, [torch.bfloat16, torch.float16] * 3)],
                  "compute nf4[code] * absmax in fp32 and store .to(out_ptr.dtype.element_ty)"),
        ]

    def judge(self, out, case, expected=None):
        from ...nf4 import bnb_dequantize

        q, shape, dtype = case.args
        if not isinstance(out, torch.Tensor):
            return f"return a tensor, got {type(out).__name__}"
        if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
            return f"your output is {tuple(out.shape)} {out.dtype}; expected {tuple(shape)} {dtype}"
        ref = bnb_dequantize(q, shape, dtype)
        rtol = 1e-6 if dtype == torch.float32 else None  # an FMA may round the absmax once instead of twice
        atol = 1e-6 * float(ref.abs().max()) if dtype == torch.float32 else None
        return compare_tensors(out.to(ref.device), ref, rtol=rtol, atol=atol,
                               name="dequantized tensor (vs bitsandbytes dequantize_4bit)")

    def speed_part(self, key):
        s = key.derive("speed")
        n = math.prod(SPEED_SHAPE)

        def call(fn, inputs):
            if fn is not None:
                return lambda: fn(*inputs)
            return _bnb_dequantize_call(*inputs)

        return SpeedPart(
            inputs=lambda: (_random_state(s, SPEED_SHAPE, "cuda"), SPEED_SHAPE, torch.bfloat16), baseline=None,
            call=call, view=_dequant_view, threshold=DEQUANT_SPEED_THRESHOLD, own_kernels=True, mutate=False,
            bytes_moved=n // 2 + n // BLOCKSIZE + 2 * n, baseline_name="bitsandbytes dequantize_4bit",
            gate_label=f"the timed input ({SPEED_SHAPE[0]}×{SPEED_SHAPE[1]}, double-quantised, → bf16; "
                       f"{VIEW_ROWS} rows judged)",
            cpu_note=(f"On a GPU yours must be {faster_than(DEQUANT_SPEED_THRESHOLD, DEQUANT_BASELINE)} "
                      f"({SPEED_SHAPE[0]}×{SPEED_SHAPE[1]} → bf16, double-quantised absmax)."),
            advice="decode the absmax inside the same kernel (no separate pass over it) and write each output "
                   "block of 64 values as one contiguous row (tl.join(high, low) → reshape)")


VIEW_ROWS = 64  # rows of the timed output that cross to the grader and are judged (drawn after the call)


def _dequant_view(inputs, pick):
    """The state of ``VIEW_ROWS`` rows starting at an even row (a whole number of groups of 256
    blocks when a row holds 128 blocks), and the index of those rows in the output."""
    q, shape, dtype = inputs
    rows, cols = shape
    per_row = cols // BLOCKSIZE
    r0 = 2 * (pick % ((rows - VIEW_ROWS) // 2))
    b0, b1 = r0 * per_row, (r0 + VIEW_ROWS) * per_row
    part = {"packed": q["packed"][b0 * 32:b1 * 32], "absmax": q["absmax"][b0:b1],
            "absmax2": q["absmax2"][b0 // BLOCKSIZE2:n_blocks(b1, BLOCKSIZE2)], "offset": q["offset"]}
    return (part, (VIEW_ROWS, cols), dtype), (slice(r0, r0 + VIEW_ROWS),)


def _bnb_dequantize_call(q, shape, dtype):
    """bitsandbytes' dequantize_4bit with its QuantState built once, outside the timed calls."""
    import bitsandbytes.functional as bf

    from ...nf4 import _bnb_state

    numel = math.prod(shape)
    state = _bnb_state(q, numel + numel % 2, dtype)
    packed = q["packed"].reshape(-1, 1)
    return lambda: bf.dequantize_4bit(packed, quant_state=state)
