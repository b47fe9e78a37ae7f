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
@pytest.mark.parametrize("config", [None] + rmsnorm.BWD_CONFIGS, ids=str)
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
@pytest.mark.parametrize("n_cols", [781, 1024, 8192, 16384, 20000, 32768, 65536, 100000])
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


# ---- backward variants and launch configurations (interpreter on CPU) ----------------------------
VARIANTS = [
    rmsnorm.BwdConfig("persistent", 1, 2, 4, 2),
    rmsnorm.BwdConfig("persistent", 4, 1, 4, 1),
    rmsnorm.BwdConfig("blocked", 1, 3, 4, 2),
    rmsnorm.BwdConfig("blocked", 8, 2, 4, 1),
    rmsnorm.BwdConfig("chunked", 1, 2, 4, 1, 128),
    rmsnorm.BwdConfig("chunked", 1, 3, 4, 1, 1024),
    (2, 1, 4, 1),  # the plain persistent tuple of earlier versions
]


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: rmsnorm.as_bwd_config(c).label().replace(" ", "_"))
@pytest.mark.parametrize("shape", [(37, 333), (5, 1000)])
def test_backward_variants(config, shape):
    n = shape[-1]
    x = randn(*shape, dtype=torch.float32, seed=30, requires_grad=True)
    w = (1 + 0.1 * randn(n, seed=31)).requires_grad_()
    dy = randn(*shape, dtype=torch.float32, seed=32)
    y = rms_norm(x, w, 1e-6, bwd_config=config)
    y.backward(dy)
    _, (dx_ref, dw_ref) = ref_grads(lambda a, b: rms_norm_reference(a, b, 1e-6), [x, w], dy)
    assert_close(x.grad, dx_ref, torch.float32, name="dx")
    assert_close(w.grad, dw_ref, torch.float32, name="dw")


def test_rows_wider_than_max_cols():
    """65536+ columns: the chunked forward and backward (the defaults there) on 70001-wide rows."""
    n = 70001
    x = randn(3, n, dtype=torch.float16, seed=33, requires_grad=True)
    w = (1 + 0.1 * randn(n, seed=34)).requires_grad_()
    dy = randn(3, n, dtype=torch.float16, seed=35)
    y = rms_norm(x, w, 1e-6, bwd_config=rmsnorm.BwdConfig("chunked", 1, 2, 4, 1, 8192))
    y.backward(dy)
    y_ref, (dx_ref, dw_ref) = ref_grads(lambda a, b: rms_norm_reference(a, b, 1e-6), [x, w], dy)
    assert_close(y, y_ref, torch.float16, name="y")
    assert_close(x.grad, dx_ref, torch.float16, name="dx")
    assert_close(w.grad, dw_ref, torch.float16, name="dw")


@pytest.mark.parametrize("config", [None] + rmsnorm.FWD_CONFIGS, ids=str)
def test_forward_configs(config):
    x = randn(19, 333, seed=36)
    w = randn(333, seed=37)
    assert_close(rms_norm(x, w, fwd_config=config), rms_norm_reference(x.double(), w.double()), torch.float32)


H200_SMEM, T4_SMEM = 232448, 65536


@pytest.mark.parametrize("smem", [H200_SMEM, 101376, T4_SMEM], ids=["H200", "A10-L4", "T4"])
@pytest.mark.parametrize("n_cols", [64, 781, 4096, 8192, 16384, 20000, 32768, 65536])
@pytest.mark.parametrize("elem_bytes", [2, 4])
@pytest.mark.parametrize("config", [None] + rmsnorm.BWD_CONFIGS, ids=str)
def test_bwd_config_fits_shared_memory(monkeypatch, smem, n_cols, elem_bytes, config):
    """Every default and swept configuration fits the device's shared memory at every width."""
    monkeypatch.setattr(rmsnorm, "is_interpreter", lambda: False)  # the GPU heuristics
    cfg, block_n = rmsnorm._bwd_config(n_cols, elem_bytes, torch.device("cpu"), config, smem=smem)
    assert block_n >= n_cols and cfg.num_stages >= 1
    if cfg.variant == "chunked":
        assert 16 <= cfg.chunk_n <= block_n
    else:
        assert rmsnorm.smem_bytes(cfg.block_m, block_n, elem_bytes, elem_bytes, cfg.num_warps, cfg.num_stages) <= smem
    if config is None:
        assert (cfg.variant == "chunked") == (block_n > rmsnorm.FULL_ROW_MAX)


def test_bwd_config_the_failing_h200_case(monkeypatch):
    """65536 bf16 columns, 1 program/SM and 2 stages asked Triton for 262276 B on the H200 (limit 232448)."""
    monkeypatch.setattr(rmsnorm, "is_interpreter", lambda: False)
    assert rmsnorm.smem_bytes(1, 65536, 2, 2, 32, 2) >= 262276  # the bound covers what Triton asked for
    cfg, _ = rmsnorm._bwd_config(65536, 2, torch.device("cpu"), (1, 1, 32, 2), smem=H200_SMEM)
    assert cfg.num_stages == 1
    cfg, _ = rmsnorm._bwd_config(4096, 2, torch.device("cpu"), None, smem=H200_SMEM)
    assert cfg.num_stages == 2  # the tuned default where it fits
    cfg, _ = rmsnorm._bwd_config(16384, 2, torch.device("cpu"), None, smem=T4_SMEM)
    assert cfg.num_stages == 1  # a T4 cannot prefetch a 16384-wide row pair


def test_max_shared_mem_stand_in_on_cpu():
    from effilab.ops._utils import max_shared_mem

    assert max_shared_mem(torch.device("cpu")) == H200_SMEM


def test_pick_fastest_skips_configs_that_do_not_fit():
    from triton.runtime.errors import OutOfResources

    cands = rmsnorm.bwd_candidates(rmsnorm.BwdConfig("persistent", 1, 1, 8, 2))
    assert cands[0].variant == "persistent" and all(c.variant == "blocked" for c in cands[1:])
    assert len(set(cands)) == len(cands)
    times = {c: 1.0 + i for i, c in enumerate(cands)}

    def fake(c):
        if c == cands[0]:
            raise OutOfResources(262276, 232448, "shared memory")
        return times[c]

    assert rmsnorm.pick_fastest(cands, fake) == cands[1]
    assert rmsnorm.pick_fastest(cands[:1], fake) is None  # then the static default is used
    assert not rmsnorm._tune_enabled(torch.device("cpu"))  # only on a GPU
