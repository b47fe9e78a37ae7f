"""Repair the grading structure of a submitted notebook before nbgrader sees it.

nbgrader refuses a whole notebook whose grade cells were damaged: a duplicated grade id, a
renamed one, or metadata that was removed or edited. That costs the student every exercise for
one slip, and the instructor a manual fix. :func:`normalize` gives nbgrader the cell structure of
the release instead. The student's code is kept, and each repair is reported in a sentence that
the student will see in the feedback:

* a cell whose nbgrader metadata is broken, or names a grade id this assignment does not have
  (renamed), becomes an ordinary cell of the student's: its code still runs where it was;
* a grade id that appears more than once is kept on its first cell; later copies become ordinary
  cells, and still run in order as they did in the student's kernel;
* the metadata of a known grade cell is restored from the release (points, locks, ids), and so is
  the source of a locked cell (its text and tests are the instructor's);
* a grade cell that is missing (deleted) is put back from the release, after the grade cell that
  comes before it. A solution cell comes back empty (not as the stub, which would define the
  function again), so code the student wrote elsewhere still defines the exercise.

``python -m grader autograde`` calls :func:`prepare_submission`. It keeps the notebook as it was
received under ``course/originals/`` when anything changes, and records the notes in the notebook's
metadata (``effilab.grader_notes``). The notes appear at the top of the autograded notebook and
its feedback.
"""
from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path

import nbformat

from .course import Course

NOTES_KEY = "grader_notes"


def _grade_id(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader")
    if not isinstance(meta, dict):
        return None
    gid = meta.get("grade_id")
    return gid if isinstance(gid, str) else None


def _locked(meta: dict) -> bool:
    return bool(meta.get("locked")) or (bool(meta.get("grade")) and not meta.get("solution"))


def normalize(release, submission) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission with the release's grade-cell structure, and one note per repair.

    ``release`` is the student edition of the assignment; ``submission`` the notebook handed in
    (neither is modified).
    """
    nb = copy.deepcopy(submission)
    rel = {}
    order = []
    for c in release.cells:
        gid = _grade_id(c)
        if gid is not None and gid not in rel:
            rel[gid] = c
            order.append(gid)
    notes: list[str] = []
    out = []
    seen: dict[str, int] = {}  # grade id -> its index in ``out``

    def demote(cell, why: str) -> None:
        cell.metadata.pop("nbgrader", None)
        cell.metadata.pop("deletable", None)
        cell.metadata.pop("editable", None)
        notes.append(why)
        out.append(cell)

    for c in nb.cells:
        if "nbgrader" not in c.get("metadata", {}):
            out.append(c)
            continue
        gid = _grade_id(c)
        if gid is None:
            demote(c, "a cell's grading metadata was damaged (no grade id): it runs as an ordinary cell of yours")
            continue
        if gid not in rel:
            demote(c, f"a cell carries the grade id {gid!r}, which this assignment does not have (renamed?): "
                      "it runs as an ordinary cell of yours")
            continue
        if gid in seen:
            demote(c, f"cell {gid!r} appears more than once: the first copy is the graded one; later copies run "
                      "as ordinary cells of yours, in order (a later definition replaces an earlier one)")
            continue
        want = rel[gid]
        if c.cell_type != want.cell_type:
            demote(c, f"cell {gid!r} was changed from {want.cell_type} to {c.cell_type}: the original was put "
                      "back and your cell runs as an ordinary one")
            out.append(copy.deepcopy(want))
            seen[gid] = len(out) - 1
            continue
        meta_want = want.metadata.get("nbgrader", {})
        if {k: v for k, v in c.metadata["nbgrader"].items() if k != "checksum"} != \
                {k: v for k, v in meta_want.items() if k != "checksum"}:
            notes.append(f"the grading metadata of cell {gid!r} was edited: restored from the assignment")
        c.metadata = copy.deepcopy(want.metadata)
        if _locked(meta_want) and c.source != want.source:
            notes.append(f"cell {gid!r} is read-only and was edited: restored from the assignment")
            c.source = want.source
            if c.cell_type == "code":
                c.outputs, c.execution_count = [], None
        seen[gid] = len(out)
        out.append(c)

    missing = [g for g in order if g not in seen]
    for gid in missing:
        before = order[: order.index(gid)]
        present = [seen[g] for g in before if g in seen]
        at = (max(present) + 1) if present else 0
        cell = copy.deepcopy(rel[gid])
        solution = bool(cell.metadata.get("nbgrader", {}).get("solution"))
        if solution:  # empty: the release stub would define the function again, over the student's own
            cell.source = "# this solution cell was missing from the notebook handed in; the grader put it back empty"
        out.insert(at, cell)
        for g, i in seen.items():
            if i >= at:
                seen[g] = i + 1
        seen[gid] = at
        notes.append(f"solution cell {gid!r} was missing (deleted?): it was put back empty, so the exercise is "
                     "graded on whatever code of yours defines it elsewhere" if solution else
                     f"cell {gid!r} was missing (deleted?): the assignment's version was put back")
    ids = set()
    for c in out:  # cell ids must stay unique (a put-back cell may share one with a renamed copy)
        if "id" in c:
            while c.id in ids:
                c.id = uuid.uuid4().hex[:8]
            ids.add(c.id)
    nb.cells = out
    return nb, notes


def prepare_submission(course: Course, assignment: str, student: str, log=print) -> list[str]:
    """Normalize ``submitted/<student>/<assignment>/<assignment>.ipynb`` in place (see module doc).

    Returns this run's notes (empty when nothing needed repair). The received notebook is kept under
    ``originals/<student>/<assignment>/`` before the first change. A notebook that cannot be read is
    left as it is, for nbgrader to report.
    """
    path = course.path("submitted", student, assignment, f"{assignment}.ipynb")
    release_path = course.notebooks / f"{assignment}.ipynb"
    try:
        sub = nbformat.read(str(path), as_version=4)
        release = nbformat.read(str(release_path), as_version=4)
    except Exception:
        return []
    fixed, notes = normalize(release, sub)
    if not notes:
        return []
    stamp_file = path.parent / "timestamp.txt"
    stamp = stamp_file.read_text().strip() if stamp_file.exists() else "undated"
    keep = course.path("originals", student, assignment, (re.sub(r"[^0-9A-Za-z]", "", stamp) or "undated") + ".ipynb")
    if not keep.exists():
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(path.read_bytes())
    earlier = list(sub.metadata.get("effilab", {}).get(NOTES_KEY, []))
    fixed.metadata.setdefault("effilab", {})[NOTES_KEY] = earlier + [n for n in notes if n not in earlier]
    nbformat.write(fixed, str(path))
    for n in notes:
        log(f"autograde: {student} / {assignment}: {n}")
    return notes


def grader_notes(nb) -> list[str]:
    """The repair notes recorded in a (normalized) notebook."""
    return list(nb.metadata.get("effilab", {}).get(NOTES_KEY, []))


def originals_dir(course: Course, student: str, assignment: str) -> Path:
    return course.path("originals", student, assignment)
