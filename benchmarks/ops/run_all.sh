#!/usr/bin/env bash
# Run every benchmarks/ops script on a CUDA GPU and collect the results.
#
#   bash benchmarks/ops/run_all.sh [--out DIR] [--deadline S] [--quick] [--no-compile] [--no-sweep] [--rep MS]
#
# --deadline S: stop every script by S seconds after the start (each gets what is left, less 15 s
# for each script after it); a stopped script's table keeps the rows it measured.
# Writes DIR/summary.md (the side-by-side table of summarize.py, then every script's table),
# DIR/<op>.png (one plot per script) and DIR/run_all.log: seven files in all. Other options are
# passed to every script. About 6-8 minutes on an H100; --quick (30 ms budgets, trimmed sweeps) is
# meant to take about 4; --no-compile and --no-sweep make it shorter still. The CUDA C++ extension
# of bench_cuda_rmsnorm.py is built in the background while the Triton benchmarks run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/benchmarks/results"
EXTRA=()
DEADLINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --deadline) DEADLINE="$2"; shift 2 ;;
    --deadline=*) DEADLINE="${1#--deadline=}"; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/run_all.log") 2>&1

PY=${PYTHON:-python3}
PARTS=$(mktemp -d)
SCRIPTS="rmsnorm swiglu cross_entropy flash_attention cuda_rmsnorm"
cd "$ROOT"
echo "effilab.ops benchmarks -> $OUT ($(date -u))"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"

( $PY -c "import effilab.ops.cuda_rmsnorm as m; m.load_extension()" > "$PARTS/cuda_build.log" 2>&1 ) &
BUILD_PID=$!

status=0
t_all=$(date +%s)
left=$(echo $SCRIPTS | wc -w)
for s in $SCRIPTS; do
  left=$((left - 1))
  TIMEOUT=()
  if [ "$DEADLINE" -gt 0 ]; then
    budget=$(( DEADLINE - ($(date +%s) - t_all) - 15 * left ))
    [ "$budget" -lt 10 ] && budget=10
    TIMEOUT=(timeout -k 5 "$budget")
  fi
  if [ "$s" = cuda_rmsnorm ]; then
    wait "$BUILD_PID" || { echo "CUDA extension build failed:"; tail -30 "$PARTS/cuda_build.log"; }
  fi
  echo
  echo "=== bench_$s"
  t0=$(date +%s)
  PYTHONUNBUFFERED=1 ${TIMEOUT[@]+"${TIMEOUT[@]}"} $PY "$HERE/bench_$s.py" --out "$PARTS" ${EXTRA[@]+"${EXTRA[@]}"} \
    || { rc=$?; [ "$rc" = 124 ] && echo "=== bench_$s STOPPED at the deadline (partial table)"; echo "=== bench_$s FAILED (exit $rc)"; status=1; }
  echo "=== bench_$s took $(( $(date +%s) - t0 )) s"
done

{
  echo "# effilab.ops benchmarks"
  echo
  echo "$(date -u); total $(( $(date +%s) - t_all )) s"
  echo
  $PY "$HERE/summarize.py" "$PARTS" || echo "(summarize.py failed: see run_all.log)"
  echo
  for s in $SCRIPTS; do
    if [ -f "$PARTS/$s.md" ]; then cat "$PARTS/$s.md"; else echo "## $s: no result (see run_all.log)"; fi
    echo
  done
} > "$OUT/summary.md"
cp "$PARTS"/*.png "$OUT"/ 2>/dev/null || true
rm -rf "$PARTS"
echo
echo "summary: $OUT/summary.md (exit status $status)"
sleep 1  # let tee flush run_all.log
exit $status
