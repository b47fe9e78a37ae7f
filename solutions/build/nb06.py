"""Build solutions/06_lora_qlora.ipynb (the nbgrader source notebook) from this script.

    python solutions/build/nb06.py      # from the repository root

Cell ids are stable (grader.authoring numbers them in order), so a rebuild changes only what was
edited here. Then ``python -m grader release`` and ``python -m grader examples``.
"""
from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from grader.authoring import notebook, write  # noqa: E402

import nb06_cells_lora  # noqa: E402
import nb06_cells_nf4  # noqa: E402
import nb06_cells_qlora  # noqa: E402

CELLS = nb06_cells_lora.CELLS + nb06_cells_nf4.CELLS + nb06_cells_qlora.CELLS

if __name__ == "__main__":
    out = ROOT / "solutions" / "06_lora_qlora.ipynb"
    write(notebook(CELLS, "06 — LoRA, DoRA and QLoRA from scratch"), out)
    print(f"wrote {out} ({len(CELLS)} cells)")
