# effilab: instructor-only
"""Fused SwiGLU activation in Triton: ``silu(a) * b``, forward and backward (notebook 08).

SwiGLU (Shazeer, 2020, "GLU Variants Improve Transformer") gates the "up" projection ``b`` of a
transformer MLP with the SiLU (swish) of the "gate" projection ``a``::

    c = silu(a) * b = a * sigmoid(a) * b

Eager PyTorch computes ``silu(a)`` into a temporary, then multiplies (two kernels, an extra write and
read of a full-size tensor) and autograd keeps ``silu(a)`` around for the backward. The fused
kernel reads ``a`` and ``b`` once and writes ``c`` once. The backward *recomputes* the sigmoid
instead of storing it (recomputation is nearly free in a memory-bound kernel)::

    s  = sigmoid(a)
    da = dc * b * s * (1 + a * (1 - s))        (d silu / da = s + a s (1 - s))
    db = dc * a * s

Both kernels work on 2-D (rows, cols) tiles with arbitrary row strides, so ``a`` and ``b`` may be
the two halves of one packed ``(…, 2H)`` projection output (``swiglu_packed``) without a copy, and
the backward then writes ``da`` and ``db`` straight into the two halves of one ``(…, 2H)`` gradient.
When every tensor is dense, the launcher views them as one long row, so that every program gets a
full ``BLOCK_N`` of elements whatever the row length.

Layout: reference -> kernels -> launchers -> autograd.Function -> ``swiglu`` / ``swiglu_packed``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton)
import triton
import triton.language as tl

from ._utils import is_interpreter, next_power_of_2

__all__ = ["swiglu_reference", "swiglu", "swiglu_packed", "SwiGLUFunction", "SwiGLUPackedFunction"]
__ops__ = ("swiglu", "swiglu_packed", "swiglu_reference")  # added to effilab.ops (see effilab/ops/__init__.py)


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def swiglu_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``silu(a) * b`` in fp32, cast back to ``a.dtype``."""
    af = a.float()
    return (af * torch.sigmoid(af) * b.float()).to(a.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _swiglu_fwd_kernel(
    a_ptr,  # *T  gate input, (n_rows, n_cols), unit column stride
    b_ptr,  # *T  up input, (n_rows, n_cols), unit column stride
    c_ptr,  # *T  out: silu(a) * b, (n_rows, n_cols), unit column stride
    stride_a_row,  # elements between rows of a
    stride_b_row,  # elements between rows of b
    stride_c_row,  # elements between rows of c
    n_rows,  # number of rows
    n_cols,  # number of columns
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per program (power of two)
):
    # A 1-D grid (axis 0 allows 2^31 - 1 programs, axis 1 only 65535), split into
    # (row block, column block) with the column blocks of one row block adjacent.
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(n_cols, BLOCK_N)
    rows = (pid // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % n_col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    rows64 = rows.to(tl.int64)

    a = tl.load(a_ptr + rows64[:, None] * stride_a_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows64[:, None] * stride_b_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    c = a * tl.sigmoid(a) * b
    tl.store(c_ptr + rows64[:, None] * stride_c_row + cols[None, :], c.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    dc_ptr,  # *T  upstream gradient, (n_rows, n_cols), unit column stride
    a_ptr,  # *T  forward gate input, (n_rows, n_cols)
    b_ptr,  # *T  forward up input, (n_rows, n_cols)
    da_ptr,  # *T  out: gradient w.r.t. a (may be the first half of a packed gradient)
    db_ptr,  # *T  out: gradient w.r.t. b (may be the second half of a packed gradient)
    stride_dc_row,  # row strides of the five tensors, in elements
    stride_a_row,
    stride_b_row,
    stride_da_row,
    stride_db_row,
    n_rows,  # number of rows
    n_cols,  # number of columns
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per program (power of two)
):
    pid = tl.program_id(0)  # 1-D grid split into (row block, column block), as in the forward
    n_col_blocks = tl.cdiv(n_cols, BLOCK_N)
    rows = (pid // n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % n_col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    r = rows.to(tl.int64)[:, None]
    c = cols[None, :]

    dc = tl.load(dc_ptr + r * stride_dc_row + c, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(a_ptr + r * stride_a_row + c, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + r * stride_b_row + c, mask=mask, other=0.0).to(tl.float32)

    s = tl.sigmoid(a)  # recomputed, not stored by the forward
    silu = a * s
    da = dc * b * (s + silu * (1.0 - s))
    db = dc * silu
    tl.store(da_ptr + r * stride_da_row + c, da.to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + r * stride_db_row + c, db.to(db_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
# (BLOCK_N, num_warps) candidates for the benchmark sweep; None -> the default heuristic.
CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 8), (8192, 8), (8192, 16)]
DEFAULT_FLAT = (4096, 8)  # contiguous tensors: one flat range of elements per program


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(rows, cols) view with unit column stride; keeps row strides (no copy) where possible."""
    t2 = t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
    if t2.shape[-1] > 1 and t2.stride(-1) != 1:
        t2 = t2.contiguous()
    return t2


def _flat(*ts: torch.Tensor) -> bool:
    """All (rows, cols) views are dense row-major: then the kernel can see one long row."""
    return all(t.stride(0) == t.shape[1] or t.shape[0] == 1 for t in ts) and ts[0].numel() < 2**31 - 2**20


def _plan(n_rows: int, n_cols: int, flat: bool, config=None):
    """(rows, cols, BLOCK_M, BLOCK_N, num_warps) of the launch; ``flat`` views (n_rows, n_cols) as (1, n)."""
    if flat:
        n_rows, n_cols = 1, n_rows * n_cols
    if is_interpreter():  # CPU: few, fat programs
        if flat:
            return n_rows, n_cols, 1, min(next_power_of_2(n_cols), 16384), 4
        block_n = min(next_power_of_2(n_cols), 4096)
        return n_rows, n_cols, max(1, min(64, 16384 // block_n)), block_n, 4
    if config is not None:
        block_n, num_warps = config
    elif flat:
        block_n, num_warps = DEFAULT_FLAT
    else:
        # Rows with their own stride (e.g. the halves of a packed tensor): a column block that wastes
        # little of the last tile, and at least 2048 elements per program.
        block_n = 2048 if (-n_cols) % 2048 <= 0.05 * n_cols else 1024
        block_n = min(block_n, next_power_of_2(n_cols))
        num_warps = 8 if block_n >= 2048 else 4
    block_n = min(block_n, next_power_of_2(n_cols))
    block_m = 1 if flat else max(1, min(64, 2048 // block_n))  # pack short rows
    return n_rows, n_cols, block_m, block_n, num_warps


def _grid(n_rows, n_cols, block_m, block_n):
    return (triton.cdiv(n_rows, block_m) * triton.cdiv(n_cols, block_n),)


def swiglu_forward(a2: torch.Tensor, b2: torch.Tensor, config=None) -> torch.Tensor:
    """Launch the forward kernel on two (rows, cols) views; returns a contiguous (rows, cols) result."""
    n_rows, n_cols = a2.shape
    c2 = torch.empty((n_rows, n_cols), dtype=a2.dtype, device=a2.device)
    if c2.numel() == 0:
        return c2
    flat = _flat(a2, b2)
    rows, cols, block_m, block_n, num_warps = _plan(n_rows, n_cols, flat, config)
    _swiglu_fwd_kernel[_grid(rows, cols, block_m, block_n)](
        a2, b2, c2,
        a2.stride(0), b2.stride(0), c2.stride(0),
        rows, cols,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return c2


def swiglu_backward(dc2, a2, b2, da2, db2, config=None) -> None:
    """Launch the backward kernel; writes into the (rows, cols) views ``da2`` and ``db2``."""
    n_rows, n_cols = a2.shape
    if a2.numel() == 0:
        return
    flat = _flat(dc2, a2, b2, da2, db2)
    rows, cols, block_m, block_n, num_warps = _plan(n_rows, n_cols, flat, config)
    _swiglu_bwd_kernel[_grid(rows, cols, block_m, block_n)](
        dc2, a2, b2, da2, db2,
        dc2.stride(0), a2.stride(0), b2.stride(0), da2.stride(0), db2.stride(0),
        rows, cols,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class SwiGLUFunction(torch.autograd.Function):
    """``silu(a) * b`` for two same-shape tensors."""

    @staticmethod
    def forward(ctx, a, b, config=None):
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.dtype != b.dtype:
            raise ValueError(f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
        a2, b2 = _rows(a), _rows(b)
        c2 = swiglu_forward(a2, b2, config)
        ctx.save_for_backward(a2, b2)
        ctx.shape = a.shape
        ctx.config = config
        return c2.view(a.shape)

    @staticmethod
    def backward(ctx, dc):
        a2, b2 = ctx.saved_tensors
        dc2 = _rows(dc)
        da2 = torch.empty(a2.shape, dtype=a2.dtype, device=a2.device)
        db2 = torch.empty(b2.shape, dtype=b2.dtype, device=b2.device)
        swiglu_backward(dc2, a2, b2, da2, db2, ctx.config)
        return da2.view(ctx.shape), db2.view(ctx.shape), None


class SwiGLUPackedFunction(torch.autograd.Function):
    """``silu(x[..., :H]) * x[..., H:]`` for one packed ``(..., 2H)`` tensor (gate first)."""

    @staticmethod
    def forward(ctx, x, config=None):
        if x.shape[-1] % 2:
            raise ValueError(f"the last dimension must be even (gate and up halves), got {x.shape[-1]}")
        h = x.shape[-1] // 2
        x2 = _rows(x)
        c2 = swiglu_forward(x2[:, :h], x2[:, h:], config)
        ctx.save_for_backward(x2)
        ctx.shape = x.shape
        ctx.config = config
        return c2.view(*x.shape[:-1], h)

    @staticmethod
    def backward(ctx, dc):
        (x2,) = ctx.saved_tensors
        h = x2.shape[-1] // 2
        dx2 = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
        swiglu_backward(_rows(dc), x2[:, :h], x2[:, h:], dx2[:, :h], dx2[:, h:], ctx.config)
        return dx2.view(ctx.shape), None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry points
# ---------------------------------------------------------------------------------------------
def swiglu(a: torch.Tensor, b: torch.Tensor, *, config=None) -> torch.Tensor:
    """Fused ``silu(a) * b`` (same shape and dtype), differentiable w.r.t. both inputs.

    ``config=(BLOCK_N, num_warps)`` overrides the launch (benchmark sweeps).
    """
    return SwiGLUFunction.apply(a, b, config)


def swiglu_packed(x: torch.Tensor, *, config=None) -> torch.Tensor:
    """Fused ``silu(x[..., :H]) * x[..., H:]`` for a packed gate/up projection of width ``2H``."""
    return SwiGLUPackedFunction.apply(x, config)
