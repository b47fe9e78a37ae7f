"""Run the code of chosen notebook cells in a fresh namespace, as a Jupyter kernel would.

Used by the tests (to take the instructor's reference solution straight from ``solutions/``, the
single source of truth, instead of a copy) and by the grader (to take a student's code out of a
submitted notebook). Each cell's source is registered with :mod:`linecache`, as IPython does, so
``inspect.getsource`` works — Triton's ``@triton.jit`` needs the source of a kernel.
"""
from __future__ import annotations

import itertools
import linecache
from pathlib import Path
from typing import Callable

import nbformat

__all__ = ["load_notebook", "code_cells", "exec_cells", "solution_namespace", "strip_magics"]

_counter = itertools.count()


def load_notebook(path: str | Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_setup(cell) -> bool:
    return str(_meta(cell).get("grade_id", "")).startswith("setup")


def is_solution(cell) -> bool:
    return bool(_meta(cell).get("solution")) and cell.cell_type == "code"


def code_cells(nb, select: Callable | None = None) -> list[tuple[int, str]]:
    """(index, source) of the code cells that ``select(cell)`` accepts (default: setup + solution cells)."""
    select = select or (lambda c: is_setup(c) or is_solution(c))
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code" and select(c)]


def strip_magics(src: str) -> str:
    """Drop IPython-only lines (``%magic``, ``!shell``) so plain Python can run the cell."""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines())


def exec_cells(cells: list[tuple[int, str]], namespace: dict | None = None, label: str = "notebook") -> dict:
    """Execute cell sources in order in ``namespace`` (a fresh ``__main__``-like dict by default)."""
    ns = namespace if namespace is not None else {"__name__": "__main__"}
    for idx, src in cells:
        src = strip_magics(src)
        fname = f"<{label} cell {idx} #{next(_counter)}>"
        linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
        exec(compile(src, fname, "exec"), ns)
    return ns


def solution_namespace(path: str | Path, replace: dict[str, tuple[str, str]] | None = None) -> dict:
    """The names defined by the setup and solution cells of a source notebook (``solutions/NN_*.ipynb``).

    ``replace`` = {grade id: (old, new)} changes the text of solution cells first (each ``old``
    must occur): the reference solution with one classic mistake put in."""
    nb = load_notebook(path)
    replace = dict(replace or {})
    cells = []
    for i, src in code_cells(nb):
        gid = _meta(nb.cells[i]).get("grade_id")
        if gid in replace:
            old, new = replace.pop(gid)
            if old not in src:
                raise ValueError(f"{old!r} is not in the cell {gid} of {Path(path).name}")
            src = src.replace(old, new)
        cells.append((i, src))
    if replace:
        raise ValueError(f"no solution cell {sorted(replace)} in {Path(path).name}")
    return exec_cells(cells, label=Path(path).stem)
