"""Texts a student's code controls — reports, notes, outputs — are cleaned and capped before the
grader stores or shows them, and grading survives what used to crash it (a lone surrogate in an
exception, ``notes: null`` in a result, a cell so deeply nested that ``ast.parse`` recurses)."""
import json
import re

import nbformat
import pytest

from grader.extract import names_defined, solution_cells, static_problems
from grader.feedback import ScrubHiddenTests
from grader.sanitize import (CELL_LIMIT, STREAM_LIMIT, cap_cell_outputs, cap_notebook_file, cap_outputs, clean_notes,
                             clean_results, clean_text)
from grader.verify import PartResult

MiB = 2**20


def test_clean_text_replaces_lone_surrogates_and_drops_control_characters():
    text = clean_text("ok\udc80\x00\x07 bell\x1b[2J\x1b]0;title\x07 \u202eevil\tTab\nnext")
    assert text == "ok\ufffd bell evil\tTab\nnext"
    text.encode("utf-8")  # writable
    assert clean_text("\ud83d\ude00") == "\U0001F600"  # a surrogate *pair* is one character


def test_clean_text_keeps_colours_only_when_asked():
    red = "\x1b[31mred\x1b[0m"
    assert clean_text(red) == "red"
    assert clean_text(red + "\x1b[2K", keep_colors=True) == red


def test_carriage_returns_keep_what_a_terminal_shows():
    assert clean_text("10%\r50%\r100%\ndone\r\n") == "100%\ndone\n"


def test_clean_text_caps_with_a_count_of_what_was_cut():
    text = clean_text("a" * 10_000 + "END", 1000)
    assert len(text) <= 1000 and text.endswith("END")  # the tail is kept: errors end there
    m = re.search(r" … \((\d+) characters cut\) … ", text)
    head, tail = text.split(m.group(0))
    assert len(head) + int(m.group(1)) + len(tail) == 10_003  # the count is exact
    assert clean_text("short", 1000) == "short"
    assert clean_text(None) == "" and clean_text(12) == "12"


def test_clean_notes_accepts_whatever_a_result_holds():
    assert clean_notes(None) == []
    assert clean_notes("one note") == ["one note"]
    assert clean_notes(["a", None, 3, "bad \udc80"]) == ["a", "3", "bad \ufffd"]


def test_clean_results_makes_every_verdict_text_writable():
    r = PartResult("g", "ex", "correctness", 0.0, 1.0, "boom \udc80" + "x" * 10_000, {"why": "\udc81", "n": 3})
    (c,) = clean_results([r])
    json.dumps(c.__dict__, ensure_ascii=False).encode("utf-8")
    assert "\ufffd" in c.report and len(c.report) <= 6000 and c.details == {"why": "\ufffd", "n": 3}
    assert r.report.startswith("boom \udc80")  # the caller's object is not changed


def _stream(n: int, text: str = "y") -> dict:
    return nbformat.v4.new_output("stream", name="stdout", text=text * n)


def test_a_cell_printing_200_mb_keeps_64_kib_and_says_so():
    cell = nbformat.v4.new_code_cell("print('y' * 200_000_000)")
    cell.outputs = [_stream(200 * MiB)]
    cut = cap_cell_outputs(cell)
    assert cut > 199 * MiB
    assert len(cell.outputs[0]["text"]) <= STREAM_LIMIT
    assert "characters of output cut by the grader" in cell.outputs[-1]["text"]
    assert cap_cell_outputs(cell) == 0  # a second pass cuts nothing more


def test_each_cell_is_capped_in_all():
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [_stream(60 * 1024) for _ in range(10)]
    cap_cell_outputs(cell)
    total = sum(len(o["text"]) for o in cell.outputs)
    assert total <= CELL_LIMIT and len(cell.outputs) < 10


def test_images_and_html_are_kept_whole_or_dropped_and_text_is_cut():
    big_png = "A" * (STREAM_LIMIT + 1)
    out = nbformat.v4.new_output("display_data", data={"image/png": big_png, "text/plain": "<Figure>"})
    html = nbformat.v4.new_output("execute_result", data={"text/html": "<b>" * STREAM_LIMIT, "text/plain": "t" * 100},
                                  execution_count=1)
    small = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"})
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [out, html, small]
    cap_cell_outputs(cell)
    assert cell.outputs[0]["data"] == {"text/plain": "<Figure>"}
    assert cell.outputs[1]["data"] == {"text/plain": "t" * 100}
    assert cell.outputs[2]["data"] == {"image/png": "iVBOR"}


def test_error_outputs_are_cleaned_and_capped():
    err = nbformat.v4.new_output("error", ename="ValueError\udc80", evalue="v" * 100_000,
                                 traceback=["\x1b[31mline\x1b[0m\x07"] * 10_000)
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [err]
    cap_cell_outputs(cell)
    e = cell.outputs[0]
    assert e["ename"] == "ValueError\ufffd" and len(e["evalue"]) <= 4000
    assert sum(len(t) for t in e["traceback"]) <= STREAM_LIMIT and "\x07" not in "".join(e["traceback"])
    assert "\x1b[31m" in e["traceback"][0]  # colours survive for the feedback's rendering


def test_the_notebook_file_is_capped_in_place(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(...)") for _ in range(3)])
    for c in nb.cells:
        c.outputs = [_stream(3 * MiB, "z\udc80")]
    p = tmp_path / "autograded.ipynb"
    p.write_text(json.dumps(nb), encoding="utf-8")  # json escapes the surrogate; nbformat.write could not
    assert cap_notebook_file(p) > 0
    assert p.stat().st_size < 3 * CELL_LIMIT + 10_000
    again = nbformat.read(str(p), as_version=4)
    assert "\udc80" not in again.cells[0].outputs[0]["text"]
    assert cap_notebook_file(tmp_path / "missing.ipynb") == -1  # never raises


def test_the_notebook_total_is_capped():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("p") for _ in range(8)])
    for c in nb.cells:
        c.outputs = [_stream(60 * 1024)]
    cap_outputs(nb, notebook_limit=200 * 1024)
    assert sum(len(o["text"]) for c in nb.cells for o in c.outputs) <= 200 * 1024 + 8 * 200


def test_feedback_caps_outputs_of_every_cell():
    cell = nbformat.v4.new_code_cell("print")
    cell.outputs = [_stream(1 * MiB)]
    ScrubHiddenTests().preprocess_cell(cell, {}, 0)
    assert len(cell.outputs[0]["text"]) <= STREAM_LIMIT


DEEP_CELLS = {
    "long sum": "x = " + "+".join(["1"] * 5000),  # RecursionError while building the tree
    "many minus": "x = " + "-" * 7000 + "1",  # MemoryError: the parser's stack
    "deep attribute": "x = a" + ".b" * 5000,
    "null byte": "x = 1\x00",
    "printable but too deep to unparse": "x = " + "+".join(["1"] * 900),
}


@pytest.mark.parametrize("name", sorted(DEEP_CELLS))
def test_a_cell_that_makes_the_parser_recurse_costs_that_cell_only(name):
    src = DEEP_CELLS[name]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src),
                                         nbformat.v4.new_code_cell("def f():\n    return 1\n")])
    cells = solution_cells(nb)
    assert cells[1].defines == {"f"}
    names_defined(src)
    problems = static_problems(src, forbidden_source=((r"torch\.sort", "no sorting"),))
    assert isinstance(problems, list)
    if name != "printable but too deep to unparse":
        assert problems and ("nested too deeply" in problems[0] or "syntax error" in problems[0]), problems


def test_what_a_sandbox_sends_with_null_notes_or_a_surrogate_is_graded():
    """The grader's side of a part: a note frame with ``notes: None`` or a string, a lone surrogate
    in the log and in an error, and no case at all — every case fails as not run, nothing crashes."""
    from effilab.grading import get, wire
    from effilab.grading.keys import Key
    from grader import verify

    ex = get("underflow_fraction")
    key = Key.hidden("secret", ex.name)
    plan = verify.Plan(0, "underflow_fraction_check", ex, "correctness", 1.0, [], key, ex.cases("hidden", key))
    for note in ({"notes": None}, {"notes": "raised \udc80 in a case"}, {"notes": [None, 3, "ok \ud800"]}):
        run = verify.PartRun([(verify.NOTE, wire.dumps(note))], {"status": "ok", "exit": 0, "log": "bad \udc80 log"})
        r = verify.judge(plan, run, 10.0, 10.0)
        assert r.points == 0 and "not run" in r.report
        r.report.encode("utf-8")  # no lone surrogate left: it can be stored and shown
    run = verify.PartRun([(verify.NOTE, wire.dumps({"error": "bad \udc80 error", "notes": None}))],
                         {"status": "ok", "exit": 0})
    r = verify.judge(plan, run, 10.0, 10.0)
    assert r.points == 0 and "bad" in r.report
    r.report.encode("utf-8")
