# effilab: instructor-only
"""RMSNorm in Triton: fused forward and backward (reference solution of notebook 08).

RMSNorm (Zhang & Sennrich, 2019, "Root Mean Square Layer Normalization") rescales each row by the
inverse of its root mean square and multiplies by a learned per-column weight::

    rstd_i = 1 / sqrt(mean_j x_ij^2 + eps)          y_ij = x_ij * rstd_i * w_j

It is memory-bound: the ideal kernel reads ``x`` once and writes ``y`` once. PyTorch's eager
version runs several kernels (square, mean, rsqrt, two multiplies) and round-trips through
memory between them; the fused kernel keeps a whole row in registers.

Backward, with ``xhat = x * rstd`` and ``g = dy * w``::

    dx_i = rstd_i * (g_i - xhat_i * mean_j(g_ij * xhat_ij))
    dw_j = sum_i dy_ij * xhat_ij

``dw`` is a reduction over *rows*, the other direction from the per-row work. Each program of the
backward kernel owns a set of rows, keeps its partial ``dw`` in registers, and writes it once; a tiny
``sum(0)`` over the ``(programs, n_cols)`` partials finishes the reduction (the scheme of the Triton
layer-norm tutorial and of Liger-Kernel). Three backward variants (``BwdConfig.variant``):

* ``"persistent"``: one or a few programs per SM walk a *strided* set of row tiles, optionally
  prefetching the next tile (``num_stages`` > 1, software pipelining through shared memory).
* ``"blocked"``: every program walks a *contiguous* block of rows, and there are several programs
  per SM: more rows in flight per SM (the hardware interleaves the resident programs, so one
  program's reduction barrier does not stall the loads of the others) with the same register tile.
* ``"chunked"``: for rows too wide for one register tile (> ``FULL_ROW_MAX`` columns): two passes
  over the row in ``chunk_n``-wide chunks, the first for ``mean(g * xhat)``, the second (reading a
  row that is still in L2) for ``dx``; the program's partial ``dw`` row lives in global memory.

Which full-row launch is fastest depends on the GPU (the H100 sweep favoured one persistent program
per SM with a 2-stage prefetch; the H200 measured that at 0.9 TB/s in the backward), so without a
``bwd_config`` the first backward of a shape on a GPU times the static default against a few
blocked launches (``bwd_candidates``) and keeps the winner (``TUNED``), as ``triton.autotune`` does.

Shared memory is budgeted before the launch (``smem_bytes``): a prefetching configuration that would
not fit the device (wide rows, small GPUs) drops to fewer stages, and an ``OutOfResources`` at launch
falls back to one stage and then to the chunked variant, so every width runs on every GPU.

Layout (Triton-tutorial order): reference -> kernels -> launchers -> autograd.Function -> ``rms_norm``.
"""
from __future__ import annotations

import os

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from typing import NamedTuple

from ._utils import as_2d_rows, is_interpreter, max_shared_mem, next_power_of_2, num_sms, warps_for_row

__all__ = ["rms_norm_reference", "rms_norm", "RMSNormFunction", "MAX_COLS", "BwdConfig", "BWD_CONFIGS", "FWD_CONFIGS"]
__ops__ = ("rms_norm", "rms_norm_reference")  # added to effilab.ops (see effilab/ops/__init__.py)

MAX_COLS = 65536  # widest row the forward keeps in one register tile; wider rows are walked in chunks


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Plain PyTorch RMSNorm over the last dimension, computed in fp32 and cast back to ``x.dtype``."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * weight.float()).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr,  # *T    input, (n_rows, n_cols), unit column stride
    w_ptr,  # *W    weight, (n_cols,)
    y_ptr,  # *T    output, (n_rows, n_cols), unit column stride
    rstd_ptr,  # *f32  out: 1/rms of each row, (n_rows,), kept for the backward pass
    stride_x_row,  # elements between consecutive rows of x
    stride_y_row,  # elements between consecutive rows of y
    n_rows,  # number of rows
    n_cols,  # row length (normalised dimension)
    eps,  # added to the mean square before the rsqrt
    BLOCK_M: tl.constexpr,  # rows per program (1 on the GPU for wide rows; large in the interpreter)
    BLOCK_N: tl.constexpr,  # power of two >= n_cols: the whole row is one register tile
    STORE_RSTD: tl.constexpr,  # write rstd (only needed when a backward pass will follow)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)  # row * stride can overflow int32 on large tensors

    x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)

    mean_sq = tl.sum(x * x, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(mean_sq + eps)  # (BLOCK_M,)
    y = x * rstd[:, None] * w[None, :]

    tl.store(y_ptr + rows64[:, None] * stride_y_row + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_RSTD:
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_fwd_chunked_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr,  # as in _rms_norm_fwd_kernel
    stride_x_row, stride_y_row, n_rows, n_cols, eps,
    CHUNK_N: tl.constexpr,  # columns per chunk: rows wider than MAX_COLS, one row per program
    STORE_RSTD: tl.constexpr,
):
    row = tl.program_id(0)
    r64 = tl.cast(row, tl.int64)
    offs = tl.arange(0, CHUNK_N)
    acc = tl.zeros((CHUNK_N,), dtype=tl.float32)
    for c0 in range(0, n_cols, CHUNK_N):
        cols = c0 + offs
        x = tl.load(x_ptr + r64 * stride_x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / n_cols + eps)
    for c0 in range(0, n_cols, CHUNK_N):  # the row was just read: L2 hits
        cols = c0 + offs
        ok = cols < n_cols
        x = tl.load(x_ptr + r64 * stride_x_row + cols, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + r64 * stride_y_row + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=ok)
    if STORE_RSTD:
        tl.store(rstd_ptr + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr,  # *T    upstream gradient, (n_rows, n_cols), unit column stride
    x_ptr,  # *T    forward input, (n_rows, n_cols), unit column stride
    w_ptr,  # *W    weight, (n_cols,)
    rstd_ptr,  # *f32  1/rms of each row saved by the forward kernel, (n_rows,)
    dx_ptr,  # *T    out: gradient w.r.t. x, (n_rows, n_cols), unit column stride
    dw_partial_ptr,  # *f32  out: this program's partial dw, (num_programs, n_cols) contiguous
    stride_dy_row,  # row stride of dy
    stride_x_row,  # row stride of x
    stride_dx_row,  # row stride of dx
    n_rows,  # number of rows
    n_cols,  # row length
    tiles_per_program,  # CONTIGUOUS: row tiles of each program (a contiguous block); else unused
    BLOCK_M: tl.constexpr,  # rows handled per loop iteration
    BLOCK_N: tl.constexpr,  # power of two >= n_cols
    NUM_STAGES: tl.constexpr,  # > 1: let the compiler prefetch the next tiles (software pipelining)
    CONTIGUOUS: tl.constexpr,  # "blocked" variant: contiguous row blocks; else strided ("persistent")
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    if CONTIGUOUS:  # program p handles row tiles [p T, (p + 1) T)
        first = pid * tiles_per_program
        last = tl.minimum(first + tiles_per_program, n_tiles)
        step = 1
    else:  # persistent: program p handles row tiles p, p + P, p + 2P, ...
        first = pid
        last = n_tiles
        step = n_programs
    for tile in tl.range(first, last, step, num_stages=NUM_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)

        x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)

        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * xhat, axis=1) / n_cols  # mean_j(g * xhat) per row
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows64[:, None] * stride_dx_row + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)

        dw_acc += dy * xhat  # masked rows/cols contribute zeros

    dw = tl.sum(dw_acc, axis=0)
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=col_ok)


@triton.jit
def _chunk_fp32(x_row, dy_row, w_ptr, cols, n_cols):
    """One chunk of a row's x, dy and the weight, in fp32 (0 past the row's end), and the mask."""
    ok = cols < n_cols
    x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(dy_row + cols, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    return x, dy, w, ok


@triton.jit
def _rms_norm_bwd_chunked_kernel(
    dy_ptr,  # *T    upstream gradient, (n_rows, n_cols), unit column stride
    x_ptr,  # *T    forward input, (n_rows, n_cols), unit column stride
    w_ptr,  # *W    weight, (n_cols,)
    rstd_ptr,  # *f32  1/rms of each row, (n_rows,)
    dx_ptr,  # *T    out: gradient w.r.t. x, (n_rows, n_cols), unit column stride
    dw_partial_ptr,  # *f32  in/out: this program's partial dw, (num_programs, n_cols), zero-initialised
    stride_dy_row,  # row stride of dy
    stride_x_row,  # row stride of x
    stride_dx_row,  # row stride of dx
    n_rows,  # number of rows
    n_cols,  # row length (any: the row is walked in chunks)
    rows_per_program,  # each program handles a contiguous block of this many rows
    CHUNK_N: tl.constexpr,  # columns per chunk (power of two)
):
    pid = tl.program_id(0)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    offs = tl.arange(0, CHUNK_N)
    dw_row = dw_partial_ptr + tl.cast(pid, tl.int64) * n_cols
    for row in range(first, last):
        r64 = tl.cast(row, tl.int64)  # (row * stride can overflow int32)
        rstd = tl.load(rstd_ptr + row)
        # pass 1: mean_j(g_j * xhat_j) = rstd * mean_j(dy_j w_j x_j)
        acc = tl.zeros((CHUNK_N,), dtype=tl.float32)
        for c0 in range(0, n_cols, CHUNK_N):
            cols = c0 + offs
            x, dy, w, ok = _chunk_fp32(x_ptr + r64 * stride_x_row, dy_ptr + r64 * stride_dy_row, w_ptr, cols, n_cols)
            acc += dy * w * x
        c = tl.sum(acc, axis=0) * rstd / n_cols
        # pass 2: the row was just read, so these loads mostly hit L2
        for c0 in range(0, n_cols, CHUNK_N):
            cols = c0 + offs
            x, dy, w, ok = _chunk_fp32(x_ptr + r64 * stride_x_row, dy_ptr + r64 * stride_dy_row, w_ptr, cols, n_cols)
            xhat = x * rstd
            dx = (dy * w - xhat * c) * rstd
            tl.store(dx_ptr + r64 * stride_dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=ok)
            dw = tl.load(dw_row + cols, mask=ok, other=0.0)
            tl.store(dw_row + cols, dw + dy * xhat, mask=ok)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
# Forward launch configurations that the benchmark sweeps: (BLOCK_M, num_warps); BLOCK_M = 0 means
# the chunked forward (4096-column chunks), the default only for rows wider than MAX_COLS.
FWD_CONFIGS = [(1, 4), (1, 8), (1, 16), (2, 8), (2, 16), (4, 16), (0, 8)]


def _fwd_config(n_cols: int, elem_bytes: int, config=None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for the forward kernel; BLOCK_M 0: chunked, BLOCK_N the chunk."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    if config is not None:
        block_m, num_warps = config
        if block_m == 0 or block_n > MAX_COLS:
            return 0, min(block_n, 4096), num_warps
        return block_m, block_n, num_warps
    if block_n > MAX_COLS:
        return 0, 4096, warps_for_row(4096, elem_bytes)
    if is_interpreter():  # CPU: few, fat programs
        return max(1, min(64, 32768 // block_n)), block_n, 4
    # GPU: one row per program for rows of >= 2048 elements; pack narrow rows so a program still
    # moves a few KB.
    block_m = max(1, min(16, 2048 // block_n))
    return block_m, block_n, warps_for_row(block_m * block_n, elem_bytes)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if x.device != weight.device:
        raise ValueError("x and weight must be on the same device")


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, store_rstd: bool = True,
                     config=None):
    """Launch the forward kernel. Returns ``(y, x2d, rstd)`` with ``x2d`` the (rows, cols) view of x."""
    _check(x, weight)
    x2 = as_2d_rows(x)
    weight = weight.contiguous()
    n_rows, n_cols = x2.shape
    y2 = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    rstd = torch.empty(n_rows if store_rstd else 1, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y2.view(x.shape), x2, rstd
    block_m, block_n, num_warps = _fwd_config(n_cols, x.element_size(), config)
    if block_m == 0:
        _rms_norm_fwd_chunked_kernel[(n_rows,)](
            x2, weight, y2, rstd, x2.stride(0), y2.stride(0), n_rows, n_cols, eps,
            CHUNK_N=block_n, STORE_RSTD=store_rstd, num_warps=num_warps,
        )
        return y2.view(x.shape), x2, rstd
    grid = (triton.cdiv(n_rows, block_m),)
    _rms_norm_fwd_kernel[grid](
        x2, weight, y2, rstd,
        x2.stride(0), y2.stride(0),
        n_rows, n_cols, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, STORE_RSTD=store_rstd,
        num_warps=num_warps,
    )
    return y2.view(x.shape), x2, rstd


class BwdConfig(NamedTuple):
    """Launch of the backward pass (``rms_norm(..., bwd_config=...)``; swept by the benchmark).

    variant: ``"persistent"`` (strided row tiles), ``"blocked"`` (contiguous row blocks) or
        ``"chunked"`` (rows walked in ``chunk_n``-wide chunks; any width).
    block_m: rows per loop iteration (full-row variants; 1 for chunked).
    per_sm: programs per SM (the grid is ``per_sm * SMs``, capped by the number of row tiles).
    num_warps, num_stages: as in Triton (``num_stages`` > 1: prefetch the next row tile).
    chunk_n: columns per chunk (chunked only).

    A plain 4-tuple ``(BLOCK_M, programs per SM, num_warps, num_stages)`` means ``"persistent"``
    (the only backward of earlier versions).
    """

    variant: str
    block_m: int
    per_sm: int
    num_warps: int
    num_stages: int
    chunk_n: int = 0

    def label(self) -> str:
        if self.variant == "chunked":
            return f"chunked {self.per_sm}/SM chunk {self.chunk_n} w{self.num_warps}"
        return f"{self.variant} M{self.block_m} {self.per_sm}/SM w{self.num_warps} s{self.num_stages}"


# Widest row (power-of-two tile) the full-row backward keeps in registers by default: x, dy and the
# dw accumulator are three fp32 tiles, 3 * 16384 * 4 B = 192 KiB of the 256 KiB register file.
FULL_ROW_MAX = 16384

# Backward launch configurations that the benchmark sweeps. The first nine are the persistent
# configurations of the H100 sweep, kept as they were (BLOCK_M, programs per SM, num_warps, num_stages).
BWD_CONFIGS = [
    (1, 2, 8, 1), (1, 1, 8, 1), (2, 1, 8, 1), (1, 3, 8, 1), (1, 2, 16, 1),
    (1, 1, 8, 2), (1, 2, 8, 2), (1, 1, 8, 3), (1, 1, 16, 2),
    BwdConfig("blocked", 1, 4, 4, 2), BwdConfig("blocked", 1, 4, 4, 3), BwdConfig("blocked", 1, 2, 8, 2),
    BwdConfig("blocked", 1, 4, 8, 2), BwdConfig("blocked", 1, 8, 4, 2), BwdConfig("blocked", 2, 2, 8, 2),
    BwdConfig("blocked", 1, 4, 4, 1), BwdConfig("blocked", 1, 6, 4, 2),
    BwdConfig("chunked", 1, 4, 4, 1, 1024), BwdConfig("chunked", 1, 2, 8, 1, 4096),
]


def as_bwd_config(config) -> BwdConfig | None:
    """``config`` as a ``BwdConfig`` (plain 4-tuples are persistent configurations)."""
    if config is None or isinstance(config, BwdConfig):
        return config
    config = tuple(config)
    if len(config) == 4 and not isinstance(config[0], str):
        return BwdConfig("persistent", *config)
    return BwdConfig(*config)


def smem_bytes(block_m: int, block_n: int, x_bytes: int, dy_bytes: int, num_warps: int, num_stages: int) -> int:
    """Shared memory a full-row backward program asks for (an upper bound, bytes).

    With ``num_stages`` > 1 the software pipeliner stages the x and dy row tiles through shared
    memory, a buffer per stage (Triton 3.6 at 65536 columns bf16 and 2 stages asked for 262276 B:
    within this bound); the cross-warp reductions need a few bytes per warp and row.
    """
    scratch = 4 * block_m * max(num_warps, 1) + 256
    if num_stages <= 1:
        return scratch
    return num_stages * block_m * block_n * (x_bytes + dy_bytes) + scratch


def _fit(cfg: BwdConfig, block_n: int, x_bytes: int, dy_bytes: int, smem: int) -> BwdConfig:
    """``cfg`` with as many of its stages as fit in ``smem`` bytes (at least one)."""
    if cfg.variant == "chunked":
        return cfg
    stages = cfg.num_stages
    while stages > 1 and smem_bytes(cfg.block_m, block_n, x_bytes, dy_bytes, cfg.num_warps, stages) > smem:
        stages -= 1
    return cfg._replace(num_stages=stages)


def _default_chunked(block_n: int, elem_bytes: int) -> BwdConfig:
    chunk = min(block_n, 4096)
    return BwdConfig("chunked", 1, 2, warps_for_row(chunk, elem_bytes), 1, chunk)


def _bwd_config(n_cols: int, elem_bytes: int, device: torch.device, config=None, dy_bytes: int | None = None,
                smem: int | None = None):
    """``(BwdConfig, BLOCK_N)`` of the backward kernel; ``smem``: the limit to fit (default: the device's)."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    dy_bytes = elem_bytes if dy_bytes is None else dy_bytes
    cfg = as_bwd_config(config)
    if cfg is None and is_interpreter():  # CPU: few, fat programs
        cfg = BwdConfig("persistent", max(1, min(64, 32768 // block_n)), 1, 4, 1)
    if cfg is None:
        if block_n > FULL_ROW_MAX:
            cfg = _default_chunked(block_n, elem_bytes)
        else:
            block_m = max(1, min(16, 2048 // block_n))
            num_warps = warps_for_row(block_m * block_n, elem_bytes)
            if block_m == 1:
                # wide rows: one persistent program per SM that prefetches its next row (2 stages) was
                # the fastest of the H100 sweep at 16384x4096 bf16 (0.410 ms fwd+bwd, against 0.611 ms
                # for 2 programs per SM without prefetch); the blocked variants are swept next to it.
                cfg = BwdConfig("persistent", 1, 1, num_warps, 2)
            else:
                cfg = BwdConfig("persistent", block_m, 2, num_warps, 1)
    if cfg.variant == "chunked":
        cfg = cfg._replace(chunk_n=min(max(16, next_power_of_2(cfg.chunk_n or 4096)), block_n))
    smem = max_shared_mem(device) if smem is None else smem
    return _fit(cfg, block_n, elem_bytes, dy_bytes, smem), block_n


def _launch_full_row(cfg: BwdConfig, block_n, dy2, x2, weight, rstd, dx2, n_sms):
    n_rows, n_cols = x2.shape
    n_tiles = triton.cdiv(n_rows, cfg.block_m)
    n_programs = max(1, min(cfg.per_sm * n_sms, n_tiles))
    tiles_per_program = triton.cdiv(n_tiles, n_programs)
    if cfg.variant == "blocked":
        n_programs = triton.cdiv(n_tiles, tiles_per_program)
    dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2.device)
    _rms_norm_bwd_kernel[(n_programs,)](
        dy2, x2, weight, rstd, dx2, dw_partial,
        dy2.stride(0), x2.stride(0), dx2.stride(0),
        n_rows, n_cols, tiles_per_program,
        BLOCK_M=cfg.block_m, BLOCK_N=block_n, NUM_STAGES=cfg.num_stages,
        CONTIGUOUS=cfg.variant == "blocked",
        num_warps=cfg.num_warps,
    )
    return dw_partial


def _launch_chunked(cfg: BwdConfig, dy2, x2, weight, rstd, dx2, n_sms):
    n_rows, n_cols = x2.shape
    # at most ~64 MiB of fp32 partials, however wide the rows
    cap = max(1, (64 << 20) // (4 * n_cols))
    n_programs = max(1, min(cfg.per_sm * n_sms, n_rows, cap))
    rows_per_program = triton.cdiv(n_rows, n_programs)
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dw_partial = torch.zeros((n_programs, n_cols), dtype=torch.float32, device=x2.device)
    _rms_norm_bwd_chunked_kernel[(n_programs,)](
        dy2, x2, weight, rstd, dx2, dw_partial,
        dy2.stride(0), x2.stride(0), dx2.stride(0),
        n_rows, n_cols, rows_per_program,
        CHUNK_N=cfg.chunk_n,
        num_warps=cfg.num_warps,
    )
    return dw_partial


def _out_of_resources():
    try:
        from triton.runtime.errors import OutOfResources

        return OutOfResources
    except ImportError:  # pragma: no cover
        return RuntimeError


def bwd_candidates(cfg: BwdConfig) -> list[BwdConfig]:
    """What the first GPU backward of a shape times against the static default ``cfg`` (full rows):
    the default itself, then blocked launches with 2 to 8 programs per SM (more rows in flight)."""
    m, w = cfg.block_m, cfg.num_warps
    return [cfg] + [BwdConfig("blocked", m, per_sm, warps, 2) for per_sm, warps in
                    ((4, w), (2, w), (4, max(4, w // 2)), (8, max(4, w // 2)))]


def pick_fastest(candidates, time_ms):
    """The candidate with the smallest ``time_ms(candidate)``; those that raise are skipped."""
    best, best_ms = None, float("inf")
    for cfg in candidates:
        try:
            ms = time_ms(cfg)
        except _out_of_resources():
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    return best


# (BLOCK_N, dtypes, device, rows rounded to a power of two) -> the backward the first call picked
TUNED: dict = {}


def _tune_enabled(device: torch.device) -> bool:
    return (device.type == "cuda" and not is_interpreter() and os.environ.get("EFFILAB_RMSNORM_TUNE", "1") != "0"
            and not torch.cuda.is_current_stream_capturing())


def _tuned(cfg: BwdConfig, block_n, dy2, x2, weight, rstd, dx2, n_sms) -> BwdConfig:
    """The fastest of ``bwd_candidates(cfg)`` on these tensors, timed once per shape class (CUDA
    events, 3 launches after a warm-up one that also compiles) and remembered in ``TUNED``.

    The kernels of the benchmark sweep choose this way at the first backward instead of a fixed
    table, since the best launch differs between GPUs (H100: persistent, 1 program/SM, 2 stages).
    """
    key = (block_n, x2.dtype, dy2.dtype, weight.dtype, str(x2.device), next_power_of_2(x2.shape[0]))
    if key in TUNED:
        return TUNED[key]
    smem = max_shared_mem(x2.device)

    def time_ms(c):
        c = _fit(c, block_n, x2.element_size(), dy2.element_size(), smem)
        _launch_full_row(c, block_n, dy2, x2, weight, rstd, dx2, n_sms)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            _launch_full_row(c, block_n, dy2, x2, weight, rstd, dx2, n_sms)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    best = pick_fastest(bwd_candidates(cfg), time_ms) or cfg
    TUNED[key] = _fit(best, block_n, x2.element_size(), dy2.element_size(), smem)
    return TUNED[key]


def rms_norm_backward(dy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, config=None):
    """Launch the backward kernel. Returns ``(dx2d, dweight)``.

    ``config`` None on a GPU: full-row widths time a few launches at the first call of a shape
    (``bwd_candidates``, kept in ``TUNED``; ``EFFILAB_RMSNORM_TUNE=0`` keeps the static default).
    """
    dy2 = as_2d_rows(dy)
    n_rows, n_cols = x2.shape
    dx2 = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    if n_rows == 0:
        return dx2, torch.zeros_like(weight)
    cfg, block_n = _bwd_config(n_cols, x2.element_size(), x2.device, config, dy_bytes=dy2.element_size())
    n_sms = num_sms(x2.device)
    if cfg.variant == "chunked":
        dw_partial = _launch_chunked(cfg, dy2, x2, weight, rstd, dx2, n_sms)
    else:
        try:
            if config is None and _tune_enabled(x2.device):
                cfg = _tuned(cfg, block_n, dy2, x2, weight, rstd, dx2, n_sms)
            dw_partial = _launch_full_row(cfg, block_n, dy2, x2, weight, rstd, dx2, n_sms)
        except _out_of_resources():
            # the estimate was short of what this Triton / GPU needs: one stage, then chunks
            try:
                dw_partial = _launch_full_row(cfg._replace(num_stages=1), block_n, dy2, x2, weight, rstd, dx2, n_sms)
            except _out_of_resources():
                dw_partial = _launch_chunked(_default_chunked(block_n, x2.element_size()), dy2, x2, weight, rstd,
                                             dx2, n_sms)
    return dx2, dw_partial.sum(0).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, bwd_config=None, fwd_config=None):
        y, x2, rstd = rms_norm_forward(x, weight, eps, store_rstd=True, config=fwd_config)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        ctx.bwd_config = bwd_config
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx2, dw = rms_norm_backward(dy, x2, weight, rstd, ctx.bwd_config)
        return dx2.view(ctx.x_shape), dw, None, None, None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, bwd_config=None,
             fwd_config=None) -> torch.Tensor:
    """Fused RMSNorm over the last dimension of ``x`` (any leading shape), with autograd.

    ``weight`` has shape ``(x.shape[-1],)``; the output has ``x``'s dtype. Statistics are computed
    in fp32. ``bwd_config`` (a ``BwdConfig``, or a plain ``(BLOCK_M, programs_per_SM, num_warps,
    num_stages)`` persistent configuration) overrides the backward launch (used by the benchmark
    sweep); ``fwd_config=(BLOCK_M, num_warps)`` the forward one (``FWD_CONFIGS``). Rows of any width
    run: up to ``MAX_COLS`` columns in one register tile, wider ones in chunks.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return RMSNormFunction.apply(x, weight, eps, bwd_config, fwd_config)
    return rms_norm_forward(x, weight, eps, store_rstd=False, config=fwd_config)[0]
