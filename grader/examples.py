"""Example submissions, rebuilt with ``python -m grader examples``.

For each assignment, three students, as the instructor would receive them:

* ``alice`` — correct: the release notebook with every solution cell filled in from solutions/;
* ``bob``   — partly wrong: alice's notebook with the bugs listed in :data:`BUGS` (each a classic
  mistake, each costing part of an exercise's points);
* ``carol`` — the untouched release.

They serve the autograde round-trip test and show an instructor what the grader reports.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

from .course import Course

# assignment -> list of (grade_id of the solution cell, old text, new text, what the bug is)
BUGS: dict[str, list[tuple[str, str, str, str]]] = {
    "01_float_formats": [
        ("decompose_solution",
         "exponent = torch.where(E == 0, 1 - fmt.bias, E - fmt.bias)",
         "exponent = torch.where(E == 0, -fmt.bias, E - fmt.bias)",
         "subnormal exponent taken as -bias instead of 1 - bias"),
        ("round_to_bf16_solution",
         "rounded = (bits + 0x7FFF + lsb) >> 16",
         "rounded = (bits + 0x8000) >> 16",
         "rounds ties away from zero instead of to even"),
        ("stochastic_round_bf16_solution",
         "& 0xFFFF  # uniform in [0, 2**16)",
         "& 0x7FFF  # (bug: only 15 random bits)",
         "random numbers over half the range: biased rounding"),
        ("loss_scale_solution",
         "return float(((grads.to(torch.float16) == 0) & nonzero).sum()) / n",
         "return float(((grads.to(torch.float16) == 0) & nonzero).sum()) / grads.numel()",
         "divides by all elements, exact zeros included"),
        ("loss_scale_solution",
         "k = math.floor(math.log2(65504.0 / float(grads.abs().max()))) + 1   # one above the estimate\n"
         "    while torch.isinf((grads * 2.0 ** k).to(torch.float16)).any():\n"
         "        k -= 1\n"
         "    return 2.0 ** k",
         "return 2.0 ** math.floor(math.log2(65504.0 / float(grads.abs().max())))",
         "ignores that values between 65504 and 65520 round down to 65504, not to inf"),
    ],
}

STUDENTS = ("alice", "bob", "carol")


def examples_dir(course: Course) -> Path:
    return course.repo / "grader" / "examples"


def _solution_sources(course: Course, assignment: str) -> dict[str, str]:
    nb = nbformat.read(str(course.solutions / f"{assignment}.ipynb"), as_version=4)
    def unmarked(src: str) -> str:  # a student's cell has no solution markers
        return "\n".join(ln for ln in src.splitlines() if "### BEGIN SOLUTION" not in ln and "### END SOLUTION" not in ln)

    return {c.metadata["nbgrader"]["grade_id"]: unmarked(c.source) for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _filled(release_nb, sources: dict[str, str]):
    nb = nbformat.from_dict(release_nb)
    for c in nb.cells:
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if c.metadata.get("nbgrader", {}).get("solution") and gid in sources:
            c.source = sources[gid]
    return nb


def build_examples(course: Course, out: Path | None = None, log=print) -> list[Path]:
    out = Path(out) if out else examples_dir(course)
    written = []
    for a in course.assignments():
        release_nb = nbformat.read(str(course.notebooks / f"{a}.ipynb"), as_version=4)
        sources = _solution_sources(course, a)
        bugged = dict(sources)
        for gid, old, new, _why in BUGS.get(a, []):
            if old not in bugged[gid]:
                raise SystemExit(f"examples: the bug for {gid} no longer applies: {old!r} not in the solution")
            bugged[gid] = bugged[gid].replace(old, new)
        d = out / a
        d.mkdir(parents=True, exist_ok=True)
        for student, nb in (("alice", _filled(release_nb, sources)), ("bob", _filled(release_nb, bugged)),
                            ("carol", nbformat.from_dict(release_nb))):
            p = d / f"{student}_{a}.ipynb"
            nbformat.write(nb, str(p))
            written.append(p)
        log(f"examples: {a} → {d} ({', '.join(STUDENTS)})")
    return written
