"""Build solutions/10_distributed.ipynb (the nbgrader source notebook of notebook 10).

    python solutions/build/10_distributed.py          # from the repository root

Then ``python -m grader release`` and ``python -m grader examples``. Cell ids are stable, so a
rebuild changes only what was edited. The cells are in ``nb10_cells.py`` (all-reduce, DDP,
exercise 1) and ``nb10_cells_b.py`` (ZeRO, no_sync, FSDP2, tensor and pipeline parallelism,
exercises 2–3).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from grader.authoring import notebook, write  # noqa: E402
from nb10_cells import CELLS as PART_A  # noqa: E402
from nb10_cells_b import CELLS as PART_B  # noqa: E402


def main() -> None:
    nb = notebook(PART_A + PART_B, "10 — Distributed training: DDP, ZeRO and FSDP")
    out = ROOT / "solutions" / "10_distributed.ipynb"
    write(nb, out)
    print(f"wrote {out} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
