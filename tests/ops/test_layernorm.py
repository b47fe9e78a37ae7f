"""LayerNorm (effilab.ops.layernorm, public worked example): forward and backward."""
from __future__ import annotations

import pytest
import torch

from effilab.ops.layernorm import layer_norm, layer_norm_reference

from ._helpers import DEVICE, assert_close, randn, ref_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1023, 517), (2, 29, 96)])
def test_forward_backward(dtype, shape):
    n = shape[-1]
    x = (randn(*shape, seed=1) * 2 + 0.5).to(dtype).requires_grad_()
    w = (1 + 0.1 * randn(n, seed=2)).to(dtype).requires_grad_()
    b = (0.1 * randn(n, seed=3)).to(dtype).requires_grad_()
    dy = randn(*shape, dtype=dtype, seed=4)
    y = layer_norm(x, w, b, 1e-5)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref, db_ref) = ref_grads(lambda *t: layer_norm_reference(*t, 1e-5), [x, w, b], dy)
    assert_close(y, y_ref, dtype, name="y")
    assert_close(x.grad, dx_ref, dtype, name="dx")
    assert_close(w.grad, dw_ref, dtype, name="dw")
    assert_close(b.grad, db_ref, dtype, name="db")


def test_matches_torch_layer_norm():
    x = randn(33, 200, seed=5)
    w, b = randn(200, seed=6), randn(200, seed=7)
    expected = torch.nn.functional.layer_norm(x.double(), (200,), w.double(), b.double(), 1e-5)
    assert_close(layer_norm(x, w, b), expected, torch.float32)


def test_module_wrapper():
    from effilab.ops.modules import LayerNorm

    m = LayerNorm(40).to(DEVICE)
    x = randn(7, 40, seed=8)
    assert_close(m(x), torch.nn.functional.layer_norm(x.double(), (40,)), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("n_cols", [781, 4096, 16384])
def test_gpu_bf16(n_cols):
    x = randn(4096, n_cols, dtype=torch.bfloat16, seed=9, device="cuda", requires_grad=True)
    w = (1 + 0.1 * randn(n_cols, seed=10, device="cuda")).to(torch.bfloat16).requires_grad_()
    b = (0.1 * randn(n_cols, seed=11, device="cuda")).to(torch.bfloat16).requires_grad_()
    dy = randn(4096, n_cols, dtype=torch.bfloat16, seed=12, device="cuda")
    layer_norm(x, w, b).backward(dy)
    xr, wr, br = (t.detach().float().requires_grad_() for t in (x, w, b))
    yr = layer_norm_reference(xr, wr, br)
    yr.backward(dy.float())
    assert_close(x.grad, xr.grad, torch.bfloat16, name="dx")
    assert_close(w.grad, wr.grad, torch.bfloat16, name="dw")
    assert_close(b.grad, br.grad, torch.bfloat16, name="db")
