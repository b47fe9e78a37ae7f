"""Notebook 08's checkers: the reference solution (taken from solutions/, the single source) gets
every correctness point on the public and hidden suites; each classic mistake loses exactly the
groups that cover it; speed and memory parts award nothing on a CPU and say why."""
import json
from pathlib import Path

import pytest
import torch

from effilab.grading import check
from effilab.grading.nbcode import exec_cells, is_setup, load_notebook, solution_namespace

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "solutions" / "08_operator_fusion.ipynb"
BUGS = json.loads((ROOT / "grader" / "examples" / "08_operator_fusion" / "bugs.json").read_text())
NAMES = ["rms_norm", "swiglu", "swiglu_backward", "cross_entropy", "flash_attention"]


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(NB)


def variant(cell: str, old: str, new: str) -> dict:
    """The solution namespace with ``old`` replaced by ``new`` in the solution cell ``cell``."""
    nb = load_notebook(NB)
    cells = []
    for i, c in enumerate(nb.cells):
        meta = c.get("metadata", {}).get("nbgrader", {})
        if c.cell_type != "code" or not (is_setup(c) or meta.get("solution")):
            continue
        src = c.source
        if meta.get("grade_id") == cell:
            assert old in src, f"{old!r} not in {cell}"
            src = src.replace(old, new)
        cells.append((i, src))
    return exec_cells(cells, label="nb08-variant")


def failed(v):
    """Indices of the failed groups, in the order the spec lists them."""
    return [i for i, g in enumerate(v.groups) if not g.passed]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("suite,seed", [("public", 0), ("hidden", 12345)])
def test_reference_gets_full_correctness_points(ref, name, suite, seed):
    v = check(name, ref[name], suite=suite, seed=seed, verbose=False)
    assert v.passed and v.points == v.max_points, v.report()
    assert len(v.groups) >= 3 and all(g.n_cases >= 5 for g in v.groups)


@pytest.mark.parametrize("name,part", [("rms_norm", "speed"), ("swiglu", "speed"), ("flash_attention", "speed"),
                                       ("cross_entropy", "memory"), ("flash_attention", "memory")])
def test_speed_and_memory_parts_on_cpu_award_nothing_and_say_why(ref, name, part):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    v = check(name, ref[name], part, verbose=False)
    assert v.points == 0 and v.max_points > 0
    assert "needs a CUDA GPU — not awarded here" in v.report()


# bugs.json: what each example mistake must cost (indices of the failed groups, points left of the max)
EXPECTED = {
    "rms_norm_solution": ("rms_norm", [3], 2.25),            # eps group only
    "cross_entropy_solution": ("cross_entropy", [1], 2.25),  # ignore_index group only
    "flash_attention_solution": ("flash_attention", [1, 2, 3], 0.75),  # every group with > 1 key block
}


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b["cell"])
def test_each_example_bug_loses_exactly_its_groups(bug, suite="public", seed=0):
    name, groups, points = EXPECTED[bug["cell"]]
    ns = variant(bug["cell"], bug["old"], bug["new"])
    v = check(name, ns[name], suite=suite, seed=seed, verbose=False)
    assert failed(v) == groups, v.report()
    assert v.points == points
    assert "hint:" in v.report()


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
