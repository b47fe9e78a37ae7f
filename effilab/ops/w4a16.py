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
GEMV is ≈ 3.8× (the brief's anchor on an H200: 8 MB of int4 weights need 2 µs at 4.25 TB/s).

Two kernels: for a few rows of ``x`` (decode) each program multiplies one row by a BLOCK_N ×
BLOCK_K weight tile with an elementwise product and a row sum (no tensor cores: a 16-row ``tl.dot``
tile would be 15/16 padding), and takes the scale and zero out of the inner sum, chunk by chunk
(``s · (Σ x·q − z · Σ x)``, as the fused dequantizing GEMVs of llama.cpp and Marlin-style kernels
do); from 16 rows on, ``tl.dot`` on tiles of BLOCK_M rows with the tile dequantized first. The even
and odd columns of a packed byte are multiplied with the even and odd columns of ``x``, so the
nibbles never need interleaving.

Why the chunks: a per-weight gather of the scale and zero (``k // G`` for every byte) costs two
loads per byte loaded; measured on the H200 (2026-12-02, ``benchmarks/RESULTS.md``) that kernel
reached 205 GB/s, 0.47× the dense bf16 GEMV.

Layout (Triton-tutorial order): reference -> kernel -> launcher -> ``w4a16_matmul``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ._utils import is_interpreter

__all__ = ["w4a16_reference", "w4a16_matmul", "CONFIGS"]
__ops__ = ("w4a16_matmul", "w4a16_reference")


def w4a16_reference(x, qweight, scales, zeros, group_size):
    """Plain PyTorch: unpack, dequantize in fp32, matmul in fp32, cast to x's dtype."""
    q = torch.stack([qweight & 15, qweight >> 4], -1).reshape(qweight.shape[0], -1).float()
    g = torch.arange(q.shape[1], device=q.device) // group_size
    w = (q - zeros.float()[:, g]) * scales.float()[:, g]
    return (x.float() @ w.T).to(x.dtype)


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,  # *T    activations, (M, K), unit column stride
    qw_ptr,  # *u8   packed codes, (N, K/2): byte j of row n holds columns 2j (low) and 2j+1 (high)
    s_ptr,  # *S    scales, (N, K/G)
    z_ptr,  # *u8   zero points, (N, K/G)
    y_ptr,  # *T    output, (M, N), unit column stride
    M, N, K,  # problem size (K even)
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,  # row strides in elements
    GROUP: tl.constexpr,  # columns per quantization group (divides K)
    BLOCK_N: tl.constexpr,  # output columns (weight rows) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step (BLOCK_K / 2 bytes of each weight row)
    CHUNK: tl.constexpr,  # columns per chunk: a power of two dividing GROUP, so a chunk has one group
):
    """One row of x (program_id(1)) times BLOCK_N weight rows. The K step is viewed as
    (BLOCK_K / CHUNK) chunks of CHUNK columns; inside a chunk scale s and zero z are constants, so
    Σ_k x_k (q_k − z) s = s · (Σ_k x_k q_k − z · Σ_k x_k): the inner loop is two FMAs per byte and
    the scales and zeros are loaded once per chunk (BLOCK_N × NC values), not once per weight.
    Indices are built from the step number times constants (no ``//`` of a loop variable), so
    Triton sees that each row's bytes are contiguous and 16-byte aligned and loads them 16 at a time."""
    NC: tl.constexpr = BLOCK_K // CHUNK  # chunks per step
    HC: tl.constexpr = CHUNK // 2  # bytes per chunk and row
    pid_n = tl.program_id(0)
    m = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    offs_c = tl.arange(0, NC)
    offs_b = offs_c[:, None] * HC + tl.arange(0, HC)[None, :]  # (NC, HC) byte offset inside a step
    offs_x = offs_c[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # (NC, CHUNK) column inside a step
    qw_rows = qw_ptr + n64[:, None, None] * stride_qn  # (BLOCK_N, 1, 1)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        col = step * BLOCK_K + offs_c * CHUNK  # (NC,) first column of each chunk; K is a multiple of CHUNK
        c_ok = col < K
        p = tl.load(qw_rows + (step * (BLOCK_K // 2) + offs_b)[None, :, :],
                    mask=n_ok[:, None, None] & c_ok[None, :, None], other=0)  # (BLOCK_N, NC, HC) u8
        xx = tl.load(x_ptr + m * stride_xm + step * BLOCK_K + offs_x, mask=c_ok[:, None], other=0.0)
        x_lo, x_hi = tl.split(tl.reshape(xx.to(tl.float32), (NC, HC, 2)))  # columns 2j and 2j + 1
        qx = tl.sum((p & 15).to(tl.float32) * x_lo[None, :, :] + (p >> 4).to(tl.float32) * x_hi[None, :, :],
                    axis=2)  # (BLOCK_N, NC): Σ x·q per chunk
        xsum = tl.sum(x_lo + x_hi, axis=1)  # (NC,): Σ x per chunk
        g = col // GROUP
        sz_mask = n_ok[:, None] & c_ok[None, :]
        s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)
        acc += tl.sum(s * (qx - z * xsum[None, :]), axis=1)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _w4a16_dot_kernel(
    x_ptr,  # *T    activations, (M, K), unit column stride
    qw_ptr,  # *u8   packed codes, (N, K/2): byte j of row n holds columns 2j (low) and 2j+1 (high)
    s_ptr,  # *S    scales, (N, K/G)
    z_ptr,  # *u8   zero points, (N, K/G)
    y_ptr,  # *T    output, (M, N), unit column stride
    M, N, K,  # problem size (K even)
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,  # row strides in elements
    GROUP: tl.constexpr,  # columns per quantization group (divides K)
    BLOCK_M: tl.constexpr,  # rows of x per program (≥ 16: tl.dot tiles)
    BLOCK_N: tl.constexpr,  # output columns (weight rows) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step (BLOCK_K / 2 bytes), ≥ 32
    CHUNK: tl.constexpr,  # columns per chunk: a power of two dividing GROUP (one scale and zero a chunk)
):
    """BLOCK_M rows of x times a BLOCK_N × BLOCK_K weight tile on the tensor cores: the tile is
    loaded as (BLOCK_N, NC, CHUNK/2) bytes, dequantized with one scale and zero per chunk, and
    viewed as (BLOCK_N, BLOCK_K/2) even and odd columns for two ``tl.dot``s."""
    NC: tl.constexpr = BLOCK_K // CHUNK
    HC: tl.constexpr = CHUNK // 2
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    offs_c = tl.arange(0, NC)
    offs_b = offs_c[:, None] * HC + tl.arange(0, HC)[None, :]  # (NC, HC) byte offset inside a step
    offs_j = tl.arange(0, BLOCK_K // 2)  # the same bytes, flat
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        col = step * BLOCK_K + offs_c * CHUNK  # (NC,)
        c_ok = col < K
        p = tl.load(qw_ptr + n64[:, None, None] * stride_qn + (step * (BLOCK_K // 2) + offs_b)[None, :, :],
                    mask=n_ok[:, None, None] & c_ok[None, :, None], other=0)  # (BLOCK_N, NC, HC)
        g = col // GROUP
        sz_mask = n_ok[:, None] & c_ok[None, :]
        s = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)
        w_lo = tl.reshape(((p & 15).to(tl.float32) - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
        w_hi = tl.reshape(((p >> 4).to(tl.float32) - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
        j = step * (BLOCK_K // 2) + offs_j
        xmask = m_ok[:, None] & (j < K // 2)[None, :]
        x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + 2 * j[None, :]
        x_lo = tl.load(x_row, mask=xmask, other=0.0)
        x_hi = tl.load(x_row + 1, mask=xmask, other=0.0)
        acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
        acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
    ymask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=ymask)


def _chunk(group_size: int, block_k: int) -> int:
    """Largest power of two that divides the group and fits the K step (≥ 2: groups are even)."""
    return min(group_size & -group_size, block_k)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) swept by benchmarks/gpu/nb07_table.py; the first of
# each list is the default. H200, 2026-12-02 (benchmarks/RESULTS.md, results/nb07/): at M = 1, N = K = 4096
# the best four GEMV configs took 12.6–13.0 µs (1.41–1.46× dense bf16), the worst 35 µs; at M = 16 the best
# dot config 46.7 µs (0.39× dense: to tune).
CONFIGS = {
    "gemv": [(1, 4, 2048, 4, 2), (1, 16, 1024, 8, 2), (1, 8, 1024, 4, 3), (1, 8, 2048, 4, 2), (1, 8, 2048, 8, 1),
             (1, 16, 2048, 8, 1), (1, 4, 4096, 4, 1), (1, 8, 4096, 8, 1), (1, 2, 4096, 4, 1), (1, 16, 512, 4, 3),
             (1, 32, 1024, 8, 2), (1, 4, 1024, 2, 3)],
    "dot": [(16, 32, 512, 4, 2), (16, 64, 128, 4, 3), (16, 32, 256, 4, 3), (16, 16, 512, 4, 3), (16, 64, 256, 4, 3),
            (16, 16, 1024, 4, 2), (32, 64, 128, 4, 3), (64, 128, 64, 4, 3)],
}


def _config(m: int, n: int, k: int):
    if is_interpreter():  # CPU: few fat programs
        return (1 if m < 16 else 16), min(128, triton.next_power_of_2(n)), 256, 4, 1
    return CONFIGS["gemv" if m < 16 else "dot"][0]


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


def w4a16_matmul(x, qweight, scales, zeros, group_size: int = 128, config=None) -> torch.Tensor:
    """``x @ Ŵᵀ`` in x's dtype for packed int4 weights; ``config`` = (BLOCK_M, BLOCK_N, BLOCK_K,
    num_warps, num_stages) overrides the heuristic (benchmark sweeps)."""
    _check(x, qweight, scales, zeros, group_size)
    if x.stride(1) != 1:
        x = x.contiguous()
    qweight, scales, zeros = (t if t.stride(1) == 1 else t.contiguous() for t in (qweight, scales, zeros))
    m, k = x.shape
    n = qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    bm, bn, bk, warps, stages = config or _config(m, n, k)
    strides = (x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), y.stride(0))
    if bm >= 16:
        grid = (triton.cdiv(n, bn), triton.cdiv(m, bm))
        _w4a16_dot_kernel[grid](x, qweight, scales, zeros, y, m, n, k, *strides, GROUP=group_size, BLOCK_M=bm,
                                BLOCK_N=bn, BLOCK_K=bk, CHUNK=_chunk(group_size, bk), num_warps=warps,
                                num_stages=stages)
    else:  # one program row per row of x
        bk = min(bk, triton.next_power_of_2(k))
        _w4a16_gemv_kernel[(triton.cdiv(n, bn), m)](x, qweight, scales, zeros, y, m, n, k, *strides,
                                                     GROUP=group_size, BLOCK_N=bn, BLOCK_K=bk,
                                                     CHUNK=_chunk(group_size, bk), num_warps=warps,
                                                     num_stages=stages)
    return y
