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

It also makes the notebook safe to execute on the grading machine:

* every shell or magic line in the student's code cells (``!pip``, ``%%bash``, ``get_ipython()``
  calls…) is replaced by a comment that says the grader removed it (:mod:`grader.shell`, the same
  function :mod:`grader.extract` uses); the instructor's read-only cells are not touched;
* the kernel it runs in is the release's (``metadata.kernelspec``: nbgrader starts the kernel a
  notebook names, and a student could name another one installed on the machine), and metadata of the wrong type (``metadata.effilab`` or ``metadata.nbgrader``
  that is not a mapping, in the notebook or a cell) is replaced or dropped;
* a ``grader_notes`` key in ``metadata.effilab`` and an ``effilab_verdict`` mark on a cell are
  dropped: the student may not speak as the grader.

``python -m grader autograde`` calls :func:`prepare_submission`. It keeps the notebook as it was
received under ``course/originals/`` when anything changes, and records the notes in the grader's
own file (:mod:`grader.notes`), never in the notebook. The notes appear at the top of the
autograded notebook and its feedback (:func:`grader_notes` reads them).
"""
from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path

import nbformat

from .course import Course
from .notes import add_notes, read_notes
from .sanitize import clean_text
from .shell import strip_shell

NOTES_KEY = "grader_notes"  # where notes used to be kept (notebook metadata): now dropped on sight
VERDICT_KEY = "effilab_verdict"  # marks the grader's report cells (grader/verify.py)


def _grade_id(cell) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader")
    if not isinstance(meta, dict):
        return None
    gid = meta.get("grade_id")
    return gid if isinstance(gid, str) else None


def _locked(meta: dict) -> bool:
    return bool(meta.get("locked")) or (bool(meta.get("grade")) and not meta.get("solution"))


def normalize(release, submission, changes: list | None = None) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission with the release's grade-cell structure and no shell lines, and one note per
    repair (for the student).

    ``release`` is the student edition of the assignment; ``submission`` the notebook handed in
    (neither is modified). Changes the student need not read about (metadata put back, forged
    grader notes dropped) are appended to ``changes`` when it is given, for the instructor's log.
    """
    changes = [] if changes is None else changes
    nb = copy.deepcopy(submission)
    _clean_metadata(nb, release, changes)
    nb, notes = _repair_structure(nb, release)
    notes += _remove_shell_lines(nb)
    return nb, notes


def _clean_metadata(nb, release, changes: list) -> None:
    """Notebook and cell metadata the grader relies on, of the right type and not forged (in place)."""
    meta = nb.metadata
    effilab = meta.get("effilab")
    if effilab is not None and not isinstance(effilab, dict):
        meta["effilab"] = copy.deepcopy(release.metadata.get("effilab", {}))
        changes.append("metadata.effilab was not a mapping: replaced by the assignment's")
    elif isinstance(effilab, dict) and NOTES_KEY in effilab:
        effilab.pop(NOTES_KEY)
        changes.append(f"metadata.effilab.{NOTES_KEY} came with the submission (not written by the grader): dropped")
    if "nbgrader" in meta and not isinstance(meta["nbgrader"], dict):
        meta.pop("nbgrader")
        changes.append("metadata.nbgrader of the notebook was not a mapping: dropped")
    want = release.metadata.get("kernelspec")
    have = meta.get("kernelspec")
    if isinstance(want, dict) and (not isinstance(have, dict) or have.get("name") != want.get("name")):
        # nbgrader runs the kernel the notebook names: always the course's Python kernel
        meta["kernelspec"] = copy.deepcopy(want)
        changes.append(f"metadata.kernelspec named {have.get('name') if isinstance(have, dict) else have!r}: "
                       f"restored to the assignment's kernel ({want.get('name')!r})")
    for i, c in enumerate(nb.cells):
        cm = c.get("metadata", {})
        if VERDICT_KEY in cm:
            cm.pop(VERDICT_KEY)
            changes.append(f"cell {i + 1} carried the grader's verdict mark: dropped")
        if "effilab" in cm and not isinstance(cm["effilab"], dict):
            cm.pop("effilab")
            changes.append(f"cell {i + 1}: metadata.effilab was not a mapping: dropped")


def _cell_label(cell, index: int) -> str:
    gid = _grade_id(cell)
    return f"cell {gid!r}" if gid else f"your cell {index + 1}"


def _remove_shell_lines(nb) -> list[str]:
    """Replace the shell and magic lines of every code cell the student may edit (in place)."""
    notes = []
    for i, c in enumerate(nb.cells):
        cell_meta = c.get("metadata")
        meta = cell_meta.get("nbgrader") if isinstance(cell_meta, dict) else None
        if c.get("cell_type") != "code" or (isinstance(meta, dict) and _locked(meta)):
            continue
        result = strip_shell(c.get("source", ""))
        if not result.removed:
            continue
        c.source = result.source
        first = clean_text(result.removed[0].strip(), 80)
        if result.whole_cell:
            what = f"{_cell_label(c, i)} was turned into comments, all of it: {result.why}"
        else:
            n = len(result.removed)
            what = (f"{_cell_label(c, i)}: {n} shell/magic line{'s' if n > 1 else ''} (`{first}`"
                    f"{' …' if n > 1 else ''}) replaced by comments")
        notes.append(what + ": shell commands, magics and get_ipython() calls do not run when your notebook is "
                     "graded (in Jupyter and Colab they still work)")
    return notes


def _repair_structure(nb, release) -> tuple[nbformat.NotebookNode, list[str]]:
    """The grade-cell repairs described in the module doc, on ``nb`` (a copy, changed in place)."""
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
    changes: list[str] = []
    try:
        fixed, notes = normalize(release, sub, changes)
    except Exception as e:  # a grader bug must not leave shell lines in what nbgrader runs
        fixed = copy.deepcopy(sub)
        notes = _remove_shell_lines(fixed)
        changes.append(f"the grade-cell repair failed ({type(e).__name__}: {clean_text(str(e), 200)}): "
                       "only the shell lines were removed")
    if nbformat.writes(fixed) != nbformat.writes(sub):
        stamp = read_stamp(path.parent)
        keep = course.path("originals", student, assignment, (re.sub(r"[^0-9A-Za-z]", "", stamp) or "undated") + ".ipynb")
        if not keep.exists():
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(path.read_bytes())
        nbformat.write(fixed, str(path))
    if notes:
        add_notes(course, student, assignment, notes)
    for n in notes + changes:
        log(f"autograde: {student} / {assignment}: {clean_text(n, 500)}")
    return notes


def read_stamp(folder: Path) -> str:
    stamp_file = folder / "timestamp.txt"
    return stamp_file.read_text().strip() if stamp_file.exists() else "undated"


def grader_notes(course: Course, student: str | None = None, assignment: str | None = None) -> list[str]:
    """The grader's notes about a student's current submission (from :mod:`grader.notes`).

    Never from the notebook: its metadata is the student's to write."""
    if not isinstance(course, Course) or not student or not assignment:
        raise TypeError("grader_notes(course, student, assignment): the notes are read from the grader's own "
                        "file (grader/notes.py), no longer from a notebook's metadata")
    return read_notes(course, student, assignment)


def originals_dir(course: Course, student: str, assignment: str) -> Path:
    return course.path("originals", student, assignment)
