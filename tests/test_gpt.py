"""The tiny GPT of effilab.models: shapes, causality, masked/summed losses, counts, hooks, RNG."""
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from effilab.models import GPT, PRESETS, GPTConfig

TINY = dict(block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster, and far more robust when other
    processes share the 2 CPU cores (2 spinning OpenMP threads on a busy core slow down ~10x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **kw):
    return GPT(GPTConfig(**{**TINY, **kw}), seed=seed)


def rand_idx(B=3, T=16, seed=0):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_initial_loss():
    m = tiny()
    x, y = rand_idx(seed=1), rand_idx(seed=2)
    logits, loss = m(x, y)
    assert logits.shape == (3, 16, 256)
    assert loss.shape == () and loss.dtype == torch.float32
    # Small initial weights: the prediction is close to uniform over 256 bytes.
    assert abs(loss.item() - math.log(256)) < 0.1
    logits, none = m(x)
    assert none is None and logits.shape == (3, 16, 256)


def test_too_long_sequence_raises():
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(rand_idx(T=33))


def test_causality_future_tokens_do_not_change_past_logits():
    m = tiny().eval()
    x = rand_idx(B=2, T=20, seed=3)
    k = 11
    x2 = x.clone()
    x2[:, k] = (x2[:, k] + 1) % 256
    x2[:, k + 3:] = rand_idx(B=2, T=20 - k - 3, seed=4)
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(x2)
    assert torch.equal(a[:, :k], b[:, :k]) or torch.allclose(a[:, :k], b[:, :k], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, k], b[:, k], atol=1e-4)  # the changed position itself does change


def test_masked_loss_equals_loss_on_unpadded_sequences():
    m = tiny().eval()
    B, T = 4, 24
    lengths = [24, 5, 17, 1]
    x, y = rand_idx(B, T, seed=5), rand_idx(B, T, seed=6)
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    with torch.no_grad():
        _, masked = m(x, y, loss_mask=mask)
        total, count = 0.0, 0
        for b, L in enumerate(lengths):  # each sequence alone, no padding at all
            _, s, n = m(x[b:b + 1, :L], y[b:b + 1, :L], reduction="sum")
            total += s.item()
            count += int(n)
        # whatever sits in the padding must not matter
        x_junk = torch.where(mask.bool(), x, rand_idx(B, T, seed=7))
        y_junk = torch.where(mask.bool(), y, rand_idx(B, T, seed=8))
        _, masked_junk = m(x_junk, y_junk, loss_mask=mask)
        _, unmasked = m(x, y)
    assert count == sum(lengths)
    assert masked.item() == pytest.approx(total / count, rel=1e-5)
    assert masked_junk.item() == pytest.approx(masked.item(), rel=1e-5)
    assert abs(unmasked.item() - masked.item()) > 1e-4  # the mask is not a no-op


def test_sum_reduction_is_mean_times_count():
    m = tiny()
    x, y = rand_idx(seed=9), rand_idx(seed=10)
    mask = (torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) > 0.4).long()
    for lm in (None, mask):
        _, mean = m(x, y, loss_mask=lm)
        _, s, n = m(x, y, loss_mask=lm, reduction="sum")
        expected_n = 3 * 16 if lm is None else int(mask.sum())
        assert n.dtype == torch.int64 and int(n) == expected_n
        assert s.item() == pytest.approx(mean.item() * expected_n, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        m(x, y, reduction="avg")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [TINY, PRESETS["cpu-tiny"], dict(block_size=16, n_layer=3, n_head=4, n_embd=48)])
def test_parameter_count_matches_formula(shape, bias):
    cfg = GPTConfig(**shape, bias=bias)
    m = GPT(cfg)
    C, V, T, L = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.n_layer
    per_block = 12 * C * C + (13 * C if bias else 2 * C)
    total = V * C + T * C + L * per_block + (2 * C if bias else C)
    assert m.num_params() == total == GPT.param_formula(cfg)["total"]
    assert m.num_params(exclude_embeddings=True) == total - V * C - T * C
    # the lm head is tied to the token embedding: one matrix, counted once
    assert m.lm_head.weight is m.wte.weight
    assert sum(p.numel() for p in m.state_dict().values()) == total + V * C  # state dict lists it twice


def test_gpu_presets_have_the_intended_size():
    # Formula only: the big models are not instantiated on the CPU.
    assert GPT.param_formula(GPTConfig.preset("gpu-real"))["total"] == 86_039_040
    assert GPTConfig.preset("gpu-deep16").n_layer == 16
    assert GPT.param_formula(GPTConfig.preset("cpu-tiny"))["total"] < 200_000


def test_flops_per_token_formula():
    m = GPT(GPTConfig.preset("cpu-tiny"))
    cfg = m.config
    C, L, T = cfg.n_embd, cfg.n_layer, cfg.block_size
    n_matmul = m.num_params() - T * C  # all but the position embedding (tied head included)
    assert m.flops_per_token() == 6 * n_matmul + 12 * L * cfg.n_head * cfg.head_dim * T
    # the attention term is linear in the context length: 12 L C per extra token of context
    assert m.flops_per_token(2 * T) - m.flops_per_token(T) == 12 * L * C * T
    # cpu-small worked out by hand: N = 4 (12 * 128^2 + 13 * 128) + 2 * 128 + 256 * 128 = 826,112;
    # 6 N = 4,956,672; attention 12 * 4 layers * 4 heads * 32 * 128 = 786,432
    assert GPT(GPTConfig.preset("cpu-small")).flops_per_token() == 5_743_104.0


def test_deterministic_init_from_seed_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = tiny(seed=0), tiny(seed=0), tiny(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert not torch.equal(a.blocks[0].attn.c_attn.weight, c.blocks[0].attn.c_attn.weight)
    # GPT-2 init: residual projections are scaled down by sqrt(2 L)
    std_proj = a.blocks[0].mlp.c_proj.weight.std().item()
    std_fc = a.blocks[0].mlp.c_fc.weight.std().item()
    assert std_proj == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.1)
    assert std_fc == pytest.approx(0.02, rel=0.1)
    assert torch.all(a.blocks[0].ln_1.weight == 1) and torch.all(a.blocks[0].attn.c_attn.bias == 0)


def test_presets_and_bad_names():
    cfg = GPTConfig.preset("cpu-small", dropout=0.1)
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.dropout) == (4, 128, 128, 0.1)
    assert GPTConfig.preset("gpu-real").n_embd == 768
    with pytest.raises(ValueError) as e:
        GPTConfig.preset("gpu-huge")
    for name in PRESETS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(TypeError):
        GPTConfig.preset("cpu-tiny", n_layers=3)  # typo in a field name


def test_block_wrapper_hook():
    m = tiny()
    x, y = rand_idx(seed=11), rand_idx(seed=12)
    _, ref = m(x, y)
    ref.backward()
    ref_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)

    calls = []

    def ckpt(block, h):
        calls.append(block)
        return checkpoint(block, h, use_reentrant=False)

    m.set_block_wrapper(ckpt)
    _, loss = m(x, y)
    loss.backward()
    assert calls == list(m.blocks)  # once per block, in order
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for p, g in zip(m.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, atol=1e-6)

    calls.clear()
    with m.block_wrapper(ckpt, layers=[1]):
        m(x)
    assert calls == [m.blocks[1]]
    calls.clear()
    m.set_block_wrapper(None)
    m(x)
    assert calls == []
    with pytest.raises(ValueError):
        m.set_block_wrapper(ckpt, layers=[5])


def _grads_with_dropout(wrapper):
    m = tiny(dropout=0.3).train()
    m.set_block_wrapper(wrapper)
    x, y = rand_idx(seed=13), rand_idx(seed=14)
    torch.manual_seed(0)
    _, loss = m(x, y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in m.parameters()])


def test_dropout_uses_torch_rng_so_checkpointing_must_preserve_it():
    base_loss, base = _grads_with_dropout(None)
    l1, g1 = _grads_with_dropout(lambda b, h: checkpoint(b, h, use_reentrant=False, preserve_rng_state=True))
    l2, g2 = _grads_with_dropout(lambda b, h: checkpoint(b, h, use_reentrant=False, preserve_rng_state=False))
    assert l1 == pytest.approx(base_loss, rel=1e-6) and l2 == pytest.approx(base_loss, rel=1e-6)
    assert torch.allclose(g1, base, atol=1e-6)
    assert not torch.allclose(g2, base, atol=1e-4)  # recomputed with other dropout masks
    # the same global seed gives the same masks; eval mode turns dropout off
    _, again = _grads_with_dropout(None)
    assert torch.equal(again, base)
    m = tiny(dropout=0.3).eval()
    x = rand_idx(seed=15)
    with torch.no_grad():
        assert torch.equal(m(x)[0], m(x)[0])


def test_generate_appends_tokens():
    m = tiny()
    out = m.generate(rand_idx(B=2, T=4), 5, generator=torch.Generator().manual_seed(0), top_k=10)
    assert out.shape == (2, 9) and out.dtype == torch.int64
    assert m.training  # mode restored
