# effilab: instructor-only
"""FlashAttention-2 backward in Triton (reference solution of notebook 08, with flash_attention.py).

The forward kept, per query row, only the output ``O`` and the natural-log logsumexp ``lse`` of
the scaled scores. The backward recomputes the probabilities tile by tile from them, so it never
stores the ``S_q x S_k`` matrices either. With ``S = Q K^T * scale`` and the gradient ``dO``::

    P     = exp(S - lse)                 (recomputed; exactly the forward's softmax)
    delta = rowsum(dO * O)               (= rowsum(P * dP): one float per query row)
    dV    = P^T dO
    dP    = dO V^T
    dS    = P * (dP - delta)             (the softmax Jacobian applied row by row)
    dQ    = dS K * scale
    dK    = dS^T Q * scale

This is Algorithm 2 of Dao, 2023, "FlashAttention-2: Faster Attention with Better Parallelism and
Work Partitioning", split into three kernels:

* ``_bwd_preprocess``: ``delta`` in fp32, shape (B, H, S_q), one program per tile of rows;
* ``_bwd_dkdv_kernel``: one program per (tile of ``BLOCK_N`` keys, batch x kv head). It keeps its
  K and V tiles and the dK, dV accumulators on chip and streams over the query tiles of *every*
  query head that shares this kv head (grouped-query attention is summed in the kernel);
* ``_bwd_dq_kernel``: one program per (tile of ``BLOCK_M`` queries, batch x query head), streaming
  over the key tiles. Recomputing ``P`` a second time costs two extra matrix products but each
  output has exactly one owner: no atomic additions and no zero-initialised fp32 buffers.

Details as in the forward: exponentials in base 2 (``scale * log2(e)`` pre-multiplied, ``lse``
converted to base 2 on load); causal tiles above the diagonal are skipped and only the diagonal
band is masked; ragged lengths are masked only where needed (constexpr ``EVEN_M`` / ``EVEN_N``);
accumulators in fp32, gradients stored in the input dtype. fp32 inputs use Triton's default dot
precision, as the forward does (tf32 on a GPU).

Layout: kernels -> configurations (+ ``BWD_CONFIGS`` for the benchmark sweep, shared-memory
estimate) -> ``flash_attention_backward``. ``flash_attention.py`` calls it from its autograd Function.
"""
from __future__ import annotations

import math

import torch

import effilab  # noqa: F401  (must precede triton)
import triton
import triton.language as tl

from ._utils import is_interpreter, max_shared_mem

__all__ = ["flash_attention_backward", "BWD_CONFIGS", "default_bwd_config", "default_bwd_fits", "bwd_shared_mem_bytes"]
__ops__ = ()  # nothing added to effilab.ops: reached through flash_attention(..., backward="triton")


# ---------------------------------------------------------------------------------------------
# 1. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(ptrs, offs, n, CHECK: tl.constexpr):
    """A [len(offs), HEAD_DIM] tile; rows at ``offs >= n`` read as zeros when ``CHECK``."""
    if CHECK:
        x = tl.load(ptrs, mask=offs[:, None] < n, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store_rows(ptrs, x, offs, n, CHECK: tl.constexpr):
    """Store the tile ``x`` (cast to the pointee type); rows at ``offs >= n`` skipped when ``CHECK``."""
    if CHECK:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=offs[:, None] < n)
    else:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty))


@triton.jit
def _load_stats(lse_base, delta_base, offs, n, CHECK: tl.constexpr):
    """``lse`` in base 2 and ``delta`` of rows ``offs``. A row past ``n`` reads lse = +inf, so its
    probabilities exp2(s - inf) are 0 with no extra mask (its dO is 0 too)."""
    if CHECK:
        lse = tl.load(lse_base + offs, mask=offs < n, other=float("inf"))
        delta = tl.load(delta_base + offs, mask=offs < n, other=0.0)
    else:
        lse = tl.load(lse_base + offs)
        delta = tl.load(delta_base + offs)
    return lse * 1.4426950408889634, delta


@triton.jit
def _bwd_preprocess(
    o_ptr,  # *T   forward output, (B, H, n_ctx_q, HEAD_DIM), unit stride on the last dim
    do_ptr,  # *T  gradient of the output, same shape
    delta_ptr,  # *f32 out: rowsum(dO * O), (B, H, n_ctx_q) contiguous
    stride_ob, stride_oh, stride_om,  # o strides (batch, head, sequence), in elements
    stride_dob, stride_doh, stride_dom,  # do strides
    n_heads,  # H: query heads
    n_ctx_q,  # number of queries
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # rows per program
    EVEN_M: tl.constexpr,  # n_ctx_q % BLOCK_M == 0: no bound checks
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // n_heads).to(tl.int64)
    off_h = (pid_bh % n_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(o_ptr + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                   offs_m, n_ctx_q, CHECK=not EVEN_M)
    do = _load_rows(do_ptr + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_d[None, :], offs_m, n_ctx_q, CHECK=not EVEN_M)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * n_ctx_q + offs_m, delta, mask=offs_m < n_ctx_q)  # (one row: cheap)


@triton.jit
def _dkdv_inner(
    dk, dv,  # [BLOCK_N, HEAD_DIM] f32 accumulators
    k, v,  # [BLOCK_N, HEAD_DIM] this program's key and value tiles
    q_base, do_base,  # *T first query / output-gradient row of one (batch, query head)
    lse_base, delta_base,  # *f32 first lse / delta of that (batch, query head)
    stride_qm, stride_dom,  # elements between consecutive queries / output-gradient rows
    offs_n,  # [BLOCK_N] int  key positions of the tile
    offs_d,  # [HEAD_DIM] int
    lo, hi,  # query positions to visit, [lo, hi); lo a multiple of BLOCK_M
    qk_scale,  # softmax scale * log2(e)
    n_ctx_q,  # number of queries
    BLOCK_M: tl.constexpr,  # queries per tile
    MASK_CAUSAL: tl.constexpr,  # apply key <= query (diagonal tiles only)
    CHECK_M: tl.constexpr,  # query tiles may run past n_ctx_q: mask the loads
):
    offs_m0 = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + offs_m0
        q = _load_rows(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, n_ctx_q, CHECK_M)
        do = _load_rows(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], offs_m, n_ctx_q, CHECK_M)
        lse2, delta = _load_stats(lse_base, delta_base, offs_m, n_ctx_q, CHECK_M)
        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # [BLOCK_N, BLOCK_M]: S^T in base-2 units
        if MASK_CAUSAL:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse2[None, :])  # P^T
        dv = tl.dot(p_t.to(do.dtype), do, dv)  # dV += P^T dO
        dp_t = tl.dot(v, tl.trans(do))  # dP^T = V dO^T
        ds_t = p_t * (dp_t - delta[None, :])  # dS^T
        dk = tl.dot(ds_t.to(q.dtype), q, dk)  # dK += dS^T Q (scaled once at the end)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr,  # *T   queries, (B, H, n_ctx_q, HEAD_DIM), unit stride on the last dim
    k_ptr,  # *T   keys, (B, H_kv, n_ctx_k, HEAD_DIM), unit stride on the last dim
    v_ptr,  # *T   values, like k
    do_ptr,  # *T  gradient of the output, like q
    lse_ptr,  # *f32 natural-log logsumexp of the forward, (B, H, n_ctx_q) contiguous
    delta_ptr,  # *f32 rowsum(dO * O), (B, H, n_ctx_q) contiguous
    dk_ptr,  # *T  out: gradient of k, (B, H_kv, n_ctx_k, HEAD_DIM) contiguous
    dv_ptr,  # *T  out: gradient of v, like dk
    stride_qb, stride_qh, stride_qm,  # q strides (batch, head, sequence), in elements
    stride_kb, stride_kh, stride_kn,  # k strides
    stride_vb, stride_vh, stride_vn,  # v strides
    stride_dob, stride_doh, stride_dom,  # do strides
    n_heads,  # H: query heads
    kv_group,  # H // H_kv: query heads sharing one kv head
    n_ctx_q,  # number of queries
    n_ctx_k,  # number of keys (== n_ctx_q when CAUSAL)
    qk_scale,  # softmax scale * log2(e)
    sm_scale,  # softmax scale
    HEAD_DIM: tl.constexpr,  # D (16, 32, 64, 128 or 256)
    BLOCK_M: tl.constexpr,  # queries per inner-loop tile (divides BLOCK_N when CAUSAL)
    BLOCK_N: tl.constexpr,  # keys per program
    CAUSAL: tl.constexpr,  # top-left causal mask
    EVEN_M: tl.constexpr,  # n_ctx_q % BLOCK_M == 0: no query bound checks
    EVEN_N: tl.constexpr,  # n_ctx_k % BLOCK_N == 0: no key bound checks
):
    pid_n = tl.program_id(0)  # key tile 0 sees the most queries under CAUSAL: longest first already
    pid_bhk = tl.program_id(1)
    n_kv_heads = n_heads // kv_group
    off_b = (pid_bhk // n_kv_heads).to(tl.int64)
    off_hk = (pid_bhk % n_kv_heads).to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # Keys past n_ctx_k read as zeros; their rows of dK/dV are never stored, so no score mask.
    k = _load_rows(k_ptr + off_b * stride_kb + off_hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                   offs_n, n_ctx_k, CHECK=not EVEN_N)
    v = _load_rows(v_ptr + off_b * stride_vb + off_hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                   offs_n, n_ctx_k, CHECK=not EVEN_N)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    n_full_m = (n_ctx_q // BLOCK_M) * BLOCK_M  # queries in whole tiles

    for g in range(kv_group):  # the query heads of this kv head: their sums are dK and dV
        off_h = off_hk * kv_group + g
        q_base = q_ptr + off_b * stride_qb + off_h * stride_qh
        do_base = do_ptr + off_b * stride_dob + off_h * stride_doh
        row0 = (off_b * n_heads + off_h) * n_ctx_q
        lse_base = lse_ptr + row0
        delta_base = delta_ptr + row0
        args = (k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom, offs_n, offs_d)
        lo = 0
        if CAUSAL:  # queries below start_n see none of these keys; the band [start_n, start_n + BLOCK_N)
            lo = start_n + BLOCK_N  # is masked (start_n is a multiple of BLOCK_M: BLOCK_N % BLOCK_M == 0)
            dk, dv = _dkdv_inner(dk, dv, *args, start_n, tl.minimum(lo, n_ctx_q), qk_scale, n_ctx_q,
                                 BLOCK_M=BLOCK_M, MASK_CAUSAL=True, CHECK_M=not EVEN_M)
        # whole query tiles that see every key: no mask at all
        dk, dv = _dkdv_inner(dk, dv, *args, lo, n_full_m, qk_scale, n_ctx_q,
                             BLOCK_M=BLOCK_M, MASK_CAUSAL=False, CHECK_M=False)
        if not EVEN_M:  # a ragged last query tile (empty when the causal band already held it)
            dk, dv = _dkdv_inner(dk, dv, *args, tl.maximum(n_full_m, lo), n_ctx_q, qk_scale, n_ctx_q,
                                 BLOCK_M=BLOCK_M, MASK_CAUSAL=False, CHECK_M=True)

    out = (off_b * n_kv_heads + off_hk) * n_ctx_k * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(dk_ptr + out, dk * sm_scale, offs_n, n_ctx_k, CHECK=not EVEN_N)
    _store_rows(dv_ptr + out, dv, offs_n, n_ctx_k, CHECK=not EVEN_N)


@triton.jit
def _dq_inner(
    dq,  # [BLOCK_M, HEAD_DIM] f32 accumulator
    q, do,  # [BLOCK_M, HEAD_DIM] this program's query and output-gradient tiles
    lse2, delta,  # [BLOCK_M] f32 base-2 logsumexp and rowsum(dO * O) of those rows
    k_base, v_base,  # *T first key / value of this (batch, kv head)
    stride_kn, stride_vn,  # elements between consecutive keys / values
    offs_m,  # [BLOCK_M] int  query positions of the tile
    offs_d,  # [HEAD_DIM] int
    lo, hi,  # key positions to visit, [lo, hi); lo a multiple of BLOCK_N
    qk_scale,  # softmax scale * log2(e)
    n_ctx_k,  # number of keys
    BLOCK_N: tl.constexpr,  # keys per tile
    MASK_CAUSAL: tl.constexpr,  # apply key <= query (diagonal tiles only)
    CHECK_N: tl.constexpr,  # key tiles may run past n_ctx_k: mask loads and scores
):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        k = _load_rows(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], offs_n, n_ctx_k, CHECK_N)
        v = _load_rows(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], offs_n, n_ctx_k, CHECK_N)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # [BLOCK_M, BLOCK_N] in base-2 units
        if MASK_CAUSAL:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        if CHECK_N:  # a zero-filled key would score 0, not -inf
            s = tl.where(offs_n[None, :] < n_ctx_k, s, float("-inf"))
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v))  # dP = dO V^T
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)  # dQ += dS K (scaled once at the end)
    return dq


@triton.jit
def _bwd_dq_kernel(
    q_ptr,  # *T   queries, (B, H, n_ctx_q, HEAD_DIM), unit stride on the last dim
    k_ptr,  # *T   keys, (B, H_kv, n_ctx_k, HEAD_DIM), unit stride on the last dim
    v_ptr,  # *T   values, like k
    do_ptr,  # *T  gradient of the output, like q
    lse_ptr,  # *f32 natural-log logsumexp of the forward, (B, H, n_ctx_q) contiguous
    delta_ptr,  # *f32 rowsum(dO * O), (B, H, n_ctx_q) contiguous
    dq_ptr,  # *T  out: gradient of q, (B, H, n_ctx_q, HEAD_DIM) contiguous
    stride_qb, stride_qh, stride_qm,  # q strides (batch, head, sequence), in elements
    stride_kb, stride_kh, stride_kn,  # k strides
    stride_vb, stride_vh, stride_vn,  # v strides
    stride_dob, stride_doh, stride_dom,  # do strides
    n_heads,  # H: query heads
    kv_group,  # H // H_kv: query heads sharing one kv head
    n_ctx_q,  # number of queries
    n_ctx_k,  # number of keys (== n_ctx_q when CAUSAL)
    qk_scale,  # softmax scale * log2(e)
    sm_scale,  # softmax scale
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop tile (divides BLOCK_M when CAUSAL)
    CAUSAL: tl.constexpr,  # top-left causal mask
    EVEN_M: tl.constexpr,  # n_ctx_q % BLOCK_M == 0: no query bound checks
    EVEN_N: tl.constexpr,  # n_ctx_k % BLOCK_N == 0: no key bound checks
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - pid_m  # longest (most keys) tiles first
    else:
        start_m = pid_m
    off_b = (pid_bh // n_heads).to(tl.int64)
    off_h = (pid_bh % n_heads).to(tl.int64)
    off_hk = off_h // kv_group

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = _load_rows(q_ptr + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                   offs_m, n_ctx_q, CHECK=not EVEN_M)
    do = _load_rows(do_ptr + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_d[None, :], offs_m, n_ctx_q, CHECK=not EVEN_M)
    row0 = pid_bh.to(tl.int64) * n_ctx_q
    lse2, delta = _load_stats(lse_ptr + row0, delta_ptr + row0, offs_m, n_ctx_q, CHECK=not EVEN_M)
    k_base = k_ptr + off_b * stride_kb + off_hk * stride_kh
    v_base = v_ptr + off_b * stride_vb + off_hk * stride_vh
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)

    args = (q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d)
    if CAUSAL:  # key tiles below the diagonal: no mask; the diagonal band [diag, diag + BLOCK_M): masked
        n_free = start_m * BLOCK_M
        band_hi = tl.minimum(n_free + BLOCK_M, n_ctx_k)
    else:  # every whole key tile: no mask; a ragged last one (empty range when EVEN_N): bounds
        n_free = (n_ctx_k // BLOCK_N) * BLOCK_N
        band_hi = n_ctx_k
    dq = _dq_inner(dq, *args, 0, n_free, qk_scale, n_ctx_k, BLOCK_N=BLOCK_N, MASK_CAUSAL=False, CHECK_N=False)
    dq = _dq_inner(dq, *args, n_free, band_hi, qk_scale, n_ctx_k,
                   BLOCK_N=BLOCK_N, MASK_CAUSAL=CAUSAL, CHECK_N=not EVEN_N)

    dq_ptrs = dq_ptr + pid_bh.to(tl.int64) * n_ctx_q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(dq_ptrs, dq * sm_scale, offs_m, n_ctx_q, CHECK=not EVEN_M)


# ---------------------------------------------------------------------------------------------
# 2. Launch configurations
# ---------------------------------------------------------------------------------------------
# DKV_BLOCK_N keys per dK/dV program, streamed over query tiles of DKV_BLOCK_M; DQ_BLOCK_M queries
# per dQ program, streamed over key tiles of DQ_BLOCK_N. Causal runs need DKV_BLOCK_N % DKV_BLOCK_M
# == 0 and DQ_BLOCK_M % DQ_BLOCK_N == 0 (whole diagonal tiles). num_warps / num_stages apply to both
# kernels. H100/H200 starting points for the benchmark sweep at D = 128, with their bf16 shared-memory
# estimates (bwd_shared_mem_bytes: dK/dV / dQ kernel) against the H100/H200 opt-in limit of 227 KiB.
# (Triton 3.9 compiling the first for sm_90 counts 96.5 / 96 KiB: the estimate is an upper bound.)
BWD_CONFIGS = [
    dict(DKV_BLOCK_M=64, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=64, num_warps=8, num_stages=2),  # 160 / 144 KiB
    dict(DKV_BLOCK_M=64, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=64, num_warps=4, num_stages=2),  # 160 / 144 KiB
    dict(DKV_BLOCK_M=32, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=32, num_warps=8, num_stages=2),  # 112 / 104 KiB
    dict(DKV_BLOCK_M=64, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=64, num_warps=8, num_stages=1),  # 128 / 112 KiB
    dict(DKV_BLOCK_M=64, DKV_BLOCK_N=64, DQ_BLOCK_M=64, DQ_BLOCK_N=64, num_warps=4, num_stages=3),  # 144 / 136 KiB
    dict(DKV_BLOCK_M=32, DKV_BLOCK_N=64, DQ_BLOCK_M=64, DQ_BLOCK_N=32, num_warps=4, num_stages=3),  # 88 / 84 KiB
]
_CONFIG_KEYS = ("DKV_BLOCK_M", "DKV_BLOCK_N", "DQ_BLOCK_M", "DQ_BLOCK_N", "num_warps", "num_stages")

# Starting defaults by head_dim (16-bit inputs), before the shared-memory fit. D = 128 checked by the sweep on
# the H200 (2026-12-02, benchmarks/RESULTS.md, fourth session): 9.37 / 5.26 ms fwd+bwd at B4 H32 S4096
# (non-causal / causal), within 1 % of the best of BWD_CONFIGS (32x64 / 64x32, 4 warps, 3 stages); D = 64
# and 256 not swept yet.
_BWD_DEFAULTS = {
    64: dict(DKV_BLOCK_M=64, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=64, num_warps=4, num_stages=2),
    128: dict(DKV_BLOCK_M=64, DKV_BLOCK_N=128, DQ_BLOCK_M=128, DQ_BLOCK_N=64, num_warps=8, num_stages=2),
    # (untuned: 32-row tiles keep the 256-wide fp32 accumulators of 8 warps within the registers)
    256: dict(DKV_BLOCK_M=32, DKV_BLOCK_N=32, DQ_BLOCK_M=32, DQ_BLOCK_N=32, num_warps=8, num_stages=2),
}
_PREPROCESS_BLOCK = 64  # rows per program of _bwd_preprocess
_SMEM_HEADROOM = 16 * 1024  # the estimate leaves this much for what it does not count (barriers, scratch)


def bwd_shared_mem_bytes(cfg: dict, head_dim: int, elem_bytes: int) -> tuple[int, int]:
    """Estimated shared memory of the (dK/dV, dQ) kernels, bytes: an upper-bound model, not Triton's count.

    dK/dV: ``num_stages`` buffers of the streamed Q and dO tiles (2 x BLOCK_M x D each), the resident
    K and V tiles (2 x BLOCK_N x D) and P^T, dS^T staged as dot operands (2 x BLOCK_N x BLOCK_M).
    dQ: ``num_stages`` buffers of the streamed K and V tiles, the resident Q and dO, and dS.
    """
    d, e, stages = head_dim, elem_bytes, max(int(cfg["num_stages"]), 1)
    m, n = cfg["DKV_BLOCK_M"], cfg["DKV_BLOCK_N"]
    dkdv = stages * 2 * m * d * e + 2 * n * d * e + 2 * n * m * e
    m, n = cfg["DQ_BLOCK_M"], cfg["DQ_BLOCK_N"]
    dq = stages * 2 * n * d * e + 2 * m * d * e + m * n * e
    return dkdv, dq


def _fit_config(cfg: dict, head_dim: int, elem_bytes: int, limit: int) -> dict | None:
    """``cfg`` with its tiles (then stages) shrunk until both kernels' estimates fit ``limit``; None if none.

    A kernel over the budget halves its larger tile (so it stays a multiple of the smaller one: the
    causal rule), or the smaller one when both are equal, down to 16.
    """
    cfg = dict(cfg)
    budget = limit - _SMEM_HEADROOM
    while True:
        over = [size > budget for size in bwd_shared_mem_bytes(cfg, head_dim, elem_bytes)]
        if not any(over):
            return cfg
        for is_over, big, small in zip(over, ("DKV_BLOCK_N", "DQ_BLOCK_M"), ("DKV_BLOCK_M", "DQ_BLOCK_N")):
            tile = big if cfg[big] > cfg[small] else small
            if is_over and cfg[tile] > 16:
                cfg[tile] //= 2
                break
        else:
            if cfg["num_stages"] == 1:
                return None
            cfg["num_stages"] -= 1


def _gpu_default(head_dim: int, dtype: torch.dtype, limit: int) -> dict | None:
    start = _BWD_DEFAULTS.get(head_dim, _BWD_DEFAULTS[64] if head_dim < 64 else _BWD_DEFAULTS[256])
    return _fit_config(start, head_dim, dtype.itemsize, limit)


def _smem_limit(device) -> int:
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return max_shared_mem(torch.device(device))


def default_bwd_config(head_dim: int, causal: bool, dtype: torch.dtype = torch.bfloat16, device=None) -> dict:
    """The backward launch configuration used when ``config`` is not given.

    On a GPU: the starting point for ``head_dim`` with its tiles shrunk until the estimate of
    :func:`bwd_shared_mem_bytes` fits the device's opt-in shared memory per block
    (``shared_memory_per_block_optin``); ``ValueError`` when even 16-row tiles do not fit.
    ``causal`` does not change the choice today (the sweep may).
    """
    if is_interpreter():  # CPU: small tiles so that short test sequences still span several tiles
        return dict(DKV_BLOCK_M=16, DKV_BLOCK_N=32, DQ_BLOCK_M=32, DQ_BLOCK_N=16, num_warps=4, num_stages=1)
    limit = _smem_limit(device)
    cfg = _gpu_default(head_dim, dtype, limit)
    if cfg is None:
        raise ValueError(f"no backward tiles fit {limit} bytes of shared memory at head_dim={head_dim}, {dtype}: "
                         "use flash_attention(..., backward='torch') or a smaller head_dim")
    return cfg


def default_bwd_fits(head_dim: int, dtype: torch.dtype, device=None) -> bool:
    """Whether :func:`default_bwd_config` finds tiles for this head_dim and dtype on ``device``."""
    return is_interpreter() or _gpu_default(head_dim, dtype, _smem_limit(device)) is not None


# ---------------------------------------------------------------------------------------------
# 3. Launcher
# ---------------------------------------------------------------------------------------------
def _check_bwd_inputs(do, q, k, v, o, lse, causal):
    from .flash_attention import _check_inputs  # (imported here: flash_attention.py imports this module)

    _check_inputs(q, k, v, causal)
    if o.shape != q.shape or do.shape != q.shape:
        raise ValueError(f"o{tuple(o.shape)} and do{tuple(do.shape)} must have the shape of q{tuple(q.shape)}")
    if lse.shape != q.shape[:3] or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 of shape {tuple(q.shape[:3])} (the forward's return_lse), "
                         f"got {lse.dtype} {tuple(lse.shape)}")
    for name, t in (("o", o), ("do", do)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype} but q is {q.dtype}: cast it with .to(q.dtype)")
    if len({t.device for t in (do, q, k, v, o, lse)}) != 1:
        raise ValueError("do, q, k, v, o, lse must be on one device")


def _resolve_config(config, d, causal, dtype, device) -> dict:
    cfg = dict(config) if config is not None else default_bwd_config(d, causal, dtype, device)
    missing = [key for key in _CONFIG_KEYS if key not in cfg]
    if missing:
        raise ValueError(f"backward config lacks {missing}; expected keys {list(_CONFIG_KEYS)} (see BWD_CONFIGS)")
    if causal and (cfg["DKV_BLOCK_N"] % cfg["DKV_BLOCK_M"] or cfg["DQ_BLOCK_M"] % cfg["DQ_BLOCK_N"]):
        raise ValueError("causal attention needs DKV_BLOCK_N % DKV_BLOCK_M == 0 and DQ_BLOCK_M % DQ_BLOCK_N == 0, "
                         f"got {cfg['DKV_BLOCK_M']}x{cfg['DKV_BLOCK_N']} and {cfg['DQ_BLOCK_M']}x{cfg['DQ_BLOCK_N']}")
    return cfg


def flash_attention_backward(do, q, k, v, o, lse, causal: bool = False, sm_scale: float | None = None,
                             config: dict | None = None):
    """Gradients ``(dq, dk, dv)`` of attention from the forward's ``o`` and ``lse`` (three Triton kernels).

    ``do`` is the gradient of ``o``; ``lse`` the fp32 (B, H, S_q) logsumexp returned by
    ``flash_attention(..., return_lse=True)``. Shapes and options as in ``flash_attention``; inputs
    only need a unit stride on the last dim. ``config``: see ``BWD_CONFIGS``. The gradients are
    contiguous, in the dtype of the inputs; dk and dv have the kv heads of k and v.
    """
    _check_bwd_inputs(do, q, k, v, o, lse, causal)
    do, q, k, v, o = (t if t.stride(-1) == 1 else t.contiguous() for t in (do, q, k, v, o))
    lse = lse.contiguous()
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    cfg = _resolve_config(config, d, causal, q.dtype, q.device)

    dq = torch.empty((b, h, sq, d), dtype=q.dtype, device=q.device)
    dk = torch.empty((b, hk, sk, d), dtype=k.dtype, device=q.device)
    dv = torch.empty((b, hk, sk, d), dtype=v.dtype, device=q.device)
    if q.numel() == 0 or k.numel() == 0:  # nothing attends to anything
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    _bwd_preprocess[(triton.cdiv(sq, _PREPROCESS_BLOCK), b * h)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        h, sq, HEAD_DIM=d, BLOCK_M=_PREPROCESS_BLOCK, EVEN_M=(sq % _PREPROCESS_BLOCK == 0), num_warps=4,
    )
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    common = (h, h // hk, sq, sk, scale * 1.4426950408889634, scale)
    launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    bm, bn = cfg["DKV_BLOCK_M"], cfg["DKV_BLOCK_N"]
    _bwd_dkdv_kernel[(triton.cdiv(sk, bn), b * hk)](
        q, k, v, do, lse, delta, dk, dv, *strides, *common,
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, EVEN_M=(sq % bm == 0), EVEN_N=(sk % bn == 0), **launch,
    )
    bm, bn = cfg["DQ_BLOCK_M"], cfg["DQ_BLOCK_N"]
    _bwd_dq_kernel[(triton.cdiv(sq, bm), b * h)](
        q, k, v, do, lse, delta, dq, *strides, *common,
        HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, EVEN_M=(sq % bm == 0), EVEN_N=(sk % bn == 0), **launch,
    )
    return dq, dk, dv
