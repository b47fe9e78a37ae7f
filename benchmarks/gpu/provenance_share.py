"""GPU time share of the reference kernels and of cheats (effilab.grading.provenance), on the GPU.

    python benchmarks/gpu/provenance_share.py [--repeats 3]
    python -m pytest tests/test_provenance.py -q -m gpu        # the GPU test beside it

Prints, for each Triton exercise at its speed part's problem size: the share of the call's device
time in the student's own kernels (the rule: ≥ 90 % and no library kernel), the kernels seen, and
the verdict of ``share_problem``; then the same for cheats that must fail (eager beside a token
kernel, torch.compile beside a token kernel, a library op beside one, a host round trip). Last, the
cost of the recorder on one correctness-size call (plain vs ``checked``). Record in
benchmarks/RESULTS.md: every reference share (min over repeats) and that every cheat fails.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import effilab  # noqa: E402,F401  (before triton)
import torch  # noqa: E402

from effilab.grading import provenance  # noqa: E402
from effilab.grading.nbcode import exec_cells, solution_namespace  # noqa: E402

TOKEN = textwrap.dedent('''
    import torch, triton, triton.language as tl, torch.nn.functional as F
    @triton.jit
    def token_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m), mask=m)
    def touch(src, dst):
        token_kernel[(triton.cdiv(src.numel(), 4096),)](src, dst, src.numel(), BLOCK=4096)
    def eager_rms(x, w, eps):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)
    compiled_rms = torch.compile(eager_rms)
''')
CHEATS = {
    "eager beside a token kernel":
        "def rms_norm(x, w, eps):\n    out = torch.empty_like(x)\n    touch(x, out)\n    return eager_rms(x, w, eps)\n",
    "torch.compile beside a token kernel":
        "def rms_norm(x, w, eps):\n    out = torch.empty_like(x)\n    touch(x, out)\n    return compiled_rms(x, w, eps)\n",
    "library op, copied out by a token kernel":
        "def rms_norm(x, w, eps):\n    y = F.rms_norm(x, (x.shape[-1],), w, eps)\n    out = torch.empty_like(x)\n"
        "    touch(y, out)\n    return out\n",
    "host round trip, copied out by a token kernel":
        "def rms_norm(x, w, eps):\n    y = eager_rms(x.cpu(), w.cpu(), eps).to(x.device)\n    out = torch.empty_like(x)\n"
        "    touch(y, out)\n    return out\n",
}


def show(label: str, call, repeats: int, allow_library: bool = False) -> None:
    call()
    call()  # compile and autotune outside the profile
    shares = [provenance.gpu_time_share(call) for _ in range(repeats)]
    worst = min(shares, key=lambda s: s["share"])
    problem = provenance.share_problem(worst, allow_library=allow_library)
    print(f"{label:48} share min {min(s['share'] for s in shares):.3f} max {max(s['share'] for s in shares):.3f}"
          f"  total {worst['total_us']:.0f} us  -> {'PASS' if problem is None else 'FAIL: ' + problem[:120]}")
    for k in worst["kernels"][:5]:
        print(f"      {k['kind']:8} {k['us']:9.1f} us  x{k['count']}  {k['name'][:90]}")
    if worst.get("foreign_launches") or worst.get("compute"):
        print(f"      record: foreign {worst.get('foreign_launches')}, compute {worst.get('compute')[:6]}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    print("torch", torch.__version__, torch.cuda.get_device_name())
    nb08 = solution_namespace(ROOT / "solutions" / "08_operator_fusion.ipynb")
    nb01 = solution_namespace(ROOT / "solutions" / "01_float_formats.ipynb")
    dev, bf = "cuda", torch.bfloat16
    x, w = torch.randn(16384, 4096, device=dev, dtype=bf), torch.randn(4096, device=dev, dtype=bf)
    a, b = torch.randn(16384, 11008, device=dev, dtype=bf), torch.randn(16384, 11008, device=dev, dtype=bf)
    q, k, v = (torch.randn(4, 16, 4096, 64, device=dev, dtype=bf) for _ in range(3))
    logits = torch.randn(4096, 128256, device=dev, dtype=bf)
    target = torch.randint(0, 128256, (4096,), device=dev)
    sr_x = torch.randn(1 << 28, device=dev)
    print("== reference solutions (each must PASS)")
    show("stochastic_round_bf16 (2^28)", lambda: nb01["stochastic_round_bf16"](sr_x, 7), args.repeats)
    show("rms_norm (16384x4096 bf16)", lambda: nb08["rms_norm"](x, w, 1e-6), args.repeats)
    show("swiglu (16384x11008 bf16)", lambda: nb08["swiglu"](a, b), args.repeats)
    show("swiglu_backward (16384x11008 bf16)", lambda: nb08["swiglu_backward"](a, b, a), args.repeats)
    show("flash_attention (4x16x4096x64 bf16)", lambda: nb08["flash_attention"](q, k, v, False), args.repeats)
    show("cross_entropy (4096x128256 bf16; epilogue)", lambda: nb08["cross_entropy"](logits, target), args.repeats,
         allow_library=True)
    print("== cheats (each must FAIL)")
    for label, src in CHEATS.items():
        ns = exec_cells([(0, TOKEN), (1, src)], label="cheat")
        show(label, lambda fn=ns["rms_norm"]: fn(x, w, 1e-6), args.repeats)
    print("== recorder cost on one correctness-size call (1823x781 fp32 rms_norm)")
    xs, ws = torch.randn(1823, 781, device=dev), torch.randn(781, device=dev)
    fn = nb08["rms_norm"]
    chk = provenance.checked(fn, provenance.kernel_rule("rms_norm"))
    for label, f in (("plain", fn), ("checked", chk)):
        f(xs, ws, 1e-6)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            f(xs, ws, 1e-6)
        torch.cuda.synchronize()
        print(f"  {label:8} {(time.perf_counter() - t0) / 20 * 1e3:.3f} ms per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
