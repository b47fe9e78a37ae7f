"""``python -m grader publish OUT``: write the student edition of the course.

The student edition is what an instructor hands out or pushes to a public repository for Colab:

    OUT/notebooks/        the released notebooks (solutions replaced by stubs, hidden tests removed)
    OUT/effilab/          the helper package, minus every file marked ``# effilab: instructor-only``
                          (reference kernels that solve a graded exercise)
    OUT/README.md         the student README (grader/student/README.md)
    OUT/pyproject.toml    installs effilab only
    OUT/Makefile          `make lab`
    OUT/environment.yml

Nothing else of this repository goes out: no solutions/, no grader/, no tests/, no examples.
:func:`leaks` lists every graded solution line or hidden-test line found in a tree; ``publish``
refuses to finish when it finds any.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat

from effilab.grading.instructor import MARKER, is_instructor_only  # noqa: F401  (the one marker rule)

from .course import Course

SOLUTION = re.compile(r"^[ \t]*### BEGIN SOLUTION.*?^[ \t]*### END SOLUTION", re.S | re.M)
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS", re.S | re.M)
STUDENT_FILES = Path(__file__).resolve().parent / "student"


GENERIC = re.compile(r"^(with torch\.no_grad\(\):|with torch\.enable_grad\(\):|[\w.]+\.backward\(\)|"
                     r"[\w.]+\.zero_grad\([^)]*\)|[\w.]+\.step\(\)|return \w+|else:|try:|pass|[\])}]+,?)$")


def secret_lines(course: Course, min_len: int = 16) -> dict[str, str]:
    """Distinctive lines of graded solutions and hidden tests: {line: where it comes from}.

    A line counts when it is long enough to be specific and does not also appear in the public part
    of the same notebook (a worked example may share a line such as ``out = torch.empty(...)``).
    """
    secrets: dict[str, str] = {}
    for a in course.assignments():
        nb = nbformat.read(str(course.solutions / f"{a}.ipynb"), as_version=4)
        public: set[str] = set()
        found: dict[str, str] = {}
        for cell in nb.cells:
            src = cell.source
            regions = [(m.group(0), "solution") for m in SOLUTION.finditer(src)]
            regions += [(m.group(0), "hidden test") for m in HIDDEN.finditer(src)]
            rest = HIDDEN.sub("", SOLUTION.sub("", src))
            public |= {ln.strip() for ln in rest.splitlines()}
            for text, kind in regions:
                for ln in text.splitlines()[1:-1]:
                    s = ln.strip()
                    if len(s) >= min_len and not s.startswith(("###", "#")) and not GENERIC.match(s):
                        found[s] = f"{a}: {kind}"
        secrets.update({k: v for k, v in found.items() if k not in public})
    return secrets


def leaks(course: Course, tree: Path) -> list[str]:
    """Every place in ``tree`` where a graded solution or hidden test shows, or an instructor-only file."""
    secrets = secret_lines(course)
    problems = []
    for p in sorted(tree.rglob("*")):
        if not p.is_file():
            continue
        if is_instructor_only(p):
            problems.append(f"{p.relative_to(tree)}: instructor-only file")
            continue
        if p.suffix not in (".py", ".ipynb", ".md", ".txt", ".toml", ".yml", ".cfg", ".json"):
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        lines = set()
        if p.suffix == ".ipynb":
            try:
                nb = nbformat.reads(text, as_version=4)
                for c in nb.cells:
                    lines |= {ln.strip() for ln in c.source.splitlines()}
            except Exception:
                lines = {ln.strip() for ln in text.splitlines()}
        else:
            lines = {ln.strip() for ln in text.splitlines()}
        for s in lines & secrets.keys():
            problems.append(f"{p.relative_to(tree)}: {secrets[s]} line {s!r}")
        if "BEGIN HIDDEN TESTS" in text or "BEGIN SOLUTION" in text:
            problems.append(f"{p.relative_to(tree)}: contains a solution or hidden-test marker")
    return problems


def publish(course: Course, out: Path, force: bool = False, log=print, colab: str | None = None) -> Path:
    """Write the student edition to ``out``; with ``colab`` (``OWNER/REPO[@BRANCH]``, where the
    edition will live on GitHub) each notebook starts with an Open-in-Colab badge and an install
    cell (:mod:`grader.colab`)."""
    from . import colab as colab_cells

    where = colab_cells.parse(colab) if colab else None
    out = Path(out).resolve()
    if out == course.repo or out in course.repo.parents or (out.parent == course.repo and (course.repo / out.name).exists()):
        raise SystemExit(f"error: refusing to publish into {out}: it is (or holds) this repository's own files")
    if out.exists():
        if not force:
            raise SystemExit(f"error: {out} exists; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # notebooks: the committed release (regenerate with `python -m grader release` first if stale)
    (out / "notebooks").mkdir()
    for nb in sorted(course.notebooks.glob("*.ipynb")):
        shutil.copyfile(nb, out / "notebooks" / nb.name)
        if where:
            colab_cells.add_to(out / "notebooks" / nb.name, *where)
    # effilab without instructor-only modules
    src_pkg = course.repo / "effilab"
    for p in sorted(src_pkg.rglob("*")):
        rel = p.relative_to(src_pkg)
        if "__pycache__" in rel.parts or p.suffix in (".pyc", ".so") or p.is_dir():
            continue
        if is_instructor_only(p):
            log(f"publish: leaving out {Path('effilab') / rel} (instructor-only)")
            continue
        dst = out / "effilab" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    for name in ("README.md", "pyproject.toml", "Makefile", "environment.yml", ".gitignore"):
        shutil.copyfile(STUDENT_FILES / name, out / name)
    for name in ("LICENSE",):
        if (course.repo / name).exists():
            shutil.copyfile(course.repo / name, out / name)
    problems = leaks(course, out)
    if problems:
        raise SystemExit("error: the student edition would leak:\n  " + "\n  ".join(problems))
    log(f"publish: student edition written to {out} (no graded solution, no hidden test)")
    return out
