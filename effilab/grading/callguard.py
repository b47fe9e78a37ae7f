"""The guards :mod:`effilab.grading.provenance` arms around one recorded call.

* Launch hooks on Triton's Python launch path — ``JITFunction.run`` (a GPU), the interpreter's
  ``InterpretedFunction.run`` (a CPU), ``CompiledKernel[grid]`` (a kernel launched again from its
  compiled handle) — and, on a GPU, Triton's launch-enter hook, which sees launches that bypass
  Python (Inductor's). The methods they wrap are captured when this module is imported, before any
  student code runs, and the hooks are installed only while a call is recorded.
* In-call traps on the direct routes that take tensor data to Python/NumPy, that switch the aten
  audit off, or that start a thread (dispatch modes are per thread). Torch's and Triton's own code
  may still use them; student code gets :class:`OwnWorkError`.
* Whose code is it: a kernel is the student's when its Python function was compiled from notebook
  code (a ``<…>`` filename); an op is asked for by Triton when the nearest frame outside torch is
  Triton's own.
"""
from __future__ import annotations

import os
import re
import sys
import sysconfig
from typing import Any, Callable, Collection

import torch

class OwnWorkError(RuntimeError):
    """The student's function did not do the exercise's work in the student's own kernel."""


# ----------------------------------------------------------------------------------------------
# Whose code is it?
# ----------------------------------------------------------------------------------------------
_PSEUDO_FILES = ("<string>", "<stdin>", "<unknown>")
# ipykernel names each cell's code after a hash in a per-process temp folder:
# /tmp/ipykernel_<pid>/<hash>.py (so debuggers can open it); that is notebook code too.
_IPYKERNEL_CELL = re.compile(r"[/\\]ipykernel_\d+[/\\]\d+\.py$")
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
try:
    import triton as _triton
    import triton.runtime.interpreter as _interp
    import triton.runtime.jit as _jit
    from triton.compiler.compiler import CompiledKernel as _CompiledKernel

    _TRITON_DIR = os.path.dirname(_triton.__file__) + os.sep
except ImportError:  # Triton missing: nothing can launch; the recorder still audits the ops
    _triton = _interp = _jit = _CompiledKernel = None
    _TRITON_DIR = None


def is_student_code(code, student_files: Collection[str] | None = None) -> bool:
    """Whether a code object was compiled from notebook code.

    The grader execs each cell under a name such as ``<your cell rms_norm_solution>``, IPython
    under ``<ipython-input-…>`` and ipykernel under ``/tmp/ipykernel_<pid>/<hash>.py``; effilab's,
    torch's and Triton's kernels live in package files. With ``student_files`` (the exact cell
    filenames the grader used) only those count.
    """
    name = getattr(code, "co_filename", "") or ""
    if student_files is not None:
        return name in student_files
    if _IPYKERNEL_CELL.search(name):
        return True
    return name.startswith("<") and not name.startswith("<frozen") and name not in _PSEUDO_FILES


def _library_file(name: str) -> str | None:
    """'torch' or 'triton' when ``name`` is a file of that package, else None."""
    if name.startswith(_TORCH_DIR):
        return "torch"
    if _TRITON_DIR and name.startswith(_TRITON_DIR):
        return "triton"
    return None


def _asked_by_library(frame, skip_stdlib: bool) -> bool:
    """Whether torch's or Triton's own code is asking (the nearest frame; with ``skip_stdlib``, the
    nearest outside the standard library, so a thread pool started by student code is hers)."""
    while skip_stdlib and frame is not None and frame.f_code.co_filename.startswith(_STDLIB):
        frame = frame.f_back
    return frame is not None and _library_file(frame.f_code.co_filename) is not None


# ----------------------------------------------------------------------------------------------
# Launch hooks (installed only while a call is recorded) and in-call traps
# ----------------------------------------------------------------------------------------------
_ACTIVE: list = [None, None]  # [the CallRecord being filled, its student_files]
_ORIGINALS: dict = {}  # captured at import, before any student code: what the hooks wrap


def _capture_originals() -> None:
    if _jit is None:
        return
    _ORIGINALS["jit_run"] = _jit.JITFunction.run
    _ORIGINALS["interp_run"] = _interp.InterpretedFunction.run
    _ORIGINALS["compiled_getitem"] = _CompiledKernel.__getitem__


_capture_originals()


def _recorded_run(orig: Callable, via: str) -> Callable:
    def run(self, *args, grid, warmup, **kwargs):
        rec = _ACTIVE[0]
        if rec is None or warmup:
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        launch = rec._begin_launch(self.fn, args, kwargs, via, student_files=_ACTIVE[1])
        try:
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            rec._end_launch(launch)
    run._effilab_recorder = True
    return run


def _recorded_getitem(orig: Callable) -> Callable:
    def getitem(self, grid):
        runner = orig(self, grid)

        def recorded(*args, **kwargs):
            rec = _ACTIVE[0]
            if rec is None:
                return runner(*args, **kwargs)
            pyfn = getattr(getattr(getattr(self, "src", None), "fn", None), "fn", None)
            launch = rec._begin_launch(pyfn, args, kwargs, "compiled", name=getattr(self, "name", None),
                                       student_files=_ACTIVE[1])
            try:
                return runner(*args, **kwargs)
            finally:
                rec._end_launch(launch)
        return recorded
    getitem._effilab_recorder = True
    return getitem


def _launch_enter_hook(metadata) -> None:
    """Triton's C launcher calls this for every launch on a GPU; one outside the Python-level
    hooks (e.g. a kernel of Inductor's) is recorded as not the student's."""
    rec = _ACTIVE[0]
    if rec is None or rec._depth > 0:
        return
    from .provenance import Launch

    data = getattr(metadata, "data", None) or {}
    rec.launches.append(Launch(str(data.get("name", "?")), False, "?", "hook"))


class _Patches:
    """Attribute replacements undone in reverse order; an inherited attribute is deleted again."""

    def __init__(self):
        self.items: list[tuple[Any, str, Any, bool]] = []

    def set(self, owner, name: str, value) -> None:
        own = name in vars(owner)
        self.items.append((owner, name, vars(owner).get(name), own))
        setattr(owner, name, value)

    def restore(self) -> None:
        from .calls import put_back

        while self.items:
            put_back(*self.items.pop())


def _install_launch_hooks(p: _Patches) -> None:
    if _jit is None:
        return
    p.set(_jit.JITFunction, "run", _recorded_run(_ORIGINALS["jit_run"], "run"))
    p.set(_interp.InterpretedFunction, "run", _recorded_run(_ORIGINALS["interp_run"], "run"))
    p.set(_CompiledKernel, "__getitem__", _recorded_getitem(_ORIGINALS["compiled_getitem"]))


def _launch_hooks_intact() -> list[str]:
    if _jit is None:
        return []
    where = [(_jit.JITFunction, "run"), (_interp.InterpretedFunction, "run"), (_CompiledKernel, "__getitem__")]
    return [f"{cls.__name__}.{n}" for cls, n in where if not getattr(vars(cls).get(n), "_effilab_recorder", False)]


def _escape_trap(what: str, original: Callable, kind: str) -> Callable:
    """A stand-in for ``original`` while a call is recorded: torch's and Triton's own code may use
    it; student code gets :class:`OwnWorkError` (and the record remembers the attempt)."""
    why = {"data": "takes tensor data out to Python/NumPy",
           "dispatch": "switches off the grader's op audit",
           "thread": "starts a thread (work on another thread escapes the audit)"}[kind]

    def trap(*args, **kwargs):
        if _asked_by_library(sys._getframe(1), skip_stdlib=kind == "thread"):
            return original(*args, **kwargs)
        msg = (f"{what} {why}: in this exercise the work happens in your own Triton kernel; "
               "the grader does not allow it while your function runs")
        rec = _ACTIVE[0]
        if rec is not None and msg not in rec.escapes:
            rec.escapes.append(msg)
        raise OwnWorkError(msg)
    trap.__name__ = getattr(original, "__name__", what)
    trap.__qualname__ = trap.__name__
    return trap


def _escape_routes() -> list[tuple[Any, str, str, str]]:
    """(owner, attribute, shown name, kind) of every route trapped while a call is recorded."""
    import _thread
    import threading

    import torch.utils._python_dispatch as pyd
    import torch.utils.dlpack as dlpack

    routes = [(torch.Tensor, n, f"Tensor.{n}", "data") for n in
              ("numpy", "tolist", "__array__", "__dlpack__", "__reduce_ex__")]
    routes += [(torch, n, f"torch.{n}", "data") for n in ("from_numpy", "frombuffer", "from_dlpack", "save", "load")]
    routes += [(dlpack, n, f"torch.utils.dlpack.{n}", "data") for n in ("from_dlpack", "to_dlpack")]
    routes += [(torch.UntypedStorage, n, f"UntypedStorage.{n}", "data") for n in ("from_buffer", "from_file")]
    routes += [(torch._C, n, f"torch._C.{n}", "dispatch") for n in (
        "_DisableTorchDispatch", "_pop_torch_dispatch_stack", "_push_on_torch_dispatch_stack", "_set_dispatch_mode",
        "_unset_dispatch_mode", "_dispatch_tls_set_dispatch_key_excluded", "_dispatch_tls_set_dispatch_key_included",
        "_ExcludeDispatchKeyGuard", "_IncludeDispatchKeyGuard", "_ForceDispatchKeyGuard", "_PreserveDispatchKeyGuard",
        "_DisablePythonDispatcher", "_dispatch_find_schema_or_throw")]
    routes += [(pyd, n, f"torch.utils._python_dispatch.{n}", "dispatch") for n in (
        "_disable_current_modes", "_pop_mode", "_pop_mode_temporarily", "_push_mode")]
    routes += [(torch._ops.OpOverload, "redispatch", "OpOverload.redispatch", "dispatch"),
               (threading.Thread, "start", "threading.Thread.start", "thread"),
               (_thread, "start_new_thread", "_thread.start_new_thread", "thread"),
               (threading, "_start_new_thread", "threading._start_new_thread", "thread")]
    for extra in ("start_joinable_thread",):
        routes.append((_thread, extra, f"_thread.{extra}", "thread"))
    return [r for r in routes if hasattr(r[0], r[1])]


def _install_escape_traps(p: _Patches) -> None:
    import inspect

    for owner, name, shown, kind in _escape_routes():
        trap = _escape_trap(shown, getattr(owner, name), kind)
        if isinstance(owner, type) and isinstance(inspect.getattr_static(owner, name), (classmethod, staticmethod)):
            trap = staticmethod(trap)  # the original is already bound to its class
        p.set(owner, name, trap)


def _student_threads(student_files) -> list[str]:
    """Other threads whose stack runs notebook code (a helper thread started before the call)."""
    found = []
    for ident, frame in sys._current_frames().items():
        if ident == _thread_ident():
            continue
        f = frame
        while f is not None:
            if is_student_code(f.f_code, student_files):
                found.append(f"a thread runs your code ({f.f_code.co_name}, line {f.f_lineno})")
                break
            f = f.f_back
    return found


def _thread_ident() -> int:
    import threading

    return threading.get_ident()


def _audit_intact(mode) -> list[str]:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    problems = []
    if mode not in _get_current_dispatch_mode_stack():
        problems.append("the op audit was removed from the dispatch stack")
    try:
        if torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.Python):
            problems.append("Python dispatch was excluded")
    except AttributeError:
        pass
    return problems
