"""Grading on a Slurm cluster (grader/cluster.py): the job array's script, ``status``, and a real
single-node cluster grading the example submissions of two notebooks as a 3-shard array on CPU
workers, one task killed mid-run and requeued.

CI starts the cluster (.ci/slurm.sh, run by .ci/run) and sets EFFILAB_REQUIRE_SLURM=1: there a
cluster that is not up fails the test. Elsewhere the cluster test is skipped with the reason and the
commands that start one.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest

from grader.cli import in_shard, scores
from grader.cluster import SlurmJob, batch_script, db_warnings, find_sbatch, secret_warnings, status_table
from grader.collect import collect
from grader.course import REPO, Course
from grader.record import claim

from conftest import TEST_COURSE_SECRET, example_students

ASSIGNMENTS = ("01_float_formats", "04_gradient_accumulation")
SHARDS = 3
REQUIRED = os.environ.get("EFFILAB_REQUIRE_SLURM") == "1"
POSTGRES = os.environ.get("EFFILAB_TEST_POSTGRES_URL")
START = "sudo .ci/slurm.sh; export SLURM_CONF=/tmp/effilab-slurm/slurm.conf"


def _slurm_down() -> str:
    """Why no Slurm cluster can run jobs here; empty when one can."""
    if not shutil.which("sbatch"):
        return f"no sbatch on PATH (apt-get install -y slurm-wlm munge; {START})"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=120)
    if "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()[-1:] or ["no answer"]
        return f"slurmctld does not answer ({said[0][:160]}): {START}"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=120).stdout
    if not re.search(r"idle|mix|alloc", nodes):
        return f"no node takes jobs (sinfo: {nodes.strip()[:200] or 'none'}): {START}"
    return ""


def _course(root, db_url=None) -> Course:
    course = Course(root=root, db_url=db_url)
    course.path("secret_seed").parent.mkdir(parents=True, exist_ok=True)
    course.path("secret_seed").write_text(str(TEST_COURSE_SECRET))
    return course


# ---------------------------------------------------------------------------------------------
# without a cluster
# ---------------------------------------------------------------------------------------------
def test_the_batch_script_is_an_array_of_shards_that_requeues(tmp_path):
    course = Course(root=tmp_path / "c")
    gpu = batch_script(course, SlurmJob(shards=8, partition="gpu", account="cs101", time_limit="2:00:00",
                                        extra=["--qos=low"], python="/shared/venv/bin/python"))
    for line in ("--array=1-8", "--gres=gpu:1", "--partition=gpu", "--account=cs101", "--time=2:00:00",
                 "--requeue", "--open-mode=append", "--qos=low"):
        assert f"#SBATCH {line}" in gpu
    assert '--shard "$SLURM_ARRAY_TASK_ID/8"' in gpu and "/shared/venv/bin/python -m grader" in gpu
    assert "EFFILAB_DB_URL:?" in gpu and "--db" not in gpu  # the URL (and its password) comes in the environment
    cpu = batch_script(course, SlurmJob(shards=3, gres="none", assignment="01_float_formats", execute=False))
    assert "--gres" not in cpu and "--partition" not in cpu and "--account" not in cpu
    assert "-a 01_float_formats --no-execute" in cpu
    with pytest.raises(SystemExit, match="--qos=low"):
        SlurmJob(shards=2, extra=["qos=low"])
    with pytest.raises(SystemExit, match="at least 1"):
        SlurmJob(shards=0)


def test_a_one_shard_array_is_one_task_grading_the_whole_class(tmp_path):
    script = batch_script(Course(root=tmp_path), SlurmJob(shards=1))
    assert "#SBATCH --array=1-1" in script and '--shard "$SLURM_ARRAY_TASK_ID/1"' in script
    assert all(in_shard(a, f"s{i}", (1, 1)) for a in ASSIGNMENTS for i in range(200))


def test_sqlite_over_several_shards_is_warned_and_a_missing_sbatch_says_what_to_do(tmp_path, monkeypatch):
    assert "PostgreSQL" in db_warnings(Course(root=tmp_path), 4)[0]
    assert db_warnings(Course(root=tmp_path), 1) == []
    assert db_warnings(Course(root=tmp_path, db_url="postgresql://grader@db/course"), 4) == []
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="sbatch` not found.*slurm.sh"):
        find_sbatch()


def test_the_secret_is_made_before_the_tasks_and_a_readable_one_is_warned(tmp_path):
    course = Course(root=tmp_path / "c")
    assert secret_warnings(course) == [] and course.path("secret_seed").stat().st_mode & 0o777 == 0o600
    course.path("secret_seed").chmod(0o644)
    assert "chmod 600" in secret_warnings(course)[0]


def test_a_submission_is_graded_by_one_process_at_a_time(tmp_path):
    course = Course(root=tmp_path)
    with claim(course, "01_float_formats", "alice") as first:
        with claim(course, "01_float_formats", "alice") as second, claim(course, "04_x", "alice") as other:
            assert first and not second and other
    with claim(course, "01_float_formats", "alice") as again:  # released with its holder
        assert again


def test_status_counts_graded_pending_and_failed(tmp_path):
    course = Course(root=tmp_path)
    for s in ("alice", "bob", "carol"):
        course.path("submitted", s, ASSIGNMENTS[1]).mkdir(parents=True)
    course.path("reports").mkdir()
    course.path("reports", f"autograde-{ASSIGNMENTS[1]}-bob.log").write_text("stopped\n")
    assert status_table(course) == {ASSIGNMENTS[1]: {"submitted": 3, "graded": 0, "pending": 2, "failed": 1}}


# ---------------------------------------------------------------------------------------------
# on a cluster
# ---------------------------------------------------------------------------------------------
def _wait(cond, what: str, timeout: float = 1500, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _task_states(job: str) -> dict[int, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return {int(m["task"]): m["state"] for m in re.finditer(r"ArrayTaskId=(?P<task>\d+) .*?JobState=(?P<state>\S+)",
                                                             out)}


def _log(course, job: str, k: int) -> str:
    p = course.path("slurm", "logs", f"{job}_{k}.out")
    return p.read_text() if p.exists() else ""


def _start_now(course, job: str, k: int) -> None:
    """Wait for the requeued task ``k`` to run again; Slurm holds a requeued task back a while (its
    begin time): let it start at once."""
    def again():
        if _task_states(job).get(k) == "PENDING":
            subprocess.run(["scontrol", "update", f"jobid={job}_{k}", "starttime=now"], capture_output=True)
        return "attempt 2" in _log(course, job, k)
    _wait(again, f"requeued task {job}_{k} to run again", every=1)


def _marker(course, a, s):
    return course.path("autograded", s, a, ".effilab-graded")


def _check_status(course, work, history) -> None:
    """``status`` at any moment: every submission counted once, nothing failed, graded exactly the
    submissions whose grading is recorded, and never fewer than before."""
    before = sum(_marker(course, a, s).exists() for a, s in work)
    table = status_table(course)
    after = sum(_marker(course, a, s).exists() for a, s in work)
    for a in ASSIGNMENTS:
        row = table[a]
        assert row["submitted"] == len(example_students(a)) == row["graded"] + row["pending"] + row["failed"]
        assert row["failed"] == 0, row
    graded = sum(r["graded"] for r in table.values())
    assert before <= graded <= after and graded >= (history[-1] if history else 0)
    history.append(graded)


def _judged(course) -> Counter:
    """How many times each part was judged, over every task's log and every attempt."""
    seen = Counter()
    for log in course.path("slurm", "logs").glob("*.out"):
        for m in re.finditer(r"^verify: (\S+) / (\S+) / (\S+): .*(?:judged\]|decided without running)",
                             log.read_text(), re.M):
            seen[m.groups()] += 1
    return seen


def _cells(table):
    return {k: {g: v[0] for g, v in row["cells"].items()} for k, row in table.items()}


def _grader(course, *args, timeout=1500):
    out = subprocess.run([sys.executable, "-m", "grader", "--course", str(course.root), "--db", course.db_url,
                          *args], capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _fresh_db():
    """PostgreSQL when the test has a server (CI), else SQLite: one node shares its files safely."""
    if not POSTGRES:
        return None
    import sqlalchemy

    with sqlalchemy.create_engine(POSTGRES).begin() as conn:
        conn.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public;"))
    return POSTGRES


# decided at collection, before the shared example course (a session fixture) would be graded for nothing
DOWN = _slurm_down()


@pytest.mark.slow
@pytest.mark.skipif(bool(DOWN) and not REQUIRED, reason=f"no Slurm cluster: {DOWN}")
def test_a_job_array_with_a_requeued_task_grades_as_one_process_and_nothing_twice(tmp_path, examples_course):
    assert not DOWN, f"EFFILAB_REQUIRE_SLURM=1 (CI) but {DOWN}"
    course = _course(tmp_path / "course", _fresh_db())
    sources = [str(REPO / "grader" / "examples" / a / f"{s}_{a}.ipynb") for a in ASSIGNMENTS
               for s in example_students(a)]
    assert all(o.ok for o in collect(course, sources, log=lambda *a: None))
    work = [(a, s) for a in ASSIGNMENTS for s in example_students(a)]
    shards = {k: [t for t in work if in_shard(*t, (k, SHARDS))] for k in range(1, SHARDS + 1)}
    victim = max(shards, key=lambda k: len(shards[k]))  # 5 submissions in 3 shards: one has two or more
    first, last = shards[victim][0], shards[victim][-1]
    history = []
    _check_status(course, work, history)
    assert history == [0]

    out = _grader(course, "slurm", "--shards", str(SHARDS), "--gres", "none", "--cpus-per-task", "1",
                  "--time", "1:00:00", "--no-execute")
    job = re.search(r"submitted job array (\d+)", out)[1]
    task = f"{job}_{victim}"

    # kill the victim once it has graded its first submission and (very likely) not yet its last
    def first_graded():
        if _marker(course, *first).exists():
            return True
        state = _task_states(job).get(victim, "")
        assert state in ("", "PENDING", "RUNNING", "CONFIGURING"), \
            f"task {task} ended ({state}) before grading {first}: " + _log(course, job, victim)[-3000:]
    _wait(first_graded, f"task {task} to grade {first}")
    _wait(lambda: subprocess.run(["scontrol", "requeue", task], capture_output=True).returncode == 0,
          f"scontrol requeue {task} to be accepted", every=1)  # (refused while a task is in a transient state)
    kept = {t: _marker(course, *t).stat().st_mtime for t in work if _marker(course, *t).exists()}
    _check_status(course, work, history)
    _start_now(course, job, victim)

    def finished():
        _check_status(course, work, history)
        states = _task_states(job)
        return len(states) == SHARDS and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
                                             for s in states.values()) and states
    states = _wait(finished, f"job array {job} to finish", every=5)
    logs = {k: _log(course, job, k) for k in shards}
    assert set(states.values()) == {"COMPLETED"}, {k: logs[k][-2000:] for k in logs}
    assert "attempt 2" in logs[victim], logs[victim][-2000:]  # it was requeued and ran again
    for k, mine in shards.items():  # each task's last attempt ends with its shard's tally
        if mine:
            assert f"autograde: shard {k}/{SHARDS}: {len(mine)} of {len(mine)} submission(s) graded" in logs[k]

    _check_status(course, work, history)
    assert history[-1] == len(work)
    for t, mtime in kept.items():  # graded before the kill: not graded again
        assert _marker(course, *t).stat().st_mtime == mtime
    judged = _judged(course)
    assert judged and max(judged.values()) == 1, [k for k, n in judged.items() if n > 1]  # no part judged twice
    one = {k: v for k, v in _cells(scores(examples_course)).items() if k[0] in ASSIGNMENTS}
    assert _cells(scores(course)) == one  # the same grades as one process
    assert set(one) == set(work)
    shown = _grader(course, "status")
    assert re.search(r"^total\s+5\s+5\s+0\s+0$", shown, re.M), shown
    print(f"slurm: task {task} requeued {'mid-run' if last not in kept else 'after it had finished'}")
