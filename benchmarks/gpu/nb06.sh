#!/usr/bin/env bash
# Notebook 06 (LoRA, DoRA, QLoRA) on the GPU machine, from the repo root:
#   bash benchmarks/gpu/nb06.sh            # results under $OUT (default /tmp/effilab-gpu)
# (a) executes alice's filled-in notebook as a student runs it (points per graded cell, the speed and
#     memory reports, the fine-tune and the "when LoRA pays" sweep);
# (b) runs every speed and memory part of the reference solution 3x and prints the measured ratios,
#     to calibrate QUANT_SPEED_THRESHOLD, DEQUANT_SPEED_THRESHOLD (effilab/grading/specs/nb06_nf4.py),
#     FUSED_SPEED_THRESHOLD and QLORA_MEMORY_RATIO (effilab/grading/specs/nb06_qlora.py);
# (c) the benchmark table (benchmarks/gpu/nb06_table.py): the reference against bitsandbytes and peft
#     in the same run (TB/s, TFLOP/s, ms, GiB, bits/param) and the brief's targets, met or not;
# (d) the GPU-marked tests of tests/test_nb06_checkers.py (test_reference_earns_the_gpu_parts is (b) once more,
#     so it is left out here). About 3 minutes in all.
# Needs bitsandbytes (CUDA build) and peft; the nbgrader stack for (a) as wheels under /tmp/site.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys, bitsandbytes, peft; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'bitsandbytes', bitsandbytes.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" | tee "$OUT/nb06_versions.txt"

echo "== (a) notebook 06 filled in (alice), as a student runs it"
python3 - <<'PY' 2>&1 | grep -v IPKernelApp | tee "$OUT/nb06_alice_gpu.txt"
import sys
from grader.execute import execute
ex = execute("grader/examples/06_lora_qlora/alice_06_lora_qlora.ipynb", cwd="/tmp")
print(f"executed in {ex.seconds:.1f} s")
for gid, (p, m) in ex.points.items():
    print(f"  {gid:32} {p:g} / {m:g}")
for gid, e in ex.errors:
    print(f"  ERROR in {gid}: {e}")
for gid, e in ex.stderr:
    print(f"  STDERR in {gid}: {e.strip()[:300]}")
for gid, text in ex.outputs.items():
    if gid.endswith(("_speed", "_memory", "_check")) or gid in ("demo_bits", "demo_finetune", "demo_pays", "demo_fused"):
        print(f"--- {gid}\n{text.strip()}")
sys.exit(1 if ex.errors else 0)
PY

echo "== (b) speed and memory parts of the reference solution, 3 runs each (for the thresholds)"
python3 - <<'PY' 2>&1 | tee "$OUT/nb06_calibration.txt"
import time
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb06_nf4, nb06_qlora
ref = solution_namespace("solutions/06_lora_qlora.ipynb")
print("thresholds: quantize", nb06_nf4.QUANT_SPEED_THRESHOLD, "dequantize", nb06_nf4.DEQUANT_SPEED_THRESHOLD,
      "fused", nb06_qlora.FUSED_SPEED_THRESHOLD, "QLoRA memory ratio", nb06_qlora.QLORA_MEMORY_RATIO)
for name, part in [("nf4_quantize", "speed"), ("nf4_dequantize", "speed"), ("lora_linear", "speed"),
                   ("QLoRALinear", "memory")]:
    for run in range(3):
        t = time.time()
        v = check(name, ref[name], part, verbose=False)
        d = v.details
        if part == "speed":
            rate = f"{d['gbs']:.0f} GB/s" if d.get("gbs") else f"{d.get('tflops') or 0:.0f} TFLOP/s"
            print(f"{name:15} speed  run {run}: ratio {d.get('ratio', float('nan')):.2f}x  yours {d.get('yours_ms', float('nan')):.4f} ms"
                  f"  baseline {d.get('baseline_ms', float('nan')):.4f} ms  {rate}  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        else:
            print(f"{name:15} memory run {run}: ratio {d.get('ratio', float('nan')):.3f}  yours {d.get('yours_bytes', -1) / 2**30:.2f} GiB"
                  f"  baseline {d.get('baseline_bytes', -1) / 2**30:.2f} GiB  points {v.points}/{v.max_points}  ({time.time() - t:.0f} s)")
        if run == 0:
            print("    " + "\n    ".join(v.report().splitlines()[1:]))
PY

echo "== (c) the reference against bitsandbytes and peft (benchmarks/gpu/nb06_table.py)"
python3 benchmarks/gpu/nb06_table.py 2>&1 | tee "$OUT/nb06_table.txt"

echo "== (d) GPU-marked tests of tests/test_nb06_checkers.py (the four GPU parts ran three times in (b))"
python3 -m pytest -q -p no:cacheprovider -m gpu -k "not earns_the_gpu_parts" tests/test_nb06_checkers.py 2>&1 | tail -15 | tee "$OUT/nb06_pytest_gpu.txt"
