"""Shared pytest setup.

* ``effilab`` is imported first so Triton runs in interpreter mode on machines without a GPU.
* Tests marked ``gpu`` are skipped, with a reason that says so, when no CUDA device is present;
  they are run on the GPU machine (see benchmarks/README.md) before an issue is closed.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
# pytest-xdist workers (CI runs `-n 2`): each grades in a uid range of its own (grader/jail.py)
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and _worker[2:].isdigit():
    os.environ["EFFILAB_SLOT_BASE"] = str(1000 * (1 + int(_worker[2:])))

import effilab  # noqa: E402,F401  (must precede any triton import)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the groups into node id suffixes
def pytest_collection_modifyitems(config, items):
    # xdist (CI: -n 2 --dist loadgroup) keeps each group on one worker: a test file is a group (its module
    # fixtures are built once), and every test of the shared examples course is one group across files
    for item in items:
        shared = "examples_course" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("examples_course" if shared else item.nodeid.split("::")[0]))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# A fixed course secret for the autograde round trips: the hidden inputs are then the same on every
# run, so a score asserted here cannot flip with a fresh random secret. tests/test_nb*_checkers.py
# and tests/test_grading_core.py cover the hidden suites across several secrets.
TEST_COURSE_SECRET = 1_234_567


# nbgrader's own run of each notebook (in the jail) is exercised on notebook 01; for the others the
# round trips skip it (`autograde --no-execute`): the grade never depends on it, and executing every
# example notebook on a 2-core CPU would double the suite's time.
EXECUTED = ("01_float_formats",)
# carol (the untouched release: every part fails fast) is graded where nbgrader runs too; elsewhere an
# unsolved notebook tells nothing that notebook 01's does not.
WITH_CAROL = EXECUTED


def example_students(assignment: str) -> tuple[str, ...]:
    return ("alice", "bob", "carol") if assignment in WITH_CAROL else ("alice", "bob")


def graded_examples(root, assignments, secret: int = TEST_COURSE_SECRET, sources=None, expect=None, **autograde_kw):
    """A temporary course with the example submissions of ``assignments`` (alice, bob, and carol where
    :data:`WITH_CAROL` says) — or the notebooks under ``sources`` — collected and autograded."""
    from grader.cli import autograde
    from grader.collect import collect
    from grader.course import REPO, Course

    course = Course(root=root)
    secret_file = course.path("secret_seed")
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    secret_file.write_text(str(secret))
    if sources is None:
        sources = [str(REPO / "grader" / "examples" / a / f"{s}_{a}.ipynb") for a in assignments
                   for s in example_students(a)]
        expect = sum(len(example_students(a)) for a in assignments)
    outcomes = collect(course, sources, log=lambda *a: None)
    expect = 3 * len(assignments) if expect is None else expect
    assert sum(o.ok for o in outcomes) == expect, [o.message for o in outcomes if not o.ok]
    for a in assignments:
        # two grading workers, as `autograde --workers 2` runs them: the example course is graded
        # twice as fast on a 2-core CI machine (tests/test_grader_robust.py compares with one worker)
        kw = {"execute": a in EXECUTED, "workers": 2, **autograde_kw}
        assert autograde(course, assignment=a, log=lambda *a: None, **kw) == 0
    return course


@pytest.fixture(scope="session")
def make_graded():
    return graded_examples


@pytest.fixture(scope="session")
def examples_course(tmp_path_factory):
    """Every assignment's example submissions (alice, bob, carol) collected and autograded once, in
    one temporary course shared by the tests that only read it."""
    from grader.course import Course

    return graded_examples(tmp_path_factory.mktemp("examples"), Course().assignments())
