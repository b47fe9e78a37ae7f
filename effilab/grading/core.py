"""The exercise contract shared by every notebook: cases, run, judge — and one way to score them.

An :class:`Exercise` is defined once, in ``effilab/grading/specs/nbNN.py``, and serves three callers:

* the student's self-check cell (``check("round_to_bf16", round_to_bf16).points``), where every
  step runs in the notebook's own process;
* pytest on the instructor's reference solution (taken from ``solutions/``);
* the grader, which splits the steps between two processes that trust each other differently.

The contract (``docs/authoring.md`` has the long form):

``cases(suite, key) -> [Group]``
    the groups of cases. ``key`` (:mod:`effilab.grading.keys`) says where the inputs come from:
    fixed seeds for the public suite, a keyed hash of the course secret for the hidden one. In the
    grader this runs in the grader's process; the sandbox only ever receives the cases.
``run(fn, case) -> output``
    one call of the student's code; in the grader it runs **in the sandbox**. The default calls
    ``fn(*case.args, **case.kwargs)`` on clones, with poisoned allocations, and checks that the
    inputs were left alone (:func:`effilab.grading.calls.call_student`). An exercise whose output
    is an object (an optimizer, a scaler, a model) overrides ``run`` to drive that object and
    return what it observed as plain data: tensors, numbers, strings, lists and dicts of them
    (:mod:`effilab.grading.wire` carries exactly these). A run that finds the student's code broken
    returns a :class:`~effilab.grading.calls.Problem`.
``expect(case) -> expected``
    optional: the expected value computed by trusted code on the grading device (in the grader's
    process), for references that must run where the student's code ran (a GPU's RNG, bf16
    kernels). Default None: the judge computes what it needs from the case.
``judge(output, case, expected) -> CaseResult | str | None``
    decides one case; in the grader it runs **in the grader's process**, so the expected values
    never exist where the student's code runs. None (or ``CaseResult(True)``) passes; a string is
    the failure — what is wrong, where, yours vs expected; a :class:`CaseResult` can carry a hint
    that says only what this failure shows.

No exercise of notebooks 01–04 and 08 needs a live object in the judge; an exercise that truly
did would name the reason in ``live_judge`` and be listed in ``docs/authoring.md``.

A group passes when all its cases pass; a part scores ``points × passed groups / groups``
(:func:`score`, the one scoring function of the course). Speed and memory parts are declared with
:mod:`effilab.grading.measure` and decided there; on a CPU they say so and award nothing.
Nothing a check prints goes to stderr (nbgrader scores a cell that writes to stderr as failed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .calls import Problem, call_student, describe_exception, quiet
from .calls import one_thread, poisoned_allocations  # noqa: F401  (re-exported: the specs use them)
from .keys import Key, case_seeds  # noqa: F401

__all__ = ["half_dtypes", "Case", "Group", "CaseResult", "GroupResult", "Verdict", "Exercise", "Problem", "REGISTRY", "register",
           "get", "check", "quiet", "NOT_ON_CPU", "judge_case", "score", "default_device", "key_for", "run_case",
           "expect_case"]

NOT_ON_CPU = "needs a CUDA GPU — not awarded here"
MAX_MESSAGE = 2000  # characters of one failure message kept


def half_dtypes() -> list[torch.dtype]:
    """The half-precision dtypes the cases use here: fp16 everywhere; bf16 too on a GPU with bf16
    hardware (compute capability ≥ 8.0: not a Colab T4). Triton's interpreter gets bf16 matmuls and
    fp32 → bf16 stores wrong, and a T4 has no bf16 ``tl.dot``: a notebook must not fail for its GPU."""
    if not torch.cuda.is_available():
        return [torch.float16]
    from ..device import info

    return [torch.float16, torch.bfloat16] if info().bf16 else [torch.float16]


def default_device() -> torch.device:
    """Where an exercise runs its cases: the CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Cases, groups, results, verdicts
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One call of the student's function: ``fn(*args, **kwargs)``; ``meta`` is for run and judge."""

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
class CaseResult:
    """The judge's decision on one case; ``hint`` (optional) replaces the group's hint for this failure."""

    ok: bool
    problem: str = ""
    hint: str = ""


@dataclass
class GroupResult:
    name: str
    passed: bool
    n_cases: int
    message: str = ""  # the first failure, fully described
    hint: str = ""
    cause: str = ""  # the message without its case's label: equal causes are reported once


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
        said: set = set()
        for g in self.groups:
            lines.append(f"  {'✓' if g.passed else '✗'} {g.name}")
            # an error the student's code raised is the same failure whatever the group's hint says
            key = (g.cause, "" if "your function raised" in g.cause else g.hint)
            if not g.passed and g.cause and key in said:
                lines.append("      the same failure as above")  # e.g. an unsolved exercise: said once
            elif not g.passed:
                # a group's hint is written for its own property; after an earlier failure the same
                # mistake often fails it too, so its hint is offered for what remains after that fix
                later = bool(said)
                said.add(key)
                lines += ["      " + ln for ln in g.message.rstrip().splitlines()]
                if g.hint:
                    lines.append(f"      hint{' (if this remains once the failure above is fixed)' if later else ''}: "
                                 f"{g.hint}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def _repr_pretty_(self, p, cycle):  # IPython display of a bare Verdict
        p.text(self.report())


def judge_case(ex: "Exercise", out: Any, case: Case, expected: Any = None) -> CaseResult:
    """The exercise's judge on one output, made total: a :class:`Problem` from the run fails the case
    with its own hint, an exception inside the judge (a malformed output) fails it with a message,
    and every failure names the case."""
    if isinstance(out, Problem):
        return CaseResult(False, f"{case.label}: {out.message}"[:MAX_MESSAGE], out.hint)
    try:
        r = ex.judge(out, case, expected)
    except Exception as exc:  # the output is not what the judge can read
        r = CaseResult(False, f"could not compare your output ({type(exc).__name__}: {str(exc)[:300]})")
    if r is None:
        return CaseResult(True)
    if isinstance(r, str):
        r = CaseResult(False, r)
    if not isinstance(r, CaseResult):
        raise TypeError(f"{ex.name}.judge returned {type(r).__name__}; return None, a str or a CaseResult")
    if r.ok:
        return r
    return CaseResult(False, f"{case.label}: {r.problem}"[:MAX_MESSAGE], r.hint)


def score(ex: "Exercise", groups: list[Group], results: dict[tuple[int, int], CaseResult], *,
          suite: str = "public", notes: list[str] | None = None, stopped: str = "") -> Verdict:
    """The one scoring function: groups → points for the correctness part.

    ``results`` maps (group index, case index) to the judged case. A group passes when each of its
    cases has a passing result; its message is the first failure (in case order); a case without a
    result fails as "not run" with ``stopped`` as the reason (the run was cut short)."""
    max_pts = float(ex.points.get("correctness", 0.0))
    out = []
    for gi, g in enumerate(groups):
        message, hint, cause = "", "", ""
        for ci, case in enumerate(g.cases):
            r = results.get((gi, ci))
            if r is None:
                message = f"{case.label}: not run" + (f" ({stopped})" if stopped else "")
            elif not r.ok:
                message, hint = r.problem, r.hint
            if message:
                cause = message.removeprefix(f"{case.label}: ")
                if "your function raised" in cause:  # the same error, however the call was described
                    cause = cause[cause.rindex("your function raised"):]
                break
        out.append(GroupResult(g.name, not message, len(g.cases), message, (hint or g.hint) if message else "", cause))
    pts = round(max_pts * sum(r.passed for r in out) / max(1, len(out)), 2)
    return Verdict(ex.name, "correctness", pts, max_pts, out, notes=list(notes or []), suite=suite)


# ----------------------------------------------------------------------------------------------
# Exercises and the registry
# ----------------------------------------------------------------------------------------------
class Exercise:
    """Base class of an exercise spec: set the class attributes, implement ``cases`` and ``judge``
    (and ``run`` / ``expect`` when the default call does not fit); speed and memory parts return
    their declarations from ``speed_part`` / ``memory_part`` (:mod:`effilab.grading.measure`)."""

    name: str = ""  # the name the student must define
    notebook: str = ""  # e.g. "01_float_formats"
    title: str = ""
    points: dict[str, float] = {"correctness": 1.0}
    signature: str = ""  # shown when the name is missing or has the wrong signature
    # What the grader rejects: dotted names (and their submodules/attributes) the static check refuses
    # and the sandbox replaces by traps; (regex, why) on the source text.
    forbidden: tuple[str, ...] = ()
    forbidden_source: tuple[tuple[str, str], ...] = ()
    # A kernel exercise: the returned tensors must be written by Triton kernels defined in the
    # notebook, with no library compute in the call (effilab.grading.provenance). True, or a
    # provenance.KernelRule that allows an epilogue of a few torch ops.
    kernel = False
    # Why this exercise's judge needs the live output in the sandbox; empty: judged from plain data.
    live_judge: str = ""
    # Tiny CPU models: run and expect on one thread (calls.one_thread), fast and reproducible.
    single_thread: bool = False

    # -- to implement ---------------------------------------------------------------------------
    def cases(self, suite: str, key: Key) -> list[Group]:
        raise NotImplementedError

    def run(self, fn: Callable, case: Case) -> Any:
        """One call of the student's code (in the sandbox when grading); the output or a Problem."""
        return call_student(fn, case.args, case.kwargs)

    def expect(self, case: Case) -> Any:
        """Trusted expected value on the grading device, or None (the judge computes it)."""
        return None

    def judge(self, out: Any, case: Case, expected: Any = None) -> CaseResult | str | None:
        raise NotImplementedError

    def speed_part(self, key: Key):
        raise NotImplementedError(f"{self.name} has no speed part")

    def memory_part(self, key: Key):
        raise NotImplementedError(f"{self.name} has no memory part")


def run_case(ex: Exercise, fn: Callable, case: Case) -> Any:
    """``ex.run(fn, case)`` that never raises: an exception escaping a run is the student's. In a
    kernel exercise every call of ``fn`` is recorded and must be the student's own kernel work
    (:func:`effilab.grading.provenance.checked`)."""
    if ex.kernel:
        from .provenance import checked, kernel_rule

        fn = checked(fn, kernel_rule(ex))
    try:
        with _threads(ex):
            return ex.run(fn, case)
    except Exception as exc:
        msg, hint = describe_exception(exc)
        return Problem(msg, hint)


def expect_case(ex: Exercise, case: Case) -> Any:
    """``ex.expect(case)`` as the exercise wants it run (on one thread for tiny CPU models)."""
    with _threads(ex):
        return ex.expect(case)


def _threads(ex: Exercise):
    import contextlib

    from .calls import one_thread as single

    return single() if ex.single_thread else contextlib.nullcontext()


def check_correctness(ex: Exercise, fn: Callable, suite: str, key: Key) -> Verdict:
    """Every step in this process (the self-check and the tests): cases, run, expect, judge, score."""
    from .calls import device_of, on_device, to_device

    groups = ex.cases(suite, key)
    dev = default_device()
    results: dict[tuple[int, int], CaseResult] = {}
    for gi, g in enumerate(groups):
        for ci, case in enumerate(g.cases):
            # as the grader does: the student's code gets the case on this machine's device, the
            # judge sees the output where the case was built (grader/zygote.py, grader/verify.py)
            out = run_case(ex, fn, on_device(case, dev))
            if not isinstance(out, Problem):
                out = to_device(out, device_of(case))
            r = judge_case(ex, out, case, expect_case(ex, case) if not isinstance(out, Problem) else None)
            results[(gi, ci)] = r
            if not r.ok:
                break
    return score(ex, groups, results, suite=suite)


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


def key_for(ex: Exercise, suite: str, seed: int | Key = 0) -> Key:
    """The key of a check: the public one, or a hidden one from a test's stand-in secret."""
    if isinstance(seed, Key):
        return seed.for_exercise(ex.name)
    return Key.public() if suite == "public" else Key.hidden(str(seed), ex.name)


def _missing(ex: Exercise, part: str, fn) -> Verdict:
    return Verdict(ex.name, part, 0.0, float(ex.points[part]),
                   notes=[f"`{ex.name}` is not a function (got {type(fn).__name__}); define it as: {ex.signature}"])


def check(name: str, fn: Callable | None, part: str = "correctness", *, suite: str = "public",
          seed: int | Key = 0, verbose: bool = True) -> Verdict:
    """Check the student's ``fn`` for exercise ``name``; print the report; return the :class:`Verdict`.

    ``part`` is ``"correctness"``, ``"speed"`` or ``"memory"``. A notebook test cell ends with
    ``check(...).points`` so that nbgrader reads the points as the cell's partial credit.
    """
    ex = get(name)
    if part not in ex.points:
        raise ValueError(f"exercise {name!r} has no part {part!r}; parts: {list(ex.points)}")
    key = key_for(ex, suite, seed)
    if not callable(fn):
        v = _missing(ex, part, fn)
    else:
        with quiet() as captured:
            try:
                if part == "correctness":
                    v = check_correctness(ex, fn, suite, key)
                else:
                    from .measure import self_check

                    v = self_check(ex, part, fn, key)
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
