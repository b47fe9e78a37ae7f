"""FlashAttention forward (effilab.ops.flash_attention) against naive attention."""
from __future__ import annotations

import pytest
import torch

fa = pytest.importorskip("effilab.ops.flash_attention", reason="instructor-only solution absent")
from effilab.ops.flash_attention import attention_reference, flash_attention  # noqa: E402

from ._helpers import DEVICE, assert_close, randn  # noqa: E402

# On a GPU fp32 dot products run in tf32: loosen fp32 tolerances there.
FP32_SCALE = 100.0 if DEVICE == "cuda" else 1.0


def _qkv(b, h, s, d, dtype, seed, hk=None, sk=None):
    hk = hk or h
    sk = sk or s
    return (
        randn(b, h, s, d, dtype=dtype, seed=seed),
        randn(b, hk, sk, d, dtype=dtype, seed=seed + 1),
        randn(b, hk, sk, d, dtype=dtype, seed=seed + 2),
    )


def _check(q, k, v, causal, config=None, sm_scale=None):
    o, lse = flash_attention(q, k, v, causal, sm_scale, return_lse=True, config=config)
    o_ref, lse_ref = attention_reference(q.double(), k.double(), v.double(), causal, sm_scale, return_lse=True)
    scale = FP32_SCALE if q.dtype == torch.float32 else 1.0
    assert o.shape == q.shape and o.dtype == q.dtype
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
    assert_close(o, o_ref, q.dtype, scale=scale, name="o")
    assert_close(lse, lse_ref, torch.float32, scale=scale * 10, name="lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [67, 130])
def test_odd_lengths(dtype, causal, seq):
    _check(*_qkv(2, 2, seq, 64, dtype, seed=seq), causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", [
    dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1),
    dict(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=1),
])
def test_head_dim_128_and_configs(causal, config):
    _check(*_qkv(1, 2, 100, 128, torch.float16, seed=5), causal, config=config, sm_scale=0.1)


@pytest.mark.skipif(not fa.tma_available(), reason="this Triton has no tensor descriptors")
@pytest.mark.parametrize("causal", [False, True])
def test_tma_path(causal):
    cfg = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, TMA=True)
    q, k, v = _qkv(2, 4, 75, 64, torch.float16, seed=6, hk=2)  # ragged tiles cross into the next head
    _check(q, k, v, causal, config=cfg)


@pytest.mark.parametrize("tma", [False, True] if fa.tma_available() else [False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [16, 75, 96])  # one tile (no rotation), ragged end, three full key tiles
def test_pipelined_loop(causal, tma, seq):
    cfg = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1, PIPELINE=True, TMA=tma)
    q, k, v = _qkv(1, 4, seq, 64, torch.float16, seed=8, hk=2)
    _check(q, k, v, causal, config=cfg)


def test_even_lengths_and_gqa():
    q, k, v = _qkv(1, 4, 64, 32, torch.float16, seed=7, hk=2)
    _check(q, k, v, causal=True)
    _check(q, k, v, causal=False)


def test_cross_attention_lengths():
    q, k, v = _qkv(1, 2, 40, 64, torch.float16, seed=9, sk=75)
    _check(q, k, v, causal=False)


def test_input_validation():
    q, k, v = _qkv(1, 1, 16, 48, torch.float16, seed=11)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(q, k, v)
    q, k, v = _qkv(1, 1, 16, 64, torch.float16, seed=12, sk=20)
    with pytest.raises(ValueError, match="causal"):
        flash_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="BLOCK_M % BLOCK_N"):
        flash_attention(*_qkv(1, 1, 16, 64, torch.float16, seed=13), causal=True,
                        config=dict(BLOCK_M=16, BLOCK_N=32, num_warps=4, num_stages=1))


@pytest.mark.parametrize("causal", [False, True])
def test_backward_pytorch_path(causal):
    q, k, v = (t.requires_grad_() for t in _qkv(1, 4, 45, 32, torch.float32, seed=14, hk=2))
    do = randn(1, 4, 45, 32, seed=17)
    flash_attention(q, k, v, causal, backward="torch").backward(do)
    refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    attention_reference(*refs, causal).backward(do.double())
    for t, r, name in zip((q, k, v), refs, "qkv"):
        assert_close(t.grad, r.grad, torch.float32, scale=FP32_SCALE * 10, name=f"d{name}")


def test_module_wrapper():
    from effilab.ops.modules import FlashAttention

    q, k, v = _qkv(1, 2, 33, 64, torch.float16, seed=18)
    expected = attention_reference(q.double(), k.double(), v.double(), True)
    assert_close(FlashAttention(causal=True)(q, k, v), expected, torch.float16)


GPU_CASES = [(128, None)] + [(128, c) for c in fa.CONFIGS] + [(64, None), (64, fa.CONFIGS[-2])]


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim,config", GPU_CASES)
def test_gpu_bf16_against_sdpa(causal, head_dim, config):
    b, h, s = 2, 8, 1024 + 37  # ragged end
    q, k, v = (randn(b, h, s, head_dim, dtype=torch.bfloat16, seed=20 + i, device="cuda") for i in range(3))
    o, lse = flash_attention(q, k, v, causal, return_lse=True, config=config)
    o_ref, lse_ref = attention_reference(q, k, v, causal, return_lse=True)  # fp32 math on the GPU
    assert_close(o, o_ref.float(), torch.bfloat16, name="o")
    assert_close(lse, lse_ref, torch.bfloat16, name="lse")
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert (o.float() - sdpa.float()).abs().max().item() < 0.03


@pytest.mark.gpu
@pytest.mark.skipif(not fa.tma_available(), reason="this Triton has no tensor descriptors")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config", fa.TMA_CONFIGS + fa.PIPELINE_CONFIGS)
def test_gpu_bf16_tma(causal, config):
    b, h, s, d = 2, 8, 1024 + 37, 128
    q, k, v = (randn(b, h, s, d, dtype=torch.bfloat16, seed=40 + i, device="cuda") for i in range(3))
    o, lse = flash_attention(q, k, v, causal, return_lse=True, config=config)
    o_ref, lse_ref = attention_reference(q, k, v, causal, return_lse=True)
    assert_close(o, o_ref.float(), torch.bfloat16, name="o")
    assert_close(lse, lse_ref, torch.bfloat16, name="lse")


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_bf16_real_shape(causal):
    q, k, v = (randn(4, 32, 4096, 128, dtype=torch.bfloat16, seed=30 + i, device="cuda") for i in range(3))
    o = flash_attention(q, k, v, causal)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert (o.float() - ref.float()).abs().max().item() < 0.03
