"""FlashAttention-2 backward in Triton (effilab.ops.flash_attention_bwd) against autograd and the PyTorch path.

On the CPU the kernels run in the Triton interpreter (``import effilab`` sets it, see tests/conftest.py)
with small default tiles, so short sequences span several tiles; fp16 and fp32 only there (the
interpreter has no bf16 dot). The ``gpu`` tests run on the GPU machine.
"""
from __future__ import annotations

import pytest
import torch

fab = pytest.importorskip("effilab.ops.flash_attention_bwd", reason="instructor-only solution absent")
from effilab.ops.flash_attention import (  # noqa: E402
    attention_backward_torch,
    attention_reference,
    flash_attention,
    flash_attention_forward,
)
from effilab.ops.flash_attention_bwd import BWD_CONFIGS, flash_attention_backward  # noqa: E402

from ._helpers import DEVICE, assert_close, randn  # noqa: E402

# On a GPU fp32 dot products run in tf32: loosen fp32 tolerances there.
FP32_SCALE = 100.0 if DEVICE == "cuda" else 1.0
# fp16 gradients: P and dS are rounded to fp16 before their dot products (as in every FlashAttention).
SCALE = {torch.float32: 10.0 * FP32_SCALE, torch.float16: 3.0, torch.bfloat16: 1.0}


def _inputs(b, h, s, d, dtype, seed, hk=None, sk=None, device=DEVICE):
    hk, sk = hk or h, sk or s
    q = randn(b, h, s, d, dtype=dtype, seed=seed, device=device)
    k = randn(b, hk, sk, d, dtype=dtype, seed=seed + 1, device=device)
    v = randn(b, hk, sk, d, dtype=dtype, seed=seed + 2, device=device)
    do = randn(b, h, s, d, dtype=dtype, seed=seed + 3, device=device)
    return q, k, v, do


def _reference_grads(q, k, v, do, causal, sm_scale=None):
    """Autograd through the naive fp32 attention."""
    refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    attention_reference(*refs, causal, sm_scale).backward(do.float())
    return [t.grad for t in refs]


def _triton_grads(q, k, v, do, causal, sm_scale=None, config=None):
    o, lse = flash_attention_forward(q, k, v, causal, sm_scale)
    return flash_attention_backward(do, q, k, v, o, lse, causal, sm_scale, config)


def _check(q, k, v, do, causal, sm_scale=None, config=None, against_torch=False):
    grads = _triton_grads(q, k, v, do, causal, sm_scale, config)
    for g, t, name in zip(grads, (q, k, v), ("dq", "dk", "dv")):
        assert g.shape == t.shape and g.dtype == t.dtype, name
    scale = SCALE[q.dtype]
    for g, r, name in zip(grads, _reference_grads(q, k, v, do, causal, sm_scale), ("dq", "dk", "dv")):
        assert_close(g, r, q.dtype, scale=scale, name=name)
    if against_torch:
        o, lse = flash_attention_forward(q, k, v, causal, sm_scale)
        scale_used = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        torch_grads = attention_backward_torch(do, q, k, v, o, lse, causal, scale_used)
        for g, r, name in zip(grads, torch_grads, ("dq", "dk", "dv")):
            assert_close(g, r.float(), q.dtype, scale=2 * scale, name=name + " vs torch path")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [67, 130])
def test_odd_lengths(dtype, causal, seq):
    _check(*_inputs(1, 1, seq, 32, dtype, seed=seq), causal, against_torch=(seq == 67))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hk", [2, 1])
def test_gqa(hk, causal):
    _check(*_inputs(1, 4, 45, 32, torch.float16, seed=3 + hk, hk=hk), causal, against_torch=True)


@pytest.mark.parametrize("sq,sk", [(40, 75), (75, 40), (16, 96)])
def test_cross_attention_lengths(sq, sk):
    _check(*_inputs(1, 2, sq, 64, torch.float16, seed=sq, sk=sk), causal=False, sm_scale=0.2)


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_head_dims(head_dim):
    _check(*_inputs(1, 1, 50, head_dim, torch.float16, seed=head_dim), causal=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [
    dict(DKV_BLOCK_M=32, DKV_BLOCK_N=32, DQ_BLOCK_M=32, DQ_BLOCK_N=32, num_warps=4, num_stages=1),
    dict(DKV_BLOCK_M=16, DKV_BLOCK_N=64, DQ_BLOCK_M=64, DQ_BLOCK_N=16, num_warps=4, num_stages=2),
])
def test_configs(causal, config):
    _check(*_inputs(1, 2, 80, 32, torch.float16, seed=21, hk=1), causal, config=config)


def test_even_lengths():
    for causal in (False, True):
        _check(*_inputs(2, 1, 64, 32, torch.float32, seed=23), causal)


def test_non_contiguous_inputs():
    b, s, h, d = 1, 37, 2, 32
    # (B, S, H, D) memory seen as (B, H, S, D): unit last stride, permuted others
    q, k, v, do = (randn(b, s, h, d, dtype=torch.float16, seed=30 + i).transpose(1, 2) for i in range(4))
    assert not q.is_contiguous()
    _check(q, k, v, do, causal=True)
    # a last stride != 1 (copied by the launcher) and a broadcast gradient (stride 0 everywhere)
    q2 = randn(b, h, d, s, dtype=torch.float16, seed=34).transpose(-1, -2)
    do2 = torch.ones(1, 1, 1, 1, dtype=torch.float16, device=DEVICE).expand(b, h, s, d)
    _check(q2, k, v, do2, causal=False)


def test_autograd_triton_and_torch_backwards_agree():
    q, k, v, do = _inputs(1, 4, 45, 32, torch.float32, seed=40, hk=2)
    grads = {}
    for backward in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        flash_attention(*leaves, True, backward=backward).backward(do)
        grads[backward] = [t.grad for t in leaves]
    for a, b, name in zip(grads["triton"], grads["torch"], ("dq", "dk", "dv")):
        assert_close(a, b, torch.float32, scale=SCALE[torch.float32], name=name)
    for g, r, name in zip(grads["triton"], _reference_grads(q, k, v, do, True), ("dq", "dk", "dv")):
        assert_close(g, r, torch.float32, scale=SCALE[torch.float32], name=name)


def test_autograd_bwd_config_and_bad_backward():
    q, k, v, do = _inputs(1, 2, 33, 16, torch.float16, seed=44)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attention(*leaves, False, bwd_config=BWD_CONFIGS[-1]).backward(do)
    for g, r, name in zip((t.grad for t in leaves), _reference_grads(q, k, v, do, False), ("dq", "dk", "dv")):
        assert_close(g, r, torch.float16, scale=SCALE[torch.float16], name=name)
    with pytest.raises(ValueError, match="'triton', 'torch'"):
        flash_attention(q, k, v, backward="cuda")
    with pytest.raises(ValueError, match="backward must be one of"):
        flash_attention(*leaves, backward="Triton")


def test_input_validation():
    q, k, v, do = _inputs(1, 2, 20, 32, torch.float16, seed=50)
    o, lse = flash_attention_forward(q, k, v)
    with pytest.raises(ValueError, match="must have the shape of q"):
        flash_attention_backward(do[:, :, :10], q, k, v, o, lse)
    with pytest.raises(ValueError, match="lse must be float32"):
        flash_attention_backward(do, q, k, v, o, lse.half())
    with pytest.raises(ValueError, match="lse must be float32 of shape"):
        flash_attention_backward(do, q, k, v, o, lse[:, :1])
    with pytest.raises(ValueError, match=r"do is torch.float32 but q is torch.float16: cast it"):
        flash_attention_backward(do.float(), q, k, v, o, lse)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        flash_attention_backward(do, q, k[:, :1].expand(1, 3, 20, 32), v[:, :1].expand(1, 3, 20, 32), o, lse)
    with pytest.raises(ValueError, match="causal attention needs as many queries as keys"):
        flash_attention_backward(do, q, k[:, :, :10], v[:, :, :10], o, lse, causal=True)
    with pytest.raises(ValueError, match="lacks"):
        flash_attention_backward(do, q, k, v, o, lse, config=dict(DKV_BLOCK_M=16))
    bad = dict(BWD_CONFIGS[0], DKV_BLOCK_M=64, DKV_BLOCK_N=32)
    with pytest.raises(ValueError, match="DKV_BLOCK_N % DKV_BLOCK_M"):
        flash_attention_backward(do, q, k, v, o, lse, causal=True, config=bad)


def test_default_configs_fit_shared_memory():
    """The GPU defaults (computed here without a GPU) fit the H100/H200 limit, and shrink on smaller GPUs."""
    h100 = 232448
    start = fab._gpu_default(128, torch.bfloat16, h100)
    assert start == BWD_CONFIGS[0]  # dK/dV 64 x 128, dQ 128 x 64, 8 warps, 2 stages
    for d in (16, 32, 64, 128, 256):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for limit in (h100, 101376, 65536):  # H100, RTX 4090 / A10-class, T4
                cfg = fab._gpu_default(d, dtype, limit)
                if cfg is None:
                    assert limit < h100, (d, dtype, limit)
                    continue
                assert max(fab.bwd_shared_mem_bytes(cfg, d, dtype.itemsize)) <= limit, (d, dtype, cfg)
                assert cfg["DKV_BLOCK_N"] % cfg["DKV_BLOCK_M"] == 0 and cfg["DQ_BLOCK_M"] % cfg["DQ_BLOCK_N"] == 0
    for cfg in BWD_CONFIGS:
        assert max(fab.bwd_shared_mem_bytes(cfg, 128, 2)) <= h100, cfg
        assert cfg["DKV_BLOCK_N"] % cfg["DKV_BLOCK_M"] == 0 and cfg["DQ_BLOCK_M"] % cfg["DQ_BLOCK_N"] == 0


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
def _sdpa_grads(q, k, v, do, causal):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o = torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=causal,
                                                         enable_gqa=q.shape[1] != k.shape[1])
    o.backward(do)
    return [t.grad for t in leaves]


def _max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("hk", [8, 2])
def test_gpu_bf16_against_sdpa(causal, hk):
    q, k, v, do = _inputs(2, 8, 1024, 128, torch.bfloat16, seed=60, hk=hk, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attention(*leaves, causal).backward(do)
    ref = _reference_grads(q, k, v, do, causal)  # fp32 math on the GPU
    sdpa = _sdpa_grads(q, k, v, do, causal)
    for t, r, s, name in zip(leaves, ref, sdpa, ("dq", "dk", "dv")):
        assert t.grad.dtype == torch.bfloat16
        assert_close(t.grad, r, torch.bfloat16, name=name)
        assert _max_rel(t.grad, s) < 2e-2, name
        assert _max_rel(t.grad, r) <= 2 * _max_rel(s, r) + 4e-3, name  # about as close as SDPA's own


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", BWD_CONFIGS)
def test_gpu_every_bwd_config(causal, config):
    q, k, v, do = _inputs(1, 4, 512 + 37, 128, torch.bfloat16, seed=70, hk=2, device="cuda")
    _check(q, k, v, do, causal, config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256])
def test_gpu_default_config_fits(head_dim, dtype):
    from effilab.ops._utils import max_shared_mem

    cfg = fab.default_bwd_config(head_dim, True, dtype)
    limit = max_shared_mem(torch.device("cuda"))
    assert max(fab.bwd_shared_mem_bytes(cfg, head_dim, dtype.itemsize)) <= limit
    _check(*_inputs(1, 2, 256 + 5, head_dim, dtype, seed=80, device="cuda"), causal=True)  # compiles, and right


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_memory_is_linear(causal):
    """Peak memory of the backward at S = 8192 stays within a bound linear in S (no S x S matrix)."""
    q, k, v, do = _inputs(1, 8, 8192, 128, torch.bfloat16, seed=90, device="cuda")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = flash_attention(*leaves, causal)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    o.backward(do)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    fp32_bytes = 4 * sum(t.numel() for t in (q, k, v, o))
    # (the gradients alone are half of it; one bf16 S x S score matrix per head would be 1 GiB)
    assert extra <= fp32_bytes, f"backward used {extra / 2**20:.0f} MiB extra, bound {fp32_bytes / 2**20:.0f} MiB"
