"""Notebooks run top to bottom on a CPU: the solutions (every correctness point earned, nothing on
stderr), and the student edition's release (exercises unsolved, checks failing helpfully)."""
import os
import subprocess
import sys

import nbformat
import pytest

from grader.course import REPO, Course
from grader.execute import execute
from effilab.grading.instructor import is_instructor_only
from grader.publish import leaks, publish, secret_lines

SOLUTIONS = sorted((REPO / "solutions").glob("[0-9][0-9]_*.ipynb"))


def _graded_max(nb_path):
    nb = nbformat.read(str(nb_path), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"]) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_notebook_runs_and_earns_every_correctness_point(path, tmp_path):
    ex = execute(path, cwd=str(tmp_path))
    assert not ex.errors, ex.errors
    graded = _graded_max(path)
    assert set(ex.points) == set(graded), "every graded cell must end with its points"
    stderr_in_graded = [g for g, _ in ex.stderr if g in graded]
    assert not stderr_in_graded, f"graded cells wrote to stderr (nbgrader would score them 0): {ex.stderr}"
    for gid, (pts, mx) in ex.points.items():
        if gid.endswith("_speed") or gid.endswith("_memory"):
            assert pts == 0 and "needs a CUDA GPU" in ex.outputs[gid]  # this machine has no GPU
        else:
            assert pts == mx, f"{gid}: {pts}/{mx}\n{ex.outputs[gid]}"


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "edition"
    publish(Course(), out, log=lambda *a: None)
    return out


def test_publish_leaves_out_solutions_and_hidden_tests(edition):
    assert not leaks(Course(), edition)
    assert secret_lines(Course()), "the leak scan must have something to look for"
    names = {p.relative_to(edition).parts[0] for p in edition.iterdir()}
    assert names >= {"notebooks", "effilab", "README.md", "pyproject.toml", "Makefile"}
    assert not names & {"solutions", "grader", "tests", ".ci"}
    assert ".venv/" in (edition / ".gitignore").read_text().split()
    assert "nbgrader" not in (edition / "environment.yml").read_text()  # the grader's stack is not the student's
    readme = (edition / "README.md").read_text()
    assert "test -d effilab-course ||" in readme and "Restart session" in readme  # a rerun of the cell works
    for p in edition.rglob("*.py"):
        assert not is_instructor_only(p), p


def test_student_readme_lists_every_notebook_of_the_edition(edition):
    """The student README's table names each notebook the edition ships, and no other."""
    rows = [ln.split("|")[1].strip() for ln in (edition / "README.md").read_text().splitlines()
            if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()]
    shipped = [p.name[:2] for p in sorted((edition / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    assert rows == shipped, f"README table rows {rows}, notebooks shipped {shipped}"

def test_leak_scan_catches_a_planted_solution(edition, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    line = next(iter(secret_lines(Course())))
    (planted / "helper.py").write_text(f"def f(x):\n    {line}\n")
    (planted / "ref.py").write_text("# effilab: instructor-only\nX = 1\n")
    problems = leaks(Course(), planted)
    assert any("helper.py" in p for p in problems) and any("instructor-only" in p for p in problems)


def test_student_edition_imports_on_its_own(edition):
    env = dict(os.environ, PYTHONPATH=str(edition))
    code = "import effilab, effilab.grading as g; print(effilab.__file__); print(sorted(g.REPRESENTED) if hasattr(g, 'REPRESENTED') else len(g.exercises()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(edition), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(edition) in out.stdout


@pytest.mark.slow
def test_student_edition_notebooks_run_unsolved(edition):
    for nb in sorted((edition / "notebooks").glob("*.ipynb")):
        env_before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(edition)
        try:
            ex = execute(nb, cwd=str(edition / "notebooks"))
        finally:
            if env_before is None:
                os.environ.pop("PYTHONPATH")
            else:
                os.environ["PYTHONPATH"] = env_before
        assert not ex.errors, f"{nb.name}: a cell raised in the untouched notebook: {ex.errors}"
        assert ex.points and all(p == 0 for p, _ in ex.points.values())
        checks = [t for g, t in ex.outputs.items() if g.endswith("_check")]
        assert checks and all("not filled in yet" in t or "not a function" in t for t in checks)
        assert all(t.count("not filled in yet") <= 1 for t in checks)  # an unsolved exercise says it once
        if nb.name.startswith("08_"):  # no roofline marker for a kernel that is not written yet
            assert "Not solved yet (no marker): your rms_norm" in ex.outputs.get("demo_final_roofline", "")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_graded_cells_reach_nothing_the_sandbox_forbids(path):
    """Setup and solution cells run again in the grading sandbox, where the grader, the specs and the
    instructor-only modules are trapped (grader/traps.py): a helper they import from there makes
    every setup line after it fail, so the helpers a notebook uses live in the public package."""
    from effilab.grading.nbcode import code_cells
    from grader.traps import ALWAYS

    nb = nbformat.read(str(path), as_version=4)
    for idx, src in code_cells(nb):
        for line in src.splitlines():
            words = line.replace(",", " ").split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                mod = words[1]
                bad = [a for a in ALWAYS if mod == a or mod.startswith(a + ".")]
                assert not bad, f"cell {idx} of {path.name}: {line.strip()!r} imports {bad[0]}, which the sandbox " \
                                "forbids; import the helper from the public package (effilab.memory, effilab.bench, …)"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_markdown_renders_and_points_only_at_what_students_have(path):
    """Code fences come in pairs (an odd one turns the rest of the cell into code), and the prose
    never sends a student to a path the student edition leaves out (benchmarks/, tests/)."""
    nb = nbformat.read(str(path), as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "markdown":
            continue
        fences = [ln for ln in c.source.splitlines() if ln.lstrip().startswith("```")]
        assert len(fences) % 2 == 0, f"cell {i} of {path.name}: {len(fences)} ``` fences; close each code block once"
        for gone in ("benchmarks/", "tests/"):
            assert f"`{gone}" not in c.source, f"cell {i} of {path.name} points at {gone}, absent from the student edition"


def test_publish_for_colab_adds_a_badge_and_an_install_cell_that_acts_only_in_colab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the cell would clone the course
    out = publish(Course(), tmp_path / "edition", log=lambda *a: None, colab="course-org/effilab-2027@fall")
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        first, install = nb.cells[0], nb.cells[1]
        assert first.cell_type == "markdown" and (
            f"colab.research.google.com/github/course-org/effilab-2027/blob/fall/notebooks/{path.name}" in first.source)
        assert install.cell_type == "code" and not install.metadata.get("nbgrader")
        assert nb.cells[2].metadata.get("nbgrader"), "the course's own cells follow unchanged"
        before = set(os.listdir(tmp_path))
        ns: dict = {}
        exec(compile(install.source, "<install>", "exec"), ns)  # not in Colab: nothing cloned, nothing installed
        assert set(os.listdir(tmp_path)) == before and "subprocess" not in ns
    assert not leaks(Course(), out)
    with pytest.raises(SystemExit, match="OWNER/REPO"):
        publish(Course(), tmp_path / "bad", log=lambda *a: None, colab='org/x"; import os #')
