"""One gate for every text the grader stores or shows: reports, notes, log lines, cell outputs.

A student's code decides what these texts contain. Left as they are, they break the grader (a
lone surrogate cannot be written as UTF-8, so ``nbformat.write`` or ``print`` raises and the run
stops), mislead the reader (terminal escape sequences, bidi overrides that make text read in
another order than it is stored, carriage returns that overwrite a line) or fill the disk (a
cell that prints 200 MB is kept whole in the autograded notebook and again in its feedback).

* :func:`clean_text` — lone surrogates become U+FFFD, control characters other than ``\\n`` and
  ``\\t`` are dropped (a ``\\r`` keeps what a terminal would show: the text after it), and a text
  over ``limit`` characters keeps its head and tail around "… (N characters cut)".
* :func:`clean_notes`, :func:`clean_results` — the same for the grader's notes and verdicts,
  whatever type they arrive as (``None``, a string, a list).
* :func:`cap_outputs` / :func:`cap_notebook_file` — caps on the outputs kept in an autograded
  notebook: each stream or text output ≤ :data:`STREAM_LIMIT`, each cell ≤ :data:`CELL_LIMIT`,
  the whole notebook ≤ :data:`NOTEBOOK_LIMIT` (characters; base64 images count their encoded
  length). ``python -m grader autograde`` applies them after nbgrader ran and before feedback.

Sizes are counted in characters, which is bytes for the ASCII that outputs mostly are.
"""
from __future__ import annotations

import dataclasses
import re

STREAM_LIMIT = 64 * 1024  # one stream output, one text mime entry, one traceback
CELL_LIMIT = 256 * 1024  # all outputs of one cell
NOTEBOOK_LIMIT = 16 * 1024 * 1024  # all outputs of the notebook
TEXT_LIMIT = 64 * 1024  # a note, a report, a log line (callers pass smaller limits where they want)

# ANSI colour codes (SGR: ESC [ … m) render as colours in nbconvert's feedback; any other escape
# sequence (cursor moves, screen clears, OSC titles and links) only garbles text.
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
# C0 and C1 controls and DEL, except \t and \n; \r is handled before (terminal overwrite).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_BUT_ESC = re.compile(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f]")
_LONE_ESC = re.compile(r"\x1b(?!\[[0-9;]*m)")
# Bidi embeddings, overrides and isolates: they make stored text display in another order
# ("Trojan Source", Boucher & Anderson 2021). Zero-width joiners stay: scripts and emoji need them.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _fix_surrogates(text: str) -> str:
    """Pair surrogates (as a UTF-16 round trip does) and replace the lone ones by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _overwrite_cr(text: str) -> str:
    """A carriage return starts its line again: keep what a terminal would show (progress bars)."""
    if "\r" not in text:
        return text
    text = text.replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line else line for line in text.split("\n"))


def cut(text: str, limit: int | None) -> str:
    """``text`` within ``limit`` characters: its head and tail around "… (N characters cut) …".

    The tail is kept too because a traceback or a log ends with what matters most."""
    if limit is None or len(text) <= limit:
        return text
    marker_room = 60
    if limit <= marker_room * 2:
        head, tail = max(0, limit - marker_room), 0
    else:
        head = (limit - marker_room) * 2 // 3
        tail = limit - marker_room - head
    n = len(text) - head - tail
    kept_head, kept_tail = text[:head], (text[-tail:] if tail else "")
    sep = "\n" if "\n" in kept_head or "\n" in kept_tail else " "  # one-line texts stay one line
    return kept_head + f"{sep}… ({n} characters cut) …{sep}" + kept_tail


def clean_text(text, limit: int | None = TEXT_LIMIT, keep_colors: bool = False) -> str:
    """``text`` made safe to store and show (see the module doc); ``None`` becomes "".

    ``keep_colors`` keeps ANSI colour codes (cell outputs, which nbconvert renders in colour);
    reports and notes are plain text and lose them. The cap is applied first, so a 200 MB
    output costs one pass over what is kept, not over all of it."""
    if text is None:
        return ""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # a __str__ that raises: the object still gets a line
            text = f"<{type(text).__name__} object>"
    text = _fix_surrogates(cut(text, limit))
    if keep_colors:
        text = _ESCAPE.sub(lambda m: m.group(0) if _SGR.fullmatch(m.group(0)) else "", text)
        text = _overwrite_cr(text)
        text = _CONTROL_BUT_ESC.sub("", text)
        text = _LONE_ESC.sub("", text)
    else:
        text = _ESCAPE.sub("", text)
        text = _overwrite_cr(text)
        text = _CONTROL.sub("", text)
    return _BIDI.sub("", text)


def clean_notes(notes, limit: int = 2000) -> list[str]:
    """A list of clean note strings from whatever ``notes`` is: None → [], a string → [it]."""
    if notes is None:
        return []
    if isinstance(notes, (str, bytes)) or not hasattr(notes, "__iter__"):
        notes = [notes.decode("utf-8", "replace") if isinstance(notes, bytes) else notes]
    out = []
    for n in list(notes)[:200]:
        text = clean_text(n, limit)
        if text.strip():
            out.append(text)
    return out


def clean_value(value, limit: int = TEXT_LIMIT, depth: int = 8):
    """Strings inside dicts, lists and tuples cleaned (for verdict details stored as JSON)."""
    if isinstance(value, str):
        return clean_text(value, limit)
    if depth <= 0:
        return clean_text(repr(value)[:200], 200)
    if isinstance(value, dict):
        return {clean_text(str(k), 200): clean_value(v, limit, depth - 1) for k, v in list(value.items())[:1000]}
    if isinstance(value, (list, tuple)):
        return [clean_value(v, limit, depth - 1) for v in list(value)[:1000]]
    return value


def clean_results(results, report_limit: int = 6000) -> list:
    """Copies of verdicts (``grader.verify.PartResult``) whose texts went through :func:`clean_text`."""
    out = []
    for r in results or []:
        if not dataclasses.is_dataclass(r):
            out.append(r)
            continue
        changes = {}
        for f in dataclasses.fields(r):
            v = getattr(r, f.name)
            if f.name == "report":
                changes[f.name] = clean_text(v, report_limit)
            elif isinstance(v, str):
                changes[f.name] = clean_text(v, 500)
            elif isinstance(v, dict):
                changes[f.name] = clean_value(v, 2000)
        out.append(dataclasses.replace(r, **changes))
    return out


# ---------------------------------------------------------------------------------------------
# outputs of an executed notebook
# ---------------------------------------------------------------------------------------------
def _joined(value) -> str:
    """nbformat allows a multi-line string to be stored as a list of strings."""
    if isinstance(value, list):
        return "".join(v if isinstance(v, str) else str(v) for v in value)
    return value if isinstance(value, str) else str(value)


_NOTE_ROOM = 200


def _cut_note(n: int) -> dict:
    import nbformat

    return nbformat.v4.new_output("stream", name="stdout",
                                  text=f"… ({n} characters of output cut by the grader: outputs are capped) …\n")


def _size(out) -> int:
    """An output's size in characters (roughly what it adds to the notebook file)."""
    if not hasattr(out, "get"):
        return 0
    kind = out.get("output_type")
    if kind == "stream":
        return len(_joined(out.get("text", "")))
    if kind == "error":
        return (sum(len(_joined(t)) for t in (out.get("traceback") or []))
                + len(str(out.get("ename", ""))) + len(str(out.get("evalue", ""))))
    data = out.get("data")
    if isinstance(data, dict):
        return sum(len(_joined(v)) if isinstance(v, (str, list)) else len(str(v)) for v in data.values())
    return 0


def _cap_text(value, room: int) -> tuple[str, int]:
    """(the text cleaned within ``room``, characters the cap cut from it)."""
    raw = _joined(value)
    return clean_text(raw, room, keep_colors=True), max(0, len(raw) - room)


def _cap_stream(out, room: int) -> tuple[object, int]:
    out["text"], lost = _cap_text(out.get("text", ""), room)
    return out, lost


def _cap_error(out, room: int) -> tuple[object, int]:
    tb = "\n".join(_joined(t) for t in (out.get("traceback") or []))
    text, lost = _cap_text(tb, room)
    out["traceback"] = text.split("\n") if tb else []
    out["ename"] = clean_text(out.get("ename", ""), 200)
    out["evalue"] = clean_text(out.get("evalue", ""), min(room, 4000))
    return out, lost


def _cap_data(out, room: int) -> tuple[object, int]:
    """A display or result output: text mimes are cut; HTML, images and other data are kept whole
    or dropped (cut, they would not render); None when nothing is left."""
    data = out.get("data")
    if not isinstance(data, dict):
        return out, 0
    kept, left, lost = {}, room, 0
    for mime, value in data.items():
        if isinstance(value, (str, list)) and mime.startswith("text/") and mime != "text/html":
            text, n = _cap_text(value, left)
            lost += n
        else:
            size = len(_joined(value)) if isinstance(value, (str, list)) else len(str(value))
            if size > left:  # an image or HTML, cut, would not render: dropped whole
                lost += size
                continue
            text = _joined(value) if isinstance(value, (str, list)) else value  # application/json: a structure
        kept[mime] = text
        left -= len(text) if isinstance(text, str) else len(str(text))
    if not kept:
        return None, lost
    out["data"] = kept
    return out, lost


def cap_cell_outputs(cell, stream_limit: int = STREAM_LIMIT, cell_limit: int = CELL_LIMIT) -> int:
    """Clean and cap one code cell's outputs in place (see the module doc); returns characters cut.

    Outputs are kept in order until the cell's budget is spent; when a cap cut something, a note
    at the end says how much, so the student knows the output shown is not all their code printed."""
    outputs = cell.get("outputs")
    if cell.get("cell_type") != "code" or not isinstance(outputs, list) or not outputs:
        return 0
    kept, budget, lost = [], cell_limit - _NOTE_ROOM, 0  # room kept for the note, so a second pass cuts nothing
    for out in outputs:
        if not hasattr(out, "get"):
            continue
        room = min(stream_limit, budget)
        if room <= 0:
            lost += _size(out)
            continue
        kind = out.get("output_type")
        cap = _cap_stream if kind == "stream" else _cap_error if kind == "error" else _cap_data
        out, n = cap(out, room)
        lost += n
        if out is not None:
            kept.append(out)
            budget -= _size(out)
    if lost:
        kept.append(_cut_note(lost))
    cell["outputs"] = kept
    return lost


def cap_outputs(nb, stream_limit: int = STREAM_LIMIT, cell_limit: int = CELL_LIMIT,
                notebook_limit: int = NOTEBOOK_LIMIT) -> int:
    """Clean and cap every code cell's outputs in place, and the notebook's total; returns the
    characters cut."""
    cut_total, left = 0, notebook_limit
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        cut_total += cap_cell_outputs(cell, stream_limit, max(0, min(cell_limit, left)))
        left -= sum(_size(o) for o in cell.get("outputs", []))
    return cut_total


def cap_notebook_file(path, **limits) -> int:
    """:func:`cap_outputs` on the notebook file at ``path`` (rewritten in place); returns the
    characters cut. Never raises: a notebook that cannot be read or written is left as it is
    (nbgrader has reported what is wrong with it) and -1 is returned."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
        n = cap_outputs(nb, **limits)
        nbformat.write(nb, str(path))
        return n
    except Exception:
        return -1
