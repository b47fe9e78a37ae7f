"""The grader's notes come from the grader's own file, never from the notebook: a student who writes
``metadata.effilab.grader_notes`` cannot make the grader say anything."""
import copy

import nbformat
import pytest

from grader.collect import collect
from grader.course import REPO, Course
from grader.normalize import grader_notes, normalize, prepare_submission
from grader.notes import add_notes, notes_path, read_notes
from grader.verify import PartResult, record

A = "01_float_formats"
RELEASE = nbformat.read(str(REPO / "notebooks" / f"{A}.ipynb"), as_version=4)
ALICE = nbformat.read(str(REPO / "grader" / "examples" / A / f"alice_{A}.ipynb"), as_version=4)
FORGED = "all your answers were graded 10/10 by hand"


def _forged(nb=ALICE):
    nb = copy.deepcopy(nb)
    nb.metadata["effilab"]["grader_notes"] = [FORGED]
    for c in nb.cells:  # and a forged verdict cell of the grader's
        if c.cell_type == "markdown":
            c.metadata["effilab_verdict"] = True
            break
    return nb


def _collected(tmp_path, nb, student="mallory"):
    course = Course(root=tmp_path / "course")
    p = tmp_path / f"{student}_{A}.ipynb"
    nbformat.write(nb, str(p))
    (o,) = collect(course, [str(p)], log=lambda *a: None)
    assert o.ok
    return course


def test_normalize_drops_forged_notes_and_verdict_marks():
    changes = []
    fixed, notes = normalize(RELEASE, _forged(), changes)
    assert notes == []  # nothing the student must read about
    assert "grader_notes" not in fixed.metadata["effilab"]
    assert not any(c.metadata.get("effilab_verdict") for c in fixed.cells)
    assert any("grader_notes" in c for c in changes) and any("verdict mark" in c for c in changes)


def test_metadata_of_the_wrong_type_is_replaced_and_the_kernel_is_the_releases():
    nb = copy.deepcopy(ALICE)
    nb.metadata["effilab"] = "not a mapping"
    nb.metadata["nbgrader"] = "nor this"
    nb.metadata["kernelspec"] = {"name": "bash", "display_name": "Bash", "language": "bash"}
    nb.cells[3].metadata["effilab"] = "x"
    fixed, _ = normalize(RELEASE, nb)
    assert fixed.metadata["effilab"] == RELEASE.metadata["effilab"]
    assert "nbgrader" not in fixed.metadata
    assert fixed.metadata["kernelspec"] == RELEASE.metadata["kernelspec"]
    assert "effilab" not in fixed.cells[3].metadata
    colab = copy.deepcopy(ALICE)
    colab.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}  # as Colab writes it
    changes = []
    assert normalize(RELEASE, colab, changes)[0].metadata["kernelspec"] == colab.metadata["kernelspec"]
    assert changes == []  # the same kernel: the notebook is left as it came


def test_prepare_submission_keeps_notes_in_the_graders_file_only(tmp_path):
    nb = _forged()
    nb.cells.insert(1, nbformat.v4.new_code_cell("!pip install something"))
    course = _collected(tmp_path, nb)
    logged = []
    notes = prepare_submission(course, A, "mallory", log=logged.append)
    assert len(notes) == 1 and "pip install something" in notes[0]
    assert grader_notes(course, "mallory", A) == notes
    assert FORGED not in notes_path(course, "mallory", A).read_text()
    sub = nbformat.read(str(course.path("submitted", "mallory", A, f"{A}.ipynb")), as_version=4)
    assert "grader_notes" not in sub.metadata["effilab"]
    assert any("grader_notes" in line for line in logged)  # the instructor is told
    assert prepare_submission(course, A, "mallory", log=lambda *a: None) == []  # nothing left to do …
    assert grader_notes(course, "mallory", A) == notes  # … and the notes stay


def test_a_new_submission_does_not_inherit_the_notes(tmp_path):
    course = _collected(tmp_path, ALICE)
    add_notes(course, "mallory", A, ["a repair of the first submission"])
    assert read_notes(course, "mallory", A)
    p = tmp_path / f"mallory_{A}.ipynb"
    collect(course, [str(p)], log=lambda *a: None)  # handed in again
    assert read_notes(course, "mallory", A) == []


def test_grader_notes_refuses_a_notebook_with_a_clear_error():
    with pytest.raises(TypeError, match="grader's own file"):
        grader_notes(ALICE)


def _autograded(course, nb, student="mallory"):
    p = course.path("autograded", student, A, f"{A}.ipynb")
    p.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(p))
    return p


def test_record_shows_only_the_graders_notes(tmp_path):
    course = _collected(tmp_path, ALICE)
    p = _autograded(course, _forged())  # what nbgrader would copy if normalize had not run
    result = PartResult("decompose_check", "decompose", "correctness", 1.0, 3.0, "report text")
    record(course, A, "mallory", [result])
    sources = "\n".join(c.source for c in nbformat.read(str(p), as_version=4).cells)
    assert FORGED not in sources and "Notes from the grader" not in sources
    add_notes(course, "mallory", A, ["cell 'x' was repaired"])
    record(course, A, "mallory", [result])
    nb = nbformat.read(str(p), as_version=4)
    shown = [c.source for c in nb.cells if c.metadata.get("effilab_verdict") and "Notes from the grader" in c.source]
    assert len(shown) == 1 and "cell 'x' was repaired" in shown[0] and FORGED not in shown[0]
