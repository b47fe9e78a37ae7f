"""The instructor pipeline: release, examples, collect (good and bad input), autograde, feedback,
export, regrade — end to end with nbgrader on this machine's CPU."""
import csv
import json
import zipfile
from pathlib import Path

import nbformat
import pytest

from grader.cli import export, feedback, regrade, release, scores
from grader.collect import collect
from grader.course import REPO, Course

from grader.examples import build_examples

A = "01_float_formats"
EXAMPLES = REPO / "grader" / "examples" / A


def _norm(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_release_regenerates_notebooks_unchanged(tmp_path):
    course = Course(root=tmp_path / "course")
    written = release(course, out_dir=tmp_path / "release", log=lambda *a: None)
    assert [p.name for p in written] == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    for p in written:
        assert p.read_bytes() == (REPO / "notebooks" / p.name).read_bytes(), \
            f"notebooks/{p.name} is stale: run `python -m grader release` and commit"


def test_committed_notebooks_have_no_outputs():
    for nb_path in list((REPO / "notebooks").glob("*.ipynb")) + list((REPO / "solutions").glob("*.ipynb")):
        nb = nbformat.read(str(nb_path), as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{nb_path.name} has outputs"


def test_release_has_stubs_and_no_hidden_tests():
    text = (REPO / "notebooks" / f"{A}.ipynb").read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text
    assert text.count("raise NotImplementedError()") >= 6


def test_examples_are_up_to_date(tmp_path):
    built = build_examples(Course(), out=tmp_path, log=lambda *a: None)
    assert {p.parent.name for p in built} == set(Course().assignments())
    for p in built:
        committed = REPO / "grader" / "examples" / p.parent.name / p.name
        assert _norm(p) == _norm(committed), f"{committed} is stale: run `python -m grader examples`"


# ---------------------------------------------------------------------------------------------- collect
def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_collect_accepts_names_zip_layouts_and_rejects_bad_input(tmp_path):
    course = Course(root=tmp_path / "course")
    good = (EXAMPLES / f"alice_{A}.ipynb").read_bytes()
    inbox = tmp_path / "inbox"
    files = {
        "dave_01_float_formats.ipynb": good,                          # <student>_<assignment>
        "01_float_formats_erin.ipynb": good,                          # <assignment>_<student>
        "frank_1234_5678_01_float_formats.ipynb": good,               # Canvas naming
        "broken_01_float_formats.ipynb": good[: len(good) // 2],      # truncated JSON
        "garbage_01_float_formats.ipynb": bytes(range(256)) * 10,     # binary
        "notnb_01_float_formats.ipynb": b'{"hello": 1}',              # JSON, not a notebook
        "01_float_formats.ipynb": good,                               # no student in the name
        "weird name!_01_float_formats.ipynb": good,                   # unusable id
    }
    paths = [_write(inbox / k, v) for k, v in files.items()]
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    paths.append(_write(inbox / "gina_homework.ipynb", nbformat.writes(other)))  # another course's notebook
    z = inbox / "lms.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"henry/{A}.ipynb", good)                         # nbgrader's folder layout
        zf.writestr(f"__MACOSX/henry/._{A}.ipynb", b"junk")
    empty = inbox / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    before = {p: p.read_bytes() for p in paths + [z, empty]}
    outcomes = collect(course, [str(p) for p in paths] + [str(z), str(empty)], log=lambda *a: None)
    ok = sorted(o.student for o in outcomes if o.ok)
    assert ok == ["dave", "erin", "frank", "henry"]
    msgs = {Path(o.source.split(":")[0]).name + (":" + o.source.split(":")[1] if ":" in o.source else ""): o.message
            for o in outcomes if not o.ok}
    text = "\n".join(msgs.values())
    assert "not valid notebook JSON" in msgs["broken_01_float_formats.ipynb"]
    assert "binary" in msgs["garbage_01_float_formats.ipynb"]
    assert "not a Jupyter notebook" in msgs["notnb_01_float_formats.ipynb"]
    assert "whose notebook" in msgs["01_float_formats.ipynb"]
    assert "not usable" in msgs["weird name!_01_float_formats.ipynb"]
    assert "not a notebook of this course" in msgs["gina_homework.ipynb"]
    assert "no .ipynb" in text
    for p, data in before.items():  # nothing a student handed in is modified or moved
        assert p.read_bytes() == data
    assert (course.path("submitted", "dave", A, f"{A}.ipynb")).exists()
    assert (course.path("submitted", "dave", A, "timestamp.txt")).exists()
    assert list(course.path("reports").glob("collect-*.txt"))


def test_collect_resubmission_archives_the_previous_one_and_limits_size(tmp_path):
    course = Course(root=tmp_path / "course")
    good = (EXAMPLES / f"bob_{A}.ipynb").read_bytes()
    p = _write(tmp_path / f"ivy_{A}.ipynb", good)
    collect(course, [str(p)], log=lambda *a: None)
    collect(course, [str(p)], log=lambda *a: None)
    assert len(list(course.path("archive", "ivy", A).iterdir())) == 1
    big = collect(course, [str(p)], max_bytes=1000, log=lambda *a: None)
    assert not big[0].ok and "limit" in big[0].message


def test_collect_student_id_from_metadata(tmp_path):
    nb = nbformat.read(str(EXAMPLES / f"alice_{A}.ipynb"), as_version=4)
    nb.metadata["effilab"] = {"student_id": "jo.smith"}
    p = tmp_path / "download.ipynb"
    nbformat.write(nb, str(p))
    out = collect(Course(root=tmp_path / "course"), [str(p)], log=lambda *a: None)
    assert out[0].ok and out[0].student == "jo.smith"


# ---------------------------------------------------------------------------------------------- autograde
@pytest.fixture(scope="module")
def graded(examples_course):
    """The example submissions of every assignment, collected and autograded once (tests/conftest.py)."""
    return examples_course


@pytest.mark.slow
def test_export_and_idempotent_regrade(graded, tmp_path):
    path = export(graded, str(tmp_path / "grades.csv"), assignment=A, log=lambda *a: None)
    rows = list(csv.DictReader(path.open()))
    by = {r["student"]: r for r in rows}
    assert all(r["state"] == "graded" for r in rows)
    assert set(by) == {"alice", "bob", "carol"}
    assert float(by["alice"]["score"]) == 11 and float(by["carol"]["score"]) == 0
    assert by["bob"]["decompose_check"] == "2"
    before = scores(graded, A)
    changed = regrade(graded, assignment=A, student="carol", log=lambda *a: None, execute=False)
    assert changed == {}
    assert scores(graded, A) == before


@pytest.mark.slow
def test_regrade_keeps_manual_grades_and_comments(graded):
    with graded.gradebook() as gb:
        g = gb.find_grade("round_to_bf16_check", A, A, "bob")
        g.manual_score = 2.5  # the instructor overrides one cell after reading bob's notebook
        c = gb.find_comment("round_to_bf16_solution", A, A, "bob")
        c.manual_comment = "ties: see the lecture notes on round-to-nearest-even"
        gb.db.commit()
    before = scores(graded, A)
    assert before[(A, "bob")]["cells"]["round_to_bf16_check"][0] == 2.5
    logged = []
    assert regrade(graded, assignment=A, student="bob", log=logged.append, execute=False) == {}
    assert "regrade: 0 submission(s) changed" in logged
    with graded.gradebook() as gb:
        g = gb.find_grade("round_to_bf16_check", A, A, "bob")
        assert (g.manual_score, g.auto_score) == (2.5, 2.0)  # the grader's own score is kept beside it
        c = gb.find_comment("round_to_bf16_solution", A, A, "bob")
        assert c.manual_comment.startswith("ties:")
        g.manual_score = None  # the shared course as it was
        gb.db.commit()
    assert scores(graded, A)[(A, "bob")]["cells"] == {**before[(A, "bob")]["cells"], "round_to_bf16_check": (2.0, 3.0)}


def test_a_verdict_records_the_machine_and_a_regrade_elsewhere_says_so(tmp_path):
    from grader import record
    from grader.verify import PartResult

    course = Course(root=tmp_path / "course")
    r = PartResult("stochastic_round_bf16_speed", "stochastic_round_bf16", "speed", 2.0, 2.0, "PASS")
    record.save_verdict(course, "01_float_formats", "alice", r)
    (saved,) = record.load_verdicts(course, "01_float_formats", "alice").values()
    assert saved.device == record.grading_device() != ""
    assert record.device_change(course, "01_float_formats", "alice") == ""  # same machine: nothing to say
    path = record.verdict_path(course, "01_float_formats", "alice")
    rows = json.loads(path.read_text())
    rows[0]["device"] = "NVIDIA T4 (a machine not this one)"
    path.write_text(json.dumps(rows))
    warn = record.device_change(course, "01_float_formats", "alice")
    assert "graded on NVIDIA T4 (a machine not this one)" in warn and record.grading_device() in warn and "speed" in warn
