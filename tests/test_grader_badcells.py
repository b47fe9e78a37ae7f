"""Damaged grade cells: a duplicated, renamed or deleted grade cell, edited metadata or an edited
read-only cell. nbgrader alone refuses such a notebook outright (every exercise 0); the grader
repairs the structure, says what it did, keeps the received notebook, and the slip costs at most
the exercise it touches."""
import copy

import nbformat
import pytest

from grader.cli import feedback, scores
from grader.course import REPO
from grader.extract import cells_for, names_defined, solution_cells
from grader.normalize import grader_notes, normalize

A = "01_float_formats"
RELEASE = nbformat.read(str(REPO / "notebooks" / f"{A}.ipynb"), as_version=4)
ALICE = nbformat.read(str(REPO / "grader" / "examples" / A / f"alice_{A}.ipynb"), as_version=4)


def gid(c):
    return c.metadata.get("nbgrader", {}).get("grade_id")


def index(nb, grade_id):
    return [gid(c) for c in nb.cells].index(grade_id)


def grade_ids(nb):
    return [gid(c) for c in nb.cells if gid(c)]


def duplicated():
    """alice's notebook with a second copy of the round_to_bf16 solution cell that returns its input."""
    nb = copy.deepcopy(ALICE)
    i = index(nb, "round_to_bf16_solution")
    dup = copy.deepcopy(nb.cells[i])
    dup.source = "def round_to_bf16(x):\n    return x\n"
    dup.id = "copied-cell"
    nb.cells.insert(i + 1, dup)
    return nb, i


def test_intact_notebook_is_left_alone():
    fixed, notes = normalize(RELEASE, ALICE)
    assert notes == []
    assert [c.source for c in fixed.cells] == [c.source for c in ALICE.cells]


def test_duplicated_grade_cell_keeps_the_first_and_runs_the_copy_as_plain_code():
    nb, i = duplicated()
    dup = nb.cells[i + 1]
    fixed, notes = normalize(RELEASE, nb)
    assert grade_ids(fixed) == grade_ids(RELEASE)
    assert fixed.cells[i + 1].source == dup.source and "nbgrader" not in fixed.cells[i + 1].metadata
    assert len(notes) == 1 and "more than once" in notes[0]
    # both cells define the function; in notebook order the later one wins, as in the student's kernel
    setup = RELEASE.cells[index(RELEASE, "setup_imports")].source
    chosen = cells_for("round_to_bf16", solution_cells(fixed), names_defined(setup))
    assert [c.index for c in chosen] == [i, i + 1]


def test_renamed_solution_cell_still_defines_the_exercise():
    nb = copy.deepcopy(ALICE)
    cell = nb.cells[index(nb, "round_to_bf16_solution")]
    cell.metadata["nbgrader"]["grade_id"] = "my_round"
    fixed, notes = normalize(RELEASE, nb)
    assert grade_ids(fixed) == grade_ids(RELEASE)  # the stub is back, under the right id
    assert any("'my_round'" in n and "renamed" in n for n in notes)
    assert any("'round_to_bf16_solution' was missing" in n for n in notes)
    assert len({c.id for c in fixed.cells}) == len(fixed.cells)  # cell ids stay unique
    setup = RELEASE.cells[index(RELEASE, "setup_imports")].source
    chosen = cells_for("round_to_bf16", solution_cells(fixed), names_defined(setup))
    assert [c.source for c in chosen] == [cell.source]  # the put-back cell is empty: it defines nothing


def test_deleted_cells_come_back_in_place_and_edits_to_locked_cells_are_undone():
    nb = copy.deepcopy(ALICE)
    nb.cells = [c for c in nb.cells if gid(c) not in ("round_to_bf16_solution", "round_to_bf16_check")]
    check = nb.cells[index(nb, "decompose_check")]
    check.source = "print('all good')"
    check.metadata["nbgrader"]["points"] = 100
    nb.cells[index(nb, "underflow_fraction_check")].metadata["nbgrader"] = {}
    fixed, notes = normalize(RELEASE, nb)
    assert grade_ids(fixed) == grade_ids(RELEASE)
    rel = {gid(c): c for c in RELEASE.cells if gid(c)}
    for c in fixed.cells:
        if gid(c) in ("decompose_check", "round_to_bf16_check", "underflow_fraction_check"):
            assert c.source == rel[gid(c)].source and c.metadata == rel[gid(c)].metadata
    text = "\n".join(notes)
    for expected in ("'decompose_check' is read-only and was edited", "metadata of cell 'decompose_check' was edited",
                     "'round_to_bf16_solution' was missing", "'round_to_bf16_check' was missing",
                     "metadata was damaged"):
        assert expected in text, (expected, notes)
    again, more = normalize(RELEASE, fixed)  # idempotent
    assert more == [] and [c.source for c in again.cells] == [c.source for c in fixed.cells]


def test_a_cell_the_student_added_can_hold_a_helper():
    nb = copy.deepcopy(ALICE)
    i = index(nb, "loss_scale_solution")
    nb.cells.insert(i, nbformat.v4.new_code_cell("import torch\n\ndef _nonzero(g):\n    return g != 0\n"))
    nb.cells[i + 1].source = nb.cells[i + 1].source.replace("nonzero = grads != 0", "nonzero = _nonzero(grads)")
    assert "_nonzero(grads)" in nb.cells[i + 1].source
    setup = RELEASE.cells[index(RELEASE, "setup_imports")].source
    chosen = cells_for("underflow_fraction", solution_cells(nb), names_defined(setup))
    assert [c.index for c in chosen] == [i, i + 1]
    # a cell that only re-imports what the setup provides is not pulled in with every exercise
    assert [c.index for c in cells_for("round_to_bf16", solution_cells(nb), names_defined(setup))] == \
        [index(nb, "round_to_bf16_solution")]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_graded):
    """bob's slot holds alice's notebook with a duplicated cell; carol's a renamed one."""
    root = tmp_path_factory.mktemp("badcells")
    src = tmp_path_factory.mktemp("badcells_in")
    dup, _ = duplicated()
    ren = copy.deepcopy(ALICE)
    ren.cells[index(ren, "round_to_bf16_solution")].metadata["nbgrader"]["grade_id"] = "my_round"
    for student, nb in (("dup", dup), ("ren", ren)):
        nbformat.write(nb, str(src / f"{student}_{A}.ipynb"))
    # execute=False: nbgrader's own run of notebook 01 is covered by the examples round trip; the
    # repairs and the scores here come from the grader's out-of-notebook run alone
    return make_graded(root, [A], sources=[str(src)], expect=2, execute=False), (dup, ren)


@pytest.mark.slow
def test_damaged_notebooks_are_graded_and_lose_only_the_touched_exercise(graded):
    course, (dup, ren) = graded
    s = scores(course)
    dup_s, ren_s = s[(A, "dup")], s[(A, "ren")]
    assert ren_s["score"] == 11  # every correctness point (the 2 speed points need a GPU)
    assert dup_s["cells"]["round_to_bf16_check"][0] == 0  # the later copy returns its input
    assert dup_s["score"] == 11 - 3
    kept = course.path("originals", "dup", A)
    assert len(list(kept.iterdir())) == 1
    original = nbformat.read(str(next(kept.iterdir())), as_version=4)
    assert [c.source for c in original.cells] == [c.source for c in dup.cells]
    assert any("renamed" in n for n in grader_notes(course, "ren", A))  # the grader's file, not the notebook
    html = {p.parent.parent.name: p.read_text() for p in feedback(course, log=lambda *a: None)}
    assert "Notes from the grader" in html["ren"] and "my_round" in html["ren"]
