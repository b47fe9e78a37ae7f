"""Guards for the grading worker, installed after the trusted code is imported and before any
student code runs.

* An audit hook (PEP 578; it cannot be removed once added) refuses, from student code, starting
  processes, opening network sockets, loading native libraries through ctypes, and opening files
  under the course's secret folders (gradebook, solutions, hidden tests) or writing outside the
  worker's scratch folder. Calls made by torch's or triton's own code (e.g. Triton invoking its
  compiler) are allowed: the hook looks at who is calling.
* One narrower rule for the course's launcher of process groups (effilab/dist.py, notebook 10): its
  ``os.fork`` is allowed only when every frame between it and the grader's own is trusted
  (effilab's, torch's or the standard library's): an exercise spec's ``run`` may start ranks,
  student code calling the launcher may not. The ranks are forked copies of the worker, hook armed, so student
  code in a rank is refused what it is refused in the worker.
* :class:`Integrity` remembers the objects the checker relies on (timers, CUDA events, the
  checker's functions) and says which were replaced; the worker restores them and scores the
  part 0 when student code tampered with them.
"""
from __future__ import annotations

import inspect
import os
import sys
import sysconfig
import time

_ACTIVE = [False]
_DENY_READ: list[str] = []
_ALLOW_WRITE: list[str] = []
_TRUSTED_DIRS: list[str] = []
_LAUNCHERS: list[str] = []  # effilab/dist.py: forks only from a stack of trusted frames
_GRADER_DIR = os.path.dirname(os.path.realpath(__file__)) + os.sep

DENIED_EVENTS = {
    "subprocess.Popen": "starting a process",
    "os.system": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "starting a process",
    "os.forkpty": "starting a process",
    "os.kill": "signalling a process",
    "socket.connect": "network access",
    "socket.bind": "network access",
    "socket.getaddrinfo": "network access",
    "socket.sendto": "network access",
    "ctypes.dlopen": "loading native code",
    "ctypes.dlsym": "loading native code",
    "ctypes.cdata": "raw memory access",
    "sys.settrace": "tracing the grader",
    "sys.setprofile": "tracing the grader",
}


_STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep


def _trusted_caller() -> bool:
    """Whether the code asking is torch's, triton's or effilab's own: the innermost frame outside the
    standard library decides (student code calling through a library frame further out stays untrusted)."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith("<") or not fn.startswith(_STDLIB) or "site-packages" in fn:
            return any(fn.startswith(d) for d in _TRUSTED_DIRS)
        f = f.f_back
    return False


def _innermost_file() -> str:
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_STDLIB) and "site-packages" not in f.f_code.co_filename:
        f = f.f_back
    return os.path.realpath(f.f_code.co_filename) if f is not None and not f.f_code.co_filename.startswith("<") else ""


def _untrusted_on_stack() -> bool:
    """Whether, between the caller and the grader's own frame that started the work (the worker's
    ``run_part``), any frame is code that is neither the trusted packages' nor the standard library's
    (student cells, ``<string>``, files elsewhere). Frames beyond the grader's are the process's
    start-up (``runpy``), not asked."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(_GRADER_DIR):
            return False
        inside_stdlib = fn.startswith(_STDLIB) and "site-packages" not in fn
        if not inside_stdlib and not any(fn.startswith(d) for d in _TRUSTED_DIRS):
            return True
        f = f.f_back
    return False


def _hook(event: str, args) -> None:
    if not _ACTIVE[0]:
        return
    if event in DENIED_EVENTS:
        if event == "os.fork" and _innermost_file() in _LAUNCHERS and _untrusted_on_stack():
            raise PermissionError("grading sandbox: starting ranks (effilab.dist.launch) is the exercise's job, "
                                  "not graded code's")
        if not _trusted_caller():
            raise PermissionError(f"grading sandbox: {DENIED_EVENTS[event]} ({event}) is not allowed in graded code")
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if any(path.startswith(d) for d in _DENY_READ):
            raise PermissionError(f"grading sandbox: reading {path} is not allowed")
        writing = any(c in mode for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if writing and not any(path.startswith(d) for d in _ALLOW_WRITE) and not _trusted_caller():
            raise PermissionError(f"grading sandbox: writing {path} is not allowed")


def install(deny_read: list[str], allow_write: list[str]) -> None:
    """Add the audit hook (once per process) and arm it."""
    import torch

    _DENY_READ[:] = [os.path.realpath(d) for d in deny_read]
    _ALLOW_WRITE[:] = [os.path.realpath(d) for d in allow_write] + ["/dev/null"]
    import effilab

    trusted = [os.path.dirname(torch.__file__), os.path.dirname(effilab.__file__)]
    try:
        import triton

        trusted.append(os.path.dirname(triton.__file__))
    except ImportError:
        pass
    _TRUSTED_DIRS[:] = [os.path.realpath(d) + os.sep for d in trusted]
    _LAUNCHERS[:] = [os.path.realpath(os.path.join(os.path.dirname(effilab.__file__), "dist.py"))]
    sys.addaudithook(_hook)
    _ACTIVE[0] = True


class Integrity:
    """Snapshot of (owner, attribute) → object for what the checker relies on."""

    def __init__(self):
        import builtins

        import torch

        import effilab.bench as bench
        import effilab.grading.calls as calls
        import effilab.grading.compare as compare
        import effilab.grading.core as core
        import effilab.grading.measure as measure
        import effilab.grading.wire as wire

        self.items: list[tuple[object, str, object]] = []
        watch = [(time, ["perf_counter", "perf_counter_ns", "time", "monotonic", "sleep"]),
                 (builtins, ["isinstance", "len", "float", "range", "print", "open", "__import__"]),
                 (torch, ["empty", "empty_like", "equal", "isnan", "where", "randn", "randint", "manual_seed"]),
                 (torch.Tensor, ["clone", "cpu", "to", "view", "__eq__", "__ne__", "equal", "item", "sum", "any", "all"]),
                 *[(m, [n for n in dir(m) if not n.startswith("__")]) for m in (core, calls, compare, measure, wire,
                                                                                 bench)]]
        watch.append((torch.cuda, ["Event", "synchronize", "Stream", "current_stream", "max_memory_allocated",
                                   "reset_peak_memory_stats", "memory_allocated", "empty_cache", "is_available"]))
        for owner, names in watch:
            for n in names:
                obj = getattr(owner, n, None)
                # functions and classes only: module-level data (caches, buffers) may change legitimately
                if obj is not None and (callable(obj) or isinstance(obj, type)):
                    self.items.append((owner, n, obj))
        for name, ex in core.REGISTRY.items():
            for n in ("cases", "run", "expect", "judge", "speed_part", "memory_part"):
                if hasattr(type(ex), n):
                    self.items.append((type(ex), n, getattr(type(ex), n)))

    @staticmethod
    def _now(owner, n: str, obj):
        """What ``owner.n`` is now, compared as it was stored: a classmethod or staticmethod set on a
        class (the sandbox's traps do that) is read raw, since each attribute access builds a new
        bound method."""
        if isinstance(obj, (classmethod, staticmethod)):
            return inspect.getattr_static(owner, n, None)
        return getattr(owner, n, None)

    def changed(self) -> list[str]:
        out = []
        for owner, n, obj in self.items:
            if self._now(owner, n, obj) is not obj:
                out.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{n}")
        return out

    def restore(self) -> None:
        for owner, n, obj in self.items:
            if self._now(owner, n, obj) is not obj:
                try:
                    setattr(owner, n, obj)
                except (AttributeError, TypeError):
                    pass
