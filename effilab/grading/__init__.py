"""Exercise checkers: one spec per exercise, shared by the notebook, pytest and the grader.

    from effilab.grading import check
    check("round_to_bf16", round_to_bf16).points      # last line of a test cell

See :mod:`effilab.grading.core` for how a check works and :mod:`effilab.grading.specs` for the
exercises of each notebook.
"""
from .compare import TOLERANCES, compare_tensors, tolerance
from .core import NOT_ON_CPU, REGISTRY, Case, Exercise, Group, Verdict, check, get, quiet

__all__ = ["check", "get", "quiet", "Verdict", "Exercise", "Case", "Group", "REGISTRY", "NOT_ON_CPU",
           "compare_tensors", "tolerance", "TOLERANCES", "exercises"]


def exercises(notebook: str | None = None) -> list[Exercise]:
    """Every registered exercise, optionally of one notebook (e.g. ``"01_float_formats"``)."""
    from .core import _load_specs

    _load_specs()
    return [e for e in REGISTRY.values() if notebook is None or e.notebook == notebook]
