"""Take a student's code for one exercise out of a submitted notebook, and check it statically.

*Extraction.* The code graded for exercise ``E`` is the instructor's own setup cell (the locked
``setup_imports`` cell of ``solutions/``, never the student's copy) plus the student's cells
(solution cells and cells the student added) that define ``E`` and, transitively, the names those
cells use beyond what the setup provides. Another exercise's cell — possibly broken, possibly
hostile — is not run when ``E`` is graded.

*Static checks.* Each exercise lists ``forbidden`` dotted names (library ops that do the whole job,
the effilab reference kernels) and the checker rejects code that imports or refers to them, also
through aliases (``import torch.nn.functional as F; F.rms_norm``) or ``getattr(module, "name")``
with a constant string, and any reference to effilab's instructor modules.
"""
from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

import nbformat

from effilab.grading.instructor import instructor_modules

from .shell import shell_free

# Never in graded code: the instructor-only modules (derived from their marker), the grader and the
# checker itself.
ALWAYS_FORBIDDEN = instructor_modules() + ("grader", "effilab.grading")


@dataclass
class Cell:
    index: int
    grade_id: str
    source: str
    defines: set
    uses: set


def _top_level_names(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out.add(n.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                out.add((a.asname or a.name).split(".")[0])
    return out


def _used_names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _strip_magics(src: str) -> str:
    """The cell as the grader runs it: shell and magic lines replaced by comments (grader/shell.py,
    the same function that prepares the notebook nbgrader executes)."""
    return shell_free(src)


def parse(source: str) -> ast.Module | None:
    """The syntax tree of ``source``, or None when it cannot be had: a syntax error, a null byte,
    or nesting so deep that the parser or the tree's construction runs out of stack (a student's
    cell must cost that cell, not the grading run)."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def solution_cells(nb) -> list[Cell]:
    """The student's code cells: the solution cells, and the cells the student added (no nbgrader
    metadata: helpers, scratch work, cells the grader demoted when it repaired the notebook). The
    assignment's own cells — setup, demos, tests — are never taken from a submission."""
    cells = []
    for i, c in enumerate(nb.cells):
        if c.get("cell_type") != "code":
            continue
        meta = c.get("metadata", {}).get("nbgrader")
        if meta is not None and not (isinstance(meta, dict) and meta.get("solution")):
            continue
        meta = meta or {}
        src = _strip_magics(c.get("source", ""))
        tree = parse(src)
        try:
            defines, uses = (_top_level_names(tree), _used_names(tree)) if tree else (set(), set())
        except RecursionError:
            defines, uses = set(), set()
        cells.append(Cell(i, str(meta.get("grade_id", f"cell-{i}")), src, defines, uses))
    return cells


def setup_source(source_nb) -> str:
    for c in source_nb.cells:
        if str(c.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")).startswith("setup"):
            return _strip_magics(c.source)
    return ""


def names_defined(source: str) -> set[str]:
    """Top-level names a piece of code defines (empty if it does not parse)."""
    tree = parse(_strip_magics(source))
    return _top_level_names(tree) if tree else set()


def cells_for(name: str, cells: list[Cell], provided: set[str] = frozenset()) -> list[Cell]:
    """The student's cells that define ``name`` and, transitively, what they use (notebook order).

    Names in ``provided`` (what the instructor's setup cell defines: ``torch``, ``triton``…) are
    not chased, so a cell that merely imports torch again is not pulled in."""
    wanted, chosen, frontier = set(), {}, {name}
    builtin_names = set(dir(builtins)) | set(provided)
    while frontier:
        n = frontier.pop()
        wanted.add(n)
        for c in cells:
            if n in c.defines and c.index not in chosen:
                chosen[c.index] = c
                frontier |= {u for u in c.uses if u not in wanted and u not in builtin_names}
    return [chosen[i] for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------
# static checks
# ---------------------------------------------------------------------------------------------
def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _code_only(source: str) -> str:
    """``source`` without comments and docstrings (via the AST)."""
    tree = parse(source)
    if tree is None:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    try:
        return ast.unparse(tree)
    except RecursionError:  # too deep to print back: the patterns are matched on the source itself
        return source


def static_problems(source: str, forbidden: tuple[str, ...] = (), forbidden_source: tuple = ()) -> list[str]:
    """Forbidden imports/references in ``source`` (resolving import aliases), and source patterns
    ``(regex, why)`` an exercise rules out; [] when clean."""
    import re

    forbidden = tuple(forbidden) + ALWAYS_FORBIDDEN
    pattern_problems = []
    if forbidden_source:
        code = _code_only(source)  # comments and docstrings may mention what the code may not do
        for pat, why in forbidden_source:
            for m in re.finditer(pat, code):
                pattern_problems.append(f"{m.group(0)!r} — {why}")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"your code has a syntax error (line {e.lineno}): {e.msg}"]
    except (ValueError, RecursionError, MemoryError):
        return ["your code is nested too deeply for Python to parse (or holds a null byte): simplify the "
                "expression (split it over several statements)"]
    aliases: dict[str, str] = {}
    problems = []

    def hit(full: str) -> str | None:
        for f in forbidden:
            if full == f or full.startswith(f + "."):
                return f
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                f = hit(a.name)
                if f:
                    problems.append(f"line {node.lineno}: imports {a.name} — {f} may not be used in this exercise")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = full
                f = hit(full) or hit(node.module)
                if f:
                    problems.append(f"line {node.lineno}: imports {full} — {f} may not be used in this exercise")
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            d = _dotted(node)
            if d:
                head, _, rest = d.partition(".")
                name = aliases.get(head, head) + ("." + rest if rest else "")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            base = _dotted(node.args[0])
            if base:
                head, _, rest = base.partition(".")
                name = aliases.get(head, head) + ("." + rest if rest else "") + "." + node.args[1].value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("__import__", "exec", "eval", "compile"):
            problems.append(f"line {node.lineno}: {node.func.id}() is not allowed in graded code")
        elif isinstance(node, ast.Call) and _dotted(node.func) in ("importlib.import_module",):
            problems.append(f"line {node.lineno}: importlib.import_module() is not allowed in graded code")
        if name:
            f = hit(name)
            if f:
                problems.append(f"line {node.lineno}: uses {name} — {f} may not be used in this exercise")
    return sorted(set(problems + pattern_problems))


def load(path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)
