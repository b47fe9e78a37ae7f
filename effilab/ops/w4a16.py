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

Two code paths (``USE_DOT``): for a few rows of ``x`` each program multiplies one row by a
BLOCK_N × BLOCK_K weight tile with an elementwise product and a row sum (no tensor cores: a
16-row ``tl.dot`` tile would be 15/16 padding); from 16 rows on, ``tl.dot`` on tiles of
BLOCK_M rows. The even and odd columns of a packed byte are multiplied with the even and odd
columns of ``x``, so the nibbles never need interleaving.

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
def _w4a16_kernel(
    x_ptr,  # *T    activations, (M, K), unit column stride
    qw_ptr,  # *u8   packed codes, (N, K/2): byte j of row n holds columns 2j (low) and 2j+1 (high)
    s_ptr,  # *S    scales, (N, K/G)
    z_ptr,  # *u8   zero points, (N, K/G)
    y_ptr,  # *T    output, (M, N), unit column stride
    M, N, K,  # problem size (K even)
    stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,  # row strides in elements
    GROUP: tl.constexpr,  # columns per quantization group (divides K)
    BLOCK_M: tl.constexpr,  # rows of x per program (1 on the GEMV path)
    BLOCK_N: tl.constexpr,  # output columns (weight rows) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step (BLOCK_K / 2 bytes), ≥ 32
    USE_DOT: tl.constexpr,  # tl.dot on BLOCK_M-row tiles (M ≥ 16) or elementwise GEMV
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_K // 2)  # byte offsets inside one K step
    m_ok = offs_m < M
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        j = k0 // 2 + offs_j  # byte index along the packed row
        j_ok = j < K // 2
        wmask = n_ok[:, None] & j_ok[None, :]
        p = tl.load(qw_ptr + n64[:, None] * stride_qn + j[None, :], mask=wmask, other=0)
        grp = (2 * j) // GROUP  # both columns of a byte are in one group (GROUP is even)
        s = tl.load(s_ptr + n64[:, None] * stride_sn + grp[None, :], mask=wmask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * stride_zn + grp[None, :], mask=wmask, other=0).to(tl.float32)
        w_lo = ((p & 15).to(tl.float32) - z) * s  # columns 2j      (BLOCK_N, BLOCK_K/2)
        w_hi = ((p >> 4).to(tl.float32) - z) * s  # columns 2j + 1
        xmask = m_ok[:, None] & j_ok[None, :]
        x_row = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + 2 * j[None, :]
        x_lo = tl.load(x_row, mask=xmask, other=0.0)
        x_hi = tl.load(x_row + 1, mask=xmask, other=0.0)
        if USE_DOT:
            acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
            acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
        else:  # BLOCK_M == 1: a row times a weight tile, reduced over K
            part = x_lo.to(tl.float32) * w_lo + x_hi.to(tl.float32) * w_hi  # (BLOCK_N, BLOCK_K/2)
            acc += tl.sum(part, axis=1)[None, :]
    ymask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=ymask)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) swept by benchmarks/gpu/nb07.sh; the defaults
# below are starting points to calibrate on the H200.
CONFIGS = {
    "gemv": [(1, 16, 256, 4, 3), (1, 32, 256, 4, 3), (1, 16, 512, 4, 2), (1, 32, 128, 4, 4), (1, 64, 128, 8, 3),
             (1, 8, 512, 2, 3)],
    "dot": [(16, 64, 128, 4, 3), (16, 128, 128, 4, 3), (32, 64, 128, 4, 3), (64, 128, 64, 4, 3)],
}


def _config(m: int, n: int, k: int):
    if is_interpreter():  # CPU: few fat programs
        return (1 if m < 16 else 16), min(128, triton.next_power_of_2(n)), 256, 4, 1
    if m < 16:
        return CONFIGS["gemv"][0]
    return CONFIGS["dot"][0] if m <= 32 else CONFIGS["dot"][3]


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
    grid = (triton.cdiv(n, bn), triton.cdiv(m, bm))
    _w4a16_kernel[grid](x, qweight, scales, zeros, y, m, n, k,
                        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), y.stride(0),
                        GROUP=group_size, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, USE_DOT=bm >= 16,
                        num_warps=warps, num_stages=stages)
    return y
