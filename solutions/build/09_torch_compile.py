"""Build solutions/09_torch_compile.ipynb (the nbgrader source notebook of notebook 09).

    python solutions/build/09_torch_compile.py          # from the repository root

Then ``python -m grader release`` and ``python -m grader examples``. Cell ids are stable, so a
rebuild changes only what was edited. The cells themselves are in ``nb09_cells_a.py`` (sections
1–3, exercises 1–2) and ``nb09_cells_b.py`` (sections 4–6, exercises 3–4).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from grader.authoring import notebook, write  # noqa: E402
from nb09_cells_a import CELLS as PART_A  # noqa: E402
from nb09_cells_b import CELLS as PART_B  # noqa: E402


def main() -> None:
    nb = notebook(PART_A + PART_B, "09 — torch.compile")
    out = ROOT / "solutions" / "09_torch_compile.ipynb"
    write(nb, out)
    print(f"wrote {out} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
