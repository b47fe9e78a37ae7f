"""The class's speed leaderboard: one table per speed exercise and GPU, ratios only, no names unless a
student opted in.

    python -m grader leaderboard OUT.html [-a ASSIGNMENT]

Where the numbers come from: the verdict files autograde writes (``verdicts/STUDENT/ASSIGNMENT.json``),
so the page shows what was graded — the speed-up over the part's baseline measured in the grader's
process, on the GPU that graded it — and nothing a student can submit directly. Ratios measured on
different GPU classes are never ranked together (a T4's 2× and an H200's 2× are different kernels).

Names: a student appears by name only if listed in ``COURSE/leaderboard_names.txt`` (one student id a
line, what they agreed to); everyone else is "student N", numbered by rank, so the page says nothing
about who did not opt in. Only parts that passed their correctness gate carry a ratio; a part that
was not timed is not listed.

The idea of a speed leaderboard for a systems assignment is Stanford CS336's (its public leaderboard of
training throughput); this one stays inside the course's own gradebook.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from .course import Course
from .record import load_verdicts

OPT_IN = "leaderboard_names.txt"


@dataclass(frozen=True)
class Entry:
    student: str
    ratio: float
    points: float
    max_points: float
    gpu: str


def opted_in(course: Course) -> set[str]:
    """Students who agreed to be named: ``COURSE/leaderboard_names.txt`` (# comments allowed)."""
    p = course.path(OPT_IN)
    if not p.exists():
        return set()
    return {ln.split("#")[0].strip() for ln in p.read_text().splitlines()} - {""}


def _gpu_of(result) -> str:
    details = result.details or {}
    return str(details.get("gpu_class") or result.device or "unknown GPU")


def entries(course: Course, assignment: str) -> dict[tuple[str, str], list[Entry]]:
    """{(speed exercise, GPU class): entries, fastest first} for one assignment."""
    out: dict[tuple[str, str], list[Entry]] = {}
    for student in course.submitted_students(assignment):
        for r in load_verdicts(course, assignment, student).values():
            ratio = (r.details or {}).get("ratio")
            if r.part != "speed" or not isinstance(ratio, (int, float)) or ratio != ratio:  # NaN: not timed
                continue
            key = (r.exercise, _gpu_of(r))
            out.setdefault(key, []).append(Entry(student, float(ratio), r.points, r.max_points, key[1]))
    for rows in out.values():
        rows.sort(key=lambda e: (-e.ratio, e.student))
    return out


def _table(title: str, rows: list[Entry], names: set[str]) -> str:
    body = "".join(
        f"<tr><td>{i}</td><td>{html.escape(e.student if e.student in names else f'student {i}')}</td>"
        f"<td>{e.ratio:.2f}×</td><td>{e.points:g} / {e.max_points:g}</td></tr>"
        for i, e in enumerate(rows, 1))
    return (f"<h2>{html.escape(title)}</h2>\n<table><tr><th>rank</th><th>who</th><th>speed-up over the "
            f"baseline</th><th>points</th></tr>{body}</table>\n")


def render(course: Course, assignments: list[str]) -> str:
    """The page: one table per (assignment, speed exercise, GPU class)."""
    names = opted_in(course)
    parts = []
    for a in assignments:
        for (exercise, gpu), rows in sorted(entries(course, a).items()):
            parts.append(_table(f"{a} · {exercise} · {gpu}", rows, names))
    if not parts:
        parts.append("<p>No speed part has been timed yet: autograde on a GPU first.</p>")
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px;text-align:right}"
    return (f"<!doctype html><meta charset='utf-8'><title>Leaderboard</title><style>{style}</style>\n"
            "<h1>Speed leaderboard</h1>\n<p>Speed-ups measured by the grader against each part's baseline, "
            "on the GPU that graded them; students are named only if they opted in.</p>\n" + "".join(parts))


def write(course: Course, out: Path, assignment: str | None = None) -> Path:
    assignments = [course.check_assignment(assignment)] if assignment else course.assignments()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(course, assignments))
    return out
