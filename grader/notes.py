"""The grader's own notes about a submission, kept where only the grader writes.

What the grader did to a notebook before grading it (repaired its grade cells, removed its shell
lines) is shown to the student as "Notes from the grader". Those notes used to live in the
notebook's metadata (``effilab.grader_notes``), which is the student's to edit: a student could
have the grader "say" anything. They now live in ``course/notes/<student>/<assignment>.json``,
written by the grader alone; a ``grader_notes`` key in a submission's metadata is never read (and
``grader.normalize`` drops it).

Each file names the submission it describes (the ``timestamp.txt`` that ``collect`` wrote), so a
new submission of the same assignment does not inherit the notes of the one it replaced.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .course import Course
from .sanitize import clean_notes


def notes_path(course: Course, student: str, assignment: str) -> Path:
    return course.path("notes", student, f"{assignment}.json")


def submission_stamp(course: Course, student: str, assignment: str) -> str:
    """The ``timestamp.txt`` of the current submission ("undated" when there is none)."""
    p = course.path("submitted", student, assignment, "timestamp.txt")
    try:
        return p.read_text().strip() or "undated"
    except OSError:
        return "undated"


def read_notes(course: Course, student: str, assignment: str) -> list[str]:
    """The grader's notes about the current submission; [] when there are none, when they describe
    an earlier submission, or when the file cannot be read."""
    try:
        data = json.loads(notes_path(course, student, assignment).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("submission") != submission_stamp(course, student, assignment):
        return []
    return clean_notes(data.get("notes"))


def add_notes(course: Course, student: str, assignment: str, notes: list[str]) -> list[str]:
    """Add ``notes`` to the current submission's (once each, in order); returns them all.

    Earlier runs' notes stay: a notebook repaired in place has nothing left to repair the second
    time, yet the student should still be told what was done."""
    stamp = submission_stamp(course, student, assignment)
    kept = read_notes(course, student, assignment)
    for n in clean_notes(notes):
        if n not in kept:
            kept.append(n)
    path = notes_path(course, student, assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".notes-", suffix=".json")
    with os.fdopen(fd, "w") as fh:  # written whole, then renamed: a killed run leaves no half file
        json.dump({"submission": stamp, "notes": kept}, fh, indent=1)
    os.replace(tmp, path)
    return kept
