"""Notebooks 03 and 04 through the instructor pipeline: the example submissions collected and
autograded in a temporary course — alice earns every correctness point, bob loses exactly the
points of his bugs (bugs.json), carol nothing — and the feedback shows no hidden test."""
import json

import pytest

from grader.cli import feedback, scores
from grader.course import REPO

from conftest import TEST_COURSE_SECRET

A3, A4 = "03_gradient_checkpointing", "04_gradient_accumulation"
EXAMPLES = {a: REPO / "grader" / "examples" / a for a in (A3, A4)}
HIDDEN_SEEDS = ["60821", "27449", "83117", "41893", "71329", "35177"]


@pytest.fixture(scope="module")
def graded(tmp_path_factory, make_graded):
    return make_graded(tmp_path_factory.mktemp("course"), [A3, A4])


def test_bugs_are_the_classic_mistakes():
    why3 = " ".join(b["why"] for b in json.loads((EXAMPLES[A3] / "bugs.json").read_text()))
    why4 = " ".join(b["why"] for b in json.loads((EXAMPLES[A4] / "bugs.json").read_text()))
    assert "RNG" in why3 and "mean" in why4


@pytest.mark.slow
def test_autograde_scores_the_examples_03(graded):
    s = scores(graded, A3)
    alice, bob, carol = (s[(A3, n)] for n in ("alice", "bob", "carol"))
    for gid, (score, mx) in alice["cells"].items():
        assert score == (0 if gid.endswith("_speed") else mx), (gid, alice)  # CPU: speed needs a GPU
    assert bob["cells"]["checkpoint_check"][0] == 3.0                 # RNG not replayed: the dropout group
    assert bob["cells"]["checkpointed_blocks_memory_check"][0] == 0   # segments not checkpointed
    assert bob["cells"]["checkpointed_blocks_check"][0] == 2.0
    assert bob["cells"]["segments_for_check"][0] == 1.0 and bob["cells"]["best_n_segments_check"][0] == 1.0
    assert bob["score"] == alice["score"] - 3
    assert carol["score"] == 0


@pytest.mark.slow
def test_autograde_scores_the_examples_04(graded):
    s = scores(graded, A4)
    alice, bob, carol = (s[(A4, n)] for n in ("alice", "bob", "carol"))
    assert all(score == mx for score, mx in alice["cells"].values()), alice
    assert bob["cells"]["accumulate_gradients_check"][0] == 1.5       # mean of means: the uneven groups
    assert bob["cells"]["accumulate_gradients_memory_check"][0] == 0  # gated on correct gradients
    assert bob["cells"]["scaled_lr_check"][0] == 0.5                  # sqrt precedence
    assert carol["score"] == 0


@pytest.mark.slow
def test_feedback_explains_failures_without_hidden_tests(graded):
    made = [p for a in (A3, A4) for p in feedback(graded, assignment=a, log=lambda *a: None)]
    assert len(made) == 6
    for html in made:
        text = html.read_text()
        for secret in ["BEGIN HIDDEN TESTS", 'suite="hidden"', "suite=&quot;hidden&quot;", *HIDDEN_SEEDS, str(TEST_COURSE_SECRET)]:
            assert secret not in text, f"{html} shows hidden test source ({secret})"
    bob3 = graded.path("feedback", "bob", A3, f"{A3}.html").read_text()
    bob4 = graded.path("feedback", "bob", A4, f"{A4}.html").read_text()
    assert "get_rng_state" in bob3 and "needs a CUDA GPU" in bob3
    assert "total token count" in bob4 or "total_tokens" in bob4
