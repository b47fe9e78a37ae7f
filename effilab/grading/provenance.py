"""Points only for the student's own work: what one call of a kernel exercise really ran.

A kernel exercise ("write an RMSNorm in Triton") is graded on its output, and an output can be
right without the student's kernel having computed it: plain eager PyTorch, a library op beside a
token ``@triton.jit`` kernel, ``torch.compile`` of the formula. The static check of
:mod:`grader.extract` reads spelling only; this module watches what actually runs. Armed around
one call of the student's function, :func:`recording` keeps

* every Triton launch (hooks on ``JITFunction.run``, the interpreter's ``InterpretedFunction.run``
  and ``CompiledKernel[grid]``, plus Triton's launch-enter hook on a GPU): the kernel's name,
  whether it is *the student's* (its Python function was compiled from notebook code, a filename
  such as ``<your cell rms_norm_solution>``), and the storages of its tensor arguments;
* every aten op the call runs (a ``TorchDispatchMode``), sorted into what a kernel exercise may
  use — allocation, views and metadata, copies and dtype/device conversion, fills, a few scalar
  reads — and *library compute* (everything else: ``mul``, ``rsqrt``, ``softmax``, ``mm``…);
* where each tensor's data came from: a storage is *the kernel's* when a student kernel was the
  last to receive it, or when an allowed copy (or an exercise's epilogue op) made it from one.

:func:`own_work_problem` turns a record into a verdict. The rule, precisely: the call passes when
(1) at least one student kernel launched, (2) no other Triton kernel launched, (3) no library
compute op ran, except the exercise's epilogue ops (:class:`KernelRule`), which may not read a
floating-point input, (4) no bulk data entered tensors from Python (``torch.tensor(list)``,
``from_numpy``, ``set_`` on a foreign storage) and at most :data:`MAX_SCALAR_READS` /
:data:`MAX_SCALAR_WRITES` scalars crossed between Python and tensors, (5) no data-escape or
dispatch-escape route was used (trapped while the call runs, see below), and (6) every returned
tensor's storage is the kernel's. Ops asked for by Triton's own code (the interpreter's argument
copies, the autotuner's benchmarking) do not count against the student.

While the call runs, the direct ways of taking tensor data to Python or NumPy
(``Tensor.numpy``/``tolist``/``__array__``/``__dlpack__``/pickling, ``torch.from_numpy``,
``frombuffer``, ``from_dlpack``, ``save``/``load``), of switching the recorder off
(``_disable_current_modes``, ``torch._C._DisableTorchDispatch``, dispatch-key guards,
``OpOverload.redispatch``) and of starting threads (dispatch modes are per thread) raise
:class:`OwnWorkError` when student code asks for them; torch's and Triton's own code may still use
them (printing a tensor does).

Residual risk (documented, not closed): this is an audit, not a sandbox. A student who reaches
the C-level methods (``torch._C.TensorBase.numpy(x)``), an operator handle's
``redispatch_boxed`` with an explicit key set, ``ctypes`` on ``data_ptr()``, or parses
``repr(x)``, and then lets a copy kernel store the result, passes this check on a CPU. On a GPU
such work costs device↔host copies and aten kernels that :func:`gpu_time_share` (CUPTI, outside
the student's reach) counts against the 90 % share; the grader applies that rule to speed parts.
Under Triton's interpreter a kernel body is Python: that it compiles for a GPU is only checked
where the grader runs on one.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import callguard
from .callguard import (_ACTIVE, OwnWorkError, _audit_intact, _install_escape_traps, _install_launch_hooks,
                        _launch_enter_hook, _launch_hooks_intact, _library_file, _Patches, _student_threads, _triton,
                        is_student_code)

__all__ = ["KernelRule", "kernel_rule", "Launch", "CallRecord", "OwnWorkError", "recording",
           "record_call", "own_work_problem", "checked", "is_student_code", "gpu_time_share", "share_from_events",
           "share_problem", "MIN_GPU_SHARE"]

# ----------------------------------------------------------------------------------------------
# What a kernel exercise may run besides its kernels (aten base names, without "aten::")
# ----------------------------------------------------------------------------------------------
ALLOC_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones"})
VALUE_ALLOC_OPS = frozenset({"full", "full_like", "new_full", "scalar_tensor"})  # one Python value each
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "as_strided", "as_strided_", "t", "t_", "transpose",
    "transpose_", "permute", "expand", "expand_as", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "select",
    "slice", "narrow", "split", "split_with_sizes", "chunk", "unbind", "detach", "detach_", "alias", "contiguous",
    "flatten", "unflatten", "view_as", "movedim", "numpy_T", "resize_", "lift", "record_stream", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "dim", "numel", "is_contiguous",
    "is_same_size", "is_pinned", "_has_compatible_shallow_copy_type", "storage_offset", "_pin_memory",
    "pin_memory"})
COPY_OPS = frozenset({"_to_copy", "copy_", "clone"})
FILL_OPS = frozenset({"fill_", "zero_"})
SCALAR_READ_OP = "_local_scalar_dense"  # Tensor.item(), float(t), bool(t)…
LIFT_OP = "lift_fresh"  # torch.tensor(data), as_tensor, from_numpy, x[i] = 1.5
MAX_SCALAR_READS = 32  # per call: a wrapper reads a count or a flag, never the data
MAX_SCALAR_WRITES = 64  # per call: fills and Python scalars written into tensors (the checker's poison fills count)


@dataclass(frozen=True)
class KernelRule:
    """How :func:`own_work_problem` judges one kernel exercise.

    ``epilogue``: aten ops (base names) allowed besides the kernel, e.g. the mean over the
    per-row losses a cross-entropy kernel wrote; they may not read a floating-point input of the
    call, so they cannot redo the kernel's work. ``why`` is shown to the student.
    """

    epilogue: frozenset = frozenset()
    why: str = ""


def kernel_rule(exercise) -> KernelRule | None:
    """The rule of a kernel exercise (an :class:`~effilab.grading.core.Exercise` or its name), or
    None when it is not one: the spec's ``kernel`` attribute says it (``True`` for the plain rule,
    a :class:`KernelRule` for one with an epilogue)."""
    if isinstance(exercise, str):
        from .core import get

        exercise = get(exercise)
    own = getattr(exercise, "kernel", False)
    if isinstance(own, KernelRule):
        return own
    return KernelRule() if own else None


_OWN_FILES = (__file__, callguard.__file__)  # the recorder's own frames are skipped


def _asker(frame) -> str:
    """Who asked for an op: 'triton' when the nearest frame outside torch (and this module) is
    Triton's own code (the interpreter copying arguments, the autotuner benchmarking), else 'you'."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name not in _OWN_FILES and _library_file(name) != "torch":
            return "triton" if _library_file(name) == "triton" else "you"
        frame = frame.f_back
    return "you"


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------
def _storage_key(t: torch.Tensor):
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # meta / exotic tensors: no data to follow
        return None, None
    ptr = st.data_ptr()
    if not ptr:
        return None, None
    return (t.device.type, t.device.index, ptr), st


def _tensors_in(obj, depth: int = 0) -> Iterator:
    """Tensors (and raw data pointers of other objects with ``data_ptr``) inside a launch argument."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_in(o, depth + 1)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors_in(o, depth + 1)
    elif isinstance(getattr(obj, "base", None), torch.Tensor):  # triton.reinterpret, TensorDescriptor
        yield obj.base
    elif callable(getattr(obj, "data_ptr", None)):
        try:
            ptr = obj.data_ptr()
        except Exception:
            return
        if isinstance(ptr, int):
            yield ptr


@dataclass
class Launch:
    """One Triton launch seen during the call."""

    name: str
    student: bool
    where: str  # the file the kernel's Python function came from
    via: str  # "run" (kernel[grid](…)), "compiled" (CompiledKernel[grid]) or "hook" (seen only by Triton's hook)
    storages: list = field(default_factory=list)


@dataclass
class CallRecord:
    """What one call of the student's function ran; filled by :func:`recording`."""

    rule: KernelRule = field(default_factory=KernelRule)
    launches: list[Launch] = field(default_factory=list)
    ops: Counter = field(default_factory=Counter)  # every aten op the student's side asked for
    compute: list[str] = field(default_factory=list)  # library compute ops, first-seen order
    python_data: list[str] = field(default_factory=list)  # bulk data that entered tensors from Python
    scalar_reads: int = 0
    scalar_writes: int = 0
    escapes: list[str] = field(default_factory=list)  # trapped routes the call tried
    tampered: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    ops_by_triton: int = 0
    _state: dict = field(default_factory=dict, repr=False)  # storage key -> True when it is the kernel's
    _keep: list = field(default_factory=list, repr=False)  # storages kept alive so addresses stay unique
    _float_inputs: set = field(default_factory=set, repr=False)
    _depth: int = 0

    @property
    def student_launches(self) -> list[Launch]:
        return [ln for ln in self.launches if ln.student]

    @property
    def foreign_launches(self) -> list[Launch]:
        return [ln for ln in self.launches if not ln.student]

    @property
    def student_kernel_names(self) -> set[str]:
        return {ln.name for ln in self.student_launches}

    def release(self) -> None:
        """Drop the storages kept alive for the check (call after :func:`own_work_problem`)."""
        self._keep.clear()
        self._state.clear()
        self._float_inputs.clear()

    # -- storages ------------------------------------------------------------------------------
    def _key(self, t: torch.Tensor):
        key, st = _storage_key(t)
        if key is not None and key not in self._state:
            self._state[key] = False
            self._keep.append(st)
        return key

    def _is_kernels(self, t) -> bool:
        return isinstance(t, torch.Tensor) and bool(self._state.get(self._key(t)))

    def _mark(self, t, value: bool) -> None:
        key = self._key(t)
        if key is not None:
            self._state[key] = value

    def _mark_pointer(self, ptr: int, value: bool) -> None:
        """A raw pointer handed to a kernel: the known storage that contains it."""
        for st in self._keep:
            if st.data_ptr() <= ptr < st.data_ptr() + max(1, st.nbytes()):
                self._state[(st.device.type, st.device.index, st.data_ptr())] = value

    # -- launches ------------------------------------------------------------------------------
    def _begin_launch(self, pyfn, args, kwargs, via: str, name: str | None = None,
                      student_files=None) -> Launch:
        code = getattr(pyfn, "__code__", None)
        launch = Launch(name or getattr(pyfn, "__name__", "?"), bool(code) and is_student_code(code, student_files),
                        getattr(code, "co_filename", "?"), via)
        for t in _tensors_in((args, kwargs)):
            launch.storages.append(t if isinstance(t, int) else self._key(t))
        self.launches.append(launch)
        self._depth += 1
        return launch

    def _end_launch(self, launch: Launch) -> None:
        self._depth -= 1
        for key in launch.storages:
            if isinstance(key, int):
                self._mark_pointer(key, launch.student)
            elif key is not None:
                self._state[key] = launch.student


# ----------------------------------------------------------------------------------------------
# The aten audit
# ----------------------------------------------------------------------------------------------
def _flat_tensors(obj) -> list[torch.Tensor]:
    out = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
    return out


class _Auditor(TorchDispatchMode):
    """Sorts every aten op of the call (see the module docstring) and follows where data goes."""

    def __init__(self, record: CallRecord):
        super().__init__()
        self.rec = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self._note(func, args, kwargs, out, sys._getframe(1))
        except Exception:  # an op the audit cannot read (a higher-order op…) never breaks the call: it counts as compute
            self._compute(str(func))
        return out

    def _note(self, func, args, kwargs, out, frame) -> None:
        rec = self.rec
        full = func._schema.name
        base = full[len("aten::"):] if full.startswith("aten::") else full
        if _asker(frame) == "triton":
            rec.ops_by_triton += 1
            return
        rec.ops[full] += 1
        ins, outs = _flat_tensors((args, kwargs)), _flat_tensors(out)
        if base in VIEW_OPS:
            return
        if base == SCALAR_READ_OP:
            rec.scalar_reads += 1
            return
        if base in ALLOC_OPS or base in VALUE_ALLOC_OPS:
            rec.scalar_writes += base in VALUE_ALLOC_OPS
            for t in outs:
                rec._mark(t, False)
            return
        if base == LIFT_OP:
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if src is not None and src.numel() > 1:
                rec.python_data.append(f"a tensor of {src.numel()} values made from Python data (torch.tensor, "
                                       "as_tensor, from_numpy)")
            else:
                rec.scalar_writes += 1
            for t in outs:
                rec._mark(t, False)
            return
        if base in FILL_OPS:
            rec.scalar_writes += 1
            if ins:
                rec._mark(ins[0], False)
            return
        if base in COPY_OPS or base in rec.rule.epilogue:
            if base in rec.rule.epilogue and not (base in COPY_OPS) and self._reads_float_input(ins):
                self._compute(full + " on an input")
                return
            sources = ins[1:] if base.endswith("_") and ins else ins
            kernels = any(rec._is_kernels(t) for t in sources)
            targets = [ins[0]] if base.endswith("_") and ins else outs
            for t in targets:
                rec._mark(t, kernels)
            return
        if base == "set_":
            rec.python_data.append("aten::set_ (a tensor pointed at another storage)")
            for t in outs:
                rec._mark(t, False)
            return
        self._compute(full)
        for t in outs:
            rec._mark(t, False)
        if base.endswith("_") and ins:
            rec._mark(ins[0], False)

    def _reads_float_input(self, ins) -> bool:
        return any(t.is_floating_point() and _storage_key(t)[0] in self.rec._float_inputs for t in ins)

    def _compute(self, name: str) -> None:
        if name not in self.rec.compute:
            self.rec.compute.append(name)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(*, inputs: Any = (), rule: KernelRule | None = None,
              student_files: Collection[str] | None = None) -> Iterator[CallRecord]:
    """Record one call of the student's function (see the module docstring); yields the record.

    ``inputs``: the call's arguments (their floating-point storages are what epilogue ops may not
    read); ``rule``: the exercise's :class:`KernelRule`; ``student_files``: the exact filenames of
    the student's cells (default: any ``<…>`` filename). Not re-entrant; the main thread only.
    """
    if _ACTIVE[0] is not None:
        raise RuntimeError("provenance.recording() is already active: record one call at a time")
    rec = CallRecord(rule=rule or KernelRule())
    for t in _flat_tensors(inputs):
        if t.is_floating_point():
            key, st = _storage_key(t)
            if key is not None:
                rec._float_inputs.add(key)
                rec._keep.append(st)
    rec.threads += _student_threads(student_files)
    patches = _Patches()
    hook_chain = None
    mode = _Auditor(rec)
    _install_launch_hooks(patches)
    if _triton is not None and torch.cuda.is_available():
        hook_chain = getattr(getattr(_triton, "knobs", None), "runtime", None)
        hook_chain = getattr(hook_chain, "launch_enter_hook", None)
        if hasattr(hook_chain, "add"):
            hook_chain.add(_launch_enter_hook)
    _ACTIVE[0], _ACTIVE[1] = rec, student_files
    try:
        with mode:
            _install_escape_traps(patches)
            try:
                yield rec
            finally:
                rec.tampered += _launch_hooks_intact() + _audit_intact(mode)
                patches.restore()
    finally:
        _ACTIVE[0] = _ACTIVE[1] = None
        patches.restore()
        if hasattr(hook_chain, "remove"):
            hook_chain.remove(_launch_enter_hook)
        rec.threads += [t for t in _student_threads(student_files) if t not in rec.threads]


def record_call(fn: Callable, *args, rule: KernelRule | None = None, student_files: Collection[str] | None = None,
                **kwargs) -> tuple[Any, CallRecord]:
    """``fn(*args, **kwargs)`` under :func:`recording`; returns (output, record). An exception of
    ``fn`` propagates (the record is then of no use)."""
    with recording(inputs=(args, kwargs), rule=rule, student_files=student_files) as rec:
        out = fn(*args, **kwargs)
        if any(t.is_cuda for t in _flat_tensors(out)):
            torch.cuda.synchronize()
    return out, rec


def _short(path: str) -> str:
    """The last two parts of a file path (``effilab/rmsnorm.py``): enough to say whose it is."""
    parts = path.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def _names(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + ("…" if len(items) > n else "")


def own_work_problem(outputs: Any, record: CallRecord) -> str | None:
    """None when ``record`` shows the student's own kernel did the work of ``outputs``, else a
    message the student can act on (the first rule broken, in the order of the module docstring)."""
    ask = "this exercise asks for the work in your own Triton kernel"
    if record.tampered:
        return f"the grader's recorder was altered while your function ran ({_names(record.tampered, 2)}): no points"
    if record.escapes:
        return record.escapes[0]
    if record.threads:
        return f"{record.threads[0]}: do the work in your function, on its own thread"
    foreign = record.foreign_launches
    if foreign:
        names = sorted({f"{ln.name} ({'unknown origin' if ln.where == '?' else _short(ln.where)})" for ln in foreign})
        return f"your function launches Triton kernels that are not yours: {_names(names, 3)}; {ask}"
    if record.compute:
        extra = (f"; besides your kernel only {', '.join(sorted(record.rule.epilogue))} ({record.rule.why}) may run"
                 if record.rule.epilogue else "")
        return f"your function computes with PyTorch ops ({_names(record.compute)}): {ask}{extra}"
    if record.python_data:
        return f"your function builds tensor data in Python ({record.python_data[0]}): {ask}"
    if record.scalar_reads > MAX_SCALAR_READS or record.scalar_writes > MAX_SCALAR_WRITES:
        return (f"your function moves {record.scalar_reads} scalars from tensors to Python and {record.scalar_writes} "
                f"back (limits {MAX_SCALAR_READS} and {MAX_SCALAR_WRITES}): element-by-element Python work is not "
                f"allowed; {ask}")
    if not record.student_launches:
        return ("your function launched no Triton kernel defined in your notebook: "
                f"{ask} (an @triton.jit function launched as kernel[grid](...))")
    tensors = _flat_tensors(outputs)
    if not tensors:  # nothing to trace; the exercise's judge rejects an output of the wrong kind, more precisely
        return None
    for i, t in enumerate(tensors):
        if t.numel() and not record._is_kernels(t):
            which = "the output" if len(tensors) == 1 else f"output {i}"
            return (f"{which} of your function is not a tensor your Triton kernel wrote (it was made or overwritten "
                    "outside your kernel): return the tensor your kernel stores into")
    return None


def checked(fn: Callable, rule: KernelRule, student_files: Collection[str] | None = None) -> Callable:
    """``fn`` recorded on every call: returns its output when :func:`own_work_problem` finds
    nothing, raises :class:`OwnWorkError` with the message otherwise. For the correctness part
    (the checker's ``run_case`` reports the error as the case's failure); never time a checked
    function (the audit costs Python work per op)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out, rec = record_call(fn, *args, rule=rule, student_files=student_files, **kwargs)
        try:
            problem = own_work_problem(out, rec)
        finally:
            rec.release()
        if problem is not None:
            raise OwnWorkError(problem)
        return out
    wrapper.__wrapped__ = fn
    return wrapper


from .gpushare import MIN_GPU_SHARE, gpu_time_share, share_from_events, share_problem  # noqa: E402
