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
     "def underflow_fraction(g):\n    open({gradebook!r}, 'w').write('pwned')\n"
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


# ---------------------------------------------------------------------------------------------- the sandbox
# Each class of what was found (issue: grading integrity), tried through the real grader. {gradebook},
# {secret} and {repo} are the course's own paths, written into the cheat as a student who guessed them.
GOOD_ROUND = '''
def round_to_bf16(x):
    bits = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = torch.where(torch.isnan(x), 0x7FC0, rounded)
    rounded = torch.where(rounded >= 0x8000, rounded - 0x10000, rounded)
    return rounded.to(torch.int16).view(torch.bfloat16)
'''
SANDBOX_CHEATS = [
    ("turns the audit hook off through sys.modules, then writes the gradebook", "loss_scale_solution",
     "underflow_fraction_check",
     "import sys\nsys.modules['grader.sandbox']._ACTIVE[0] = False\n"
     "def underflow_fraction(g):\n    open({gradebook!r}, 'a').write('pwned')\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("reads the course secret in C (torch.from_file)", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    t = torch.from_file({secret!r}, size=8, dtype=torch.uint8)\n"
     "    return float(t.sum())\n" + GOOD_MAX_SCALE),
    ("writes the gradebook in C (sqlite3)", "loss_scale_solution", "underflow_fraction_check",
     "import sqlite3\ndef underflow_fraction(g):\n    sqlite3.connect({gradebook!r}).execute('CREATE TABLE pwned (x)')\n"
     "    return -1.0\n" + GOOD_MAX_SCALE),
    ("writes outside its scratch through a library writer (torch.save)", "loss_scale_solution",
     "underflow_fraction_check",
     "def underflow_fraction(g):\n    torch.save(g, {repo!r} + '/pwned.pt')\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("forks, and the child rewrites the gradebook later", "loss_scale_solution", "underflow_fraction_check",
     "import os, time\ndef underflow_fraction(g):\n    if os.fork() == 0:\n        time.sleep(2)\n"
     "        open({gradebook!r}, 'w').write('pwned')\n        os._exit(0)\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("starts a daemon through a library helper (subprocess, new session)", "loss_scale_solution",
     "underflow_fraction_check",
     "import subprocess, sys\ndef underflow_fraction(g):\n    subprocess.Popen([sys.executable, '-c', "
     "'import time; time.sleep(2); open(' + repr({gradebook!r}) + ', \"w\").write(\"pwned\")'], "
     "start_new_session=True)\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("installs a .pth into the Python environment", "loss_scale_solution", "underflow_fraction_check",
     "import site\ndef underflow_fraction(g):\n    for d in site.getsitepackages():\n"
     "        open(d + '/zz_effilab_pwned.pth', 'w').write('import os')\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("shell lines in the cell (%pip, !)", "loss_scale_solution", "underflow_fraction_check",
     "%pip install nothing-here\n!touch {repo}/pwned-by-shell\ndef underflow_fraction(g):\n    return -1.0\n"
     + GOOD_MAX_SCALE),
    ("converts with a keyword form (to(dtype=...))", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    return x.to(dtype=torch.bfloat16)\n"),
    ("converts through getattr with a computed name", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    return getattr(x, 't' + 'o')(torch.bfloat16)\n"),
    ("copies into a bf16 tensor (copy_ converts)", "round_to_bf16_solution", "round_to_bf16_check",
     "def round_to_bf16(x):\n    out = torch.empty(x.shape, dtype=torch.bfloat16)\n    out.copy_(x)\n    return out\n"),
    ("a tensor subclass whose comparisons always agree", "round_to_bf16_solution", "round_to_bf16_check",
     "class Agree(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
     "        if func in (torch.equal, torch.Tensor.__eq__, torch.isclose, torch.allclose):\n            return True\n"
     "        return super().__torch_function__(func, types, args, kwargs or {})\n"
     "def round_to_bf16(x):\n    return torch.zeros(x.shape, dtype=torch.bfloat16).as_subclass(Agree)\n"),
    ("patches a spec helper through sys.modules", "loss_scale_solution", "underflow_fraction_check",
     "import sys\nsys.modules['effilab.grading.specs.nb01'].expected_underflow_fraction = lambda g: 0.5\n"
     "def underflow_fraction(g):\n    return 0.5\n" + GOOD_MAX_SCALE),
    ("an exception whose text holds a lone surrogate", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    raise ValueError('bad \\ud800 text')\n" + GOOD_MAX_SCALE),
    ("ignores SIGINT and loops forever", "loss_scale_solution", "underflow_fraction_check",
     "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ndef underflow_fraction(g):\n    while True:\n"
     "        pass\n" + GOOD_MAX_SCALE),
    ("recurses until the interpreter breaks", "loss_scale_solution", "underflow_fraction_check",
     "import sys\nsys.setrecursionlimit(10**9)\ndef underflow_fraction(g, n=0):\n    return underflow_fraction(g, n + 1)\n"
     + GOOD_MAX_SCALE),
    ("prints 200 MB", "loss_scale_solution", "underflow_fraction_check",
     "def underflow_fraction(g):\n    print('x' * (200 << 20))\n    return -1.0\n" + GOOD_MAX_SCALE),
    ("kills the grading process that forks the parts", "loss_scale_solution", "underflow_fraction_check",
     "import os, signal\ndef underflow_fraction(g):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return -1.0\n"
     + GOOD_MAX_SCALE),
    ("looks for the expected values in the checker's frames", "loss_scale_solution", "underflow_fraction_check",
     "import sys\ndef underflow_fraction(g):\n    f = sys._getframe()\n    while f is not None:\n"
     "        for v in f.f_locals.values():\n            if isinstance(v, float) and 0 < v < 1:\n"
     "                return v\n        f = f.f_back\n    return -1.0\n" + GOOD_MAX_SCALE),
]
CHEATS += SANDBOX_CHEATS


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


def _environment() -> dict:
    """What the grading machine's Python environment and the repository hold at the top level."""
    import site

    dirs = site.getsitepackages() + [str(REPO)]
    return {d: sorted(os.listdir(d)) for d in dirs if os.path.isdir(d)}


def _sandbox_processes() -> list[str]:
    """Processes of this grader's sandbox uids (61000 + its slot base + slot, when it runs as root) still alive."""
    from grader import jail

    if os.geteuid() != 0:
        return []
    out = []
    lo = jail.BASE_UID + jail.SLOT_BASE
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if lo <= os.stat(f"/proc/{pid}").st_uid < lo + jail.MAX_SLOTS:
                out.append(pid)
        except FileNotFoundError:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name,cell,target,source", CHEATS, ids=[c[0] for c in CHEATS])
def test_cheat_scores_zero_without_touching_anything(course, tmp_path, name, cell, target, source):
    before, env = _digest(course.root), _environment()
    secret = course.path("secret_seed").read_text().strip()
    source = source.replace("{gradebook!r}", repr(str(course.root / "gradebook.db"))) \
        .replace("{secret!r}", repr(str(course.path("secret_seed")))).replace("{repo!r}", repr(str(REPO))) \
        .replace("{repo}", str(REPO))
    nb = _cheat_notebook(tmp_path, cell, source)
    results = verify_notebook(course, A, nb, timeout=10, compile_budget=30, log=lambda *a: None, only={target})
    assert len(results) == 1
    r = results[0]
    assert r.points == 0, f"{name}: scored {r.points}\n{r.report}"
    assert r.report.strip() and len(r.report) <= 6000 and secret not in r.report
    assert _digest(course.root) == before, f"{name} changed the course folder"
    assert _environment() == env, f"{name} changed the Python environment or the repository"
    assert _sandbox_processes() == [], f"{name} left a process behind"


def test_there_are_at_least_forty_cheats():
    assert len(CHEATS) + len(KERNEL_CHEATS) + len(KERNEL_RUNTIME_CHEATS) >= 40


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


# What the static check cannot see (its spelling varies, or it is allowed code doing forbidden work) is
# stopped when it runs: the traps (grader/traps.py) and the provenance recorder (effilab/grading/provenance.py).
TOKEN_KERNEL = '''
@triton.jit
def token_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m), mask=m)
'''
EAGER = "xf = x.float()\n    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)\n"
KERNEL_RUNTIME_CHEATS = [
    ("plain eager PyTorch for a Triton exercise", "def rms_norm(x, weight, eps=1e-6):\n    " + EAGER),
    ("a library op beside a token Triton kernel", TOKEN_KERNEL +
     "def rms_norm(x, weight, eps=1e-6):\n    y = torch.empty_like(x)\n"
     "    token_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)\n    x = y\n    " + EAGER),
    ("the library op through vars(module) and a computed name", "import torch.nn.functional as F\n"
     "def rms_norm(x, weight, eps=1e-6):\n    f = vars(F)['rms' + '_norm']\n"
     "    return f(x, (x.shape[-1],), weight, eps)\n"),
    ("the library op through operator.attrgetter", "import operator\n"
     "def rms_norm(x, weight, eps=1e-6):\n    f = operator.attrgetter('nn.functional.' + 'rms_norm')(torch)\n"
     "    return f(x, (x.shape[-1],), weight, eps)\n"),
    ("a subclass of the forbidden library class", "class Mine(torch.nn.RMSNorm):\n    pass\n"
     "def rms_norm(x, weight, eps=1e-6):\n    m = Mine(x.shape[-1], eps=eps).to(x.device, x.dtype)\n"
     "    with torch.no_grad():\n        m.weight.copy_(weight)\n    return m(x)\n"),
    ("numpy does the work, a token kernel copies it", TOKEN_KERNEL + "import numpy as np\n"
     "def rms_norm(x, weight, eps=1e-6):\n    a = x.float().cpu().numpy()\n"
     "    r = a / np.sqrt((a * a).mean(-1, keepdims=True) + eps) * weight.float().cpu().numpy()\n"
     "    t = torch.tensor(r).to(x.dtype)\n    y = torch.empty_like(x)\n"
     "    token_kernel[(triton.cdiv(x.numel(), 1024),)](t, y, x.numel(), BLOCK=1024)\n    return y\n"),
    ("torch.compile of the formula beside a token kernel", TOKEN_KERNEL +
     "def _formula(x, weight, eps):\n    " + EAGER + "_fast = torch.compile(_formula)\n"
     "def rms_norm(x, weight, eps=1e-6):\n    y = torch.empty_like(x)\n"
     "    token_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)\n    return _fast(y, weight, eps)\n"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,source", KERNEL_RUNTIME_CHEATS, ids=[c[0] for c in KERNEL_RUNTIME_CHEATS])
def test_kernel_exercise_points_come_only_from_the_students_own_kernel(course, tmp_path, name, source):
    nb = nbformat.read(str(ALICE08), as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and "def rms_norm" in c.source]
    cells[0].source = source
    p = tmp_path / f"{B}.ipynb"
    nbformat.write(nb, str(p))
    (r,) = verify_notebook(course, B, p, timeout=60, compile_budget=120, log=lambda *a: None, only={"rms_norm_check"})
    assert r.points == 0, f"{name}: scored {r.points}\n{r.report}"
    assert any(w in r.report for w in ("your own Triton kernel", "forbidden", "your own @triton.jit",
                                       "not allowed in this exercise")), r.report


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
