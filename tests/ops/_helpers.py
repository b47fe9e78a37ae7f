"""Shared helpers of the tests/ops suite: tolerances by dtype and seeded inputs."""
from __future__ import annotations

import torch

# (relative-to-max, elementwise-relative) tolerances against a float64 reference.
TOL = {
    torch.float32: (3e-5, 3e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, name: str = ""):
    """|actual - expected| <= scale * (a * max|expected| + r * |expected|), elementwise."""
    a_tol, r_tol = TOL[dtype]
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual - expected).abs()
    ref = expected.abs().max().item() if expected.numel() else 0.0
    allowed = scale * (a_tol * max(ref, 1e-12) + r_tol * expected.abs())
    bad = err > allowed
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements off; max err {err.max().item():.3g} "
            f"(max |ref| {ref:.3g}); first at flat index {i}: {actual.flatten()[i].item()} vs "
            f"{expected.flatten()[i].item()}"
        )


def randn(*shape, dtype=torch.float32, device=DEVICE, seed=0, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g, dtype=torch.float32) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def ref_grads(fn, inputs, dy):
    """Outputs and input gradients of ``fn`` evaluated in float64 on CPU copies of ``inputs``."""
    xs = [t.detach().to("cpu", torch.float64).requires_grad_(True) for t in inputs]
    y = fn(*xs)
    y.backward(dy.detach().to("cpu", torch.float64))
    return y.detach(), [x.grad for x in xs]
