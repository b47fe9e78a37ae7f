"""Execute a notebook top to bottom as Jupyter would, and summarise what a grader cares about.

    python -m grader.execute NOTEBOOK [--save OUT.ipynb]

Prints each graded cell's points and every error or stderr output; exits 1 if any cell errored.
Used by the tests (solutions/ and the student edition run on CPU) and on the GPU machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Execution:
    seconds: float
    points: dict = field(default_factory=dict)  # grade_id -> (points shown, max points)
    errors: list = field(default_factory=list)  # (cell id, "Ename: value")
    stderr: list = field(default_factory=list)  # (cell id, text)
    outputs: dict = field(default_factory=dict)  # grade_id -> printed text
    nb: object = None


def execute(path: str | Path, timeout: int = 1800, cwd: str | None = None) -> Execution:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    t = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": cwd or str(Path(path).parent)}}).execute()
    ex = Execution(time.time() - t, nb=nb)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        meta = c.metadata.get("nbgrader", {})
        gid = meta.get("grade_id", f"cell {i}")
        text = []
        for o in c.outputs:
            if o.output_type == "error":
                ex.errors.append((gid, f"{o.ename}: {o.evalue}"[:500]))
            elif o.output_type == "stream":
                if o.name == "stderr":
                    ex.stderr.append((gid, o.text[:500]))
                else:
                    text.append(o.text)
            elif o.output_type == "execute_result" and meta.get("grade"):
                try:
                    ex.points[gid] = (float(o.data.get("text/plain", "nan")), float(meta.get("points", 0)))
                except ValueError:
                    ex.points[gid] = (float("nan"), float(meta.get("points", 0)))
        ex.outputs[gid] = "".join(text)
    return ex


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grader.execute")
    ap.add_argument("notebook")
    ap.add_argument("--save", help="write the executed notebook here")
    args = ap.parse_args(argv)
    ex = execute(args.notebook)
    print(f"executed {args.notebook} in {ex.seconds:.1f} s")
    for gid, (p, m) in ex.points.items():
        print(f"  {gid:32} {p:g} / {m:g}")
    for gid, e in ex.errors:
        print(f"  ERROR in {gid}: {e}")
    for gid, e in ex.stderr:
        print(f"  STDERR in {gid}: {e.strip()[:200]}")
    for gid, text in ex.outputs.items():
        if gid.endswith("_speed") or gid.startswith("demo_sr"):
            print(f"--- {gid}\n{text.strip()}")
    if args.save:
        import nbformat

        nbformat.write(ex.nb, args.save)
    return 1 if ex.errors else 0


if __name__ == "__main__":
    sys.exit(main())
