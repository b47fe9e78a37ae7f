"""RMSNorm (effilab.ops.rmsnorm): forward and backward against a float64 reference."""
from __future__ import annotations

import pytest
import torch

rmsnorm = pytest.importorskip("effilab.ops.rmsnorm", reason="instructor-only solution absent")
from effilab.ops.rmsnorm import rms_norm, rms_norm_reference  # noqa: E402

from ._helpers import DEVICE, assert_close, randn, ref_grads  # noqa: E402

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1823, 781), (3, 37, 64)])
def test_forward_backward(dtype, shape):
    n = shape[-1]
    x = randn(*shape, dtype=dtype, seed=1, requires_grad=True)
    w = (1 + 0.1 * randn(n, seed=2)).to(dtype).requires_grad_()
    dy = randn(*shape, dtype=dtype, seed=3)
    y = rms_norm(x, w, 1e-6)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref) = ref_grads(lambda a, b: rms_norm_reference(a, b, 1e-6), [x, w], dy)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype, name="y")
    assert_close(x.grad, dx_ref, dtype, name="dx")
    assert_close(w.grad, dw_ref, dtype, name="dw")


def test_fp32_weight_with_fp16_input():
    x = randn(65, 300, dtype=torch.float16, seed=4, requires_grad=True)
    w = (1 + 0.1 * randn(300, seed=5)).requires_grad_()
    dy = randn(65, 300, dtype=torch.float16, seed=6)
    y = rms_norm(x, w)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref) = ref_grads(lambda a, b: rms_norm_reference(a, b, 1e-6), [x, w], dy)
    assert y.dtype == torch.float16 and w.grad.dtype == torch.float32
    assert_close(y, y_ref, torch.float16, name="y")
    assert_close(x.grad, dx_ref, torch.float16, name="dx")
    assert_close(w.grad, dw_ref, torch.float16, name="dw")


def test_non_contiguous_input_and_no_grad():
    base = randn(64, 2 * 97, seed=7)
    x = base[:, ::2]  # column stride 2: the launcher must copy
    w = randn(97, seed=8)
    with torch.no_grad():
        y = rms_norm(x, w, 1e-5)
    assert_close(y, rms_norm_reference(x.double(), w.double(), 1e-5), torch.float32)
    xt = randn(97, 64, seed=9).t()  # transposed view
    assert_close(rms_norm(xt, w), rms_norm_reference(xt.double(), w.double()), torch.float32)


@pytest.mark.parametrize("n_cols", [16384, 20000])
def test_wide_rows_forward(n_cols):
    x = randn(3, n_cols, seed=10, scale=3.0)
    w = randn(n_cols, seed=11)
    assert_close(rms_norm(x, w), rms_norm_reference(x.double(), w.double()), torch.float32)


def test_bad_weight_shape():
    with pytest.raises(ValueError, match="weight"):
        rms_norm(randn(4, 8), randn(7))


def test_module_wrapper():
    from effilab.ops.modules import RMSNorm

    m = RMSNorm(48, eps=1e-5).to(DEVICE)
    with torch.no_grad():
        m.weight.copy_(randn(48, seed=12))
    x = randn(5, 48, seed=13)
    assert_close(m(x), rms_norm_reference(x.double(), m.weight.double(), 1e-5), torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None] + rmsnorm.BWD_CONFIGS)
def test_gpu_bf16_real_shape(config):
    x = randn(16384, 4096, dtype=torch.bfloat16, seed=20, device="cuda", requires_grad=True)
    w = (1 + 0.1 * randn(4096, seed=21, device="cuda")).to(torch.bfloat16).requires_grad_()
    dy = randn(16384, 4096, dtype=torch.bfloat16, seed=22, device="cuda")
    y = rms_norm(x, w, bwd_config=config)
    y.backward(dy)
    xr = x.detach().float().requires_grad_()
    wr = w.detach().float().requires_grad_()
    yr = rms_norm_reference(xr, wr)
    yr.backward(dy.float())
    assert_close(y, yr, torch.bfloat16, name="y")
    assert_close(x.grad, xr.grad, torch.bfloat16, name="dx")
    assert_close(w.grad, wr.grad, torch.bfloat16, name="dw")


@pytest.mark.gpu
@pytest.mark.parametrize("n_cols", [781, 1024, 8192, 16384, 65536])
def test_gpu_shapes(n_cols):
    x = randn(257, n_cols, dtype=torch.bfloat16, seed=23, device="cuda", requires_grad=True)
    w = randn(n_cols, dtype=torch.bfloat16, seed=24, device="cuda", requires_grad=True)
    dy = randn(257, n_cols, dtype=torch.bfloat16, seed=25, device="cuda")
    y = rms_norm(x, w)
    y.backward(dy)
    y_ref, (dx_ref, dw_ref) = ref_grads(lambda a, b: rms_norm_reference(a, b), [x, w], dy)
    assert_close(y, y_ref, torch.bfloat16, name="y")
    assert_close(x.grad, dx_ref, torch.bfloat16, name="dx")
    assert_close(w.grad, dw_ref, torch.bfloat16, name="dw")
