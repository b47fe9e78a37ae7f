"""RMSNorm forward as a hand-written CUDA C++ kernel, in three versions (worked example, notebook 08).

In the style of Andrej Karpathy's llm.c ``dev/cuda`` kernels: the same operation written three
times, each version fixing the main weakness of the one before. RMSNorm (Zhang & Sennrich, 2019)::

    y_ij = x_ij * w_j / sqrt(mean_j x_ij^2 + eps)

* **version 1, naive: one thread per row.** Each thread loops over its whole row twice. Threads of a
  warp read addresses ``n_cols`` elements apart, so no load is coalesced and only a few hundred
  threads exist for a few thousand rows: slow.
* **version 2, one block per row, shared-memory tree reduction.** The threads of a block stride
  over the row together (coalesced), each keeps a partial sum of squares, and the block adds the
  partials with a log2(blockDim) tree in shared memory (``__syncthreads`` between the levels).
* **version 3, warp shuffles + 128-bit vector loads.** Each thread moves 16 bytes per load
  (4 fp32 or 8 bf16/fp16 values: fewer, wider memory instructions), partial sums are reduced inside
  each warp with ``__shfl_xor_sync`` (registers only, no barrier), and only the 32 per-warp sums
  go through shared memory. Rows whose length in bytes is not a multiple of 16 use 1-element loads.

The extension is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (``-O3``,
for the GPU's own architecture, e.g. ``sm_90`` on an H100); importing this module compiles
nothing and works on machines without CUDA. ``rms_norm_cpu`` is the CPU reference.

Public API: ``cuda_rms_norm(x, weight, eps=1e-6, version=3)``, ``rms_norm_cpu(x, weight, eps)``,
``load_extension()``, ``CUDA_SOURCE``.
"""
from __future__ import annotations

import functools
import os

import torch

__all__ = ["rms_norm_cpu", "cuda_rms_norm", "load_extension", "cuda_available", "CUDA_SOURCE", "CPP_SOURCE"]


# ---------------------------------------------------------------------------------------------
# CPU reference
# ---------------------------------------------------------------------------------------------
def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dimension in fp32 on the CPU, returned on ``x``'s device and dtype."""
    xf = x.detach().to("cpu", torch.float32)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.detach().to("cpu", torch.float32)
    return y.to(device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# CUDA source
# ---------------------------------------------------------------------------------------------
CPP_SOURCE = r"""
#include <torch/extension.h>
torch::Tensor rmsnorm_forward(torch::Tensor x, torch::Tensor w, double eps, int64_t version, int64_t stream);
"""

CUDA_SOURCE = r"""
#include <algorithm>
#include <cstdint>
#include <torch/extension.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// ---- float <-> storage type ------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- version 1: one thread per row -------------------------------------------------------------
template <typename T>
__global__ void rmsnorm_v1_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                  int n_rows, int n_cols, float eps) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n_rows) return;
    const T* xr = x + (size_t)row * n_cols;
    T* yr = y + (size_t)row * n_cols;
    float ss = 0.f;
    for (int j = 0; j < n_cols; ++j) { float v = to_f32(xr[j]); ss += v * v; }
    const float rstd = rsqrtf(ss / n_cols + eps);
    for (int j = 0; j < n_cols; ++j) yr[j] = from_f32<T>(to_f32(xr[j]) * rstd * to_f32(w[j]));
}

// ---- version 2: one block per row, shared-memory tree reduction ---------------------------------
// blockDim.x must be a power of two; dynamic shared memory holds blockDim.x floats.
template <typename T>
__global__ void rmsnorm_v2_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                  int n_rows, int n_cols, float eps) {
    extern __shared__ float partial[];
    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const T* xr = x + (size_t)row * n_cols;
    T* yr = y + (size_t)row * n_cols;

    float ss = 0.f;
    for (int j = tid; j < n_cols; j += blockDim.x) { float v = to_f32(xr[j]); ss += v * v; }
    partial[tid] = ss;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride) partial[tid] += partial[tid + stride];
        __syncthreads();
    }
    const float rstd = rsqrtf(partial[0] / n_cols + eps);
    for (int j = tid; j < n_cols; j += blockDim.x) yr[j] = from_f32<T>(to_f32(xr[j]) * rstd * to_f32(w[j]));
}

// ---- version 3: warp shuffles + 128-bit loads -----------------------------------------------------
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack { T v[VEC]; };

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// VEC elements per load: 16 / sizeof(T) (a 128-bit load) when every row starts 16-byte aligned,
// else 1. blockDim.x is a multiple of 32.
template <typename T, int VEC>
__global__ void rmsnorm_v3_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                  int n_rows, int n_cols, float eps) {
    using P = Pack<T, VEC>;
    __shared__ float warp_sums[32];
    const int row = blockIdx.x;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, n_warps = blockDim.x / 32;
    const P* xr = reinterpret_cast<const P*>(x + (size_t)row * n_cols);
    const P* wv = reinterpret_cast<const P*>(w);
    P* yr = reinterpret_cast<P*>(y + (size_t)row * n_cols);
    const int n_vec = n_cols / VEC;  // exact: the host picks VEC that divides n_cols

    float ss = 0.f;
    for (int i = tid; i < n_vec; i += blockDim.x) {
        const P p = xr[i];
#pragma unroll
        for (int k = 0; k < VEC; ++k) { float v = to_f32(p.v[k]); ss += v * v; }
    }
    ss = warp_sum(ss);                       // 1. inside each warp, registers only
    if (lane == 0) warp_sums[warp] = ss;
    __syncthreads();
    if (warp == 0) {                         // 2. the first warp adds the per-warp sums
        ss = lane < n_warps ? warp_sums[lane] : 0.f;
        ss = warp_sum(ss);
        if (lane == 0) warp_sums[0] = ss;
    }
    __syncthreads();
    const float rstd = rsqrtf(warp_sums[0] / n_cols + eps);

    for (int i = tid; i < n_vec; i += blockDim.x) {
        const P p = xr[i];                   // second read of the row: served by L1/L2
        const P q = wv[i];
        P out;
#pragma unroll
        for (int k = 0; k < VEC; ++k) out.v[k] = from_f32<T>(to_f32(p.v[k]) * rstd * to_f32(q.v[k]));
        yr[i] = out;
    }
}

// ---- host side -----------------------------------------------------------------------------------
static int round_up_pow2(int v) { int p = 1; while (p < v) p <<= 1; return p; }

template <typename T>
static void launch(const T* x, const T* w, T* y, int n_rows, int n_cols, float eps, int version,
                   cudaStream_t stream) {
    if (version == 1) {
        const int threads = 128;
        rmsnorm_v1_kernel<T><<<(n_rows + threads - 1) / threads, threads, 0, stream>>>(x, w, y, n_rows, n_cols, eps);
    } else if (version == 2) {
        const int threads = std::min(1024, std::max(32, round_up_pow2(std::min(n_cols, 256))));
        rmsnorm_v2_kernel<T><<<n_rows, threads, threads * sizeof(float), stream>>>(x, w, y, n_rows, n_cols, eps);
    } else {
        constexpr int VEC = 16 / sizeof(T);
        const bool aligned = (n_cols % VEC == 0) && (reinterpret_cast<uintptr_t>(x) % 16 == 0) &&
                             (reinterpret_cast<uintptr_t>(w) % 16 == 0) && (reinterpret_cast<uintptr_t>(y) % 16 == 0);
        const int per_row = aligned ? n_cols / VEC : n_cols;
        const int threads = std::min(1024, std::max(32, ((std::min(per_row, 256) + 31) / 32) * 32));
        if (aligned)
            rmsnorm_v3_kernel<T, VEC><<<n_rows, threads, 0, stream>>>(x, w, y, n_rows, n_cols, eps);
        else
            rmsnorm_v3_kernel<T, 1><<<n_rows, threads, 0, stream>>>(x, w, y, n_rows, n_cols, eps);
    }
}

torch::Tensor rmsnorm_forward(torch::Tensor x, torch::Tensor w, double eps, int64_t version, int64_t stream) {
    TORCH_CHECK(x.is_cuda() && w.is_cuda(), "x and weight must be CUDA tensors");
    TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "x and weight must be contiguous");
    TORCH_CHECK(x.scalar_type() == w.scalar_type(), "x and weight must share a dtype");
    TORCH_CHECK(version >= 1 && version <= 3, "version must be 1, 2 or 3");
    const int n_cols = (int)x.size(-1);
    TORCH_CHECK(w.numel() == n_cols, "weight must have x.shape[-1] elements");
    const int n_rows = n_cols ? (int)(x.numel() / n_cols) : 0;
    auto y = torch::empty_like(x);
    if (n_rows == 0 || n_cols == 0) return y;
    auto s = reinterpret_cast<cudaStream_t>(stream);
    const float e = (float)eps;
    switch (x.scalar_type()) {
        case torch::kFloat32:
            launch<float>(x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(), n_rows, n_cols, e, (int)version, s);
            break;
        case torch::kFloat16:
            launch<__half>(reinterpret_cast<const __half*>(x.data_ptr<at::Half>()),
                           reinterpret_cast<const __half*>(w.data_ptr<at::Half>()),
                           reinterpret_cast<__half*>(y.data_ptr<at::Half>()), n_rows, n_cols, e, (int)version, s);
            break;
        case torch::kBFloat16:
            launch<__nv_bfloat16>(reinterpret_cast<const __nv_bfloat16*>(x.data_ptr<at::BFloat16>()),
                                  reinterpret_cast<const __nv_bfloat16*>(w.data_ptr<at::BFloat16>()),
                                  reinterpret_cast<__nv_bfloat16*>(y.data_ptr<at::BFloat16>()), n_rows, n_cols, e,
                                  (int)version, s);
            break;
        default:
            TORCH_CHECK(false, "unsupported dtype: use float32, float16 or bfloat16");
    }
    const cudaError_t err = cudaGetLastError();
    TORCH_CHECK(err == cudaSuccess, "rmsnorm kernel launch failed: ", cudaGetErrorString(err));
    return y;
}
"""


# ---------------------------------------------------------------------------------------------
# Lazy build
# ---------------------------------------------------------------------------------------------
def cuda_available() -> tuple[bool, str]:
    """Whether the extension can be built here, and if not, why."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return False, "this PyTorch build has no CUDA support"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return False, "the CUDA toolkit (nvcc) was not found: set CUDA_HOME"
    return True, ""


@functools.lru_cache(maxsize=1)
def load_extension(verbose: bool = False):
    """Compile (first call only; cached on disk by PyTorch afterwards) and return the extension."""
    ok, why = cuda_available()
    if not ok:
        raise RuntimeError(
            f"cuda_rms_norm needs a machine with a CUDA GPU and the CUDA toolkit: {why}. "
            "Use rms_norm_cpu (or the Triton effilab.ops.rms_norm) here."
        )
    from torch.utils.cpp_extension import load_inline

    major, minor = torch.cuda.get_device_capability()
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if old is None:  # build for this GPU only (sm_90 on an H100): faster to compile, Hopper code
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    try:
        return load_inline(
            name="effilab_cuda_rmsnorm",
            cpp_sources=CPP_SOURCE,
            cuda_sources=CUDA_SOURCE,
            functions=["rmsnorm_forward"],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            verbose=verbose,
        )
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)


def cuda_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, version: int = 3) -> torch.Tensor:
    """RMSNorm forward over the last dimension with the hand-written CUDA kernel ``version`` (1, 2, 3).

    fp32, fp16 or bf16; the weight is cast to ``x``'s dtype. Forward only (no autograd).
    """
    if version not in (1, 2, 3):
        raise ValueError(f"version must be 1, 2 or 3, got {version}")
    if x.device.type != "cuda":
        raise RuntimeError(f"cuda_rms_norm needs CUDA tensors, got a tensor on {x.device}")
    ext = load_extension()
    x_c = x.contiguous()
    w_c = weight.to(dtype=x.dtype, device=x.device).contiguous()
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        return ext.rmsnorm_forward(x_c, w_c, float(eps), int(version), int(stream))
