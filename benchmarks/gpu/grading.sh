#!/usr/bin/env bash
# The authoritative grading on the GPU machine, from the repo root, after the two set-up lines
# (wheels of .whl/ into /tmp/site; bubblewrap from .debs/, see bwrap_deb.sh):
#
#   bash benchmarks/gpu/grading.sh [throughput|checks|tests|all]    # results under $OUT
#
# throughput  seconds per student notebook, alice and bob of every notebook, all parts (grading_throughput.py)
# checks      repeatability and the GPU-only red-team cases (grading_checks.py)
# tests       the GPU-marked tests of the jail, the provenance recorder and the checkers
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
what=${1:-all}
python3 -c "import torch, triton, sys; from grader import jail; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), 'jail', jail.available())" | tee "$OUT/grading_versions.txt"
if [[ $what == throughput || $what == all ]]; then
  echo "== seconds per student notebook (alice, bob; every notebook; all parts)"
  python3 benchmarks/gpu/grading_throughput.py --out "$OUT" 2>&1 | tee "$OUT/grading_throughput.txt"
fi
if [[ $what == checks || $what == all ]]; then
  echo "== repeatability and GPU red team"
  python3 benchmarks/gpu/grading_checks.py --repeats 3 --out "$OUT" 2>&1 | tee "$OUT/grading_checks.txt"
fi
if [[ $what == tests || $what == all ]]; then
  echo "== GPU tests: jail, provenance, checkers"
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_jail.py tests/test_provenance.py \
    tests/test_nb01_checkers.py tests/test_nb03_checkers.py tests/test_nb08_checkers.py 2>&1 | tail -25 \
    | tee "$OUT/grading_pytest_gpu.txt"
fi
