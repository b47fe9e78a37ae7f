#!/usr/bin/env bash
# The jail (grader/jail.py, grader/kernel.py) on the GPU machine, from the repo root. The machine
# has no bwrap: carry .debs/ (made by `bash benchmarks/gpu/bwrap_deb.sh download`, run in /work/main)
# and the nbgrader wheels of .whl/, and start the command with the two one-liners, e.g.
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH || exit;
#   bash benchmarks/gpu/bwrap_deb.sh install /tmp/effilab-bwrap && export EFFILAB_BWRAP=/tmp/effilab-bwrap/bwrap || exit;
#   bash benchmarks/gpu/jail.sh            # results under $OUT (default /tmp/effilab-gpu)
# Record: the availability line, the GPU tests' result, the jail's start-up overhead, the
# jail tests' result as root on Ubuntu-like Python 3.12.
set -uo pipefail
OUT=${OUT:-/tmp/effilab-gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH="$PWD:${PYTHONPATH:-}" JUPYTER_PATH="/tmp/site/share/jupyter:${JUPYTER_PATH:-}"
echo "== availability"
python3 -c "from grader import jail; print(jail.available()); print('gpu devices:', jail.gpu_devices())" | tee "$OUT/jail_available.txt"
ls -l /dev/nvidia* 2>&1 | tee -a "$OUT/jail_available.txt"
echo "== start-up overhead: import torch + CUDA init, outside and inside a jail (3 runs each)"
python3 - <<'PY' 2>&1 | tee "$OUT/jail_overhead.txt"
import subprocess, sys, tempfile, time
from pathlib import Path
from grader import jail
code = "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
for where in ("host", "jail"):
    for _ in range(3):
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, "-c", code]
            if where == "jail":
                cmd = jail.Jail(writable=[Path(d)]).command(cmd)
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            print(f"{where}: {time.perf_counter() - t:.2f} s (exit {r.returncode}) {r.stderr.strip()[-300:]}")
PY
echo "== GPU tests of the jail"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_jail.py 2>&1 | tail -15 | tee "$OUT/jail_pytest_gpu.txt"
echo "== all jail tests (CPU parts too), as root on this image"
EFFILAB_REQUIRE_JAIL=1 python3 -m pytest -q -p no:cacheprovider tests/test_jail.py tests/test_jail_kernel.py 2>&1 | tail -15 | tee "$OUT/jail_pytest.txt"
