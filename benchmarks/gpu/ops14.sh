#!/usr/bin/env bash
# Issue 14 on the GPU machine (an H200), from the repo root, in one call of at most ~9 minutes:
#
#   bash benchmarks/gpu/ops14.sh          # everything in $OUT/ops14.tgz (OUT default /tmp/effilab-gpu)
#
# 1. benchmarks/ops/run_all.sh --quick (deadline 260 s, killed at 275 s): every kernel against Liger-Kernel (when
#    importable: install its wheel to /tmp/site and put that on PYTHONPATH first), torch.compile,
#    F.rms_norm, the cuDNN / flash / efficient SDPA backends, the RMSNorm backward variants' sweep
#    and the CUDA C++ RMSNorm v1-v3; summary.md starts with the side-by-side table (floor, fraction
#    of floor, target met or not);
# 2. pytest -m gpu tests/ops (limits: 45 s for test_rmsnorm.py, 70 s for the others), slowest listed;
# 3. Nsight Compute (--clock-control none, limit 85 s) on the kernels with a gap: RMSNorm forward and
#    backward (default and one blocked variant), cross-entropy, attention forward; sections
#    SpeedOfLight, Occupancy, LaunchStats, MemoryWorkloadAnalysis, WarpStateStats,
#    ComputeWorkloadAnalysis plus DRAM/SM throughput, warps active, occupancy limits, L2 hit rate
#    and the tensor-pipe counters this ncu knows; exported as CSV next to the .ncu-rep.
# Everything goes to one directory $R, archived as $OUT/ops14.tgz (the machine returns few files).
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
R=${R:-$(mktemp -d /tmp/ops14.XXXXXX)}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}"
T0=$(date +%s)
# stage limits in seconds (defaults: the ~9-minute call; smaller ones for a shorter call)
BENCH_S=${BENCH_S:-260} PYTEST_RMS_S=${PYTEST_RMS_S:-45} PYTEST_OTHER_S=${PYTEST_OTHER_S:-70} NCU_S=${NCU_S:-85}
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; tar czf "$OUT/ops14.tgz" -C "$R" . 2>/dev/null; }  # (archived at every stage: a cut call keeps what ran)
{
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  python3 -c "import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
  ncu --version 2>&1 | tail -1
} | tee "$R/versions.txt"

stamp "1. benchmarks/ops/run_all.sh --quick"
timeout -k 5 $((BENCH_S + 15)) bash benchmarks/ops/run_all.sh --out "$R/bench" --quick --deadline $BENCH_S > /dev/null 2>&1
echo "run_all exit $?"
sed -n '/^## Side by side/,/^## RMSNorm/p' "$R/bench/summary.md" 2>/dev/null | head -40

stamp "2. pytest -m gpu tests/ops"
# (verbose: a run stopped by its limit still shows every test that finished)
timeout -k 5 $PYTEST_RMS_S python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu tests/ops/test_rmsnorm.py \
  --durations=8 > "$R/pytest_gpu_rmsnorm.txt" 2>&1
echo "pytest rmsnorm exit $?"
timeout -k 5 $PYTEST_OTHER_S python3 -m pytest -v --tb=short -p no:cacheprovider -m gpu tests/ops --ignore=tests/ops/test_rmsnorm.py \
  --durations=10 > "$R/pytest_gpu_others.txt" 2>&1
echo "pytest others exit $?"
grep -hE "FAILED|ERROR|passed|failed" "$R"/pytest_gpu_*.txt | tail -30

stamp "3. ncu --clock-control none"
METRICS=dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed
METRICS=$METRICS,sm__warps_active.avg.pct_of_peak_sustained_active,lts__t_sector_hit_rate.pct
METRICS=$METRICS,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem
METRICS=$METRICS,launch__occupancy_limit_warps,launch__occupancy_limit_blocks,launch__registers_per_thread
METRICS=$METRICS,gpu__time_duration.sum
# tensor-pipe counters under the names this ncu uses (Hopper: gmma; older: hmma)
TENSOR=$(timeout 10 ncu --query-metrics 2>/dev/null | awk '{print $1}' \
  | grep -E '^sm__(pipe_tensor_op_(gmma|hmma)_cycles_active|inst_executed_pipe_tensor_op_(gmma|hmma))$' \
  | sed 's/$/.avg.pct_of_peak_sustained_active/' | paste -sd, -)
[ -n "$TENSOR" ] && METRICS=$METRICS,$TENSOR
echo "metrics: $METRICS" > "$R/ncu_metrics.txt"
KERNELS=$(sed -n 's/^KERNELS = r"\(.*\)"$/\1/p' benchmarks/gpu/ops14_profile.py)
timeout -k 5 $NCU_S ncu --clock-control none -k "regex:$KERNELS" -c 6 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section ComputeWorkloadAnalysis --metrics "$METRICS" \
  -o "$R/ops14_profile" -f python3 benchmarks/gpu/ops14_profile.py > "$R/ncu_run.txt" 2>&1
echo "ncu exit $?"
grep -E '^\[|FAILED|ERROR' "$R/ncu_run.txt" | head -20
if [ -f "$R/ops14_profile.ncu-rep" ]; then
  timeout 15 ncu --import "$R/ops14_profile.ncu-rep" --page raw --csv > "$R/ncu_raw.csv" 2>&1
  timeout 15 ncu --import "$R/ops14_profile.ncu-rep" --page details > "$R/ncu_details.txt" 2>&1
  # the headline counters, one line per kernel
  python3 - "$R/ncu_raw.csv" <<'PY' | tee "$R/ncu_summary.txt"
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if head is None:
    sys.exit("no kernels in the ncu export")
cols = rows[head]
want = ["Kernel Name", "gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm__warps_active.avg.pct_of_peak_sustained_active",
        "lts__t_sector_hit_rate.pct", "launch__registers_per_thread", "launch__occupancy_limit_registers",
        "launch__occupancy_limit_shared_mem", "launch__occupancy_limit_warps", "launch__grid_size",
        "launch__block_size"] + [c for c in cols if "tensor_op" in c]
idx = [cols.index(c) for c in want if c in cols]
print(" | ".join(cols[i] for i in idx))
first = cols.index("ID") if "ID" in cols else None
for r in rows[head + 1:]:  # (the row after the header holds the units)
    if len(r) == len(cols) and (first is None or r[first].strip().isdigit()):
        print(" | ".join(r[i] for i in idx))
PY
fi

stamp "done"
tar czf "$OUT/ops14.tgz" -C "$R" .
ls -la "$OUT/ops14.tgz"
