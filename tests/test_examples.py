"""Every notebook, by the same tests: a new notebook is picked up with no test file of its own.

* every exercise's reference solution (taken from solutions/, the single source) earns every
  correctness point on the public suite and on hidden suites of two stand-in course secrets,
  with ≥ 3 groups of ≥ 5 cases;
* every speed part, and every memory part that needs a GPU, awards nothing on a CPU and says why;
* the points in each check cell's metadata are the spec's points for that part;
* each classic mistake in ``grader/examples/<assignment>/bugs.json`` costs exactly the groups it
  lists (``lost``) and leaves the points it states, with a hint; bob's example notebook holds
  every mistake;
* (slow) the three example submissions, collected and autograded through nbgrader and the
  sandboxed out-of-notebook grading, score as stated: alice every point a CPU can give, bob what
  his mistakes leave (``cells``), carol nothing; the feedback shows bob's failures and no hidden
  test, the course secret or a hidden seed.
"""
import functools
import json

import nbformat
import pytest
import torch

from effilab.grading import check, exercises
from effilab.grading.core import key_for
from effilab.grading.nbcode import solution_namespace
from grader.cli import feedback, scores
from grader.course import REPO, Course
from grader.verify import grade_map

from conftest import example_students

ASSIGNMENTS = Course().assignments()
EXERCISES = [e for a in ASSIGNMENTS for e in exercises(a)]
HIDDEN_SECRETS = (12345,)  # one stand-in course secret; tests/test_nb*_checkers.py try more where it matters


def _bugs(a: str) -> list[dict]:
    p = REPO / "grader" / "examples" / a / "bugs.json"
    return json.loads(p.read_text()) if p.exists() else []


BUGS = [(a, i, b) for a in ASSIGNMENTS for i, b in enumerate(_bugs(a))]


@functools.lru_cache(maxsize=None)
def reference(a: str) -> dict:
    return solution_namespace(REPO / "solutions" / f"{a}.ipynb")


def failed(v) -> list[str]:
    return sorted(g.name for g in v.groups if not g.passed)


# ---------------------------------------------------------------------------------------------- checkers
@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.name)
def test_reference_gets_every_correctness_point(ex):
    fn = reference(ex.notebook)[ex.name]
    for suite, seed in [("public", 0)] + [("hidden", s) for s in HIDDEN_SECRETS]:
        v = check(ex.name, fn, suite=suite, seed=seed, verbose=False)
        assert v.passed and v.points == v.max_points, v.report()
        assert len(v.groups) >= 2 and all(g.n_cases >= 5 for g in v.groups), v.report()


def test_hidden_inputs_differ_from_the_public_ones_and_between_courses():
    ex = next(e for e in EXERCISES if e.name == "round_to_bf16")
    first = [ex.cases(suite, key_for(ex, suite, s))[0].cases[0].args[0] for suite, s in
             (("public", 0), ("hidden", 1), ("hidden", 2))]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    hidden = ex.cases("hidden", key_for(ex, "hidden", 1))
    assert all("#" in c.label for g in hidden for c in g.cases)  # a hidden label carries no seed


def needs_gpu(ex, part: str) -> bool:
    """Speed parts always; memory parts that read the CUDA allocator (the others meter saved tensors on a CPU)."""
    return part == "speed" or (part == "memory" and ex.memory_part(key_for(ex, "public")).meter == "cuda")


GPU_PARTS = [(e, part) for e in EXERCISES for part in e.points if part != "correctness" and needs_gpu(e, part)]


@pytest.mark.parametrize("ex,part", GPU_PARTS, ids=lambda x: x if isinstance(x, str) else x.name)
def test_gpu_parts_on_a_cpu_award_nothing_and_say_why(ex, part):
    if torch.cuda.is_available():
        pytest.skip("the CPU behaviour")
    v = check(ex.name, reference(ex.notebook)[ex.name], part, verbose=False)
    assert v.points == 0 and v.max_points > 0
    assert "needs a CUDA GPU — not awarded here" in v.report()


@pytest.mark.parametrize("a", ASSIGNMENTS)
def test_check_cells_carry_the_spec_points(a):
    nb = nbformat.read(str(REPO / "solutions" / f"{a}.ipynb"), as_version=4)
    by = {e.name: e for e in exercises(a)}
    gm = grade_map(nb)
    assert gm, f"{a} has no graded check cell"
    for gid, (name, part, pts) in gm.items():
        assert name in by, f"{gid} checks {name!r}, which is no exercise of {a}"
        assert by[name].points[part] == pts, f"{gid}: {pts} points in the notebook, {by[name].points[part]} in the spec"
    assert {(n, p) for n, p, _ in gm.values()} == {(e.name, p) for e in by.values() for p in e.points}


# ---------------------------------------------------------------------------------------------- bugs.json
@pytest.mark.parametrize("a,i,bug", BUGS, ids=[f"{a}-{i}-{b['exercise']}" for a, i, b in BUGS])
def test_each_classic_mistake_costs_exactly_its_groups(a, i, bug):
    assert {"cell", "old", "new", "why", "exercise", "lost", "points", "cells"} <= set(bug), sorted(bug)
    ns = solution_namespace(REPO / "solutions" / f"{a}.ipynb", {bug["cell"]: (bug["old"], bug["new"])})
    v = check(bug["exercise"], ns[bug["exercise"]], verbose=False)
    assert failed(v) == sorted(bug["lost"]), v.report()
    assert v.points == bug["points"]
    assert "hint:" in v.report() or not bug["lost"]


@pytest.mark.parametrize("a", [a for a in ASSIGNMENTS if _bugs(a)])
def test_bob_holds_every_mistake(a):
    nb = nbformat.read(str(REPO / "grader" / "examples" / a / f"bob_{a}.ipynb"), as_version=4)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb.cells}
    for b in _bugs(a):
        assert b["new"] in cells[b["cell"]] and b["old"] not in cells[b["cell"]], b["why"]


# ---------------------------------------------------------------------------------------------- autograde
def expected_scores(a: str) -> dict[str, dict[str, float]]:
    """What each example student must score on a CPU, cell by cell."""
    source = nbformat.read(str(REPO / "solutions" / f"{a}.ipynb"), as_version=4)
    by = {e.name: e for e in exercises(a)}
    alice = {}
    for gid, (name, part, pts) in grade_map(source).items():
        alice[gid] = 0.0 if part != "correctness" and needs_gpu(by[name], part) else pts
    bob = dict(alice)
    for b in _bugs(a):
        bob.update(b["cells"])
    return {k: v for k, v in {"alice": alice, "bob": bob, "carol": {g: 0.0 for g in alice}}.items()
            if k in example_students(a)}


@pytest.fixture(scope="module")
def graded(examples_course):
    return examples_course


@pytest.mark.slow
@pytest.mark.parametrize("a", ASSIGNMENTS)
def test_autograde_scores_the_examples(graded, a):
    s = scores(graded, a)
    for student, want in expected_scores(a).items():
        row = s[(a, student)]
        assert row["state"] == "graded", (student, row)
        got = {g: v[0] for g, v in row["cells"].items()}
        assert got == want, (student, got, want)


@pytest.mark.slow
@pytest.mark.parametrize("a", ASSIGNMENTS)
def test_feedback_shows_the_failures_and_no_hidden_test(graded, a):
    made = [p for p in feedback(graded, assignment=a, log=lambda *x: None)]
    assert len(made) == len(example_students(a))
    secret = (graded.root / "secret_seed").read_text().strip()
    for html in made:
        text = html.read_text()
        for leak in ["BEGIN HIDDEN TESTS", 'suite="hidden"', "suite=&quot;hidden&quot;", secret]:
            assert leak not in text, f"{html} shows {leak!r}"
        assert "Recorded score" in text  # the authoritative verdicts beside the self-checks
    bob = graded.path("feedback", "bob", a, f"{a}.html").read_text()
    for b in _bugs(a):
        for phrase in b.get("feedback", []):
            assert phrase in bob, (b["why"], phrase)
