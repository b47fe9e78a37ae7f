"""Where a submission's verdicts go: a JSON file per submission (written part by part, so a run
stopped half-way is completed by the next one), the gradebook's auto scores, and a report cell under
each graded cell of the autograded notebook (the feedback shows them)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import nbformat

from .course import Course
from .normalize import grader_notes


def verdict_path(course: Course, assignment: str, student: str) -> Path:
    return course.path("verdicts", student, f"{assignment}.json")


def load_verdicts(course: Course, assignment: str, student: str) -> dict:
    """The parts of a submission already verified (a run that stopped half-way left them)."""
    p = verdict_path(course, assignment, student)
    if not p.exists():
        return {}
    try:
        rows = json.loads(p.read_text())
        from .verify import PartResult

        return {r["grade_id"]: PartResult(**r) for r in rows}
    except Exception:  # a damaged file: grade again
        return {}


def grading_device() -> str:
    """The GPU (or CPU) this process grades on, as a verdict records it."""
    from effilab import device

    d = device.info()
    return d.name if d.kind == "cuda" else f"cpu: {d.name}"


def device_change(course: Course, assignment: str, student: str) -> str:
    """A warning when the submission's recorded verdicts were graded on another machine class than
    this one (a regrade then measures speed and memory on a different GPU); empty otherwise."""
    before = sorted({r.device for r in load_verdicts(course, assignment, student).values() if r.device})
    now = grading_device()
    if not before or before == [now]:
        return ""
    return (f"{student} / {assignment} was graded on {', '.join(before)}; this regrade runs on {now}: its speed "
            "and memory parts are measured against baselines on this machine, so their points may differ")


def save_verdict(course: Course, assignment: str, student: str, result) -> None:
    """Add one part's verdict to the submission's verdict file (atomically), stamped with the
    machine that graded it."""
    if not getattr(result, "device", ""):
        result.device = grading_device()
    have = load_verdicts(course, assignment, student)
    have[result.grade_id] = result
    p = verdict_path(course, assignment, student)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.__dict__ for r in have.values()], indent=1, default=str))
    os.replace(tmp, p)


def record(course: Course, assignment: str, student: str, results: list) -> Path:
    """Write the verdicts: JSON beside the gradebook, auto scores in the gradebook, a report cell per
    graded cell into the autograded notebook (so feedback shows them)."""
    for r in results:
        save_verdict(course, assignment, student, r)
    path = verdict_path(course, assignment, student)
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
        _write_report_cells(nbp, {r.grade_id: r for r in results}, grader_notes(course, student, assignment))
    return path


def _write_report_cells(nbp: Path, by: dict, notes: list[str]) -> None:
    nb = nbformat.read(str(nbp), as_version=4)
    cells = []
    if notes:  # what the grader changed before grading (grader/normalize.py), from the grader's own file
        m = nbformat.v4.new_markdown_cell("**Notes from the grader** — before grading, the grader changed this in "
                                          "your notebook:\n\n" + "\n".join(f"* {n}" for n in notes))
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


@contextmanager
def claim(course: Course, assignment: str, student: str):
    """Hold the submission's grading lock while the block runs: yields False (and holds nothing) when
    another process grades it right now — two tasks of a job array, or a task and an instructor's
    autograde — so that no part is graded twice. The kernel drops the lock of a process that is
    killed, so a requeued task takes it again. Where the file system has no locks (some Lustre
    mounts) it yields True: grading goes on, as before locks."""
    import fcntl

    p = course.path("locks", student, f"{assignment}.lock")
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # ENOLCK / EOPNOTSUPP: no locks on this file system
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
