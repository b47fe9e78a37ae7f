"""grader.traps: every route to a forbidden name fails with a message naming the exercise's rule,
while the trusted checker (references taken at import) and the reference solutions keep working;
disarming restores everything.

Student code is exec'd after the traps are armed, as in the grading worker. This module binds
functions and classes only (never a module it might trap), since the alias scan rewrites the
namespaces of untrusted modules — this one included.
"""
import sys
import textwrap
from pathlib import Path

import pytest

from effilab.grading.keys import Key
import torch

from effilab.grading import core
from effilab.grading.nbcode import exec_cells, solution_namespace
from effilab.grading.provenance import checked, kernel_rule
from grader.traps import ALWAYS, COMPILERS, ForbiddenError, arm, names_for
import grader.verify  # noqa: F401,E402  (loaded before any trap is armed, as in a full test run)

ROOT = Path(__file__).resolve().parents[1]
NB01 = ROOT / "solutions" / "01_float_formats.ipynb"
NB08 = ROOT / "solutions" / "08_operator_fusion.ipynb"
SPEC_GLOBALS = {n: vars(__import__(f"effilab.grading.specs.{n}", fromlist=["x"])) for n in ("nb01", "nb08")}
ORIGINAL_RMS_NORM = torch.nn.functional.rms_norm

SETUP = """
import importlib, operator, sys
import effilab
import torch
import torch.nn.functional as F
"""


def student(src: str) -> dict:
    return exec_cells([(0, SETUP), (1, textwrap.dedent(src))], label="student")


@pytest.fixture
def rms_traps():
    armed = arm(names_for(core.get("rms_norm")), exercise="rms_norm")
    yield armed
    armed()


ROUTES = {
    "attribute": "F.rms_norm(x, (8,))",
    "computed getattr": "getattr(F, 'rms' + '_norm')(x, (8,))",
    "vars(module)[computed name]": "vars(F)['rms_' + 'norm'](x, (8,))",
    "operator.attrgetter": "operator.attrgetter('nn.functional.rms_norm')(torch)(x, (8,))",
    "keyword form": "F.rms_norm(input=x, normalized_shape=(8,), weight=None, eps=1e-6)",
    "keyword form of the class": "torch.nn.RMSNorm(normalized_shape=8, eps=1e-6)(x)",
    "the torch.* alias": "torch.rms_norm(x, [8])",
    "from-import after the trap": "__import__('torch.nn.functional', fromlist=['rms_norm']).rms_norm(x, (8,))",
    "importlib": "importlib.import_module('torch.nn.functional').rms_norm(x, (8,))",
    "the class's home module": "torch.nn.modules.normalization.RMSNorm(8)(x)",
    "subclass via type()": "type('Mine', (torch.nn.RMSNorm,), {})",
    "the class found by __subclasses__": "[c for c in torch.nn.Module.__subclasses__() if c.__name__ == 'RMSNorm'][0](8)",
    "an instance made without __init__": "object.__new__(torch.nn.RMSNorm).forward(x)",
    "torch.compile": "torch.compile(lambda y: y * 2)(x)",
    "torch._dynamo.optimize": "torch._dynamo.optimize('inductor')(lambda y: y)",
    "import of a forbidden module": "importlib.import_module('effilab.ops').rms_norm",
    "a submodule of a forbidden module": "importlib.import_module('effilab.ops.rmsnorm').rms_norm",
    "a forbidden module as a package attribute": "effilab.ops.rms_norm",
    "reloading a forbidden module": "importlib.reload(sys.modules['effilab.ops'])",
    "the grader": "importlib.import_module('grader.verify').verify_notebook",
    "the grader, imported anew": "importlib.import_module('grader.' + 'wire_never_loaded')",
    "the checker's specs": "importlib.import_module('effilab.grading.specs.nb08').rms_norm_eager",
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_to_a_forbidden_name_fails(rms_traps, route):
    ns = student(f"def route(x):\n    return {ROUTES[route]}\n")
    with pytest.raises(ForbiddenError, match="is forbidden in the rms_norm exercise"):
        ns["route"](torch.randn(3, 8))


@pytest.mark.parametrize("cell", [
    "from torch.nn.functional import rms_norm\nrms_norm(torch.randn(2, 4), (4,))",
    "from torch.nn.modules.normalization import RMSNorm",
    "from effilab.ops import rms_norm",
    "import effilab.ops.rmsnorm as r\nr.rms_norm",
    "from grader import verify",
    "class Mine(torch.nn.RMSNorm):\n    pass",
    "@torch.compile\ndef f(x):\n    return x * 2",
])
def test_a_cell_reaching_a_forbidden_name_fails_when_it_runs(rms_traps, cell):
    with pytest.raises(ForbiddenError, match="forbidden in the rms_norm exercise"):
        student(cell)


def test_the_grader_is_trapped_whether_or_not_it_was_loaded_before(rms_traps):
    assert "grader.verify" in sys.modules  # loaded before the traps (top of this file), as in a full run

    with pytest.raises(ForbiddenError, match="forbidden in the rms_norm exercise"):
        student("import importlib\nimportlib.import_module('grader.verify').verify_notebook")
    with pytest.raises(ForbiddenError, match="forbidden in the rms_norm exercise"):
        student("from grader import verify")


def test_library_code_probing_every_module_gets_attribute_error(rms_traps):
    """pickle.whichmodule (Inductor pickles graphs on a GPU) walks sys.modules with getattr; from
    library code a trapped module answers AttributeError, so the walk goes on — and finds nothing."""
    import pickle

    def orphan():
        pass
    orphan.__module__ = None
    orphan.__qualname__ = "no_such_function_anywhere"
    assert pickle.whichmodule(orphan, orphan.__qualname__) == "__main__"
    assert not hasattr(sys.modules["grader"], "verify")


def test_other_library_code_keeps_working(rms_traps):
    x = torch.randn(3, 8)
    assert torch.nn.LayerNorm(8)(x).shape == (3, 8)  # not forbidden, though it lives beside RMSNorm
    assert torch.nn.functional.layer_norm(x, (8,)).shape == (3, 8)
    assert core.get("rms_norm").name == "rms_norm"  # the checker's registry, through effilab.grading


def test_disarming_restores_everything():
    import importlib
    import sys

    real_ops = sys.modules.get("effilab.ops") or importlib.import_module("effilab.ops")
    armed = arm(names_for(core.get("rms_norm")), exercise="rms_norm")
    assert sys.modules["effilab.ops"] is not real_ops
    armed()
    x = torch.randn(3, 8)
    assert torch.nn.functional.rms_norm is ORIGINAL_RMS_NORM
    assert torch.nn.RMSNorm(8)(x).shape == (3, 8)
    assert issubclass(type("Mine", (torch.nn.RMSNorm,), {}), torch.nn.RMSNorm)
    assert sys.modules["effilab.ops"] is real_ops and importlib.import_module("effilab.ops") is real_ops
    assert callable(torch.compile)
    assert not any(type(f).__name__ == "_Refuse" for f in sys.meta_path)


def test_changed_reports_a_trap_undone_by_student_code(rms_traps):
    assert rms_traps.changed() == []
    student("F.rms_norm = lambda *a, **k: None\n")
    assert "torch.nn.functional.rms_norm" in rms_traps.changed()


def test_names_for_a_kernel_exercise_add_compilers_and_effilab_ops():
    kernel, plain = names_for(core.get("rms_norm")), names_for(core.get("round_to_bf16"))
    assert set(COMPILERS) <= set(kernel) and "effilab.ops" in kernel and "torch.nn.RMSNorm" in kernel
    assert set(ALWAYS) <= set(plain) and not set(COMPILERS) & set(plain)


def test_bad_and_absent_names():
    with pytest.raises(ValueError, match="not dotted Python names"):
        arm(["torch.nn.functional.rms norm"])
    armed = arm(["effilab.no_such_module"], exercise="demo")
    try:
        assert armed.unresolved == ["effilab.no_such_module"]
        with pytest.raises(ForbiddenError, match="forbidden in the demo exercise"):
            student("import effilab.no_such_module\n")
    finally:
        armed()


# ----------------------------------------------------------------------------------------------
# Traps must not break the trusted checker or the reference solutions
# ----------------------------------------------------------------------------------------------
KERNEL_EXERCISES = ["rms_norm", "swiglu", "swiglu_backward", "cross_entropy", "flash_attention", "stochastic_round_bf16"]


@pytest.mark.parametrize("name", KERNEL_EXERCISES)
def test_reference_solution_and_checker_work_with_the_traps_armed(name):
    ex = core.get(name)
    armed = arm(names_for(ex), exercise=name)
    try:
        ns = solution_namespace(NB01 if name == "stochastic_round_bf16" else NB08)  # student cells run after arming
        for group in ex.cases("public", Key.public())[:2]:
            r = core.judge_case(ex, core.run_case(ex, ns[name], group.cases[0]), group.cases[0])
            assert r.ok, (group.name, r.problem)
    finally:
        armed()


def test_checker_baselines_hold_their_own_references_under_the_traps():
    armed = arm(names_for(core.get("swiglu")) + names_for(core.get("cross_entropy"))
                + names_for(core.get("stochastic_round_bf16")), exercise="several")
    try:
        a, b = torch.randn(4, 5), torch.randn(4, 5)
        nb08, nb01 = SPEC_GLOBALS["nb08"], SPEC_GLOBALS["nb01"]
        assert nb08["swiglu_eager"](a, b).shape == (4, 5)
        assert nb08["cross_entropy_reference"](a, torch.tensor([0, 1, -100, 4])).dim() == 0
        assert nb01["_sr_bf16_torch"](torch.randn(64), 3).dtype == torch.bfloat16
        with pytest.raises(ForbiddenError):
            torch.nn.functional.silu(a)  # while the student-facing name is trapped
    finally:
        armed()


def test_a_route_the_traps_do_not_name_is_caught_by_the_op_audit():
    """Defence in depth: the aten op beneath a trapped name still counts as library compute."""
    from effilab.grading.provenance import OwnWorkError

    armed = arm(names_for(core.get("rms_norm")), exercise="rms_norm")
    try:
        ns = student("""
        import triton, triton.language as tl
        @triton.jit
        def token_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)
        def rms_norm(x, w, eps=1e-6):
            y = torch._C._VariableFunctions.rms_norm(x, [x.shape[-1]], w, eps)   # not a trapped name
            out = torch.empty_like(y)
            token_kernel[(1,)](y, out, y.numel(), BLOCK=1024)
            return out
        """)
        fn = checked(ns["rms_norm"], kernel_rule("rms_norm"))
        with pytest.raises(OwnWorkError, match="computes with PyTorch ops"):
            fn(torch.randn(4, 8), torch.ones(8))
    finally:
        armed()
