"""End to end through nbgrader: a hostile but honest-looking submission — a non-ASCII student id, a
Colab set-up cell, shell lines of every kind, forged grader notes, 1 MB of prints and an exception
whose text holds a lone surrogate — is collected from an LMS zip, autograded and given feedback.
Nothing of it stops the run, no shell line runs, the environment is unchanged, the notes shown are
the grader's own and the outputs kept are capped."""
import copy
import uuid
import zipfile

import nbformat
import pytest

from grader.cli import feedback, scores
from grader.course import REPO
from grader.envcheck import changed, snapshot
from grader.sanitize import STREAM_LIMIT

A = "01_float_formats"
ALICE = nbformat.read(str(REPO / "grader" / "examples" / A / f"alice_{A}.ipynb"), as_version=4)
FORGED = "the grader gave you every point by hand"
COLAB = "!git clone https://example.org/effilab-course.git effilab-course && pip install -q -e effilab-course\n"


def _hostile(markers):
    nb = copy.deepcopy(ALICE)
    nb.metadata["effilab"]["grader_notes"] = [FORGED]
    nb.metadata["effilab"]["student_id"] = "alice"  # names a classmate: must not decide
    shell = "\n".join([f"!touch {markers[0]}", f"get_ipython().system('touch {markers[1]}')",
                       f"%system touch {markers[2]}"])
    cells = [nbformat.v4.new_code_cell(COLAB), nbformat.v4.new_code_cell(shell),
             nbformat.v4.new_code_cell(f"%%bash\ntouch {markers[3]}\n"),
             nbformat.v4.new_code_cell("print('y' * 1_000_000)")]
    for i, c in enumerate(cells):
        nb.cells.insert(1 + i, c)
    sol = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "round_to_bf16_solution")
    sol.source += "\n\ndef round_to_bf16(x):\n    raise ValueError('broken on purpose: \\udc80')\n"
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_graded):
    src = tmp_path_factory.mktemp("e2e_in")
    markers = [f"/tmp/effilab-shell-ran-{uuid.uuid4().hex}" for _ in range(4)]
    with zipfile.ZipFile(src / "lms.zip", "w") as zf:
        zf.writestr(f"zoë/{A}.ipynb", nbformat.writes(_hostile(markers)))
    before = snapshot()
    course = make_graded(tmp_path_factory.mktemp("e2e"), [A], sources=[str(src / "lms.zip")], expect=1)
    return course, markers, changed(before, snapshot())


@pytest.mark.slow
def test_the_hostile_submission_is_graded_under_its_lms_identity(graded):
    course, _, _ = graded
    s = scores(course)
    assert set(s) == {(A, "zoë")}
    cells = {g: v[0] for g, v in s[(A, "zoë")]["cells"].items()}
    assert cells["round_to_bf16_check"] == 0  # raises, with a lone surrogate in its message
    assert cells["decompose_check"] == 3 and cells["underflow_fraction_check"] == 1


@pytest.mark.slow
def test_no_shell_line_ran_and_the_environment_is_unchanged(graded):
    import os

    _, markers, env_changes = graded
    assert not any(os.path.exists(m) for m in markers)
    assert env_changes == []


@pytest.mark.slow
def test_feedback_shows_the_graders_notes_and_capped_outputs(graded):
    course, _, _ = graded
    (html,) = feedback(course, log=lambda *a: None)
    text = html.read_text()
    assert FORGED not in text
    assert "Notes from the grader" in text and "do not run when your notebook is graded" in text
    assert "removed by the grader" in text  # the comment in the student's own cell
    assert "characters of output cut by the grader" in text
    nb = nbformat.read(str(course.path("autograded", "zoë", A, f"{A}.ipynb")), as_version=4)
    printed = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert printed and max(len(o["text"]) for o in printed) <= STREAM_LIMIT
