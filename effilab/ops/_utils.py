"""Small helpers shared by the kernels of ``effilab.ops`` (launch heuristics, device facts).

Nothing here is specific to one operator. The launchers ask two questions:

* ``is_interpreter()``: are the kernels run by Triton's CPU interpreter (``TRITON_INTERPRET=1``)?
  Then every program is executed one after another in Python, so the launchers pick *large*
  tiles (many rows per program) to keep the number of programs, and the test time, small.
* ``num_sms(device)``: how many streaming multiprocessors a persistent kernel should fill.
"""
from __future__ import annotations

import functools
import os

import torch

import effilab  # noqa: F401  (selects the Triton interpreter on CPU-only machines)
import triton

__all__ = [
    "is_interpreter",
    "num_sms",
    "max_shared_mem",
    "next_power_of_2",
    "warps_for_row",
    "as_2d_rows",
    "TORCH_TO_FLOAT",
]


def is_interpreter() -> bool:
    """True when Triton kernels run in the CPU interpreter (set by ``import effilab`` without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms_cuda(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Number of SMs of ``device`` (a small stand-in on CPU / in the interpreter)."""
    if device.type == "cuda" and not is_interpreter():
        return _num_sms_cuda(device.index if device.index is not None else torch.cuda.current_device())
    return 4


@functools.lru_cache(maxsize=None)
def _max_shared_mem_cuda(index: int) -> int:
    try:  # what Triton itself checks a kernel against (the opt-in per-block limit)
        return int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001
        props = torch.cuda.get_device_properties(index)
        return int(getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024)


def max_shared_mem(device: torch.device) -> int:
    """Shared memory one program may use on ``device``, bytes (232448 on an H100/H200, 65536 on a
    T4); in the interpreter a Hopper-sized stand-in, so the GPU launch heuristics can be tested."""
    if device.type == "cuda" and not is_interpreter():
        return _max_shared_mem_cuda(device.index if device.index is not None else torch.cuda.current_device())
    return 232448


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def warps_for_row(block_n: int, elem_bytes: int = 2) -> int:
    """Warps for a program that owns a ``block_n``-wide row tile.

    Aim for about 16 bytes x 2 loads per thread (two 128-bit vectors) and stay within 4..32 warps.
    """
    per_thread = max(1, 32 // elem_bytes)  # elements in 2 x 16 B
    warps = block_n // (32 * per_thread)
    return int(min(32, max(4, next_power_of_2(warps))))


def as_2d_rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as (rows, last_dim) with a unit column stride, copying only when needed."""
    if x.dim() == 0:
        raise ValueError("expected a tensor with at least one dimension")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[-1] > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


TORCH_TO_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
