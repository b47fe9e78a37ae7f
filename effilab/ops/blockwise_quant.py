# effilab: instructor-only
"""Block-wise 8-bit quantization in Triton (reference solution of notebook 05, exercise 2).

A flat tensor is cut into blocks of ``blocksize`` values; each block keeps its absolute maximum
``N_b`` (fp32) and each value the index of the code nearest to ``s = x / N_b`` (Dettmers et al.,
"8-bit Optimizers via Block-wise Quantization", ICLR 2022)::

    q_i = #{k : mid_k < s_i}     with mid_k = (code[k] + code[k+1]) / 2 in fp32

— the nearest code, a value exactly on a midpoint taking the lower one (the rule of
:mod:`effilab.quant8`, of ``torch.bucketize`` and of bitsandbytes' PyTorch backend). Dequantization
is ``code[q] * N_b``. The kernels read ``x`` once and write one byte per value plus 4 bytes per
block: at fp32 input 5 bytes per value move, so the goal is the bandwidth of a copy.

Finding the nearest code. A binary search over the 255 midpoints costs 8 dependent gathers per
value from a 1 KB table. The fast path here needs two: a table ``lut`` indexed by the top bits of
``|s|`` (its exponent and ``LUT_MANT`` mantissa bits, one table per sign) gives ``T``, the number
of midpoints below the bucket that holds ``s``; one comparison with ``mid[T]`` finishes, provided
no bucket holds two midpoints. :func:`build_tables` checks that property for the code it is given
(it holds for bitsandbytes' dynamic maps and the linear ones) and otherwise the kernels fall back to
the binary search. Bucket ``b`` of a sign covers ``|s| ∈ [lo_b, lo_{b+1})``; bucket 0 is
``[0, 2^-LUT_EXP)``, the top bucket starts at 1.0.

Layout (Triton-tutorial order): reference (``effilab.quant8``) -> tables -> kernels -> launchers.
"""
from __future__ import annotations

import weakref

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ..quant8 import midpoints, n_blocks
from ._utils import is_interpreter

__all__ = ["quantize_blockwise", "dequantize_blockwise", "build_tables", "LUT_EXP", "LUT_MANT", "BLOCKSIZES"]
__ops__ = ("quantize_blockwise", "dequantize_blockwise")  # added to effilab.ops (see effilab/ops/__init__.py)

LUT_EXP = 24  # |s| < 2^-24 shares bucket 0 (bitsandbytes' smallest nonzero dynamic code is 3.25e-7 ≈ 2^-21.6)
LUT_MANT = 7  # 2^7 buckets per binade (≤ 0.78 % wide): narrower than any gap between dynamic midpoints (0.7 % at 1)
LUT_BUCKETS = (LUT_EXP << LUT_MANT) + 1  # per sign, the top bucket ([1.0, …)) included
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # those bitsandbytes' quantize_blockwise accepts


# ---------------------------------------------------------------------------------------------
# 1. Tables (host side, cached per code tensor)
# ---------------------------------------------------------------------------------------------
def _bucket_edges() -> torch.Tensor:
    """lo_b for b = 0 … LUT_BUCKETS, fp32: lo_0 = 0, then the bit patterns ((127 - E) << K) + b, shifted."""
    shift = 23 - LUT_MANT
    base = (127 - LUT_EXP) << LUT_MANT
    bits = (torch.arange(LUT_BUCKETS + 1, dtype=torch.int64) + base) << shift
    lo = bits.to(torch.int32).view(torch.float32).clone()
    lo[0] = 0.0
    lo[-1] = float("inf")  # the top bucket has no upper edge
    return lo


def build_tables(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, torch.Tensor]:
    """(lut, mid) for ``code`` on its device, or (None, mid) when some bucket holds two midpoints.

    ``mid``: the 255 fp32 midpoints and +inf (256 values, so ``mid[T]`` is always in range);
    ``lut``: uint8, ``2 * LUT_BUCKETS`` entries (6 KiB), positive buckets first. For ``s ≥ 0`` in bucket b,
    ``lut[b] = #{mid < lo_b}``; for ``s < 0`` with ``|s|`` in bucket b, ``lut[LUT_BUCKETS + b] =
    #{mid ≤ -lo_{b+1}}``. Then ``q = lut[key] + (mid[lut[key]] < s)``.
    """
    mids = midpoints(code.detach().cpu())
    lo = _bucket_edges()
    hi = lo[1:]
    lo = lo[:-1]
    pos = torch.searchsorted(mids, lo, right=False)  # #{mid < lo}
    neg = torch.searchsorted(mids, -hi, right=True)  # #{mid <= -hi}
    in_pos = torch.searchsorted(mids, hi, right=False) - pos  # #{lo <= mid < hi}
    in_neg = torch.searchsorted(mids, -lo, right=False) - neg  # #{-hi < mid < -lo}
    mid = torch.cat([mids, torch.tensor([float("inf")])]).to(code.device)
    if int(in_pos.max()) > 1 or int(in_neg.max()) > 1:
        return None, mid
    lut = torch.cat([pos, neg]).to(torch.uint8).to(code.device)  # counts ≤ 255: one byte each
    return lut, mid


_CACHE: dict = {}  # (device, data_ptr) -> (weakref to code, version, tables)


def _tables(code: torch.Tensor):
    """:func:`build_tables`, cached while the same code tensor is alive and unmodified."""
    key = (str(code.device), code.data_ptr())
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is code and hit[1] == code._version:
        return hit[2]
    tables = build_tables(code)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[key] = (weakref.ref(code), code._version, tables)
    return tables


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def nearest_code_lut(s, lut_ptr, mid_ptr, LUT_EXP: tl.constexpr, LUT_MANT: tl.constexpr, NB: tl.constexpr):
    """Index of the code nearest to ``s`` (a tile of fp32 values in [-1, 1]): two gathers."""
    bits = tl.abs(s).to(tl.int32, bitcast=True)
    b = (bits >> (23 - LUT_MANT)) - ((127 - LUT_EXP) << LUT_MANT)
    b = tl.minimum(tl.maximum(b, 0), NB - 1)
    t = tl.load(lut_ptr + tl.where(s < 0, b + NB, b)).to(tl.int32)
    m = tl.load(mid_ptr + t)
    return t + (m < s).to(tl.int32)


@triton.jit
def nearest_code_search(s, mid_ptr):
    """Index of the code nearest to ``s``: binary search for the number of midpoints below it (8 steps)."""
    q = tl.zeros(s.shape, tl.int32)
    for k in tl.static_range(8):
        cand = q + (128 >> k)  # cand - 1 stays in [0, 254]
        m = tl.load(mid_ptr + cand - 1)
        q = tl.where(m < s, cand, q)
    return q


@triton.jit
def _quantize_kernel(
    x_ptr,  # *T    input, flat, contiguous, n values (fp32 / fp16 / bf16)
    q_ptr,  # *u8   out: codes, flat, n values
    absmax_ptr,  # *f32  out: one absmax per block, n_blocks values
    lut_ptr,  # *u8   bucket table (USE_LUT)
    mid_ptr,  # *f32  256 midpoints (the last is +inf)
    n,  # number of values
    n_blocks,  # ceil(n / BLOCK)
    BLOCK: tl.constexpr,  # values per absmax (a power of two)
    ROWS: tl.constexpr,  # blocks per program
    USE_LUT: tl.constexpr,  # two-gather lookup, else the binary search
    LUT_EXP: tl.constexpr, LUT_MANT: tl.constexpr, NB: tl.constexpr,  # the table's layout
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = rows.to(tl.int64)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)  # the padding is 0: it never raises a block's absmax
    s = x / tl.where(amax > 0, amax, 1.0)[:, None]  # a zero block quantizes as s = 0
    if USE_LUT:
        q = nearest_code_lut(s, lut_ptr, mid_ptr, LUT_EXP, LUT_MANT, NB)
    else:
        q = nearest_code_search(s, mid_ptr)
    tl.store(q_ptr + offs, q.to(tl.uint8), mask=mask)
    tl.store(absmax_ptr + rows, amax, mask=rows < n_blocks)


@triton.jit
def _dequantize_kernel(
    q_ptr,  # *u8   codes, flat, n values
    absmax_ptr,  # *f32  one absmax per block
    code_ptr,  # *f32  the 256 code values
    y_ptr,  # *T    out: flat, n values, in the requested dtype
    n,  # number of values
    BLOCK: tl.constexpr,  # values per absmax
    TILE: tl.constexpr,  # values per program, a multiple of BLOCK
):
    offs = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    a = tl.load(absmax_ptr + offs // BLOCK, mask=mask, other=0.0)
    y = tl.load(code_ptr + q) * a
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
def _check_args(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"quantize_blockwise takes fp32, fp16 or bf16 tensors, got {x.dtype}")
    if code.dtype != torch.float32 or code.shape != (256,):
        raise ValueError(f"code must be 256 fp32 values (an 8-bit code map), got {code.dtype} {tuple(code.shape)}")
    if code.device != x.device:
        raise ValueError(f"code is on {code.device}, x on {x.device}: put both on the same device")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")


GPU_TILE = 4096  # values per program on a GPU; to calibrate on the H200 (benchmarks/gpu/nb05.sh sweeps it)


def _rows(blocksize: int) -> tuple[int, int]:
    """(blocks per program, num_warps): GPU_TILE-value tiles on a GPU, 64 Ki-value tiles in the interpreter."""
    tile = 65536 if is_interpreter() else GPU_TILE
    rows = max(1, tile // blocksize)
    return rows, 8 if rows * blocksize >= 2048 else 4


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int = 256,
                       *, use_lut: bool | None = None, config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, absmax)``: uint8 codes of ``x``'s shape and one fp32 absmax per ``blocksize`` values
    (the last block may be partial). ``use_lut=None`` takes the two-gather lookup when the code allows it;
    ``config={"ROWS": …, "num_warps": …}`` overrides the launch (the benchmark's sweep)."""
    _check_args(x, code, blocksize)
    xf = x.contiguous().view(-1)
    n = xf.numel()
    nb = n_blocks(n, blocksize)
    q = torch.empty(n, dtype=torch.uint8, device=x.device)
    absmax = torch.empty(nb, dtype=torch.float32, device=x.device)
    if n == 0:
        return q.view(x.shape), absmax
    lut, mid = _tables(code)
    lut_ok = lut is not None
    if use_lut and not lut_ok:
        raise ValueError("this code has two midpoints in one lookup bucket: use use_lut=False (binary search)")
    use = lut_ok if use_lut is None else bool(use_lut)
    rows, warps = _rows(blocksize) if config is None else (int(config["ROWS"]), int(config["num_warps"]))
    _quantize_kernel[(triton.cdiv(nb, rows),)](
        xf, q, absmax, lut if use else mid, mid, n, nb, BLOCK=blocksize, ROWS=rows, USE_LUT=use,
        LUT_EXP=LUT_EXP, LUT_MANT=LUT_MANT, NB=LUT_BUCKETS, num_warps=warps)
    return q.view(x.shape), absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int = 256,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``code[q] * absmax[block]`` in ``dtype``, in ``q``'s shape."""
    if q.dtype != torch.uint8:
        raise ValueError(f"q must hold uint8 codes, got {q.dtype}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize}")
    n = q.numel()
    if absmax.numel() != n_blocks(n, blocksize):
        raise ValueError(f"{n} codes in blocks of {blocksize} need {n_blocks(n, blocksize)} absmax values, "
                         f"got {absmax.numel()}")
    y = torch.empty(n, dtype=dtype, device=q.device)
    if n:
        tile = max(blocksize, 65536 if is_interpreter() else 4096)
        _dequantize_kernel[(triton.cdiv(n, tile),)](q.contiguous().view(-1), absmax.contiguous(), code.contiguous(),
                                                    y, n, BLOCK=blocksize, TILE=tile, num_warps=8)
    return y.view(q.shape)
