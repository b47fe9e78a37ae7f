"""RMSNorm forward, 16384 x 4096 bf16: the three hand-written CUDA kernels vs Triton and F.rms_norm.

    python benchmarks/ops/bench_cuda_rmsnorm.py --out benchmarks/results

The first run compiles the extension (about a minute; cached by PyTorch afterwards).
"""
from __future__ import annotations

import time

import _common as C
import torch
import torch.nn.functional as F

from effilab.ops.cuda_rmsnorm import cuda_rms_norm, load_extension, rms_norm_cpu


def main() -> int:
    args = C.parse_args(__doc__.splitlines()[0])
    (n, d), eps = C.pick((16384, 4096), (64, 256)), 1e-6
    rep = C.Report(f"CUDA C++ RMSNorm forward {n}x{d}", "cuda_rmsnorm", "GB/s", args.out, args.rep)
    t0 = time.time()
    try:
        load_extension()
    except RuntimeError as exc:  # no GPU / no nvcc: nothing to time
        rep.note(f"skipped: {exc}")
        rep.finish()
        return 0 if C.SMOKE else 1
    rep.note(f"extension ready in {time.time() - t0:.0f} s (compiled or loaded from the cache)")
    try:
        from effilab.ops.rmsnorm import rms_norm
    except ImportError:  # student edition
        rms_norm = None

    for dt in (torch.bfloat16, torch.float32):
        torch.manual_seed(0)
        x = torch.randn(n, d, device=C.DEVICE, dtype=dt)
        w = (1 + 0.1 * torch.randn(d, device=C.DEVICE)).to(dt)
        e = x.element_size()
        nbytes = 2 * n * d * e + d * e
        tag = str(dt).replace("torch.", "")
        ref = rms_norm_cpu(x[:256], w, eps).float()
        for ver in (1, 2, 3):
            rep.check(f"v{ver} {tag}", cuda_rms_norm(x[:256], w, eps, ver), ref, atol=2e-2 * ref.abs().max().item())
        cands = {f"cuda v{ver}": (lambda ver=ver: cuda_rms_norm(x, w, eps, ver)) for ver in (1, 2, 3)}
        if rms_norm is not None:
            cands["effilab triton"] = lambda: rms_norm(x, w, eps)
        cands["torch F.rms_norm (eager)"] = lambda: F.rms_norm(x, (d,), w, eps)
        for name, fn in cands.items():
            rep.bench(name, f"fwd {tag}", fn, nbytes)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
