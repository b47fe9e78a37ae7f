"""The exercise-checking machinery shared by every notebook.

An :class:`Exercise` is defined once, here in effilab, and serves three callers alike:

* the student's self-check cell in the notebook (``check("round_to_bf16", round_to_bf16).points``),
* pytest on the instructor's reference solution,
* the grader (nbgrader runs the same cell, with a hidden suite and a secret seed added).

A check runs *groups* of *cases*. Each case is one call of the student's function on fresh,
cloned inputs; the checker poisons every tensor the function allocates with ``torch.empty*``
(so an element the function never writes is caught), verifies the inputs were not mutated, and
hands the output to the exercise's own comparison. A group passes when all its cases pass; the
score of a part is ``points × passed groups / groups``. Speed and memory parts are measured on a
CUDA GPU only; on a CPU they say so and award nothing.

The verdict returned is a :class:`Verdict`. Its report goes to stdout; nothing goes to stderr
(nbgrader scores a test cell that writes to stderr as failed), so warnings raised while the
student's code runs are captured and shown in the report instead.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

__all__ = [
    "Case",
    "Group",
    "Verdict",
    "Exercise",
    "REGISTRY",
    "register",
    "check",
    "quiet",
    "NOT_ON_CPU",
]

NOT_ON_CPU = "needs a CUDA GPU — not awarded here"

N_CASE_SEEDS = 5  # every group of an exercise runs its cases on at least this many seeds


def case_seeds(suite: str, seed: int, n: int = N_CASE_SEEDS) -> list[int]:
    """The seeds an exercise draws its inputs from.

    The public suite (the notebook's self-check) uses 0 … n-1. The hidden suite derives them from
    ``seed`` (the grader passes the course's secret), so hidden inputs differ from the public ones
    and from one course to the next. Kept below 2**40, well inside what any torch generator takes.
    """
    base = 0 if suite == "public" else (1_000_003 * (seed + 1)) % (1 << 40)
    return [base + i for i in range(n)]


def default_device() -> torch.device:
    """Where an exercise runs its cases: the CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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
# Cases, groups, verdicts
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One call of the student's function: ``fn(*args, **kwargs)``; ``meta`` is for the comparer."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass
class Group:
    """A named property checked on several cases; it passes only if every case passes."""

    name: str
    cases: list[Case]
    hint: str = ""


@dataclass
class GroupResult:
    name: str
    passed: bool
    n_cases: int
    message: str = ""  # the first failure, fully described
    hint: str = ""


@dataclass
class Verdict:
    """The outcome of one part (correctness, speed or memory) of one exercise."""

    exercise: str
    part: str
    points: float
    max_points: float
    groups: list[GroupResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # timings, ratios, bytes…: stored with the grade
    suite: str = "public"

    @property
    def passed(self) -> bool:
        return self.points >= self.max_points - 1e-9

    def report(self) -> str:
        mark = "PASS" if self.passed else ("PARTIAL" if self.points > 0 else "FAIL")
        what = self.part if self.suite == "public" else f"{self.part}, {self.suite} tests"
        lines = [f"{self.exercise} [{what}]: {mark} — {self.points:g} / {self.max_points:g} points"]
        for g in self.groups:
            lines.append(f"  {'✓' if g.passed else '✗'} {g.name}" + ("" if g.passed else ""))
            if not g.passed:
                lines += ["      " + ln for ln in g.message.rstrip().splitlines()]
                if g.hint:
                    lines.append(f"      hint: {g.hint}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def _repr_pretty_(self, p, cycle):  # IPython display of a bare Verdict
        p.text(self.report())


# ----------------------------------------------------------------------------------------------
# Quiet execution: nothing may reach stderr, at the Python or the file-descriptor level
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet():
    """Capture warnings and everything written to stderr (Python and fd 2) while the block runs.

    Yields a list that holds, after the block, the captured text lines (warnings first).
    Jupyter forwards writes to fd 2 (e.g. from compilers) as a stderr stream, which nbgrader
    would score as a failed test, hence the file-descriptor redirect as well.
    """
    captured: list[str] = []
    buf = io.StringIO()
    try:
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        fd, saved = None, None
    tmp = tempfile.TemporaryFile(mode="w+b") if saved is not None else None
    try:
        if tmp is not None:
            sys.__stderr__.flush()
            os.dup2(tmp.fileno(), fd)
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(buf):
            warnings.simplefilter("always")
            yield captured
    finally:
        if tmp is not None:
            try:
                sys.__stderr__.flush()
            except Exception:
                pass
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            fd_text = tmp.read().decode("utf-8", "replace")
            tmp.close()
        else:
            fd_text = ""
        seen = set()
        for w in locals().get("caught", []) or []:
            msg = f"warning: {w.category.__name__}: {w.message}"
            if msg not in seen:
                seen.add(msg)
                captured.append(msg)
        for text in (buf.getvalue(), fd_text):
            captured += [ln for ln in text.splitlines() if ln.strip()]


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


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
        return bool(torch.equal(a.contiguous().view(width), b.contiguous().view(width)))
    return bool(torch.equal(a, b))


def _mutated(before, after, path="input") -> str | None:
    if isinstance(before, torch.Tensor):
        if not _same_bits(before, after.detach()):
            return f"your function modified {path} in place; inputs must be left untouched"
        return None
    if isinstance(before, (list, tuple)):
        for i, (b, a) in enumerate(zip(before, after)):
            m = _mutated(b, a, f"{path}[{i}]")
            if m:
                return m
    if isinstance(before, dict):
        for k in before:
            m = _mutated(before[k], after[k], f"{path}[{k!r}]")
            if m:
                return m
    return None


def _student_traceback(exc: BaseException, limit: int = 3) -> str:
    """The last frames of an exception that are not effilab's, torch's or triton's own."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if not any(s in (f.filename or "") for s in
                                         (os.sep + "effilab" + os.sep, os.sep + "torch" + os.sep,
                                          os.sep + "triton" + os.sep))]
    out = []
    for f in mine[-limit:]:
        where = "your notebook" if f.filename.startswith("<") or "ipykernel" in f.filename else f.filename
        out.append(f"  in {f.name} ({where}, line {f.lineno}): {f.line or ''}".rstrip())
    return "\n".join(out)


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(message, hint) for an exception raised by the student's code."""
    if isinstance(exc, NotImplementedError) or "NotImplementedError" in repr(exc):
        return ("your function raised NotImplementedError: the exercise is not filled in yet",
                "replace `raise NotImplementedError()` with your implementation, run that cell, then this one")
    text = f"your function raised {type(exc).__name__}: {str(exc).strip()[:600]}"
    tb = _student_traceback(exc)
    if tb:
        text += "\n" + tb
    hint = "read the error above; run your function on a small input by hand to reproduce it"
    if "CompilationError" in type(exc).__name__ or "triton" in type(exc).__module__:
        hint = ("your Triton kernel failed to compile or launch: check the line it names, "
                "that every block size is a tl.constexpr power of two, and the dtypes you load/store")
    return text, hint


# ----------------------------------------------------------------------------------------------
# Exercises and the registry
# ----------------------------------------------------------------------------------------------
class Exercise:
    """Base class of an exercise spec. Subclasses set the class attributes and implement ``groups``
    and ``compare``; speed and memory parts override ``speed``/``memory``.

    ``groups(suite, seed)`` returns the groups of cases: ``suite`` is ``"public"`` (the
    self-check, fixed seeds) or ``"hidden"`` (the grader's, seeded by a secret number); the
    input generator uses at least five seeds either way.
    """

    name: str = ""  # the name the student must define
    notebook: str = ""  # e.g. "01_float_formats"
    title: str = ""
    points: dict[str, float] = {"correctness": 1.0}
    signature: str = ""  # shown when the name is missing or has the wrong signature
    # What the grader's static check rejects in the student's code for this exercise:
    forbidden: tuple[str, ...] = ()  # dotted names (and their submodules/attributes), aliases resolved
    forbidden_source: tuple[tuple[str, str], ...] = ()  # (regex, why) on the source text
    # True when some cases are decided by the checker inside the grading worker (gradients compared
    # after a training step, a ValueError expected…) instead of from an output the grader compares
    # itself; for other exercises a case that returns no output counts as failed (grader.verify)
    decided_in_worker: bool = False

    # -- to implement ---------------------------------------------------------------------------
    def groups(self, suite: str, seed: int) -> list[Group]:
        raise NotImplementedError

    def compare(self, out: Any, case: Case) -> str | None:
        """None if ``out`` is right for ``case``, else a message: what is wrong, where, yours vs expected."""
        raise NotImplementedError

    def speed(self, fn: Callable, seed: int) -> Verdict:
        raise NotImplementedError(f"{self.name} has no speed part")

    def memory(self, fn: Callable, seed: int) -> Verdict:
        raise NotImplementedError(f"{self.name} has no memory part")

    # -- machinery -----------------------------------------------------------------------------
    def run_case(self, fn: Callable, case: Case) -> str | None:
        """Run one case; returns None if right, else the failure message (a hint may follow '\\nhint: ')."""
        args, kwargs = _clone(case.args), _clone(case.kwargs)
        keep = _clone((args, kwargs))
        try:
            with poisoned_allocations():
                out = fn(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.is_cuda:
                torch.cuda.synchronize()
        except Exception as exc:  # the student's bug, reported, never raised
            msg, hint = describe_exception(exc)
            return f"{case.label}: {msg}\nhint: {hint}"
        mut = _mutated(keep, (args, kwargs), "an input")
        if mut:
            return f"{case.label}: {mut}\nhint: allocate a new output (e.g. torch.empty_like) instead of writing into x"
        try:
            problem = self.compare(out, case)
        except Exception as exc:  # a malformed output the comparer could not handle
            problem = f"could not compare your output ({type(exc).__name__}: {exc})"
        return None if problem is None else f"{case.label}: {problem}"

    def check_correctness(self, fn: Callable, suite: str = "public", seed: int = 0) -> Verdict:
        max_pts = float(self.points.get("correctness", 0.0))
        results: list[GroupResult] = []
        for g in self.groups(suite, seed):
            message = ""
            for case in g.cases:
                problem = self.run_case(fn, case)
                if problem is not None:
                    message = problem
                    break
            hint = g.hint
            if "\nhint: " in message:
                message, hint = message.split("\nhint: ", 1)
            results.append(GroupResult(g.name, not message, len(g.cases), message, hint if message else ""))
        n_pass = sum(r.passed for r in results)
        pts = round(max_pts * n_pass / max(1, len(results)), 2)
        return Verdict(self.name, "correctness", pts, max_pts, results, suite=suite)


REGISTRY: dict[str, Exercise] = {}


def register(cls):
    """Class decorator: instantiate the exercise and add it to :data:`REGISTRY` under its name."""
    ex = cls()
    if not ex.name:
        raise ValueError(f"{cls.__name__} has no name")
    if ex.name in REGISTRY:
        raise ValueError(f"exercise {ex.name!r} registered twice")
    REGISTRY[ex.name] = ex
    return cls


def _load_specs() -> None:
    """Import every notebook's spec module (they register themselves)."""
    from . import specs  # noqa: F401


def get(name: str) -> Exercise:
    _load_specs()
    if name not in REGISTRY:
        raise KeyError(f"no exercise named {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check(name: str, fn: Callable | None, part: str = "correctness", *, suite: str = "public",
          seed: int = 0, verbose: bool = True) -> Verdict:
    """Check the student's ``fn`` for exercise ``name``; print the report; return the :class:`Verdict`.

    ``part`` is ``"correctness"``, ``"speed"`` or ``"memory"``. A notebook test cell ends with
    ``check(...).points`` so that nbgrader reads the points as the cell's partial credit.
    """
    ex = get(name)
    if part not in ex.points:
        raise ValueError(f"exercise {name!r} has no part {part!r}; parts: {list(ex.points)}")
    if not callable(fn):
        v = Verdict(name, part, 0.0, float(ex.points[part]),
                    notes=[f"`{name}` is not a function (got {type(fn).__name__}); define it as: {ex.signature}"])
    else:
        with quiet() as captured:
            try:
                if part == "correctness":
                    v = ex.check_correctness(fn, suite=suite, seed=seed)
                elif part == "speed":
                    v = ex.speed(fn, seed)
                elif part == "memory":
                    v = ex.memory(fn, seed)
                else:
                    raise ValueError(part)
            except Exception as exc:  # a checker must never crash a test cell: report instead
                msg, hint = describe_exception(exc)
                v = Verdict(name, part, 0.0, float(ex.points[part]), notes=[msg, f"hint: {hint}"])
        if captured:
            shown = captured[:8] + ([f"… {len(captured) - 8} more lines"] if len(captured) > 8 else [])
            v.notes.append("captured while your code ran (kept off stderr):")
            v.notes += ["  " + ln[:300] for ln in shown]
    if verbose:
        print(v.report())
    return v


# ----------------------------------------------------------------------------------------------
# Speed parts: the same recipe for every exercise
# ----------------------------------------------------------------------------------------------
def student_kernel_names(fn: Callable) -> set[str]:
    """Names of the ``@triton.jit`` kernels the student's code defines (in ``fn``'s module globals)."""
    names = set()
    for obj in list(getattr(fn, "__globals__", {}).values()):
        mod = getattr(obj, "__module__", "") or ""
        if type(obj).__name__ in ("JITFunction", "Autotuner", "Heuristics") and not mod.startswith(("effilab", "triton")):
            inner = obj
            while hasattr(inner, "fn") and type(inner).__name__ != "JITFunction":
                inner = inner.fn
            names.add(getattr(inner, "__name__", "") or getattr(getattr(inner, "fn", None), "__name__", ""))
    return {n for n in names if n}


def reference_kernel_names() -> set[str]:
    """Names of every Triton kernel in effilab's own modules (the student may not time those)."""
    import importlib
    import pkgutil

    names = set()
    try:
        import effilab.ops as ops
    except Exception:
        return names
    for info in pkgutil.iter_modules(ops.__path__, "effilab.ops."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:
            continue
        for obj in vars(mod).values():
            if type(obj).__name__ == "JITFunction" and getattr(obj, "__module__", "").startswith("effilab"):
                names.add(obj.__name__)
    return names


def launched_kernels(call: Callable) -> list[str]:
    """CUDA kernel names launched by one ``call()`` (torch.profiler), in order, without duplicates."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    seen: dict[str, None] = {}
    for evt in prof.events():
        if getattr(evt, "device_type", None) is not None and "CUDA" in str(evt.device_type):
            seen.setdefault(evt.name, None)
    return list(seen)


NOISE_BAND = 0.05  # a speed ratio within ±5% of its threshold is measured again
WALL_SLACK = 1.5  # device-wide wall time may exceed the timed stream's median by this factor (launch gaps)
_perf_counter = time.perf_counter  # captured before any student code runs


def _mutating_call(fn: Callable, args: tuple):
    """A no-argument call of ``fn(*args)`` that first sets one element of ``args[0]`` to a value drawn
    from ``args[0]`` itself (so the input keeps its distribution); returns (call, holder of the last output)."""
    holder: dict = {}
    x = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].is_contiguous() and args[0].numel() else None
    if x is None or not x.dtype.is_floating_point:
        def plain():
            holder["out"] = fn(*args)
        return plain, holder
    flat = x.view(-1)
    g = torch.Generator(device="cpu").manual_seed(1234)
    pool = flat[torch.randint(0, flat.numel(), (997,), generator=g).to(flat.device)].clone()
    where = torch.randint(0, flat.numel(), (997,), generator=g).tolist()
    state = {"k": 0}

    def call():
        k = state["k"] = state["k"] + 1
        flat[where[k % 997]] = pool[(k * 7) % 997]
        holder["out"] = fn(*args)
    return call, holder


def _wall_ms(fn: Callable, args: tuple, n: int = 10) -> float:
    torch.cuda.synchronize()
    t0 = _perf_counter()
    for _ in range(n):
        fn(*args)
    torch.cuda.synchronize()
    return (_perf_counter() - t0) / n * 1e3


def speed_verdict(ex: "Exercise", fn: Callable, *, baseline: Callable, args: tuple, threshold: float,
                  gate: Case | None = None, bytes_moved: int | None = None, flops: float | None = None,
                  baseline_name: str = "baseline", require_own_triton: bool = True, advice: str = "",
                  fresh_gate: Case | None = None) -> Verdict:
    """Time ``fn(*args)`` against ``baseline(*args)`` on a CUDA GPU and award the speed points.

    1. On a CPU: no points, and a note saying so.
    2. ``gate``: the output on the timed input must be correct (``ex.run_case``) — speed only counts
       for a correct answer.
    3. Provenance: the timed call must launch one of the student's own ``@triton.jit`` kernels and
       none of effilab's reference kernels (torch.profiler kernel names).
    4. Both are timed in the same process, interleaved (:func:`effilab.bench.compare`: CUDA events,
       warm-up, L2 flush, medians); full points when median(baseline) / median(yours) ≥ threshold.
    The medians, spread, ratio and throughput are kept in ``Verdict.details`` (stored with the grade).
    """
    points = float(ex.points.get("speed", 0.0))
    v = Verdict(ex.name, "speed", 0.0, points)
    if not torch.cuda.is_available():
        v.notes.append(f"speed: {NOT_ON_CPU}. On a GPU yours must be ≥ {threshold:g}× faster than {baseline_name}.")
        return v
    from .. import bench

    if gate is not None:
        problem = ex.run_case(fn, gate)
        if problem is not None:
            v.notes.append("not timed: your code is not correct on the timed input — " + problem)
            return v
    if require_own_triton:
        own = student_kernel_names(fn)
        ran = launched_kernels(lambda: fn(*args))
        forbidden = sorted(set(ran) & reference_kernel_names())
        v.details["kernels"] = ran[:20]
        if forbidden:
            v.notes.append(f"not timed: your code launches effilab's reference kernel(s) {forbidden}; write your own")
            return v
        if not any(any(name == k or k.startswith(name) for k in ran) for name in own):
            v.notes.append("not timed: the timed call does not launch a Triton kernel defined in your notebook "
                           f"(launched: {', '.join(ran[:6]) or 'nothing'}; yours: {', '.join(sorted(own)) or 'none found'})")
            return v
    # Timed in rounds; a ratio inside the noise band around the threshold is measured again (at most
    # twice more) and the median ratio decides: a clear pass, a clear fail, or a re-measured verdict.
    # Each timed call first changes one element of the input (values drawn from the input itself), and
    # the output of the last timed call is checked against the input it was given: a result cached on
    # the input's identity or replayed from an earlier call fails.
    yours_call, last = _mutating_call(fn, args)
    base_call, _ = _mutating_call(baseline, args)
    ratios, cmp = [], None
    for attempt in range(3):
        cmp = bench.compare({"yours": yours_call, baseline_name: base_call})
        ratios.append(cmp.ratio(baseline_name, "yours"))
        if abs(statistics.median(ratios) / threshold - 1) > NOISE_BAND:
            break
    ratio = statistics.median(ratios)
    t = cmp.timings["yours"]
    # Work hidden on a side stream escapes the CUDA events of the current stream: compare with
    # device-wide wall time (synchronize, then the host clock captured before the student's code ran).
    wall = _wall_ms(fn, args)
    if wall > WALL_SLACK * t.median_ms + 0.02:
        v.notes.append(f"your call takes {wall:.3f} ms of device-wide wall time but {t.median_ms:.3f} ms on the "
                       "timed stream (work on another stream?): the wall time counts")
        ratio = min(ratio, cmp.timings[baseline_name].median_ms / wall)
    same_input = gate is not None and len(gate.args) == len(args) and all(a is b for a, b in zip(gate.args, args))
    if same_input and "out" in last:
        problem = ex.compare(last["out"], Case("the last timed call", args, dict(gate.kwargs), dict(gate.meta)))
        if problem is not None:
            v.notes.append("the output of a timed call was wrong for the input it was given (results cached or "
                           "replayed across calls do not count): " + problem)
            return v
    # Fresh input after timing: a result cached on the timed input (identity or values) fails here.
    if fresh_gate is not None:
        problem = ex.run_case(fn, fresh_gate)
        if problem is not None:
            v.notes.append("after timing, your code gave a wrong answer on a fresh input (cached results do not "
                           "count): " + problem)
            return v
    tp = bench.throughput(t.median_ms, bytes=bytes_moved, flops=flops)
    v.details.update({"ratio": ratio, "ratios": ratios, "wall_ms": wall, "yours_ms": t.median_ms,
                      "baseline_ms": cmp.timings[baseline_name].median_ms,
                      "yours_spread": t.spread, "baseline_spread": cmp.timings[baseline_name].spread,
                      "gbs": tp.gbs, "tflops": tp.tflops, "threshold": threshold})
    v.notes.append(cmp.table())
    v.notes.append(f"yours: {tp}")
    if ratio >= threshold:
        v.points = points
        v.notes.append(f"speed-up {ratio:.2f}× ≥ {threshold:g}×: full points")
    else:
        v.notes.append(f"speed-up {ratio:.2f}× < {threshold:g}×" + (f": {advice}" if advice else ""))
    return v


def score_fraction(passed: Iterable[bool]) -> float:
    passed = list(passed)
    return sum(passed) / len(passed) if passed else 0.0


def isclose_points(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=1e-6)
