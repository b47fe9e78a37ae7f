"""Calling the student's code: quietly, on poisoned memory, on copies of the inputs.

Everything here runs where the student's code runs (the notebook kernel for the self-check, the
grading sandbox for the grade) and serves :meth:`effilab.grading.core.Exercise.run`:

* :func:`quiet` keeps everything off stderr (nbgrader scores a cell that writes to stderr as
  failed) and hands the captured lines to the report instead;
* :func:`poisoned_allocations` fills every tensor the student allocates with ``torch.empty*``
  with a value no right answer contains, so an element a kernel never writes is caught;
* :func:`call_student` runs one case on cloned inputs and returns the output, or a
  :class:`Problem` when the call raised or mutated its inputs;
* :func:`describe_exception` turns the student's exception into a message and a hint that point
  at the student's own line, not at the checker's.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Problem", "quiet", "poisoned_allocations", "poison_value", "clone", "mutated", "describe_exception",
           "call_student", "one_thread", "to_device", "put_back", "as_float"]


@dataclass
class Problem:
    """What a run returns instead of an output when the student's code failed before anything could
    be judged (it raised, it changed its inputs, it returned the wrong kind of object). Plain data: it
    crosses from the sandbox to the grader like any output, and it can only cost points."""

    message: str
    hint: str = ""


# ----------------------------------------------------------------------------------------------
# Quiet execution: nothing may reach stderr, at the Python or the file-descriptor level
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """Capture warnings and everything written to stderr (Python and fd 2) while the block runs.

    Yields a list that holds, after the block, the captured text lines (warnings first). Jupyter
    forwards writes to fd 2 (e.g. from compilers) as a stderr stream, which nbgrader would score
    as a failed test, hence the file-descriptor redirect as well.
    """
    captured: list[str] = []
    buf = io.StringIO()
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        fd, saved = None, None
    tmp = tempfile.TemporaryFile(mode="w+b") if saved is not None else None
    caught: list = []
    try:
        if tmp is not None:
            sys.__stderr__.flush()
            os.dup2(tmp.fileno(), fd)
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(buf):
            warnings.simplefilter("always")
            # as Python and Jupyter do: a deprecation is shown where the notebook's own code triggers it,
            # not where a library the check imports (peft, torch.jit, …) uses a deprecated API of another
            for cat in (DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=cat)
                warnings.filterwarnings("always", category=cat, module="__main__")
            yield captured
    finally:
        fd_text = ""
        if tmp is not None:
            with contextlib.suppress(Exception):
                sys.__stderr__.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            fd_text = tmp.read().decode("utf-8", "replace")
            tmp.close()
        seen = set()
        for w in caught or []:
            msg = f"warning: {w.category.__name__}: {w.message}"
            if msg not in seen:
                seen.add(msg)
                captured.append(msg)
        for text in (buf.getvalue(), fd_text):
            captured += [ln for ln in text.splitlines() if ln.strip()]


@contextlib.contextmanager
def one_thread():
    """Run tiny CPU models on one thread: with several threads (and a busy machine) torch's per-op
    thread hand-offs make a 30-k-parameter model 5–20× slower, and one thread is reproducible.
    Does nothing on a GPU machine; restores the thread count."""
    n = torch.get_num_threads()
    if torch.cuda.is_available() or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Poisoned allocation and input-mutation checks
# ----------------------------------------------------------------------------------------------
def poison_value(dtype: torch.dtype):
    """The value a freshly allocated tensor is filled with during a check (never a plausible answer)."""
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).min + 7 if dtype != torch.uint8 else 0xA5


@contextlib.contextmanager
def poisoned_allocations():
    """Make ``torch.empty``/``empty_like``/``empty_strided``/``Tensor.new_empty`` return poisoned memory.

    Uninitialised memory is often zero on a CPU, which would hide a kernel that skips the tail of
    its output. Inside this block such tensors are filled with :func:`poison_value`.
    """
    orig = {name: getattr(torch, name) for name in ("empty", "empty_like", "empty_strided")}
    orig_new_empty = torch.Tensor.new_empty

    def wrap(f):
        def poisoned(*a, **k):
            t = f(*a, **k)
            if isinstance(t, torch.Tensor) and t.numel() and not t.is_meta:
                with torch.no_grad():
                    t.fill_(poison_value(t.dtype))
            return t

        poisoned.__wrapped__ = f
        return poisoned

    try:
        for name, f in orig.items():
            setattr(torch, name, wrap(f))
        torch.Tensor.new_empty = wrap(orig_new_empty)
        yield
    finally:
        for name, f in orig.items():
            setattr(torch, name, f)
        torch.Tensor.new_empty = orig_new_empty


def clone(obj):
    """A deep copy of tensors inside lists, tuples and dicts (other objects are shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    return obj


def as_float(out, what: str = "one number") -> float | Problem:
    """The student's scalar answer as a float (a Python number or a one-element tensor), or a Problem."""
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            return Problem(f"return {what}, got a tensor of shape {tuple(out.shape)}")
        return float(out.detach().float().item())
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return float(out)
    return Problem(f"return {what} (a float), got {type(out).__name__}")


def device_of(case, default=None) -> torch.device:
    """Where a case's tensors live (the first one found in its args and kwargs; CPU if none): the
    grader judges an output there, wherever the student's code ran."""
    stack = [case.args, case.kwargs]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            return x.device
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return torch.device("cpu")


def on_device(case, dev):
    """A copy of ``case`` with its args' and kwargs' tensors on ``dev``: what the student's code is
    given on this machine (the sandbox does the same with the grader's CPU copy of each case)."""
    from copy import copy

    moved = copy(case)
    moved.args, moved.kwargs = to_device(case.args, dev), to_device(case.kwargs, dev)
    return moved


def to_device(obj, dev):
    """``obj`` with every tensor inside lists, tuples and dicts moved to ``dev``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, dev) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, dev) for k, v in obj.items()}
    return obj


def put_back(owner, name: str, old, had_own: bool) -> None:
    """Undo ``setattr(owner, name, …)``: restore ``old`` if ``owner`` had its own attribute, else delete it."""
    try:
        if had_own:
            setattr(owner, name, old)
        else:
            delattr(owner, name)
    except (AttributeError, TypeError):
        pass


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
        return bool(torch.equal(a.contiguous().view(width), b.contiguous().view(width)))
    return bool(torch.equal(a, b))


def mutated(before, after, path="input") -> str | None:
    """A message naming the first tensor in ``after`` whose bits differ from ``before``, else None."""
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or not _same_bits(before, after.detach()):
            return f"your function modified {path} in place; inputs must be left untouched"
        return None
    if isinstance(before, (list, tuple)):
        for i, (b, a) in enumerate(zip(before, after)):
            m = mutated(b, a, f"{path}[{i}]")
            if m:
                return m
    if isinstance(before, dict):
        for k in before:
            m = mutated(before[k], after.get(k) if isinstance(after, dict) else None, f"{path}[{k!r}]")
            if m:
                return m
    return None


# ----------------------------------------------------------------------------------------------
# The student's exceptions
# ----------------------------------------------------------------------------------------------
_LIBRARY_DIRS = tuple(os.sep + d + os.sep for d in ("effilab", "torch", "triton", "grader"))


def _chain(exc: BaseException, depth: int = 6) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (Triton's interpreter re-raises
    an error of the kernel's body as an InterpreterError *from* it: the kernel's line is inside)."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < depth and all(e is not o for o in out):
        out.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return out


def _student_traceback(exc: BaseException, limit: int = 3) -> str:
    """The last frames, along the whole chain of causes, that are not effilab's, torch's or
    triton's own: the innermost is the kernel line when the kernel's body failed."""
    frames = [f for e in _chain(exc) for f in traceback.extract_tb(e.__traceback__)]
    mine = [f for f in frames if not any(s in (f.filename or "") for s in _LIBRARY_DIRS)]
    mine = [f for i, f in enumerate(mine) if i == 0 or (f.filename, f.lineno) != (mine[i - 1].filename, mine[i - 1].lineno)]
    out = []
    for f in mine[-limit:]:
        where = "your notebook" if f.filename.startswith("<") or "ipykernel" in f.filename else f.filename
        out.append(f"  in {f.name} ({where}, line {f.lineno}): {f.line or ''}".rstrip())
    return "\n".join(out)


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(message, hint) for an exception raised by the student's code."""
    if type(exc).__name__ == "OwnWorkError":  # effilab.grading.provenance: the work was not the student's kernel
        return (str(exc), "do the computation inside your own @triton.jit kernel; around it use only allocation, "
                          "views and copies")
    if isinstance(exc, NotImplementedError) or "NotImplementedError" in repr(exc):
        return ("your function raised NotImplementedError: the exercise is not filled in yet",
                "replace `raise NotImplementedError()` with your implementation, run that cell, then this one")
    root = exc
    if type(exc).__name__ == "InterpreterError":  # name the error of the kernel's body, not its wrapper
        root = _chain(exc)[-1]
    where = " inside your Triton kernel" if root is not exc else ""
    try:
        text = f"your function raised {type(root).__name__}{where}: {str(root).strip()[:600]}"
    except Exception:  # an exception whose __str__ raises
        text = f"your function raised {type(root).__name__}{where}"
    tb = _student_traceback(exc)
    if tb:
        text += "\n" + tb
    hint = "read the error above; run your function on a small input by hand to reproduce it"
    if "CompilationError" in type(exc).__name__ or "triton" in (type(exc).__module__ or ""):
        hint = ("your Triton kernel failed to compile or launch: check the line it names, "
                "that every block size is a tl.constexpr power of two, and the dtypes you load/store")
    return text, hint


def student_error(exc: BaseException, label: str = "") -> Problem:
    msg, hint = describe_exception(exc)
    return Problem(f"{label}: {msg}" if label else msg, hint)


def call_student(fn: Callable, args: tuple = (), kwargs: dict | None = None) -> Any:
    """``fn(*args, **kwargs)`` on clones of the inputs, with poisoned allocations; the output, or a
    :class:`Problem` when the call raised or modified its inputs. CUDA work is finished before this
    returns, so an asynchronous error surfaces here and not in the judge."""
    kwargs = kwargs or {}
    args, kwargs = clone(args), clone(kwargs)
    keep = clone((args, kwargs))
    try:
        with poisoned_allocations():
            out = fn(*args, **kwargs)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except Exception as exc:  # the student's bug, reported, never raised
        return student_error(exc)
    mut = mutated(keep, (args, kwargs), "an input")
    if mut:
        return Problem(mut, "allocate a new output (e.g. torch.empty_like) instead of writing into an input")
    return out
