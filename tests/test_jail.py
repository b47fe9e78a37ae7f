"""The OS-level sandbox (grader/jail.py) around a worker-like Python process: what student code in
a jail cannot do — read the course's secrets, write outside its scratch, reach the network, leave a
process behind, exceed its process limit — and that ordinary torch + Triton code still runs.

The nbgrader kernel run inside the jail is tested in tests/test_jail_kernel.py. Skipped (with the
reason and the install command) where bwrap cannot build a jail, unless EFFILAB_REQUIRE_JAIL=1
(set by .ci/run), where they fail instead.
"""
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from grader import jail
from grader.course import REPO

OK, WHY = jail.available()
REQUIRED = os.environ.get("EFFILAB_REQUIRE_JAIL") == "1"
pytestmark = pytest.mark.skipif(not OK and not REQUIRED, reason=WHY)
ROOT = os.geteuid() == 0
SITE = Path(jail.site_dirs()[0])

# Helpers the jailed snippets start with: each attempt reports "ok" or the errno's name.
PROBE = textwrap.dedent("""
    import errno, json, os, socket, sys, time
    def attempt(fn):
        try:
            fn()
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))
    def read(p):
        return attempt(lambda: open(p, "rb").read(1))
    def write(p):
        return attempt(lambda: open(p, "w").write("x"))
    def wait_for(p):
        while not os.path.exists(p):
            time.sleep(0.02)
""")


def run(j: jail.Jail, code: str, *args, timeout=300, as_file=False, **kw):
    """Run ``code`` with this Python in the jail; (exit code, the JSON its last line printed, stderr).
    ``as_file``: from a file in the scratch (Triton's compiler reads a kernel's source from its file)."""
    src = PROBE + textwrap.dedent(code)
    if as_file:
        path = j.scratch / "probe.py"
        path.write_text(src)
        os.chmod(path, 0o644)
        argv = [sys.executable, str(path)]
    else:
        argv = [sys.executable, "-c", src]
    proc = j.popen(argv + list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the jailed program did not finish in {timeout} s:\n{out}\n{err}")
    lines = out.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), err


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / "scratch"
    d.mkdir()
    return d


@pytest.fixture
def fake_repo(tmp_path):
    """A checkout with everything a jail must not show, around the two packages it may show."""
    r = tmp_path / "repo"
    files = {"effilab/__init__.py": "", "grader/__init__.py": "", "grader/examples/01/alice.ipynb": "{}",
             "grader/course/secret_seed": "42", "grader/course/gradebook.db": "SQLite",
             "grader/course/submitted/bob/01/01.ipynb": "{}",
             "grader/hidden_course/secret_seed": "99", "solutions/01.ipynb": "{}", "tests/test_x.py": "",
             ".git/config": "[core]", "notes.md": "secret plans"}
    for rel, text in files.items():
        (r / rel).parent.mkdir(parents=True, exist_ok=True)
        (r / rel).write_text(text)
    return r


def _git_config() -> Path:
    """The repository's git config (in a worktree, .git is a file naming the real git folder)."""
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                       capture_output=True, text=True)
    return Path(r.stdout.strip()) / "config" if r.returncode == 0 else REPO / ".git" / "config"


def test_jail_is_available():
    assert OK, WHY


def test_missing_bwrap_is_reported_with_the_fix(monkeypatch, scratch):
    monkeypatch.setenv(jail.BWRAP_ENV, "/nonexistent/bwrap")
    ok, why = jail.available()
    assert not ok and "apt-get install -y bubblewrap" in why and "/nonexistent/bwrap" in why
    with pytest.raises(jail.JailUnavailable, match="bubblewrap"):
        jail.Jail(writable=[scratch]).command(["true"])


def test_bad_specs_say_what_to_fix(tmp_path, scratch):
    with pytest.raises(ValueError, match="scratch"):
        jail.Jail(writable=[])
    with pytest.raises(ValueError, match="create it first"):
        jail.Jail(writable=[tmp_path / "missing"])
    with pytest.raises(ValueError, match="repository"):
        jail.Jail(writable=[REPO])
    with pytest.raises(ValueError, match="slot"):
        jail.Jail(writable=[scratch], slot=-1)
    with pytest.raises(ValueError, match="MiB"):
        jail.Jail(writable=[scratch], memory_bytes=8)
    with pytest.raises(TypeError, match="Jail\\(env="):
        jail.Jail(writable=[scratch]).popen(["true"], env={})


def test_secrets_are_invisible(fake_repo, scratch):
    """The course root (secret seed, gradebook, other students), solutions/, tests/, .git and the
    repository's other files cannot be opened — nor a course root created after the jail started."""
    (scratch / "mine.txt").write_text("mine")
    course, late = fake_repo / "grader" / "course", fake_repo / "grader" / "course_2"
    secret = {"secret": course / "secret_seed", "gradebook": course / "gradebook.db",
              "other student": course / "submitted" / "bob" / "01" / "01.ipynb",
              "late course": late / "secret_seed",  # created once the jail runs: must not appear in it
              "hidden course": fake_repo / "grader" / "hidden_course" / "secret_seed",
              "examples": fake_repo / "grader" / "examples" / "01" / "alice.ipynb",
              "solutions": fake_repo / "solutions" / "01.ipynb", "tests": fake_repo / "tests" / "test_x.py",
              "git": fake_repo / ".git" / "config", "repo file": fake_repo / "notes.md",
              "real solutions": REPO / "solutions" / "01_float_formats.ipynb",
              "real tests": REPO / "tests" / "conftest.py", "real git": _git_config(),
              "host home": Path("/root/.bashrc"), "shadow": Path("/etc/shadow")}
    allowed = {"effilab": fake_repo / "effilab" / "__init__.py", "grader": fake_repo / "grader" / "__init__.py",
               "scratch": scratch / "mine.txt", "real effilab": REPO / "effilab" / "__init__.py"}
    j = jail.Jail(writable=[scratch], repo=fake_repo, hidden=[fake_repo / "grader" / "hidden_course"])
    proc = j.popen([sys.executable, "-c", PROBE + textwrap.dedent("""
        print("ready", flush=True)
        wait_for(sys.argv[1])
        paths = json.loads(sys.argv[2])
        print(json.dumps({k: read(p) for k, p in paths.items()}))
        """), str(scratch / "go"), json.dumps({k: str(p) for k, p in {**secret, **allowed}.items()})],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    late.mkdir()
    (late / "secret_seed").write_text("7")
    (scratch / "go").write_text("")
    seen = json.loads(proc.communicate(timeout=300)[0].strip().splitlines()[-1])
    assert all(p.exists() for p in secret.values() if not str(p).startswith("/root")), "the test's files are missing"
    assert {k: seen[k] for k in allowed} == {k: "ok" for k in allowed}
    assert {k: v for k, v in seen.items() if k in secret and v == "ok"} == {}


def test_writes_outside_the_scratch_fail(fake_repo, scratch):
    marker = f"effilab-jail-test-{os.getpid()}"
    targets = {"venv .pth": SITE / f"{marker}.pth", "repo package": REPO / "effilab" / f"{marker}.py",
               "fake repo": fake_repo / "grader" / f"{marker}.py", "python": Path(sys.base_prefix) / marker,
               "etc": Path("/etc") / marker, "root": Path("/") / marker}
    j = jail.Jail(writable=[scratch], repo=fake_repo)
    rc, seen, err = run(j, """
        t = json.loads(sys.argv[1])
        out = {k: write(p) for k, p in t.items()}
        out["host tmp"] = write("/tmp/" + sys.argv[2])
        out["scratch"] = write(sys.argv[3])
        print(json.dumps(out))
        """, json.dumps({k: str(p) for k, p in targets.items()}), marker, scratch / "out.txt")
    assert rc == 0, err
    assert seen.pop("scratch") == "ok" and (scratch / "out.txt").read_text() == "x"
    assert seen.pop("host tmp") == "ok"  # the jail's /tmp is its own…
    assert not (Path("/tmp") / marker).exists()  # …and not the host's
    assert {k: v for k, v in seen.items() if v == "ok"} == {}
    assert not any(p.exists() for p in targets.values())
    if ROOT:
        assert (scratch / "out.txt").stat().st_uid == jail.BASE_UID + jail.SLOT_BASE


def test_no_network(scratch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # the listener works from the host
        server.accept()[0].close()
        rc, seen, err = run(jail.Jail(writable=[scratch]), """
            port = int(sys.argv[1])
            print(json.dumps({
                "host loopback": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=5)),
                "internet": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=5)),
                "dns": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
                "interfaces": sorted(n for _, n in socket.if_nameindex()),
            }))
            """, port)
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()  # nobody from the jail reached it
    finally:
        server.close()
    assert rc == 0, err
    assert seen["host loopback"] == "ECONNREFUSED" and seen["internet"] == "ENETUNREACH"
    assert seen["dns"] != "ok" and seen["interfaces"] == ["lo"]


DAEMON = """
    import fcntl
    lock, go, survived = sys.argv[1], sys.argv[2], sys.argv[3]
    if os.fork() == 0:  # the classic daemon: fork, setsid, fork again, the parent exits
        os.setsid()
        if os.fork() == 0:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            open(lock + ".held", "w").close()
            wait_for(go)  # only a process that outlived the jail can see this file
            open(survived, "w").close()
            time.sleep(600)
        os._exit(0)
    wait_for(lock + ".held")
"""


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_nothing_outlives_the_jail(scratch, end):
    """A double-forked, setsid daemon dies with the jail: once the jail has ended, the flock it held
    is free at once and it never sees the file created afterwards."""
    lock, go, survived = scratch / "lock", scratch / "go", scratch / "survived"
    ending = "print(json.dumps('daemon up'))" if end == "exit" else """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("daemon up", flush=True)
        time.sleep(600)
        """
    code = PROBE + textwrap.dedent(DAEMON) + textwrap.dedent(ending)
    proc = jail.Jail(writable=[scratch]).popen([sys.executable, "-c", code, lock, go, survived],
                                               stdout=subprocess.PIPE, text=True)
    assert "daemon up" in proc.stdout.readline()
    if end == "kill":
        jail.kill(proc)
    assert proc.wait(timeout=300) == (0 if end == "exit" else -9)
    go.write_text("")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while the daemon lives
    finally:
        os.close(fd)
    assert not survived.exists()
    if ROOT:
        assert not _processes_of(jail.BASE_UID + jail.SLOT_BASE)


def _processes_of(uid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid:
                out.append(int(p))
        except OSError:
            pass
    return out


def test_fork_bomb_is_contained(scratch):
    """Forking stops at the jail's task limit (EAGAIN); the host can still start processes; the
    forked processes all end with the jail. As root, the slot's own uid holds them."""
    j = jail.Jail(writable=[scratch], nproc=40, slot=7)
    proc = j.popen([sys.executable, "-c", PROBE + textwrap.dedent("""
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(600)
                    os._exit(0)
                n += 1
        except OSError as e:
            print(json.dumps([n, errno.errorcode[e.errno]]), flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    n, err = json.loads(proc.stdout.readline())
    assert err == "EAGAIN" and 0 < n < 40
    if ROOT:
        uid = jail.BASE_UID + jail.SLOT_BASE + 7
        assert 0 < len(_processes_of(uid)) <= 40
    assert subprocess.run(["true"]).returncode == 0  # the host is unaffected
    jail.kill(proc)
    if ROOT:
        assert not _processes_of(uid)


def test_limits_inside(scratch):
    j = jail.Jail(writable=[scratch], nproc=300, file_bytes=1 << 20, memory_bytes=2 << 30, gpu=False, slot=3)
    rc, seen, err = run(j, """
        import resource
        lim = {n: resource.getrlimit(getattr(resource, n)) for n in
               ("RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_AS")}
        big = attempt(lambda: open("big", "wb").write(b"x" * (2 << 20)))
        try:
            b = bytearray(3 << 30)
            mem = "allocated"
        except MemoryError:
            mem = "MemoryError"
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        caps = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs")}
        print(json.dumps({"lim": lim, "big": big, "mem": mem, "uid": os.getresuid(), "caps": caps,
                          "home": os.environ["HOME"], "cwd": os.getcwd()}))
        """)
    assert rc == 0, err
    lim = {k: tuple(v) for k, v in seen["lim"].items()}
    assert lim == {"RLIMIT_NPROC": (300, 300), "RLIMIT_FSIZE": (1 << 20, 1 << 20), "RLIMIT_CORE": (0, 0),
                   "RLIMIT_NOFILE": (4096, 4096), "RLIMIT_AS": (2 << 30, 2 << 30)}
    assert seen["big"] == "EFBIG" and seen["mem"] == "MemoryError"
    assert seen["caps"] == {"CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16, "CapAmb": "0" * 16,
                            "NoNewPrivs": "1"}
    assert seen["home"].startswith(str(scratch)) and seen["cwd"] == str(scratch)
    if ROOT:
        assert seen["uid"] == [jail.BASE_UID + jail.SLOT_BASE + 3] * 3


def test_memory_watchdog_stops_the_jail(scratch):
    """Three processes under the per-process limit but over the jail's total: the watchdog kills
    the jail and says why (the same watchdog is the only memory limit on a GPU)."""
    j = jail.Jail(writable=[scratch], memory_bytes=600 << 20, gpu=False)
    proc = j.popen([sys.executable, "-c", PROBE + textwrap.dedent("""
        for _ in range(2):
            if os.fork() == 0:
                break
        held = bytearray(b"x") * (300 << 20)  # written, so resident
        time.sleep(600)
        """)], stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == -9
    assert "memory limit" in proc.limit_hit and "0.59 GiB allowed" in proc.limit_hit


def test_host_environment_does_not_leak(monkeypatch, scratch):
    monkeypatch.setenv("EFFILAB_TEST_POSTGRES_URL", "postgresql://user:password@db/x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    j = jail.Jail(writable=[scratch], env={"MY_SETTING": "1"})
    rc, env, err = run(j, "print(json.dumps(dict(os.environ)))")
    assert rc == 0, err
    assert "EFFILAB_TEST_POSTGRES_URL" not in env and "password" not in json.dumps(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["MY_SETTING"] == "1"
    for k in ("HOME", "TMPDIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        assert env[k].startswith(str(scratch) + "/"), k


def test_packages_on_the_pythonpath_are_importable(monkeypatch, tmp_path, scratch):
    """The GPU machine installs nbgrader's stack with ``pip install --target /tmp/site`` and puts it
    on PYTHONPATH: the jail shows such folders read-only and keeps them on its own PYTHONPATH."""
    site_dir = tmp_path / "site"
    (site_dir / "sitemod").mkdir(parents=True)
    (site_dir / "sitemod" / "__init__.py").write_text("VALUE = 7\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(site_dir)]))
    rc, seen, err = run(jail.Jail(writable=[scratch]), """
        import sitemod
        print(json.dumps([sitemod.VALUE, write(os.path.join(os.path.dirname(sitemod.__file__), "x.py"))]))
        """)
    assert rc == 0, err
    assert seen == [7, "EROFS"]


TORCH_TRITON = """
    import effilab, torch, triton, triton.language as tl
    @triton.jit
    def add(x, y, out, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        tl.store(out + i, tl.load(x + i, mask=m) + tl.load(y + i, mask=m), mask=m)
    x, y = torch.randn(1000), torch.randn(1000)
    out = torch.empty(1000)
    add[(4,)](x, y, out, 1000, BLOCK=256)
    w = torch.randn(64, 64, requires_grad=True)
    (w @ w).sum().backward()
    print(json.dumps({"triton": bool(torch.allclose(out, x + y)), "grad": w.grad is not None,
                      "interpreter": os.environ.get("TRITON_INTERPRET")}))
"""


def test_torch_and_triton_run_inside(scratch):
    rc, seen, err = run(jail.Jail(writable=[scratch], memory_bytes=8 << 30), TORCH_TRITON)
    assert rc == 0, err
    assert seen == {"triton": True, "grad": True, "interpreter": "1"}


def test_a_gpu_jail_has_no_address_space_limit(scratch):
    """CUDA reserves terabytes of virtual memory: with a GPU the memory limit is the watchdog's only."""
    assert "RLIMIT_AS" not in jail.Jail(writable=[scratch], gpu=True, memory_bytes=8 << 30).limits()
    assert jail.Jail(writable=[scratch], gpu=False, memory_bytes=8 << 30).limits()["RLIMIT_AS"] == 8 << 30


GPU_CODE = """
    import effilab, torch, triton, triton.language as tl
    @triton.jit
    def add(x, y, out, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        tl.store(out + i, tl.load(x + i, mask=m) + tl.load(y + i, mask=m), mask=m)
    n = 1 << 20
    x, y = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    add[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
    torch.cuda.synchronize()
    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); a @ a; end.record(); torch.cuda.synchronize()
    print(json.dumps({"cuda": torch.cuda.is_available(), "name": torch.cuda.get_device_name(),
                      "triton": bool(torch.allclose(out, x + y)), "interpreter": os.environ.get("TRITON_INTERPRET"),
                      "event_ms": start.elapsed_time(end), "cache": sorted(os.listdir(os.environ["TRITON_CACHE_DIR"]))[:1]}))
"""


@pytest.mark.gpu
def test_cuda_and_compiled_triton_run_inside(scratch):
    """On the GPU machine: the jail binds the NVIDIA devices, CUDA initialises, Triton compiles a
    real kernel (gcc, ptxas, ldconfig, the cache in the scratch) and CUDA events time it."""
    j = jail.Jail(writable=[scratch], memory_bytes=32 << 30)
    assert j.gpu
    rc, seen, err = run(j, GPU_CODE, as_file=True)
    assert rc == 0, err
    assert seen["cuda"] and seen["triton"] and seen["interpreter"] is None and seen["event_ms"] > 0
    assert seen["cache"], "Triton wrote nothing to its cache in the scratch"


NONROOT_DRIVER = """
import fcntl, json, os, subprocess, sys, tempfile
sys.path.insert(0, sys.argv[1])
from grader import jail
scratch = tempfile.mkdtemp()
j = jail.Jail(writable=[scratch], nproc=40)
code = sys.argv[2] + '''
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
        n += 1
except OSError as e:
    forked = errno.errorcode[e.errno]
print(json.dumps({"uid": os.getuid(), "forked": forked, "n": n, "solutions": read(sys.argv[1]),
                  "write repo": write(sys.argv[2]),
                  "net": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=5))}), flush=True)
'''
lock = os.path.join(scratch, "lock")
proc = j.popen([sys.executable, "-c", code, sys.argv[3], sys.argv[4]], stdout=subprocess.PIPE, text=True)
seen = json.loads(proc.stdout.readline())
jail.kill(proc)
seen["available"] = jail.available()[1]
seen["left"] = [p for p in jail.descendants(os.getpid())]
print(json.dumps(seen))
"""


def _others_can_read(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@pytest.mark.skipif(not ROOT or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv")
                    or not _others_can_read(REPO / "grader"),
                    reason="needs root (to become another user), /usr/bin/python3, setpriv and a checkout "
                           "other users can read")
def test_the_non_root_path_uses_a_user_namespace():
    """The grader run by a normal user (here: nobody, with the system's Python) jails through bwrap's
    user namespace: the same limits hold, the task limit counts the jail's tasks only."""
    d = tempfile.mkdtemp(prefix="effilab-nonroot-")
    try:
        os.chmod(d, 0o777)
        driver = Path(d) / "driver.py"
        driver.write_text(NONROOT_DRIVER)
        r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--",
                            "/usr/bin/python3", str(driver), str(REPO), PROBE,
                            str(REPO / "solutions" / "01_float_formats.ipynb"), str(REPO / "effilab" / "x.py")],
                           capture_output=True, text=True, timeout=300, cwd=d, env={"PATH": "/usr/bin:/bin"})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert "user namespace" in seen["available"]
    assert seen["uid"] == 65534 and seen["forked"] == "EAGAIN" and seen["n"] < 40
    assert seen["solutions"] != "ok" and seen["write repo"] != "ok" and seen["net"] == "ENETUNREACH"
    assert seen["left"] == []
    assert not (REPO / "effilab" / "x.py").exists()


SQLITE_CHEAT = '''
import sqlite3
try:  # sqlite opens the file in C: the audit hook's check of open() does not see it
    sqlite3.connect("{gb}").execute("CREATE TABLE pwned (x)")
except Exception as e:
    print(e)
'''


@pytest.mark.slow
def test_the_grading_sandbox_is_the_jail(tmp_path, monkeypatch):
    """grader.verify runs every part in the jail: a correct exercise scores, and a cheat that writes
    the gradebook with sqlite3 — which the in-process audit hook does not see — changes nothing."""
    import sqlite3

    import nbformat

    from grader import verify
    from grader.course import Course

    monkeypatch.delenv("EFFILAB_UNSANDBOXED", raising=False)
    course = Course(root=tmp_path / "course")
    course.prepare()
    verify.course_secret(course)
    gb = course.root / "gradebook.db"
    with sqlite3.connect(gb) as db:
        db.execute("CREATE TABLE grade (x)")
    tables = lambda: sorted(r[0] for r in sqlite3.connect(gb).execute("SELECT name FROM sqlite_master"))  # noqa: E731
    a = "01_float_formats"
    nb = nbformat.read(str(REPO / "grader" / "examples" / a / f"alice_{a}.ipynb"), as_version=4)
    cheat = nbformat.read(str(REPO / "grader" / "examples" / a / f"alice_{a}.ipynb"), as_version=4)
    for c in cheat.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "round_to_bf16_solution":
            c.source = SQLITE_CHEAT.format(gb=gb) + c.source  # then alice's correct solution
    paths = []
    for who, book in (("alice", nb), ("mallory", cheat)):
        p = tmp_path / who / f"{a}.ipynb"
        p.parent.mkdir()
        nbformat.write(book, str(p))
        paths.append(p)
    good = verify.verify_notebook(course, a, paths[0], timeout=300, log=lambda *x: None, only={"round_to_bf16_check"})
    bad = verify.verify_notebook(course, a, paths[1], timeout=300, log=lambda *x: None, only={"round_to_bf16_check"})
    assert good[0].points == good[0].max_points > 0, good[0].report
    assert bad[0].points == bad[0].max_points, bad[0].report  # the cheat did not break the grading
    assert tables() == ["grade"]
