"""The OS-level sandbox ("jail") around every execution of student code, built on bubblewrap.

The audit hook of :mod:`grader.sandbox` stays as defence in depth, but it lives inside the very
process it guards, so C-level reads and writes, ``os.fork``, daemons, sqlite3 on the gradebook or a
``%pip install`` that drops a ``.pth`` into the instructor's venv all pass it by. A jail is enforced
by the kernel instead, in the spirit of otter-grader's per-submission containers, with Debian's
``bwrap`` (bubblewrap; Linux namespaces, no daemon, no image to build):

* **files — an allowlist.** A new, empty root in which only these appear, read-only: the system
  directories (/usr and the /bin, /lib*, /sbin links), the few /etc files that Python, torch,
  Triton and CUDA read, the Python installation in use (prefixes, site-packages, the targets of
  ``.pth`` files and of editable installs) and, of the repository, the packages ``effilab/`` and
  ``grader/`` only — never ``grader/course/`` (secret seed, gradebook, other students),
  ``grader/examples/``, ``solutions/``, ``tests/`` or ``.git``, and never a path listed in
  ``hidden`` even where it lies inside something bound. The caller's ``writable`` folders (the
  scratch first) are bound read-write; ``/tmp`` and ``/dev/shm`` are private, size-limited tmpfs;
  HOME and every cache (Triton, inductor, matplotlib, XDG) point into the scratch, so nothing a
  student's run caches can reach the next student. The host's environment variables do not pass,
  except the few in ``PASS_ENV``.
* **namespaces.** Own pid, net (no network at all, not even to the host's loopback), ipc, uts and
  cgroup namespaces; ``--die-with-parent``, ``--new-session`` (no terminal injection).
  **Nothing outlives the jail**: when its main process ends, or bwrap is killed, the pid
  namespace's init dies and the kernel kills every process left inside (double-forked daemons
  included); :func:`kill` does it at once.
* **user and limits.** As root (CI, the GPU machine, Docker), :mod:`grader.jail_init` drops to
  uid/gid ``61000 + slot`` (which clears every capability) — one uid per parallel grading
  slot, since RLIMIT_NPROC counts per uid and root is exempt from it. As a normal user, bwrap's
  user namespace (without nested user namespaces) does that job. Then RLIMIT_NPROC, RLIMIT_FSIZE,
  RLIMIT_NOFILE, RLIMIT_CORE=0 and, without a GPU, RLIMIT_AS; ``no_new_privs`` and no capability
  left are checked before the program starts.
* **memory.** RLIMIT_AS cannot be used with CUDA (it reserves huge virtual ranges), so
  ``memory_bytes`` is also enforced from outside by a watchdog thread summing the resident memory
  of every process in the jail and killing it over the limit (:class:`Watchdog`; on a GPU this is
  the only memory limit). GPU memory itself is not limited.
* **GPU.** With ``gpu`` (default: when /dev/nvidia* exist) the NVIDIA device nodes and /dev/dri
  are bound, and /sys read-only for CUDA's and NVML's topology queries.

What a jail does **not** give: GPU isolation (another process's GPU memory or timing is not
hidden; a GPU side channel remains), a disk quota for the scratch (only RLIMIT_FSIZE per file),
protection against kernel exploits (no seccomp filter), CPU shares (the caller's wall-clock limit
bounds CPU time). The caller kills a run that exceeds its wall-clock limit with :func:`kill`.

``EFFILAB_BWRAP`` names the bwrap binary to use (e.g. one unpacked from Debian's .deb on a machine
without a package manager: benchmarks/gpu/bwrap_deb.sh).
"""
from __future__ import annotations

import ast
import functools
import glob
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .jail_proc import JailedPopen, Watchdog, descendants, kill, read_init, tree_rss, wait, watch  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
INIT = Path(__file__).resolve().with_name("jail_init.py")
BWRAP_ENV = "EFFILAB_BWRAP"
INSTALL = ("install bubblewrap: `apt-get install -y bubblewrap` (Debian/Ubuntu), or point EFFILAB_BWRAP at a "
           "bwrap binary (benchmarks/gpu/bwrap_deb.sh unpacks Debian's on a machine without apt)")
BASE_UID = 61000  # as root, slot k runs as uid/gid 61000 + k (unused by Debian's allocation ranges)
MAX_SLOTS = 1000
# Graders that share a machine (two courses; the test suite's parallel workers) each take their own
# range of sandbox uids: EFFILAB_SLOT_BASE=k·MAX_SLOTS shifts this process's slots by it.
SLOT_BASE = int(os.environ.get("EFFILAB_SLOT_BASE", "0") or 0)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/ld.so.cache", "/etc/ld.so.conf",
             "/etc/ld.so.conf.d", "/etc/localtime", "/etc/timezone", "/etc/os-release", "/etc/alternatives",
             "/etc/fonts", "/etc/mime.types", "/etc/hosts", "/etc/host.conf", "/etc/gai.conf", "/etc/ssl/certs")
PACKAGES = ("effilab", "grader")  # the only parts of a repository a jail sees
PRIVATE = {"grader": ("course", "examples")}  # never bound, even inside an allowed package
PASS_ENV = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
            "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "TRITON_INTERPRET", "TRITON_LIBCUDA_PATH",
            "TRITON_PTXAS_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "NBGRADER_EXECUTION")
GIB = 1 << 30


class JailUnavailable(RuntimeError):
    """bwrap is missing or cannot build a sandbox on this machine."""


# ------------------------------------------------------------------------------------------------ bwrap
def bwrap_path() -> str | None:
    """The bwrap binary: ``$EFFILAB_BWRAP`` when set (even if it does not exist: a typo must not fall
    back silently to another binary), else ``bwrap`` on PATH."""
    if os.environ.get(BWRAP_ENV):
        p = os.environ[BWRAP_ENV]
        return p if os.access(p, os.X_OK) else None
    return shutil.which("bwrap")


def available() -> tuple[bool, str]:
    """(True, what runs) when a jail can be built here, else (False, why and how to fix it).

    Probes by running a trivial program in a real jail, so a bwrap that exists but cannot create
    namespaces (unprivileged user namespaces disabled, a container without CAP_SYS_ADMIN) is
    reported too. Cached per bwrap binary."""
    exe = bwrap_path()
    if exe is None:
        where = f"EFFILAB_BWRAP={os.environ[BWRAP_ENV]!r} is not an executable file" \
            if os.environ.get(BWRAP_ENV) else "bwrap is not on PATH"
        return False, f"no sandbox: {where}; {INSTALL}"
    return _probe(exe, os.geteuid() == 0)


@functools.lru_cache(maxsize=None)
def _probe(exe: str, root: bool) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="effilab-jail-probe-") as d:
        jail = Jail(writable=[Path(d)], gpu=False)
        try:
            r = subprocess.run(jail.command([sys.executable, "-I", "-S", "-c", "pass"]), capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"no sandbox: running {exe} failed ({exc}); {INSTALL}"
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        hint = ("as root, bwrap needs CAP_SYS_ADMIN (a container must be privileged)" if root else
                "as a normal user, bwrap needs unprivileged user namespaces (sysctl user.max_user_namespaces "
                "> 0; kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04) — or run the grader as root")
        return False, f"no sandbox: {exe} cannot build a jail here ({why}); {hint}"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    how = f"as root: jailed programs run as uid {BASE_UID}+slot" if root else "in a user namespace"
    return True, f"{version or 'bwrap'} at {exe}, {how}"


def require() -> None:
    """Raise :class:`JailUnavailable` with the reason and the fix when no jail can be built."""
    ok, why = available()
    if not ok:
        raise JailUnavailable(why)


# ------------------------------------------------------------------------------------------------ paths
def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both real, absolute paths)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _pth_dirs(site_dir: str) -> list[str]:
    """Directories that the ``.pth`` files of ``site_dir`` add to sys.path (``import`` lines run
    code and add nothing by themselves; editable installs are read by :func:`_editable_targets`)."""
    out = []
    for pth in sorted(glob.glob(os.path.join(site_dir, "*.pth"))):
        try:
            lines = Path(pth).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith(("import ", "import\t")):
                continue
            p = os.path.join(site_dir, line)
            if os.path.isdir(p):
                out.append(os.path.realpath(p))
    return out


def _editable_targets(site_dir: str) -> list[str]:
    """Package paths of setuptools' editable installs (``__editable___*_finder.py``: a ``MAPPING``
    literal from package name to source folder, e.g. effilab -> /work/main/effilab)."""
    out = []
    for finder in sorted(glob.glob(os.path.join(site_dir, "__editable___*_finder.py"))):
        try:
            m = re.search(r"^MAPPING\s*(?::[^=]*)?=\s*(\{.*?\})\s*$", Path(finder).read_text(), re.M | re.S)
            mapping = ast.literal_eval(m.group(1)) if m else {}
        except (OSError, ValueError, SyntaxError):
            continue
        out += [os.path.realpath(p) for p in mapping.values() if isinstance(p, str) and os.path.exists(p)]
    return out


def site_dirs() -> list[str]:
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    dirs += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    return [os.path.realpath(d) for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def path_dirs() -> list[str]:
    """Folders the grader's Python imports from that the jail's would not find by itself: the
    absolute entries of PYTHONPATH (the GPU machine installs its nbgrader stack with
    ``pip install --target /tmp/site``) and an active user site (the jail has another HOME)."""
    dirs = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else ""
    if user and user in sys.path:
        dirs.append(user)
    real = [os.path.realpath(d) for d in dirs if os.path.isdir(d)]
    return [d for d in dict.fromkeys(real) if d != "/"]


def python_trees() -> list[str]:
    """The Python installation in use: prefixes (a venv and the interpreter it was made from),
    the interpreter's own folder, site-packages and what their ``.pth`` files add, :func:`path_dirs`."""
    trees = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))] + path_dirs()
    for d in site_dirs():
        trees += [d] + _pth_dirs(d)
    real = [os.path.realpath(t) for t in dict.fromkeys(trees) if os.path.isdir(t)]
    return [t for t in dict.fromkeys(real) if t != "/"]  # a Python "installed" at / must not expose it all


def project_roots(repo: Path) -> list[str]:
    """Repositories of this course the jail must only see the packages of: ``repo``, the checkout
    this module comes from (its jail_init.py runs first in every jail) and any checkout an
    editable install points at (the venv's ``effilab`` may come from another one)."""
    roots = [os.path.realpath(repo), str(REPO)]
    for d in site_dirs():
        roots += [os.path.dirname(t) for t in _editable_targets(d) if os.path.basename(t) in PACKAGES]
    return list(dict.fromkeys(roots))


def package_binds(root: str) -> list[str]:
    """What of a repository is bound: ``effilab/`` whole, ``grader/`` child by child without its
    private folders — so a ``grader/course/`` created later still does not appear in the jail."""
    out = []
    for pkg in PACKAGES:
        p = os.path.join(root, pkg)
        if not os.path.isdir(p):
            continue
        if pkg not in PRIVATE:
            out.append(p)
            continue
        out += [os.path.join(p, c) for c in sorted(os.listdir(p)) if c not in PRIVATE[pkg]]
    return out


def gpu_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def gpu_devices() -> list[str]:
    """The GPU device nodes to bind. The jail's /dev cannot create nodes, and the driver creates
    /dev/nvidia-uvm only on first use: create it first where ``nvidia-modprobe`` can."""
    if glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/nvidia-uvm") and shutil.which("nvidia-modprobe"):
        subprocess.run(["nvidia-modprobe", "-u", "-c=0"], capture_output=True)
    return sorted(glob.glob("/dev/nvidia*")) + (["/dev/dri"] if os.path.isdir("/dev/dri") else [])


def default_nproc() -> int:
    """Tasks (RLIMIT_NPROC counts threads, not processes) a jail may run: 512, or 4 per core on big
    hosts. torch starts one OpenMP thread per core plus an inter-op pool, CUDA a few threads of its
    own, Triton / inductor compile in a pool of worker processes and DataLoaders fork workers: a
    ~16-core GPU host needs ~100-200 tasks; a fork bomb is still stopped after a few hundred."""
    return max(512, 4 * (os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------ spec
@dataclass
class Jail:
    """One sandbox specification; :meth:`command` / :meth:`popen` run a program inside it.

    ``writable``: folders bound read-write (the first is the scratch: HOME, TMPDIR and the caches
    live in ``<scratch>/.jail/``); as root they are handed to the sandbox uid first. ``readonly``:
    extra folders to show read-only. ``hidden``: paths never visible, even inside something bound
    (the course root, solutions, …). ``gpu``: bind the GPU devices (None: when present).
    ``memory_bytes``: RLIMIT_AS without a GPU, and the :class:`Watchdog`'s limit on the jail's
    total resident memory (needs :meth:`popen` or :func:`watch`). ``env``: variables on top of the
    jail's own (the host's do not pass, except ``PASS_ENV``). ``cwd``: defaults to the scratch.
    ``slot``: parallel grading slot, which picks the sandbox uid when running as root.
    """

    writable: list[Path]
    readonly: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)
    gpu: bool | None = None
    nproc: int = field(default_factory=default_nproc)
    memory_bytes: int | None = None
    file_bytes: int = 4 * GIB
    nofile: int = 4096
    tmp_bytes: int = 1 * GIB
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    slot: int = 0
    repo: Path = REPO

    def __post_init__(self):
        if not self.writable:
            raise ValueError("Jail(writable=[...]) needs at least one folder: the scratch the jailed program writes to")
        self.writable = [Path(os.path.realpath(w)) for w in self.writable]
        self.readonly = [Path(os.path.realpath(r)) for r in self.readonly]
        self.hidden = [Path(os.path.realpath(h)) for h in self.hidden]
        self.repo = Path(os.path.realpath(self.repo))
        self.cwd = Path(os.path.realpath(self.cwd)) if self.cwd else self.scratch
        if self.gpu is None:
            self.gpu = gpu_present()
        if not 0 <= self.slot < MAX_SLOTS:
            raise ValueError(f"Jail(slot={self.slot}): the slot must be in 0..{MAX_SLOTS - 1}")
        for name in ("nproc", "file_bytes", "nofile", "tmp_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Jail({name}={getattr(self, name)}): must be a positive number")
        if self.memory_bytes is not None and self.memory_bytes < 64 << 20:
            raise ValueError(f"Jail(memory_bytes={self.memory_bytes}): less than 64 MiB cannot start Python; "
                             "give bytes, e.g. 8 << 30 for 8 GiB, or None for no limit")
        self._check_paths()

    def _check_paths(self) -> None:
        secret = [str(h) for h in self.hidden] + project_roots(self.repo)
        for w in self.writable:
            if not w.is_dir():
                raise ValueError(f"Jail(writable=...): {w} is not an existing folder; create it first")
            if str(w) == "/" or any(inside(s, str(w)) for s in secret):
                raise ValueError(f"Jail(writable=...): {w} contains the repository or a hidden path; give the "
                                 "jail a scratch folder of its own (e.g. tempfile.mkdtemp())")
        for r in self.readonly:
            if not r.exists():
                raise ValueError(f"Jail(readonly=...): {r} does not exist")
            if any(inside(s, str(r)) for s in secret) or any(inside(str(r), str(h)) for h in self.hidden):
                raise ValueError(f"Jail(readonly=...): {r} overlaps a hidden path or contains the repository")
        if not any(inside(str(self.cwd), str(w)) for w in self.writable + self.readonly):
            raise ValueError(f"Jail(cwd={self.cwd}): the working folder must be inside a writable or readonly folder")

    # -- who and where ---------------------------------------------------------------------------
    @property
    def scratch(self) -> Path:
        return self.writable[0]

    @property
    def uid(self) -> int | None:
        """The sandbox uid when the grader is root (None otherwise: the user namespace maps the caller)."""
        return BASE_UID + SLOT_BASE + self.slot if os.geteuid() == 0 else None

    def _home(self) -> Path:
        return self.scratch / ".jail"

    def environment(self) -> dict[str, str]:
        """The jailed program's whole environment: the host's does not leak in (database URLs,
        tokens), only ``PASS_ENV`` and what ``env`` adds."""
        h = self._home()
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        bins = dict.fromkeys([os.path.join(sys.prefix, "bin"), os.path.dirname(os.path.realpath(sys.executable)),
                              "/usr/local/bin", "/usr/bin", "/bin"])
        env.update(PATH=os.pathsep.join(bins), HOME=str(h / "home"), USER="student", LOGNAME="student",
                   TMPDIR=str(h / "tmp"), XDG_CACHE_HOME=str(h / "cache"), MPLCONFIGDIR=str(h / "cache" / "mpl"),
                   TRITON_CACHE_DIR=str(h / "cache" / "triton"), TORCHINDUCTOR_CACHE_DIR=str(h / "cache" / "inductor"),
                   PYTHONPATH=os.pathsep.join(dict.fromkeys([str(self.repo)] + path_dirs())),
                   PYTHONDONTWRITEBYTECODE="1")
        env.setdefault("LANG", "C.UTF-8")
        env.update({str(k): str(v) for k, v in self.env.items()})
        return env

    # -- the bwrap command line ------------------------------------------------------------------
    def _namespace_args(self) -> list[str]:
        args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "effilab-jail", "--die-with-parent", "--new-session"]
        if os.geteuid() == 0:  # privileged bwrap; jail_init drops to the sandbox uid, which clears every capability
            return args
        return args + ["--unshare-user", "--disable-userns"]

    def _system_mounts(self) -> list[tuple[str, list[str]]]:
        ops = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):  # merged /usr: /bin -> usr/bin
                ops.append((d, ["--symlink", os.readlink(d), d]))
            elif os.path.isdir(d):
                ops.append((d, ["--ro-bind", d, d]))
        ops += [(f, ["--ro-bind", f, f]) for f in ETC_FILES if os.path.exists(f)]
        ops += [("/proc", ["--proc", "/proc"]), ("/dev", ["--dev", "/dev"])]
        for tmp in ("/dev/shm", "/tmp"):
            ops.append((tmp, ["--perms", "1777", "--size", str(self.tmp_bytes), "--tmpfs", tmp]))
        if self.gpu:
            ops += [(d, ["--dev-bind", d, d]) for d in gpu_devices()] + [("/sys", ["--ro-bind", "/sys", "/sys"])]
        elif os.path.isdir("/sys/devices/system/cpu"):  # CPU count and caches (OpenMP, cpuinfo)
            ops.append(("/sys/devices/system/cpu", ["--ro-bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]))
        return ops

    def _readonly_mounts(self) -> list[tuple[str, list[str]]]:
        """Python, the repository's packages and ``readonly``, parents before children; a project
        root or hidden path lying inside something bound is covered by an empty tmpfs (or
        /dev/null for a file) before anything under it is bound again."""
        roots = project_roots(self.repo)
        prefixes = [os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)]
        binds = [t for t in python_trees()  # a .pth pointing into a repository must not expose it whole
                 if not any(inside(t, r) for r in roots) or any(inside(t, p) for p in prefixes)]
        for r in roots:
            binds += package_binds(r)
        hidden = [str(h) for h in self.hidden]
        binds = [b for b in dict.fromkeys(binds + [str(r) for r in self.readonly])
                 if not any(inside(b, h) for h in hidden)]
        masks = [m for m in roots + hidden
                 if os.path.exists(m) and any(inside(m, b) and m != b for b in binds)]

        def covered(b: str) -> bool:  # already visible through a bind above it, with no mask in between
            return any(c != b and inside(b, c) and not any(inside(b, m) and inside(m, c) for m in masks)
                       for c in binds)

        ops = [(b, ["--ro-bind", b, b]) for b in binds if not covered(b)]
        ops += [(m, ["--tmpfs", m] if os.path.isdir(m) else ["--ro-bind", "/dev/null", m]) for m in masks]
        ops.sort(key=lambda op: len(Path(op[0]).parts))  # stable: a mask precedes the deeper binds under it
        return ops

    def mount_args(self) -> list[str]:
        """bwrap's filesystem arguments. bwrap would create the missing parents of a mount point
        with mode 0700 (e.g. /root above a Python in /root/.pyenv), which the sandbox uid could not
        enter: each missing parent is created first, 0755, unless it lies in a bound host folder."""
        ops = self._system_mounts() + self._readonly_mounts()
        ops += [(str(w), ["--bind", str(w), str(w)]) for w in self.writable]
        made, bound, out = {"/"}, [], []
        for dest, args in ops:
            parents = [str(p) for p in reversed(Path(dest).parents)]
            for p in parents:
                if p not in made and not any(inside(p, b) for b in bound):
                    out += ["--perms", "0755", "--dir", p]
                    made.add(p)
            out += args
            made.add(dest)
            if args[0] in ("--ro-bind", "--bind", "--dev-bind"):
                bound.append(dest)
        return out

    def command(self, argv: list[str], info_fd: int | None = None) -> list[str]:
        """The command line that runs ``argv`` inside this jail. Prepares the writable folders
        (HOME and caches; as root, hands them to the sandbox uid), so call it right before use.
        With ``info_fd`` (inherited by bwrap), bwrap reports the jail's init there: set
        ``proc.jail_init = read_init(r)`` on the Popen so :func:`kill` and :func:`wait` can wait
        for the last process of the jail (:meth:`popen` does it)."""
        exe = bwrap_path()
        if exe is None:
            raise JailUnavailable(available()[1])
        if not argv:
            raise ValueError("Jail.command(argv): argv is empty; give the program to run, e.g. [sys.executable, ...]")
        self._prepare()
        env = [a for k, v in sorted(self.environment().items()) for a in ("--setenv", k, v)]
        spec = {"uid": self.uid, "gid": self.uid, "limits": self.limits(), "cwd": str(self.cwd)}
        init = [os.path.realpath(sys.executable), "-I", "-S", "-B", str(INIT), json.dumps(spec), "--"]
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        return [exe, *self._namespace_args(), *info, *self.mount_args(), "--remount-ro", "/", "--chdir", "/",
                "--clearenv", *env, "--", *init, *map(str, argv)]

    def limits(self) -> dict[str, int]:
        out = {"RLIMIT_NPROC": int(self.nproc), "RLIMIT_FSIZE": int(self.file_bytes), "RLIMIT_CORE": 0,
               "RLIMIT_NOFILE": int(self.nofile)}
        if self.memory_bytes and not self.gpu:  # CUDA reserves terabytes of address space: watchdog only
            out["RLIMIT_AS"] = int(self.memory_bytes)
        return out

    def _prepare(self) -> None:
        h = self._home()
        for d in (h / "home", h / "tmp", h / "cache" / "mpl", h / "cache" / "triton", h / "cache" / "inductor"):
            d.mkdir(parents=True, exist_ok=True)
        if self.uid is not None:
            for w in self.writable:
                _chown_tree(w, self.uid)

    def popen(self, argv: list[str], pass_fds=(), **popen_kwargs) -> "JailedPopen":
        """Start ``argv`` in the jail; the result is a :class:`subprocess.Popen` whose ``kill()``
        ends the whole jail and whose ``wait()`` returns once nothing of it is left, with a memory
        watchdog when ``memory_bytes`` is set. ``pass_fds`` are inherited by the jailed program
        (e.g. a result pipe). The environment is the jail's: give variables through
        ``Jail(env=...)``, not ``env=``."""
        for bad in ("env", "preexec_fn", "user", "group", "extra_groups"):
            if bad in popen_kwargs:
                raise TypeError(f"Jail.popen(): {bad}= is not accepted; the jail sets it (environment: Jail(env=...))")
        if popen_kwargs.pop("start_new_session", True) is not True:
            raise TypeError("Jail.popen(): start_new_session must stay True (kill() signals the jail's session)")
        return JailedPopen(self, argv, pass_fds=pass_fds, start_new_session=True, **popen_kwargs)


def _chown_tree(root: Path, uid: int) -> None:
    """Give ``root`` and everything in it to ``uid`` (not following links: a link planted in a
    scratch must not make root chown its target)."""
    os.chown(root, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), uid, uid, follow_symlinks=False)
