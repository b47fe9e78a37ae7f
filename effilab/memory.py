"""Where training memory goes: peak GPU memory, activations saved for backward, model state.

Three tools, from measured to modelled:

* :func:`peak_memory` (CUDA): the extra peak memory a call needs, from the caching allocator's
  statistics.
* :func:`saved_activation_bytes` (any device, CPU included): the bytes autograd keeps alive for the
  backward pass, counted with ``torch.autograd.graph.saved_tensors_hooks``, per module.
* :func:`training_memory`: the bytes per parameter of weights, gradients, fp32 master weights
  and optimizer state for common recipes, the accounting of the ZeRO paper (Rajbhandari et al.,
  "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020), where mixed
  precision Adam costs 2 + 2 + 12 = 16 bytes per parameter before any activation.

Units: bytes everywhere; :func:`format_bytes` prints them in binary units (KiB, MiB, GiB).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from effilab import device as _device

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "SavedTensorMeter",
    "peak_saved_bytes",
    "MemoryResult",
    "peak_memory",
    "SavedTensor",
    "ActivationReport",
    "saved_activation_bytes",
    "RECIPES",
    "training_memory",
    "plot_training_memory",
    "format_bytes",
]

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
          "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def format_bytes(n: float) -> str:
    """``1536 -> '1.50 KiB'``, ``3 * 2**30 -> '3.00 GiB'`` (binary units; sign kept)."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{sign}{n:.2f} {unit}"
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Peak memory (CUDA)
# --------------------------------------------------------------------------------------------
@dataclass
class MemoryResult:
    """Memory of one call, from the CUDA caching allocator (bytes of live tensors).

    Attributes:
        peak_bytes: the highest allocated memory during the call minus ``before_bytes``: the
            extra memory the call needed at its worst moment.
        before_bytes: allocated memory just before the call (inputs, model, ...).
        after_bytes: allocated memory after the call (includes the returned tensors).
        result: what the function returned.
    """

    peak_bytes: int
    before_bytes: int
    after_bytes: int
    result: Any = field(default=None, repr=False)

    @property
    def retained_bytes(self) -> int:
        """Memory still held after the call (returned tensors, saved activations, caches)."""
        return self.after_bytes - self.before_bytes

    def __str__(self) -> str:
        return (f"peak +{format_bytes(self.peak_bytes)} over {format_bytes(self.before_bytes)} "
                f"before the call; +{format_bytes(self.retained_bytes)} still held after it")


def peak_memory(fn: Callable[..., Any], *args: Any, device: str | torch.device | None = None,
                **kwargs: Any) -> MemoryResult:
    """Run ``fn(*args, **kwargs)`` once and report the extra peak GPU memory it needed.

    Synchronizes, empties the allocator cache, resets the peak statistics, records the allocated
    bytes, runs ``fn``, synchronizes again; ``peak_bytes = max_memory_allocated - before``.
    Counts tensors only (not the CUDA context, nor memory cached but unused, nor memory that
    libraries like cuBLAS allocate outside PyTorch's allocator).

    Raises:
        RuntimeError: without a CUDA GPU (use :func:`saved_activation_bytes` on a CPU).
    """
    dev = torch.device(device) if device is not None else _device.default_device()
    if dev.type != "cuda" or not _device.has_cuda():
        raise RuntimeError(
            "peak_memory needs a CUDA GPU; on CPU use saved_activation_bytes(model_or_fn, x) to "
            "count the activation memory a forward pass keeps for backward, and "
            "training_memory(n_params, recipe) for weights, gradients and optimizer state"
        )
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    gc.collect()  # free tensors of earlier cells that only wait for the garbage collector
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    result = fn(*args, **kwargs)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    after = torch.cuda.memory_allocated(dev)
    return MemoryResult(peak_bytes=int(peak), before_bytes=int(before), after_bytes=int(after),
                        result=result)


# --------------------------------------------------------------------------------------------
# Activations saved for backward (any device)
# --------------------------------------------------------------------------------------------
OUTSIDE = "(outside modules)"


@dataclass
class SavedTensor:
    """One distinct storage autograd saved: the module that saved it first, and its size."""

    module: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int


@dataclass
class ActivationReport:
    """Bytes that autograd keeps for the backward pass of one forward call.

    Attributes:
        total_bytes: sum over distinct storages (a tensor saved by two ops counts once).
        by_module: module name -> bytes, attributing each storage to the innermost module that was
            running when it was first saved (``"(outside modules)"`` otherwise). Sums to
            ``total_bytes``. Empty when no model was given.
        count: number of distinct storages counted.
        result: what the function returned (keep it alive until backward, or drop it to free the
            saved tensors).
        saves: how many times autograd saved a tensor (before deduplication, parameters included).
        tensors: the distinct storages counted, in the order first saved.
    """

    total_bytes: int
    by_module: dict[str, int]
    count: int
    result: Any = field(default=None, repr=False)
    saves: int = 0
    tensors: list[SavedTensor] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        lines = [f"{format_bytes(self.total_bytes)} saved for backward in {self.count} tensors"]
        width = max((len(k) for k in self.by_module), default=0)
        for name, n in self.by_module.items():
            lines.append(f"  {name:<{width}}  {format_bytes(n):>10}")
        return "\n".join(lines)


def _is_parameter(t: torch.Tensor, param_keys: set) -> bool:
    """A parameter, or a view of one (``Linear`` saves ``weight.t()``, not ``weight``)."""
    if _storage_key(t) in param_keys:
        return True
    for x in (t, t._base):
        if x is not None and (isinstance(x, torch.nn.Parameter) or (x.is_leaf and x.requires_grad)):
            return True
    return False


def _storage_key(t: torch.Tensor) -> tuple:
    """Identify a tensor's underlying memory: (device, data pointer) of its storage."""
    try:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr == 0:  # meta tensors and empty storages have no address: use the storage object
            return ("obj", getattr(st, "_cdata", id(t)))
        return (str(t.device), ptr)
    except (RuntimeError, NotImplementedError):  # tensors without storage (some subclasses)
        return ("obj", id(t))


def _storage_nbytes(t: torch.Tensor) -> int:
    try:
        return int(t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def saved_activation_bytes(
    fn: Callable[..., Any],
    *args: Any,
    model: torch.nn.Module | None = None,
    include_parameters: bool = False,
    **kwargs: Any,
) -> ActivationReport:
    """Count the bytes autograd saves for backward while ``fn(*args, **kwargs)`` runs.

    ``fn`` is typically a model (or a function running a forward pass and returning a loss).
    Every tensor an operation saves for its backward passes through a
    ``torch.autograd.graph.saved_tensors_hooks`` pack hook; we count the bytes of each distinct
    *storage* once (a tensor saved by two ops, or two views of one buffer, count once; a view
    keeps its whole storage alive, so the whole storage counts).

    Args:
        fn: the forward computation. If it is an ``nn.Module`` and ``model`` is None, it is also
            used as ``model``.
        model: the module whose submodules get a per-module breakdown (forward pre/post hooks
            tell which module is running).
        include_parameters: also count saved parameters (and views of them, like the
            ``weight.t()`` a ``Linear`` saves). They live in memory anyway, so by default they are
            excluded. Without a ``model``, "parameter" means a leaf tensor that requires grad,
            so an input created with ``requires_grad=True`` is excluded too.

    Notes:
        Tensors saved are counted as they are (an input saved by the first layer counts). Nothing
        is saved under ``torch.no_grad()`` or when no input or parameter requires grad.
        Works on any device, CPU included; the count is of bytes kept, not the allocator's peak.
        Meant for eager models: under ``torch.compile`` or activation checkpointing autograd saves
        different (or no) tensors.
    """
    if model is None and isinstance(fn, torch.nn.Module):
        model = fn
    param_keys: set = set()
    if model is not None:
        param_keys = {_storage_key(p) for p in model.parameters()}

    seen: set = set()
    tensors: list[SavedTensor] = []
    by_module: dict[str, int] = {}
    stack: list[str] = []
    saves = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saves
        saves += 1
        if not include_parameters and _is_parameter(t, param_keys):
            return t
        key = _storage_key(t)
        if key in seen:
            return t
        seen.add(key)
        where = stack[-1] if stack else OUTSIDE
        nbytes = _storage_nbytes(t)
        tensors.append(SavedTensor(where, tuple(t.shape), t.dtype, nbytes))
        if model is not None:
            by_module[where] = by_module.get(where, 0) + nbytes
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    handles = []
    if model is not None:
        for name, mod in model.named_modules():
            label = name or type(mod).__name__

            def pre(_m, _inp, _label=label):
                stack.append(_label)

            def post(_m, _inp, _out, _label=label):
                if stack and stack[-1] == _label:
                    stack.pop()

            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            result = fn(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()

    total = sum(s.nbytes for s in tensors)
    return ActivationReport(total_bytes=total, by_module=by_module, count=len(tensors),
                            result=result, saves=saves, tensors=tensors)


# --------------------------------------------------------------------------------------------
# The training-memory model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter of each part of the model state."""

    weights: float
    grads: float
    master_weights: float
    optimizer: float
    doc: str

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.master_weights + self.optimizer


RECIPES: dict[str, Recipe] = {
    "fp32_adam": Recipe(4, 4, 0, 8,
                        "fp32 weights (4) + fp32 grads (4) + Adam m and v in fp32 (8) = 16 B/param"),
    "mixed_adam": Recipe(2, 2, 4, 8,
                         "mixed precision (ZeRO paper): bf16/fp16 weights (2) + bf16 grads (2) + "
                         "fp32 master weights (4) + fp32 Adam m, v (8) = 16 B/param"),
    "mixed_8bit_adam": Recipe(2, 2, 4, 2,
                              "mixed precision with 8-bit Adam (bitsandbytes-style): bf16 weights "
                              "(2) + bf16 grads (2) + fp32 master (4) + m, v in 8 bits (1 + 1) = "
                              "10 B/param (block-wise quantization scales ignored)"),
    "bf16_adam": Recipe(2, 2, 0, 4,
                        "pure bf16: bf16 weights (2) + bf16 grads (2) + Adam m, v in bf16 (2 + 2), "
                        "no fp32 master = 8 B/param; small updates round away unless the "
                        "optimizer uses stochastic rounding or Kahan summation"),
    "sgd_fp32": Recipe(4, 4, 0, 0, "plain SGD in fp32: weights (4) + grads (4) = 8 B/param"),
    "sgd_momentum_fp32": Recipe(4, 4, 0, 4,
                                "SGD with momentum in fp32: weights (4) + grads (4) + momentum "
                                "buffer (4) = 12 B/param"),
}

SEGMENTS = ("weights", "grads", "master_weights", "optimizer", "activations")


def training_memory(n_params: float, recipe: str = "fp32_adam",
                    activation_bytes: float = 0) -> dict[str, float]:
    """Memory of one training step, by part, in bytes (ZeRO-paper accounting, one GPU).

    Args:
        n_params: number of parameters N.
        recipe: one of :data:`RECIPES`:

            =======================  ======================================  ===========
            recipe                   weights + grads + master + optimizer    bytes/param
            =======================  ======================================  ===========
            ``fp32_adam``            4 + 4 + 0 + 8 (Adam m, v)               16
            ``mixed_adam``           2 + 2 + 4 + 8                           16
            ``mixed_8bit_adam``      2 + 2 + 4 + 2 (m, v in 8 bits)          10
            ``bf16_adam``            2 + 2 + 0 + 4 (m, v in bf16)            8
            ``sgd_fp32``             4 + 4 + 0 + 0                           8
            ``sgd_momentum_fp32``    4 + 4 + 0 + 4 (momentum)                12
            =======================  ======================================  ===========

        activation_bytes: activations kept for backward (e.g. from
            :func:`saved_activation_bytes`), added as is.

    Returns:
        ``{"weights", "grads", "master_weights", "optimizer", "activations"}`` in bytes; their sum
        is the total. Ignores temporary buffers, allocator fragmentation and the CUDA context
        (often 0.5-1 GiB on its own).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    if n_params < 0 or activation_bytes < 0:
        raise ValueError(f"n_params and activation_bytes must be >= 0, got {n_params} and "
                         f"{activation_bytes}")
    r = RECIPES[recipe]
    n = float(n_params)
    return {
        "weights": r.weights * n,
        "grads": r.grads * n,
        "master_weights": r.master_weights * n,
        "optimizer": r.optimizer * n,
        "activations": float(activation_bytes),
    }


def plot_training_memory(breakdowns: dict[str, dict[str, float]], ax: "Axes | None" = None,
                         unit: str = "GiB") -> "Axes":
    """Stacked bars, one per label: weights, grads, master weights, optimizer, activations.

    Args:
        breakdowns: label -> a dict like :func:`training_memory` returns (bytes; missing parts
            count as 0).
        ax: draw into this Axes (default: a new figure).
        unit: ``"B"``, ``"KiB"``, ``"MiB"``, ``"GiB"``, ``"TiB"`` (or decimal ``"GB"`` ...).

    Returns:
        The matplotlib Axes.
    """
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; use one of {', '.join(_UNITS)}")
    if not breakdowns:
        raise ValueError("plot_training_memory needs at least one breakdown: {'label': dict}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(breakdowns) + 2.5), 3.8),
                             layout="constrained")
    scale = _UNITS[unit]
    labels = list(breakdowns)
    x = list(range(len(labels)))
    bottoms = [0.0] * len(labels)
    for i, seg in enumerate(SEGMENTS):
        heights = [float(breakdowns[k].get(seg, 0.0)) / scale for k in labels]
        if not any(heights):
            continue
        ax.bar(x, heights, bottom=bottoms, label=seg.replace("_", " "), color=f"C{i}")
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for xi, total in zip(x, bottoms):
        ax.annotate(f"{total:.3g}", (xi, total), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9)
    long_labels = max(len(k) for k in labels) > 10
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20 if long_labels else 0,
                       ha="right" if long_labels else "center")
    ax.set_ylabel(f"memory ({unit})")
    if max(bottoms) > 0:
        ax.set_ylim(0, max(bottoms) * 1.18)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside, right
    return ax


# --------------------------------------------------------------------------------------------
# Saved-tensor accounting over a whole training step (forward, backward and recomputation)
# --------------------------------------------------------------------------------------------
class _Packed:
    __slots__ = ("t", "key", "meter", "__weakref__")

    def __init__(self, t, key, meter):
        self.t, self.key, self.meter = t, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Live bytes of the tensors autograd holds for backward, and their peak, over a whole step.

    Every tensor an operation saves passes the pack hook: its storage is counted once while any
    saved reference to it is alive; when autograd frees it (after the node's backward ran) the
    count goes down. Recomputation inside a checkpoint's backward is counted too: its saved tensors
    pass the same hooks. Parameters (and views of them) are not counted: they live anyway.
    """

    def __init__(self, model: torch.nn.Module | None = None):
        self._params = {_storage_key(p) for p in model.parameters()} if model is not None else set()
        self._live: dict = {}
        self.current = 0
        self.peak = 0

    def pack(self, t: torch.Tensor):
        if _is_parameter(t, self._params):
            return t
        key = _storage_key(t)
        ent = self._live.get(key)
        if ent is None:
            ent = self._live[key] = [_storage_nbytes(t), 0]
            self.current += ent[0]
            self.peak = max(self.peak, self.current)
        ent[1] += 1
        return _Packed(t, key, self)

    @staticmethod
    def unpack(p):
        return p.t if isinstance(p, _Packed) else p

    def _release(self, key) -> None:
        ent = self._live.get(key)
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] == 0:
            self.current -= ent[0]
            del self._live[key]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def peak_saved_bytes(step: Callable[[], object], model: torch.nn.Module | None = None) -> int:
    """Peak bytes autograd keeps alive while ``step()`` runs (a forward and its backward).

    The CPU stand-in for :func:`peak_memory`: it counts saved activations only (no
    temporaries, no gradients), including the ones a checkpoint's recomputation saves in backward.
    """
    meter = SavedTensorMeter(model)
    with meter.hooks():
        step()
    return meter.peak
