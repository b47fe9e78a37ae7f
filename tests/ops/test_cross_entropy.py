"""Fused cross-entropy (effilab.ops.cross_entropy): loss and in-place gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

ce_mod = pytest.importorskip("effilab.ops.cross_entropy", reason="instructor-only solution absent")
from effilab.ops.cross_entropy import cross_entropy, cross_entropy_reference  # noqa: E402

from ._helpers import DEVICE, assert_close, randn  # noqa: E402


def _targets(n, v, seed, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return t.to(DEVICE)


def _reference(x, t, reduction, grad_output):
    """Loss and gradient of F.cross_entropy in float64."""
    xr = x.detach().to("cpu", torch.float64).requires_grad_()
    loss = F.cross_entropy(xr.reshape(-1, xr.shape[-1]), t.reshape(-1).cpu(), ignore_index=-100, reduction=reduction)
    loss.backward(grad_output.detach().to("cpu", torch.float64))
    return loss.detach(), xr.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_grad(dtype, reduction):
    n, v = 203, 5003  # several vocabulary chunks, a ragged last one
    x0 = randn(n, v, dtype=dtype, seed=1, scale=4.0)
    t = _targets(n, v, seed=2)
    x = x0.clone().requires_grad_()
    buf = x.clone()  # a non-leaf that receives the gradient in place
    loss = cross_entropy(buf, t, reduction=reduction)
    go = randn(n, seed=3).to(dtype) if reduction == "none" else torch.tensor(1.0, dtype=dtype, device=DEVICE)
    loss.backward(go)
    loss_ref, grad_ref = _reference(x0, t, reduction, go)
    assert loss.dtype == dtype
    assert_close(loss, loss_ref, dtype, name="loss")
    assert_close(x.grad, grad_ref, dtype, name="grad")


@pytest.mark.parametrize("config", [(8192, 16, 1, True, True), (8192, 16, 0, True, False), (8192, 16, 2, False, True),
                                    (8192, 16, 1, True, True, 3)])
def test_persistent_and_reversed_launches_match_the_plain_one(config):
    # n = 70 rows in tiles of 16 (the interpreter's) -> 5 tiles: one program per SM (4 in the interpreter)
    # must loop over a second tile; V = 5000 is two chunks, so pass 2 in reverse starts at the ragged one
    n, v = 70, 5000
    x0 = randn(n, v, seed=30, scale=3.0)
    t = _targets(n, v, seed=31)
    plain, alt = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    cross_entropy(plain.clone(), t).backward()
    loss = cross_entropy(alt.clone(), t, config=config)
    loss.backward()
    loss_ref, grad_ref = _reference(x0, t, "mean", torch.tensor(1.0))
    assert_close(loss, loss_ref, torch.float32, name="loss")
    assert torch.equal(alt.grad, plain.grad), "a launch variant changed the gradient"


@pytest.mark.parametrize("config", [(8192,), (3000, 16), (8192, 16, -1, True, True), (8192, 16, 0, True, True, 0),
                                    (8192, 16, 1, True, True, 2, 9)])
def test_a_malformed_config_is_refused_with_what_to_fix(config):
    x = randn(4, 100, seed=32)
    with pytest.raises(ValueError, match="BLOCK_V"):
        cross_entropy(x, _targets(4, 100, seed=33), config=config)


@pytest.mark.parametrize("scale", [1.0, 0.5, -3.0, "per row"])
def test_scale_rows_in_place_over_more_tiles_than_programs(scale):
    # 300 x 5000 in the interpreter's 16 x 4096 tiles: 38 tiles for at most 16 persistent programs
    g0 = randn(300, 5000, seed=34)
    s = randn(300, seed=35) if scale == "per row" else torch.tensor(scale, device=DEVICE)
    g = g0.clone()
    out = ce_mod.scale_rows_(g, s)
    assert out is g
    want = g0 * (s[:, None] if scale == "per row" else s)
    assert torch.equal(g, want) if scale == 1.0 else torch.allclose(g, want, rtol=1e-6, atol=0)


def test_grad_output_scaling_and_large_vocab():
    n, v = 24, 32011
    x0 = randn(n, v, seed=4, scale=2.0)
    t = _targets(n, v, seed=5, ignore_every=4)
    x = x0.clone().requires_grad_()
    loss = cross_entropy(x.clone(), t)
    (2.5 * loss).backward()
    loss_ref, grad_ref = _reference(x0, t, "mean", torch.tensor(2.5))
    assert_close(loss, loss_ref, torch.float32, name="loss")
    assert_close(x.grad, grad_ref, torch.float32, name="grad")


def test_inplace_overwrites_logits_and_not_inplace_keeps_them():
    n, v = 31, 1000
    x0 = randn(n, v, seed=6)
    t = _targets(n, v, seed=7)
    _, grad_ref = _reference(x0, t, "mean", torch.tensor(1.0))

    leaf = x0.clone().requires_grad_()
    buf = leaf * 1.0
    loss = cross_entropy(buf, t)  # inplace=True: buf now holds the gradient
    assert_close(buf.detach(), grad_ref, torch.float32, name="in-place buffer")
    loss.backward()
    assert_close(leaf.grad, grad_ref, torch.float32, name="grad")

    leaf2 = x0.clone().requires_grad_()
    buf2 = leaf2 * 1.0
    loss2 = cross_entropy(buf2, t, inplace=False)
    assert torch.equal(buf2.detach(), x0)
    loss2.backward()
    assert_close(leaf2.grad, grad_ref, torch.float32, name="grad (not in place)")


def test_no_grad_leaves_logits_untouched():
    x = randn(17, 300, seed=8, requires_grad=True)
    t = _targets(17, 300, seed=9)
    before = x.detach().clone()
    with torch.no_grad():
        loss = cross_entropy(x, t)
    assert torch.equal(x.detach(), before)
    assert_close(loss, cross_entropy_reference(before.double(), t), torch.float32)


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_all_ignored_and_3d_logits():
    x = randn(2, 5, 70, seed=10, requires_grad=True)
    t = torch.full((2, 5), -100, device=DEVICE)
    buf = x * 1.0
    loss = cross_entropy(buf, t)
    assert torch.isnan(loss)  # like F.cross_entropy: 0 / 0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

    t2 = _targets(10, 70, seed=11).view(2, 5)
    x2 = randn(2, 5, 70, seed=12, requires_grad=True)
    loss2 = cross_entropy(x2 * 1.0, t2)
    loss2.backward()
    loss_ref, grad_ref = _reference(x2, t2, "mean", torch.tensor(1.0))
    assert_close(loss2, loss_ref, torch.float32, name="loss")
    assert_close(x2.grad, grad_ref.view(2, 5, 70), torch.float32, name="grad")


def test_module_and_bad_reduction():
    from effilab.ops.modules import CrossEntropyLoss

    x = randn(9, 50, seed=13)
    t = _targets(9, 50, seed=14)
    assert_close(CrossEntropyLoss(reduction="sum")(x, t), F.cross_entropy(x.double(), t, reduction="sum"),
                 torch.float32)
    with pytest.raises(ValueError):
        cross_entropy(x, t, reduction="max")


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None] + ce_mod.CONFIGS)
def test_gpu_bf16_llama_vocab(config):
    n, v = 1024, 128256
    x0 = randn(n, v, dtype=torch.bfloat16, seed=20, device="cuda", scale=3.0)
    t = _targets(n, v, seed=21, ignore_every=7)
    x = x0.clone().requires_grad_()
    loss = cross_entropy(x * 1, t, config=config)
    loss.backward()
    xr = x0.float().requires_grad_()
    lr = F.cross_entropy(xr, t, ignore_index=-100)
    lr.backward()
    assert_close(loss, lr, torch.bfloat16, name="loss")
    assert_close(x.grad, xr.grad, torch.bfloat16, name="grad")


@pytest.mark.gpu
def test_gpu_extra_peak_memory_is_small():
    n, v = 8192, 128256
    x = randn(n, v, dtype=torch.bfloat16, seed=22, device="cuda", requires_grad=True)
    t = _targets(n, v, seed=23, ignore_every=9)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = cross_entropy(x, t)
    (g,) = torch.autograd.grad(loss, x)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert g.data_ptr() == x.data_ptr()  # the gradient lives in the logits buffer
    assert extra < 64 * 2**20, f"extra peak {extra / 2**20:.1f} MiB"
