#!/usr/bin/env bash
# Notebook 08 (operator fusion) on the GPU machine, from the repo root:
#   bash benchmarks/gpu/nb08.sh            # results under $OUT (default /tmp/effilab-gpu)
# 1. executes alice's filled-in notebook as a student runs it (points per graded cell, speed and
#    memory reports); 2. runs every speed/memory part of the reference solution 3x and prints the
#    measured ratios and bytes, to calibrate the thresholds of effilab/grading/specs/nb08.py;
# 3. the nb08 checkers on the GPU (bf16 groups, GPU shapes).
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/nb08_versions.txt"

echo "== notebook 08 filled in (alice), as a student runs it"
python3 - <<'PY' 2>&1 | grep -v IPKernelApp | tee "$OUT/nb08_alice_gpu.txt"
import sys
from grader.execute import execute
ex = execute("grader/examples/08_operator_fusion/alice_08_operator_fusion.ipynb", cwd="/tmp")
print(f"executed in {ex.seconds:.1f} s")
for gid, (p, m) in ex.points.items():
    print(f"  {gid:32} {p:g} / {m:g}")
for gid, e in ex.errors:
    print(f"  ERROR in {gid}: {e}")
for gid, e in ex.stderr:
    print(f"  STDERR in {gid}: {e.strip()[:300]}")
for gid, text in ex.outputs.items():
    if gid.endswith(("_speed", "_memory", "_check")) or gid.startswith("demo_worked"):
        print(f"--- {gid}\n{text.strip()}")
sys.exit(1 if ex.errors else 0)
PY

echo "== speed and memory parts of the reference solution, 3 runs each (for the thresholds)"
python3 - <<'PY' 2>&1 | tee "$OUT/nb08_calibration.txt"
import time
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb08
ref = solution_namespace("solutions/08_operator_fusion.ipynb")
print("thresholds: rms", nb08.RMS_SPEED_THRESHOLD, "swiglu", nb08.SWIGLU_SPEED_THRESHOLD,
      "attn", nb08.ATTN_SPEED_THRESHOLD, "ce memory fraction", nb08.CE_MEMORY_FRACTION,
      "attn memory factor", nb08.ATTN_MEMORY_FACTOR)
for name, part in [("rms_norm", "speed"), ("swiglu", "speed"), ("flash_attention", "speed"),
                   ("cross_entropy", "memory"), ("flash_attention", "memory")]:
    for run in range(3):
        t = time.time()
        v = check(name, ref[name], part, verbose=False)
        d = v.details
        if part == "speed":
            gbs = f"{d['gbs']:.0f} GB/s" if d.get("gbs") else ""
            tf = f"{d['tflops']:.1f} TFLOP/s" if d.get("tflops") else ""
            print(f"{name:16} speed  run {run}: ratio {d.get('ratio', float('nan')):.2f}x  yours "
                  f"{d.get('yours_ms', float('nan')):.3f} ms  baseline {d.get('baseline_ms', float('nan')):.3f} ms  "
                  f"{gbs}{tf}  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        else:
            print(f"{name:16} memory run {run}: peak {d.get('peak_bytes', -1) / 2**20:.1f} MiB  budget "
                  f"{d.get('budget_bytes', -1) / 2**20:.1f} MiB  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        if run == 0:
            print("    " + "\n    ".join(v.report().splitlines()[1:]))
# what the eager / naive baselines need, for the memory budgets
import torch
from effilab.memory import peak_memory
n, v = nb08.CE_MEMORY_SHAPE
x = torch.randn(n, v, device="cuda", dtype=torch.bfloat16); t = torch.randint(0, v, (n,), device="cuda")
print("F.cross_entropy(x.float()) extra peak MiB:", peak_memory(lambda: torch.nn.functional.cross_entropy(x.float(), t)).peak_bytes / 2**20)
PY

echo "== nb08 checkers on the GPU"
python3 -m pytest -q -p no:cacheprovider tests/test_nb08_checkers.py 2>&1 | tail -15 | tee "$OUT/nb08_pytest_gpu.txt"
