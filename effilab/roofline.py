"""Roofline model: is a kernel bound by memory bandwidth or by arithmetic?

A kernel that does ``F`` floating-point operations and moves ``Q`` bytes to and from DRAM has
**arithmetic intensity** ``I = F / Q`` (FLOP per byte). On a device with bandwidth ``β`` (bytes/s)
and peak ``π`` (FLOP/s) it can reach at most ``min(π, β · I)`` FLOP/s (Williams, Waterman &
Patterson, 2009, "Roofline: an insightful visual performance model"). Kernels left of the *ridge*
``I* = π / β`` are **memory-bound** (only fewer bytes make them faster: fusion), kernels right of it
**compute-bound** (only fewer or cheaper FLOPs help: tensor cores, lower precision).

* :func:`count_bytes`: the aten operations a PyTorch call runs and the bytes each one reads and
  writes (a ``TorchDispatchMode``; any device, CPU included) — what an eager chain of ops costs.
* :class:`RooflinePoint` and :func:`plot_roofline`: kernels on the roofline of a device, measured
  (time given) or predicted (no time: drawn on the roof itself, hollow).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import device as _device

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["OpBytes", "count_bytes", "RooflinePoint", "attainable_tflops", "plot_roofline", "REFERENCE_GPU"]

REFERENCE_GPU = "NVIDIA H100 80GB HBM3"  # whose datasheet the plot uses on a machine without a GPU


# --------------------------------------------------------------------------------------------
# Bytes moved by an eager chain of operations
# --------------------------------------------------------------------------------------------
@dataclass
class OpBytes:
    """One aten operation: its name and the bytes of the tensors it read and wrote."""

    op: str
    read: int
    written: int

    @property
    def total(self) -> int:
        return self.read + self.written


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


_FREE = ("aten.view", "aten._unsafe_view", "aten.expand", "aten.t.", "aten.transpose", "aten.unsqueeze",
         "aten.squeeze", "aten.permute", "aten.as_strided", "aten.detach", "aten.alias", "aten.slice",
         "aten.select", "aten._to_copy" + "#never")


def count_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[OpBytes]]:
    """Run ``fn(*args, **kwargs)`` and list every aten op it dispatched with the bytes it moved.

    Each op is assumed to read each input tensor once and write each output once — exactly what
    an unfused eager kernel does. Views (``view``, ``transpose``, …) move nothing and are left out.
    Returns ``(result, ops)``.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    ops: list[OpBytes] = []

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            kw = kw or {}
            out = func(*a, **kw)
            full = str(func)  # e.g. "aten.pow.Tensor_Scalar"
            name = full.split(".")[1] if full.count(".") >= 1 else full
            if not any(full.startswith(f) for f in _FREE):
                ops.append(OpBytes(name, sum(_nbytes(t) for t in _tensors((a, kw))),
                                   sum(_nbytes(t) for t in _tensors(out))))
            return out

    with _Counter():
        result = fn(*args, **kwargs)
    return result, ops


# --------------------------------------------------------------------------------------------
# The roofline plot
# --------------------------------------------------------------------------------------------
@dataclass
class RooflinePoint:
    """A kernel: FLOPs and DRAM bytes per call, and optionally its measured time (ms)."""

    name: str
    flops: float
    bytes: float
    ms: float | None = None

    @property
    def intensity(self) -> float:
        """FLOP per byte."""
        return self.flops / self.bytes

    @property
    def tflops(self) -> float | None:
        return None if self.ms is None else self.flops / (self.ms / 1e3) / 1e12


def _ceilings(info=None, dtype=torch.bfloat16) -> tuple[float, float, str]:
    info = info if info is not None else _device.info()
    rates = info.peak if info.peak is not None else _device.peak_rates(REFERENCE_GPU)
    label = rates.gpu + ("" if info.peak is not None else " datasheet (no GPU here)")
    return float(rates.bandwidth_gbs), float(_device.flops_peak(rates, dtype)), label


def attainable_tflops(intensity: float, info=None, dtype=torch.bfloat16) -> float:
    """``min(peak, bandwidth × intensity)`` in TFLOP/s on ``info``'s device (H100 on a CPU)."""
    gbs, tf, _ = _ceilings(info, dtype)
    return min(tf, gbs * 1e9 * intensity / 1e12)


def plot_roofline(points: list[RooflinePoint], *, info=None, dtype=torch.bfloat16,
                  ax: "Axes | None" = None, title: str | None = None) -> "Axes":
    """Log-log roofline of the current GPU (the H100 datasheet without one) with ``points`` on it.

    Measured points (``ms`` given) are filled markers at their achieved TFLOP/s; predicted ones
    (no time) are hollow markers on the roof, where a perfect kernel would be.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    gbs, tf, label = _ceilings(info, dtype)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    ridge = tf * 1e12 / (gbs * 1e9)
    lo = min([0.01] + [p.intensity / 3 for p in points])
    hi = max([ridge * 30] + [p.intensity * 3 for p in points])
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(xs, np.minimum(tf, gbs * 1e9 * xs / 1e12), "k-", lw=2,
              label=f"{label}: {gbs:.0f} GB/s, {tf:.0f} TFLOP/s {str(dtype).removeprefix('torch.')}")
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.text(ridge * 1.1, tf * 0.02, f"ridge {ridge:.0f} FLOP/B", color="grey", fontsize=8)
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        roof = min(tf, gbs * 1e9 * p.intensity / 1e12)
        if p.tflops is None:
            ax.scatter([p.intensity], [roof], s=60, facecolors="none", edgecolors=color, label=f"{p.name} (predicted)")
        else:
            ax.scatter([p.intensity], [p.tflops], s=60, color=color,
                       label=f"{p.name}: {p.tflops:.3g} TFLOP/s = {p.tflops / roof:.0%} of its roof")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of DRAM traffic)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(title or "Roofline: left of the ridge memory-bound, right of it compute-bound")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.2)
    return ax
