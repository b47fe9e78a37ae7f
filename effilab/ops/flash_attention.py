# effilab: instructor-only
"""FlashAttention forward in Triton (reference solution of notebook 08).

Attention ``O = softmax(Q K^T * scale) V`` for one (batch, head) with sequence length ``S`` needs
the ``S x S`` score matrix if computed naively: at S = 4096 that is 64 MiB per head in fp32, far
more than on-chip memory, so the naive version is bound by memory traffic, not by the tensor cores.

FlashAttention (Dao et al., 2022, "FlashAttention: Fast and Memory-Efficient Exact Attention
with IO-Awareness"; Dao, 2023, "FlashAttention-2") never materialises the scores. One program
owns a tile of ``BLOCK_M`` query rows and streams over the keys/values in tiles of ``BLOCK_N``,
keeping for each row a running max ``m``, a running softmax denominator ``l`` and an unnormalised
output accumulator ``acc`` (the online softmax of Milakov & Gimelshein, 2018)::

    s     = q @ k_tile^T * scale                  (BLOCK_M x BLOCK_N, on chip)
    m_new = max(m, rowmax(s))
    p     = exp(s - m_new)
    alpha = exp(m - m_new)                         (rescales what was accumulated so far)
    l     = l * alpha + rowsum(p)
    acc   = acc * alpha + p @ v_tile
    ...
    O = acc / l          lse = m + log(l)          (lse is what a backward pass needs)

Memory is O(S) per head (the output and one float of logsumexp per row); the work is two
matrix products per tile, so the kernel is bound by tensor-core throughput. Details:

* exponentials in base 2 (``exp2``, a single MUFU instruction): the scale is pre-multiplied by
  log2(e) and ``lse`` converted back to natural log at the end;
* causal masking: key tiles entirely above the diagonal are skipped (half of the work); tiles
  entirely below are processed with no mask; only the tiles on the diagonal apply the mask. Query
  tiles are scheduled longest-first (reversed order) so the last wave of programs is short;
* sequence lengths that are not multiples of the tiles are masked only where needed (constexpr
  ``EVEN_M`` / ``EVEN_N`` flags remove every bound check from the common case);
* grouped-query attention: ``k``/``v`` may have fewer heads than ``q`` (``H % H_kv == 0``);
* ``TMA_CONFIGS`` load the K/V tiles with Hopper's tensor-memory accelerator (tensor descriptors
  over the (B*H_kv*S, D) view) instead of per-thread pointer loads.

The backward is the FlashAttention-2 backward in Triton (``flash_attention_bwd.py``: a dK/dV
kernel per key tile and a dQ kernel per query tile, recomputing the probabilities from the saved
``lse``). ``flash_attention(..., backward="torch")`` selects instead the same algorithm written in
plain PyTorch (``attention_backward_torch``, one chunk of query rows at a time): correct, not fast,
kept as the reference the Triton backward is tested against.

Layout: reference -> kernels -> launcher (+ ``CONFIGS`` for the benchmark sweep) -> PyTorch
backward -> autograd.Function -> ``flash_attention``; the backward kernels live in flash_attention_bwd.py.
"""
from __future__ import annotations

import math

import torch

import effilab  # noqa: F401  (must precede triton)
import triton
import triton.language as tl

from ._utils import is_interpreter
from .flash_attention_bwd import BWD_CONFIGS, default_bwd_config, default_bwd_fits, flash_attention_backward

__all__ = [
    "attention_reference",
    "flash_attention",
    "flash_attention_forward",
    "flash_attention_backward",
    "attention_backward_torch",
    "FlashAttentionFunction",
    "CONFIGS",
    "TMA_CONFIGS",
    "PIPELINE_CONFIGS",
    "BWD_CONFIGS",
    "BACKWARDS",
    "default_config",
    "default_bwd_config",
    "tma_available",
]
__ops__ = ("flash_attention", "attention_reference")  # added to effilab.ops (see effilab/ops/__init__.py)


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def attention_reference(q, k, v, causal: bool = False, sm_scale: float | None = None, return_lse: bool = False):
    """Naive attention in fp32 (materialises the scores), cast back to ``q.dtype``.

    Shapes: q (B, H, Sq, D), k and v (B, H_kv, Sk, D) with H % H_kv == 0. With ``causal`` the
    mask is top-left aligned (key j is visible to query i iff j <= i), as in
    ``F.scaled_dot_product_attention(is_causal=True)``. Returns ``o`` or ``(o, lse)``.
    """
    d = q.shape[-1]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    s = q.float() @ kf.transpose(-1, -2) * scale
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = (torch.softmax(s, dim=-1) @ vf).to(q.dtype)
    return (o, lse) if return_lse else o


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_inner(
    acc,  # [BLOCK_M, HEAD_DIM] f32  running unnormalised output
    l_i,  # [BLOCK_M] f32            running softmax denominator
    m_i,  # [BLOCK_M] f32            running row max of the scaled scores (base-2 units)
    q,  # [BLOCK_M, HEAD_DIM]      the query tile (fp16/bf16)
    k_base,  # *T  first key of this (batch, kv-head); with TMA: the key tensor descriptor
    v_base,  # *T  first value of this (batch, kv-head); with TMA: the value tensor descriptor
    kv_row0,  # with TMA: row of this (batch, kv-head)'s first key in the (B*H_kv*S_k, D) view
    stride_kn,  # elements between consecutive keys
    stride_vn,  # elements between consecutive values
    offs_m,  # [BLOCK_M] int  query positions of the tile
    offs_d,  # [HEAD_DIM] int  0 .. HEAD_DIM-1
    lo,  # first key position to visit (multiple of BLOCK_N)
    hi,  # one past the last key position to visit
    qk_scale,  # softmax scale * log2(e)
    n_ctx_k,  # number of keys
    BLOCK_N: tl.constexpr,  # keys per tile
    MASK_CAUSAL: tl.constexpr,  # apply key <= query (only on diagonal tiles)
    CHECK_N: tl.constexpr,  # key tiles may run past n_ctx_k: mask loads and scores
    TMA: tl.constexpr,  # load K/V tiles with the Hopper tensor-memory accelerator (descriptors)
):
    offs_n0 = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        if TMA:
            # Rows past this head's keys belong to the next head (or are zero-filled past the end of
            # the tensor); CHECK_N masks their scores, so they never count.
            k = k_base.load([kv_row0 + start_n, 0])
        else:
            k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
            if CHECK_N:
                k = tl.load(k_ptrs, mask=offs_n[:, None] < n_ctx_k, other=0.0)
            else:
                k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] fp32 raw scores

        if MASK_CAUSAL or CHECK_N:
            if MASK_CAUSAL and CHECK_N:
                keep = (offs_m[:, None] >= offs_n[None, :]) & (offs_n[None, :] < n_ctx_k)
            elif MASK_CAUSAL:
                keep = offs_m[:, None] >= offs_n[None, :]
            else:
                keep = offs_n[None, :] < n_ctx_k
            s = tl.where(keep, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA + one exp2 per score

        alpha = tl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if TMA:
            v = v_base.load([kv_row0 + start_n, 0])
        else:
            v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
            if CHECK_N:
                v = tl.load(v_ptrs, mask=offs_n[:, None] < n_ctx_k, other=0.0)
            else:
                v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _load_full_tile(base, row0, start_n, stride_n, offs_n0, offs_d, TMA: tl.constexpr):
    """One unmasked [BLOCK_N, HEAD_DIM] K or V tile: a TMA descriptor load or per-thread pointer loads."""
    if TMA:  # (one return: the compiler traces both branches of the function body)
        tile = base.load([row0 + start_n, 0])
    else:
        tile = tl.load(base + (start_n + offs_n0)[:, None] * stride_n + offs_d[None, :])
    return tile


@triton.jit
def _attn_fwd_inner_pipelined(
    acc, l_i, m_i, q,  # as in _attn_fwd_inner
    k_base, v_base, kv_row0, stride_kn, stride_vn,  # as in _attn_fwd_inner
    offs_d,  # [HEAD_DIM] int  0 .. HEAD_DIM-1
    lo,  # first key position (multiple of BLOCK_N)
    hi,  # one past the last key position; (hi - lo) % BLOCK_N == 0: full tiles, no masks
    qk_scale,  # softmax scale * log2(e)
    BLOCK_N: tl.constexpr,  # keys per tile
    TMA: tl.constexpr,  # K/V through tensor descriptors
):
    """The unmasked key loop, software-pipelined by one tile: the scores of tile j+1 (``Q K^T``, a
    tensor-core product Hopper runs asynchronously) are issued *before* the softmax of tile j, so
    the exponentials can overlap the next product instead of waiting for it. This is the
    "intra-warpgroup overlap" of FlashAttention-3 (Shah et al., 2024) written as a loop
    rotation; whether the compiler's wait placement lets the two overlap is what the H200 sweep
    measures (``PIPELINE`` in ``CONFIGS``). Costs one more score tile of registers."""
    offs_n0 = tl.arange(0, BLOCK_N)
    if hi > lo:
        s = tl.dot(q, tl.trans(_load_full_tile(k_base, kv_row0, lo, stride_kn, offs_n0, offs_d, TMA)))
        for start_n in range(lo, hi - BLOCK_N, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            k_next = _load_full_tile(k_base, kv_row0, start_n + BLOCK_N, stride_kn, offs_n0, offs_d, TMA)
            s_next = tl.dot(q, tl.trans(k_next))  # issued before this tile's softmax
            v = _load_full_tile(v_base, kv_row0, start_n, stride_vn, offs_n0, offs_d, TMA)
            acc, l_i, m_i = _softmax_pv_step(acc, l_i, m_i, s, v, qk_scale)
            s = s_next
        v = _load_full_tile(v_base, kv_row0, hi - BLOCK_N, stride_vn, offs_n0, offs_d, TMA)  # the last tile
        acc, l_i, m_i = _softmax_pv_step(acc, l_i, m_i, s, v, qk_scale)
    return acc, l_i, m_i


@triton.jit
def _softmax_pv_step(acc, l_i, m_i, s, v, qk_scale):
    """One unmasked online-softmax update with raw scores ``s`` and the value tile ``v``."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA + one exp2 per score
    alpha = tl.exp2(m_i - m_new)  # 0 on the first tile (m_i = -inf)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    q_ptr,  # *T   queries, (B, H, n_ctx_q, HEAD_DIM), unit stride on the last dim
    k_ptr,  # *T   keys, (B, H_kv, n_ctx_k, HEAD_DIM), unit stride on the last dim (TMA: descriptor)
    v_ptr,  # *T   values, (B, H_kv, n_ctx_k, HEAD_DIM), unit stride on the last dim (TMA: descriptor)
    o_ptr,  # *T   out: attention output, (B, H, n_ctx_q, HEAD_DIM)
    lse_ptr,  # *f32 out: natural-log logsumexp of each query row, (B, H, n_ctx_q) contiguous
    stride_qb, stride_qh, stride_qm,  # q strides (batch, head, sequence), in elements
    stride_kb, stride_kh, stride_kn,  # k strides
    stride_vb, stride_vh, stride_vn,  # v strides
    stride_ob, stride_oh, stride_om,  # o strides
    n_heads,  # H: query heads
    kv_group,  # H // H_kv: query heads sharing one kv head
    n_ctx_q,  # number of queries
    n_ctx_k,  # number of keys (== n_ctx_q when CAUSAL)
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,  # D (16, 32, 64, 128 or 256)
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per inner-loop tile (divides BLOCK_M when CAUSAL)
    CAUSAL: tl.constexpr,  # top-left causal mask
    EVEN_M: tl.constexpr,  # n_ctx_q % BLOCK_M == 0: no query bound checks
    EVEN_N: tl.constexpr,  # n_ctx_k % BLOCK_N == 0: no key bound checks
    TMA: tl.constexpr,  # k_ptr / v_ptr are tensor descriptors of the (B*H_kv*n_ctx_k, D) views
    PIPELINE: tl.constexpr,  # unmasked tiles through _attn_fwd_inner_pipelined (next Q K^T issued early)
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

    q_base = q_ptr + off_b * stride_qb + off_h * stride_qh
    o_base = o_ptr + off_b * stride_ob + off_h * stride_oh
    if TMA:
        k_base = k_ptr
        v_base = v_ptr
        kv_row0 = ((pid_bh // n_heads) * (n_heads // kv_group) + (pid_bh % n_heads) // kv_group) * n_ctx_k
    else:
        k_base = k_ptr + off_b * stride_kb + off_hk * stride_kh
        v_base = v_ptr + off_b * stride_vb + off_hk * stride_vh
        kv_row0 = 0

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = q_base + offs_m[:, None] * stride_qm + offs_d[None, :]
    if EVEN_M:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=offs_m[:, None] < n_ctx_q, other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)

    if CAUSAL:
        # Tiles strictly below the diagonal: every key is visible, no mask at all.
        diag = start_m * BLOCK_M
        if PIPELINE:
            acc, l_i, m_i = _attn_fwd_inner_pipelined(
                acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_d,
                0, diag, qk_scale, BLOCK_N=BLOCK_N, TMA=TMA,
            )
        else:
            acc, l_i, m_i = _attn_fwd_inner(
                acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_m, offs_d,
                0, diag, qk_scale, n_ctx_k,
                BLOCK_N=BLOCK_N, MASK_CAUSAL=False, CHECK_N=False, TMA=TMA,
            )
        # The diagonal band [diag, diag + BLOCK_M): causal mask (and bounds on a ragged end).
        acc, l_i, m_i = _attn_fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_m, offs_d,
            diag, tl.minimum(diag + BLOCK_M, n_ctx_k), qk_scale, n_ctx_k,
            BLOCK_N=BLOCK_N, MASK_CAUSAL=True, CHECK_N=not EVEN_N, TMA=TMA,
        )
    else:
        n_full = (n_ctx_k // BLOCK_N) * BLOCK_N
        if PIPELINE:
            acc, l_i, m_i = _attn_fwd_inner_pipelined(
                acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_d,
                0, n_full, qk_scale, BLOCK_N=BLOCK_N, TMA=TMA,
            )
        else:
            acc, l_i, m_i = _attn_fwd_inner(
                acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_m, offs_d,
                0, n_full, qk_scale, n_ctx_k,
                BLOCK_N=BLOCK_N, MASK_CAUSAL=False, CHECK_N=False, TMA=TMA,
            )
        if not EVEN_N:  # one ragged tile at the end
            acc, l_i, m_i = _attn_fwd_inner(
                acc, l_i, m_i, q, k_base, v_base, kv_row0, stride_kn, stride_vn, offs_m, offs_d,
                n_full, n_ctx_k, qk_scale, n_ctx_k,
                BLOCK_N=BLOCK_N, MASK_CAUSAL=False, CHECK_N=True, TMA=TMA,
            )

    inv_l = 1.0 / l_i
    o = acc * inv_l[:, None]
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # back to natural log
    o_ptrs = o_base + offs_m[:, None] * stride_om + offs_d[None, :]
    lse_ptrs = lse_ptr + pid_bh.to(tl.int64) * n_ctx_q + offs_m
    if EVEN_M:
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty))
        tl.store(lse_ptrs, lse)
    else:
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < n_ctx_q)
        tl.store(lse_ptrs, lse, mask=offs_m < n_ctx_q)


# ---------------------------------------------------------------------------------------------
# 3. Launcher
# ---------------------------------------------------------------------------------------------
# Launch configurations the benchmark sweeps (H100 starting points). Causal runs need
# BLOCK_M % BLOCK_N == 0. Shared memory per stage is 2 * BLOCK_N * D * 2 bytes (K and V tiles).
# (BLOCK_N=128 with 3 stages would need ~224 KB at D=128: over the H100's 227 KB with the extras.)
CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=4),
]
# The same kernel loading K/V tiles through TMA descriptors (Hopper and newer; Triton >= 3.4).
TMA_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, TMA=True),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4, TMA=True),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, TMA=True),
]
# The loop rotated by one tile (``_attn_fwd_inner_pipelined``), with pointer loads and with TMA.
PIPELINE_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, PIPELINE=True),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2, PIPELINE=True),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, PIPELINE=True),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, TMA=True, PIPELINE=True),
]

# Defaults by (head_dim, causal); overridable per call with ``config=``. Fill in from the sweep.
_DEFAULTS = {
    (64, False): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (64, True): dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
    (128, False): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    (128, True): dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
}


def tma_available() -> bool:
    """Whether this Triton has host-side tensor descriptors (TMA configs; used on Hopper GPUs)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


def default_config(head_dim: int, causal: bool, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The launch configuration used when ``config`` is not given."""
    if is_interpreter():  # CPU: small tiles so that short test sequences still span several tiles
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)
    if dtype == torch.float32 and head_dim >= 128:  # 4-byte tiles: stay within shared memory
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    cfg = _DEFAULTS.get((head_dim, causal))
    if cfg is None:
        cfg = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8 if head_dim >= 128 else 4, num_stages=3)
        if head_dim > 128:
            cfg = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    return dict(cfg)


def _check_inputs(q, k, v, causal):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D (batch, heads, seq, head_dim)")
    b, h, sq, d = q.shape
    bk, hk, sk, dk = k.shape
    if v.shape != k.shape or bk != b or dk != d:
        raise ValueError(f"incompatible shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim must be one of 16, 32, 64, 128, 256; got {d}")
    if causal and sq != sk:
        raise ValueError("causal attention needs as many queries as keys")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError("q, k, v must share a dtype")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"unsupported dtype {q.dtype}")


def flash_attention_forward(q, k, v, causal: bool = False, sm_scale: float | None = None, config: dict | None = None):
    """Launch the forward kernel. Returns ``(o, lse)``; ``lse`` is fp32 of shape (B, H, S_q)."""
    _check_inputs(q, k, v, causal)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    cfg = dict(config) if config is not None else default_config(d, causal, q.dtype)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if causal and block_m % block_n:
        raise ValueError(f"causal attention needs BLOCK_M % BLOCK_N == 0, got {block_m}, {block_n}")

    o = torch.empty_like(q)
    lse = torch.empty((b, h, sq), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    use_tma = bool(cfg.get("TMA", False))
    k_arg, v_arg = k, v
    if use_tma:
        if not tma_available():
            raise RuntimeError("TMA configs need triton.tools.tensor_descriptor (Triton >= 3.4)")
        from triton.tools.tensor_descriptor import TensorDescriptor

        k, v = k.contiguous(), v.contiguous()
        k_arg = TensorDescriptor.from_tensor(k.view(b * hk * sk, d), [block_n, d])
        v_arg = TensorDescriptor.from_tensor(v.view(b * hk * sk, d), [block_n, d])
    grid = (triton.cdiv(sq, block_m), b * h)
    _attn_fwd_kernel[grid](
        q, k_arg, v_arg, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        h, h // hk, sq, sk, scale * 1.4426950408889634,
        HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
        EVEN_M=(sq % block_m == 0), EVEN_N=(sk % block_n == 0), TMA=use_tma,
        PIPELINE=bool(cfg.get("PIPELINE", False)),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return o, lse


# ---------------------------------------------------------------------------------------------
# 4. Autograd (Triton forward; Triton or plain-PyTorch FlashAttention-2 backward)
# ---------------------------------------------------------------------------------------------
def attention_backward_torch(do, q, k, v, o, lse, causal, sm_scale, chunk: int = 1024):
    """FlashAttention-2 backward in PyTorch, one chunk of query rows at a time.

    With ``P = exp(S - lse)`` recomputed from the saved logsumexp and ``delta = rowsum(dO * O)``::

        dV = P^T dO      dP = dO V^T      dS = P * (dP - delta)      dQ = dS K * scale      dK = dS^T Q * scale

    Extra memory is O(chunk x S_k) per (batch, head), never the full S x S matrix.
    """
    b, h, sq, d = q.shape
    hk, sk = k.shape[1], k.shape[2]
    group = h // hk
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    dq = torch.empty((b, h, sq, d), dtype=torch.float32, device=q.device)
    dk = torch.zeros((b, h, sk, d), dtype=torch.float32, device=q.device)
    dv = torch.zeros((b, h, sk, d), dtype=torch.float32, device=q.device)
    delta = (do.float() * o.float()).sum(-1)  # (B, H, Sq)
    for i0 in range(0, sq, chunk):
        i1 = min(i0 + chunk, sq)
        qi, doi = q[:, :, i0:i1].float(), do[:, :, i0:i1].float()
        s = qi @ kf.transpose(-1, -2) * sm_scale
        if causal:
            rows = torch.arange(i0, i1, device=q.device)[:, None]
            cols = torch.arange(sk, device=q.device)[None, :]
            s = s.masked_fill(cols > rows, float("-inf"))
        p = torch.exp(s - lse[:, :, i0:i1, None])
        dv += p.transpose(-1, -2) @ doi
        dp = doi @ vf.transpose(-1, -2)
        ds = p * (dp - delta[:, :, i0:i1, None])
        dq[:, :, i0:i1] = ds @ kf * sm_scale
        dk += ds.transpose(-1, -2) @ qi * sm_scale
    if group > 1:
        dk = dk.view(b, hk, group, sk, d).sum(2)
        dv = dv.view(b, hk, group, sk, d).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


BACKWARDS = ("triton", "torch")  # the choices of flash_attention(..., backward=)


def _check_backward(backward: str) -> None:
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(map(repr, BACKWARDS))}; got {backward!r}")


class FlashAttentionFunction(torch.autograd.Function):
    """Triton forward; backward by ``backward`` ("triton": the kernels of flash_attention_bwd.py with
    ``bwd_config``, or the PyTorch path when no default tiles fit this GPU's shared memory; "torch")."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, config, backward="triton", bwd_config=None):
        _check_backward(backward)
        o, lse = flash_attention_forward(q, k, v, causal, sm_scale, config)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.sm_scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        ctx.backward, ctx.bwd_config = backward, bwd_config
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dlse):
        q, k, v, o, lse = ctx.saved_tensors
        use_triton = ctx.backward == "triton" and (
            ctx.bwd_config is not None or default_bwd_fits(q.shape[-1], q.dtype, q.device))
        if use_triton:
            dq, dk, dv = flash_attention_backward(do, q, k, v, o, lse, ctx.causal, ctx.sm_scale, ctx.bwd_config)
        else:
            dq, dk, dv = attention_backward_torch(do, q, k, v, o, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
    *,
    return_lse: bool = False,
    config: dict | None = None,
    backward: str = "triton",
    bwd_config: dict | None = None,
):
    """Fused attention ``softmax(q k^T * sm_scale) v`` over (B, H, S, D) tensors.

    fp16/bf16 inputs (fp32 works too, with tf32 dot products on a GPU); ``D`` in {16, 32, 64, 128,
    256}; ``k``/``v`` may have fewer heads than ``q`` (grouped-query attention). ``sm_scale``
    defaults to ``1/sqrt(D)``; ``causal`` uses the top-left aligned mask of
    ``F.scaled_dot_product_attention(is_causal=True)``. With ``return_lse`` also returns the
    per-row logsumexp (fp32, (B, H, S_q)). ``config`` (a dict with BLOCK_M, BLOCK_N, num_warps,
    num_stages; see ``CONFIGS``) overrides the forward launch. ``backward`` picks the gradient's
    implementation: ``"triton"`` (default; ``bwd_config`` overrides its launch, see ``BWD_CONFIGS``)
    or ``"torch"`` (the chunked PyTorch reference, ``attention_backward_torch``).
    """
    _check_backward(backward)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        o, lse = FlashAttentionFunction.apply(q, k, v, causal, sm_scale, config, backward, bwd_config)
    else:
        o, lse = flash_attention_forward(q, k, v, causal, sm_scale, config)
    return (o, lse) if return_lse else o
