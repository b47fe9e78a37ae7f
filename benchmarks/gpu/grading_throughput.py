"""Seconds per student notebook of the authoritative grading (out of the notebook kernel).

    python benchmarks/gpu/grading_throughput.py [--students alice bob] [--assignments A …] [--out DIR]

Grades the example submissions of every assignment with ``grader.verify.verify_notebook`` — all
parts: correctness, speed and memory — in the sandbox (grader/jail.py; ``EFFILAB_BWRAP`` names the
bwrap binary on a machine without a package manager) and prints, per notebook, the wall time, the
points and the seconds of each part; then the mean and the maximum seconds per student notebook.
Baselines are measured once per assignment and part and reused for the next student, as in a
class-sized ``autograde`` run: the first student of each assignment pays for them (reported apart).
The goal of the grading-core issue: ≤ 20 s per student notebook on one H200.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.course import Course  # noqa: E402
from grader import verify  # noqa: E402
from grader.verify import verify_notebook  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", nargs="+", default=["alice", "bob"])
    ap.add_argument("--assignments", nargs="*")
    ap.add_argument("--out", default="/tmp/effilab-gpu")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="effilab-throughput-"))
    course = Course(root=root)
    course.prepare()
    (root / "secret_seed").write_text("throughput-benchmark")
    rows = []
    for a in args.assignments or course.assignments():
        for i, student in enumerate(args.students):
            src = ROOT / "grader" / "examples" / a / f"{student}_{a}.ipynb"
            dst = root / "submitted" / student / a / f"{a}.ipynb"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
            t = time.time()
            res = verify_notebook(course, a, dst, log=lambda *x: None)
            sec = time.time() - t
            row = {"assignment": a, "student": student, "seconds": round(sec, 2), "first": i == 0,
                   "points": sum(r.points for r in res), "max": sum(r.max_points for r in res),
                   "parts": {r.grade_id: [r.points, r.max_points, round(r.seconds, 2)] for r in res},
                   "reports": {r.grade_id: r.report for r in res if r.points < r.max_points},
                   "details": {r.grade_id: r.details for r in res if r.details},
                   "phases": {k: round(v, 2) for k, v in verify.LAST_TIMING.items()}}
            rows.append(row)
            print(f"{a:28} {student:6} {sec:7.1f} s   {row['points']:g} / {row['max']:g}   "
                  + "  ".join(f"{g}={p:g}/{m:g}({s:.1f}s)" for g, (p, m, s) in row["parts"].items())
                + "   phases " + " ".join(f"{k} {v:.1f}s" for k, v in row["phases"].items()), flush=True)
            for gid, rep in row["reports"].items():
                print(f"    --- {gid}: " + rep[:900].replace("\n", "\n    "), flush=True)
            (out / "grading_throughput.json").write_text(json.dumps(rows, indent=1))  # kept if the run is cut
    later = [r["seconds"] for r in rows if not r["first"]] or [r["seconds"] for r in rows]
    every = [r["seconds"] for r in rows]
    print(f"seconds per student notebook: mean {statistics.mean(every):.1f}, max {max(every):.1f} (all); "
          f"mean {statistics.mean(later):.1f}, max {max(later):.1f} (baselines already measured)")
    (out / "grading_throughput.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
