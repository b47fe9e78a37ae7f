"""Authoritative grading outside the student's notebook kernel.

nbgrader runs the check cells inside the student's own kernel, where the student's code could have
patched the checker, the timer or IPython's traceback display. Those cells stay as the student's
self-check; the score recorded in the gradebook comes from here:

* the graded cells of the *source* notebook say which exercise and part each grade id checks
  (``check("name", fn, "part")``);
* for each part, :mod:`grader.extract` takes the student's code for that exercise (and what it
  uses), static checks reject forbidden imports and calls, and :mod:`grader.worker` runs it in a
  fresh process, one per exercise part, with its own time limits (start-up and the first call,
  where kernels compile, have a budget of their own) — a crash, an exit, an out-of-memory or an
  endless loop costs that part only, and the groups whose cases finished before it keep their
  points;
* correctness inputs come from a per-course secret seed (``grader/course/secret_seed``) that never
  reaches the worker; the parent compares the returned outputs with its own expected values;
* the verdicts are written to ``grader/course/verdicts/<student>/<assignment>.json`` (timings
  included), into the gradebook, and into the autograded notebook, so feedback shows them.
"""
from __future__ import annotations

import ast
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .course import Course
from .extract import cells_for, names_defined, setup_source, solution_cells, static_problems
from .normalize import grader_notes
from .sanitize import clean_notes

MAX_REPORT = 6000  # characters of a verdict's report kept (huge outputs are truncated)


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


def course_secret(course: Course) -> int:
    p = course.path("secret_seed")
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(str(secrets.randbelow(2**31)))
    return int(p.read_text().strip())


COMPILE_BUDGET = 300.0  # seconds for start-up and the first call (Triton / torch.compile compile there)


def _frames(data: bytes) -> tuple[list[dict], bool]:
    """Decode the worker's length-prefixed frames; (frames, clean) where ``clean`` is False when bytes
    are left over or a frame does not decode (something other than the worker wrote to the channel)."""
    import io

    import torch

    out, pos = [], 0
    while pos + 8 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        if pos + 8 + n > len(data):
            return out, False
        try:
            out.append(torch.load(io.BytesIO(data[pos + 8:pos + 8 + n]), weights_only=True))
        except Exception:
            return out, False
        pos += 8 + n
    return out, pos == len(data)


def _run_worker(job: dict, timeout: float, env: dict | None = None,
                compile_budget: float = COMPILE_BUDGET) -> tuple[dict | None, str]:
    """Run one job in a fresh worker process; (result or None, what went wrong / worker output).

    The worker sends a frame per finished correctness case, then a final frame. Time limits: the
    start-up and the first case (where kernels compile) may take up to ``compile_budget`` seconds;
    from the end of the first case — or, for speed and memory parts, from the end of that budget —
    the rest has ``timeout`` seconds. A worker stopped at a limit still returns the cases it
    finished, so the groups graded before the limit keep their points.
    """
    import torch

    with tempfile.TemporaryDirectory(prefix="effilab-job-") as jobdir:
        torch.save(job, os.path.join(jobdir, "job.pt"))
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "grader.worker", jobdir, str(w)]
        worker_env = dict(os.environ if env is None else env)
        worker_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])]
                                                  + [p for p in worker_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        t0 = time.time()
        proc = subprocess.Popen(cmd, pass_fds=(w,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=worker_env, start_new_session=True)
        os.close(w)
        chunks, logs = [], []
        first_frame_at = []
        import threading

        def reader():
            with os.fdopen(r, "rb") as fh:
                while True:
                    b = fh.read1(1 << 20)
                    if not b:
                        break
                    chunks.append(b)
                    if not first_frame_at and len(_frames(b"".join(chunks))[0]) >= 1:
                        first_frame_at.append(time.time())
                    if sum(map(len, chunks)) > (1 << 30):  # a runaway writer
                        break

        def log_reader():
            logs.append(proc.stdout.read())

        th, lt = threading.Thread(target=reader, daemon=True), threading.Thread(target=log_reader, daemon=True)
        th.start()
        lt.start()
        timed_out = False
        while proc.poll() is None:
            start_run = min(first_frame_at[0], t0 + compile_budget) if first_frame_at else t0 + compile_budget
            if time.time() > start_run + timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                break
            time.sleep(0.05)
        proc.wait()
        th.join(30)
        lt.join(30)
        text = (logs[0] if logs else b"").decode("utf-8", "replace")[-3000:]
        frames, clean = _frames(b"".join(chunks))
        cases = [f for f in frames if f.get("kind") == "case"]
        final = [f for f in frames if f.get("kind") != "case"]
        order = [(f.get("group"), f.get("case")) for f in cases]
        in_order = order == sorted(set(order), key=lambda k: (k[0] or 0, k[1] or 0))  # the worker's order, once each
        if (not clean and not timed_out) or len(final) > 1 or not in_order:
            return None, "the result channel was written to by something other than the grader: tampering"
        if timed_out or not final:
            if timed_out:
                why = (f"time limit: your code ran longer than {timeout:.0f} s (after up to {compile_budget:.0f} s "
                       "for start-up and compiling) and was stopped")
            else:
                why = f"the grading process ended without a result (exit code {proc.returncode})"
                if proc.returncode and proc.returncode < 0:
                    why += f", killed by signal {-proc.returncode}"
                why += ": did your code exit, crash the interpreter or run out of memory?" + (
                    "\nlast output of the grading process:\n" + text[-1500:] if text.strip() else "")
            if cases:  # what finished before the stop was checked already: those groups keep their points
                return {"cases": cases, "notes": [why, "the cases that finished before this were graded"],
                        "error": None, "_seconds": time.time() - t0}, text
            return None, why
        res = final[0]
        res["cases"] = cases + list(res.get("cases", []))
        res["_seconds"] = time.time() - t0
        return res, text


def verify_part(course: Course, ex, part: str, code: list[tuple[str, str]], seed: int, timeout: float,
                env: dict | None = None, compile_budget: float = COMPILE_BUDGET) -> tuple[float, str, dict]:
    """(points, report, details) of one exercise part."""
    import torch

    from effilab.grading.core import GroupResult, Verdict

    max_pts = float(ex.points.get(part, 0.0))
    deny = [str(course.root), str(course.solutions), str(course.repo / "grader"), str(course.repo / "tests")]
    job = {"exercise": ex.name, "part": part, "code": code, "seed": seed, "deny_read": deny}
    groups = []
    if part == "correctness":
        groups = ex.groups("hidden", seed)
        job["cases"] = [(gi, ci, _case_cpu(c)) for gi, g in enumerate(groups) for ci, c in enumerate(g.cases)]
    res, log = _run_worker(job, timeout, env, compile_budget)
    if res is None:
        return 0.0, f"{ex.name} [{part}]: 0 / {max_pts:g} points — {log}", {}
    if res.get("error"):
        return 0.0, f"{ex.name} [{part}]: 0 / {max_pts:g} points — {res['error']}", {}
    notes = clean_notes(res.get("notes"))
    if part != "correctness":
        v = res["verdict"]
        rep = Verdict(ex.name, part, float(v["points"]), float(v["max_points"]), notes=notes + clean_notes(v.get("notes")),
                      suite="grader")
        return rep.points, rep.report(), dict(v.get("details", {}), seconds=res["_seconds"])
    by = {(e["group"], e["case"]): e for e in res["cases"]}
    results = []
    for gi, g in enumerate(groups):
        message = ""
        for ci, case in enumerate(g.cases):
            e = by.get((gi, ci))
            if e is None:
                message = f"{case.label}: not run (the grading process stopped early)"
            elif e.get("problem"):
                message = e["problem"]
            elif "output" in e:
                try:
                    problem = ex.compare(e["output"], _case_cpu(case))
                except Exception as exc:
                    problem = f"could not compare your output ({type(exc).__name__}: {exc})"
                message = f"{case.label}: {problem}" if problem else ""
            elif not (e.get("compared_in_worker") and ex.decided_in_worker):
                message = f"{case.label}: no output came back from the grading process for this case: tampering?"
            if message:
                break
        hint = g.hint
        if "\nhint: " in message:
            message, hint = message.split("\nhint: ", 1)
        results.append(GroupResult(g.name, not message, len(g.cases), message[:2000], hint if message else ""))
    pts = round(max_pts * sum(r.passed for r in results) / max(1, len(results)), 2)
    v = Verdict(ex.name, "correctness", pts, max_pts, results, notes=notes, suite="grader")
    del torch
    return pts, v.report(), {"seconds": res["_seconds"]}


def _case_cpu(case):
    from copy import copy

    from .worker import _to_cpu

    c = copy(case)
    c.args, c.kwargs = _to_cpu(case.args), _to_cpu(case.kwargs)
    return c


def verify_notebook(course: Course, assignment: str, nb_path: Path, timeout: float = 900.0,
                    env: dict | None = None, log=print, only: set | None = None,
                    compile_budget: float = COMPILE_BUDGET) -> list[PartResult]:
    """Grade every graded cell of a submitted notebook authoritatively."""
    from effilab.grading import get

    source = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
    try:
        sub = nbformat.read(str(nb_path), as_version=4)
    except Exception as e:
        return [PartResult(gid, name, part, 0.0, pts, f"the notebook could not be read: {e}")
                for gid, (name, part, pts) in grade_map(source).items()]
    cells = solution_cells(sub)
    setup = setup_source(source)
    provided = names_defined(setup)
    seed = course_secret(course)
    out = []
    for gid, (name, part, pts) in grade_map(source).items():
        if only is not None and gid not in only:
            continue
        ex = get(name)
        chosen = cells_for(name, cells, provided)
        t0 = time.time()
        if not chosen:
            out.append(PartResult(gid, name, part, 0.0, pts, f"{name} [{part}]: 0 / {pts:g} points — no solution "
                                  f"cell defines `{name}` (was the cell deleted, or the function renamed?)"))
            continue
        problems = static_problems("\n\n".join(c.source for c in chosen), tuple(getattr(ex, "forbidden", ())),
                                   tuple(getattr(ex, "forbidden_source", ())))
        if problems:
            out.append(PartResult(gid, name, part, 0.0, pts, f"{name} [{part}]: 0 / {pts:g} points — not allowed in "
                                  "this exercise:\n  " + "\n  ".join(problems)))
            continue
        code = [("setup cell", setup)] + [(f"your cell {c.grade_id}", c.source) for c in chosen]
        points, report, details = verify_part(course, ex, part, code, seed, timeout, env, compile_budget)
        points = min(points, pts)
        out.append(PartResult(gid, name, part, points, pts, report[:MAX_REPORT], details, time.time() - t0))
        log(f"verify: {nb_path.parent.parent.name} / {assignment} / {gid}: {points:g} / {pts:g} ({time.time() - t0:.1f} s)")
    return out


def record(course: Course, assignment: str, student: str, results: list[PartResult]) -> Path:
    """Write the verdicts: JSON beside the gradebook, auto scores in the gradebook, a report cell per
    graded cell into the autograded notebook (so feedback shows them)."""
    d = course.path("verdicts", student)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{assignment}.json"
    path.write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))
    with course.gradebook() as gb:
        for r in results:
            try:
                g = gb.find_grade(r.grade_id, assignment, assignment, student)
            except Exception:
                continue
            g.auto_score = r.points
        gb.db.commit()
    nbp = course.path("autograded", student, assignment, f"{assignment}.ipynb")
    if nbp.exists():
        nb = nbformat.read(str(nbp), as_version=4)
        by = {r.grade_id: r for r in results}
        cells = []
        notes = grader_notes(course, student, assignment)
        if notes:  # what the grader repaired in the notebook's structure (grader/normalize.py)
            m = nbformat.v4.new_markdown_cell("**Notes from the grader** — your notebook's grading structure was "
                                              "repaired before grading:\n\n" + "\n".join(f"* {n}" for n in notes))
            m.metadata["effilab_verdict"] = True
            cells.append(m)
        for c in nb.cells:
            if c.get("metadata", {}).get("effilab_verdict"):
                continue  # replaced on regrade
            cells.append(c)
            gid = c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            if gid in by and c.get("metadata", {}).get("nbgrader", {}).get("grade"):
                r = by[gid]
                text = (f"**Recorded score: {r.points:g} / {r.max_points:g}** — graded outside your notebook, on the "
                        f"grader's own inputs (the check above is your self-check).\n\n```\n{r.report}\n```")
                m = nbformat.v4.new_markdown_cell(text)
                m.metadata["effilab_verdict"] = True
                cells.append(m)
        nb.cells = cells
        nbformat.write(nb, str(nbp))
    return path
