"""Authoritative grading outside the student's notebook kernel.

nbgrader runs the check cells inside the student's own kernel, where the student's code can patch
the checker; those cells are the student's self-check. The score the gradebook keeps comes from here:

1. **plan** (the grader's process): the source notebook's graded cells say which exercise and part
   each grade id checks; :mod:`grader.extract` takes the student's code for each exercise and
   checks it statically; the hidden cases are generated from the course secret, through a keyed
   hash per exercise (:mod:`effilab.grading.keys`) — the secret itself never leaves this process.
2. **run** (the sandbox): one jail per submission (grader/jail.py: its own filesystem view, no
   network, its own pid namespace, an unprivileged uid, limits) holds the zygote (grader/zygote.py),
   which imports torch, Triton and effilab once and forks a clean child per part. A child runs the
   student's code on the cases and streams back outputs and measurements as plain data.
3. **judge** (the grader's process again, after the jail is gone, so nothing competes with the
   student's timed calls for the GPU): every output is judged against expected values computed here
   — they never exist in the sandbox — and scored by :func:`effilab.grading.core.score`; speed and
   memory parts are decided by :mod:`effilab.grading.measure` against baselines measured here, where
   student code never ran (cached for :data:`ANCHOR_TTL` seconds across the submissions of a run).

A crash, an exit, a time limit or a killed jail costs the parts it touched: the groups finished
before it keep their points, and the parts after it run in a new jail. Each part's verdict is
written to ``course/verdicts/<student>/<assignment>.json`` as soon as it is known, so a run killed
half-way is completed — each part exactly once — by the next run.
"""
from __future__ import annotations

import ast
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from effilab.grading.calls import device_of, to_device

from .course import Course
from .extract import cells_for, names_defined, setup_source, solution_cells, static_problems

MAX_REPORT = 6000  # characters of a verdict's report kept (huge outputs are truncated)
COMPILE_BUDGET = 300.0  # seconds for start-up and the first call (Triton / torch.compile compile there)
ANCHOR_TTL = 600.0  # a baseline measured this long ago is measured again (GPU clocks drift)
RELAY = struct.Struct("<IBQ")
CASE, RESULT, NOTE, END = 1, 2, 3, 4
UNSANDBOXED = "EFFILAB_UNSANDBOXED"  # "1": run student code without the jail (development only; never to grade)


@dataclass
class PartResult:
    grade_id: str
    exercise: str
    part: str
    points: float
    max_points: float
    report: str
    details: dict = field(default_factory=dict)
    seconds: float = 0.0
    device: str = ""  # what graded it ("NVIDIA H200", "cpu: …"): speed and memory verdicts hold there only


@dataclass
class Plan:
    """One graded part of one submission, as the grader's process prepared it."""

    index: int
    grade_id: str
    ex: object
    part: str
    points: float
    code: list
    key: object  # the exercise's hidden Key (derived from the course secret)
    groups: list = field(default_factory=list)  # correctness: the hidden cases


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def grade_map(source_nb) -> dict[str, tuple[str, str, float]]:
    """{grade_id: (exercise, part, points)} from the ``check(...)`` calls of the source's graded cells."""
    out = {}
    for c in source_nb.cells:
        meta = c.get("metadata", {}).get("nbgrader", {}) or {}
        if c.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        try:
            tree = ast.parse(c.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                part = "correctness"
                if len(node.args) >= 3 and isinstance(node.args[2], ast.Constant):
                    part = node.args[2].value
                for kw in node.keywords:
                    if kw.arg == "part" and isinstance(kw.value, ast.Constant):
                        part = kw.value.value
                out[meta["grade_id"]] = (node.args[0].value, part, float(meta.get("points", 0)))
                break
    return out


def course_secret(course: Course) -> bytes:
    """The course's secret (created on first use, readable by the grader's user only)."""
    p = course.path("secret_seed")
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return p.read_text().strip().encode()


def exercise_key(secret: bytes, assignment: str, exercise: str):
    """The hidden Key of one exercise: a keyed hash of the course secret, so that the sandbox of a
    speed or memory part, which gets this key, learns nothing about the secret or other exercises."""
    from effilab.grading.keys import Key

    sub = hmac.new(secret, f"{assignment}/{exercise}".encode(), hashlib.sha256).hexdigest()
    return Key.hidden(sub, exercise)


def _header(ex, part: str, pts: float, why: str) -> str:
    return f"{ex} [{part}]: 0 / {pts:g} points — {why}"


def plan(course: Course, assignment: str, sub, only: set | None = None) -> tuple[list[Plan], list[PartResult]]:
    """The parts to run, and the results already decided (no code, forbidden code)."""
    from effilab.grading import get

    source = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
    cells = solution_cells(sub)
    setup = setup_source(source)
    provided = names_defined(setup)
    secret = course_secret(course)
    plans, decided = [], []
    for gid, (name, part, pts) in grade_map(source).items():
        if only is not None and gid not in only:
            continue
        ex = get(name)
        chosen = cells_for(name, cells, provided)
        if not chosen:
            decided.append(PartResult(gid, name, part, 0.0, pts, _header(name, part, pts, f"no solution cell defines "
                                      f"`{name}` (was the cell deleted, or the function renamed?)")))
            continue
        problems = static_problems("\n\n".join(c.source for c in chosen), tuple(ex.forbidden), tuple(ex.forbidden_source))
        if problems:
            decided.append(PartResult(gid, name, part, 0.0, pts, _header(name, part, pts, "not allowed in this "
                                      "exercise:\n  " + "\n  ".join(problems))))
            continue
        code = [("setup cell", setup)] + [(f"your cell {c.grade_id}", c.source) for c in chosen]
        key = exercise_key(secret, assignment, name)
        p = Plan(len(plans), gid, ex, part, pts, code, key)
        if part == "correctness":
            p.groups = ex.cases("hidden", key)
        if _decided_here(p):
            decided.append(_cpu_verdict(p))
            continue
        plans.append(p)
    return plans, decided


def _decided_here(p: Plan) -> bool:
    """Parts that need a GPU, on a machine without one: nothing to run."""
    import torch

    if torch.cuda.is_available() or p.part == "correctness":
        return False
    if p.part == "speed":
        return True
    return p.ex.memory_part(p.key).use_cuda()


def _cpu_verdict(p: Plan) -> PartResult:
    from effilab.grading import measure

    from .sanitize import clean_text

    if p.part == "speed":
        v = measure.decide_speed(p.ex, p.ex.speed_part(p.key), {}, {}, "grader")
    else:
        v = measure.decide_memory(p.ex, p.ex.memory_part(p.key), {}, {}, "grader")
    return PartResult(p.grade_id, p.ex.name, p.part, 0.0, p.points, clean_text(v.report(), MAX_REPORT), v.details)


# ----------------------------------------------------------------------------------------------
# The run: one jail, the zygote, frames back
# ----------------------------------------------------------------------------------------------
@dataclass
class PartRun:
    frames: list = field(default_factory=list)  # (kind, payload bytes)
    end: dict | None = None  # how the part ended (the zygote's END frame); None: the jail stopped first


def _job(plans: list[Plan], order: list[int], scratch: str, timeout: float, compile_budget: float, deny: list) -> dict:
    from copy import copy

    parts = {}
    for p in plans:
        entry = {"exercise": p.ex.name, "part": p.part, "code": p.code, "timeout": timeout,
                 "compile_budget": compile_budget, "deny_read": deny}
        if p.part == "correctness":
            entry["cases"] = [(gi, ci, _case_cpu(copy(c))) for gi, g in enumerate(p.groups)
                              for ci, c in enumerate(g.cases)]
        else:
            entry["subkey"] = p.key._secret.decode()
        parts[p.index] = entry
    return {"parts": parts, "order": order, "scratch": scratch, "parallel": _parallel()}


def _parallel() -> int:
    """How many untimed parts (correctness, memory) of a submission run side by side: on a GPU host up
    to 4 (one per 4 cores); on a CPU machine one, so that CPU-bound checks do not crowd each other."""
    import torch

    return max(1, min(4, (os.cpu_count() or 1) // 4)) if torch.cuda.is_available() else 1


def _case_cpu(case):
    """A case with its tensors on the CPU (the sandbox moves them to its own device)."""
    case.args, case.kwargs = to_device(case.args, "cpu"), to_device(case.kwargs, "cpu")
    return case


def _reader(fd: int, runs: dict[int, PartRun], on_end) -> threading.Thread:
    def loop():
        with os.fdopen(fd, "rb") as fh:
            while True:
                head = fh.read(RELAY.size)
                if len(head) < RELAY.size:
                    return
                index, kind, n = RELAY.unpack(head)
                payload = fh.read(n)
                if len(payload) < n or index not in runs:
                    return
                if kind == END:
                    from effilab.grading import wire

                    try:
                        runs[index].end = wire.loads(payload)
                    except Exception:
                        runs[index].end = {"status": "garbage"}
                    on_end(index)
                else:
                    runs[index].frames.append((kind, payload))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


_ZYGOTE_LOG: list[str] = [""]  # the last zygote's own error output (grader bugs, not student output)


def _launch(course: Course, jobfile: str, workdir: Path, scratch: Path, w: int, slot: int, log):
    import subprocess
    import sys

    argv = [sys.executable, "-P", "-s", "-m", "grader.zygote", jobfile, str(w)]
    if os.environ.get(UNSANDBOXED) == "1":
        env = dict(os.environ, EFFILAB_JAILED="0", PYTHONPATH=str(course.repo), HOME=str(scratch),
                   TMPDIR=str(scratch))
        return subprocess.Popen(argv, pass_fds=(w,), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(scratch), start_new_session=True)
    from . import jail

    ok, why = jail.available()
    if not ok:
        raise SystemExit(f"error: the grading sandbox is not available: {why}")
    j = jail.Jail(writable=[scratch], readonly=[workdir / "job"], hidden=[course.root, course.solutions],
                  env={"EFFILAB_JAILED": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}, slot=slot,
                  memory_bytes=_memory_limit(), repo=course.repo)
    return j.popen(argv, pass_fds=(w,), stdout=log, stderr=log,
                   stdin=subprocess.DEVNULL)


def _memory_limit() -> int:
    """The jail's resident-memory limit: 3/4 of this machine's memory, at most 64 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 16 << 30
    return int(min(64 << 30, 0.75 * total))


def _kill(proc) -> None:
    import signal

    try:
        proc.kill()
    except Exception:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:
            pass
    try:
        proc.wait(30)
    except Exception:
        pass


def run_jail(course: Course, plans: list[Plan], order: list[int], timeout: float, compile_budget: float,
             slot: int = 0, on_end=lambda i: None, holder: list | None = None) -> dict[int, PartRun]:
    """Run the parts ``order`` (indices into ``plans``) in one jail; what came back for each.
    ``on_end(index)`` is called as each part ends (``holder[0]`` is the runs dict meanwhile)."""
    import torch

    runs = {i: PartRun() for i in order}
    if holder is not None:
        holder[0] = runs
    deadline = time.monotonic() + len(order) * (timeout + compile_budget) + 60
    with tempfile.TemporaryDirectory(prefix="effilab-grade-") as tmp:
        workdir = Path(tmp)
        (workdir / "job").mkdir()
        scratch = workdir / "scratch"
        scratch.mkdir()
        deny = [str(course.root), str(course.solutions), str(course.repo / "tests")]
        jobfile = workdir / "job" / "job.pt"
        torch.save(_job(plans, order, str(scratch), timeout, compile_budget, deny), str(jobfile))
        os.chmod(workdir / "job", 0o755)
        os.chmod(jobfile, 0o644)
        os.chmod(workdir, 0o755)
        r, w = os.pipe()
        zlog = open(workdir / "zygote.log", "wb")
        try:
            proc = _launch(course, str(jobfile), workdir, scratch, w, slot, zlog)
        finally:
            os.close(w)
            zlog.close()
        reader = _reader(r, runs, on_end)
        while reader.is_alive() and time.monotonic() < deadline:
            reader.join(0.25)
        if reader.is_alive():
            _kill(proc)
            reader.join(30)
        _kill(proc)
        _ZYGOTE_LOG[:] = [(workdir / "zygote.log").read_bytes()[-4000:].decode("utf-8", "replace")]
        why = getattr(proc, "limit_hit", None)
        if why:
            for run in runs.values():
                if run.end is None:
                    run.end = {"status": "memory", "why": why}
    return runs


# ----------------------------------------------------------------------------------------------
# Judging (the grader's process)
# ----------------------------------------------------------------------------------------------
def _ended(end: dict | None, timeout: float, compile_budget: float) -> str:
    """What to tell the student about how a part's run ended, or '' when it ended normally."""
    if end is None:
        return ("the grading sandbox stopped before this part finished (did your code kill the grading process "
                "or exhaust the machine?)")
    st = end.get("status")
    if st == "time":
        return (f"time limit: your code ran longer than {timeout:.0f} s (after up to {compile_budget:.0f} s for "
                "start-up and compiling) and was stopped")
    if st == "memory":
        return f"memory limit: {end.get('why', 'your code used too much memory')} — the run was stopped"
    if st == "garbage":
        return "the result channel was written to by something other than the grader: tampering"
    code = end.get("exit")
    if code not in (0, None):
        why = f"the grading process ended with exit code {code}" + (f" (killed by signal {-code})" if code < 0 else "")
        log = (end.get("log") or "").strip()
        return why + ": did your code exit, crash the interpreter or run out of memory?" + (
            f"\nlast output of the grading process:\n{log[-1500:]}" if log else "")
    return ""


def _decode(payload: bytes):
    from effilab.grading import wire
    from effilab.grading.calls import Problem

    try:
        return wire.loads(payload)
    except Exception as exc:
        return Problem(f"your output could not be read by the grader ({type(exc).__name__})")


def _notes(run: PartRun) -> tuple[list[str], str]:
    """The notes and the error a part's sandbox sent, sanitised (grader/sanitize.py)."""
    from .sanitize import clean_notes, clean_text

    notes, error = [], ""
    for kind, payload in run.frames:
        if kind != NOTE:
            continue
        n = _decode(payload)
        if isinstance(n, dict):
            error = error or clean_text(str(n.get("error") or ""), 2000)
            notes += clean_notes(n.get("notes"))[:10]
    return notes, error


def judge(p: Plan, run: PartRun, timeout: float, compile_budget: float) -> PartResult:
    """The verdict of one part from what its run sent back."""
    from effilab.grading import measure
    from effilab.grading.calls import Problem
    from effilab.grading.core import CaseResult, Verdict, default_device, expect_case, judge_case, score

    from .sanitize import clean_text

    notes, error = _notes(run)
    stopped = _ended(run.end, timeout, compile_budget)
    seconds = float((run.end or {}).get("seconds", 0.0))
    if error:
        return PartResult(p.grade_id, p.ex.name, p.part, 0.0, p.points, _header(p.ex.name, p.part, p.points, error),
                          seconds=seconds)
    dev = default_device()
    if p.part == "correctness":
        results: dict = {}
        for kind, payload in run.frames:
            if kind != CASE:
                continue
            f = _decode(payload)
            if not isinstance(f, dict) or not isinstance(f.get("group"), int) or not isinstance(f.get("case"), int):
                continue
            gi, ci = f["group"], f["case"]
            if (gi, ci) in results or not (0 <= gi < len(p.groups)) or not (0 <= ci < len(p.groups[gi].cases)):
                continue  # the first output of a case counts; an index that is no case is ignored
            case = p.groups[gi].cases[ci]
            where = device_of(case)  # output and expected meet where the case's tensors are
            out = to_device(f.get("output"), where)
            try:
                expected = None if isinstance(out, Problem) else to_device(expect_case(p.ex, case), where)
                results[(gi, ci)] = judge_case(p.ex, out, case, expected)
            except Exception as exc:  # the judge's own failure on a malformed output
                results[(gi, ci)] = CaseResult(False, f"{case.label}: could not compare your output ({exc})"[:500])
        n_cases = sum(len(g.cases) for g in p.groups)
        if not stopped and len(results) < n_cases:  # ended "normally" without every case: say what it printed
            log = (run.end or {}).get("log", "").strip()
            stopped = ("the grading process ended before every case ran" +
                       (f"; its last output:\n{clean_text(log[-1500:], 1500)}" if log else ""))
        if stopped:
            notes.insert(0, stopped + (" — the cases that finished before this were graded" if results else ""))
        v = score(p.ex, p.groups, results, suite="grader", notes=notes, stopped="the grading process stopped early")
    else:
        res = next((_decode(pl) for kind, pl in run.frames if kind == RESULT), None)
        if res is None or not isinstance(res, dict) or "error" in res:
            why = (res or {}).get("error") if isinstance(res, dict) else None
            return PartResult(p.grade_id, p.ex.name, p.part, 0.0, p.points,
                              _header(p.ex.name, p.part, p.points, str(why or stopped or "no measurement came back")),
                              seconds=seconds)
        res = to_device(res, dev)
        base = anchor(p)
        if p.part == "speed":
            v = measure.decide_speed(p.ex, p.ex.speed_part(p.key), res, base, "grader")
        else:
            v = measure.decide_memory(p.ex, p.ex.memory_part(p.key), res, base, "grader")
        v.notes = notes + v.notes
    if not isinstance(v, Verdict):
        raise TypeError(v)
    return PartResult(p.grade_id, p.ex.name, p.part, min(v.points, p.points), p.points, clean_text(v.report(), MAX_REPORT),
                      {k: x for k, x in v.details.items() if isinstance(x, (int, float, str))}, seconds)


_ANCHORS: dict = {}
LAST_TIMING: dict = {}  # seconds of the last verify_notebook: plan, baselines, sandbox, judging


def anchor(p: Plan) -> dict:
    """The baseline of a speed or memory part, measured in this process (never where student code
    ran) and kept for :data:`ANCHOR_TTL` seconds."""
    from effilab.grading import measure

    k = (p.ex.name, p.part, p.key.derive(p.part))
    hit = _ANCHORS.get(k)
    if hit and time.monotonic() - hit[0] < ANCHOR_TTL:
        return hit[1]
    if p.part == "speed":
        base = measure.baseline_speed(p.ex.speed_part(p.key))
    else:
        base = measure.baseline_memory(p.ex.memory_part(p.key))
    _ANCHORS[k] = (time.monotonic(), base)
    return base


def _prime_anchors(plans: list[Plan]) -> None:
    """Measure the baselines before the jail starts: nothing else runs on the GPU then."""
    for p in plans:
        if p.part in ("speed", "memory"):
            anchor(p)


# ----------------------------------------------------------------------------------------------
# A whole notebook
# ----------------------------------------------------------------------------------------------
def verify_notebook(course: Course, assignment: str, nb_path: Path, timeout: float = 900.0,
                    log=print, only: set | None = None, compile_budget: float = COMPILE_BUDGET,
                    done: dict | None = None, slot: int = 0, on_result=None) -> list[PartResult]:
    """Grade every graded cell of a submitted notebook authoritatively.

    ``done``: results already recorded ({grade_id: PartResult}), kept and not run again.
    ``on_result(result)`` is called as each part is decided (the caller persists it)."""
    done = dict(done or {})
    on_result = on_result or (lambda r: None)
    try:
        sub = nbformat.read(str(nb_path), as_version=4)
    except Exception as e:
        source = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
        return [PartResult(gid, name, part, 0.0, pts, f"the notebook could not be read: {str(e)[:300]}")
                for gid, (name, part, pts) in grade_map(source).items() if only is None or gid in only]
    t_start = time.monotonic()
    plans, decided = plan(course, assignment, sub, only)
    LAST_TIMING.clear()
    LAST_TIMING["plan"] = time.monotonic() - t_start
    who = f"{Path(nb_path).parent.parent.name} / {assignment}"
    out = {r.grade_id: r for r in decided if r.grade_id not in done}
    for r in out.values():
        on_result(r)
        log(f"verify: {who} / {r.grade_id}: {r.points:g} / {r.max_points:g} (decided without running: "
            f"{r.report.splitlines()[0].split(' — ')[-1][:80]})")
    plans = [p for p in plans if p.grade_id not in done]
    by = {p.index: p for p in plans}
    # correctness first, then memory, then speed; a part's cases and verdict do not depend on the order
    order = [p.index for p in sorted(plans, key=lambda p: (p.part != "correctness", p.part == "speed", p.index))]
    t_anchor = time.monotonic()
    _prime_anchors(plans)
    LAST_TIMING["baselines"] = time.monotonic() - t_anchor
    total, t0, n = len(order), time.monotonic(), 0
    ran = [0]

    def ended(i):  # a line per part as it finishes in the sandbox (judging follows when the jail is done)
        ran[0] += 1
        left = (time.monotonic() - t0) / ran[0] * (total - ran[0])
        end = runs_now[0][i].end or {}
        log(f"verify: {who} / {by[i].grade_id}: ran in {float(end.get('seconds', 0)):.1f} s [{ran[0]}/{total}"
            + (f", about {left:.0f} s left]" if total > ran[0] else "]"))

    runs_now: list = [{}]
    while order:
        t_jail = time.monotonic()
        runs = run_jail(course, plans, order, timeout, compile_budget, slot, on_end=ended, holder=runs_now)
        LAST_TIMING["sandbox"] = LAST_TIMING.get("sandbox", 0.0) + time.monotonic() - t_jail
        t_judge = time.monotonic()
        finished = [i for i in order if runs[i].end is not None]
        cut = [i for i in order if runs[i].end is None]
        if cut:  # the first part without an end was in flight when the jail stopped: it fails; the rest run again
            finished.append(cut[0])
        for i in finished:
            r = judge(by[i], runs[i], timeout, compile_budget)
            out[r.grade_id] = r
            on_result(r)
            n += 1
            log(f"verify: {who} / {r.grade_id}: {r.points:g} / {r.max_points:g} [{n}/{total} judged]")
        order = cut[1:]
        LAST_TIMING["judging"] = LAST_TIMING.get("judging", 0.0) + time.monotonic() - t_judge
    merged = {**done, **out}
    return [merged[g] for g in _grade_ids(course, assignment) if g in merged and (only is None or g in only)]


def _grade_ids(course: Course, assignment: str) -> list[str]:
    source = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
    return list(grade_map(source))

