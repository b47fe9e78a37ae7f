"""Shell and magic lines out of a student's code cell, the same way for every part of the grader.

A notebook cell may hold IPython syntax that is not Python: ``!pip install …`` and ``!!cmd``
(shell), ``%pip`` / ``%cd`` (line magics), a ``%%bash`` / ``%%sh`` / ``%%script`` /
``%%writefile`` first line (cell magics), ``x = !ls`` and ``x = %time f()`` (assignments from
them), ``obj?`` (help), and direct calls into the shell object (``get_ipython().system(...)``,
``.run_line_magic``, ``.run_cell_magic``). In Jupyter and Colab these are the student's business:
the Colab set-up cell of grader/student/README.md (``!git clone … && pip install …``) needs them.
On the grading machine none of them may run: nbgrader executes the notebook there, next to the
grader's own environment.

:func:`strip_shell` replaces each such line by a comment that says the grader removed it and
shows what it was (the student reads it in the feedback). ``grader.normalize`` applies it to the
notebook nbgrader executes, and ``grader.extract`` to the code it grades outside the kernel, so
both see the same cell. A removed line keeps its place (one comment per physical line) so line
numbers in error messages still match the student's cell; an indented one becomes ``pass  # …``
so the block around it still parses.

How lines are found: Python's tokenizer splits the cell into logical lines (so backslash and
bracket continuations belong to the line they continue), a line whose first token is one of
IPython's escapes (``! % ? , ; /``) is removed whole, as is an assignment from ``!`` or ``%``, a
line ending in ``?``, and every statement that refers to ``get_ipython`` (found in the syntax
tree; a compound statement whose header refers to it goes whole). A cell magic on the first line
removes the whole cell, except the magics whose body is Python (``%%time``, ``%%capture``…): only
their first line goes. Finally IPython's own input transformer (the code the kernel runs) checks
the result: if it still turns anything into a call of the shell object, the whole cell is
commented out. That last check is what makes the filter safe; the rules before it make it precise.
"""
from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field

# A cell longer than this is not looked into (tokenizing megabytes of code takes minutes): it is
# commented out whole. The course's cells are a few kilobytes; a student's own helper cell, tens.
MAX_SOURCE = 256 * 1024
MARK = "# [removed by the grader: shell and magic lines do not run in grading] "
# Cell magics whose body is Python code that should still run (only the magic line goes).
PYTHON_BODY_MAGICS = frozenset({"time", "timeit", "capture", "prun", "debug"})
ESCAPES = frozenset("!%?,;/")  # IPython's escapes at the start of a logical line
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")  # Python's own line ends (what tokenize and ast count)


@dataclass
class Stripped:
    """The cell without shell lines, and the original lines that were removed."""

    source: str
    removed: list[str] = field(default_factory=list)
    whole_cell: bool = False  # every line was commented out …
    why: str = ""  # … for this reason


def _split(source: str) -> list[str]:
    parts = _LINES.findall(source)
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def _ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _is_marked(line: str) -> bool:
    body = line.strip()
    return body.startswith(MARK.strip()) or body.startswith("pass  " + MARK.strip())


def _significant(line: str) -> bool:
    body = line.strip()
    return bool(body) and not body.startswith("#")


def _comment(lines: list[str], rows: set[int]) -> list[str]:
    """``lines`` with the 0-based ``rows`` replaced by comments.

    Each run of consecutive removed rows keeps one statement, ``pass``, on its first row when that
    row is indented below some earlier code (the block it sits in may hold nothing else); the rest
    are comments, which Python ignores whatever their indentation. Rows already marked stay."""
    out = list(lines)
    in_run = seen_code = False
    for i, line in enumerate(lines):
        if i not in rows or not line.strip() or _is_marked(line):
            in_run = in_run and i in rows  # a kept row ends a run; a blank one inside it does not
            seen_code = seen_code or (_significant(line) and not _is_marked(line))
            continue
        body = line.rstrip("\r\n")
        ind = _indent(body)
        use_pass = not in_run and bool(ind) and seen_code
        out[i] = ind + ("pass  " if use_pass else "") + MARK + body.strip() + _ending(line)
        in_run = True
    return out


def _logical_lines(text: str):
    """Yield the token lists of the logical lines of ``text``, as far as it tokenizes; then
    ``None`` with the 1-based row where tokenizing stopped, if it did."""
    current, depth = [], 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            current.append(tok)
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth = max(0, depth - 1)
            if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and depth == 0):
                yield current
                current = []
    except (tokenize.TokenError, SyntaxError, ValueError) as e:  # IndentationError is a SyntaxError
        if current:
            yield current
        row = e.args[1][0] if isinstance(e, tokenize.TokenError) and len(e.args) > 1 else None
        yield (None, row or (current[-1].start[0] if current else 1))
        return
    if current:
        yield current


_SKIP = {tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER}


def _is_shell_line(toks) -> bool:
    """A logical line IPython would rewrite: an escape first, an assignment from ``!``/``%``, or a
    trailing ``?`` (help)."""
    sig = [t for t in toks if t.type not in _SKIP and not (t.type == tokenize.ERRORTOKEN and t.string.isspace())]
    if not sig:
        return False
    if sig[0].string[:1] in ESCAPES and sig[0].type in (tokenize.OP, tokenize.ERRORTOKEN):
        return True
    if sig[-1].string == "?":
        return True
    level = 0
    for i, t in enumerate(sig):
        if t.string in ("(", "[", "{"):
            level += 1
        elif t.string in (")", "]", "}"):
            level = max(0, level - 1)
        elif t.string == "=" and level == 0:
            nxt = sig[i + 1] if i + 1 < len(sig) else None
            return nxt is not None and nxt.string in ("!", "%", "!!")
    return False


def _escape_rows(lines: list[str]) -> set[int]:
    """0-based rows of the logical lines that start with an IPython escape (or assign from one)."""
    rows: set[int] = set()
    text = "".join(lines)
    for toks in _logical_lines(text):
        if isinstance(toks, tuple):  # tokenizing stopped: judge the rest line by line
            start = max(0, toks[1] - 1)
            for i in range(start, len(lines)):
                s = lines[i].lstrip()
                if s[:1] in ESCAPES or re.match(r"^[\w.,\s\[\]()]+=\s*[!%]", s):
                    rows.add(i)
            break
        if _is_shell_line(toks):
            first, last = toks[0].start[0], max(t.end[0] for t in toks)
            rows.update(range(first - 1, min(last, len(lines))))
    return rows


def _refers_to_shell(node) -> bool:
    """Does this expression (or import) name ``get_ipython``?"""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "get_ipython":
            return True
        if isinstance(n, ast.Attribute) and n.attr == "get_ipython":
            return True
        if isinstance(n, ast.alias) and n.name.split(".")[-1] == "get_ipython":
            return True
    return False


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _own_parts(stmt):
    """The parts of a statement that are not its nested blocks (header, decorators, handlers'
    exception types, match patterns and guards)."""
    for name, value in ast.iter_fields(stmt):
        if name in _BODIES:
            continue
        yield from (value if isinstance(value, list) else [value])
    for h in getattr(stmt, "handlers", []) or []:
        if h.type is not None:
            yield h.type
    for c in getattr(stmt, "cases", []) or []:
        yield c.pattern
        if c.guard is not None:
            yield c.guard


def _first_row(stmt) -> int:
    """1-based first row of a statement, its decorators included."""
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", []) or []])


def _spans(tree):
    """(header rows, whole rows, statement) for every statement: a simple statement's header is
    all of it; a compound one's runs up to its first nested statement (the row of that statement
    too when it sits on the header's line, as in ``if x: y()``)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        first, last = _first_row(node), node.end_lineno or node.lineno
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            head_end = max(first, body[0].lineno - 1 if body[0].lineno > node.lineno else node.lineno)
        else:
            head_end = last
        yield set(range(first - 1, head_end)), set(range(first - 1, last)), node


def _call_rows(lines: list[str]) -> set[int] | None:
    """0-based rows of the statements that refer to ``get_ipython`` (with whatever shares a row
    with them, so that no statement is cut in half); None when the code does not parse (the
    caller then falls back to the text)."""
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
        spans = list(_spans(tree))
        rows: set[int] = set()
        for head, whole, node in spans:
            if any(isinstance(p, ast.AST) and _refers_to_shell(p) for p in _own_parts(node)):
                rows |= whole
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    changed = bool(rows)
    while changed:  # a statement sharing a row with a removed one goes too
        changed = False
        for head, whole, _ in spans:
            if head & rows and not whole <= rows:
                rows |= whole
                changed = True
    return rows


def _text_call_rows(lines: list[str]) -> set[int]:
    return {i for i, ln in enumerate(lines) if re.search(r"\bget_ipython\b", ln.split("#", 1)[0])}


def _cell_magic(lines: list[str]) -> tuple[int, str] | None:
    """(row, name) of a cell magic on the cell's first non-blank line (IPython first drops blank
    lines and the indentation common to all lines, as here)."""
    nonblank = [i for i, ln in enumerate(lines) if ln.strip()]
    if not nonblank:
        return None
    dedented = textwrap.dedent("".join(lines[nonblank[0]:])).lstrip("\r\n")
    if not dedented.startswith("%%"):
        return None
    return nonblank[0], re.split(r"[\s?]", dedented[2:], 1)[0]


def _kernel_would_call_shell(source: str) -> bool:
    """Whether IPython, running ``source``, would call into the shell object: its input transformer
    (the one the kernel uses) rewrites the cell, and the result must not name ``get_ipython``.
    A cell IPython cannot transform or parse does not run at all, so it is safe."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except Exception:  # no IPython: no kernel either
        return False
    try:
        code = TransformerManager().transform_cell(source)
        tree = ast.parse(code)
    except Exception:
        return False
    try:
        return any(_refers_to_shell(n) for n in ast.walk(tree) if isinstance(n, (ast.expr, ast.alias)))
    except RecursionError:
        return True


def _whole_cell(lines: list[str], why: str) -> Stripped:
    """Every line of the cell commented out (nothing of it runs)."""
    return Stripped("".join(_comment(lines, set(range(len(lines))))),
                    [ln.rstrip("\r\n") for ln in lines if ln.strip() and not _is_marked(ln)], True, why)


def strip_shell(source: str) -> Stripped:
    """``source`` with its shell and magic lines replaced by comments (see the module doc)."""
    if not isinstance(source, str):
        source = "".join(source) if isinstance(source, list) else str(source)
    lines = _split(source)
    if len(source) > MAX_SOURCE:
        return _whole_cell(lines, f"it is over {MAX_SOURCE // 1024} KiB of code, more than the grader reads")
    rows: set[int] = set()
    magic = _cell_magic(lines)
    if magic is not None:
        row, name = magic
        rows = {row} if name in PYTHON_BODY_MAGICS else set(range(row, len(lines)))
    if magic is None or magic[1] in PYTHON_BODY_MAGICS:
        rows |= _escape_rows(_comment(lines, rows))
        current = _comment(lines, rows)
        calls = _call_rows(current)
        rows |= _text_call_rows(current) if calls is None else calls
    out = _comment(lines, rows)
    result = "".join(out)
    if _kernel_would_call_shell(result):
        return _whole_cell(lines, "it mixes shell or magic syntax with code in a way the grader cannot separate")
    removed = [lines[i].rstrip("\r\n") for i in sorted(rows) if lines[i].strip() and out[i] != lines[i]]
    return Stripped(result, removed)


def shell_free(source: str) -> str:
    """Just the cleaned source (what ``grader.extract`` grades)."""
    return strip_shell(source).source
