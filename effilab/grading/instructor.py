"""What belongs to the instructor only — decided by one marker line, nothing else.

A Python file of ``effilab`` whose first lines hold ``# effilab: instructor-only`` solves a graded
exercise (today: the reference kernels of notebook 08 in ``effilab/ops``). Everything that must
know which files those are derives it from the marker, by reading the files (no import):

* ``python -m grader publish`` leaves them out of the student edition (:func:`is_instructor_only`);
* the grader's static check and the sandbox's traps forbid importing them in graded code
  (:func:`instructor_modules`);
* ``effilab.ops`` imports them where they exist (:func:`present_instructor_modules`), so in the
  student edition they are simply absent — a real import error in either edition still raises.

(A kernel exercise needs no list of the reference kernels: its points go only to kernels whose
code comes from the notebook, :mod:`effilab.grading.provenance`.)
"""
from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["MARKER", "is_instructor_only", "instructor_modules", "present_instructor_modules", "PACKAGE_ROOT"]

MARKER = "# effilab: instructor-only"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the effilab package folder
HEAD_LINES = 5


def is_instructor_only(path: Path) -> bool:
    """Whether ``path`` is a Python file with the marker in its first lines."""
    path = Path(path)
    if path.suffix != ".py":
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = [next(fh, "") for _ in range(HEAD_LINES)]
    except OSError:
        return False
    return any(line.strip() == MARKER for line in head)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=4)
def _marked(root: str) -> tuple[tuple[str, str], ...]:
    base = Path(root)
    return tuple((_module_name(p, base), str(p)) for p in sorted(base.rglob("*.py"))
                 if "__pycache__" not in p.parts and is_instructor_only(p))


def instructor_modules(root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """Dotted names of the instructor-only modules under ``root`` (e.g. ``effilab.ops.rmsnorm``)."""
    return tuple(name for name, _ in _marked(str(root)))


def present_instructor_modules(package: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """The instructor-only modules directly inside ``package`` that this edition ships."""
    return [name for name in instructor_modules(root) if name.rpartition(".")[0] == package]
