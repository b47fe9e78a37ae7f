"""Shared pytest setup.

* ``effilab`` is imported first so Triton runs in interpreter mode on machines without a GPU.
* Tests marked ``gpu`` are skipped, with a reason that says so, when no CUDA device is present;
  they are run on the GPU machine (see benchmarks/README.md) before an issue is closed.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import effilab  # noqa: E402,F401  (must precede any triton import)
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
