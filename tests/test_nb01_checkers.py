"""Notebook 01's checkers: the reference solution (taken from solutions/, the single source) gets
every point; each classic mistake loses exactly the groups that cover it."""
import math
from pathlib import Path

import pytest
import torch

from effilab.grading import check
from effilab.grading.nbcode import exec_cells, solution_namespace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(ROOT / "solutions" / "01_float_formats.ipynb")


def failed(v):
    return sorted(g.name for g in v.groups if not g.passed)


# ---------------------------------------------------------------------------------------------- decompose
def test_decompose_subnormal_exponent_off_by_one(ref):
    good = ref["decompose"]

    def wrong(x, fmt):
        s, e, m, c = good(x, fmt)
        return s, torch.where(c <= 1, e - 1, e), m, c  # -bias instead of 1 - bias

    v = check("decompose", wrong, verbose=False)
    assert failed(v) == sorted(f"{f}: zeros and subnormals" for f in ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
    assert v.points == 2.0
    assert "1 - bias" in v.report()


def test_decompose_treats_e4m3_like_ieee(ref):
    good = ref["decompose"]
    ieee = dict(ref)

    def wrong(x, fmt):
        from dataclasses import replace
        return good(x, replace(fmt, has_inf=True)) if fmt.name == "fp8_e4m3" else good(x, fmt)

    v = check("decompose", wrong, verbose=False)
    # S.1111.xxx (xxx != 111) are normal numbers in e4m3fn, not NaN
    assert failed(v) == ["fp8_e4m3: normal numbers"]
    assert "e4m3" in v.report() and ieee


def test_decompose_sign_from_comparison(ref):
    good = ref["decompose"]

    def wrong(x, fmt):
        s, e, m, c = good(x, fmt)
        return (x.float() < 0).long(), e, m, c  # -0.0 and negative NaN get sign 0

    v = check("decompose", wrong, verbose=False)
    assert all(("zeros" in g or "NaN" in g) for g in failed(v)) and failed(v)


def test_decompose_wrong_return_type():
    v = check("decompose", lambda x, fmt: x, verbose=False)
    assert v.points == 0 and "tuple of four tensors" in v.report()


# ---------------------------------------------------------------------------------------------- round_to_bf16
def _bits(x):
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _to_bf16(rounded):
    rounded = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded)
    return rounded.to(torch.int16).view(torch.bfloat16)


def test_round_truncation_is_rejected():
    v = check("round_to_bf16", lambda x: _to_bf16(_bits(x) >> 16), verbose=False)
    assert "normal numbers" in failed(v) and "ties round to even" in failed(v)
    assert v.points < 3.0


# 121751464 is a course seed whose random "normal" and "subnormal" inputs once held exact ties, so
# this mistake also cost those groups; the generator now keeps ties in their own group
@pytest.mark.parametrize("suite,seed", [("public", 0), ("hidden", 121751464), ("hidden", 2024), ("hidden", 77)])
def test_round_ties_away_from_zero_loses_only_ties(suite, seed):
    v = check("round_to_bf16", lambda x: _to_bf16(torch.where(torch.isnan(x), 0x7FC0, (_bits(x) + 0x8000) >> 16)),
              suite=suite, seed=seed, verbose=False)
    assert failed(v) == ["odd 2-D shape 1823×781, all bit patterns", "ties round to even"]
    assert v.points == 2.0


def test_round_without_nan_guard_turns_low_payload_nan_into_inf():
    v = check("round_to_bf16", lambda x: _to_bf16((_bits(x) + 0x7FFF + ((_bits(x) >> 16) & 1)) >> 16), verbose=False)
    assert "infinities and NaNs" in failed(v)
    assert "0x7FC0" in v.report()


# ---------------------------------------------------------------------------------------------- stochastic rounding
def _sr_variant(ref, **kw):
    """A variant of the reference kernel and its launcher, run as notebook code (the grader gives
    points only to kernels defined in the notebook): changed mask bits, a fixed seed, half the output."""
    mask_bits = kw.get("mask_bits", 0xFFFF)
    fixed_seed = kw.get("fixed_seed")
    half = kw.get("half", False)
    src = f"""
@triton.jit
def kernel(x_ptr, out_ptr, n, seed, MASK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    bits = x.to(tl.uint32, bitcast=True)
    r = tl.randint(seed, offs).to(tl.uint32) & MASK
    y = (bits + r) >> 16
    y = tl.where(x != x, 0x7FC0, y)
    tl.store(out_ptr + offs, y.to(tl.uint16).to(tl.int16, bitcast=True), mask=m)

def launch(x, seed):
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    n = x.numel() // 2 if {half} else x.numel()
    kernel[(triton.cdiv(max(n, 1), 65536),)](x, out.view(torch.int16), n, {fixed_seed} if {fixed_seed is not None}
                                             else seed, MASK={mask_bits}, BLOCK=65536)
    return out
"""
    return exec_cells([(0, src)], namespace=dict(ref), label="variant")["launch"]


def test_sr_reference_variant_passes(ref):
    assert check("stochastic_round_bf16", _sr_variant(ref), verbose=False).passed


def test_sr_with_15_random_bits_is_biased(ref):
    v = check("stochastic_round_bf16", _sr_variant(ref, mask_bits=0x7FFF), verbose=False)
    assert failed(v) == ["unbiased: E[round(x)] = x (binomial test, false-alarm rate 1e-06)"]


def test_sr_ignoring_the_seed_is_caught(ref):
    v = check("stochastic_round_bf16", _sr_variant(ref, fixed_seed=0), verbose=False)
    assert failed(v) == ["same seed reproduces, another seed differs"]


def test_sr_round_to_nearest_is_biased_and_seed_independent():
    v = check("stochastic_round_bf16", lambda x, seed: x.to(torch.bfloat16), verbose=False)
    assert "same seed reproduces, another seed differs" in failed(v)
    assert any(g.startswith("unbiased") for g in failed(v))


def test_sr_that_writes_half_the_output_is_caught(ref):
    v = check("stochastic_round_bf16", _sr_variant(ref, half=True), verbose=False)
    assert v.points < 3.0
    assert "never written" in v.report()


# ---------------------------------------------------------------------------------------------- loss scaling
def test_underflow_fraction_counting_zeros_is_caught(ref):
    def wrong(g):
        return float(((g.half() == 0) & (g != 0)).sum()) / g.numel()

    v = check("underflow_fraction", wrong, verbose=False)
    assert failed(v) == ["zeros gradients"]


def test_underflow_fraction_must_be_a_fraction():
    v = check("underflow_fraction", lambda g: float(((g.half() == 0) & (g != 0)).sum()), verbose=False)
    assert "typical gradients" in failed(v) and "zeros gradients" in failed(v)


def test_loss_scale_naive_floor_fails_on_the_edge():
    v = check("max_safe_loss_scale", lambda g: 2.0 ** math.floor(math.log2(65504.0 / float(g.abs().max()))),
              verbose=False)
    assert failed(v) == ["boundary gradients"]


def test_loss_scale_returning_the_exponent_is_caught(ref):
    v = check("max_safe_loss_scale", lambda g: math.log2(ref["max_safe_loss_scale"](g)), verbose=False)
    assert v.points == 0


def test_a_wrong_result_for_a_nan_input_says_a_nan_is_allowed():
    from effilab.grading.specs.nb01 import _allowed

    nan, one = torch.tensor(float("nan")), torch.tensor(1.0 + 2 ** -10)
    assert _allowed(nan, torch.tensor(0x7F80), torch.tensor(0x7F81)) == "allowed: a NaN (any payload)"
    assert _allowed(one, torch.tensor(0x3F80), torch.tensor(0x3F81)) == "allowed 0x3F80 or 0x3F81"
    assert _allowed(torch.tensor(1.0), torch.tensor(0x3F80), torch.tensor(0x3F80)) == "allowed 0x3F80"
