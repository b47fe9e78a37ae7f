"""``python -m grader collect PATH…``: take submissions in, as students and LMSs hand them over.

Accepted inputs: loose ``.ipynb`` files, ``.zip`` archives (an LMS bulk download, a Colab
download, nbgrader's ``<student>/<assignment>.ipynb`` layout), and folders of either.

For each notebook the collector decides
* the **assignment**, from the notebook's nbgrader grade ids (the cells say which assignment they
  belong to), falling back to an assignment id in the file name;
* the **student**, from the LMS — the folder or file name of the download — and from notebook
  metadata ``effilab.student_id`` only for a loose file that names no one (the full rule, and what
  a student id may hold, are in :mod:`grader.identity`). A notebook whose metadata names someone
  else than its LMS identity is filed under the LMS identity and flagged in the report.

Nothing a student hands in stops the batch: every file is read with limits and checks
(:mod:`grader.intake`), one that fails is rejected with a line that says why and what to do, and
the rest is collected. A rejected file is never modified or moved. An accepted notebook is
*copied* to ``course/submitted/<student>/<assignment>/`` with a ``timestamp.txt``; a previous
submission of the same student and assignment is first moved to ``course/archive/`` — nothing is
lost. The report (also written to ``course/reports/collect-<time>.txt``) has one line per file.
"""
from __future__ import annotations

import datetime as _dt
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .course import Course
from .identity import ID_RULE, check_student_id, decide
from .intake import Item, Limits, iter_items, parse_notebook
from .sanitize import clean_text

MAX_BYTES = Limits.notebook_bytes


@dataclass
class Outcome:
    source: str
    ok: bool
    message: str
    student: str | None = None
    assignment: str | None = None
    flags: list[str] = field(default_factory=list)


def _meta(d) -> dict:
    """A metadata mapping, or {} when a student's edit made it something else (a string…)."""
    return d if isinstance(d, dict) else {}


def grade_ids(nb) -> set[str]:
    ids = set()
    for cell in nb.get("cells", []):
        gid = _meta(_meta(cell.get("metadata")).get("nbgrader")).get("grade_id")
        if isinstance(gid, (str, int)) and str(gid):
            ids.add(str(gid))
    return ids


def assignment_grade_ids(course: Course) -> dict[str, set[str]]:
    return {a: grade_ids(nbformat.read(str(course.solutions / f"{a}.ipynb"), as_version=4))
            for a in course.assignments()}


def identify_assignment(nb, name: str, known: dict[str, set[str]]) -> tuple[str | None, str]:
    """(assignment, how) from grade ids — the best overlap wins — else from the file name."""
    ids = grade_ids(nb)
    if ids:
        best = max(known, key=lambda a: len(ids & known[a]), default=None)
        if best and len(ids & known[best]) > 0:
            return best, "grade ids"
    for a in known:
        if a in name:
            return a, "file name"
    return None, ""


def metadata_student_id(nb):
    """``metadata.effilab.student_id`` of a notebook, or None (whatever type the metadata has)."""
    return _meta(_meta(nb.get("metadata")).get("effilab")).get("student_id")


def collect(course: Course, paths: list[str], student: str | None = None, max_bytes: int = MAX_BYTES,
            log=print, limits: Limits | None = None) -> list[Outcome]:
    """Collect every notebook under ``paths`` (see the module doc); one :class:`Outcome` per file."""
    limits = limits or Limits(notebook_bytes=max_bytes)
    if student is not None:
        try:
            student = check_student_id(student)
        except ValueError as e:
            raise SystemExit(f"collect: --student: {e} (a student id may hold {ID_RULE})")
    course.prepare()
    known = assignment_grade_ids(course)
    outcomes: list[Outcome] = []
    stamp = _dt.datetime.now(_dt.timezone.utc)
    filed: dict[tuple[str, str], str] = {}  # (student, assignment) -> source, within this batch
    for p in paths:
        for item in iter_items(Path(p), limits):
            outcomes.append(_guarded(course, item, known, student, stamp, limits, filed))
    _report(course, outcomes, stamp, log)
    return outcomes


def _report(course: Course, outcomes: list[Outcome], stamp, log) -> None:
    accepted = sum(o.ok for o in outcomes)
    flagged = sum(bool(o.flags) for o in outcomes if o.ok)
    lines = []
    for o in outcomes:
        lines.append(("OK       " if o.ok else "REJECTED ") + clean_text(o.message, 2000))
        lines += [f"  FLAG     {clean_text(f, 1000)}" for f in o.flags]
    lines.append(f"collect: {accepted} accepted ({flagged} flagged), {len(outcomes) - accepted} rejected "
                 "(rejected files were left untouched)")
    report = "\n".join(lines)
    log(report)
    rep = course.path("reports")
    rep.mkdir(parents=True, exist_ok=True)
    (rep / f"collect-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.txt").write_text(report + "\n", errors="replace")


def _guarded(course, item: Item, known, student_override, stamp, limits, filed) -> Outcome:
    """:func:`_collect_one`, and a line instead of a crash if anything unforeseen goes wrong."""
    try:
        return _collect_one(course, item, known, student_override, stamp, limits, filed)
    except Exception as e:  # noqa: BLE001 — one file must never stop the batch
        return Outcome(item.source, False, f"{item.source}: could not be collected ({type(e).__name__}: "
                       f"{clean_text(str(e), 300)}); the rest of the batch was collected — check this file by hand")


def _collect_one(course: Course, item: Item, known, student_override, stamp, limits: Limits, filed) -> Outcome:
    if item.error:
        return Outcome(item.source, False, f"{item.source}: {item.error}")
    try:
        nb = parse_notebook(item.data, limits)
    except ValueError as e:
        return Outcome(item.source, False, f"{item.source}: {e}")
    assignment, how = identify_assignment(nb, item.name, known)
    if assignment is None:
        return Outcome(item.source, False,
                       f"{item.source}: not a notebook of this course (none of its cells belongs to "
                       f"{', '.join(known)}); submit the notebook you were given")
    raw, who, flags = decide(override=student_override, folders=item.folders, name=item.name,
                             assignment=assignment, assignments=list(known), container=item.container,
                             metadata_id=metadata_student_id(nb), siblings=item.siblings)
    if not raw:
        return Outcome(item.source, False,
                       f"{item.source}: cannot tell whose notebook this is; name the file "
                       f"<student>_{assignment}.ipynb or pass --student ID")
    try:
        sid = check_student_id(raw)
    except ValueError as e:
        return Outcome(item.source, False, f"{item.source}: the student id is not usable — {e} (an id may hold "
                       f"{ID_RULE}); rename the file or pass --student ID")
    earlier = filed.get((sid, assignment))
    if earlier:
        flags.append(f"a second notebook of {sid} / {assignment} in this batch: it replaces {earlier} (archived)")
    _file(course, nb, sid, assignment, stamp)
    filed[(sid, assignment)] = item.source
    return Outcome(item.source, True, f"{item.source}: {sid} / {assignment} (assignment from {how}, student from "
                   f"the {who})", sid, assignment, flags)


def _file(course: Course, nb, sid: str, assignment: str, stamp) -> None:
    """Copy the notebook into ``submitted/``; a previous submission moves to ``archive/`` first."""
    dest = course.path("submitted", sid, assignment)
    if dest.exists():
        old = (dest / "timestamp.txt").read_text().strip() if (dest / "timestamp.txt").exists() else "unknown"
        safe = re.sub(r"[^0-9A-Za-z]", "", old) or "unknown"
        arch = course.path("archive", sid, assignment, f"{safe}-{stamp.strftime('%H%M%S%f')}")
        n = 0
        while arch.exists():  # two resubmissions in one batch share the stamp
            n += 1
            arch = arch.with_name(f"{safe}-{stamp.strftime('%H%M%S%f')}-{n}")
        arch.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(dest), str(arch))
    dest.mkdir(parents=True)
    nbformat.write(nb, str(dest / f"{assignment}.ipynb"))
    (dest / "timestamp.txt").write_text(stamp.strftime("%Y-%m-%d %H:%M:%S.%f %Z") + "\n")
