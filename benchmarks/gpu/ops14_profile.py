"""Launch each kernel with a gap to its target once, for Nsight Compute (issue 14).

    ncu --clock-control none -k regex:'<see KERNELS>' -c <len(LAUNCHES)> ... python3 benchmarks/gpu/ops14_profile.py

Every launch below runs exactly one kernel whose name matches ``KERNELS`` (the PyTorch kernels
around them do not), in this order, so ``ncu --launch-count`` of ``len(LAUNCHES)`` profiles them
all and the report's n-th kernel is the n-th line printed here. Shapes are those of
benchmarks/ops: RMSNorm 16384x4096 bf16 (forward, default backward, one blocked backward),
cross-entropy 8192x128256 bf16 (the fused forward that writes the gradient), attention
B4 H32 S4096 D128 bf16 forward (non-causal and causal). Without ncu it just runs them (a dry run).
The RMSNorm backward's first-call timing is switched off (EFFILAB_RMSNORM_TUNE=0): its launches
would be profiled too; OPS14_BLOCKED picks the blocked variant to profile next to the static one.
OPS14_VARIANTS=1 profiles instead the launch variants of the fifth 2026-12-02 session: cross-entropy
persistent / reversed / L2-hinted / pipelined against its default (L2 hit rate and DRAM bytes tell how
much of pass 2 came from L2), and the attention forward's rotated loop (``PIPELINE``) against its
default (tensor-pipe activity).
"""
from __future__ import annotations

import os
import pathlib
import sys
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

os.environ["EFFILAB_RMSNORM_TUNE"] = "0"  # no timing launches of the default backward: one launch each
import effilab  # noqa: E402,F401  (must precede triton)
import torch  # noqa: E402

KERNELS = r"_rms_norm_fwd_kernel|_rms_norm_bwd_kernel|_cross_entropy_fwd_kernel|_attn_fwd_kernel"
BLOCKED = os.environ.get("OPS14_BLOCKED", "blocked,1,4,4,2")  # the blocked backward to profile


def launches():
    from effilab.ops import rmsnorm
    from effilab.ops.cross_entropy import cross_entropy_forward
    from effilab.ops.flash_attention import flash_attention_forward

    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(16384, 4096, device=dev, dtype=bf, generator=g)
    w = torch.ones(4096, device=dev, dtype=bf)
    dy = torch.randn(16384, 4096, device=dev, dtype=bf, generator=g)
    rstd = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
    v = BLOCKED.split(",")
    blocked = rmsnorm.BwdConfig(v[0], *(int(t) for t in v[1:]))
    yield "rmsnorm fwd (default)", lambda: rmsnorm.rms_norm_forward(x, w, store_rstd=True)
    yield "rmsnorm bwd (static default: persistent, 1/SM, 2 stages)", lambda: rmsnorm.rms_norm_backward(dy, x, w, rstd)
    yield f"rmsnorm bwd ({blocked.label()})", lambda: rmsnorm.rms_norm_backward(dy, x, w, rstd, blocked)
    logits = (torch.randn(8192, 128256, device=dev, generator=g) * 2).to(bf)
    t = torch.randint(0, 128256, (8192,), device=dev, generator=g)
    yield "cross-entropy fwd+grad (default)", lambda: cross_entropy_forward(logits, t)
    q, k, vv = (torch.randn(4, 32, 4096, 128, device=dev, dtype=bf, generator=g) for _ in range(3))
    yield "attention fwd (default)", lambda: flash_attention_forward(q, k, vv, False)
    yield "attention fwd causal (default)", lambda: flash_attention_forward(q, k, vv, True)


CE_VARIANTS = [(8192, 16, 0, True, True), (8192, 16, 1, True, True), (8192, 16, 2, True, True, 2),
               (4096, 8, 2, True, True, 3)]
ATTN_VARIANT = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, PIPELINE=True)


def variant_launches():
    from effilab.ops.cross_entropy import cross_entropy_forward
    from effilab.ops.flash_attention import flash_attention_forward

    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    logits = (torch.randn(8192, 128256, device=dev, generator=g) * 2).to(bf)
    t = torch.randint(0, 128256, (8192,), device=dev, generator=g)
    yield "cross-entropy fwd+grad (default)", lambda: cross_entropy_forward(logits, t)
    for cfg in CE_VARIANTS:
        yield f"cross-entropy fwd+grad config={cfg}", lambda cfg=cfg: cross_entropy_forward(logits, t, config=cfg)
    del logits
    q, k, vv = (torch.randn(4, 32, 4096, 128, device=dev, dtype=bf, generator=g) for _ in range(3))
    for causal in (False, True):
        yield f"attention fwd causal={causal} (default)", lambda c=causal: flash_attention_forward(q, k, vv, c)
        yield f"attention fwd causal={causal} {ATTN_VARIANT}", \
            lambda c=causal: flash_attention_forward(q, k, vv, c, config=ATTN_VARIANT)


def main() -> int:
    ok = True
    chosen = variant_launches() if os.environ.get("OPS14_VARIANTS") == "1" else launches()
    for i, (name, fn) in enumerate(chosen):
        try:
            fn()
            torch.cuda.synchronize()
            print(f"[{i}] {name}", flush=True)
        except Exception:  # noqa: BLE001
            ok = False
            print(f"[{i}] {name}: FAILED", flush=True)
            traceback.print_exc(limit=3)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
