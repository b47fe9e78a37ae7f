#!/usr/bin/env bash
# The measurements still owed to issues 11, 12 and 14, in one GPU call of at most ~9.5 minutes, from the
# repository root (after the .whl / bwrap preamble of benchmarks/RESULTS.md):
#
#   bash benchmarks/gpu/open_causes.sh        # everything in $OUT/open_causes.tgz
#
# 1. notebook 06's NF4 dequantize against variants of itself (benchmarks/gpu/nb06_dequant.py), then ncu
#    with the SpeedOfLight / MemoryWorkload / WarpState sections on the reference and the no-lookup variant;
# 2. the W4A16 sweep (its "heuristic default" rows time the defaults now in effilab.ops.w4a16._config),
#    then ncu with sections on the best M = 16 launch (the dot path that stays slower than dense bf16);
# 3. RMSNorm forward + backward outside the kernels (benchmarks/ops/rmsnorm_host.py);
# 4. pytest -m gpu tests/ops, attention tests excepted (they go with the Triton backward's run), on 4 workers.
# Each stage has a time limit (seconds, overridable: DEQ_S NCU_S SWEEP_S HOST_S PYTEST_S) and the archive
# is rewritten after every stage, so a cut call keeps what ran.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
R=$(mktemp -d /tmp/causes.XXXXXX)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}"
T0=$(date +%s)
DEQ_S=${DEQ_S:-70} NCU_S=${NCU_S:-60} SWEEP_S=${SWEEP_S:-100} HOST_S=${HOST_S:-45} PYTEST_S=${PYTEST_S:-210}
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; tar czf "$OUT/open_causes.tgz" -C "$R" . 2>/dev/null; }
run() {  # run LIMIT FILE CMD...: the command's output into $R/FILE, its exit status and tail on stdout
  local limit=$1 file=$2; shift 2
  timeout -k 5 "$limit" "$@" > "$R/$file" 2>&1
  echo "exit $? ($file)"; tail -4 "$R/$file"
}
{
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  python3 -c "import bitsandbytes, liger_kernel, importlib.metadata as m; print('bitsandbytes', m.version('bitsandbytes'), 'liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv,noheader 2>&1
  ncu --version 2>&1 | tail -1
} | tee "$R/versions.txt"

stamp "1. NF4 dequantize variants"
run "$DEQ_S" nb06_dequant.md python3 benchmarks/gpu/nb06_dequant.py
stamp "1b. ncu NF4 dequantize"
run "$NCU_S" nb06_dequant_ncu.txt $(python3 benchmarks/gpu/nb06_dequant.py --print-ncu)

stamp "2. W4A16 sweep"
run "$SWEEP_S" w4a16_sweep.md python3 benchmarks/gpu/w4a16_sweep.py --ncu
stamp "2b. ncu W4A16 M=16"
run "$NCU_S" w4a16_m16_ncu.txt ncu --clock-control none --kernel-name regex:w4a16 --launch-skip 5 --launch-count 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
  --section Occupancy --section LaunchStats --section InstructionStats \
  python3 benchmarks/gpu/w4a16_sweep.py --run-one dot,16,64,256,4,4,3,1 --shape 16,4096,4096

stamp "3. RMSNorm outside the kernels"
run "$HOST_S" rmsnorm_host.txt python3 benchmarks/ops/rmsnorm_host.py

stamp "4. pytest -m gpu tests/ops (attention excepted)"
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 4" || echo "")
run "$PYTEST_S" pytest_gpu_ops.txt python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu $workers tests/ops \
  --ignore=tests/ops/test_flash_attention.py --ignore=tests/ops/test_flash_attention_bwd.py --durations=10
grep -E "FAILED|ERROR" "$R/pytest_gpu_ops.txt" | head -20
stamp "done"
