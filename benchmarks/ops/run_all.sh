#!/usr/bin/env bash
# Run every benchmarks/ops script on a CUDA GPU and collect the results.
#
#   bash benchmarks/ops/run_all.sh [--out DIR] [--no-compile] [--no-sweep] [--rep MS]
#
# Writes DIR/summary.md (every table), DIR/<op>.png (one plot per script) and DIR/run_all.log:
# seven files in all. Other options are passed to every script. About 6-8 minutes on an H100;
# --no-compile and --no-sweep make it shorter. The CUDA C++ extension of bench_cuda_rmsnorm.py is
# built in the background while the Triton benchmarks run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT="$ROOT/benchmarks/results"
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
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
for s in $SCRIPTS; do
  if [ "$s" = cuda_rmsnorm ]; then
    wait "$BUILD_PID" || { echo "CUDA extension build failed:"; tail -30 "$PARTS/cuda_build.log"; }
  fi
  echo
  echo "=== bench_$s"
  t0=$(date +%s)
  PYTHONUNBUFFERED=1 $PY "$HERE/bench_$s.py" --out "$PARTS" ${EXTRA[@]+"${EXTRA[@]}"} || { echo "=== bench_$s FAILED"; status=1; }
  echo "=== bench_$s took $(( $(date +%s) - t0 )) s"
done

{
  echo "# effilab.ops benchmarks"
  echo
  echo "$(date -u); total $(( $(date +%s) - t_all )) s"
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
