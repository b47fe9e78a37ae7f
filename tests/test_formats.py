"""effilab.formats: the format table, bit helpers, pattern generator and the eager SR baseline."""
import math

import pytest
import torch

from effilab.formats import (FORMATS, ValueClass, bf16_neighbours, bit_patterns, bits_of, fmt_of, format_table,
                             from_bits, stochastic_round_bf16_torch)


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_constants_agree_with_torch_finfo(name):
    f = FORMATS[name]
    fi = torch.finfo(f.dtype)
    assert f.bits == fi.bits
    assert f.max == float(fi.max)
    assert f.eps == float(fi.eps)
    assert f.smallest_normal == float(fi.smallest_normal)
    # the smallest subnormal is representable and half of it rounds to zero
    tiny = torch.tensor(f.smallest_subnormal, dtype=torch.float64).to(f.dtype)
    assert float(tiny) == f.smallest_subnormal
    assert fmt_of(f.dtype) is f


@pytest.mark.parametrize("name", list(FORMATS))
def test_bits_roundtrip(name):
    f = FORMATS[name]
    x = bit_patterns(f, n=5000, seed=1)
    b = bits_of(x)
    assert b.min() >= 0 and b.max() < (1 << f.bits)
    assert torch.equal(bits_of(from_bits(b, f)), b)


@pytest.mark.parametrize("name", list(FORMATS))
def test_bit_patterns_cover_every_class(name):
    f = FORMATS[name]
    v = bit_patterns(f, n=100_000, seed=3).to(torch.float64)
    assert v.numel() >= 100_000 or f.bits <= 16
    assert torch.isnan(v).any()
    assert (v == 0).any() and torch.signbit(v[v == 0]).any() and (~torch.signbit(v[v == 0])).any()
    sub = (v != 0) & (v.abs() < f.smallest_normal)
    assert int(sub.sum()) > 10
    assert torch.isinf(v).any() == f.has_inf
    if f.bits <= 16:  # exhaustive: every bit pattern appears
        assert bits_of(bit_patterns(f, n=0, seed=0)).unique().numel() == 1 << f.bits


def test_format_table_rows():
    rows = {r["format"]: r for r in format_table()}
    assert rows["bf16"]["max"] == pytest.approx(3.3895e38, rel=1e-4)
    assert rows["fp16"]["max"] == 65504.0
    assert rows["fp8_e4m3"]["max"] == 448.0
    assert rows["fp8_e5m2"]["max"] == 57344.0
    assert not rows["fp8_e4m3"]["has_inf"]


def test_value_class_codes():
    assert [int(c) for c in ValueClass] == [0, 1, 2, 3, 4]


def test_bf16_neighbours():
    x = torch.tensor([1.0, 1.0 + 2**-9, -1.0 - 2**-9, 0.0, float("inf")])
    lo, hi = bf16_neighbours(x)
    assert lo.tolist() == [0x3F80, 0x3F80, 0xBF80, 0x0000, 0x7F80]
    assert hi.tolist() == [0x3F80, 0x3F81, 0xBF81, 0x0000, 0x7F80]


def test_torch_stochastic_rounding_is_unbiased_and_a_neighbour():
    x = torch.full((200_000,), 1.0 + 0.3 * 2**-7)  # 30% of a bf16 gap above 1.0
    y = stochastic_round_bf16_torch(x, seed=0)
    assert y.dtype == torch.bfloat16
    assert set(y.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    frac_up = float((y.float() > 1.0).double().mean())
    sigma = math.sqrt(0.3 * 0.7 / x.numel())
    assert abs(frac_up - 0.3) < 6 * sigma
    nan = stochastic_round_bf16_torch(torch.tensor([float("nan"), float("-inf")]), 1)
    assert torch.isnan(nan[0]) and nan[1] == float("-inf")
    with pytest.raises(TypeError):
        stochastic_round_bf16_torch(torch.ones(3, dtype=torch.float16), 0)
