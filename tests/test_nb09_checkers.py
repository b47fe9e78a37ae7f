"""Notebook 09's checkers and helpers, beyond what tests/test_examples.py checks for every notebook:
what the counting backend and the log capture really record, that each way of cheating the
compile-based checks (Dynamo config tricks, an eager fallback, a kernel outside the operator
system) loses the group that covers it, the tolerances of the training-step judge, and that every
run's observation crosses the grader's wire format."""
from pathlib import Path

import pytest
import torch

from effilab.compile_models import BreakyBlock, TinyLM
from effilab.compiling import (CountingBackend, Kernel, break_even_steps, dynamo_logs, fresh_namespace, graph_breaks,
                               kernels_in, matmul_count)
from effilab.grading import check, get, wire
from effilab.grading.calls import Problem
from effilab.grading.core import Case, judge_case, key_for
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb09

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "solutions" / "09_torch_compile.ipynb"


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(NB)


def variant(cell: str, old: str, new: str) -> dict:
    return solution_namespace(NB, {cell: (old, new)})


def failed(v):
    return [i for i, g in enumerate(v.groups) if not g.passed]


def public_cases(name: str):
    ex = get(name)
    return ex, ex.cases("public", key_for(ex, "public"))


def first_seed(name: str, fn) -> dict[int, str]:
    """{group index: failure} for the first case of every group: one seed, one run (the groups share
    it), a fifth of a full check's compile time."""
    ex, groups = public_cases(name)
    bad = {}
    for gi, g in enumerate(groups):
        case = g.cases[0]
        out = ex.run(fn, case)
        r = judge_case(ex, out, case, None if isinstance(out, Problem) else ex.expect(case))
        if not r.ok:
            bad[gi] = r.problem + " " + r.hint
    return bad


# ---------------------------------------------------------------------------------------------- helpers
def test_counting_backend_records_graphs_runs_and_aot_graphs():
    counter = CountingBackend("aot_eager")
    x = torch.randn(5, 7, requires_grad=True)
    f = torch.compile(lambda t: (t.sin() @ t.t()).relu().sum(), backend=counter)
    f(x).backward()
    f(x)
    assert counter.compiles == 1 and counter.runs == 2
    assert [g.runs for g in counter.forward] == [2] and [g.runs for g in counter.backward] == [1]
    assert matmul_count(counter.graphs[0].ops) == 1 and matmul_count(counter.forward[0].ops) == 1
    assert "sin" in counter.graphs[0].code
    counter.reset_counts()
    assert counter.runs == 0 and counter.compiles == 1
    with pytest.raises(ValueError, match="not one of"):
        CountingBackend("cudagraphs")


def test_graph_breaks_reports_each_break_site_and_nothing_reaches_stderr(capfd):
    blk = BreakyBlock(seed=0, log=False)
    x = torch.randn(2, 5, 24) * 4
    report = graph_breaks(blk, x, torch.ones(2, 5, dtype=torch.bool))
    err = capfd.readouterr().err
    assert err == "", err
    text = str(report)
    assert len(report.breaks) == 2 and report.n_graphs == 3, text  # .item() and nonzero (log=False: no print)
    assert "item()" in report.breaks[0].reason and "compile_models.py" in report.breaks[0].where
    assert "nonzero" in report.breaks[1].reason


def test_dynamo_logs_collects_recompile_reasons_and_restores_torch_logging():
    import logging

    def handlers():
        return {n: list(lg.handlers) for n, lg in logging.Logger.manager.loggerDict.items()
                if n.startswith("torch") and isinstance(lg, logging.Logger)}

    before = handlers()
    torch._dynamo.reset()
    f = torch.compile(lambda t: t * 2, backend="eager")
    with dynamo_logs("recompiles") as log:
        f(torch.ones(3))
        f(torch.ones(4))
    torch._dynamo.reset()
    assert any("size mismatch" in m for m in log), log
    assert handlers() == before


def test_kernels_in_splits_cpp_and_triton_modules():
    module = '''
cpp_fused_add_mean_mul_pow_rsqrt_0 = async_compile.cpp_pybinding(['const float*'], r\'\'\'
extern "C" void kernel(const float* in_ptr0) {}
\'\'\')
triton_per_fused__to_copy_add_mean_1 = async_compile.triton('triton_per_fused__to_copy_add_mean_1', \'\'\'
import triton
@triton.jit
def triton_per_fused__to_copy_add_mean_1(in_ptr0): pass
\'\'\', device_str='cuda')
'''
    ks = kernels_in(module)
    assert [(k.name, k.language) for k in ks] == [("cpp_fused_add_mean_mul_pow_rsqrt_0", "c++"),
                                                   ("triton_per_fused__to_copy_add_mean_1", "triton")]
    assert ks[0].fused_ops == ["add", "mean", "mul", "pow", "rsqrt"]
    assert 'extern "C"' in ks[0].source and "@triton.jit" in ks[1].source
    assert Kernel("extern_kernels_mm", "triton", "").fused_ops == []


def test_break_even_and_fresh_namespaces():
    assert break_even_steps(24.5, 30.6, 24.6) == pytest.approx(24.5 / 0.006)
    assert break_even_steps(10.0, 5.0, 6.0) == float("inf")
    with pytest.raises(ValueError, match="positive"):
        break_even_steps(1.0, 0.0, 1.0)
    a, b = fresh_namespace("t09"), fresh_namespace("t09")
    assert a != b and a.startswith("t09_")
    with pytest.raises(ValueError, match="identifier"):
        fresh_namespace("bad name")


def test_tiny_lm_is_causal_so_right_padding_keeps_the_real_logits():
    lm = TinyLM(seed=3)
    idx = torch.randint(0, 64, (2, 9))
    padded = torch.cat([idx, torch.zeros(2, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.allclose(lm(padded)[:, :9], lm(idx), atol=1e-6)
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.zeros(1, 129, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- 1. breaks
def test_block_cases_put_max_h_on_the_intended_side_of_the_clip():
    ex = get("FixedBlock")
    for suite, seed in (("public", 0), ("hidden", 7)):
        for case in ex.cases(suite, key_for(ex, suite, seed))[0].cases:
            cfg, big, small, padded, mask = case.args
            assert nb09._peak(cfg, big.cpu()) > 1.25 * cfg["clip"]
            assert nb09._peak(cfg, small.cpu()) < 0.8 * cfg["clip"] and nb09._peak(cfg, padded.cpu()) < 0.8 * cfg["clip"]
            assert mask.any(1).all() and not mask.all()  # every row has a real token, some padding somewhere


def test_capturing_scalars_by_config_does_not_count():
    """Turning on capture_scalar_outputs (or capture_dynamic_output_shape_ops) makes a block that keeps
    .item() one graph; the static check refuses the setting, and the run puts both back to their
    defaults around explain, so the break is still counted."""
    from grader.extract import static_problems

    src = "torch._dynamo.config.capture_scalar_outputs = True\nclass FixedBlock(BreakyBlock): pass"
    assert static_problems(src, (), get("FixedBlock").forbidden_source)

    class ItemBlock(BreakyBlock):
        def forward(self, x, mask):
            h = self.fc2(torch.nn.functional.gelu(self.fc1(x)))
            h = h * (self.clip / h.abs().max().item())  # one graph only with capture_scalar_outputs=True
            m = mask.unsqueeze(-1).to(h.dtype)
            return x + h - (h * m).sum(dim=(0, 1)) / m.sum()

    with torch._dynamo.config.patch(capture_scalar_outputs=True):  # as if the student's cell had set it
        bad = first_seed("FixedBlock", ItemBlock)
    assert 0 in bad and "graph break" in bad[0], bad


def test_functions_put_in_the_graph_whole_are_named():
    def helper(t):
        return t * 2

    helper.__module__ = "__main__"
    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(helper, (x,)))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert nb09._foreign_targets([gm]) == ["helper"]
    assert nb09._foreign_targets([torch.fx.symbolic_trace(lambda t: torch.relu(t) + 1)]) == []


# ---------------------------------------------------------------------------------------------- 2. recompiles
def _lengths_out(per_call, max_ops=20):
    return {"calls": per_call, "logits": [], "max_ops": max_ops}


def test_recompile_judge_counts_after_the_first_call_and_requires_compiled_calls():
    ex, groups = public_cases("compile_for_lengths")
    lengths, batches = groups[0].cases[0], groups[1].cases[0]
    dynamic = _lengths_out([[1, 1], [0, 1], [0, 1], [0, 1], [0, 1]])
    automatic = _lengths_out([[1, 1], [1, 1], [0, 1], [1, 1], [0, 1]])
    assert ex.judge(dynamic, lengths) is None and ex.judge(dynamic, batches) is None
    assert ex.judge(automatic, lengths) is None
    assert "2 recompiles" in ex.judge(automatic, batches)
    assert "nothing was compiled" in ex.judge(_lengths_out([[0, 0]] * 5), lengths)
    assert "fell back to eager" in ex.judge(_lengths_out([[1, 1], [0, 1], [0, 0], [0, 0], [0, 0]]), lengths)
    assert "operations" in ex.judge(_lengths_out([[1, 1]] + [[0, 1]] * 4, max_ops=2), lengths)


def test_a_recompile_limit_of_one_is_an_eager_fallback_not_a_pass():
    def compile_for_lengths(model, backend="inductor"):
        torch._dynamo.config.recompile_limit = 1  # later shapes would run eagerly, "without recompiles"
        return torch.compile(model, backend=backend)

    with torch._dynamo.config.patch(recompile_limit=8):
        bad = first_seed("compile_for_lengths", compile_for_lengths)
    assert sorted(bad) == [0, 1] and "fell back to eager" in bad[1], bad


def test_padding_to_a_fixed_length_avoids_recompiles_but_the_logits_must_be_sliced_back():
    """Padding every batch to max_len is a fair way to keep the length static (the recompile groups
    pass: only the batch size recompiles, once); returning the padded logits costs the outputs group."""
    def compile_for_lengths(model, backend="inductor"):
        compiled = torch.compile(model, backend=backend)
        return lambda idx: compiled(torch.nn.functional.pad(idx, (0, model.max_len - idx.shape[1])))

    bad = first_seed("compile_for_lengths", compile_for_lengths)
    assert sorted(bad) == [2] and "shape" in bad[2], bad


# ---------------------------------------------------------------------------------------------- 3. custom op
def _ln_case(i=1):
    ex, groups = public_cases("make_layer_norm_op")
    return groups[0].cases[i].args  # i = 1: float16, 3-D


def test_opcheck_group_catches_a_fake_kernel_with_the_wrong_dtype(ref):
    ns = variant("make_layer_norm_op_solution", "stats = x.new_empty(rows, dtype=torch.float32)",
                 "stats = x.new_empty(rows)")
    namespace = fresh_namespace("t09")
    op = ns["make_layer_norm_op"](namespace)
    x, w, b, dy, fc = _ln_case(1)
    got = nb09._ln_opcheck(op, namespace, x, w, b, dy)
    assert got["ops"] and any("Dtypes torch.float32 and torch.float16" in f for f in got["failures"]), got


def test_opcheck_group_catches_a_kernel_that_writes_its_input():
    from effilab.ops.layernorm import layer_norm_forward

    namespace = fresh_namespace("t09")

    @torch.library.custom_op(f"{namespace}::ln", mutates_args=())
    def ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        x.add_(1.0)  # an undeclared in-place write (LayerNorm does not even see it: it is shift-invariant)
        return layer_norm_forward(x, w, b, eps)[0].view(x.shape)

    @ln.register_fake
    def _(x, w, b, eps):
        return x.new_empty(x.shape)

    x, w, b, dy, fc = _ln_case(0)
    got = nb09._ln_opcheck(lambda *a: ln(*a), namespace, x, w, b, dy)
    assert any("test_schema" in f and "mutated" in f for f in got["failures"]), got


def test_a_kernel_launched_from_python_is_not_an_operator():
    """notebook 08's autograd.Function: right in eager, but no operator for opcheck and no one-graph compile."""
    from effilab.ops import layer_norm

    namespace = fresh_namespace("t09")
    x, w, b, dy, fc = _ln_case(0)
    assert nb09._ln_opcheck(layer_norm, namespace, x, w, b, dy)["ops"] == []
    got = nb09._ln_compiled(layer_norm, namespace, x, w, b, dy, fc)
    # on a CPU Dynamo fails inside Triton's interpreter; on a GPU it may trace the launch, but no operator
    bad = got.message if isinstance(got, nb09.Problem) else nb09._judge_compiled(got, x, w, b, dy, fc)
    assert bad and ("fullgraph=True" in bad or "does not call your operator" in bad), bad


# ---------------------------------------------------------------------------------------------- 4. step
def test_a_step_without_zero_grad_fails_losses_and_parameters():
    ns = variant("make_compiled_step_solution", "        optimizer.zero_grad(set_to_none=True)\n", "")
    bad = first_seed("make_compiled_step", ns["make_compiled_step"])
    assert sorted(bad) == [0, 1] and "zero_grad" in bad[1], bad


def test_parameter_tolerance_allows_adam_sign_flips_but_not_a_wrong_update():
    torch.manual_seed(0)
    r = torch.randn(4000)
    expected = {"names": ["w"], "params": [r], "losses": [1.0]}
    flips = r.clone()
    flips[:2] += 2 * nb09.STEP_LR  # 0.05 %: near-zero gradients whose sign differs between two correct runs
    assert nb09._judge_params({"params": [flips], "dtypes": ["torch.float32"]}, expected, False) is None
    wrong = r.clone()
    wrong[:80] += nb09.STEP_LR  # 2 %: a different update
    assert "differs" in nb09._judge_params({"params": [wrong], "dtypes": ["torch.float32"]}, expected, False)
    assert "bfloat16" in nb09._judge_params({"params": [r], "dtypes": ["torch.bfloat16"]}, expected, False)


# ---------------------------------------------------------------------------------------------- transport
@pytest.mark.parametrize("name", ["FixedBlock", "compile_for_lengths", "make_layer_norm_op", "make_compiled_step"])
def test_every_observation_crosses_the_wire_and_judges_the_same(ref, name):
    ex, groups = public_cases(name)
    case = groups[-1].cases[0]
    out = ex.run(ref[name], case)
    back = wire.loads(wire.dumps(out))
    for g in groups:
        c = Case(g.cases[0].label, case.args, case.kwargs, g.cases[0].meta)
        assert ex.judge(back, c, ex.expect(c)) is None, g.name


def test_the_timed_step_is_built_after_dynamo_forgets_what_earlier_cells_compiled(monkeypatch):
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    f = torch.compile(lambda x: x * 2 + 1, backend=backend)
    f(torch.ones(3))
    f(torch.ones(3))
    assert len(compiles) == 1
    nb09.cold_start()
    f(torch.ones(3))
    assert len(compiles) == 2, "cold_start must drop the frames compiled before it"

    ex = get("make_compiled_step")
    part = ex.speed_part(key_for(ex, "public"))
    order = []
    monkeypatch.setattr(nb09, "cold_start", lambda: order.append("cold start"))
    step = part.call(lambda model, opt: order.append("student builds the step") or (lambda batch: batch), (None, None, 7))
    assert order == ["cold start", "student builds the step"] and step() == 7
    part.call(None, (None, None, 7))  # the eager baseline: no reset, nothing of the student's runs
    assert order == ["cold start", "student builds the step"]


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_reference_step_is_faster_than_eager_on_the_gpu(ref):
    v = check("make_compiled_step", ref["make_compiled_step"], "speed", verbose=False)
    assert v.points == v.max_points, v.report()


@pytest.mark.gpu
def test_reference_custom_op_runs_the_real_triton_kernels_on_the_gpu(ref):
    v = check("make_layer_norm_op", ref["make_layer_norm_op"], suite="hidden", seed=99, verbose=False)
    assert v.passed, v.report()
