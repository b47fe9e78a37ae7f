"""Grading into a real PostgreSQL server (nbgrader takes any SQLAlchemy URL through --db).

CI installs PostgreSQL from Debian's packages, starts it and sets EFFILAB_TEST_POSTGRES_URL
(see .ci/run). Elsewhere the test is skipped unless that variable points at a server; on CI a
missing server is a failure, not a skip.
"""
import os
import subprocess
import sys

import pytest

from grader.cli import scores
from grader.collect import collect
from grader.course import REPO, Course

URL = os.environ.get("EFFILAB_TEST_POSTGRES_URL")
A = "01_float_formats"


@pytest.mark.slow
def test_autograde_with_postgresql(tmp_path):
    if not URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide EFFILAB_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
        pytest.skip("no PostgreSQL server: set EFFILAB_TEST_POSTGRES_URL=postgresql://user@host/db")
    import sqlalchemy

    engine = sqlalchemy.create_engine(URL)
    with engine.begin() as conn:  # a clean database for this run
        conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    course = Course(root=tmp_path / "course", db_url=URL)
    example = REPO / "grader" / "examples" / A / f"carol_{A}.ipynb"
    assert collect(course, [str(example)], log=lambda *a: None)[0].ok
    out = subprocess.run([sys.executable, "-m", "grader", "--course", str(course.root), "--db", URL, "autograde",
                          "-s", "carol"], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = scores(course)
    assert table[(A, "carol")]["score"] == 0 and table[(A, "carol")]["max_score"] == 13
    with engine.connect() as conn:  # the grades live in PostgreSQL, not in a file
        n = conn.execute(sqlalchemy.text("select count(*) from grade")).scalar()
    assert n == len(table[(A, "carol")]["cells"])
    assert not (course.root / "gradebook.db").exists()
