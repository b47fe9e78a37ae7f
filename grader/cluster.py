"""Grading a large class on a Slurm cluster.

``python -m grader slurm --shards N`` writes an sbatch job array — task K runs ``autograde --shard K/N``
(grader/cli.py) — and submits it. Every task writes the one gradebook given by ``--db`` (PostgreSQL
on a cluster). A task that is preempted or killed is requeued and grades its shard again from where
it stopped: a submission already marked graded is skipped, a part whose verdict is recorded is not
run again (grader/record.py), and a submission is graded by one process at a time (its lock).

``python -m grader status`` counts, per assignment, the submissions graded, pending and failed, from
the gradebook and the course's own files: it needs no Slurm and waits for nothing.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .course import REPO, Course, ensure_released

JOB_NAME = "effilab-grade"
# the password of a PostgreSQL URL is never written into the script nor put on a command line (which
# `ps` shows to everyone on the node): the URL travels in the environment of the submitted job
# (readable to the job's user and the SlurmUser), where `python -m grader` takes --db's default
DB_ENV = "EFFILAB_DB_URL"


@dataclass
class SlurmJob:
    """What the job array asks of Slurm. ``gres=None`` asks for no GPU (CPU workers)."""
    shards: int
    partition: str | None = None
    time_limit: str = "04:00:00"
    account: str | None = None
    gres: str | None = "gpu:1"
    cpus_per_task: int = 4
    mem: str | None = None
    assignment: str | None = None
    execute: bool = True
    python: str = sys.executable
    repo: Path = REPO
    extra: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.shards < 1:
            raise SystemExit(f"slurm: --shards must be at least 1, not {self.shards}")
        if self.cpus_per_task < 1:
            raise SystemExit(f"slurm: --cpus-per-task must be at least 1, not {self.cpus_per_task}")
        if self.gres and self.gres.lower() in ("none", "no", "0", ""):
            self.gres = None
        for arg in self.extra:
            if not arg.startswith("--"):
                raise SystemExit(f"slurm: --sbatch-arg wants an sbatch option such as --qos=low, got {arg!r}")


# ---------------------------------------------------------------------------------------------
# the batch script
# ---------------------------------------------------------------------------------------------
def script_path(course: Course) -> Path:
    return course.path("slurm", "grade.sbatch")


def log_dir(course: Course) -> Path:
    """Where each task's output goes: ``<job>_<task>.out``, appended to by a requeued attempt."""
    return course.path("slurm", "logs")


def directives(course: Course, job: SlurmJob) -> list[str]:
    """The ``#SBATCH`` lines: an array of one task a shard, requeued when preempted, its output kept
    across attempts (``--open-mode=append``)."""
    opts = [f"--job-name={JOB_NAME}", f"--array=1-{job.shards}", f"--output={log_dir(course)}/%A_%a.out",
            "--open-mode=append", "--requeue", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={job.cpus_per_task}", f"--time={job.time_limit}"]
    if job.gres:
        opts.append(f"--gres={job.gres}")
    if job.partition:
        opts.append(f"--partition={job.partition}")
    if job.account:
        opts.append(f"--account={job.account}")
    if job.mem:
        opts.append(f"--mem={job.mem}")
    opts += job.extra
    return [f"#SBATCH {o}" for o in opts]


def grade_command(course: Course, job: SlurmJob) -> str:
    """The command each task runs: autograde of shard ``$SLURM_ARRAY_TASK_ID`` of N, into the gradebook
    that ``$EFFILAB_DB_URL`` names (``--db``'s default: the URL is on no command line)."""
    q = shlex.quote
    cmd = f'{q(job.python)} -m grader --course {q(str(course.root))} autograde ' \
          f'--shard "$SLURM_ARRAY_TASK_ID/{job.shards}"'
    if job.assignment:
        cmd += f" -a {q(job.assignment)}"
    if not job.execute:
        cmd += " --no-execute"
    return cmd


def batch_script(course: Course, job: SlurmJob) -> str:
    n = job.shards
    lines = ["#!/bin/bash", *directives(course, job),
             "# Written by `python -m grader slurm`: task K grades shard K of the class (autograde --shard K/N).",
             "# A preempted or requeued task starts again and grades only what is not recorded yet.",
             "set -euo pipefail",
             f': "${{{DB_ENV}:?the gradebook URL comes in the environment: submit with python -m grader slurm}}"',
             "export PYTHONUNBUFFERED=1  # the log shows each part as it is graded, and keeps it if the task is killed",
             f'echo "== effilab: shard $SLURM_ARRAY_TASK_ID/{n}, attempt $(( ${{SLURM_RESTART_COUNT:-0}} + 1 )),'
             f' job ${{SLURM_ARRAY_JOB_ID}}_$SLURM_ARRAY_TASK_ID on $(hostname) at $(date -u +%FT%TZ)"',
             f"cd {shlex.quote(str(job.repo))}",
             f"exec {grade_command(course, job)}", ""]
    return "\n".join(lines)


def write_script(course: Course, job: SlurmJob) -> Path:
    path = script_path(course)
    log_dir(course).mkdir(parents=True, exist_ok=True)
    path.write_text(batch_script(course, job))
    path.chmod(0o700)
    return path


# ---------------------------------------------------------------------------------------------
# before submitting
# ---------------------------------------------------------------------------------------------
def secret_warnings(course: Course) -> list[str]:
    """Create the course secret now, before N tasks race to (grader/verify.py), and say when others
    than the grader's user could read it."""
    from .verify import course_secret

    course_secret(course)
    p = course.path("secret_seed")
    if p.stat().st_mode & 0o077:
        return [f"the course secret {p} can be read by others (mode {p.stat().st_mode & 0o777:o}): it derives every "
                f"hidden input — chmod 600 {p} (and keep the course root closed: chmod -R go-rwx {course.root})"]
    return []


def db_warnings(course: Course, shards: int) -> list[str]:
    if shards > 1 and course.db_url.startswith("sqlite"):
        return [f"the gradebook is SQLite ({course.db_url.split('?')[0]}): {shards} tasks on several machines "
                "writing one SQLite file on shared storage (NFS, Lustre) can fail with 'database is locked' or "
                "corrupt it — use PostgreSQL: --db postgresql://USER@HOST/DB (one node is fine for a try)"]
    return []


def find_sbatch() -> str:
    path = shutil.which("sbatch")
    if not path:
        raise SystemExit("slurm: `sbatch` not found on PATH: run this on a login node of the cluster (module load "
                         "slurm?), or try it locally with a single-node cluster: sudo .ci/slurm.sh, then "
                         "export SLURM_CONF=/tmp/effilab-slurm/slurm.conf")
    return path


def targets(course: Course, assignment: str | None) -> list[tuple[str, str]]:
    assignments = [course.check_assignment(assignment)] if assignment else course.assignments()
    return [(a, s) for a in assignments for s in course.submitted_students(a)]


def prepare_gradebook(course: Course, work: list[tuple[str, str]], log=print) -> None:
    """What the tasks would otherwise race to create, made once here: each assignment generated into the
    gradebook, and each student (two tasks may grade one student's two notebooks at the same moment)."""
    for a in sorted({a for a, _ in work}):
        ensure_released(course, a, log)
    with course.gradebook() as gb:
        for s in sorted({s for _, s in work}):
            gb.update_or_create_student(s)


def shard_sizes(work: list[tuple[str, str]], shards: int) -> list[int]:
    from .cli import in_shard

    return [sum(in_shard(a, s, (k, shards)) for a, s in work) for k in range(1, shards + 1)]


# ---------------------------------------------------------------------------------------------
# submit
# ---------------------------------------------------------------------------------------------
def submit(course: Course, script: Path, sbatch: str) -> str:
    """sbatch the script; the job id. The gradebook URL goes in the job's environment only."""
    env = {**os.environ, DB_ENV: course.db_url}
    out = subprocess.run([sbatch, "--parsable", "--export=ALL", str(script)], env=env, capture_output=True,
                         text=True, cwd=str(course.root))
    if out.returncode:
        raise SystemExit(f"slurm: sbatch refused the job (exit {out.returncode}): {out.stderr.strip()[-800:]}\n"
                         f"(the script is {script}; check --partition, --account, --gres and --time against "
                         "`sinfo` and your cluster's documentation)")
    return out.stdout.strip().split(";")[0]


def slurm(course: Course, job: SlurmJob, dry_run: bool = False, log=print) -> str | None:
    """Write the job array's script and submit it (``dry_run``: only write and show it). The job id."""
    work = targets(course, job.assignment)
    if not work:
        raise SystemExit("slurm: nothing submitted (run `python -m grader collect PATH…` first)")
    for w in db_warnings(course, job.shards) + secret_warnings(course):
        log(f"slurm: warning: {w}")
    sbatch = None if dry_run else find_sbatch()
    prepare_gradebook(course, work, log)
    script = write_script(course, job)
    sizes = shard_sizes(work, job.shards)
    log(f"slurm: {len(work)} submission(s) in {job.shards} shard(s) of {min(sizes)}–{max(sizes)}; "
        f"script {script}, task logs in {log_dir(course)}")
    if dry_run:
        log(script.read_text())
        return None
    job_id = submit(course, script, sbatch)
    log(f"slurm: submitted job array {job_id} ({job.shards} task(s)); follow it with "
        f"`python -m grader --course {course.root} --db URL status` (and squeue -j {job_id})")
    return job_id


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------
STATES = ("graded", "pending", "failed")


def failed_report(course: Course, assignment: str, student: str) -> Path:
    """The report autograde writes when it stops on a submission (grader/cli.py)."""
    return course.path("reports", f"autograde-{assignment}-{student}.log")


def status_table(course: Course, assignment: str | None = None) -> dict[str, dict[str, int]]:
    """{assignment: {"submitted", "graded", "pending", "failed"}}: graded once every part is verified
    and recorded; failed when the grader stopped on it (its report is in reports/; the next run tries
    again); pending otherwise — not started yet, being graded, or in a task that was preempted."""
    from .cli import scores

    table = scores(course, assignment)
    out = {}
    for a in ([course.check_assignment(assignment)] if assignment else course.assignments()):
        students = course.submitted_students(a)
        if not students:
            continue
        row = dict.fromkeys(("submitted",) + STATES, 0)
        for s in students:
            row["submitted"] += 1
            if table.get((a, s), {}).get("state") == "graded":
                row["graded"] += 1
            elif failed_report(course, a, s).exists():
                row["failed"] += 1
            else:
                row["pending"] += 1
        out[a] = row
    return out


def print_status(course: Course, assignment: str | None = None, log=print) -> dict:
    table = status_table(course, assignment)
    if not table:
        log("status: nothing submitted")
        return table
    log(f"{'assignment':28} {'submitted':>9} {'graded':>7} {'pending':>8} {'failed':>7}")
    for a, row in table.items():
        log(f"{a:28} {row['submitted']:9d} {row['graded']:7d} {row['pending']:8d} {row['failed']:7d}")
    total = {k: sum(r[k] for r in table.values()) for k in ("submitted",) + STATES}
    log(f"{'total':28} {total['submitted']:9d} {total['graded']:7d} {total['pending']:8d} {total['failed']:7d}")
    if total["failed"]:
        log(f"status: the grader's report on each failed submission is in {course.path('reports')}; "
            "autograde (or the requeued task) tries them again")
    return table
