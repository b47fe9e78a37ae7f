"""Fused operators in Triton (and one in CUDA C++): the kernel library of notebook 08.

One file per operator, each in the Triton tutorials' order: a plain PyTorch reference, the
``@triton.jit`` kernels, the launcher, a ``torch.autograd.Function`` and a functional entry point.
``effilab.ops.modules`` wraps them as ``nn.Module``\\ s.

Public worked examples (in every edition):

* ``softmax``      row softmax, forward + backward                         (softmax.py)
* ``layer_norm``   LayerNorm, forward + backward                           (layernorm.py)
* ``cuda_rms_norm`` RMSNorm forward as CUDA C++, three versions, built lazily (cuda_rmsnorm.py)

Exercise solutions (instructor edition only; absent from the student edition, hence the guarded
imports below):

* ``rms_norm``         RMSNorm, forward + backward                         (rmsnorm.py)
* ``swiglu``, ``swiglu_packed``  SwiGLU activation, forward + backward     (swiglu.py)
* ``cross_entropy``    chunked online-logsumexp cross-entropy, in-place gradient (cross_entropy.py)
* ``flash_attention``  FlashAttention forward (+ PyTorch backward)         (flash_attention.py)
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

try:
    from .rmsnorm import rms_norm, rms_norm_reference

    __all__ += ["rms_norm", "rms_norm_reference"]
except ImportError:  # student edition
    pass

try:
    from .swiglu import swiglu, swiglu_packed, swiglu_reference

    __all__ += ["swiglu", "swiglu_packed", "swiglu_reference"]
except ImportError:
    pass

try:
    from .cross_entropy import cross_entropy, cross_entropy_reference

    __all__ += ["cross_entropy", "cross_entropy_reference"]
except ImportError:
    pass

try:
    from .flash_attention import attention_reference, flash_attention

    __all__ += ["flash_attention", "attention_reference"]
except ImportError:
    pass
