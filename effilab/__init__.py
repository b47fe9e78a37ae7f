"""effilab: the helper package of the effilab course on efficient deep-learning training.

Importing ``effilab`` before ``triton`` matters on machines without a CUDA GPU: it switches Triton
to its interpreter (``TRITON_INTERPRET=1``) so every notebook, kernel included, still runs on a CPU.

Modules
-------
device   what the machine is: GPU name, compute capability, bf16 support, Colab, peak rates
bench    timing (CUDA events, warm-up, L2 flush, medians), GB/s and TFLOP/s, comparisons, bar plots
memory   peak GPU memory, activation bytes saved for backward, the training-memory model
formats  floating-point formats (fp32 … fp8): layouts, ranges, plots for notebook 01
grading  the exercise checkers shared by notebooks, pytest and the grader
"""
from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _select_triton_backend() -> None:
    """Use Triton's CPU interpreter when no CUDA GPU is present.

    Must run before the first ``import triton``: Triton reads the variable when a kernel is
    decorated. A user's explicit setting always wins.
    """
    if "TRITON_INTERPRET" in _os.environ:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: nothing to decide here
        return
    if not has_cuda:
        if "triton" in _sys.modules:
            import warnings

            warnings.warn(
                "triton was imported before effilab on a machine without a CUDA GPU; Triton "
                "kernels will not run. Restart the kernel and `import effilab` first.",
                stacklevel=3,
            )
        _os.environ["TRITON_INTERPRET"] = "1"


_select_triton_backend()
