#!/usr/bin/env bash
# Issue "foundation" on the GPU machine, from the repo root, with the wheels of
# ../shared/gpu/wheelhouse.sh in .whl/ (nbgrader stack, bitsandbytes):
#   bash benchmarks/gpu/foundation.sh            # results under $OUT (default /tmp/effilab-gpu)
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/versions.txt"
echo "== core: timers, copy bandwidth, matmul peak"; python3 benchmarks/core_gpu_check.py 2>&1 | tee "$OUT/core_gpu_check.txt"
echo "== stochastic rounding benchmark"; python3 benchmarks/bench_stochastic_round.py --out "$OUT"
echo "== GPU tests"; python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_device.py tests/test_bench.py tests/test_memory.py tests/test_nb01_checkers.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt"
echo "== notebooks/01 filled in, as a student runs it"; python3 -m grader.execute grader/examples/01_float_formats/alice_01_float_formats.ipynb 2>&1 | tee "$OUT/nb01_gpu.txt"
echo "== autograde the example submissions"
C=/tmp/effilab-course; rm -rf "$C"
python3 -m grader --course "$C" collect grader/examples/01_float_formats
python3 -m grader --course "$C" autograde 2>&1 | grep -v IPKernelApp | tee "$OUT/autograde_gpu.txt"
python3 -m grader --course "$C" feedback 2>&1 | grep -v IPKernelApp
python3 -m grader --course "$C" export --csv "$OUT/grades_gpu.csv"
cp "$C/feedback/alice/01_float_formats/01_float_formats.html" "$OUT/feedback_alice_gpu.html" 2>/dev/null
grep -o "stochastic_round_bf16 \[speed\][^<]*" "$C/feedback/alice/01_float_formats/01_float_formats.html" | head -3
