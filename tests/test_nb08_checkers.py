"""Notebook 08's checkers, beyond what tests/test_examples.py checks for every notebook: the
mistakes a student makes in each kernel lose exactly the groups that cover them, with a message
that points at the fix."""
import json
from pathlib import Path

import pytest
import torch

from effilab.grading import check
from effilab.grading.nbcode import solution_namespace

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "solutions" / "08_operator_fusion.ipynb"
BUGS = json.loads((ROOT / "grader" / "examples" / "08_operator_fusion" / "bugs.json").read_text())


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(NB)


def variant(cell: str, old: str, new: str) -> dict:
    """The solution namespace with ``old`` replaced by ``new`` in the solution cell ``cell``."""
    return solution_namespace(NB, {cell: (old, new)})


def failed(v):
    """Indices of the failed groups, in the order the spec lists them."""
    return [i for i, g in enumerate(v.groups) if not g.passed]


def test_rms_norm_eps_outside_the_root_loses_only_the_eps_group_on_hidden_inputs_too():
    bug = next(b for b in BUGS if b["cell"] == "rms_norm_solution")
    ns = variant(bug["cell"], bug["old"], bug["new"])
    v = check("rms_norm", ns["rms_norm"], suite="hidden", seed=12345, verbose=False)
    assert failed(v) == [3] and v.points == 2.25, v.report()  # rows of 1 element must not trip over eps


def test_rms_norm_mean_over_the_block_fails_only_odd_row_lengths():
    ns = variant("rms_norm_solution", "mean_sq = tl.sum(x * x, axis=1) / n_cols",
                 "mean_sq = tl.sum(x * x, axis=1) / BLOCK_N")
    v = check("rms_norm", ns["rms_norm"], verbose=False)
    assert failed(v) == [1, 2], v.report()
    assert "true row length" in v.report()


def test_rms_norm_output_in_fp32_for_half_inputs_is_rejected(ref):
    v = check("rms_norm", lambda x, w, eps=1e-6: ref["rms_norm"](x.float(), w.float(), eps), verbose=False)
    assert failed(v) == [2] and "dtype" in v.report()


def test_flash_attention_without_causal_mask_fails_causal_groups():
    ns = variant("flash_attention_solution", "keep = keep & (offs_n[None, :] <= offs_m[:, None])", "keep = keep")
    v = check("flash_attention", ns["flash_attention"], verbose=False)
    assert failed(v) == [2, 3], v.report()
    assert "causal" in v.report()


def test_cross_entropy_without_max_subtraction_overflows():
    ns = variant("cross_entropy_solution", "m_safe = tl.where(m_new == float(\"-inf\"), 0.0, m_new)",
                 "m_safe = m_new * 0.0")
    v = check("cross_entropy", ns["cross_entropy"], verbose=False)
    assert 2 in failed(v), v.report()


def test_cross_entropy_must_return_a_0dim_fp32_tensor(ref):
    v = check("cross_entropy", lambda x, t: ref["cross_entropy"](x, t).item(), verbose=False)
    assert v.points == 0 and "0-dim float32" in v.report()


def test_swiglu_backward_swapped_gradients_fail(ref):
    v = check("swiglu_backward", lambda a, b, g: ref["swiglu_backward"](a, b, g)[::-1], verbose=False)
    assert v.points == 0 and "da" in v.report()


def test_unimplemented_stub_says_so():
    def stub(*a, **k):
        raise NotImplementedError()

    v = check("flash_attention", stub, verbose=False)
    assert v.points == 0 and "not filled in yet" in v.report()


def test_count_bytes_shows_eager_rmsnorm_moves_ten_times_the_fused_bytes():
    from effilab.grading.specs.nb08 import rms_norm_eager
    from effilab.roofline import count_bytes

    x = torch.randn(64, 512, dtype=torch.bfloat16)
    w = torch.ones(512, dtype=torch.bfloat16)
    y, ops = count_bytes(rms_norm_eager, x, w)
    assert torch.equal(y, rms_norm_eager(x, w))
    eager = sum(o.total for o in ops)
    assert len(ops) >= 6 and eager >= 8 * (2 * x.numel() * 2)


def test_swiglu_large_inputs_stay_within_their_label():
    """'|a| up to 80': beyond it exp(-a) overflows fp32 and a correct kernel prints overflow warnings."""
    from effilab.grading.specs.nb08 import _swiglu_inputs

    for s in range(5):
        a, b = _swiglu_inputs(s, (1823, 781), torch.float32, "cpu", big=True)
        assert float(a.abs().max()) == 80.0 and float(b.abs().max()) < 10


@pytest.mark.parametrize("suite,seed", [("public", 0), ("hidden", 12345), ("hidden", 777)])
def test_cross_entropy_without_the_rescale_fails_the_online_softmax_group_on_every_key(suite, seed):
    """The group whose hint is the rescale must catch its omission for any course secret: each row's
    max sits in its last chunk, so the running max always grows after the first one."""
    ns = variant("cross_entropy_solution", "d = d * tl.exp(m - m_safe) + tl.sum(", "d = d + tl.sum(")
    v = check("cross_entropy", ns["cross_entropy"], suite=suite, seed=seed, verbose=False)
    assert 2 in failed(v), v.report()
    assert "rescale" in v.groups[2].hint


@pytest.mark.parametrize("name", ["rms_norm", "swiglu", "swiglu_backward", "cross_entropy", "flash_attention"])
def test_reference_kernels_pass_with_nothing_captured(ref, name):
    """A correct kernel passes silently: no warning from its own masked lanes (log(0) of ignored rows,
    exp overflow of large |a|) shows under its PASS, here in Triton's interpreter on a CPU too."""
    v = check(name, ref[name], verbose=False)
    text = v.report()
    assert v.points == v.max_points and "captured while your code ran" not in text, text
