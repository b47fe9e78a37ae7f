"""W4A16 matmul (effilab.ops.w4a16): every kernel variant against a dequantize-then-matmul reference.

On the CPU the kernels run in Triton's interpreter (``import effilab`` selects it): fp32 and fp16
only there (no bf16 ``tl.dot``); the bf16 shapes of the sweep are the ``gpu`` tests.
"""
from __future__ import annotations

import pytest
import torch

w4a16 = pytest.importorskip("effilab.ops.w4a16", reason="instructor-only solution absent")
from effilab.ops.w4a16 import Config, w4a16_matmul, w4a16_reference  # noqa: E402

from ._helpers import DEVICE  # noqa: E402


def inputs(m, n, k, group, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    qw = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.int32).to(device, torch.uint8)
    sc = (torch.rand(n, k // group, generator=g) * 0.02 + 0.002).to(device, dtype)
    zp = torch.randint(0, 16, (n, k // group), generator=g, dtype=torch.int32).to(device, torch.uint8)
    return x, qw, sc, zp, group


def expected(x, qw, sc, zp, group):
    """Dequantize in float64 on the CPU, then matmul (independent of w4a16_reference)."""
    q = torch.empty(qw.shape[0], 2 * qw.shape[1], dtype=torch.float64)
    q[:, 0::2] = (qw.cpu() & 15).double()
    q[:, 1::2] = (qw.cpu() >> 4).double()
    gi = torch.arange(q.shape[1]) // group
    w = (q - zp.cpu().double()[:, gi]) * sc.cpu().double()[:, gi]
    return x.cpu().double() @ w.T


def check(y, x, qw, sc, zp, group, tol=None):
    ref = expected(x, qw, sc, zp, group)
    assert y.shape == ref.shape and y.dtype == x.dtype
    tol = tol or {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}[x.dtype]
    err = (y.cpu().double() - ref).abs()
    allowed = tol * (ref.abs() + ref.pow(2).mean().sqrt())
    assert (err <= allowed).all(), f"max err {err.max().item():.3g}, worst ratio {(err / allowed).max().item():.3g}"


VARIANTS = [  # small tiles, so that odd shapes leave partial tiles and several K splits
    Config("gemv", 1, 16, 128, 1, fast_cvt=False),
    Config("gemv", 1, 16, 128, 3),
    Config("gemv", 2, 16, 128, 0),
    Config("gemv", 4, 16, 256, 2),
    Config("dot", 16, 16, 64, 1),
    Config("dot", 16, 32, 128, 4, fast_cvt=False),
]
SHAPES = [(1, 130, 384, 128, torch.float16), (3, 77, 1024, 128, torch.float32), (5, 33, 512, 64, torch.float16),
          (1, 96, 320, 320, torch.float32), (17, 40, 448, 32, torch.float16)]


@pytest.mark.parametrize("config", VARIANTS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_variants_on_odd_shapes(config, shape):
    m, n, k, group, dtype = shape
    args = inputs(m, n, k, group, dtype, seed=m + n + k)
    check(w4a16_matmul(*args, config=config), *args)


@pytest.mark.parametrize("m", [1, 2, 7, 16, 33])
def test_default_heuristic(m):
    args = inputs(m, 72, 768, 128, torch.float16, seed=m)
    check(w4a16_matmul(*args), *args)


def test_split_k_counters_are_reset_and_reusable():
    """The last split of each tile resets its counter: a second call (and another shape) is right too."""
    cfg = Config("gemv", 1, 16, 64, 4)
    for seed, (n, k) in enumerate([(48, 512), (48, 512), (20, 256)]):
        args = inputs(1, n, k, 64, torch.float32, seed=seed)
        check(w4a16_matmul(*args, config=cfg), *args)
    assert all(int(b.abs().sum()) == 0 for b in w4a16._LOCKS.values())


def test_reference_agrees_and_legacy_tuple_config():
    args = inputs(3, 40, 256, 64, torch.float32, seed=5)
    check(w4a16_reference(*args), *args)
    check(w4a16_matmul(*args, config=(1, 8, 128, 4, 1)), *args)  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
    check(w4a16_matmul(*inputs(16, 40, 256, 64, torch.float16), config=(16, 16, 64, 4, 1)),
          *inputs(16, 40, 256, 64, torch.float16))


def test_non_contiguous_x_and_empty():
    x, qw, sc, zp, g = inputs(4, 24, 256, 128, torch.float32, seed=6)
    xt = x.t().contiguous().t()  # column stride 4
    check(w4a16_matmul(xt, qw, sc, zp, g), x, qw, sc, zp, g)
    assert w4a16_matmul(x[:0], qw, sc, zp, g).shape == (0, 24)


@pytest.mark.parametrize("bad, match", [
    (lambda a: (a[0][:, :-2], *a[1:]), "columns"),
    (lambda a: (a[0], a[1].to(torch.int32), *a[2:]), "uint8"),
    (lambda a: (*a[:4], 96), "group_size"),
    (lambda a: (a[0], a[1], a[2][:, :1], *a[3:]), "scales"),
])
def test_input_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        w4a16_matmul(*bad(inputs(2, 8, 256, 128, torch.float32)))


def test_bad_config():
    args = inputs(2, 8, 256, 128, torch.float16)
    with pytest.raises(ValueError, match="kernel"):
        w4a16_matmul(*args, config=Config("wgmma", 16, 16, 64))
    with pytest.raises(ValueError, match="16"):
        w4a16_matmul(*args, config=Config("dot", 8, 16, 64))


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None] + w4a16.CONFIGS["gemv"] + w4a16.CONFIGS["gemv_rows"] + w4a16.CONFIGS["dot"],
                         ids=str)
@pytest.mark.parametrize("mnk", [(1, 4096, 4096), (16, 4096, 4096), (1, 11008, 4096), (1, 4096, 11008), (5, 1000, 2560)],
                         ids=str)
def test_gpu_bf16_sweep_shapes(config, mnk):
    m, n, k = mnk
    args = inputs(m, n, k, 128, torch.bfloat16, seed=m + n, device="cuda")
    for _ in range(2):  # the second call finds the split-K counters reset
        check(w4a16_matmul(*args, config=config), *args)
