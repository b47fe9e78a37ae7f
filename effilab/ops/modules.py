"""Thin ``nn.Module`` wrappers around the fused kernels of ``effilab.ops``.

Each module holds its parameters like its ``torch.nn`` counterpart and calls the functional op in
``forward``, so a model swaps e.g. ``nn.RMSNorm`` for ``RMSNorm`` without other changes.

Some ops are instructor-only solutions that the student edition of the course does not ship
(RMSNorm, SwiGLU, cross-entropy, flash attention). Their modules import the op on first use and
raise an ``ImportError`` that says so when it is absent.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from .layernorm import layer_norm
from .softmax import softmax

__all__ = ["Softmax", "LayerNorm", "RMSNorm", "SwiGLU", "SwiGLUMLP", "CrossEntropyLoss", "FlashAttention"]


def _op(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"effilab.ops.{module}"), name)
    except ImportError as exc:  # the student edition leaves the solutions out
        raise ImportError(
            f"effilab.ops.{module}.{name} is not part of this edition of the course: "
            "it is the exercise of notebook 08"
        ) from exc


class Softmax(nn.Module):
    """Softmax over the last dimension (fused Triton kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax(x)


class LayerNorm(nn.Module):
    """Like ``nn.LayerNorm(hidden_size, eps)`` with an affine weight and bias."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNorm(nn.Module):
    """Like ``nn.RMSNorm(hidden_size, eps)`` (Llama style: weight initialised to ones)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _op("rmsnorm", "rms_norm")(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLU(nn.Module):
    """The activation ``silu(gate) * up``: ``forward(gate, up)``, or ``forward(x)`` on a packed ``(..., 2H)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if b is None:
            return _op("swiglu", "swiglu_packed")(a)
        return _op("swiglu", "swiglu")(a, b)


class SwiGLUMLP(nn.Module):
    """Llama-style MLP ``down(silu(gate(x)) * up(x))`` with the gate and up projections packed in one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias, device=device, dtype=dtype)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(_op("swiglu", "swiglu_packed")(self.gate_up(x)))


class CrossEntropyLoss(nn.Module):
    """Like ``nn.CrossEntropyLoss(ignore_index, reduction)``, fused and memory-lean.

    With ``inplace=True`` (default) the logits passed to ``forward`` are overwritten by their
    gradient when they require grad: see ``effilab.ops.cross_entropy``.
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", inplace: bool = True):
        super().__init__()
        self.ignore_index, self.reduction, self.inplace = ignore_index, reduction, inplace

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fn = _op("cross_entropy", "cross_entropy")
        return fn(logits, target, self.ignore_index, self.reduction, inplace=self.inplace)


class FlashAttention(nn.Module):
    """``softmax(q k^T / sqrt(D)) v`` over (B, H, S, D) tensors (Triton forward and FlashAttention-2 backward)."""

    def __init__(self, causal: bool = False, sm_scale: float | None = None):
        super().__init__()
        self.causal, self.sm_scale = causal, sm_scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _op("flash_attention", "flash_attention")(q, k, v, self.causal, self.sm_scale)

    def extra_repr(self) -> str:
        scale = self.sm_scale if self.sm_scale is not None else "1/sqrt(D)"
        return f"causal={self.causal}, sm_scale={scale}"
