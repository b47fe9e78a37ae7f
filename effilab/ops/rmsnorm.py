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
backward kernel is persistent (one per SM), walks a strided set of row tiles, keeps its partial
``dw`` in registers, and writes it once; a tiny ``sum(0)`` over the ``(programs, n_cols)`` partials
finishes the reduction (the same scheme as the Triton layer-norm tutorial and Liger-Kernel).

Layout (Triton-tutorial order): reference -> kernels -> launchers -> autograd.Function -> ``rms_norm``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ._utils import as_2d_rows, is_interpreter, next_power_of_2, num_sms, warps_for_row

__all__ = ["rms_norm_reference", "rms_norm", "RMSNormFunction", "MAX_COLS"]
__ops__ = ("rms_norm", "rms_norm_reference")  # added to effilab.ops (see effilab/ops/__init__.py)

MAX_COLS = 65536  # one row tile must fit in registers


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
    BLOCK_M: tl.constexpr,  # rows handled per loop iteration
    BLOCK_N: tl.constexpr,  # power of two >= n_cols
    NUM_STAGES: tl.constexpr,  # > 1: let the compiler prefetch the next tiles (software pipelining)
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    # Persistent loop: program p handles row tiles p, p + P, p + 2P, ...
    for tile in tl.range(pid, n_tiles, n_programs, num_stages=NUM_STAGES):
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


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
def _fwd_config(n_cols: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for the forward kernel."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    if is_interpreter():  # CPU: few, fat programs
        return max(1, min(64, 32768 // block_n)), block_n, 4
    # GPU: one row per program for rows of >= 2048 elements; pack narrow rows so a program still
    # moves a few KB.
    block_m = max(1, min(16, 2048 // block_n))
    return block_m, block_n, warps_for_row(block_m * block_n, elem_bytes)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must have shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"rms_norm supports rows of at most {MAX_COLS} elements, got {x.shape[-1]}")
    if x.device != weight.device:
        raise ValueError("x and weight must be on the same device")


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, store_rstd: bool = True):
    """Launch the forward kernel. Returns ``(y, x2d, rstd)`` with ``x2d`` the (rows, cols) view of x."""
    _check(x, weight)
    x2 = as_2d_rows(x)
    weight = weight.contiguous()
    n_rows, n_cols = x2.shape
    y2 = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    rstd = torch.empty(n_rows if store_rstd else 1, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y2.view(x.shape), x2, rstd
    block_m, block_n, num_warps = _fwd_config(n_cols, x.element_size())
    grid = (triton.cdiv(n_rows, block_m),)
    _rms_norm_fwd_kernel[grid](
        x2, weight, y2, rstd,
        x2.stride(0), y2.stride(0),
        n_rows, n_cols, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, STORE_RSTD=store_rstd,
        num_warps=num_warps,
    )
    return y2.view(x.shape), x2, rstd


# Backward launch configurations that the benchmark sweeps:
# (BLOCK_M, programs per SM, num_warps, num_stages). ``None`` picks the default heuristic below.
# num_stages > 1 asks Triton to software-pipeline the loads of the persistent loop (prefetch the
# next row tile into shared memory while the current one is computed).
BWD_CONFIGS = [
    (1, 2, 8, 1), (1, 1, 8, 1), (2, 1, 8, 1), (1, 3, 8, 1), (1, 2, 16, 1),
    (1, 1, 8, 2), (1, 2, 8, 2), (1, 1, 8, 3), (1, 1, 16, 2),
]


def _bwd_config(n_cols: int, elem_bytes: int, device: torch.device, config=None):
    """(BLOCK_M, BLOCK_N, n_programs, num_warps, num_stages) for the backward kernel."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    if is_interpreter():
        return max(1, min(64, 32768 // block_n)), block_n, 4, 4, 1
    if config is None:
        block_m = max(1, min(16, 2048 // block_n))
        num_warps = warps_for_row(block_m * block_n, elem_bytes)
        if block_m == 1:
            # wide rows: one persistent program per SM that prefetches its next row (2 stages) was
            # the fastest of the swept configurations at 16384x4096 bf16 on an H100
            # (benchmarks/results/ops/summary.md: 0.410 ms fwd+bwd, against 0.611 ms for 2
            # programs per SM without prefetch)
            per_sm, num_stages = 1, 2
        else:
            per_sm, num_stages = 2, 1
    else:
        block_m, per_sm, num_warps, num_stages = config
    return block_m, block_n, per_sm * num_sms(device), num_warps, num_stages


def rms_norm_backward(dy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, config=None):
    """Launch the backward kernel. Returns ``(dx2d, dweight)``."""
    dy2 = as_2d_rows(dy)
    n_rows, n_cols = x2.shape
    dx2 = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    block_m, block_n, n_programs, num_warps, num_stages = _bwd_config(n_cols, x2.element_size(), x2.device, config)
    n_programs = max(1, min(n_programs, triton.cdiv(n_rows, block_m)))
    dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2.device)
    if n_rows == 0:
        return dx2, torch.zeros_like(weight)
    _rms_norm_bwd_kernel[(n_programs,)](
        dy2, x2, weight, rstd, dx2, dw_partial,
        dy2.stride(0), x2.stride(0), dx2.stride(0),
        n_rows, n_cols,
        BLOCK_M=block_m, BLOCK_N=block_n, NUM_STAGES=num_stages,
        num_warps=num_warps,
    )
    return dx2, dw_partial.sum(0).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, bwd_config=None):
        y, x2, rstd = rms_norm_forward(x, weight, eps, store_rstd=True)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        ctx.bwd_config = bwd_config
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx2, dw = rms_norm_backward(dy, x2, weight, rstd, ctx.bwd_config)
        return dx2.view(ctx.x_shape), dw, None, None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, bwd_config=None) -> torch.Tensor:
    """Fused RMSNorm over the last dimension of ``x`` (any leading shape), with autograd.

    ``weight`` has shape ``(x.shape[-1],)``; the output has ``x``'s dtype. Statistics are computed
    in fp32. ``bwd_config=(BLOCK_M, programs_per_SM, num_warps, num_stages)`` overrides the backward launch
    (used by the benchmark sweep). Rows of up to ``MAX_COLS`` elements are supported.
    """
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return RMSNormFunction.apply(x, weight, eps, bwd_config)
    return rms_norm_forward(x, weight, eps, store_rstd=False)[0]
