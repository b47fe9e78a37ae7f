"""Example submissions, rebuilt with ``python -m grader examples``.

For each assignment, three students, as the instructor would receive them:

* ``alice`` — correct: the release notebook with every solution cell filled in from solutions/;
* ``bob``   — partly wrong: alice's notebook with the bugs of ``grader/examples/<assignment>/bugs.json``
  (a list of ``{"cell": grade id, "old": text, "new": text, "why": the mistake}``; each a classic
  mistake that costs part of an exercise's points);
* ``carol`` — the untouched release.

They serve the autograde round-trip test and show an instructor what the grader reports.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

from .course import Course

STUDENTS = ("alice", "bob", "carol")


def examples_dir(course: Course) -> Path:
    return course.repo / "grader" / "examples"


def _solution_sources(course: Course, assignment: str) -> dict[str, str]:
    nb = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
    def unmarked(src: str) -> str:  # a student's cell has no solution markers
        return "\n".join(ln for ln in src.splitlines() if "### BEGIN SOLUTION" not in ln and "### END SOLUTION" not in ln)

    return {c.metadata["nbgrader"]["grade_id"]: unmarked(c.source) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _filled(release_nb, sources: dict[str, str]):
    nb = nbformat.from_dict(release_nb)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if c.metadata.get("nbgrader", {}).get("solution") and gid in sources:
            c.source = sources[gid]
    return nb


def build_examples(course: Course, out: Path | None = None, log=print) -> list[Path]:
    out = Path(out) if out else examples_dir(course)
    written = []
    for a in course.assignments():
        release_nb = nbformat.read(str(course.notebooks / f"{a}.ipynb"), as_version=4)
        sources = _solution_sources(course, a)
        bugged = dict(sources)
        bugs_file = examples_dir(course) / a / "bugs.json"
        bugs = json.loads(bugs_file.read_text()) if bugs_file.exists() else []
        for bug in bugs:
            gid, old, new = bug["cell"], bug["old"], bug["new"]
            if old not in bugged[gid]:
                raise SystemExit(f"examples: the bug for {gid} no longer applies: {old!r} not in the solution")
            bugged[gid] = bugged[gid].replace(old, new)
        d = out / a
        d.mkdir(parents=True, exist_ok=True)
        for student, nb in (("alice", _filled(release_nb, sources)), ("bob", _filled(release_nb, bugged)),
                            ("carol", nbformat.from_dict(release_nb))):
            p = d / f"{student}_{a}.ipynb"
            nbformat.write(nb, str(p))
            written.append(p)
        log(f"examples: {a} → {d} ({', '.join(STUDENTS)})")
    return written
