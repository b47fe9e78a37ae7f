"""Notebook 02 through the instructor pipeline: the three example submissions collected and
autograded (nbgrader, then the authoritative out-of-kernel verification) on this machine's CPU;
scores and feedback as expected, no hidden-test source in the feedback."""
import json

import nbformat
import pytest

from grader.cli import feedback, scores
from grader.course import REPO

from conftest import TEST_COURSE_SECRET

A = "02_mixed_precision"
EXAMPLES = REPO / "grader" / "examples" / A
HIDDEN_SEEDS = ["60917", "27143", "81239"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_graded):
    return make_graded(tmp_path_factory.mktemp("course02"), [A])


def test_bugs_apply_to_the_solution():
    bugs = json.loads((EXAMPLES / "bugs.json").read_text())
    nb = nbformat.read(str(EXAMPLES / f"bob_{A}.ipynb"), as_version=4)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nb.cells}
    assert len(bugs) == 3
    for b in bugs:
        assert b["new"] in cells[b["cell"]] and b["old"] not in cells[b["cell"]]


@pytest.mark.slow
def test_autograde_scores_the_examples(graded):
    s = scores(graded)
    alice, bob, carol = (s[(A, n)] for n in ("alice", "bob", "carol"))
    for gid, (score, mx) in alice["cells"].items():
        if gid.endswith(("_speed", "_memory")):
            assert score == 0, gid  # CPU: the speed part needs a GPU
        else:
            assert score == mx, (gid, alice)
    assert alice["score"] == 8
    assert bob["cells"]["DynamicLossScaler_check"][0] == 3.2        # growth count not reset: 1 of 5 groups
    assert bob["cells"]["MixedPrecisionTrainer_check"][0] == 1.0    # clipping before unscaling: 2 of 3 groups
    assert bob["cells"]["bf16_train_step_check"][0] == 0            # pure bf16 weights, no master copy
    assert bob["cells"]["bf16_train_step_speed"][0] == 0
    assert 0 < bob["score"] < alice["score"]
    assert carol["score"] == 0


@pytest.mark.slow
def test_feedback_explains_failures_without_hidden_tests(graded):
    made = [p for p in feedback(graded, assignment=A, log=lambda *a: None) if A in str(p)]
    assert len(made) == 3
    secrets = ["BEGIN HIDDEN TESTS", 'suite="hidden"', "suite=&quot;hidden&quot;"] + [
        f"seed{eq}{n}" for n in HIDDEN_SEEDS + [str(TEST_COURSE_SECRET)] for eq in ("=", "</span><span class=\"o\">=</span><span class=\"mi\">")]
    for html in made:
        text = html.read_text()
        for sec in secrets:
            assert sec not in text, f"{html} shows hidden test source ({sec})"
    bob = graded.path("feedback", "bob", A, f"{A}.html").read_text()
    assert "growth count restarts" in bob and "BEFORE clip_grad_norm_" in bob and "needs a CUDA GPU" in bob
    assert "Recorded score" in bob
