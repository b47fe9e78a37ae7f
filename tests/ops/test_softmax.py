"""Row softmax (effilab.ops.softmax, public worked example): forward and backward."""
from __future__ import annotations

import pytest
import torch

from effilab.ops.softmax import softmax, softmax_reference

from ._helpers import DEVICE, assert_close, randn, ref_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1031, 611), (3, 5, 1000), (17, 1)])
def test_forward_backward(dtype, shape):
    x = randn(*shape, dtype=dtype, seed=1, scale=4.0, requires_grad=True)
    dy = randn(*shape, dtype=dtype, seed=2)
    y = softmax(x)
    y.backward(dy)
    y_ref, (dx_ref,) = ref_grads(softmax_reference, [x], dy)
    assert_close(y, y_ref, dtype, name="y")
    assert_close(x.grad, dx_ref, dtype, name="dx")


def test_large_logits_do_not_overflow():
    x = torch.tensor([[1000.0, 1001.0, -1000.0], [-5e4, -5e4, -5e4]], device=DEVICE)
    y = softmax(x)
    assert torch.isfinite(y).all()
    assert_close(y, torch.softmax(x.double(), -1), torch.float32)


def test_module_wrapper():
    from effilab.ops.modules import Softmax

    x = randn(9, 130, seed=3)
    assert_close(Softmax()(x), torch.softmax(x.double(), -1), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("n_cols", [128, 1000, 4096, 32768])
def test_gpu_bf16(n_cols):
    x = randn(2048, n_cols, dtype=torch.bfloat16, seed=4, device="cuda", scale=3.0, requires_grad=True)
    dy = randn(2048, n_cols, dtype=torch.bfloat16, seed=5, device="cuda")
    y = softmax(x)
    y.backward(dy)
    xr = x.detach().float().requires_grad_()
    yr = softmax_reference(xr)
    yr.backward(dy.float())
    assert_close(y, yr, torch.bfloat16, name="y")
    assert_close(x.grad, xr.grad, torch.bfloat16, name="dx")
