# effilab: instructor-only
"""W4A16 matmul in Triton: packed int4 weights, group scales and zero points, 16-bit activations
(reference solution of notebook 07, exercise 4).

``y = x @ Ŵᵀ`` with ``Ŵ[n, k] = (q[n, k] − zero[n, k // G]) · scale[n, k // G]`` and the codes
``q`` packed two a byte along K, the even column in the low nibble (``qweight`` is (N, K/2)
uint8, the layout of :func:`effilab.quant.reference.pack_int4`). The weights are dequantized in
registers and never written to memory.

Why it pays: at decode (M = 1) a matmul reads every weight once and does 2 FLOPs with it, so it is
memory bound (arithmetic intensity ≈ 1 FLOP/B in bf16). Four-bit weights plus one 16-bit scale and
one zero per 128 weights are 0.53 bytes per weight instead of 2, so the ideal speed-up over a bf16
GEMV is ≈ 3.8× (on an H200 the 8 MiB of int4 weights of a 4096 × 4096 layer need 2 µs at 4.25 TB/s).

Two kernels, chosen per shape by :func:`_config` (set from ``benchmarks/gpu/w4a16_sweep.py``):

* ``gemv`` (M ≤ a few rows): CUDA-core FMAs, no tensor cores (a 16-row ``tl.dot`` tile would be
  15/16 padding). A program owns BLOCK_N weight rows and BLOCK_M rows of x; each weight tile is
  loaded and converted once and multiplied with the BLOCK_M rows (an unrolled loop), and each x
  chunk is reused by the BLOCK_N weight rows. The scale and zero come out of the inner sum, chunk by
  chunk: ``Σ_k x_k (q_k − z) s = s · (Σ_k x_k q_k − z · Σ_k x_k)`` (as the fused dequantizing GEMVs
  of llama.cpp and Marlin-style kernels do), so the inner loop is one FMA per weight and row.
* ``dot`` (M ≥ 2): the BLOCK_N × BLOCK_K tile is dequantized in registers (fp32, then x's dtype)
  and multiplied on the tensor cores with ``tl.dot``, fp32 accumulation.

Both are **split-K**: the grid is (N tiles, K splits, M tiles), so a decode GEMV with wide BLOCK_N
(x reused) still has enough programs, hence bytes in flight, to fill 132 SMs. Each split writes its
fp32 partial tile to a workspace and increments a per-tile counter (``tl.atomic_add``, acquire-
release); the program that arrives last sums the SPLIT partials, stores y and resets the counter —
one launch, no memset, no second pass (the "last block finishes the reduction" pattern of CUDA's
threadFenceReduction sample and of stream-K GEMMs). The launch floor (an empty Triton kernel took
3.2 µs with the same timer) is why a second kernel or a ``torch.zeros`` would cost.

Nibbles to floats without I2F: ``float(2²³ + q)`` has the bits ``0x4B000000 | q``, so
``bitcast(q | 0x4B000000) − 2²³`` is q exactly with one logic op and one FADD, both full rate (the
int-to-float conversion is quarter rate on recent GPUs; FasterTransformer and Marlin use the same
trick in fp16). The high nibble is taken in place, ``p & 0xF0`` = 16·q_hi, and the matching x
columns are scaled by 1/16 once per chunk (exact: a power of two). ``FAST_CVT=False`` keeps the
plain conversion, for the sweep to compare.

The even and odd columns of a packed byte are multiplied with the even and odd columns of ``x``,
so the nibbles never need interleaving. Indices are built from the step number times constants (no
``//`` of a loop variable), so Triton sees that each row's bytes are contiguous and loads them 16 at
a time; a per-weight gather of the scale and zero instead reached 205 GB/s on the H200
(2026-12-02, ``benchmarks/RESULTS.md``).

Layout (Triton-tutorial order): reference -> kernels -> launcher -> ``w4a16_matmul``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ._utils import is_interpreter, num_sms

__all__ = ["w4a16_reference", "w4a16_matmul", "launch_plan", "Config", "CONFIGS"]
__ops__ = ("w4a16_matmul", "w4a16_reference")


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def w4a16_reference(x, qweight, scales, zeros, group_size):
    """Plain PyTorch: unpack, dequantize in fp32, matmul in fp32, cast to x's dtype."""
    q = torch.stack([qweight & 15, qweight >> 4], -1).reshape(qweight.shape[0], -1).float()
    g = torch.arange(q.shape[1], device=q.device) // group_size
    w = (q - zeros.float()[:, g]) * scales.float()[:, g]
    return (x.float() @ w.T).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _nibbles(p, FAST_CVT: tl.constexpr):
    """Packed bytes -> (low codes, high codes · HI_SCALE⁻¹) in fp32; see the module docstring."""
    if FAST_CVT:
        w = p.to(tl.int32)
        lo = ((w & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        hi = ((w & 0xF0) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # 16 · q_hi
    else:
        lo = (p & 15).to(tl.float32)
        hi = (p >> 4).to(tl.float32)
    return lo, hi


@triton.jit
def _finish(acc, y_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, pid_k, tile, SPLIT):
    """Store the (BLOCK_M, BLOCK_N) fp32 tile, or, split-K, add it to the others: write the partial,
    count arrivals on the tile's lock; the last program to arrive sums the partials and stores y."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    y_off = offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    if SPLIT == 1:
        tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        p_off = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]  # workspace (SPLIT, M, N), fp32
        tl.store(part_ptr + pid_k.to(tl.int64) * M * N + p_off, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the (release) increment
        arrived = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        tl.debug_barrier()
        if arrived == SPLIT - 1:
            tot = tl.zeros_like(acc)
            parts = part_ptr + p_off
            for _ in range(0, SPLIT):  # .cg: read through L2, where the other SMs wrote
                tot += tl.load(parts, mask=mask, other=0.0, cache_modifier=".cg")
                parts += M * N
            tl.store(y_ptr + y_off, tot.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + tile, 0)  # ready for the next launch


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,  # *T    activations, (M, K), unit column stride
    qw_ptr,  # *u8   packed codes, (N, K/2): byte j of row n holds columns 2j (low) and 2j+1 (high)
    s_ptr,  # *S    scales, (N, K/G)
    z_ptr,  # *u8   zero points, (N, K/G)
    y_ptr,  # *T    output, (M, N), unit column stride
    part_ptr,  # *f32  split-K workspace, (SPLIT, M, N) (unused when SPLIT == 1)
    lock_ptr,  # *i32  one arrival counter per output tile, zero between launches
    M, N, K,  # problem size (K even)
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,  # row strides in elements
    SPLIT,  # number of K splits (grid axis 1)
    STEPS,  # K steps of BLOCK_K columns per split
    GROUP: tl.constexpr,  # columns per quantization group (divides K)
    BLOCK_M: tl.constexpr,  # rows of x per program (unrolled: 1..8)
    BLOCK_N: tl.constexpr,  # output columns (weight rows) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step (BLOCK_K / 2 bytes of each weight row)
    CHUNK: tl.constexpr,  # columns per chunk: a power of two dividing GROUP, so a chunk has one group
    FAST_CVT: tl.constexpr,  # nibbles to fp32 by the 2²³ bit trick instead of int-to-float converts
):
    """BLOCK_M rows of x times BLOCK_N weight rows over one K split. The K step is viewed as
    (BLOCK_K / CHUNK) chunks of CHUNK columns; inside a chunk scale s and zero z are constants, so
    the scales and zeros are loaded once per chunk (BLOCK_N × NC values), not once per weight."""
    NC: tl.constexpr = BLOCK_K // CHUNK  # chunks per step
    HC: tl.constexpr = CHUNK // 2  # bytes per chunk and row
    HI_SCALE: tl.constexpr = 0.0625 if FAST_CVT else 1.0  # the high codes come as 16 · q
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    offs_c = tl.arange(0, NC)
    offs_b = offs_c[:, None] * HC + tl.arange(0, HC)[None, :]  # (NC, HC) byte offset inside a step
    offs_x = offs_c[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # (NC, CHUNK) column inside a step
    qw_rows = qw_ptr + n64[:, None, None] * stride_qn  # (BLOCK_N, 1, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    step0 = pid_k * STEPS
    for step in range(step0, tl.minimum(step0 + STEPS, tl.cdiv(K, BLOCK_K))):
        col = step * BLOCK_K + offs_c * CHUNK  # (NC,) first column of each chunk; K is a multiple of CHUNK
        c_ok = col < K
        p = tl.load(qw_rows + (step * (BLOCK_K // 2) + offs_b)[None, :, :],
                    mask=n_ok[:, None, None] & c_ok[None, :, None], other=0)  # (BLOCK_N, NC, HC) u8
        q_lo, q_hi = _nibbles(p, FAST_CVT)
        g = col // GROUP
        sz_mask = n_ok[:, None] & c_ok[None, :]
        s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)
        for i in tl.static_range(BLOCK_M):  # the converted tile serves every row of x
            row = pid_m * BLOCK_M + i + tl.zeros((1, 1), dtype=tl.int32)  # (1, 1): a mask must be a tensor
            xx = tl.load(x_ptr + row.to(tl.int64) * stride_xm + step * BLOCK_K + offs_x,
                         mask=c_ok[:, None] & (row < M), other=0.0)
            x_lo, x_hi = tl.split(tl.reshape(xx.to(tl.float32), (NC, HC, 2)))  # columns 2j and 2j + 1
            qx = tl.sum(q_lo * x_lo[None, :, :] + q_hi * (x_hi * HI_SCALE)[None, :, :], axis=2)  # Σ x·q
            xsum = tl.sum(x_lo + x_hi, axis=1)  # (NC,): Σ x per chunk
            r = tl.sum(s * (qx - z * xsum[None, :]), axis=1)  # (BLOCK_N,)
            acc += tl.where((tl.arange(0, BLOCK_M) == i)[:, None], r[None, :], 0.0)
    tile = pid_m * tl.num_programs(0) + pid_n
    _finish(acc, y_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, pid_k, tile, SPLIT)


@triton.jit
def _w4a16_dot_kernel(
    x_ptr,  # *T    activations, (M, K), unit column stride
    qw_ptr,  # *u8   packed codes, (N, K/2): byte j of row n holds columns 2j (low) and 2j+1 (high)
    s_ptr,  # *S    scales, (N, K/G)
    z_ptr,  # *u8   zero points, (N, K/G)
    y_ptr,  # *T    output, (M, N), unit column stride
    part_ptr,  # *f32  split-K workspace, (SPLIT, M, N) (unused when SPLIT == 1)
    lock_ptr,  # *i32  one arrival counter per output tile, zero between launches
    M, N, K,  # problem size (K even)
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,  # row strides in elements
    SPLIT,  # number of K splits (grid axis 1)
    STEPS,  # K steps of BLOCK_K columns per split
    GROUP: tl.constexpr,  # columns per quantization group (divides K)
    BLOCK_M: tl.constexpr,  # rows of x per program (≥ 16: tl.dot tiles)
    BLOCK_N: tl.constexpr,  # output columns (weight rows) per program (≥ 16)
    BLOCK_K: tl.constexpr,  # columns of K per loop step (BLOCK_K / 2 bytes), ≥ 32
    CHUNK: tl.constexpr,  # columns per chunk: a power of two dividing GROUP (one scale and zero a chunk)
    FAST_CVT: tl.constexpr,  # nibbles to fp32 by the 2²³ bit trick instead of int-to-float converts
):
    """BLOCK_M rows of x times a BLOCK_N × BLOCK_K weight tile on the tensor cores: the tile is
    loaded as (BLOCK_N, NC, CHUNK/2) bytes, dequantized with one scale and zero per chunk, and
    viewed as (BLOCK_N, BLOCK_K/2) even and odd columns for two ``tl.dot``s."""
    NC: tl.constexpr = BLOCK_K // CHUNK
    HC: tl.constexpr = CHUNK // 2
    HI_SCALE: tl.constexpr = 0.0625 if FAST_CVT else 1.0
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    offs_c = tl.arange(0, NC)
    offs_b = offs_c[:, None] * HC + tl.arange(0, HC)[None, :]  # (NC, HC) byte offset inside a step
    offs_j = tl.arange(0, BLOCK_K // 2)  # the same bytes, flat
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    step0 = pid_k * STEPS
    for step in range(step0, tl.minimum(step0 + STEPS, tl.cdiv(K, BLOCK_K))):
        col = step * BLOCK_K + offs_c * CHUNK  # (NC,)
        c_ok = col < K
        p = tl.load(qw_ptr + n64[:, None, None] * stride_qn + (step * (BLOCK_K // 2) + offs_b)[None, :, :],
                    mask=n_ok[:, None, None] & c_ok[None, :, None], other=0)  # (BLOCK_N, NC, HC)
        g = col // GROUP
        sz_mask = n_ok[:, None] & c_ok[None, :]
        s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)
        q_lo, q_hi = _nibbles(p, FAST_CVT)
        w_lo = tl.reshape((q_lo - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
        w_hi = tl.reshape((q_hi * HI_SCALE - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
        j = step * (BLOCK_K // 2) + offs_j
        xmask = m_ok[:, None] & (j < K // 2)[None, :]
        x_lo = tl.load(x_rows + 2 * j[None, :], mask=xmask, other=0.0)
        x_hi = tl.load(x_rows + 2 * j[None, :] + 1, mask=xmask, other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
        acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
    tile = pid_m * tl.num_programs(0) + pid_n
    _finish(acc, y_ptr, part_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, pid_k, tile, SPLIT)


# ---------------------------------------------------------------------------------------------
# 3. Launch configurations and the launcher
# ---------------------------------------------------------------------------------------------
class Config(NamedTuple):
    """A launch: ``kernel`` "gemv" (FMA) or "dot" (tensor cores); ``split`` 0 = pick the K splits so
    that about ``_WAVES`` programs per SM run (see :func:`_splits`)."""
    kernel: str
    block_m: int
    block_n: int
    block_k: int
    split: int = 0
    warps: int = 4
    stages: int = 2
    fast_cvt: bool = True


_WAVES = 4  # programs per SM that auto split-K aims at


def _chunk(group_size: int, block_k: int) -> int:
    """Largest power of two that divides the group and fits the K step (≥ 2: groups are even)."""
    return min(group_size & -group_size, block_k)


def _splits(tiles: int, steps: int, sms: int) -> int:
    """K splits for ``tiles`` output tiles of ``steps`` K steps: enough programs for _WAVES per SM,
    at most one split per step."""
    return max(1, min(steps, triton.cdiv(_WAVES * sms, max(tiles, 1))))


# Sweep grids of benchmarks/gpu/w4a16_sweep.py (the first of each list is the shape's default before a
# sweep). H200, 2026-12-02 (benchmarks/RESULTS.md): the split-free GEMV (1, 4, 2048, 4 warps) took 12.3 µs
# at M = 1, N = K = 4096 (1.50× dense bf16); the split-free dot (16, 32, 512) 46.7 µs at M = 16 (0.39×).
CONFIGS = {
    "gemv": [Config("gemv", 1, 16, 1024, 0, 4), Config("gemv", 1, 4, 2048, 1, 4), Config("gemv", 1, 8, 1024, 0, 4),
             Config("gemv", 1, 32, 512, 0, 4), Config("gemv", 1, 16, 512, 0, 4), Config("gemv", 1, 8, 2048, 0, 8),
             Config("gemv", 1, 32, 1024, 0, 8), Config("gemv", 1, 64, 256, 0, 4), Config("gemv", 1, 16, 1024, 0, 4,
                                                                                        fast_cvt=False)],
    "dot": [Config("dot", 16, 64, 256, 0, 4, 3), Config("dot", 16, 32, 512, 0, 4, 2), Config("dot", 16, 64, 128, 0, 4, 3),
            Config("dot", 16, 128, 128, 0, 4, 3), Config("dot", 16, 128, 256, 0, 8, 3), Config("dot", 16, 32, 256, 0, 4, 3),
            Config("dot", 16, 64, 256, 0, 4, 3, fast_cvt=False)],
    "gemv_rows": [Config("gemv", 4, 16, 512, 0, 4), Config("gemv", 2, 16, 1024, 0, 4), Config("gemv", 4, 32, 256, 0, 4),
                  Config("gemv", 8, 16, 256, 0, 4), Config("gemv", 16, 8, 256, 0, 8)],
}
GEMV_MAX_M = 1  # rows of x up to which the FMA kernel is used (the sweep compares "gemv_rows" with "dot")


def _config(m: int, n: int, k: int) -> Config:
    if is_interpreter():  # CPU: few fat programs, and still more than one K split on long rows
        if m <= GEMV_MAX_M:
            return Config("gemv", 1, min(64, triton.next_power_of_2(n)), 256, 0, 4, 1)
        return Config("dot", 16, min(64, max(16, triton.next_power_of_2(n))), 256, 0, 4, 1)
    # From benchmarks/gpu/w4a16_sweep.py on an H200, 2026-12-02 (benchmarks/RESULTS.md): at M = 1 one
    # K split of 2048-wide steps over 4 rows per program was fastest for K = 4096 (11.9 µs at 4096²,
    # 23.6 µs at N = 11008), 64 rows per program with automatic splits for K = 11008 (23.4 µs); for
    # M = 16 the dot kernel with 4 K splits (26.0 µs, 0.71× dense bf16: the slow path of issue 14).
    if m <= GEMV_MAX_M:
        return Config("gemv", 1, 4, 2048, 1, 4) if k <= 4096 else Config("gemv", 1, 64, 256, 0, 4)
    return Config("dot", 16, 64, 256, 4, 4, 3)


def _legacy(config) -> Config:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), the older sweeps' tuples: no split."""
    if isinstance(config, Config):
        return config
    bm, bn, bk, warps, stages = config
    return Config("dot" if bm >= 16 else "gemv", bm, bn, bk, 1, warps, stages)


_LOCKS: dict = {}  # (device, stream) -> int32 arrival counters, zero between launches


def _locks(device: torch.device, count: int) -> torch.Tensor:
    """Counters for ``count`` tiles; one buffer per device and stream, since kernels on one stream run
    in order (two streams launching at once would share counters)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    buf = _LOCKS.get(key)
    if buf is None or buf.numel() < count:
        buf = _LOCKS[key] = torch.zeros(max(count, 1024), dtype=torch.int32, device=device)
    return buf


def _check(x, qweight, scales, zeros, group_size):
    if x.dim() != 2 or qweight.dim() != 2:
        raise ValueError(f"x must be (M, K) and qweight (N, K/2); got {tuple(x.shape)} and {tuple(qweight.shape)}")
    n, k = qweight.shape[0], 2 * qweight.shape[1]
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} columns but qweight packs {k} (K/2 = {qweight.shape[1]} bytes a row)")
    if qweight.dtype != torch.uint8 or zeros.dtype != torch.uint8:
        raise ValueError("qweight and zeros must be uint8")
    if group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"group_size {group_size} must be even and divide K = {k}")
    if tuple(scales.shape) != (n, k // group_size) or tuple(zeros.shape) != (n, k // group_size):
        raise ValueError(f"scales and zeros must be (N, K/G) = {(n, k // group_size)}")
    if len({t.device for t in (x, qweight, scales, zeros)}) != 1:
        raise ValueError("x, qweight, scales and zeros must be on one device")


def launch_plan(m: int, n: int, k: int, config=None, device=torch.device("cpu")):
    """(config, BLOCK_K, splits, steps per split, grid) that :func:`w4a16_matmul` launches for an
    (m, k) × (n, k) problem; ``config`` None = the heuristic."""
    c = _legacy(config) if config is not None else _config(m, n, k)
    if c.kernel not in ("gemv", "dot"):
        raise ValueError(f"unknown kernel {c.kernel!r}: 'gemv' or 'dot'")
    if c.kernel == "dot" and (c.block_m < 16 or c.block_n < 16 or c.block_k < 32):
        raise ValueError(f"tl.dot tiles need BLOCK_M, BLOCK_N ≥ 16 and BLOCK_K ≥ 32, got {c}")
    bk = min(c.block_k, max(triton.next_power_of_2(k), 32 if c.kernel == "dot" else 2))
    tiles_n, tiles_m = triton.cdiv(n, c.block_n), triton.cdiv(m, c.block_m)
    steps = triton.cdiv(k, bk)
    split = min(c.split, steps) if c.split > 0 else _splits(tiles_n * tiles_m, steps, num_sms(device))
    per = triton.cdiv(steps, split)
    split = triton.cdiv(steps, per)  # no empty splits
    return c, bk, split, per, (tiles_n, split, tiles_m)


def w4a16_matmul(x, qweight, scales, zeros, group_size: int = 128, config=None) -> torch.Tensor:
    """``x @ Ŵᵀ`` in x's dtype for packed int4 weights; ``config`` (a :class:`Config`, or the older
    (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tuple) overrides the heuristic (sweeps)."""
    _check(x, qweight, scales, zeros, group_size)
    if x.stride(1) != 1:
        x = x.contiguous()
    qweight, scales, zeros = (t if t.stride(1) == 1 else t.contiguous() for t in (qweight, scales, zeros))
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    c, bk, split, per, grid = launch_plan(m, n, k, config, x.device)
    part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x.device)
    locks = _locks(x.device, grid[0] * grid[2])
    kernel = _w4a16_gemv_kernel if c.kernel == "gemv" else _w4a16_dot_kernel
    kernel[grid](
        x, qweight, scales, zeros, y, part, locks, m, n, k,
        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), y.stride(0), split, per,
        GROUP=group_size, BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=bk, CHUNK=_chunk(group_size, bk),
        FAST_CVT=c.fast_cvt, num_warps=c.warps, num_stages=c.stages)
    return y
