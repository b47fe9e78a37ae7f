# effilab: instructor-only
"""Memory-lean fused cross-entropy over logits in Triton (reference solution of notebook 08).

For a row of logits ``x`` (length ``V``, the vocabulary) and a target class ``t``::

    loss = logsumexp(x) - x_t           d loss / d x_j = softmax(x)_j - [j == t]

With a large vocabulary (Llama 3: V = 128256) the logits dominate activation memory: 8192 tokens
x 128256 classes is 2 GiB in bf16, and eager PyTorch materialises several more full-size
tensors (an fp32 upcast, ``log_softmax``, its gradient). This kernel needs none of them:

* **Online logsumexp** (Milakov & Gimelshein, 2018, "Online normalizer calculation for softmax"):
  one pass over the row in chunks of ``BLOCK_V`` keeps a running max ``m`` and a running sum
  ``s`` of ``exp(x - m)``, rescaling ``s`` whenever the max grows. No full row is ever held.
* **Gradient in the forward, written in place**: the loss is (almost always) the last op of the
  graph, so the gradient w.r.t. the logits is known as soon as the logsumexp is. A second pass
  over the row writes ``softmax - onehot`` (times ``1 / n_valid`` for the mean) *into the logits
  buffer*, which is then handed to autograd as the gradient; backward only rescales it by
  ``grad_output`` (a no-op for the usual ``loss.backward()``). Extra memory is O(N) floats. This is
  the scheme of Liger-Kernel's cross-entropy (Hsu et al., 2024, "Liger Kernel: Efficient Triton
  Kernels for LLM Training").

Caveat of the in-place scheme: after the forward, the tensor you passed as ``logits`` holds the
gradient, not the logits. Pass ``inplace=False`` to keep the logits intact, at the cost of one
extra logits-sized buffer (still no fp32 copies).

``ignore_index`` rows get zero loss and zero gradient; ``reduction="mean"`` divides by the number
of non-ignored rows, like ``torch.nn.functional.cross_entropy``.

Layout: reference -> kernels -> launchers -> autograd.Function -> ``cross_entropy``.
"""
from __future__ import annotations

import torch

import effilab  # noqa: F401  (must precede triton)
import triton
import triton.language as tl

from ._utils import is_interpreter, next_power_of_2, num_sms

__all__ = ["cross_entropy_reference", "cross_entropy", "CrossEntropyFunction", "CONFIGS"]
__ops__ = ("cross_entropy", "cross_entropy_reference")  # added to effilab.ops (see effilab/ops/__init__.py)


# ---------------------------------------------------------------------------------------------
# 1. Reference
# ---------------------------------------------------------------------------------------------
def cross_entropy_reference(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """``F.cross_entropy`` on fp32-upcast logits, cast back to ``logits.dtype``."""
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=ignore_index,
        reduction=reduction,
    )
    return loss.to(logits.dtype)


# ---------------------------------------------------------------------------------------------
# 2. Kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _cross_entropy_fwd_kernel(
    logits_ptr,  # *T    logits, (n_rows, n_cols), unit column stride
    grad_ptr,  # *T    out: d loss_total / d logits (may alias logits_ptr: in-place), unit col stride
    target_ptr,  # *int  target class per row, (n_rows,); ignore_index marks rows to skip
    loss_ptr,  # *f32  out: per-row loss, (n_rows,); 0 for ignored rows
    lse_ptr,  # *f32  out: per-row logsumexp, (n_rows,)
    n_valid_ptr,  # *f32  number of non-ignored rows (a 1-element device tensor: no host sync)
    stride_logits_row,  # elements between rows of logits
    stride_grad_row,  # elements between rows of grad
    n_rows,  # N: number of rows (tokens)
    n_cols,  # V: number of classes
    ignore_index,  # target value of rows that are ignored
    MEAN: tl.constexpr,  # reduction == "mean": scale the gradient by 1 / n_valid
    COMPUTE_GRAD: tl.constexpr,  # run the second pass that writes the gradient
    BLOCK_M: tl.constexpr,  # rows per tile (1 on the GPU; more in the interpreter)
    BLOCK_V: tl.constexpr,  # vocabulary chunk per loop iteration (power of two)
    REVERSE: tl.constexpr,  # pass 2 walks the row backwards: its first chunks are pass 1's last (in L2)
    EVICT: tl.constexpr,  # L2 hints: keep pass 1's reads (evict_last), stream pass 2's (evict_first)
    STAGES: tl.constexpr,  # software-pipeline pass 1's loads this deep (more bytes in flight per program)
):
    # Persistent when the grid is smaller than the number of tiles: program p takes tiles p, p + P, ...
    # Fewer rows in flight means pass 2 finds more of its row still in L2 (see _fwd_config).
    n_tiles = tl.cdiv(n_rows, BLOCK_M)
    n_chunks = tl.cdiv(n_cols, BLOCK_V)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        rows64 = rows.to(tl.int64)
        x_row = logits_ptr + rows64 * stride_logits_row  # (BLOCK_M,) row base pointers

        target = tl.load(target_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
        valid = (target != ignore_index) & row_ok

        # ---- pass 1: online logsumexp over vocabulary chunks -------------------------------
        # Start from a very negative *finite* max so that fully masked chunks never produce
        # exp(-inf - (-inf)) = nan.
        m = tl.full((BLOCK_M,), -3.0e38, dtype=tl.float32)  # running max
        s = tl.zeros((BLOCK_M,), dtype=tl.float32)  # running sum of exp(x - m)
        for start in tl.range(0, n_cols, BLOCK_V, num_stages=STAGES):
            start = tl.multiple_of(start, BLOCK_V)
            cols = start + tl.arange(0, BLOCK_V)
            mask = row_ok[:, None] & (cols[None, :] < n_cols)
            ptrs = x_row[:, None] + cols[None, :]
            if EVICT:
                x = tl.load(ptrs, mask=mask, other=float("-inf"), eviction_policy="evict_last")
            else:
                x = tl.load(ptrs, mask=mask, other=float("-inf"))
            x = x.to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        lse = m + tl.log(tl.where(row_ok, s, 1.0))  # rows past the end: avoid log(0)

        # The target logit, read before pass 2 may overwrite the row.
        x_t = tl.load(x_row + tl.where(valid, target, 0), mask=valid, other=0.0).to(tl.float32)
        loss = tl.where(valid, lse - x_t, 0.0)
        tl.store(loss_ptr + rows, loss, mask=row_ok)
        tl.store(lse_ptr + rows, lse, mask=row_ok)

        # ---- pass 2: gradient softmax - onehot, scaled, written over the row ----------------
        if COMPUTE_GRAD:
            if MEAN:
                n_valid = tl.load(n_valid_ptr)
                scale = tl.where(valid, 1.0 / n_valid, 0.0)  # where, not multiply: n_valid may be 0
            else:
                scale = tl.where(valid, 1.0, 0.0)
            g_row = grad_ptr + rows64 * stride_grad_row
            for i in range(0, n_chunks):
                if REVERSE:
                    start = (n_chunks - 1 - i) * BLOCK_V
                else:
                    start = i * BLOCK_V
                start = tl.multiple_of(start, BLOCK_V)
                cols = start + tl.arange(0, BLOCK_V)
                mask = row_ok[:, None] & (cols[None, :] < n_cols)
                ptrs = x_row[:, None] + cols[None, :]
                if EVICT:
                    x = tl.load(ptrs, mask=mask, other=float("-inf"), eviction_policy="evict_first")
                else:
                    x = tl.load(ptrs, mask=mask, other=float("-inf"))
                p = tl.exp(x.to(tl.float32) - lse[:, None])
                p = tl.where(cols[None, :] == target[:, None], p - 1.0, p)
                g = (p * scale[:, None]).to(grad_ptr.dtype.element_ty)
                if EVICT:
                    tl.store(g_row[:, None] + cols[None, :], g, mask=mask, eviction_policy="evict_first")
                else:
                    tl.store(g_row[:, None] + cols[None, :], g, mask=mask)


@triton.jit
def _scale_rows_kernel(
    g_ptr,  # *T   gradient buffer to rescale in place, (n_rows, n_cols), unit column stride
    scale_ptr,  # *f32 scale: one value (PER_ROW=False) or one per row (PER_ROW=True)
    stride_g_row,  # elements between rows of g
    n_rows,  # number of rows
    n_cols,  # number of columns
    PER_ROW: tl.constexpr,  # reduction="none": grad_output has one entry per row
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_V: tl.constexpr,  # columns per tile
):
    # Persistent: program p rescales tiles p, p + P, ... A scalar scale of exactly 1 (the usual
    # loss.backward()) is decided here, on the device: the loop then runs zero times and the buffer
    # is not touched, with no host sync to ask the question.
    n_col_tiles = tl.cdiv(n_cols, BLOCK_V)
    n_tiles = tl.cdiv(n_rows, BLOCK_M) * n_col_tiles
    if not PER_ROW:
        scalar = tl.load(scale_ptr).to(tl.float32)
        n_tiles = tl.where(scalar == 1.0, 0, n_tiles)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows = (tile // n_col_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (tile % n_col_tiles) * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & (cols[None, :] < n_cols)
        if PER_ROW:
            scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        else:
            scale = tl.load(scale_ptr + rows * 0).to(tl.float32)  # broadcast the scalar
        ptrs = g_ptr + rows.to(tl.int64)[:, None] * stride_g_row + cols[None, :]
        g = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptrs, (g * scale[:, None]).to(g_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# 3. Launchers
# ---------------------------------------------------------------------------------------------
# Launch configurations: (BLOCK_V, num_warps[, programs_per_sm, reverse, evict, stages]). The first two are
# the chunk and the warps of one program; the optional three decide how much of pass 2 is served
# from L2 instead of DRAM: ``programs_per_sm`` > 0 makes the kernel persistent (that many programs
# per SM, each looping over rows), so only ``SMs x programs_per_sm`` rows are in flight
# (132 x 1 x 256 KB = 34 MB at V = 128256 bf16: less than the H200's 50 MB L2), ``reverse`` walks
# pass 2 from the row's end (pass 1 read it last), ``evict`` adds the L2 eviction hints. 0 / False
# / False is the plain one-row-per-program launch, whose pass 2 re-reads the row from DRAM.
# ``stages`` > 1 software-pipelines pass 1 (loads of the next chunks in flight while one is reduced),
# which keeps DRAM busy with fewer programs per SM.
CONFIGS = [
    (4096, 8), (8192, 16), (16384, 16), (16384, 32), (32768, 32),
    (8192, 16, 0, True, False), (8192, 16, 0, True, True),
    (8192, 16, 1, True, True), (8192, 16, 2, True, True), (8192, 16, 1, False, False),
    (4096, 8, 2, True, True), (4096, 8, 4, True, True), (16384, 32, 1, True, True),
    (8192, 16, 1, True, True, 3), (8192, 16, 2, True, True, 2), (4096, 8, 2, True, True, 3),
]
# The H200 sweep's best (fifth 2026-12-02 session, benchmarks/RESULTS.md): pass 2 in reverse with the L2
# hints reads 3.54 GB from DRAM instead of 4.20 (ncu) and is 1.16x faster in the kernel; the
# persistent launches read less still (2.23 GB at 1 program per SM) but keep too few bytes in flight.
DEFAULT_CONFIG = (8192, 16, 0, True, True)


_CONFIG_FIELDS = ("BLOCK_V", "num_warps", "programs_per_sm", "reverse", "evict", "stages")


def _normalise_config(config) -> tuple[int, int, int, bool, bool, int]:
    """A launch configuration of 2 to 6 entries as (BLOCK_V, num_warps, programs_per_sm, reverse, evict,
    stages), the missing ones at their plain values (0, False, False, 1)."""
    cfg = tuple(DEFAULT_CONFIG if config is None else config)
    if not 2 <= len(cfg) <= 6:
        raise ValueError(f"config must be ({', '.join(_CONFIG_FIELDS[:2])}[, {', '.join(_CONFIG_FIELDS[2:])}]), "
                         f"got {config!r}")
    block_v, num_warps, per_sm, reverse, evict, stages = cfg + (0, False, False, 1)[len(cfg) - 2:]
    if block_v <= 0 or block_v & (block_v - 1) or int(per_sm) < 0 or int(stages) < 1:
        raise ValueError(f"config {config!r}: BLOCK_V must be a power of two, programs_per_sm >= 0, stages >= 1")
    return int(block_v), int(num_warps), int(per_sm), bool(reverse), bool(evict), int(stages)


def _fwd_config(n_cols: int, config=None) -> tuple[int, int, int, int, bool, bool, int]:
    """(BLOCK_M, BLOCK_V, num_warps, programs_per_sm, reverse, evict, stages)."""
    block_v, num_warps, per_sm, reverse, evict, stages = _normalise_config(config)
    if is_interpreter():
        block_v = min(next_power_of_2(n_cols), 4096)
        return max(1, min(64, 65536 // block_v)), block_v, 4, per_sm, reverse, evict, stages
    block_v = min(block_v, max(next_power_of_2(n_cols), 128))
    num_warps = min(num_warps, max(4, block_v // 512))  # small vocabularies: fewer warps
    return 1, block_v, num_warps, per_sm, reverse, evict, stages


def cross_entropy_forward(
    logits2: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    compute_grad: bool = True,
    inplace: bool = True,
    config=None,
):
    """Launch the fused kernel on (N, V) logits. Returns ``(loss, grad_or_None, lse, n_valid)``.

    ``loss`` is reduced as asked, in fp32; ``grad`` is ``d reduced_loss / d logits`` for a
    ``grad_output`` of 1 (``logits2`` itself when ``inplace``).
    """
    n_rows, n_cols = logits2.shape
    device = logits2.device
    target = target.reshape(-1)
    if target.shape[0] != n_rows:
        raise ValueError(f"target has {target.shape[0]} entries for {n_rows} rows of logits")
    target = target.contiguous()
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=device)
    lse = torch.empty(n_rows, dtype=torch.float32, device=device)
    n_valid = (target != ignore_index).sum().to(torch.float32).reshape(1)
    if compute_grad:
        grad = logits2 if inplace else torch.empty((n_rows, n_cols), dtype=logits2.dtype, device=device)
    else:
        grad = None
    if n_rows > 0:
        block_m, block_v, num_warps, per_sm, reverse, evict, stages = _fwd_config(n_cols, config)
        n_tiles = triton.cdiv(n_rows, block_m)
        grid = n_tiles if per_sm == 0 else min(n_tiles, per_sm * num_sms(device))
        g = grad if grad is not None else logits2  # never written when COMPUTE_GRAD is False
        _cross_entropy_fwd_kernel[(grid,)](
            logits2, g, target, loss_rows, lse, n_valid,
            logits2.stride(0), g.stride(0),
            n_rows, n_cols, ignore_index,
            MEAN=(reduction == "mean"), COMPUTE_GRAD=compute_grad,
            BLOCK_M=block_m, BLOCK_V=block_v, REVERSE=reverse, EVICT=evict, STAGES=stages,
            num_warps=num_warps,
        )
    if reduction == "mean":
        loss = loss_rows.sum() / n_valid[0]
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows
    return loss, grad, lse, n_valid


def scale_rows_(grad2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """In place ``grad2 *= scale`` with ``scale`` a scalar tensor or one value per row; a scalar equal
    to 1 leaves ``grad2`` untouched (decided on the device: no host sync)."""
    n_rows, n_cols = grad2.shape
    if grad2.numel() == 0:
        return grad2
    per_row = scale.numel() != 1
    scale = scale.reshape(-1).to(torch.float32).contiguous()
    if is_interpreter():
        block_v = min(next_power_of_2(n_cols), 4096)
        block_m, num_warps = max(1, min(64, 65536 // block_v)), 4
    else:
        block_m, block_v, num_warps = 1, min(next_power_of_2(n_cols), 4096), 8
    n_tiles = triton.cdiv(n_rows, block_m) * triton.cdiv(n_cols, block_v)
    grid = (min(n_tiles, 4 * num_sms(grad2.device)),)  # 4 programs per SM: enough bytes in flight
    _scale_rows_kernel[grid](
        grad2, scale, grad2.stride(0), n_rows, n_cols,
        PER_ROW=per_row, BLOCK_M=block_m, BLOCK_V=block_v, num_warps=num_warps,
    )
    return grad2


# ---------------------------------------------------------------------------------------------
# 4. Autograd
# ---------------------------------------------------------------------------------------------
class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, ignore_index=-100, reduction="mean", inplace=True, config=None,
                compute_grad=True):
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        v = logits.shape[-1]
        logits2 = logits.reshape(-1, v)
        if logits2.stride(-1) != 1:
            logits2 = logits2.contiguous()  # then "in place" means in place in this copy
        loss, grad, _, _ = cross_entropy_forward(
            logits2, target, ignore_index, reduction, compute_grad=compute_grad, inplace=inplace, config=config
        )
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.logits_shape = logits.shape
        return loss.to(logits.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        # The usual loss.backward() passes grad_output = 1 and the buffer is final: the kernel sees the
        # 1 and returns at once. Asking on the host instead (``bool(grad_output == 1)``) would be a
        # sync that drains the GPU's queue at every step: 0.5 ms of idle GPU at 8192 x 128256 on the
        # H200 (benchmarks/RESULTS.md, fifth 2026-12-02 session). Other values rescale in place.
        scale_rows_(grad, grad_output.reshape(-1))  # (one scale per row for reduction="none")
        return grad.view(ctx.logits_shape), None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# 5. Functional entry point
# ---------------------------------------------------------------------------------------------
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    inplace: bool = True,
    config=None,
) -> torch.Tensor:
    """Fused cross-entropy of ``logits`` (..., V) against integer ``target`` (...), with autograd.

    Matches ``F.cross_entropy(logits.view(-1, V), target.view(-1), ignore_index=..., reduction=...)``
    (no class weights, no label smoothing). The loss is returned in ``logits.dtype``.

    When ``logits`` requires grad the gradient is computed during the forward pass and, with
    ``inplace=True`` (the default, memory-lean), **written over ``logits``**: do not read the logits
    after this call. ``config=(BLOCK_V, num_warps[, programs_per_sm, reverse, evict, stages])`` overrides the
    GPU launch (see ``CONFIGS``).
    """
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    return CrossEntropyFunction.apply(logits, target, ignore_index, reduction, inplace, config, compute_grad)
