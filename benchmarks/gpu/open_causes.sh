#!/usr/bin/env bash
# The measurements still owed to issues 11, 12 and 14, from the repository root on the GPU machine (after the
# .whl / bwrap preamble of benchmarks/RESULTS.md), each stage at most a few minutes:
#
#   bash benchmarks/gpu/open_causes.sh [STAGE …]     # everything in $OUT/open_causes.tgz
#
# Stages (default: dequant w4a16 host ops):
#   dequant    notebook 06's NF4 dequantize against variants of itself (benchmarks/gpu/nb06_dequant.py), then
#              ncu with the SpeedOfLight / MemoryWorkload / WarpState sections on the reference and the
#              no-lookup variant;
#   w4a16      the W4A16 sweep (its "heuristic default" rows time the defaults of effilab.ops.w4a16._config;
#              PyTorch's int4 tinygemm in the same table), then ncu with sections on the best M = 16 launch;
#   host       RMSNorm forward + backward outside the kernels (benchmarks/ops/rmsnorm_host.py), then the RMSNorm
#              benchmark alone (--quick, no torch.compile);
#   ops        pytest -m gpu tests/ops except the attention tests, on 4 workers;
#   attention  pytest -m gpu on the attention tests (forward and the Triton backward), the attention benchmark
#              with the backward's sweep, then ncu on the backward's kernels at B4 H32 S4096 D128;
#   grade      alice and bob graded out of the notebook, in the jail, for the assignments in $GRADE
#              (default 06_lora_qlora): benchmarks/gpu/grading_throughput.py.
# Each step has a time limit (seconds, overridable: DEQ_S NCU_S SWEEP_S HOST_S PYTEST_S BENCH_S) and the archive
# is rewritten after every step, so a cut call keeps what ran.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
R=$(mktemp -d /tmp/causes.XXXXXX)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}"
T0=$(date +%s)
DEQ_S=${DEQ_S:-70} NCU_S=${NCU_S:-60} SWEEP_S=${SWEEP_S:-100} HOST_S=${HOST_S:-60} PYTEST_S=${PYTEST_S:-210}
BENCH_S=${BENCH_S:-200} GRADE_S=${GRADE_S:-200} GRADE=${GRADE:-06_lora_qlora}
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; tar czf "$OUT/open_causes.tgz" -C "$R" . 2>/dev/null; }
run() {  # run LIMIT FILE CMD...: the command's output into $R/FILE, its exit status and tail on stdout
  local limit=$1 file=$2; shift 2
  timeout -k 5 "$limit" "$@" > "$R/$file" 2>&1
  echo "exit $? ($file)"; tail -4 "$R/$file"
}
workers() { python3 -c "import xdist" 2>/dev/null && echo "-n 4"; }
gpu_pytest() {  # gpu_pytest FILE ARGS...: pytest -m gpu, verbose (a cut run still lists what finished)
  local file=$1; shift
  run "$PYTEST_S" "$file" python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu $(workers) "$@" --durations=10
  grep -E "FAILED|ERROR" "$R/$file" | head -20
}

stage_dequant() {
  stamp "dequant: NF4 dequantize variants"
  run "$DEQ_S" nb06_dequant.md python3 benchmarks/gpu/nb06_dequant.py
  stamp "dequant: ncu"
  run "$NCU_S" nb06_dequant_ncu.txt $(python3 benchmarks/gpu/nb06_dequant.py --print-ncu)
}
stage_w4a16() {
  stamp "w4a16: sweep"
  run "$SWEEP_S" w4a16_sweep.md python3 benchmarks/gpu/w4a16_sweep.py --ncu
  stamp "w4a16: ncu M=16"
  run "$NCU_S" w4a16_m16_ncu.txt ncu --clock-control none --kernel-name regex:w4a16 --launch-skip 5 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section Occupancy --section LaunchStats --section InstructionStats \
    python3 benchmarks/gpu/w4a16_sweep.py --run-one dot,16,64,256,4,4,3,1 --shape 16,4096,4096
}
stage_host() {
  stamp "host: RMSNorm outside the kernels"
  run "$HOST_S" rmsnorm_host.txt python3 benchmarks/ops/rmsnorm_host.py
  stamp "host: the RMSNorm benchmark alone"
  run "$HOST_S" bench_rmsnorm.txt python3 benchmarks/ops/bench_rmsnorm.py --out "$R/bench" --quick --no-compile
}
stage_ops() {
  stamp "ops: pytest -m gpu tests/ops (attention excepted)"
  gpu_pytest pytest_gpu_ops.txt tests/ops --ignore=tests/ops/test_flash_attention.py \
    --ignore=tests/ops/test_flash_attention_bwd.py
}
stage_attention() {
  stamp "attention: pytest -m gpu"
  gpu_pytest pytest_gpu_attention.txt tests/ops/test_flash_attention.py tests/ops/test_flash_attention_bwd.py
  stamp "attention: benchmark"
  run "$BENCH_S" bench_flash_attention.txt python3 benchmarks/ops/bench_flash_attention.py --out "$R/bench" --no-compile --bwd-sweep-only
  stamp "attention: ncu on the backward"
  run "$NCU_S" flash_bwd_ncu.txt $(python3 benchmarks/gpu/flash_bwd_profile.py --print-ncu)
}
stage_grade() {
  stamp "grade: alice and bob, $GRADE"
  run "$GRADE_S" grading.txt python3 benchmarks/gpu/grading_throughput.py --students alice bob --assignments $GRADE \
    --out "$R/grading"
}

{
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  python3 -c "import bitsandbytes, liger_kernel, importlib.metadata as m; print('bitsandbytes', m.version('bitsandbytes'), 'liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv,noheader 2>&1
  ncu --version 2>&1 | tail -1
} | tee "$R/versions.txt"
for s in "${@:-dequant w4a16 host ops}"; do
  for t in $s; do "stage_$t"; done
done
stamp "done"
