"""Helpers to write nbgrader *source* notebooks (solutions/NN_topic.ipynb) from Python.

Instructors usually edit solutions/ in JupyterLab with nbgrader's "Create Assignment" tool; these
helpers build the same cell metadata from a script, with stable cell ids so that a rebuild changes
only what was edited:

    from grader.authoring import md, code, solution, test, notebook, write
    cells = [md("# 09 — torch.compile", "intro"),
             code("import effilab\\n…", "setup_imports", locked=True),   # grade ids starting
             solution("def f(x):\\n    ### BEGIN SOLUTION\\n    …\\n    ### END SOLUTION", "f_solution"),
             test('result = check("f", f)\\nresult.points', "f_check", points=2)]
    write(notebook(cells, "09 — torch.compile"), "solutions/09_torch_compile.ipynb")

Conventions the grader relies on: the first code cell has grade id ``setup_imports`` (imports only);
a solution region sits inside a function body (the stub must not raise when the cell runs); a test
cell ends with ``check(...).points`` (no hidden-test block: the grade comes from the sandboxed run outside
the notebook, on inputs drawn from the course secret).
"""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def _meta(gid: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    m = {"grade": grade, "solution": solution, "locked": locked, "grade_id": gid, "schema_version": 3}
    if points is not None:
        m["points"] = points
    return m


def md(src: str, gid: str | None = None):
    c = new_markdown_cell(src.strip("\n"))
    if gid:
        c.metadata["nbgrader"] = _meta(gid, locked=True)
    return c


def code(src: str, gid: str | None = None, locked: bool = False):
    c = new_code_cell(src.strip("\n"))
    if gid:
        c.metadata["nbgrader"] = _meta(gid, locked=locked)
    return c


def solution(src: str, gid: str):
    c = new_code_cell(src.strip("\n"))
    c.metadata["nbgrader"] = _meta(gid, solution=True)
    return c


def test(src: str, gid: str, points: float):
    c = new_code_cell(src.strip("\n"))
    c.metadata["nbgrader"] = _meta(gid, grade=True, locked=True, points=points)
    return c


def notebook(cells, title: str):
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "effilab": {"title": title},
    }
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:03d}"
    return nb


def write(nb, path) -> None:
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
