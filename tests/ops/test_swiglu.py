"""SwiGLU (effilab.ops.swiglu): fused silu(a) * b, forward and backward."""
from __future__ import annotations

import pytest
import torch

swiglu_mod = pytest.importorskip("effilab.ops.swiglu", reason="instructor-only solution absent")
from effilab.ops.swiglu import swiglu, swiglu_packed, swiglu_reference  # noqa: E402

from ._helpers import DEVICE, assert_close, randn, ref_grads  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(257, 1531), (2, 3, 77)])
def test_forward_backward(dtype, shape):
    a = randn(*shape, dtype=dtype, seed=1, scale=3.0, requires_grad=True)
    b = randn(*shape, dtype=dtype, seed=2, requires_grad=True)
    dc = randn(*shape, dtype=dtype, seed=3)
    c = swiglu(a, b)
    c.backward(dc)
    c_ref, (da_ref, db_ref) = ref_grads(swiglu_reference, [a, b], dc)
    assert c.shape == a.shape and c.dtype == dtype
    assert_close(c, c_ref, dtype, name="c")
    assert_close(a.grad, da_ref, dtype, name="da")
    assert_close(b.grad, db_ref, dtype, name="db")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed(dtype):
    h = 389
    x = randn(3, 41, 2 * h, dtype=dtype, seed=4, scale=2.0, requires_grad=True)
    dc = randn(3, 41, h, dtype=dtype, seed=5)
    c = swiglu_packed(x)
    c.backward(dc)
    c_ref, (dx_ref,) = ref_grads(lambda t: swiglu_reference(t[..., :h], t[..., h:]), [x], dc)
    assert c.shape == (3, 41, h)
    assert_close(c, c_ref, dtype, name="c")
    assert_close(x.grad, dx_ref, dtype, name="dx")


def test_strided_views_and_errors():
    base = randn(50, 300, seed=6)
    a, b = base[:, :100], base[:, 150:250]  # row stride 300, no copy needed
    assert_close(swiglu(a, b), swiglu_reference(a.double(), b.double()), torch.float32)
    with pytest.raises(ValueError):
        swiglu(randn(4, 5), randn(4, 6))
    with pytest.raises(ValueError):
        swiglu_packed(randn(4, 7))


def test_mlp_module():
    from effilab.ops.modules import SwiGLUMLP

    torch.manual_seed(0)
    m = SwiGLUMLP(32, 48).to(DEVICE)
    x = randn(6, 32, seed=7)
    gu = m.gate_up(x)
    expected = m.down(swiglu_reference(gu[..., :48], gu[..., 48:]))
    assert_close(m(x), expected, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None] + swiglu_mod.CONFIGS)
def test_gpu_bf16_real_shape(config):
    shape = (4096, 11008)
    a = randn(*shape, dtype=torch.bfloat16, seed=10, device="cuda", scale=3.0, requires_grad=True)
    b = randn(*shape, dtype=torch.bfloat16, seed=11, device="cuda", requires_grad=True)
    dc = randn(*shape, dtype=torch.bfloat16, seed=12, device="cuda")
    c = swiglu(a, b, config=config)
    c.backward(dc)
    ar, br = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    cr = swiglu_reference(ar, br)
    cr.backward(dc.float())
    assert_close(c, cr, torch.bfloat16, name="c")
    assert_close(a.grad, ar.grad, torch.bfloat16, name="da")
    assert_close(b.grad, br.grad, torch.bfloat16, name="db")


@pytest.mark.gpu
def test_gpu_bf16_packed():
    h = 11008
    x = randn(1024, 2 * h, dtype=torch.bfloat16, seed=13, device="cuda", requires_grad=True)
    dc = randn(1024, h, dtype=torch.bfloat16, seed=14, device="cuda")
    swiglu_packed(x).backward(dc)
    xr = x.detach().float().requires_grad_()
    swiglu_reference(xr[:, :h], xr[:, h:]).backward(dc.float())
    assert_close(x.grad, xr.grad, torch.bfloat16, name="dx")
