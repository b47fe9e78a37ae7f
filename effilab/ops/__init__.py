"""Fused operators in Triton (and one in CUDA C++): the kernel library of notebook 08.

One file per operator, each in the Triton tutorials' order: a plain PyTorch reference, the
``@triton.jit`` kernels, the launcher, a ``torch.autograd.Function`` and a functional entry point.
``effilab.ops.modules`` wraps them as ``nn.Module``\\ s.

Public worked examples (in every edition):

* ``softmax``      row softmax, forward + backward                         (softmax.py)
* ``layer_norm``   LayerNorm, forward + backward                           (layernorm.py)
* ``cuda_rms_norm`` RMSNorm forward as CUDA C++, three versions, built lazily (cuda_rmsnorm.py)

Exercise solutions (instructor edition only): every module of this package whose file carries the
``# effilab: instructor-only`` marker (:mod:`effilab.grading.instructor`). The student edition
leaves those files out; each one lists in ``__ops__`` the names it adds to this package:

* ``rms_norm``         RMSNorm, forward + backward                         (rmsnorm.py)
* ``swiglu``, ``swiglu_packed``  SwiGLU activation, forward + backward     (swiglu.py)
* ``cross_entropy``    chunked online-logsumexp cross-entropy, in-place gradient (cross_entropy.py)
* ``flash_attention``  FlashAttention forward + backward  (flash_attention.py, flash_attention_bwd.py)
"""
from __future__ import annotations

import effilab  # noqa: F401  (must precede triton: selects the interpreter on CPU-only machines)

from .cuda_rmsnorm import cuda_rms_norm, rms_norm_cpu
from .layernorm import layer_norm, layer_norm_reference
from .softmax import softmax, softmax_reference

__all__ = [
    "softmax",
    "softmax_reference",
    "layer_norm",
    "layer_norm_reference",
    "cuda_rms_norm",
    "rms_norm_cpu",
]


def _import_instructor_modules() -> None:
    """Import the instructor-only modules this edition ships and re-export their ``__ops__``."""
    import importlib

    from ..grading.instructor import present_instructor_modules

    for name in present_instructor_modules(__name__):
        mod = importlib.import_module(name)
        for attr in getattr(mod, "__ops__", ()):
            globals()[attr] = getattr(mod, attr)
            __all__.append(attr)


_import_instructor_modules()
