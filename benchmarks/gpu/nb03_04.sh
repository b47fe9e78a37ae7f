#!/usr/bin/env bash
# Notebooks 03 (gradient checkpointing) and 04 (gradient accumulation) on the GPU machine, from the
# repo root:
#   bash benchmarks/gpu/nb03_04.sh            # results under $OUT (default /tmp/effilab-gpu)
# 1. executes alice's filled-in notebooks with `python3 -m grader.execute` (points per graded cell),
#    then prints the memory/speed reports and the demo tables of the executed notebooks; 2. runs the memory and speed parts of the
#    reference solutions 3x and prints memory ratios, time overheads and verdicts, to calibrate
#    MEMORY_RATIO / TIME_OVERHEAD (specs/nb03.py) and MEMORY_BUDGET (specs/nb04.py);
# 3. the nb03/nb04 checkers on the GPU (tiny GPT on CUDA: CUDA RNG replay, tolerances).
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/nb03_04_versions.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/nb03_04_versions.txt"

for NB in 03_gradient_checkpointing 04_gradient_accumulation; do
  echo "== notebook $NB filled in (alice): python3 -m grader.execute"
  python3 -m grader.execute "grader/examples/$NB/alice_$NB.ipynb" --save "$OUT/alice_${NB}_gpu.ipynb" 2>&1 | grep -v IPKernelApp | tee "$OUT/nb${NB:0:2}_alice_gpu.txt"
  python3 - "$OUT/alice_${NB}_gpu.ipynb" <<'PY' 2>&1 | tee -a "$OUT/nb${NB:0:2}_alice_gpu.txt"
import sys
import nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
for c in nb.cells:   # the memory/speed reports and the before/after tables, from the executed notebook
    gid = c.metadata.get("nbgrader", {}).get("grade_id", "")
    if c.cell_type == "code" and (gid.endswith(("_memory_check", "_speed")) or gid in (
            "demo_where", "demo_selective", "demo_memory", "demo_compare")):
        text = "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
        print(f"--- {gid}\n{text.strip()}")
PY
done

echo "== memory ratios, time overheads and verdicts of the reference solutions, 3 runs each"
python3 - <<'PY' 2>&1 | tee "$OUT/nb03_04_calibration.txt"
import time
import torch
from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs import nb03, nb04
r3 = solution_namespace("solutions/03_gradient_checkpointing.ipynb")
r4 = solution_namespace("solutions/04_gradient_accumulation.ipynb")
print(f"thresholds: nb03 memory ratio <= {nb03.MEMORY_RATIO:.3f} ({nb03.GPU_PRESET}, batch {nb03.GPU_BATCH}), "
      f"time overhead <= {nb03.TIME_OVERHEAD:.0%}; nb04 memory budget <= {nb04.MEMORY_BUDGET} "
      f"({nb04.GPU_PRESET}, {nb04.GPU_BATCH}x{nb04.GPU_LEN}, {nb04.N_MICRO} micro-batches)")
for i in range(3):
    for name, fn, part in [("checkpointed_blocks", r3["checkpointed_blocks"], "memory"),
                           ("checkpointed_blocks", r3["checkpointed_blocks"], "speed"),
                           ("accumulate_gradients", r4["accumulate_gradients"], "memory")]:
        t = time.time()
        v = check(name, fn, part, seed=i, verbose=False)
        d = v.details
        extra = ""
        if part == "speed" and "ratio" in d:
            extra = (f"yours {d['yours_ms']:.1f} ms, plain {d['baseline_ms']:.1f} ms, overhead {100 * d['overhead']:.1f} %")
        elif "ratio" in d:
            extra = f"yours {d['yours_bytes'] / 2**30:.3f} GiB, plain {d['baseline_bytes'] / 2**30:.3f} GiB, ratio {d['ratio']:.3f}"
        print(f"run {i} {name:21} {part:7} {v.points:g}/{v.max_points:g}  {extra}  ({time.time() - t:.1f} s)")
        if not v.passed:
            print("   " + v.report().replace("\n", "\n   "))
# the same model without segments: one checkpoint per block (for the README / RESULTS numbers)
from effilab.grading.specs.nb03 import _gpt_step, _with_blocks
from effilab.models.gpt import GPT, GPTConfig
from effilab.memory import peak_memory
from effilab import bench
cfg = GPTConfig.preset("gpu-deep16")
m = GPT(cfg).cuda().train()
x = torch.randint(0, 256, (8, 1024), device="cuda"); y = torch.randint(0, 256, (8, 1024), device="cuda")
m.zero_grad(set_to_none=False)
def step(run):
    def go():
        _with_blocks(m, run)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m(x, y)[1].backward()
    return go
ck = r3["checkpointed_blocks"]
for label, run in [("plain", None), ("every block", lambda mod, h: ck(mod, h, [(i, i + 1) for i in range(16)])),
                   ("sqrt(L) = 4 segments", lambda mod, h: ck(mod, h, nb03.reference_segments(16))),
                   ("2 segments", lambda mod, h: ck(mod, h, [(0, 8), (8, 16)]))]:
    mem = peak_memory(step(run)).peak_bytes
    t = bench.time_fn(step(run), max_time_s=3.0)
    print(f"gpu-deep16 8x1024 bf16 {label:22} peak {mem / 2**30:6.2f} GiB  {t.median_ms:7.1f} ms/step")
PY

echo "== nb03/nb04 checkers on the GPU"
python3 -m pytest -q -p no:cacheprovider tests/test_nb03_checkers.py tests/test_nb04_checkers.py 2>&1 | tail -15 | tee "$OUT/nb03_04_pytest_gpu.txt"
