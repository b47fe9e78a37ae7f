"""nbgrader's autograde with the notebook's kernel in the jail (grader/kernel.py), end to end on a
tiny course in a temporary folder: student code in a cell cannot read the course's secrets, write
outside its scratch (``!touch`` into the venv, ``%pip install``), reach the network, leave a daemon
behind or exceed the task limit, while torch and Triton run; a notebook that hangs with SIGINT
ignored is stopped at the time limit, and autograde still finishes it (later tests score 0).
"""
import fcntl
import json
import os
import socket
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from traitlets.config import Config

from grader import jail
from grader.course import REPO, Course

OK, WHY = jail.available()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not OK and os.environ.get("EFFILAB_REQUIRE_JAIL") != "1", reason=WHY)]
SITE = Path(jail.site_dirs()[0])
A = "ps1"
ROOT = os.geteuid() == 0


def _cell(kind: str, grade_id: str, source: str, points: float = 0):
    meta = {"grade": kind == "test", "solution": kind == "solution", "locked": kind == "test",
            "grade_id": grade_id, "schema_version": 3, "task": False}
    if kind == "test":
        meta["points"] = points
    return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})


def _course(root: Path, tests: list[tuple[str, str, float]]):
    """Source notebook: one solution cell (``answer``) and the given test cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [_cell("solution", "answer", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION")]
    nb.cells += [_cell("test", gid, src, pts) for gid, src, pts in tests]
    src = root / "source" / A / f"{A}.ipynb"
    src.parent.mkdir(parents=True)
    nbformat.write(nb, str(src))


def _api(root: Path, **kw):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from grader.kernel import configure

    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = "jailtest"
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    c.Execute.timeout = kw.pop("cell_timeout", 600)
    c.Autograde.create_student = True
    configure(c, Course(root=root), **kw)
    return NbGraderAPI(coursedir=CourseDirectory(config=c), config=c)


def _submit(root: Path, student: str, code: str, files: dict[str, bytes] = {}) -> None:
    nb = nbformat.read(str(root / "release" / A / f"{A}.ipynb"), as_version=4)
    for c in nb.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "answer":
            c.source = code
    d = root / "submitted" / student / A
    d.mkdir(parents=True)
    nbformat.write(nb, str(d / f"{A}.ipynb"))
    for name, data in files.items():
        (d / name).write_bytes(data)


def _autograde(api, student):
    result = api.autograde(A, student, force=True, create=True)
    assert result["success"], result.get("error") or result.get("log")
    nb = nbformat.read(str(Path(api.coursedir.root) / "autograded" / student / A / f"{A}.ipynb"), as_version=4)
    return {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}


def _scores(root: Path, student: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id="jailtest") as gb:
        sub = gb.find_submission_notebook(A, A, student)
        return {g.name: g.score for g in sub.grades}


def _wheel() -> bytes:
    """A wheel whose install drops a .pth (run by every Python start) into site-packages."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil_jail_test.pth", "import os\n")
        z.writestr("evilpkg/__init__.py", "")
        z.writestr("evilpkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: evilpkg\nVersion: 0.1\n")
        z.writestr("evilpkg-0.1.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("evilpkg-0.1.dist-info/RECORD", "evil_jail_test.pth,,\nevilpkg/__init__.py,,\n"
                   "evilpkg-0.1.dist-info/METADATA,,\nevilpkg-0.1.dist-info/WHEEL,,\nevilpkg-0.1.dist-info/RECORD,,\n")
    return buf.getvalue()


ESCAPES = r'''
import errno, fcntl, json, os, socket, sys, time
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
P = json.loads({paths!r})
seen = {{k: attempt(lambda p=p: open(p, "rb").read(1)) for k, p in P["read"].items()}}
seen["write venv"] = attempt(lambda: open(P["venv_pth"], "w").write("import os"))
seen["write repo"] = attempt(lambda: open(P["repo_file"], "w").write("x"))
seen["host loopback"] = attempt(lambda: socket.create_connection(("127.0.0.1", P["port"]), timeout=5))
from ipykernel import get_connection_file
run = os.path.dirname(get_connection_file())  # the kernel's sockets: the grader connects to them
sockets = sorted(n for n in os.listdir(run) if n != "kernel.json")
seen["sockets"] = len(sockets)
seen["replace a socket"] = attempt(lambda: os.replace(os.path.join(run, sockets[0]), os.path.join(run, "x")))
seen["plant a link"] = attempt(lambda: os.symlink("/run/postgresql/.s.PGSQL.5432", os.path.join(run, "k-9")))
get_ipython().system("touch " + P["venv_pth2"])
get_ipython().run_line_magic("pip", "install --no-index --no-deps evilpkg-0.1-py3-none-any.whl")
get_ipython().run_line_magic("pip", "install --no-index --no-deps --target " + os.path.expanduser("~/pkgs")
                             + " evilpkg-0.1-py3-none-any.whl")
seen["pip into scratch"] = os.path.exists(os.path.expanduser("~/pkgs/evil_jail_test.pth"))
lock = P["lock"]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        open(lock + ".held", "w").close()
        while not os.path.exists(P["go"]):
            time.sleep(0.05)
        open(P["survived"], "w").close()
        time.sleep(600)
    os._exit(0)
while not os.path.exists(lock + ".held"):
    time.sleep(0.05)
kids, n = [], 0
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    seen["fork"] = [len(kids), errno.errorcode[e.errno]]
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print("SEEN" + json.dumps(seen))
answer = 42
'''

TORCH_TEST = r'''
import effilab, torch, triton, triton.language as tl
@triton.jit
def add(x, y, out, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(out + i, tl.load(x + i, mask=m) + tl.load(y + i, mask=m), mask=m)
x, y = torch.randn(300), torch.randn(300)
out = torch.empty(300)
add[(2,)](x, y, out, 300, BLOCK=256)
assert torch.allclose(out, x + y)
'''


def test_student_code_in_the_kernel_cannot_escape(tmp_path):
    root, marks = tmp_path / "course", tmp_path / "marks"
    marks.mkdir()
    _course(root, [("test_answer", "assert answer == 42", 1), ("test_torch", TORCH_TEST, 1)])
    (root / "secret_seed").write_text("1234")
    api = _api(root, nproc=200, extra_writable=[marks])
    assert api.generate_assignment(A, force=True, create=True)["success"]
    _submit(root, "bob", "answer = 41")  # another student's folder
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    paths = {"read": {"secret": str(root / "secret_seed"), "gradebook": str(root / "gradebook.db"),
                      "other student": str(root / "submitted" / "bob" / A / f"{A}.ipynb"),
                      "solutions": str(REPO / "solutions" / "01_float_formats.ipynb"),
                      "own notebook": f"{A}.ipynb"},  # holds the hidden tests: left out of the kernel's copy
             "venv_pth": str(SITE / "evil_jail_a.pth"), "venv_pth2": str(SITE / "evil_jail_b.pth"),
             "repo_file": str(REPO / "effilab" / "evil_jail.py"), "port": server.getsockname()[1],
             "lock": str(marks / "lock"), "go": str(marks / "go"), "survived": str(marks / "survived")}
    site_before = sorted(os.listdir(SITE))
    _submit(root, "alice", ESCAPES.format(paths=json.dumps(paths)), {"evilpkg-0.1-py3-none-any.whl": _wheel()})
    try:
        cells = _autograde(api, "alice")
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    (marks / "go").write_text("")
    fd = os.open(marks / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the daemon outlived the kernel
    finally:
        os.close(fd)
    assert not (marks / "survived").exists()
    text = "".join(o.get("text", "") for o in cells["answer"].outputs if o.output_type == "stream")
    assert "SEEN" in text, cells["answer"].outputs
    seen = json.loads(text.split("SEEN", 1)[1].splitlines()[0])
    locked = {"replace a socket", "plant a link"}  # the run folder is handed back to root, as root only
    assert {k: v for k, v in seen.items() if v == "ok" and (ROOT or k not in locked)} == {}, seen
    assert seen["sockets"] == 5
    assert seen["pip into scratch"] is True  # pip works in the jail: only its target is the scratch
    assert seen["fork"][1] == "EAGAIN" and seen["fork"][0] < 200
    assert sorted(os.listdir(SITE)) == site_before
    assert not (REPO / "effilab" / "evil_jail.py").exists()
    assert _scores(root, "alice") == {"test_answer": 1.0, "test_torch": 1.0}


HANG = """
import signal, time
def answer():
    return 42
def slow():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        time.sleep(1)  # hangs without burning a core the test machine shares
"""


@pytest.mark.parametrize("stop", ["time limit", "cell timeout"])
def test_a_hanging_notebook_is_stopped_and_still_graded(tmp_path, stop):
    """The code ignores SIGINT and loops: at the notebook's time limit (or when a cell's timeout
    interrupt is ignored) the jail is killed; autograde then finishes: the test before the hang
    keeps its point, the hanging cell and every later one get an error and 0 points."""
    root = tmp_path / "course"
    _course(root, [("test_before", "assert answer() == 42", 1), ("test_hang", "assert slow() == 1", 1),
                   ("test_after", "assert answer() == 42", 1)])
    # generous limits: only the hang may reach them, not the kernel's start or the first test on a busy machine
    kw = {"time_limit": 60.0} if stop == "time limit" else {"time_limit": 3600.0, "cell_timeout": 15}
    api = _api(root, **kw)
    assert api.generate_assignment(A, force=True, create=True)["success"]
    _submit(root, "carol", HANG)
    cells = _autograde(api, "carol")
    hang = [o for o in cells["test_hang"].outputs if o.output_type == "error"]
    after = [o for o in cells["test_after"].outputs if o.output_type == "error"]
    assert hang and ("time limit" if stop == "time limit" else "did not stop when interrupted") in hang[-1].evalue
    assert after and after[0].ename == "NotRun"
    assert _scores(root, "carol") == {"test_before": 1.0, "test_hang": 0.0, "test_after": 0.0}


def test_configure_replaces_execute_and_hides_the_course(tmp_path):
    from nbgrader.preprocessors import Execute

    from grader.kernel import JailedExecute, configure

    c = Config()
    course = Course(root=tmp_path / "course")
    configure(c, course, time_limit=60, slot=2, memory_bytes=8 << 30)
    pre = c.Autograde.autograde_preprocessors
    assert JailedExecute in pre and Execute not in pre
    assert str(course.root) in c.JailedKernelManager.hidden and str(REPO / "solutions") in c.JailedKernelManager.hidden
    assert (c.JailedKernelManager.time_limit, c.JailedKernelManager.slot) == (60.0, 2)
    assert sys.modules["grader.kernel"].JailedExecute().kernel_manager_class.__name__ == "JailedKernelManager"


def test_the_kernel_never_gets_a_copy_of_the_course(tmp_path):
    """The kernel's cwd is a copy of nbgrader's folder: a folder holding the course root or the
    repository is refused, and without one the kernel starts in an empty folder."""
    from grader.kernel import JailedKernelManager

    root = tmp_path / "course"
    (root / "autograded" / "alice" / A).mkdir(parents=True)
    (root / "autograded" / "alice" / A / "data.txt").write_text("mine")
    (root / "autograded" / "alice" / A / f"{A}.ipynb").write_text("{}")
    km = JailedKernelManager(hidden=[str(root)])
    for bad in (root, REPO, tmp_path):
        with pytest.raises(ValueError, match="cannot be copied into a jail"):
            km._copy_workdir(str(bad), tmp_path / "w")
    km._copy_workdir(str(root / "autograded" / "alice" / A), tmp_path / "w1")
    assert sorted(os.listdir(tmp_path / "w1")) == ["data.txt"]  # the notebook (hidden tests) is left out
    km._copy_workdir(None, tmp_path / "w2")
    assert os.listdir(tmp_path / "w2") == []
