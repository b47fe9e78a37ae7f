"""Row softmax in Triton, forward and backward: a worked example for notebook 08.

The softmax of a row ``x`` is ``y_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x))`` (subtracting
the max changes nothing mathematically and keeps ``exp`` from overflowing). Eager PyTorch reads
the row once for the max, once for the sum and once more to normalise; a fused kernel loads the
row into registers *once*, does all three steps on-chip and writes the result once, so it moves
the minimum: ``n`` elements read + ``n`` written.

Backward: with ``y = softmax(x)`` and upstream gradient ``dy``::

    dx_j = y_j * (dy_j - sum_k dy_k y_k)

so the backward needs ``y`` (saved by the forward) and one row reduction.

The file follows the Triton tutorials' order:

1. ``softmax_reference``: plain PyTorch, fp32, cast back;
2. the ``@triton.jit`` kernels, every argument commented;
3. the launchers (block sizes and warps);
4. ``SoftmaxFunction`` (``torch.autograd.Function``);
5. ``softmax(x)``, the functional entry point.

Each program normalises ``BLOCK_M`` whole rows held in registers (``BLOCK_M`` = 1 for wide rows on
a GPU; large in the CPU interpreter so the tests stay fast), so rows of up to ``MAX_COLS`` elements
are supported. Wider rows need the *online* softmax of ``cross_entropy.py`` / ``flash_attention.py``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ._utils import as_2d_rows, is_interpreter, next_power_of_2, warps_for_row

__all__ = ["softmax_reference", "softmax", "SoftmaxFunction", "MAX_COLS"]

MAX_COLS = 65536


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def softmax_reference(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in fp32, cast back to ``x.dtype``."""
    xf = x.float()
    xf = xf - xf.amax(dim=-1, keepdim=True)
    e = torch.exp(xf)
    return (e / e.sum(dim=-1, keepdim=True)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _softmax_fwd_kernel(
    x_ptr,  # *T  input, (n_rows, n_cols), unit column stride
    y_ptr,  # *T  output, (n_rows, n_cols), unit column stride
    stride_x_row,  # elements between consecutive rows of x
    stride_y_row,  # elements between consecutive rows of y
    n_rows,  # number of rows
    n_cols,  # row length
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # power of two >= n_cols: a whole row per register tile
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)  # avoid int32 overflow of row * stride

    x = tl.load(x_ptr + rows64[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0)
    # Padding columns become -inf: they vanish from the max and add exp(-inf) = 0 to the sum.
    # (Rows past the end stay at 0, so they never compute (-inf) - (-inf) = nan.)
    x = tl.where(cols[None, :] < n_cols, x.to(tl.float32), float("-inf"))
    x = x - tl.max(x, axis=1)[:, None]
    e = tl.exp(x)
    y = e / tl.sum(e, axis=1)[:, None]
    tl.store(y_ptr + rows64[:, None] * stride_y_row + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    dy_ptr,  # *T  upstream gradient, (n_rows, n_cols), unit column stride
    y_ptr,  # *T  forward output, (n_rows, n_cols), unit column stride
    dx_ptr,  # *T  out: gradient w.r.t. x, (n_rows, n_cols), unit column stride
    stride_dy_row,  # row stride of dy
    stride_y_row,  # row stride of y
    stride_dx_row,  # row stride of dx
    n_rows,  # number of rows
    n_cols,  # row length
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # power of two >= n_cols
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)

    dy = tl.load(dy_ptr + rows64[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + rows64[:, None] * stride_y_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)  # sum_k dy_k y_k, one per row
    dx = y * (dy - dot[:, None])
    tl.store(dx_ptr + rows64[:, None] * stride_dx_row + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
def _config(n_cols: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): whole rows per program, a few KB of work per program."""
    block_n = max(16, next_power_of_2(n_cols))  # (>= 16: no degenerate 1-element tiles)
    if is_interpreter():
        return max(1, min(64, 32768 // block_n)), block_n, 4
    block_m = max(1, min(16, 2048 // block_n))
    return block_m, block_n, warps_for_row(block_m * block_n, elem_bytes)


def _launch_fwd(x2: torch.Tensor) -> torch.Tensor:
    n_rows, n_cols = x2.shape
    y2 = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
    if y2.numel() == 0:
        return y2
    block_m, block_n, num_warps = _config(n_cols, x2.element_size())
    _softmax_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
        x2, y2, x2.stride(0), y2.stride(0), n_rows, n_cols,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return y2


def _launch_bwd(dy2: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    n_rows, n_cols = y2.shape
    dx2 = torch.empty((n_rows, n_cols), dtype=y2.dtype, device=y2.device)
    if dx2.numel() == 0:
        return dx2
    block_m, block_n, num_warps = _config(n_cols, y2.element_size())
    _softmax_bwd_kernel[(triton.cdiv(n_rows, block_m),)](
        dy2, y2, dx2, dy2.stride(0), y2.stride(0), dx2.stride(0), n_rows, n_cols,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return dx2


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class SoftmaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        if x.shape[-1] > MAX_COLS:
            raise ValueError(f"softmax supports rows of at most {MAX_COLS} elements, got {x.shape[-1]}")
        y2 = _launch_fwd(as_2d_rows(x))
        ctx.save_for_backward(y2)
        ctx.shape = x.shape
        return y2.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        (y2,) = ctx.saved_tensors
        dx2 = _launch_bwd(as_2d_rows(dy), y2)
        return dx2.view(ctx.shape)


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``x`` (any leading shape), fused, with autograd."""
    return SoftmaxFunction.apply(x)
