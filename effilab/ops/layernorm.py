"""LayerNorm in Triton, forward and backward: a worked example for notebook 08.

LayerNorm (Ba, Kiros & Hinton, 2016) normalises each row to zero mean and unit variance, then
applies a per-column scale ``w`` and shift ``b``::

    mu = mean_j x_j      rstd = 1 / sqrt(mean_j (x_j - mu)^2 + eps)
    xhat_j = (x_j - mu) * rstd      y_j = xhat_j * w_j + b_j

Forward: one program owns ``BLOCK_M`` whole rows in registers (one row on a GPU for wide rows),
so ``x`` is read once and ``y`` written once; ``mu`` and ``rstd`` (one float each per row) are
saved for the backward pass.

Backward, with ``g = dy * w``::

    dx_j = rstd * (g_j - mean_k(g_k) - xhat_j * mean_k(g_k * xhat_k))
    dw_j = sum_rows dy_j * xhat_j          db_j = sum_rows dy_j

``dw`` and ``db`` are sums over *rows*. The backward kernel is persistent: a grid of a few
programs per SM, each walking a strided set of row tiles and accumulating its partial ``dw``/``db``
in registers, then writing them once. ``torch.sum`` over the ``(programs, n_cols)`` partials
finishes the job: no atomics, deterministic results.

Layout (Triton-tutorial order): reference -> kernels -> launchers -> autograd.Function ->
``layer_norm(x, weight, bias, eps)``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton)
import triton
import triton.language as tl

from ._utils import as_2d_rows, is_interpreter, next_power_of_2, num_sms, warps_for_row

__all__ = ["layer_norm_reference", "layer_norm", "LayerNormFunction", "MAX_COLS"]

MAX_COLS = 65536


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension in fp32, cast back to ``x.dtype``."""
    xf = x.float()
    mu = xf.mean(dim=-1, keepdim=True)
    var = (xf - mu).pow(2).mean(dim=-1, keepdim=True)
    y = (xf - mu) * torch.rsqrt(var + eps) * weight.float() + bias.float()
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # *T    input, (n_rows, n_cols), unit column stride
    w_ptr,  # *W    scale, (n_cols,)
    b_ptr,  # *W    shift, (n_cols,)
    y_ptr,  # *T    out, (n_rows, n_cols), unit column stride
    mean_ptr,  # *f32  out: per-row mean, (n_rows,)
    rstd_ptr,  # *f32  out: per-row 1/std, (n_rows,)
    stride_x_row,  # elements between rows of x
    stride_y_row,  # elements between rows of y
    n_rows,  # number of rows
    n_cols,  # row length
    eps,  # variance epsilon
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # power of two >= n_cols
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)

    x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(mask, x - mean[:, None], 0.0)  # padding lanes must not count in the variance
    var = tl.sum(xc * xc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows64[:, None] * stride_y_row + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _layer_norm_bwd_kernel(
    dy_ptr,  # *T    upstream gradient, (n_rows, n_cols), unit column stride
    x_ptr,  # *T    forward input, (n_rows, n_cols), unit column stride
    w_ptr,  # *W    scale, (n_cols,)
    mean_ptr,  # *f32  per-row mean from the forward
    rstd_ptr,  # *f32  per-row 1/std from the forward
    dx_ptr,  # *T    out: gradient w.r.t. x, (n_rows, n_cols), unit column stride
    dw_partial_ptr,  # *f32  out: per-program partial dw, (num_programs, n_cols)
    db_partial_ptr,  # *f32  out: per-program partial db, (num_programs, n_cols)
    stride_dy_row,  # row stride of dy
    stride_x_row,  # row stride of x
    stride_dx_row,  # row stride of dx
    n_rows,  # number of rows
    n_cols,  # row length
    BLOCK_M: tl.constexpr,  # rows per loop iteration
    BLOCK_N: tl.constexpr,  # power of two >= n_cols
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)

        x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)

        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g, axis=1) / n_cols
        c2 = tl.sum(g * xhat, axis=1) / n_cols
        dx = (g - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows64[:, None] * stride_dx_row + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)

        dw_acc += dy * xhat
        db_acc += dy

    tl.store(dw_partial_ptr + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
    tl.store(db_partial_ptr + pid * n_cols + cols, tl.sum(db_acc, axis=0), mask=col_ok)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
def _config(n_cols: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps)."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    if is_interpreter():
        return max(1, min(64, 32768 // block_n)), block_n, 4
    block_m = max(1, min(16, 2048 // block_n))
    return block_m, block_n, warps_for_row(block_m * block_n, elem_bytes)


def layer_norm_forward(x, weight, bias, eps):
    if weight.shape != (x.shape[-1],) or bias.shape != (x.shape[-1],):
        raise ValueError(f"weight and bias must have shape ({x.shape[-1]},)")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"layer_norm supports rows of at most {MAX_COLS} elements, got {x.shape[-1]}")
    x2 = as_2d_rows(x)
    n_rows, n_cols = x2.shape
    y2 = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows:
        block_m, block_n, num_warps = _config(n_cols, x.element_size())
        _layer_norm_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
            x2, weight.contiguous(), bias.contiguous(), y2, mean, rstd,
            x2.stride(0), y2.stride(0), n_rows, n_cols, eps,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
        )
    return y2, x2, mean, rstd


def layer_norm_backward(dy, x2, weight, mean, rstd):
    dy2 = as_2d_rows(dy)
    n_rows, n_cols = x2.shape
    dx2 = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    if n_rows == 0:
        return dx2, torch.zeros_like(weight), torch.zeros_like(weight)
    block_m, block_n, num_warps = _config(n_cols, x2.element_size())
    n_programs = 4 if is_interpreter() else 2 * num_sms(x2.device)
    n_programs = max(1, min(n_programs, triton.cdiv(n_rows, block_m)))
    dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2.device)
    db_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2.device)
    _layer_norm_bwd_kernel[(n_programs,)](
        dy2, x2, weight.contiguous(), mean, rstd, dx2, dw_partial, db_partial,
        dy2.stride(0), x2.stride(0), dx2.stride(0), n_rows, n_cols,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return dx2, dw_partial.sum(0).to(weight.dtype), db_partial.sum(0).to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y2, x2, mean, rstd = layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.shape = x.shape
        return y2.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx2, dw, db = layer_norm_backward(dy, x2, weight, mean, rstd)
        return dx2.view(ctx.shape), dw, db, None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Fused LayerNorm over the last dimension (like ``F.layer_norm(x, (n,), weight, bias, eps)``)."""
    return LayerNormFunction.apply(x, weight, bias, eps)
