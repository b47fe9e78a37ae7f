"""Red team: cheating and broken submissions against the authoritative grader (grader.verify).

Each case is alice's correct notebook with one solution cell replaced. The targeted exercise must
score 0, the grader must not crash, and nothing outside the worker's scratch folder may change.
GPU-only cheats (side streams, warm-up detection, caching on the timed input) are marked ``gpu``.
"""
import hashlib
import os
import textwrap
from pathlib import Path

import nbformat
import pytest

from grader.course import REPO, Course
from grader.verify import course_secret, verify_notebook

A = "01_float_formats"
ALICE = REPO / "grader" / "examples" / A / f"alice_{A}.ipynb"

GOOD_MAX_SCALE = '''
def max_safe_loss_scale(grads):
    k = math.floor(math.log2(65504.0 / float(grads.abs().max()))) + 1
    while torch.isinf((grads * 2.0 ** k).to(torch.float16)).any():
        k -= 1
    return 2.0 ** k
'''
GOOD_UNDERFLOW = '''
def underflow_fraction(grads):
    nonzero = grads != 0
    n = int(nonzero.sum())
    return float(((grads.to(torch.float16) == 0) & nonzero).sum()) / n if n else 0.0
'''

# (name, solution cell to replace, grade id that must score 0, new cell source)
CHEATS = [
    ("imports the checker's reference", "loss_scale_solution", "underflow_fraction_check",
     "from effilab.grading.specs.nb01 import expected_underflow_fraction as underflow_fraction\n" + GOOD_MAX_SCALE),
    ("reference through importlib", "loss_scale_solution", "underflow_fraction_check",
     "import importlib\ndef underflow_fraction(g):\n    return importlib.import_module('effilab.grading.specs.nb01')"
     ".expected_underflow_fraction(g)\n" + GOOD_MAX_SCALE),
    ("reference through __import__", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    m = __import__('effilab.grading.specs.nb01', fromlist=['x'])\n"
     "    return m.expected_underflow_fraction(g)\n" + GOOD_MAX_SCALE),
    ("patches the checker through sys.modules", "loss_scale_solution", "underflow_fraction_check",
     "import sys\nsys.modules['effilab.grading.core'].Exercise.run_case = lambda self, fn, case: None\n"
     "def underflow_fraction(g):\n    return 0.5\n" + GOOD_MAX_SCALE),
    ("patches the comparison inside the call", "loss_scale_solution", "underflow_fraction_check",
     "import sys\ndef underflow_fraction(g):\n    sys.modules['effilab.grading.compare'].compare_tensors = "
     "lambda *a, **k: None\n    return 0.5\n" + GOOD_MAX_SCALE),
    ("monkeypatches time.perf_counter", "loss_scale_solution", "underflow_fraction_check",
     "import time\ntime.perf_counter = lambda: 0.0\n" + GOOD_UNDERFLOW + GOOD_MAX_SCALE),
    ("monkeypatches torch.cuda.Event and synchronize", "loss_scale_solution", "underflow_fraction_check",
     "torch.cuda.synchronize = lambda *a: None\ntorch.cuda.Event = object\n" + GOOD_UNDERFLOW + GOOD_MAX_SCALE),
    ("patches builtins", "loss_scale_solution", "underflow_fraction_check",
     "import builtins\nbuiltins.isinstance = lambda *a: True\n" + GOOD_UNDERFLOW + GOOD_MAX_SCALE),
    ("disables the poisoned allocation", "round_to_bf16_solution", "round_to_bf16_check",
     "torch.empty_like = lambda x, **k: torch.zeros_like(x, **k)\ndef round_to_bf16(x):\n"
     "    return (x.view(torch.int32) >> 16).to(torch.int16).view(torch.bfloat16)\n"),
    ("silences IPython's showtraceback and returns a wrong answer", "loss_scale_solution", "underflow_fraction_check",
     "try:\n    from IPython.core.interactiveshell import InteractiveShell\n"
     "    InteractiveShell.showtraceback = lambda *a, **k: None\nexcept ImportError:\n    pass\n"
     "def underflow_fraction(g):\n    assert False, 'never checked'\n" + GOOD_MAX_SCALE),
    ("reads the hidden tests and gradebook from disk", "loss_scale_solution", "underflow_fraction_check",
     "import os, sys\ndef underflow_fraction(g):\n    for p in sys.path + [os.getcwd()]:\n"
     "        for f in ('solutions/01_float_formats.ipynb', 'grader/course/gradebook.db', 'gradebook.db'):\n"
     "            q = os.path.join(p, f)\n            if os.path.exists(q):\n                open(q).read()\n"
     "    return -1.0\n" + GOOD_MAX_SCALE),
    ("writes to the gradebook", "loss_scale_solution", "underflow_fraction_check",
     "import os\ndef underflow_fraction(g):\n    open(os.environ['EFFILAB_TEST_GRADEBOOK'], 'w').write('pwned')\n"
     "    return 0.0\n" + GOOD_MAX_SCALE),
    ("sys.exit in the function", "loss_scale_solution", "underflow_fraction_check",
     "import sys\ndef underflow_fraction(g):\n    sys.exit(0)\n" + GOOD_MAX_SCALE),
    ("os._exit in the function", "loss_scale_solution", "underflow_fraction_check",
     "import os\ndef underflow_fraction(g):\n    os._exit(0)\n" + GOOD_MAX_SCALE),
    ("returns the input", "round_to_bf16_solution", "round_to_bf16_check", "def round_to_bf16(x):\n    return x\n"),
    ("lower precision than asked (through fp8)", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    return x.to(torch.float8_e4m3fn).float().view(torch.int32).__rshift__(16)"
     ".to(torch.int16).view(torch.bfloat16)\n"),
    ("converts with torch (forbidden shortcut)", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    return x.to(torch.bfloat16)\n"),
    ("NaN outputs", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    return torch.full(x.shape, float('nan'), dtype=torch.bfloat16)\n"),
    ("writes only part of the output", "stochastic_round_bf16_solution", "stochastic_round_bf16_check",
     textwrap.dedent('''
     @triton.jit
     def half_kernel(x_ptr, out_ptr, n, seed, BLOCK: tl.constexpr):
         offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
         m = offs < n // 2
         x = tl.load(x_ptr + offs, mask=m, other=0.0)
         r = (x.to(tl.uint32, bitcast=True) + (tl.randint(seed, offs).to(tl.uint32) & 0xFFFF)) >> 16
         tl.store(out_ptr + offs, r.to(tl.uint16).to(tl.int16, bitcast=True), mask=m)
     def stochastic_round_bf16(x, seed):
         x = x.contiguous()
         out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
         half_kernel[(triton.cdiv(x.numel(), 65536),)](x, out.view(torch.int16), x.numel(), seed, BLOCK=65536)
         return out
     ''')),
    ("scans gc.get_objects() for the expected output", "loss_scale_solution", "underflow_fraction_check",
     "import gc\ndef underflow_fraction(g):\n    for o in gc.get_objects():\n"
     "        if isinstance(o, dict) and 'expected' in o:\n            return o['expected']\n    return -1.0\n"
     + GOOD_MAX_SCALE),
    ("spawns a subprocess", "loss_scale_solution", "underflow_fraction_check",
     "import subprocess, sys\ndef underflow_fraction(g):\n"
     "    return float(subprocess.run([sys.executable, '-c', 'print(0.5)'], capture_output=True).stdout)\n"
     + GOOD_MAX_SCALE),
    ("a network attempt", "loss_scale_solution", "underflow_fraction_check",
     "import socket\ndef underflow_fraction(g):\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
     "    return 0.0\n" + GOOD_MAX_SCALE),
    ("an infinite loop", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    while True:\n        pass\n" + GOOD_MAX_SCALE),
    ("exec of hidden code", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    ns = {}\n    exec('r = 0.5', ns)\n    return ns['r']\n" + GOOD_MAX_SCALE),
    ("the function deleted", "loss_scale_solution", "underflow_fraction_check", GOOD_MAX_SCALE),
    ("binary garbage in the cell", "loss_scale_solution", "underflow_fraction_check", "\x00\x01 def )(:\n"),
    ("forges passing result frames on the worker's pipe, then exits", "round_to_bf16_solution", "round_to_bf16_check",
     textwrap.dedent('''
     import io, os, struct, sys
     def _frame(obj):
         buf = io.BytesIO()
         torch.save(obj, buf)
         return struct.pack("<Q", len(buf.getvalue())) + buf.getvalue()
     def round_to_bf16(x):
         forged = b"".join(_frame({"kind": "case", "group": g, "case": c, "problem": None})
                           for g in range(6) for c in range(5))
         forged += _frame({"exercise": "round_to_bf16", "part": "correctness", "cases": [], "notes": [], "error": None})
         os.write(int(sys.argv[2]), forged)
         os._exit(0)
     ''')),
]


def _cheat_notebook(tmp: Path, cell: str, source: str) -> Path:
    nb = nbformat.read(str(ALICE), as_version=4)
    hits = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == cell]
    assert hits, cell
    hits[0].source = source
    p = tmp / "submitted" / "mallory" / A / f"{A}.ipynb"
    p.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(p))
    return p


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    c = Course(root=root)
    c.prepare()
    course_secret(c)
    gb = root / "gradebook.db"
    gb.write_bytes(b"another student's grades")
    os.environ["EFFILAB_TEST_GRADEBOOK"] = str(gb)
    yield c
    os.environ.pop("EFFILAB_TEST_GRADEBOOK", None)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "submitted" not in p.parts}


@pytest.mark.slow
@pytest.mark.parametrize("name,cell,target,source", CHEATS, ids=[c[0] for c in CHEATS])
def test_cheat_scores_zero_without_touching_anything(course, tmp_path, name, cell, target, source):
    before = _digest(course.root)
    nb = _cheat_notebook(tmp_path, cell, source)
    results = verify_notebook(course, A, nb, timeout=60, compile_budget=30, log=lambda *a: None, only={target})
    assert len(results) == 1
    r = results[0]
    assert r.points == 0, f"{name}: scored {r.points}\n{r.report}"
    assert r.report.strip()
    assert _digest(course.root) == before, f"{name} changed the course folder"


def test_there_are_at_least_twenty_cheats():
    assert len(CHEATS) >= 20


@pytest.mark.slow
def test_untouched_exercise_of_a_cheater_keeps_its_points(course, tmp_path):
    # the cell that patches time.perf_counter also defines a correct max_safe_loss_scale: that one is
    # graded in its own worker, with only the cells it needs, and keeps its point
    nb = _cheat_notebook(tmp_path, "round_to_bf16_solution", "import os\nos._exit(3)\n")
    results = verify_notebook(course, A, nb, timeout=60, log=lambda *a: None,
                              only={"round_to_bf16_check", "max_safe_loss_scale_check"})
    by = {r.grade_id: r.points for r in results}
    assert by == {"round_to_bf16_check": 0.0, "max_safe_loss_scale_check": 1.0}


@pytest.mark.slow
def test_correct_submission_is_graded_identically_twice(course, tmp_path):
    runs = [[(r.grade_id, r.points) for r in verify_notebook(course, A, ALICE, timeout=300, log=lambda *a: None,
                                                              only={"underflow_fraction_check", "round_to_bf16_check"})]
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(p > 0 for _, p in runs[0])


# ---------------------------------------------------------------------------------------------- notebook 08
B = "08_operator_fusion"
ALICE08 = REPO / "grader" / "examples" / B / f"alice_{B}.ipynb"
KERNEL_CHEATS = [
    ("rms_norm through F.rms_norm", "import torch.nn.functional as F\n"
     "def rms_norm(x, weight, eps=1e-6):\n    return F.rms_norm(x, (x.shape[-1],), weight, eps)\n"),
    ("rms_norm through effilab's reference kernel", "from effilab.ops.rmsnorm import rms_norm as _r\n"
     "def rms_norm(x, weight, eps=1e-6):\n    return _r(x, weight, eps)\n"),
    ("rms_norm through getattr on torch", "import torch\n"
     "def rms_norm(x, weight, eps=1e-6):\n    return getattr(torch.nn.functional, 'rms_norm')(x, (x.shape[-1],), weight, eps)\n"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,source", KERNEL_CHEATS, ids=[c[0] for c in KERNEL_CHEATS])
def test_kernel_exercise_calling_a_library_op_or_the_reference_scores_zero(course, tmp_path, name, source):
    nb = nbformat.read(str(ALICE08), as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")
             and "def rms_norm" in c.source]
    assert cells, "the rms_norm solution cell"
    cells[0].source = source
    p = tmp_path / f"{B}.ipynb"
    nbformat.write(nb, str(p))
    results = verify_notebook(course, B, p, timeout=120, log=lambda *a: None,
                              only={g for g in ("rms_norm_check", "rms_norm_speed")})
    assert results and all(r.points == 0 for r in results), [(r.grade_id, r.points, r.report[:300]) for r in results]
    assert any("may not be used" in r.report for r in results)


# ---------------------------------------------------------------------------------------------- time limits
HANGS_ON_2D = '''
def round_to_bf16(x):
    if x.dim() == 2:  # the last group (1823x781): an endless loop
        while True:
            pass
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = torch.where(torch.isnan(x), 0x7FC0, rounded)
    rounded = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded)
    return rounded.to(torch.int16).view(torch.bfloat16)
'''
SLOW_FIRST_CALL = '''
import time
_compiled = []

def round_to_bf16(x):
    if not _compiled:  # stands for a kernel that takes long to compile on its first call
        time.sleep(FIRST_CALL_SECONDS)
        _compiled.append(True)
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = torch.where(torch.isnan(x), 0x7FC0, rounded)
    rounded = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded)
    return rounded.to(torch.int16).view(torch.bfloat16)
'''


# Time limits are tested with sleeps far from every limit, never with margins that depend on how fast
# the machine is: a first call sleeping 10 s exceeds the 8 s run limit but not the 100 s compile
# budget, and the 29 cases after it take about a second; a first call sleeping 60 s exceeds a
# compile budget of 1 s plus a run limit of 1 s thirtyfold.
@pytest.mark.slow
def test_a_time_limit_keeps_the_groups_finished_before_it(course, tmp_path):
    nb = _cheat_notebook(tmp_path, "round_to_bf16_solution", HANGS_ON_2D)
    (r,) = verify_notebook(course, A, nb, timeout=20, compile_budget=60, log=lambda *a: None,
                           only={"round_to_bf16_check"})
    assert r.points == 2.5, r.report  # 5 of 6 groups; the 2-D group was stopped
    assert "time limit" in r.report and "not run" in r.report


@pytest.mark.slow
def test_compiling_on_the_first_call_has_its_own_budget(course, tmp_path):
    nb = _cheat_notebook(tmp_path, "round_to_bf16_solution", "FIRST_CALL_SECONDS = 10\n" + SLOW_FIRST_CALL)
    (r,) = verify_notebook(course, A, nb, timeout=8, compile_budget=100, log=lambda *a: None,
                           only={"round_to_bf16_check"})
    assert r.points == 3.0, r.report  # the first call's 10 s come out of the compile budget, not the 8 s
    nb = _cheat_notebook(tmp_path, "round_to_bf16_solution", "FIRST_CALL_SECONDS = 60\n" + SLOW_FIRST_CALL)
    (r,) = verify_notebook(course, A, nb, timeout=1, compile_budget=1, log=lambda *a: None,
                           only={"round_to_bf16_check"})
    assert r.points == 0 and "time limit" in r.report
