# effilab: instructor-only
"""Reference weight-only quantizers of notebook 07: RTN, int4 packing, GPTQ and AWQ.

Everything works on one weight matrix ``W`` of an ``nn.Linear`` (out_features N × in_features K,
quantized along K in groups of ``group_size`` columns) and, for the data-aware methods, its
calibration inputs ``X`` (n tokens × K). The storage format is the one the exercises use and the
W4A16 kernel reads: ``q`` uint8 codes in ``[0, 2^bits − 1]``, per-(row, group) fp32 ``scale`` and
uint8 ``zero``, and ``g_idx`` (the group of every column; ``k // group_size`` unless GPTQ's act-order
reordered the columns). The weight a code stands for is ``(q − zero) · scale``.

* **RTN** (round to nearest): asymmetric — the range ``[min(w, 0), max(w, 0)]`` of each group spread
  over ``2^bits − 1`` steps — or symmetric (``scale = max|w| / (2^(bits−1) − 1)``, zero ``2^(bits−1)``).
  Ties round to even (``torch.round``); an all-zero group gets scale 1.
* **GPTQ** (Frantar, Ashkboos, Hoefler & Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
  for Generative Pre-trained Transformers"), the Optimal Brain Quantization update of Frantar &
  Alistarh 2022 made fast: quantize one column at a time and spread its error over the columns not
  yet quantized through the inverse Hessian ``H⁻¹`` of the layer's squared output error,
  ``H = 2 XᵀX / n``, dampened by 1 % of its mean diagonal, through the upper Cholesky factor of
  ``H⁻¹``; updates batched lazily in blocks of 128 columns; optional act-order (columns by
  decreasing ``diag(H)``).
* **AWQ** (Lin, Tang, Tang, Yang, Dang, Gan & Han 2023, "AWQ: Activation-aware Weight Quantization
  for LLM Compression and Acceleration"): scale input channel ``k`` of W up by ``s_k = s̄_k^α``, with
  ``s̄_k`` the mean ``|x_k|`` over the calibration tokens, the inverse scale folded into the
  previous operation; ``α`` from a grid of 20 minimising the layer's output error; then clip each
  group's range (a grid of shrink factors) to minimise the error again.

The code is written for this course from the papers' descriptions.
"""
from __future__ import annotations

import math

import torch

__all__ = ["rtn_params", "rtn_quantize", "rtn_dequantize", "dequantize_grouped", "fake_quantize", "pack_int4",
           "unpack_int4", "gptq_quantize", "awq_search_scales", "awq_search_clip", "output_error"]


# ----------------------------------------------------------------------------------------------
# RTN
# ----------------------------------------------------------------------------------------------
def _group_size(k: int, group_size: int) -> int:
    g = k if group_size in (-1, None) else int(group_size)
    if g <= 0 or k % g:
        raise ValueError(f"group_size {group_size} must divide in_features {k} (or be -1 for one group per row)")
    return g


def _check_bits(bits: int) -> None:
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8 (codes are stored in uint8), got {bits}")


def rtn_params(wg: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) of every group along the last dimension of ``wg`` (fp32), both keepdim."""
    if symmetric:
        scale = wg.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (2 ** bits - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, torch.round(-lo / scale)


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return (torch.round(w / scale) + zero).clamp(0, 2 ** bits - 1)


def rtn_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = False):
    """Round-to-nearest: ``(q uint8 [N, K], scale fp32 [N, K/G], zero uint8 [N, K/G])``."""
    _check_bits(bits)
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    n, k = w.shape
    g = _group_size(k, group_size)
    wg = w.float().reshape(n, k // g, g)
    scale, zero = rtn_params(wg, bits, symmetric)
    q = _codes(wg, scale, zero, bits)
    return q.to(torch.uint8).reshape(n, k), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)


def rtn_dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """fp32 ``(q − zero) · scale`` with the group parameters repeated over each group's columns."""
    n, k = q.shape
    g = _group_size(k, group_size)
    wq = q.float().reshape(n, k // g, g) - zero.float()[..., None]
    return (wq * scale.float()[..., None]).reshape(n, k)


def dequantize_grouped(q, scale, zero, g_idx) -> torch.Tensor:
    """fp32 weights from codes and the group of each column (GPTQ's ``g_idx``)."""
    g_idx = g_idx.long()
    return (q.float() - zero.float()[:, g_idx]) * scale.float()[:, g_idx]


def fake_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = False) -> torch.Tensor:
    """RTN then dequantize: the weight a quantized layer computes with (fp32)."""
    return rtn_dequantize(*rtn_quantize(w, bits, group_size, symmetric), group_size)


# ----------------------------------------------------------------------------------------------
# int4 packing: two codes a byte, the even column in the low nibble
# ----------------------------------------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    if q.dtype != torch.uint8 or q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs uint8 codes with an even last dimension, got {q.dtype} {tuple(q.shape)}")
    if q.numel() and int(q.max()) > 15:
        raise ValueError("pack_int4: codes must be in 0..15")
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    if p.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 needs uint8 bytes, got {p.dtype}")
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])


# ----------------------------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------------------------
def _hessian(X: torch.Tensor) -> torch.Tensor:
    X = X.float().reshape(-1, X.shape[-1])
    return 2.0 * X.T @ X / X.shape[0]


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp · mean(diag H) (GPTQ's "Cholesky reformulation")."""
    H = H.clone()
    H.diagonal().add_(damp * float(H.diagonal().mean()))
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128, symmetric: bool = False):
    """GPTQ for one layer: ``(q uint8 [N, K], scale fp32 [N, n_groups], zero uint8 [N, n_groups], g_idx int64 [K])``.

    Groups are consecutive runs of ``group_size`` columns in the order of quantization (the
    act-order permutation when ``act_order``), and a group's (scale, zero) is computed from the
    weights as they are when its first column is reached, i.e. after the updates of every column
    quantized before it.
    """
    _check_bits(bits)
    W = W.detach().float().clone()
    n, k = W.shape
    g = _group_size(k, group_size)
    H = _hessian(X.to(W.device))
    dead = H.diagonal() == 0  # an input that is always 0: its weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(k, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_cholesky(H, damp)
    codes = torch.zeros_like(W)
    scales = torch.zeros(n, k // g, device=W.device)
    zeros = torch.zeros(n, k // g, device=W.device)
    scale = zero = None
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:  # a new group: its parameters from the current (updated) weights
                cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                scale, zero = rtn_params(cur, bits, symmetric)
                scales[:, col // g], zeros[:, col // g] = scale[:, 0], zero[:, 0]
            w = W1[:, i]
            c = _codes(w[:, None], scale, zero, bits)
            codes[:, col] = c[:, 0]
            e = (w - ((c - zero) * scale)[:, 0]) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]  # the lazy batch update of the columns after the block
    inv = torch.argsort(perm)
    g_idx = (torch.arange(k, device=W.device) // g)[inv]
    return codes[:, inv].to(torch.uint8), scales, zeros.to(torch.uint8), g_idx


# ----------------------------------------------------------------------------------------------
# AWQ
# ----------------------------------------------------------------------------------------------
def output_error(W: torch.Tensor, W_hat: torch.Tensor, X: torch.Tensor) -> float:
    """‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖²: the relative squared output error of a quantized layer (float64)."""
    X = X.double().reshape(-1, X.shape[-1])
    y = X @ W.double().T
    return float(((X @ W_hat.double().T - y) ** 2).sum() / (y ** 2).sum().clamp_min(1e-300))


@torch.no_grad()
def awq_search_scales(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128, n_grid: int = 20,
                      symmetric: bool = False) -> torch.Tensor:
    """AWQ's per-input-channel scales ``s`` (fp32 [K]): quantize ``W · diag(s)``, run it on ``X / s``."""
    W, X = W.float(), X.float().reshape(-1, X.shape[-1])
    s_x = X.abs().mean(0)
    y = X @ W.T
    best, best_s = math.inf, torch.ones_like(s_x)
    for i in range(n_grid):
        s = s_x.pow(i / n_grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = fake_quantize(W * s, bits, group_size, symmetric) / s
        err = float(((X @ w_hat.T - y) ** 2).mean())
        if err < best:
            best, best_s = err, s
    return best_s


@torch.no_grad()
def awq_search_clip(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128, n_grid: int = 20,
                    max_shrink: float = 0.5, n_tokens: int = 512) -> torch.Tensor:
    """AWQ's clipping: for every (row, group) the largest |w| kept, searched over ``n_grid`` shrink
    factors down to ``1 − max_shrink``, minimising that group's output error on ``n_tokens`` tokens.
    Returns the clip values, fp32 [N, K/G]; apply with ``W.clamp(-c, c)`` group by group."""
    W, X = W.float(), X.float().reshape(-1, X.shape[-1])
    X = X[torch.linspace(0, X.shape[0] - 1, min(n_tokens, X.shape[0])).long()]
    n, k = W.shape
    g = _group_size(k, group_size)
    wg = W.reshape(n, k // g, g)
    xg = X.T.reshape(k // g, g, -1)  # (groups, G, tokens)
    amax = wg.abs().amax(-1, keepdim=True)
    y = torch.einsum("ngi,git->ngt", wg, xg)
    best_err = torch.full(amax.shape, math.inf)
    best = amax.clone()
    for i in range(int(max_shrink * n_grid)):
        c = amax * (1 - i / n_grid)
        w = wg.clamp(-c, c)
        scale, zero = rtn_params(w, bits, False)
        w_hat = (_codes(w, scale, zero, bits) - zero) * scale
        err = ((torch.einsum("ngi,git->ngt", w_hat, xg) - y) ** 2).mean(-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, c, best)
    return best.squeeze(-1)
