#!/usr/bin/env bash
# Notebook 05 (8-bit optimizers) on the GPU machine, from the repo root:
#   bash benchmarks/gpu/nb05.sh            # results under $OUT (default /tmp/effilab-gpu)
# (a) executes alice's filled-in notebook as a student runs it (points per graded cell, speed and
#     memory reports); (b) runs every speed/memory part of the reference solution 3x and prints the
#     measured ratios and bytes, to calibrate effilab/grading/specs/nb05*.py; (c) the benchmark table
#     (effilab vs bitsandbytes and torch, same run; benchmarks/gpu/nb05_bench.py); (d) the GPU-marked
#     tests of tests/test_nb05_checkers.py; (e) each bug of bugs.json on the GPU: the groups it loses.
# Budget: ~150 s on an H200. Every log goes to $OUT/nb05_*.txt.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys, bitsandbytes as b; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'bitsandbytes', b.__version__, torch.cuda.get_device_name())" 2>/dev/null | tee "$OUT/nb05_versions.txt"
SECONDS=0

echo "== (a) notebook 05 filled in (alice), as a student runs it"
python3 - <<'PY' 2>&1 | grep -v IPKernelApp | tee "$OUT/nb05_alice_gpu.txt"
import sys
from grader.execute import execute
ex = execute("grader/examples/05_8bit_optimizers/alice_05_8bit_optimizers.ipynb", cwd="/tmp")
print(f"executed in {ex.seconds:.1f} s")
for gid, (p, m) in ex.points.items():
    print(f"  {gid:32} {p:g} / {m:g}")
for gid, e in ex.errors:
    print(f"  ERROR in {gid}: {e}")
for gid, e in ex.stderr:
    print(f"  STDERR in {gid}: {e.strip()[:300]}")
for gid, text in ex.outputs.items():
    if gid.endswith(("_speed", "_memory")) or gid.startswith(("demo_quant_compare", "demo_your_optimizer", "demo_paged",
                                                              "demo_ablation", "demo_memory")):
        print(f"--- {gid}\n{text.strip()}")
sys.exit(1 if ex.errors else 0)
PY
echo "(a) took ${SECONDS} s"; SECONDS=0

echo "== (b) speed and memory parts of the reference solution, 3 runs each (for the thresholds)"
python3 - <<'PY' 2>&1 | tee "$OUT/nb05_calibration.txt"
import time
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb05, nb05_optim
ref = solution_namespace("solutions/05_8bit_optimizers.ipynb")
print("thresholds: quantize speed", nb05.QUANT_SPEED_THRESHOLD, "× bnb; adamw8bit speed", nb05_optim.ADAM_SPEED_THRESHOLD,
      "× bnb; adamw8bit memory", nb05_optim.ADAM_MEMORY_FRACTION, "× fp32 param bytes")
for name, part in [("quantize_blockwise", "speed"), ("adamw8bit_step", "speed"), ("adamw8bit_step", "memory")]:
    for run in range(3):
        t = time.time()
        v = check(name, ref[name], part, verbose=False)
        d = v.details
        if part == "speed":
            gbs = f"{d['gbs']:.0f} GB/s" if d.get("gbs") else ""
            print(f"{name:20} speed  run {run}: ratio {d.get('ratio', float('nan')):.2f}x  yours "
                  f"{d.get('yours_ms', float('nan')):.3f} ms  baseline {d.get('baseline_ms', float('nan')):.3f} ms  {gbs}  "
                  f"own share {d.get('own_share')}  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        else:
            print(f"{name:20} memory run {run}: peak {d.get('peak_bytes', -1) / 2**20:.1f} MiB  budget "
                  f"{d.get('budget_bytes', -1) / 2**20:.1f} MiB  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        if run == 0 or v.points < v.max_points:
            print("    " + "\n    ".join(v.report().splitlines()[1:]))
PY
echo "(b) took ${SECONDS} s"; SECONDS=0

echo "== (c) benchmark table: effilab vs bitsandbytes and torch, same run"
python3 benchmarks/gpu/nb05_bench.py --out "$OUT/nb05_bench.json" 2>&1 | tee "$OUT/nb05_bench.txt"
echo "(c) took ${SECONDS} s"; SECONDS=0

echo "== (d) GPU tests of tests/test_nb05_checkers.py"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_nb05_checkers.py 2>&1 | tail -15 | tee "$OUT/nb05_pytest_gpu.txt"
echo "(d) took ${SECONDS} s"; SECONDS=0

echo "== (e) bob's mistakes on the GPU: the groups each one loses (expected: bugs.json)"
python3 - <<'PY' 2>&1 | tee "$OUT/nb05_bugs_gpu.txt"
import json
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
bugs = json.load(open("grader/examples/05_8bit_optimizers/bugs.json"))
for b in bugs:
    ns = solution_namespace("solutions/05_8bit_optimizers.ipynb", {b["cell"]: (b["old"], b["new"])})
    v = check(b["exercise"], ns[b["exercise"]], verbose=False)
    lost = sorted(g.name for g in v.groups if not g.passed)
    print(f"{'OK  ' if lost == sorted(b['lost']) and v.points == b['points'] else 'DIFF'} {b['exercise']:20} "
          f"{v.points:g} / {v.max_points:g} (expected {b['points']:g})  {b['why'][:70]}")
    if lost != sorted(b["lost"]):
        print("     lost on the GPU:", lost)
PY
echo "(e) took ${SECONDS} s"
