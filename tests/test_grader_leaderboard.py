"""The speed leaderboard: ratios from the verdict files, one table per exercise and GPU class, names
only for students who opted in."""
import math

import pytest

from grader.course import Course
from grader.leaderboard import OPT_IN, entries, render, write
from grader.record import save_verdict
from grader.verify import PartResult

A = "08_operator_fusion"


def _speed(student_ratio, gpu="H200", points=2.0, exercise="rms_norm"):
    return PartResult(f"{exercise}_speed", exercise, "speed", points, 2.0, "report",
                      {"ratio": student_ratio, "gpu_class": gpu}, device=f"NVIDIA {gpu}")


@pytest.fixture()
def course(tmp_path):
    c = Course(root=tmp_path / "course")
    for student, results in {
        "ann": [_speed(3.1), PartResult("rms_norm_check", "rms_norm", "correctness", 3, 3, "ok")],
        "ben": [_speed(4.2)],
        "cat": [_speed(1.4, points=0.0)],
        "dan": [_speed(float("nan"), points=0.0)],  # not timed: wrong on the timed input
        "eve": [_speed(2.0, gpu="T4")],
        "<i>x": [_speed(5.0, gpu="T4")],
    }.items():
        c.path("submitted", student, A).mkdir(parents=True)
        for r in results:
            save_verdict(c, A, student, r)
    return c


def test_ranked_per_gpu_class_and_only_timed_parts(course):
    got = entries(course, A)
    assert set(got) == {("rms_norm", "H200"), ("rms_norm", "T4")}
    assert [e.student for e in got[("rms_norm", "H200")]] == ["ben", "ann", "cat"]  # dan was not timed
    assert [e.student for e in got[("rms_norm", "T4")]] == ["<i>x", "eve"]
    assert all(not math.isnan(e.ratio) for rows in got.values() for e in rows)


def test_names_only_for_students_who_opted_in(course):
    course.path(OPT_IN).write_text("ann  # agreed by mail\n\n<i>x\n")
    page = render(course, [A])
    assert "ann" in page and "ben" not in page and "cat" not in page and "eve" not in page
    assert "student 1" in page and "student 3" in page  # ben first, cat third, numbered by rank
    assert "<i>x" not in page and "&lt;i&gt;x" in page  # escaped, never markup


def test_write_checks_the_assignment_and_says_when_nothing_was_timed(tmp_path):
    c = Course(root=tmp_path / "empty")
    out = write(c, tmp_path / "lb.html", A)
    assert "No speed part has been timed yet" in out.read_text()
    with pytest.raises(SystemExit, match="no assignment"):
        write(c, tmp_path / "lb.html", "99_nothing")
