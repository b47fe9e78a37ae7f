"""``python -m grader``: the instructor's command line.

    python -m grader release                 solutions/ → notebooks/ (nbgrader generate_assignment)
    python -m grader collect PATH…           take .ipynb / .zip submissions into the course
    python -m grader autograde [-a A] [-s S] run every submission, scores into the gradebook
    python -m grader feedback  [-a A] [-s S] HTML feedback per student, hidden tests scrubbed
    python -m grader export --csv FILE       one row per student and assignment, a column per graded cell
    python -m grader regrade   [-a A] [-s S] autograde again, print which scores changed
    python -m grader scores    [-a A]        the gradebook as a table
    python -m grader publish OUT             write the student edition (no graded solutions)
    python -m grader examples                rebuild the example submissions of grader/examples/
    python -m grader slurm --shards N        grade on a Slurm cluster: a job array, one shard a task
    python -m grader status    [-a A]        per assignment: submissions graded, pending, failed
    python -m grader leaderboard OUT.html    the class's speed-ups per exercise and GPU, names only if opted in
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from .course import Course, ensure_released


def _course(args) -> Course:
    return Course(root=args.course, db_url=args.db)


# ---------------------------------------------------------------------------------------------
# release
# ---------------------------------------------------------------------------------------------
def release(course: Course, out_dir: Path | None = None, log=print) -> list[Path]:
    """Generate the student notebooks of every assignment into ``out_dir`` (default notebooks/)."""
    import nbformat

    out_dir = Path(out_dir) if out_dir else course.notebooks
    out_dir.mkdir(parents=True, exist_ok=True)
    api = course.api()
    written = []
    for a in course.assignments():
        result = api.generate_assignment(a, force=True, create=True)
        if not result["success"]:
            raise SystemExit(f"error: generate_assignment failed for {a}:\n{result.get('log', '')}\n"
                             f"{result.get('error', '')}")
        nb = nbformat.read(str(course.path("release", a, f"{a}.ipynb")), as_version=4)
        for cell in nb.cells:  # committed notebooks carry no outputs
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        dst = out_dir / f"{a}.ipynb"
        nbformat.write(nb, str(dst))
        written.append(dst)
        log(f"release: {a} → {dst}")
    return written


# ---------------------------------------------------------------------------------------------
# autograde, feedback, scores
# ---------------------------------------------------------------------------------------------
def _targets(course: Course, assignment: str | None, student: str | None) -> list[tuple[str, str]]:
    assignments = [course.check_assignment(assignment)] if assignment else course.assignments()
    out = []
    for a in assignments:
        students = course.submitted_students(a)
        if student:
            students = [s for s in students if s == student]
        out += [(a, s) for s in students]
    return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``K/N`` (1 ≤ K ≤ N) → (K, N); None for None; a clear error otherwise."""
    if spec is None:
        return None
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise SystemExit(f"error: --shard wants K/N with 1 ≤ K ≤ N (e.g. 2/8), got {spec!r}")
    return int(k), int(n)


def in_shard(assignment: str, student: str, shard: tuple[int, int] | None) -> bool:
    """Whether shard K of N grades this submission: a hash of (assignment, student), so the split
    needs no coordinator, is the same on every machine, and does not move when others resubmit."""
    if shard is None:
        return True
    import hashlib

    k, n = shard
    h = int.from_bytes(hashlib.sha256(f"{assignment}\0{student}".encode()).digest()[:8], "big")
    return h % n == k - 1


def scores(course: Course, assignment: str | None = None) -> dict[tuple[str, str], dict]:
    """{(assignment, student): {"score", "max_score", "state", "cells": {grade_id: (score, max)}}} from the
    gradebook. ``state`` is "graded" once every part was verified; until then "pending", and the
    cells not yet verified have the score None ("not graded") — never a 0 nothing produced."""
    from nbgrader.api import MissingEntry

    out = {}
    with course.gradebook() as gb:
        for a in ([assignment] if assignment else course.assignments()):
            try:
                asg = gb.find_assignment(a)
            except MissingEntry:
                continue
            for sub in asg.submissions:
                cells = {}
                for nb in sub.notebooks:
                    for g in nb.grades:  # (nbgrader's own Grade.score reads 0 where nothing was scored)
                        cells[g.name] = (g.manual_score if g.manual_score is not None else g.auto_score, g.max_score)
                done = course.path("autograded", sub.student.id, a, GRADED_MARKER).exists()
                state = "graded" if done and all(v[0] is not None for v in cells.values()) else "pending"
                total = sum(v[0] for v in cells.values() if v[0] is not None) if state == "graded" else None
                out[(a, sub.student.id)] = {"score": total, "max_score": sub.max_score, "state": state,
                                            "cells": cells}
    return out


GRADED_MARKER = ".effilab-graded"


def autograde(course: Course, assignment=None, student=None, force=False, verify=True, workers=1,
              log=print, slot: int = 0, execute: bool = True, shard: tuple[int, int] | None = None) -> int:
    """nbgrader's autograde (the notebook's own check cells: the student's self-check), then the
    authoritative verification outside the notebook kernel (:mod:`grader.verify`), whose scores the
    gradebook keeps. The in-kernel scores are cleared first: until a part is verified the gradebook
    says "not graded". Each verified part is recorded at once, and a submission counts as graded
    only once ``.effilab-graded`` is written, so a run killed half-way is finished by the next one
    and no part is graded twice."""
    from .sanitize import clean_text

    targets = [(a, s) for a, s in _targets(course, assignment, student) if in_shard(a, s, shard)]
    if not targets:
        log("autograde: nothing submitted" + (f" in shard {shard[0]}/{shard[1]}" if shard else "")
            + " (run `python -m grader collect PATH…` first)")
        return 0
    _require_sandbox()
    if workers > 1:
        return _autograde_parallel(course, targets, workers, force, verify, log, execute)
    api = course.api(execute=execute, slot=slot)
    failures = 0
    for a in sorted({a for a, _ in targets}):
        ensure_released(course, a, log)
    from .envcheck import changed, snapshot

    env = snapshot()
    for a, s in targets:
        try:
            ok = _grade_one(course, api, a, s, force=force, verify=verify, slot=slot, log=log)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one submission's failure is that submission's: the batch goes on
            import traceback

            ok = False
            log(f"autograde: {s} / {a}: FAILED — the grader stopped on this submission ({type(exc).__name__}: "
                f"{clean_text(str(exc), 300)}); it is not marked graded, the next run tries it again")
            _write_report(course, f"autograde-{a}-{s}.log", traceback.format_exc())
        failures += not ok
        moved = changed(env, snapshot())
        if moved:
            raise SystemExit(f"autograde: grading {s} / {a} changed the grading environment ({'; '.join(moved[:5])}): "
                             "stopped before the next submission — restore the environment (e.g. rebuild .venv) and "
                             "run autograde again")
    if shard:  # a task of a job array: its own tally, not the whole class's table in every task's log
        log(f"autograde: shard {shard[0]}/{shard[1]}: {len(targets) - failures} of {len(targets)} submission(s) graded"
            + (f", {failures} failed (their reports are in {course.path('reports')})" if failures else ""))
    else:
        print_scores(course, assignment, log)
    return failures


def _grade_one(course: Course, api, a: str, s: str, *, force: bool, verify: bool, slot: int, log) -> bool:
    """One submission, graded by one process at a time (its lock: grader/record.py ``claim``)."""
    from .record import claim

    with claim(course, a, s) as mine:
        if not mine:
            log(f"autograde: {s} / {a}: being graded by another process right now: skipped (it stays pending "
                "until that process records it)")
            return True
        return _grade_claimed(course, api, a, s, force=force, verify=verify, slot=slot, log=log)


def _grade_claimed(course: Course, api, a: str, s: str, *, force: bool, verify: bool, slot: int, log) -> bool:
    """nbgrader's run, then the authoritative verification, of one submission; False if nbgrader failed."""
    from .normalize import prepare_submission
    from .sanitize import cap_notebook_file, clean_results, clean_text
    from .record import load_verdicts, record, save_verdict
    from .verify import verify_notebook

    marker = course.path("autograded", s, a, GRADED_MARKER)
    if marker.exists() and not force:
        log(f"autograde: {s} / {a}: already graded (use regrade to grade again)")
        return True
    if force:
        _forget_verdicts(course, a, s)
    done = load_verdicts(course, a, s)
    log(f"autograde: {s} / {a} …" + (f" ({len(done)} part(s) verified by an earlier run)" if done else ""))
    if not done or not course.path("autograded", s, a).exists():
        prepare_submission(course, a, s, log)
        result = api.autograde(a, s, force=True, create=True)
        if not result["success"]:
            why = (result.get("error") or "").strip().splitlines()[-1:] or ["see the log"]
            log(f"autograde: {s} / {a}: FAILED — {clean_text(why[0], 500)}")
            _write_report(course, f"autograde-{a}-{s}.log", result.get("log", "") + "\n" + (result.get("error") or ""))
            return False
        cap_notebook_file(course.path("autograded", s, a, f"{a}.ipynb"))  # outputs capped before feedback
        if verify:
            _clear_auto_scores(course, a, s)
    if verify:
        def keep(r):
            save_verdict(course, a, s, r)
            _set_auto_score(course, a, s, r.grade_id, r.points)

        results = verify_notebook(course, a, course.path("submitted", s, a, f"{a}.ipynb"), log=log, done=done,
                                  on_result=keep, slot=slot)
        record(course, a, s, clean_results(results))
    marker.write_text("graded\n")
    return True


def _require_sandbox() -> None:
    """Student code runs only inside the jail (grader/jail.py); refuse to grade without one."""
    import os

    from . import jail

    if os.environ.get("EFFILAB_UNSANDBOXED") == "1":
        return
    ok, why = jail.available()
    if not ok:
        raise SystemExit(f"autograde: the sandbox for student code is not available here: {why}\n"
                         "(for development only, EFFILAB_UNSANDBOXED=1 grades without it — never grade a class so)")


def _forget_verdicts(course: Course, assignment: str, student: str) -> None:
    from .record import verdict_path

    p = verdict_path(course, assignment, student)
    if p.exists():
        p.unlink()


def _clear_auto_scores(course: Course, assignment: str, student: str) -> None:
    """The scores nbgrader took from the student's own kernel are the student's self-check (and the
    student's code could forge them): none stands in the gradebook until verified."""
    from nbgrader.api import MissingEntry

    with course.gradebook() as gb:
        try:
            nb = gb.find_submission_notebook(assignment, assignment, student)
        except MissingEntry:
            return
        for g in nb.grades:
            g.auto_score = None
        gb.db.commit()


def _set_auto_score(course: Course, assignment: str, student: str, grade_id: str, points: float) -> None:
    with course.gradebook() as gb:
        try:
            g = gb.find_grade(grade_id, assignment, assignment, student)
        except Exception:
            return
        g.auto_score = points
        gb.db.commit()


def worker_count(workers: int, n_gpus: int) -> tuple[int, str | None]:
    """How many grading workers to run: on a machine with GPUs at most one per GPU, so that no two
    speed checks share a GPU; without GPUs as many as asked for."""
    if workers < 1:
        raise SystemExit(f"autograde: --workers must be at least 1, not {workers}")
    if n_gpus and workers > n_gpus:
        return n_gpus, (f"{workers} workers asked for but {n_gpus} GPU(s) here: running {n_gpus}, one per GPU "
                        "(speed checks never share a GPU)")
    return workers, None


def _autograde_parallel(course: Course, targets, workers: int, force: bool, verify: bool, log,
                        execute: bool = True) -> int:
    """One grading process per submission, at most ``workers`` at a time, each pinned to its own GPU
    (``CUDA_VISIBLE_DEVICES``) when there are GPUs, so speed checks never share one."""
    import os
    import subprocess
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for a in sorted({a for a, _ in targets}):
        ensure_released(course, a, log)
    try:
        import torch

        n_gpus = torch.cuda.device_count()
    except Exception:
        n_gpus = 0
    workers, note = worker_count(workers, n_gpus)
    if note:
        log(f"autograde: {note}")
    free = list(range(workers))
    lock = threading.Lock()

    def one(target):
        a, s = target
        with lock:
            slot = free.pop()
        env = dict(os.environ)
        if n_gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        cmd = [sys.executable, "-m", "grader", "--course", str(course.root), "--db", course.db_url, "autograde",
               "-a", a, "-s", s, "--slot", str(slot)] + (["--force"] if force else []) + ([] if verify else ["--no-verify"]) \
            + ([] if execute else ["--no-execute"])
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        finally:
            with lock:
                free.append(slot)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        log(f"autograde: {s} / {a}: {status}" + (f" on GPU {slot}" if n_gpus else f" (worker {slot})"))
        if proc.returncode:
            _write_report(course, f"autograde-{a}-{s}.log", proc.stdout + proc.stderr)
        return proc.returncode

    with ThreadPoolExecutor(max_workers=workers) as pool:
        codes = list(pool.map(one, targets))
    print_scores(course, None, log)
    return sum(1 for c in codes if c)


def _fmt_score(v) -> str:
    return "not graded" if v is None else f"{v:g}"


def print_scores(course: Course, assignment=None, log=print) -> None:
    table = scores(course, assignment)
    if not table:
        log("scores: the gradebook is empty")
        return
    for (a, s), row in sorted(table.items()):
        cells = "  ".join(f"{k}={_fmt_score(v[0])}/{v[1]:g}" for k, v in sorted(row["cells"].items()))
        total = f"{row['score']:6.2f}" if row["state"] == "graded" else "pending"
        log(f"{a:20} {s:16} {total} / {row['max_score']:g}   {cells}")


def _write_report(course: Course, name: str, text: str) -> None:
    d = course.path("reports")
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text, errors="replace")  # a student's output may hold lone surrogates


def feedback(course: Course, assignment=None, student=None, log=print) -> list[Path]:
    api = course.api()
    made = []
    for a, s in _targets(course, assignment, student):
        if not course.path("autograded", s, a).exists():
            log(f"feedback: {s} / {a}: not autograded yet, skipped")
            continue
        result = api.generate_feedback(a, s, force=True)
        html = course.path("feedback", s, a, f"{a}.html")
        if result["success"] and html.exists():
            made.append(html)
            log(f"feedback: {s} / {a} → {html}")
        else:
            log(f"feedback: {s} / {a}: FAILED — {(result.get('error') or '').strip()[-300:]}")
    return made


def export(course: Course, csv_path: str, assignment=None, log=print) -> Path:
    """One row per student and assignment: the state ("graded" or "pending"), the total (empty while
    pending) and a column per graded cell ("not graded" where no verified score exists yet)."""
    table = scores(course, assignment)
    ids = sorted({gid for row in table.values() for gid in row["cells"]})
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["student", "assignment", "state", "score", "max_score"] + ids)
        for (a, s), row in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            w.writerow([s, a, row["state"], "" if row["score"] is None else f"{row['score']:g}", f"{row['max_score']:g}"]
                       + [_fmt_score(row["cells"][g][0]) if g in row["cells"] else "" for g in ids])
    log(f"export: {len(table)} rows → {path}")
    return path


def regrade(course: Course, assignment=None, student=None, log=print, execute: bool = True) -> dict:
    from .record import device_change

    before = scores(course, assignment)
    for a, s in sorted(before):
        warn = device_change(course, a, s) if not student or s == student else ""
        if warn:
            log(f"regrade: note: {warn}")
    autograde(course, assignment, student, force=True, log=lambda *_: None, execute=execute)
    after = scores(course, assignment)
    changed = {}
    for key in sorted(set(before) | set(after)):
        b, a_ = before.get(key), after.get(key)
        if student and key[1] != student:
            continue
        if b is None or a_ is None or b["score"] != a_["score"] or b["cells"] != a_["cells"]:
            cells = []
            for gid in sorted(set((b or {}).get("cells", {})) | set((a_ or {}).get("cells", {}))):
                x = (b or {}).get("cells", {}).get(gid, (None, None))[0]
                y = (a_ or {}).get("cells", {}).get(gid, (None, None))[0]
                if x != y:
                    cells.append(f"{gid}: {x} → {y}")
            changed[key] = cells
            log(f"regrade: {key[1]} / {key[0]}: {b and b['score']} → {a_ and a_['score']}  ({'; '.join(cells)})")
    log(f"regrade: {len(changed)} submission(s) changed")
    return changed


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def _quiet_libraries() -> None:
    """Keep the instructor's log to what the grader says: nbgrader's SQLAlchemy warnings about
    objects not in the session are harmless and repeat for every cell."""
    import warnings

    try:
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="jupyter_client")


def _slurm_parser(sub) -> None:
    q = sub.add_parser("slurm", help="grade on a Slurm cluster: an sbatch job array, one shard a task")
    q.add_argument("--shards", type=int, required=True, help="N: the array's tasks, each autograde --shard K/N")
    q.add_argument("-a", "--assignment", help="grade only this assignment")
    q.add_argument("--partition", help="sbatch --partition")
    q.add_argument("--account", help="sbatch --account")
    q.add_argument("--time", default="04:00:00", help="each task's time limit (sbatch --time; default 04:00:00)")
    q.add_argument("--gres", default="gpu:1",
                   help="each task's generic resources (default gpu:1; 'none' for CPU workers)")
    q.add_argument("--cpus-per-task", type=int, default=4, help="CPU cores per task (default 4)")
    q.add_argument("--mem", help="memory per task (sbatch --mem, e.g. 32G)")
    q.add_argument("--sbatch-arg", action="append", default=[], metavar="--OPT=VALUE",
                   help="any other sbatch option for every task (repeatable), e.g. --sbatch-arg=--qos=low")
    q.add_argument("--python", default=sys.executable,
                   help="the grading venv's python, on storage the nodes share (default: this one)")
    q.add_argument("--no-execute", action="store_true", help="as autograde --no-execute")
    q.add_argument("--dry-run", action="store_true", help="write and show the batch script, submit nothing")


def _slurm_job(args):
    from .cluster import SlurmJob

    return SlurmJob(shards=args.shards, partition=args.partition, time_limit=args.time, account=args.account,
                    gres=args.gres, cpus_per_task=args.cpus_per_task, mem=args.mem, assignment=args.assignment,
                    execute=not args.no_execute, python=args.python, extra=list(args.sbatch_arg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grader", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--course", help="course root (default grader/course)")
    p.add_argument("--db", default=os.environ.get("EFFILAB_DB_URL") or None,
                   help="gradebook SQLAlchemy URL (default $EFFILAB_DB_URL, else sqlite in the course root)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="generate notebooks/ from solutions/")
    r.add_argument("--out", help="write the release here instead of notebooks/")
    c = sub.add_parser("collect", help="take submissions in")
    c.add_argument("paths", nargs="+")
    c.add_argument("--student", help="student id, when the file names do not say")
    for name in ("autograde", "feedback", "regrade"):
        q = sub.add_parser(name)
        q.add_argument("-a", "--assignment")
        q.add_argument("-s", "--student")
        if name == "autograde":
            q.add_argument("--force", action="store_true", help="grade again what was already graded")
            q.add_argument("--workers", type=int, default=1,
                           help="grade N submissions at once, each on its own GPU when there are GPUs")
            q.add_argument("--no-verify", action="store_true",
                           help="keep the in-notebook scores (skips the authoritative out-of-kernel run)")
            q.add_argument("--no-execute", action="store_true",
                           help="skip nbgrader's run of the notebook (the grade comes from the sandboxed parts anyway)")
            q.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)  # set by --workers: the sandbox uid
            q.add_argument("--shard", metavar="K/N",
                           help="grade only shard K of N (a stable hash of assignment and student): N machines "
                                "sharing one gradebook (--course on shared storage, a PostgreSQL db) split a class")
    e = sub.add_parser("export")
    e.add_argument("--csv", required=True)
    e.add_argument("-a", "--assignment")
    s = sub.add_parser("scores")
    s.add_argument("-a", "--assignment")
    pb = sub.add_parser("publish", help="write the student edition")
    pb.add_argument("out")
    pb.add_argument("--force", action="store_true", help="replace OUT if it exists")
    pb.add_argument("--colab", metavar="OWNER/REPO[@BRANCH]",
                    help="the edition's GitHub repository: an Open-in-Colab badge and an install cell per notebook")
    sub.add_parser("examples", help="rebuild grader/examples/ from the release and solutions")
    _slurm_parser(sub)
    lb = sub.add_parser("leaderboard", help="an HTML page of the class's speed-ups (names only if opted in)")
    lb.add_argument("out")
    lb.add_argument("-a", "--assignment")
    st = sub.add_parser("status", help="per assignment: submissions graded, pending and failed (from the gradebook)")
    st.add_argument("-a", "--assignment")
    args = p.parse_args(argv)
    _quiet_libraries()
    course = _course(args)

    if args.cmd == "release":
        release(course, args.out)
    elif args.cmd == "collect":
        from .collect import collect

        outcomes = collect(course, args.paths, student=args.student)
        return 0 if any(o.ok for o in outcomes) or not outcomes else 1
    elif args.cmd == "autograde":
        return 1 if autograde(course, args.assignment, args.student, force=args.force, verify=not args.no_verify,
                                 workers=args.workers, slot=args.slot, execute=not args.no_execute,
                                 shard=parse_shard(args.shard)) else 0
    elif args.cmd == "feedback":
        feedback(course, args.assignment, args.student)
    elif args.cmd == "export":
        export(course, args.csv, args.assignment)
    elif args.cmd == "regrade":
        regrade(course, args.assignment, args.student)
    elif args.cmd == "scores":
        print_scores(course, args.assignment)
    elif args.cmd == "publish":
        from .publish import publish

        publish(course, Path(args.out), force=args.force, colab=args.colab)
    elif args.cmd == "slurm":
        from .cluster import slurm

        slurm(course, _slurm_job(args), dry_run=args.dry_run)
    elif args.cmd == "status":
        from .cluster import print_status

        print_status(course, args.assignment)
    elif args.cmd == "leaderboard":
        from .leaderboard import write

        print(f"leaderboard: {write(course, Path(args.out), args.assignment)}")
    elif args.cmd == "examples":
        from .examples import build_examples

        build_examples(course)
    return 0

