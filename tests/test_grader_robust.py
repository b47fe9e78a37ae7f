"""Grading that survives: kill -9 in the middle of autograde, then a rerun (nothing lost, nothing
graded twice), and parallel workers giving the same grades as one."""
import os
import signal
import subprocess
import sys
import time

import pytest

from grader.cli import scores, worker_count
from grader.collect import collect
from grader.course import REPO, Course

from conftest import TEST_COURSE_SECRET  # noqa: E402

A = "01_float_formats"
EXAMPLES = REPO / "grader" / "examples" / A


def _grader(course, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "grader", "--course", str(course.root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)


def _cells(table):
    return {k: {g: v[0] for g, v in row["cells"].items()} for k, row in table.items()}


@pytest.mark.slow
def test_kill_minus_nine_then_resume_grades_everything_once(tmp_path):
    course = Course(root=tmp_path / "course")
    assert sum(o.ok for o in collect(course, [str(EXAMPLES)], log=lambda *a: None)) == 3
    proc = _grader(course, "autograde", "--no-execute")
    markers = [course.path("autograded", s, A, ".effilab-graded") for s in ("alice", "bob", "carol")]
    deadline = time.time() + 600
    while time.time() < deadline and not any(m.exists() for m in markers):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # as soon as one is done: the next one (seconds of work) is not
    proc.wait()
    done_before = {m: m.stat().st_mtime for m in markers if m.exists()}
    assert 0 < len(done_before) < 3, "the kill should land between two submissions"
    rerun = _grader(course, "autograde", "--no-execute")
    assert rerun.wait(timeout=900) == 0
    assert all(m.exists() for m in markers)
    for m, mtime in done_before.items():  # graded once: not graded again by the rerun
        assert m.stat().st_mtime == mtime
    s = scores(course)
    assert s[(A, "alice")]["score"] == 11 and s[(A, "carol")]["score"] == 0 and 0 < s[(A, "bob")]["score"] < 11


@pytest.mark.slow
def test_two_workers_give_the_same_grades_as_one(tmp_path, examples_course):
    """One worker grades notebook 01's examples as the two workers of the shared examples course did
    (same course secret, so the same hidden inputs)."""
    course = Course(root=tmp_path / "course1")
    course.path("secret_seed").parent.mkdir(parents=True, exist_ok=True)
    course.path("secret_seed").write_text(str(TEST_COURSE_SECRET))
    collect(course, [str(EXAMPLES)], log=lambda *a: None)
    proc = _grader(course, "autograde", "--workers", "1", "--no-execute")
    assert proc.wait(timeout=1800) == 0
    two = {k: v for k, v in _cells(scores(examples_course)).items() if k[0] == A}
    one = _cells(scores(course))
    assert two == one
    assert two[(A, "alice")]["decompose_check"] == 3.0 and set(two) == {(A, s) for s in ("alice", "bob", "carol")}


def test_workers_are_capped_at_one_per_gpu():
    assert worker_count(4, 2) == (2, worker_count(4, 2)[1]) and "one per GPU" in worker_count(4, 2)[1]
    assert worker_count(2, 2) == (2, None)
    assert worker_count(3, 0) == (3, None)  # CPU-only grading: as many as asked
    with pytest.raises(SystemExit, match="at least 1"):
        worker_count(0, 0)


def test_shards_split_a_class_exactly_once_and_stay_put():
    from grader.cli import in_shard, parse_shard

    subs = [(a, f"student{i:04d}") for a in ("01_float_formats", "08_operator_fusion") for i in range(600)]
    for n in (1, 3, 8):
        owners = [[k for k in range(1, n + 1) if in_shard(a, s, (k, n))] for a, s in subs]
        assert all(len(o) == 1 for o in owners)  # every submission in exactly one shard
        sizes = [sum(o == [k] for o in owners) for k in range(1, n + 1)]
        assert min(sizes) > 0.8 * len(subs) / n  # and the shards are about even
    # the same split on every machine: not Python's per-process salted hash()
    code = ("from grader.cli import in_shard; print(''.join(str(int(in_shard('01_float_formats', f's{i}', (2, 3))))"
            " for i in range(64)))")
    runs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed)).stdout for seed in ("1", "2")}
    assert runs == {"".join(str(int(in_shard("01_float_formats", f"s{i}", (2, 3)))) for i in range(64)) + "\n"}
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None
    for bad in ("0/3", "4/3", "3", "a/b", "1/0"):
        with pytest.raises(SystemExit, match="K/N"):
            parse_shard(bad)
