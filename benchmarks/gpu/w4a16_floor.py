"""W4A16's fixed cost on the GPU: an empty Triton kernel (one store) timed like the kernels of the
table (CUDA events after an L2 flush, medians), beside the notebook's reference solution and
effilab.ops' default at M = 1, N = K = 4096, group 128, bf16.

    python3 benchmarks/gpu/w4a16_floor.py      # from the repository root, on the GPU machine
"""
import torch, effilab, triton, triton.language as tl
from effilab import bench
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs.nb07 import w4a16_inputs
from effilab.ops.w4a16 import w4a16_matmul
@triton.jit
def one(y_ptr):
    tl.store(y_ptr, 1.0)
y = torch.empty(1, device="cuda")
us = lambda f: bench.time_fn(f, warmup=10, min_reps=50, max_reps=500, max_time_s=1.0).median_ms * 1e3
print(f"empty Triton kernel (one store), L2 flushed: {us(lambda: one[(1,)](y)):.2f} us")
x, qw, sc, zp, g = w4a16_inputs(0, 1, 4096, 4096, 128, torch.bfloat16, "cuda")
ns = solution_namespace("solutions/07_quantization.ipynb")
print(f"notebook solution w4a16 M=1: {us(lambda: ns['w4a16_matmul'](x, qw, sc, zp, g)):.2f} us; effilab.ops default {us(lambda: w4a16_matmul(x, qw, sc, zp, g)):.2f} us")
