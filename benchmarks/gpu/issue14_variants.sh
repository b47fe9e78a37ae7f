#!/usr/bin/env bash
# Issue 14, fifth 2026-12-02 session: the launch variants against their anchors, in one call (~5 min):
#
#   bash benchmarks/gpu/issue14_variants.sh      # everything in $OUT/variants.tgz (OUT default /tmp/effilab-gpu)
#
# 1. bench_cross_entropy.py --quick: the default, the persistent / reversed / L2-hinted / pipelined
#    launches of CONFIGS, Liger-Kernel and a copy of the logits (the same-run one-pass anchor);
# 2. bench_flash_attention.py --quick --fwd-only: the forward with the rotated loop (PIPELINE_CONFIGS)
#    next to the default, TMA, SDPA flash and cuDNN;
# 3. bench_rmsnorm.py --quick --no-sweep: the forward against a same-run copy of x (its anchor);
# 4. ncu --clock-control none on ops14_profile.py with OPS14_VARIANTS=1: DRAM bytes, L2 hit rate and
#    the tensor pipe of the variants against the defaults.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
R=${R:-$(mktemp -d /tmp/variants.XXXXXX)}; mkdir -p "$R"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}"
T0=$(date +%s)
CE_S=${CE_S:-110} FA_S=${FA_S:-110} RMS_S=${RMS_S:-40} NCU_S=${NCU_S:-90}
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; tar czf "$OUT/variants.tgz" -C "$R" . 2>/dev/null; }
{
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  python3 -c "import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
  ncu --version 2>&1 | tail -1
} | tee "$R/versions.txt"
cd benchmarks/ops
stamp "1. cross-entropy"
timeout -k 5 $CE_S python3 bench_cross_entropy.py --out "$R" --quick > "$R/bench_cross_entropy.txt" 2>&1; echo "exit $?"
grep -E "anchor|effilab|liger|FAIL" "$R/bench_cross_entropy.txt" | grep -v "^- " | head -30
stamp "2. attention forward"
timeout -k 5 $FA_S python3 bench_flash_attention.py --out "$R" --quick --fwd-only > "$R/bench_flash_attention.txt" 2>&1; echo "exit $?"
grep -E "^\| (effilab|SDPA)|FAIL" "$R/bench_flash_attention.txt" | head -40
stamp "3. RMSNorm forward against a same-run copy"
timeout -k 5 $RMS_S python3 bench_rmsnorm.py --out "$R" --quick --no-sweep > "$R/bench_rmsnorm.txt" 2>&1; echo "exit $?"
grep -E "^\| .*\| fwd \||FAIL" "$R/bench_rmsnorm.txt" | head -10
cd ../..
stamp "4. ncu on the variants"
METRICS=dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum
METRICS=$METRICS,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active
METRICS=$METRICS,launch__registers_per_thread,gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed
TENSOR=$(timeout 10 ncu --query-metrics 2>/dev/null | awk '{print $1}' \
  | grep -E '^sm__pipe_tensor_op_(gmma|hmma)_cycles_active$' | sed 's/$/.avg.pct_of_peak_sustained_active/' | paste -sd, -)
[ -n "$TENSOR" ] && METRICS=$METRICS,$TENSOR
KERNELS=$(sed -n 's/^KERNELS = r"\(.*\)"$/\1/p' benchmarks/gpu/ops14_profile.py)
OPS14_VARIANTS=1 timeout -k 5 $NCU_S ncu --clock-control none -k "regex:$KERNELS" -c 9 --metrics "$METRICS" \
  --csv --page raw python3 benchmarks/gpu/ops14_profile.py > "$R/ncu_variants.csv" 2> "$R/ncu_variants.err"
echo "ncu exit $?"
python3 - "$R/ncu_variants.csv" <<'PY' | tee "$R/ncu_variants.txt"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if head is None:
    sys.exit("no kernels in the ncu export")
cols = rows[head]
names = [c for c in cols if c.split(".")[0] in ("dram__throughput", "dram__bytes_read", "dram__bytes_write",
         "lts__t_sector_hit_rate", "sm__warps_active", "launch__registers_per_thread", "gpu__time_duration",
         "sm__throughput", "sm__pipe_tensor_op_gmma_cycles_active", "sm__pipe_tensor_op_hmma_cycles_active")]
print(" | ".join(["#"] + [n.split(".")[0] for n in names]))
for r in rows[head + 1:]:
    d = dict(zip(cols, r))
    if not d.get("ID", "").isdigit():  # (the units row)
        continue
    print(" | ".join([d["ID"]] + [d.get(n, "") for n in names]))
PY
grep -E "^\[" "$R/ncu_variants.csv" "$R/ncu_variants.err" | head -12
stamp "done"
