"""Notebook 08 through the instructor pipeline: the three example submissions collected and
autograded with nbgrader on this machine's CPU; scores and feedback as expected."""
import json

import pytest

from grader.cli import feedback, scores
from grader.course import REPO

from conftest import TEST_COURSE_SECRET

A = "08_operator_fusion"
EXAMPLES = REPO / "grader" / "examples" / A
HIDDEN_SEEDS = ["60493", "27119", "83401", "44927", "71233"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_graded):
    return make_graded(tmp_path_factory.mktemp("course08"), [A])


def test_bugs_apply_to_the_solution():
    bugs = json.loads((EXAMPLES / "bugs.json").read_text())
    bob = (EXAMPLES / f"bob_{A}.ipynb").read_text()
    assert len(bugs) >= 3
    for b in bugs:
        assert json.dumps(b["new"])[1:-1] in bob


@pytest.mark.slow
def test_autograde_scores_the_examples(graded):
    s = scores(graded)
    alice, bob, carol = (s[(A, n)] for n in ("alice", "bob", "carol"))
    for gid, (score, mx) in alice["cells"].items():
        if gid.endswith(("_speed", "_memory")):
            assert score == 0, gid  # CPU: these need a GPU
        else:
            assert score == mx, (gid, alice)
    assert bob["cells"]["rms_norm_check"][0] == 2.25
    assert bob["cells"]["cross_entropy_check"][0] == 2.25
    assert bob["cells"]["flash_attention_check"][0] == 0.75
    assert bob["cells"]["swiglu_check"][0] == 2 and bob["cells"]["swiglu_backward_check"][0] == 1
    assert 0 < bob["score"] < alice["score"] == 12
    assert carol["score"] == 0


@pytest.mark.slow
def test_feedback_explains_failures_without_hidden_tests(graded):
    made = [p for p in feedback(graded, assignment=A, log=lambda *a: None) if A in str(p)]
    assert len(made) == 3
    secrets = ["BEGIN HIDDEN TESTS", 'suite="hidden"', "suite=&quot;hidden&quot;"] + HIDDEN_SEEDS + [str(TEST_COURSE_SECRET)]
    for html in made:
        text = html.read_text()
        for sec in secrets:
            assert sec not in text, f"{html} shows hidden test source ({sec})"
    bob = graded.path("feedback", "bob", A, f"{A}.html").read_text()
    assert "under the root" in bob and "-100" in bob and "needs a CUDA GPU" in bob
