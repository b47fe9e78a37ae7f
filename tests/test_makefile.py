"""The README's two commands: what `make lab` runs as root and as a user, and the instructor's
`make grader` (dry runs: nothing is installed)."""
import shutil
import subprocess

import pytest

from grader.course import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry(*args) -> str:
    return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_lab_allows_root_only_for_root():
    assert "jupyter lab notebooks/ --allow-root" in _dry("lab", "USER_ID=0")
    as_user = _dry("lab", "USER_ID=1000")
    assert "jupyter lab notebooks/" in as_user and "--allow-root" not in as_user


def test_grader_target_runs_the_grader_in_the_venv():
    assert ".venv/bin/python -m grader scores" in _dry("grader", "ARGS=scores")


def test_student_edition_lab_allows_root_only_for_root_and_its_readme_says_so():
    student = REPO / "grader" / "student"
    dry = lambda *a: subprocess.run(["make", "-n", "-f", str(student / "Makefile"), *a], cwd=student,
                                    capture_output=True, text=True, check=True).stdout
    assert "jupyter lab notebooks/ --allow-root" in dry("lab", "USER_ID=0")
    assert "--allow-root" not in dry("lab", "USER_ID=1000")
    assert "--allow-root" in (student / "README.md").read_text()  # for the by-hand route
