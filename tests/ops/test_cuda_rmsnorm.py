"""Hand-written CUDA RMSNorm (effilab.ops.cuda_rmsnorm): CPU reference here, kernels on the GPU."""
from __future__ import annotations

import pytest
import torch

from effilab.ops import cuda_rmsnorm
from effilab.ops.cuda_rmsnorm import cuda_rms_norm, rms_norm_cpu

from ._helpers import assert_close, randn


def _reference64(x, w, eps):
    xd, wd = x.double().cpu(), w.double().cpu()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * wd


def test_cpu_reference():
    x = randn(37, 211, device="cpu", seed=1, scale=2.0)
    w = randn(211, device="cpu", seed=2)
    assert_close(rms_norm_cpu(x, w, 1e-5), _reference64(x, w, 1e-5), torch.float32)
    xh = x.half()
    y = rms_norm_cpu(xh, w, 1e-5)
    assert y.dtype == torch.float16


def test_import_compiles_nothing_and_source_has_three_versions():
    assert cuda_rmsnorm.load_extension.cache_info().currsize == 0 or torch.cuda.is_available()
    for name in ("rmsnorm_v1_kernel", "rmsnorm_v2_kernel", "rmsnorm_v3_kernel", "__shfl_xor_sync"):
        assert name in cuda_rmsnorm.CUDA_SOURCE


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_clear_error_without_cuda():
    ok, why = cuda_rmsnorm.cuda_available()
    assert not ok and why
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda_rms_norm(torch.randn(2, 8), torch.ones(8))
    with pytest.raises(ValueError, match="version"):
        cuda_rms_norm(torch.randn(2, 8), torch.ones(8), version=4)


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1823, 781), (64, 4096), (7, 3, 1000), (4, 16384)])
def test_gpu_versions(version, dtype, shape):
    ok, why = cuda_rmsnorm.cuda_available()
    if not ok:
        pytest.skip(why)
    x = randn(*shape, dtype=dtype, device="cuda", seed=3, scale=2.0)
    w = (1 + 0.1 * randn(shape[-1], device="cuda", seed=4)).to(dtype)
    y = cuda_rms_norm(x, w, 1e-6, version=version)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, _reference64(x, w, 1e-6), dtype, name=f"v{version}")
    assert_close(y, rms_norm_cpu(x, w, 1e-6).float(), dtype, name=f"v{version} vs cpu")


@pytest.mark.gpu
def test_gpu_misaligned_view_uses_scalar_path():
    ok, why = cuda_rmsnorm.cuda_available()
    if not ok:
        pytest.skip(why)
    base = randn(33 * 4096 + 1, dtype=torch.bfloat16, device="cuda", seed=5)
    x = base[1:].view(33, 4096)  # storage offset of one element: not 16-byte aligned
    w = randn(4096, dtype=torch.bfloat16, device="cuda", seed=6)
    assert_close(cuda_rms_norm(x, w, version=3), _reference64(x, w, 1e-6), torch.bfloat16)
