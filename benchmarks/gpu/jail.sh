#!/usr/bin/env bash
# The jail (grader/jail.py, grader/kernel.py) on the GPU machine, from the repo root. The machine
# has no bwrap: carry .debs/ (made by `bash benchmarks/gpu/bwrap_deb.sh download`, run in /work/main)
# and the nbgrader wheels of .whl/, and start the command with the two one-liners, e.g.
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH || exit;
#   bash benchmarks/gpu/bwrap_deb.sh install /tmp/effilab-bwrap && export EFFILAB_BWRAP=/tmp/effilab-bwrap/bwrap || exit;
#   bash benchmarks/gpu/jail.sh            # results under $OUT (default /tmp/effilab-gpu)
# Record: the availability line, the jail's start-up overhead, the peak task count against the
# task limit (the basis of default_nproc), the GPU tests' result, the jail tests' result as root on
# the Ubuntu-like image with Python 3.12.
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
echo "== peak tasks (RLIMIT_NPROC counts threads) of torch.compile + a 4-worker DataLoader + CUDA in a jail"
python3 - <<'PY' 2>&1 | tail -3 | tee "$OUT/jail_tasks.txt"
import subprocess, sys, tempfile
from pathlib import Path
from grader import jail
code = r"""
import os, threading, time, torch
peak = [0]
def sample():
    while True:
        n = 0
        for p in os.listdir("/proc"):
            try:
                n += len(os.listdir(f"/proc/{p}/task")) if p.isdigit() else 0
            except OSError:
                pass
        peak[0] = max(peak[0], n)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
f = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2)
f(torch.randn(4096, 4096, device="cuda")); torch.cuda.synchronize()
ds = torch.utils.data.TensorDataset(torch.randn(512, 16))
for _ in torch.utils.data.DataLoader(ds, batch_size=32, num_workers=4): pass
time.sleep(0.3)
print("peak tasks in the jail:", peak[0], "limit:", jail_limit)
"""
with tempfile.TemporaryDirectory() as d:
    j = jail.Jail(writable=[Path(d)])
    r = subprocess.run(j.command([sys.executable, "-c", f"jail_limit = {j.nproc}\n" + code]), capture_output=True, text=True)
    print(r.stdout.strip() or r.stderr.strip()[-1500:])
PY
echo "== GPU tests of the jail"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_jail.py 2>&1 | tail -15 | tee "$OUT/jail_pytest_gpu.txt"
echo "== all jail tests (CPU parts too), as root on this image"
EFFILAB_REQUIRE_JAIL=1 python3 -m pytest -q -p no:cacheprovider tests/test_jail.py tests/test_jail_kernel.py 2>&1 | tail -15 | tee "$OUT/jail_pytest.txt"
