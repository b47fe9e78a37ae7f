"""Feedback without hidden tests.

nbgrader's autograde restores each test cell from the gradebook, hidden tests included, and its
feedback step renders that notebook. :class:`ScrubHiddenTests` runs last in feedback generation:
in every graded test cell it removes the ``### BEGIN/END HIDDEN TESTS`` region and replaces error
tracebacks (which quote the failing source line) with the error's one-line message. The checker's
printed report — which property failed, on which input, yours vs expected, how to fix it — stays.
It also applies the output caps of :mod:`grader.sanitize` to every cell (autograde applied them
already; a notebook autograded before they existed gets them here), so feedback never carries
200 MB of a student's prints or their terminal control characters.
"""
from __future__ import annotations

import re

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from .sanitize import cap_cell_outputs

HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.S | re.M)
PLACEHOLDER = "# (hidden tests ran here; their report is in the output below)\n"


def scrub_source(src: str) -> str:
    return HIDDEN.sub(PLACEHOLDER, src)


def _is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


class ScrubHiddenTests(Preprocessor):
    enabled = Bool(True).tag(config=True)  # nbconvert's preprocessors are off unless enabled

    def preprocess_cell(self, cell, resources, index):
        cap_cell_outputs(cell)
        if _is_test_cell(cell):
            cell.source = scrub_source(cell.source)
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources
