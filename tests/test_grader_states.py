"""Honest states: a grading that did not finish shows "pending" / "not graded", never a 0 nothing
produced, and the next run completes it — each part exactly once."""
import csv

import pytest

from grader import record
from grader.cli import autograde, export, scores
from grader.collect import collect
from grader.course import REPO, Course

from conftest import TEST_COURSE_SECRET

A = "01_float_formats"


@pytest.mark.slow
def test_a_killed_grading_shows_not_graded_and_a_rerun_completes_each_part_once(tmp_path, monkeypatch):
    course = Course(root=tmp_path / "course")
    course.path("secret_seed").parent.mkdir(parents=True, exist_ok=True)
    course.path("secret_seed").write_text(str(TEST_COURSE_SECRET))
    assert all(o.ok for o in collect(course, [str(REPO / "grader" / "examples" / A / f"alice_{A}.ipynb")],
                                     log=lambda *a: None))
    saved, keep = [], record.save_verdict

    def killed_after_two(course_, a, s, r):  # the process dies between two parts (as with kill -9)
        keep(course_, a, s, r)
        saved.append(r.grade_id)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(record, "save_verdict", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        autograde(course, assignment=A, execute=False, log=lambda *a: None)
    row = scores(course, A)[(A, "alice")]
    assert row["state"] == "pending" and row["score"] is None
    # the gradebook shows only saved verdicts (it is written per part or per submission); the rest "not graded"
    shown = {g for g, (v, _) in row["cells"].items() if v is not None}
    assert shown <= set(saved)
    assert len([v for v, _ in row["cells"].values() if v is None]) == len(row["cells"]) - len(shown) >= len(row["cells"]) - 2
    (line,) = csv.DictReader(export(course, str(tmp_path / "g.csv"), assignment=A, log=lambda *a: None).open())
    assert line["state"] == "pending" and line["score"] == ""
    assert sum(v == "not graded" for v in line.values()) == len(row["cells"]) - len(shown)

    monkeypatch.setattr(record, "save_verdict", keep)
    log = []
    assert autograde(course, assignment=A, execute=False, log=log.append) == 0
    rerun = [ln.split(" / ")[2].split(":")[0] for ln in log
             if ln.startswith("verify:") and ("judged]" in ln or "decided without running" in ln)]
    assert sorted(rerun) == sorted(set(row["cells"]) - set(saved))  # the rest, each once, and nothing twice
    row = scores(course, A)[(A, "alice")]
    assert row["state"] == "graded"
    assert {g: v for g, (v, _) in row["cells"].items() if not g.endswith("_speed")} == \
        {g: m for g, (_, m) in row["cells"].items() if not g.endswith("_speed")}
