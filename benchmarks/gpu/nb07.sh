#!/usr/bin/env bash
# Notebook 07 (quantization) on the GPU machine, from the repo root:
#   bash benchmarks/gpu/nb07.sh            # results under $OUT (default /tmp/effilab-gpu)
# (a) executes alice's filled-in notebook as a student runs it (points per graded cell);
# (b) runs the W4A16 speed part of the reference solution 3x and prints the measured ratios, to
#     calibrate W4A16_SPEED_THRESHOLD in effilab/grading/specs/nb07.py;
# (c) the kernel table: effilab's W4A16 (every launch config of effilab.ops.w4a16.CONFIGS) against
#     bf16 torch.matmul, bitsandbytes gemv_4bit (NF4) and torchao's int4 weight-only path where it
#     runs, at 1x4096x4096 and 16x4096x4096 (µs, GB/s, bytes/param), plus the perplexity table;
# (d) the GPU-marked tests of tests/test_nb07_checkers.py.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/nb07_versions.txt"

echo "== (a) notebook 07 filled in (alice), as a student runs it"
python3 - <<'PY' 2>&1 | grep -v IPKernelApp | tee "$OUT/nb07_alice_gpu.txt"
import sys
from grader.execute import execute
ex = execute("grader/examples/07_quantization/alice_07_quantization.ipynb", cwd="/tmp")
print(f"executed in {ex.seconds:.1f} s")
for gid, (p, m) in ex.points.items():
    print(f"  {gid:32} {p:g} / {m:g}")
for gid, e in ex.errors:
    print(f"  ERROR in {gid}: {e}")
for gid, e in ex.stderr:
    print(f"  STDERR in {gid}: {e.strip()[:300]}")
for gid, text in ex.outputs.items():
    if gid.endswith(("_speed", "_check")) or gid in ("demo_model", "demo_ppl", "demo_w4a16_bench", "demo_gptq"):
        print(f"--- {gid}\n{text.strip()}")
sys.exit(1 if ex.errors else 0)
PY

echo "== (b) speed part of the reference solution, 3 runs (for the threshold)"
python3 - <<'PY' 2>&1 | tee "$OUT/nb07_calibration.txt"
import time
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb07
ref = solution_namespace("solutions/07_quantization.ipynb")
print("threshold:", nb07.W4A16_SPEED_THRESHOLD, "shape (M, N, K):", nb07.W4A16_SPEED_SHAPE)
for run in range(3):
    t = time.time()
    v = check("w4a16_matmul", ref["w4a16_matmul"], "speed", verbose=False)
    d = v.details
    print(f"w4a16_matmul speed run {run}: ratio {d.get('ratio', float('nan')):.2f}x  yours {d.get('yours_ms', float('nan')) * 1e3:.2f} us"
          f"  baseline {d.get('baseline_ms', float('nan')) * 1e3:.2f} us  wall {d.get('wall_ms', float('nan')) * 1e3:.2f} us"
          f"  {d.get('gbs') or 0:.0f} GB/s  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
    if run == 0:
        print("    " + "\n    ".join(v.report().splitlines()[1:]))
PY

echo "== (c) kernel table and perplexity table"
python3 benchmarks/gpu/nb07_table.py 2>&1 | tee "$OUT/nb07_table.txt"

echo "== (d) nb07 checkers on the GPU"
python3 -m pytest -q -p no:cacheprovider tests/test_nb07_checkers.py 2>&1 | tail -15 | tee "$OUT/nb07_pytest_gpu.txt"
