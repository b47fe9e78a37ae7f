#!/usr/bin/env bash
# Notebook 02 (mixed precision) on the course GPU, from the repo root:
#   bash benchmarks/gpu/nb02.sh            # results under $OUT (default /tmp/effilab-gpu)
# 1. executes the filled-in example notebook (alice) top to bottom, as a student runs it;
# 2. repeats the speed verdict of exercise 3 (bf16 autocast step vs fp32 step, gpu-real, batch
#    16x1024) three times and prints the measured ratios: calibrate BF16_SPEED_THRESHOLD in
#    effilab/grading/specs/nb02.py (and benchmarks/RESULTS.md) from them;
# 3. runs notebook 02's checker tests on the GPU (reference solution: full correctness).
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/nb02_versions.txt"
echo "== notebooks/02 filled in (alice), as a student runs it"
python3 -m grader.execute grader/examples/02_mixed_precision/alice_02_mixed_precision.ipynb \
    --save "$OUT/nb02_alice_executed.ipynb" 2>&1 | grep -v IPKernelApp | tee "$OUT/nb02_gpu.txt"
echo "== speed verdict of bf16_train_step, 3 repeats"
python3 - <<'PY' 2>&1 | tee "$OUT/nb02_speed.txt"
import json, os, time
import effilab  # noqa: F401
import torch
from effilab.grading import check
from effilab.grading.nbcode import code_cells, exec_cells, load_notebook
from effilab.grading.specs import nb02

nb = load_notebook("grader/examples/02_mixed_precision/alice_02_mixed_precision.ipynb")
ns = exec_cells(code_cells(nb, lambda c: c.metadata.get("nbgrader", {}).get("grade_id") in
                           ("setup_imports", "bf16_train_step_solution")), label="alice")
rows = []
for i in range(3):
    t = time.time()
    v = check("bf16_train_step", ns["bf16_train_step"], "speed", verbose=(i == 0))
    d = v.details
    rows.append({k: d.get(k) for k in ("ratio", "yours_ms", "baseline_ms", "yours_spread", "baseline_spread", "tflops")}
                | {"points": v.points, "seconds": time.time() - t})
    print(f"repeat {i + 1}: ratio {d.get('ratio', float('nan')):.2f}x  bf16 {d.get('yours_ms', float('nan')):.1f} ms  "
          f"fp32 {d.get('baseline_ms', float('nan')):.1f} ms  points {v.points:g}/{v.max_points:g}  ({time.time() - t:.0f} s)")
    torch.cuda.empty_cache()
ratios = [r["ratio"] for r in rows if r["ratio"]]
print(f"threshold now {nb02.BF16_SPEED_THRESHOLD:g}x; measured ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
      f"min {min(ratios):.2f}x" if ratios else "no ratio measured")
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp/effilab-gpu"), "nb02_speed.json"), "w"), indent=1)
PY
echo "== notebook 02 checker tests on the GPU"
python3 -m pytest -q -p no:cacheprovider tests/test_nb02_checkers.py 2>&1 | tail -8 | tee "$OUT/nb02_pytest_gpu.txt"
