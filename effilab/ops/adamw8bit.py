# effilab: instructor-only
"""A fused 8-bit AdamW step in Triton (reference solution of notebook 05, exercise 3).

The algorithm is bitsandbytes' ``AdamW8bit`` (Dettmers et al., "8-bit Optimizers via Block-wise
Quantization", ICLR 2022), written out in :func:`effilab.quant8.quantized_adamw_step`. Per block of
256 values, in one pass over memory and all in registers:

    m, v   ← code_m[q_m]·N_m,  code_v[q_v]·N_v           (dequantize: two gathers)
    m      ← β1 m + (1 - β1) g;     v ← β2 v + (1 - β2) g²
    p      ← p (1 - lr·wd) - lr/(1 - β1ᵗ) · m / (√v / √(1 - β2ᵗ) + eps)   (from the fp32 moments)
    N_m, N_v ← max |m|, max v over the block;  q_m, q_v ← nearest codes of m/N_m, v/N_v

Bytes per parameter and step (fp32 parameters): p read and written (8), g read (4), both codes read
and written (4), 8 bytes of absmax per 256 values: 16.03 B, against 28 B for fp32 AdamW (p and both
fp32 moments read and written, g read). At the H200's ~4.25 TB/s copy bandwidth, 1.07 B parameters
take ≥ 4.0 ms.

The nearest code comes from :func:`effilab.ops.blockwise_quant.nearest_code_lut` (two gathers,
tables from :func:`~effilab.ops.blockwise_quant.build_tables`), or its binary search when a code has
no table.

Layout: kernel -> launcher (``adamw8bit_step``, the exercise's signature) -> optimizer factory.
"""
from __future__ import annotations

import math

import torch

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU)
import triton
import triton.language as tl

from ..quant8 import BLOCK_SIZE, Fused8bitAdamW, n_blocks
from ._utils import is_interpreter
from .blockwise_quant import LUT_BUCKETS, LUT_EXP, LUT_MANT, _tables, nearest_code_lut, nearest_code_search

__all__ = ["adamw8bit_step", "AdamW8bitTriton", "kernel_config"]
__ops__ = ("adamw8bit_step", "AdamW8bitTriton")  # added to effilab.ops (see effilab/ops/__init__.py)


@triton.jit
def _adamw8bit_kernel(
    p_ptr,  # *T    parameter, flat, n values, updated in place (fp32 / fp16 / bf16)
    g_ptr,  # *T    gradient, flat, n values
    m_ptr, v_ptr,  # *u8   codes of m and v, flat, n values each, updated in place
    am_ptr, av_ptr,  # *f32  absmax of m and v, one per block, updated in place
    qm_ptr, qv_ptr,  # *f32  the 256-value code maps (signed for m, unsigned for v)
    lutm_ptr, midm_ptr,  # lookup table and 256 midpoints of the m map
    lutv_ptr, midv_ptr,  # the same for the v map
    n,  # number of values
    n_blocks,  # ceil(n / BLOCK)
    beta1, beta2, eps,  # Adam's hyperparameters
    decay,  # 1 - lr * weight_decay
    step_size,  # lr / (1 - beta1^t)
    c2,  # sqrt(1 - beta2^t)
    BLOCK: tl.constexpr,  # values per absmax (256)
    ROWS: tl.constexpr,  # blocks per program
    USE_LUT: tl.constexpr,  # two-gather nearest-code lookup, else binary search
    LUT_EXP: tl.constexpr, LUT_MANT: tl.constexpr, NB: tl.constexpr,  # the lookup table's layout
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_blocks
    offs = rows.to(tl.int64)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = offs < n

    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    cm = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.int32)
    cv = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.int32)
    am = tl.load(am_ptr + rows, mask=row_ok, other=0.0)
    av = tl.load(av_ptr + rows, mask=row_ok, other=0.0)

    m = tl.load(qm_ptr + cm) * am[:, None]
    v = tl.load(qv_ptr + cv) * av[:, None]
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    m = tl.where(mask, m, 0.0)  # the padding must not raise a block's absmax
    v = tl.where(mask, v, 0.0)

    p = p * decay
    p = p - step_size * m / (tl.sqrt(v) / c2 + eps)  # from the fp32 moments, before requantization
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)

    new_am = tl.max(tl.abs(m), axis=1)
    new_av = tl.max(v, axis=1)
    sm = m / tl.where(new_am > 0, new_am, 1.0)[:, None]
    sv = v / tl.where(new_av > 0, new_av, 1.0)[:, None]
    if USE_LUT:
        qm = nearest_code_lut(sm, lutm_ptr, midm_ptr, LUT_EXP, LUT_MANT, NB)
        qv = nearest_code_lut(sv, lutv_ptr, midv_ptr, LUT_EXP, LUT_MANT, NB)
    else:
        qm = nearest_code_search(sm, midm_ptr)
        qv = nearest_code_search(sv, midv_ptr)
    tl.store(m_ptr + offs, qm.to(tl.uint8), mask=mask)
    tl.store(v_ptr + offs, qv.to(tl.uint8), mask=mask)
    tl.store(am_ptr + rows, new_am, mask=row_ok)
    tl.store(av_ptr + rows, new_av, mask=row_ok)


# Blocks per program and warps on a GPU: 8 blocks (2048 values) per program, 8 warps.
# To calibrate on the H200 (benchmarks/gpu/nb05.sh sweeps ROWS and num_warps).
GPU_CONFIG = {"ROWS": 8, "num_warps": 8}


def kernel_config() -> dict:
    """The launch configuration: large tiles in the interpreter (few programs), GPU_CONFIG on a GPU."""
    return {"ROWS": 256, "num_warps": 4} if is_interpreter() else dict(GPU_CONFIG)


def _new_state(p: torch.Tensor) -> dict[str, torch.Tensor]:
    n, nb = p.numel(), n_blocks(p.numel(), BLOCK_SIZE)
    return {"m": torch.zeros(n, dtype=torch.uint8, device=p.device),
            "v": torch.zeros(n, dtype=torch.uint8, device=p.device),
            "m_absmax": torch.zeros(nb, dtype=torch.float32, device=p.device),
            "v_absmax": torch.zeros(nb, dtype=torch.float32, device=p.device)}


def adamw8bit_step(param: torch.Tensor, grad: torch.Tensor, state: dict, step: int, lr: float = 1e-3,
                   beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
                   *, config: dict | None = None, use_lut: bool | None = None) -> None:
    """One fused 8-bit AdamW step on ``param`` (contiguous, fp32/fp16/bf16), in place.

    ``state`` holds ``qmap_m`` / ``qmap_v`` (the code maps); the first call adds ``m``, ``v``
    (uint8) and ``m_absmax``, ``v_absmax`` (fp32, one per 256 values): 2.03 bytes per parameter."""
    if not (isinstance(step, int) and step >= 1):
        raise ValueError(f"step is the 1-based step count of the bias correction, got {step!r}")
    if not param.is_contiguous() or grad.shape != param.shape:
        raise ValueError("param must be contiguous and grad of the same shape")
    if "m" not in state:
        state.update(_new_state(param))
    n = param.numel()
    nb = n_blocks(n, BLOCK_SIZE)
    lut_m, mid_m = _tables(state["qmap_m"])
    lut_v, mid_v = _tables(state["qmap_v"])
    use = (lut_m is not None and lut_v is not None) if use_lut is None else bool(use_lut)
    cfg = dict(config or kernel_config())
    rows = cfg.pop("ROWS")
    _adamw8bit_kernel[(triton.cdiv(nb, rows),)](
        param.view(-1), grad.contiguous().view(-1), state["m"], state["v"], state["m_absmax"], state["v_absmax"],
        state["qmap_m"], state["qmap_v"], lut_m if use else mid_m, mid_m, lut_v if use else mid_v, mid_v,
        n, nb, beta1, beta2, eps, 1.0 - lr * weight_decay, lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step),
        BLOCK=BLOCK_SIZE, ROWS=rows, USE_LUT=use, LUT_EXP=LUT_EXP, LUT_MANT=LUT_MANT, NB=LUT_BUCKETS, **cfg)


def AdamW8bitTriton(params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                    min_8bit_size: int = 4096) -> Fused8bitAdamW:
    """A drop-in optimizer: :class:`effilab.quant8.Fused8bitAdamW` around :func:`adamw8bit_step`, with
    bitsandbytes' dynamic maps (signed for m, unsigned for v)."""
    import bitsandbytes.functional as bnbf

    return Fused8bitAdamW(params, bnbf.create_dynamic_map(signed=True), bnbf.create_dynamic_map(signed=False),
                          step_fn=adamw8bit_step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                          min_8bit_size=min_8bit_size)
