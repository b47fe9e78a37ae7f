"""The code cells of notebook 05, one ``# ==== cell <grade id>`` header each (read by 05_8bit_optimizers.py).

Not a module to import: the cells run in the notebook's order, in one namespace."""
# ==== cell setup_imports
# Setup. `import effilab` comes first: on a machine without a CUDA GPU it switches Triton to its
# CPU interpreter, which must happen before triton is imported.
import itertools
import math
import os
import warnings

import effilab
import matplotlib.pyplot as plt
import torch
import triton
import triton.language as tl

from effilab import bench, data, device, quant8
from effilab.grading import check
from effilab.memory import format_bytes, plot_training_memory, training_memory
from effilab.models import GPT, GPTConfig
from effilab.train import param_groups, train

DEV = device.default_device()
ON_GPU = DEV.type == "cuda"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"   # True on a CPU: Triton's interpreter, small demos
if not ON_GPU:
    torch.set_num_threads(1)  # the tiny CPU models run faster on one thread than on several contended ones
print(device.info().summary())
# ==== cell demo_memory
with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # bitsandbytes' import-time deprecation notices
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

# The course GPT: GPT-2 small's shape on a GPU, the tiny CPU preset on a CPU
MEM_CFG = GPTConfig.preset("gpu-real" if ON_GPU else "cpu-tiny")
mem_model = GPT(MEM_CFG, seed=0).to(DEV)
xb = torch.randint(0, 256, (2, 64), device=DEV)
mem_batch = (xb, torch.roll(xb, -1, dims=1))
state_makers = {
    "fp32 AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-4),
    "bitsandbytes AdamW8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-4),
    "torch Adafactor": lambda ps: torch.optim.Adafactor(ps, lr=1e-2),
    "SGD, no state": lambda ps: torch.optim.SGD(ps, lr=1e-2),
}
measured = {name: quant8.memory_breakdown(mem_model, make, mem_batch) for name, make in state_makers.items()}
n_params = measured["fp32 AdamW"]["n_params"]
print(f"course GPT: {n_params / 1e6:.2f} M parameters ({MEM_CFG.n_layer} blocks of width {MEM_CFG.n_embd})\n")
print(f"{'optimizer':24} {'weights':>10} {'grads':>10} {'state':>10} {'state B/param':>14} {'total B/param':>14}")
for name, m in measured.items():
    total = m["weights"] + m["grads"] + m["optimizer"]
    print(f"{name:24} {format_bytes(m['weights']):>10} {format_bytes(m['grads']):>10} {format_bytes(m['optimizer']):>10} "
          f"{m['optimizer'] / n_params:14.2f} {total / n_params:14.2f}")
bars = {name: {k: m[k] for k in ("weights", "grads", "optimizer")} for name, m in measured.items()}
bars["mixed AdamW (model)"] = training_memory(n_params, "mixed_adam")
bars["mixed 8-bit AdamW (model)"] = training_memory(n_params, "mixed_8bit_adam")
plot_training_memory(bars, unit="GiB" if ON_GPU else "MiB")
plt.title("model state of one training step: measured, and the ZeRO-style model")
plt.show()
# ==== cell demo_maps
LIN_S, LIN_U = quant8.linear_map(signed=True), quant8.linear_map(signed=False)
DYN_S, DYN_U = bnbf.create_dynamic_map(signed=True), bnbf.create_dynamic_map(signed=False)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.6), layout="constrained")
quant8.plot_code_maps({"linear": LIN_S, "dynamic, signed (m)": DYN_S, "dynamic, unsigned (v)": DYN_U}, ax=axes[0])
axes[0].set_title("where the 256 codes sit (positive half)")
quant8.plot_relative_error({"linear, unsigned": LIN_U, "dynamic, unsigned": DYN_U}, ax=axes[1])
axes[1].set_title("relative error of a value after 8 bits")
plt.show()

# Which block size does bitsandbytes use today? One step on a 10^6-value tensor, then count the absmax values.
probe = torch.nn.Parameter(torch.randn(1000, 1000, device=DEV))
probe.grad = torch.randn_like(probe)
probe_opt = bnb.optim.AdamW8bit([probe])
probe_opt.step()
st = probe_opt.state[probe]
print(f"AdamW8bit on 10^6 values: {st['state1'].dtype} codes for m and v, {st['absmax1'].numel()} absmax values each "
      f"-> blocks of {math.ceil(probe.numel() / st['absmax1'].numel())} values (the paper: 2048)")
# ==== cell demo_report
# Adam's v after 30 steps on the course GPT, and the same v with one outlier (one entry × 10^4)
corpus = data.corpus()
rep_model = GPT(GPTConfig.preset("cpu-tiny"), seed=0).to(DEV)
rep_opt = torch.optim.AdamW(rep_model.parameters(), lr=3e-3)
for xr, yr in itertools.islice(data.batches(corpus, 8, 64, device=DEV), 30):
    rep_opt.zero_grad(set_to_none=True)
    rep_model(xr, yr)[1].backward()
    rep_opt.step()
v = rep_opt.state[rep_model.blocks[0].mlp.c_fc.weight]["exp_avg_sq"].detach().cpu()
v_outlier = v.clone()
v_outlier.view(-1)[1234] *= 1e4
configs = {"linear, one absmax per tensor": (LIN_U, None), "linear, blocks of 256": (LIN_U, 256),
           "dynamic, one absmax per tensor": (DYN_U, None), "dynamic, blocks of 256": (DYN_U, 256)}
print(f"v of blocks.0.mlp.c_fc.weight: {v.numel()} values from {v[v > 0].min():.2e} to {v.max():.2e}\n")
print(f"{'8-bit storage of v':32} {'zeroed':>9} {'median rel. error':>18} {'zeroed, 1 outlier':>18}")
for (name, row), row_out in zip(((r["name"], r) for r in quant8.quantization_report(v, configs)),
                                quant8.quantization_report(v_outlier, configs)):
    print(f"{name:32} {row['zeroed']:9.1%} {row['median_rel_error']:18.1%} {row_out['zeroed']:18.1%}")
# ==== cell create_dynamic_map_solution
def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' dynamic (tree) quantization map: 256 sorted float32 values in [-1, 1].

    Args:
        signed: True for a map with both signs (Adam's m), False for values >= 0 only (Adam's v).
        max_exponent_bits: e, the number of decades the map spans, 10^-(e-1) ... 10^0.
        total_bits: bits per code; a map of fewer than 8 bits is padded with zeros to 256 values.
    Returns:
        the map, sorted ascending, float32, shape (256,).
    """
    ### BEGIN SOLUTION
    non_sign_bits = total_bits - 1
    values = []
    for i in range(max_exponent_bits):
        # decade i: 2^(fraction bits) linear steps in [0.1, 1], the midpoints of the steps, times 10^(i-e+1)
        n_steps = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1))
        bounds = torch.linspace(0.1, 1, n_steps + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        values += [scale * means] + ([-scale * means] if signed else [])
    spare = 2 ** (non_sign_bits - max_exponent_bits) - 1   # bits no exponent uses: linear values at 10^0
    if spare > 0:
        bounds = torch.linspace(0.1, 1, spare + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        values += [means] + ([-means] if signed else [])
    values.append(torch.tensor([0.0, 1.0]))
    code = torch.cat(values)
    code = torch.cat([code, torch.zeros(256 - code.numel())])   # smaller maps: padded with zeros
    return torch.sort(code).values
    ### END SOLUTION
# ==== cell quantize_blockwise_solution
@triton.jit
def midpoints_kernel(
    code_ptr,              # pointer to the 256 sorted code values (fp32)
    mid_ptr,               # pointer to the output: the 255 midpoints (fp32)
):
    """mid[k] = (code[k] + code[k+1]) / 2: one program computes all 255."""
    ### BEGIN SOLUTION
    k = tl.arange(0, 256)
    ok = k < 255
    lo = tl.load(code_ptr + k, mask=ok, other=0.0)
    hi = tl.load(code_ptr + k + 1, mask=ok, other=0.0)
    tl.store(mid_ptr + k, (lo + hi) * 0.5, mask=ok)
    ### END SOLUTION


@triton.jit
def nearest_code(s, mid_ptr):
    """The index of the code nearest to each value of the tile ``s`` (values in [-1, 1]).

    ``mid_ptr`` points to the 255 sorted midpoints between neighbouring codes. The index is the
    number of midpoints strictly below s, so a value exactly halfway takes the lower code.
    """
    ### BEGIN SOLUTION
    q = tl.zeros(s.shape, dtype=tl.int32)
    for k in tl.static_range(8):                     # binary search: steps of 128, 64, ..., 1
        cand = q + (128 >> k)                         # cand - 1 stays in [0, 254]
        q = tl.where(tl.load(mid_ptr + cand - 1) < s, cand, q)
    return q
    ### END SOLUTION


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """The 255 midpoints of a 256-value code, computed by midpoints_kernel (a buffer of 256 values)."""
    mid = torch.empty(256, dtype=torch.float32, device=code.device)
    midpoints_kernel[(1,)](code, mid)
    return mid


@triton.jit
def quantize_blockwise_kernel(
    x_ptr,                 # pointer to x, flat and contiguous, n values (fp32, fp16 or bf16)
    mid_ptr,               # pointer to the 255 midpoints between neighbouring codes (fp32)
    q_ptr,                 # pointer to the output codes, uint8, n values
    absmax_ptr,            # pointer to the output absmax, fp32, one per block
    n,                     # number of values
    n_blocks,              # number of blocks, ceil(n / BLOCK)
    BLOCK: tl.constexpr,   # values per block (the blocksize, a power of two)
    ROWS: tl.constexpr,    # blocks per program (a power of two)
):
    ### BEGIN SOLUTION
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = rows.to(tl.int64)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]    # a [ROWS, BLOCK] tile
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    absmax = tl.max(tl.abs(x), axis=1, keep_dims=True)            # [ROWS, 1]: one per block
    s = x / tl.where(absmax > 0, absmax, 1.0)                     # an all-zero block: s = 0
    q = nearest_code(s, mid_ptr)
    tl.store(q_ptr + offs, q.to(tl.uint8), mask=mask)
    tl.store(absmax_ptr + rows[:, None], absmax, mask=(rows < n_blocks)[:, None])
    ### END SOLUTION


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int = 256):
    """Block-wise 8-bit quantization in one Triton kernel.

    Args:
        x: any shape, float32 / float16 / bfloat16, on the GPU (or the CPU, in Triton's interpreter).
        code: the 256 sorted fp32 code values (e.g. create_dynamic_map()), on x's device.
        blocksize: values per absmax, a power of two from 64 to 4096.
    Returns:
        (codes, absmax): uint8 codes of x's shape, and ceil(x.numel() / blocksize) fp32 absmax values.
    """
    ### BEGIN SOLUTION
    xf = x.contiguous().view(-1)
    n = xf.numel()
    n_blocks = triton.cdiv(n, blocksize)
    q = torch.empty(n, dtype=torch.uint8, device=x.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=x.device)
    if n == 0:
        return q.view(x.shape), absmax
    # a 4096-value tile per program on a GPU; in the interpreter few, large programs
    rows = min(65536 // blocksize, triton.next_power_of_2(n_blocks)) if INTERPRET else max(1, 4096 // blocksize)
    quantize_blockwise_kernel[(triton.cdiv(n_blocks, rows),)](
        xf, midpoints(code), q, absmax, n, n_blocks, BLOCK=blocksize, ROWS=rows, num_warps=8)
    return q.view(x.shape), absmax
    ### END SOLUTION
# ==== cell dequantize_blockwise_solution
@triton.jit
def dequantize_blockwise_kernel(
    q_ptr,                 # pointer to the codes, uint8, n values
    absmax_ptr,            # pointer to the absmax, fp32, one per block
    code_ptr,              # pointer to the 256 code values (fp32)
    y_ptr,                 # pointer to the output, n values, in the requested dtype
    n,                     # number of values
    BLOCK: tl.constexpr,   # values per block (the blocksize)
    TILE: tl.constexpr,    # values per program, a power of two
):
    ### BEGIN SOLUTION
    offs = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    a = tl.load(absmax_ptr + offs // BLOCK, mask=mask, other=0.0)
    y = tl.load(code_ptr + q) * a
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int = 256,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """code[q] * absmax[block] for every code, in one Triton kernel.

    Args:
        codes: the uint8 codes, any shape.
        absmax: one fp32 absmax per block of ``blocksize`` codes.
        code: the 256 fp32 code values.
        blocksize: values per absmax.
        dtype: the output dtype (float32, float16 or bfloat16).
    Returns:
        the dequantized values, in codes' shape and ``dtype``.
    """
    ### BEGIN SOLUTION
    n = codes.numel()
    y = torch.empty(n, dtype=dtype, device=codes.device)
    if n == 0:
        return y.view(codes.shape)
    tile = min(65536 if INTERPRET else 4096, triton.next_power_of_2(n))
    dequantize_blockwise_kernel[(triton.cdiv(n, tile),)](
        codes.contiguous().view(-1), absmax.contiguous(), code, y, n, BLOCK=blocksize, TILE=tile, num_warps=8)
    return y.view(codes.shape)
    ### END SOLUTION
# ==== cell demo_quant_compare
n_cmp = 1 << 24 if ON_GPU else 1 << 16
x_cmp = torch.randn(n_cmp, device=DEV) * torch.exp(2 * torch.randn(n_cmp, device=DEV))
code_m = DYN_S.to(DEV)
try:
    q_mine, a_mine = quantize_blockwise(x_cmp, code_m, 256)
    q_bnb, st_bnb = bnbf.quantize_blockwise(x_cmp, code=code_m, blocksize=256)
    differ = q_mine != q_bnb
    s_cmp = x_cmp / st_bnb.absmax.repeat_interleave(256)[:n_cmp]
    print(f"absmax equal to bitsandbytes': {torch.equal(a_mine, st_bnb.absmax)}; codes equal: "
          f"{1 - differ.float().mean().item():.3%} of {n_cmp}")
    if differ.any():
        # distance of each differing s to the nearest midpoint between two codes
        mids = quant8.midpoints(code_m)
        s_d = s_cmp[differ]
        k = torch.bucketize(s_d, mids).clamp(1, mids.numel() - 1)
        dist = torch.minimum((s_d - mids[k - 1]).abs(), (s_d - mids[k]).abs())
        print(f"  the {int(differ.sum())} others: {(s_d.abs() < 3e-3).float().mean().item():.0%} have |x / absmax| < 3e-3, "
              f"where codes are closer together than bitsandbytes' CPU lookup bins (3e-5); all lie within "
              f"{dist.max().item():.1e} of a midpoint between two codes. Yours is the nearest code, theirs a neighbour.")
    back = dequantize_blockwise(q_mine, a_mine, code_m, 256)
    rel = ((back - x_cmp).abs() / x_cmp.abs().clamp_min(1e-30))
    print(f"round trip: median relative error {rel.median().item():.2%}, 99th percentile "
          f"{rel.float().quantile(0.99).item():.1%} (values far below their block's absmax are the coarse ones)")
    if ON_GPU:
        moved = {"copy (x.clone())": 8 * n_cmp, "bitsandbytes quantize_blockwise": 5 * n_cmp,
                 "your quantize_blockwise": 5 * n_cmp, "your dequantize_blockwise": 5 * n_cmp}
        cmp = bench.compare({
            "copy (x.clone())": lambda: x_cmp.clone(),
            "bitsandbytes quantize_blockwise": lambda: bnbf.quantize_blockwise(x_cmp, code=code_m, blocksize=256),
            "your quantize_blockwise": lambda: quantize_blockwise(x_cmp, code_m, 256),
            "your dequantize_blockwise": lambda: dequantize_blockwise(q_mine, a_mine, code_m, 256),
        }, max_time_s=1.0)
        print(cmp.table())
        for name, t in cmp.timings.items():
            print(f"  {name:32} {bench.throughput(t, bytes=moved[name])}")
    else:
        print("(CPU: Triton runs in its interpreter here; the bandwidth comparison needs a GPU.)")
except NotImplementedError:
    print("Finish exercise 2 to compare your kernels with bitsandbytes.")
# ==== cell demo_ablation
ABL_CFG = GPTConfig.preset("cpu-small" if ON_GPU else "cpu-tiny")
ABL_STEPS, ABL_BATCH = (200, 32) if ON_GPU else (60, 8)


def eight_bit(qmap_m, qmap_v):
    """AdamW whose m and v live in 8 bits with these maps, in blocks of 256 (the PyTorch reference step)."""
    return lambda groups: quant8.Fused8bitAdamW(groups, qmap_m, qmap_v, lr=3e-3, betas=(0.9, 0.95))


runs = {
    "fp32 AdamW": lambda groups: torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95)),
    "linear 8-bit states (blocks of 256)": eight_bit(LIN_S, LIN_U),
    "dynamic 8-bit states (blocks of 256)": eight_bit(DYN_S, DYN_U),
    "bitsandbytes AdamW8bit": lambda groups: bnb.optim.AdamW8bit(groups, lr=3e-3, betas=(0.9, 0.95)),
}
logs = {}
for name, make in runs.items():
    logs[name] = train(GPT(ABL_CFG, seed=0), corpus, steps=ABL_STEPS, batch_size=ABL_BATCH, lr=3e-3,
                       optimizer=make, device=DEV, progress=False, seed=0)
    print(f"{name:38} loss after {ABL_STEPS} steps: {logs[name].final_loss():.3f}")
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
for name, log in logs.items():
    log.plot(ax=ax, label=name)
ax.set_yscale("log")
ax.set_title(f"the same AdamW, four ways to store m and v ({ABL_CFG.n_layer}-layer GPT, batch {ABL_BATCH})")
plt.show()
# ==== cell adamw8bit_step_solution
@triton.jit
def adamw8bit_kernel(
    p_ptr,                 # pointer to the parameter, flat, n values (fp32 / fp16 / bf16), updated in place
    g_ptr,                 # pointer to the gradient, same layout and dtype
    m_ptr, v_ptr,          # pointers to the uint8 codes of m and v, n values each, updated in place
    m_absmax_ptr,          # pointer to m's absmax, fp32, one per block, updated in place
    v_absmax_ptr,          # pointer to v's absmax, fp32, one per block, updated in place
    qmap_m_ptr,            # pointer to m's code map (signed, 256 fp32)
    qmap_v_ptr,            # pointer to v's code map (unsigned, 256 fp32)
    mid_m_ptr,             # pointer to the 255 midpoints of m's map
    mid_v_ptr,             # pointer to the 255 midpoints of v's map
    n,                     # number of values
    n_blocks,              # number of blocks, ceil(n / BLOCK)
    beta1, beta2, eps,     # Adam's hyperparameters
    decay,                 # 1 - lr * weight_decay: the decoupled weight decay
    step_size,             # lr / (1 - beta1**t): the learning rate with m's bias correction
    c2,                    # sqrt(1 - beta2**t): v's bias correction
    BLOCK: tl.constexpr,   # values per absmax (256)
    ROWS: tl.constexpr,    # blocks per program (a power of two)
):
    ### BEGIN SOLUTION
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs = rows.to(tl.int64)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]    # a [ROWS, BLOCK] tile
    mask = offs < n
    row_ok = rows < n_blocks
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # 1. dequantize the moments: code[q] * the absmax of the block
    qm = tl.load(m_ptr + offs, mask=mask, other=0).to(tl.int32)
    qv = tl.load(v_ptr + offs, mask=mask, other=0).to(tl.int32)
    m = tl.load(qmap_m_ptr + qm) * tl.load(m_absmax_ptr + rows, mask=row_ok, other=0.0)[:, None]
    v = tl.load(qmap_v_ptr + qv) * tl.load(v_absmax_ptr + rows, mask=row_ok, other=0.0)[:, None]
    # 2. update them in fp32; values past n stay 0, so they never raise a block's absmax
    m = tl.where(mask, beta1 * m + (1.0 - beta1) * g, 0.0)
    v = tl.where(mask, beta2 * v + (1.0 - beta2) * g * g, 0.0)
    # 3. requantize them with a new absmax per block
    m_absmax = tl.max(tl.abs(m), axis=1)
    v_absmax = tl.max(v, axis=1)
    qm = nearest_code(m / tl.where(m_absmax > 0, m_absmax, 1.0)[:, None], mid_m_ptr)
    qv = nearest_code(v / tl.where(v_absmax > 0, v_absmax, 1.0)[:, None], mid_v_ptr)
    tl.store(m_ptr + offs, qm.to(tl.uint8), mask=mask)
    tl.store(v_ptr + offs, qv.to(tl.uint8), mask=mask)
    tl.store(m_absmax_ptr + rows, m_absmax, mask=row_ok)
    tl.store(v_absmax_ptr + rows, v_absmax, mask=row_ok)
    # 4. decoupled weight decay, then the bias-corrected step from the fp32 moments
    p = p * decay - step_size * m / (tl.sqrt(v) / c2 + eps)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    ### END SOLUTION


def adamw8bit_step(param: torch.Tensor, grad: torch.Tensor, state: dict, step: int, lr: float = 1e-3,
                   beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
    """One fused 8-bit AdamW step on ``param``, in place.

    Args:
        param: the parameter, contiguous, float32 / float16 / bfloat16; updated in place.
        grad: its gradient, same shape, dtype and device.
        state: a dict holding ``qmap_m`` (the signed map, for m) and ``qmap_v`` (the unsigned map, for v);
            on the first call add ``m``, ``v`` (uint8 codes, one per value) and ``m_absmax``,
            ``v_absmax`` (fp32, one per block of 256 values), all zero; every call updates them.
        step: t, the 1-based step count of the bias corrections.
        lr, beta1, beta2, eps, weight_decay: AdamW's hyperparameters (decoupled weight decay).
    """
    ### BEGIN SOLUTION
    n = param.numel()
    n_blocks = triton.cdiv(n, 256)
    if "m" not in state:          # zero moments: an absmax of 0 decodes every code to 0
        state["m"] = torch.zeros(n, dtype=torch.uint8, device=param.device)
        state["v"] = torch.zeros(n, dtype=torch.uint8, device=param.device)
        state["m_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=param.device)
        state["v_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=param.device)
    rows = min(256, triton.next_power_of_2(n_blocks)) if INTERPRET else 8
    qmap_m, qmap_v = state["qmap_m"], state["qmap_v"]
    adamw8bit_kernel[(triton.cdiv(n_blocks, rows),)](
        param, grad.contiguous(), state["m"], state["v"], state["m_absmax"], state["v_absmax"],
        qmap_m, qmap_v, midpoints(qmap_m), midpoints(qmap_v), n, n_blocks, beta1, beta2, eps,
        1.0 - lr * weight_decay, lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step),
        BLOCK=256, ROWS=rows, num_warps=8)
    ### END SOLUTION
# ==== cell demo_your_optimizer
YOURS_CFG = GPTConfig.preset("gpu-real" if ON_GPU else "cpu-tiny")
YOURS_STEPS, YOURS_BATCH = (30, 16) if ON_GPU else (3, 4)   # the interpreter runs your kernel in Python on a CPU
makers = {
    "PyTorch AdamW" + (" (fused)" if ON_GPU else ""): lambda g: torch.optim.AdamW(g, lr=1e-3, fused=ON_GPU or None),
    "bitsandbytes AdamW8bit": lambda g: bnb.optim.AdamW8bit(g, lr=1e-3),
    "your fused 8-bit AdamW": lambda g: quant8.Fused8bitAdamW(g, DYN_S, DYN_U, step_fn=adamw8bit_step, lr=1e-3),
}
try:
    print(f"{'optimizer':26} {'last loss':>10} {'state B/param':>14}" + (f" {'ms / step':>10}" if ON_GPU else ""))
    for name, make in makers.items():
        model = GPT(YOURS_CFG, seed=0)
        opt = make(param_groups(model.to(DEV), 0.1))
        log = train(model, corpus, steps=YOURS_STEPS, batch_size=YOURS_BATCH, lr=1e-3, optimizer=opt, device=DEV,
                    precision="bf16" if ON_GPU else "fp32", progress=False, seed=0)
        per_param = quant8.state_bytes(opt) / sum(p.numel() for p in model.parameters())
        print(f"{name:26} {log.losses[-1]:10.6f} {per_param:14.2f}" + (f" {1e3 * log.median_step_s:10.1f}" if ON_GPU else ""))
except NotImplementedError:
    print("Finish exercise 3 to train with your kernel.")
# ==== cell demo_paged
if ON_GPU:
    paged = quant8.paged_optimizer_demo(n_params=2 ** 27)
else:
    print("Paged optimizers live in CUDA unified memory: on a CPU there is nothing to page. On a GPU this cell "
          "fills the memory and runs AdamW8bit (out of memory) and PagedAdamW8bit (slower, but it runs).")
# ==== cell adafactor_solution
class Adafactor(torch.optim.Optimizer):
    """Adafactor (Shazeer & Stern, 2018) as torch.optim.Adafactor computes it: no momentum, a factored
    second moment for tensors of 2 or more dimensions, a relative step size and update clipping.

    Args:
        params: the parameters (or parameter groups).
        lr: the step-size cap: rho_t = min(lr, 1 / sqrt(t)).
        beta2_decay: 1 - beta2_t = t ** beta2_decay (1 at the first step).
        eps: (eps1, eps2): eps1 floors the second moment (None: the dtype's machine epsilon), eps2 the
            parameter scale of the relative step size.
        d: the update clipping threshold: the update is divided by max(1, RMS(update) / d).
        weight_decay: decoupled weight decay, p <- p * (1 - lr * weight_decay).
    """

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0):
        ### BEGIN SOLUTION
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay))
        ### END SOLUTION

    @torch.no_grad()
    def step(self, closure=None):
        """One Adafactor step for every parameter that has a gradient."""
        ### BEGIN SOLUTION
        for group in self.param_groups:
            eps1, eps2 = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if g.dim() >= 2:   # the factors: (..., n, 1) and (..., 1, m)
                        state["row"] = torch.zeros_like(g[..., :1])
                        state["col"] = torch.zeros_like(g[..., :1, :])
                    else:
                        state["v"] = torch.zeros_like(g)
                state["step"] += 1
                t = state["step"]
                e1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
                beta = t ** group["beta2_decay"]                      # 1 - beta2_t
                rho = min(group["lr"], 1.0 / math.sqrt(t))
                alpha = max(eps2, p.norm().item() / math.sqrt(p.numel())) * rho
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                if g.dim() >= 2:
                    state["row"].lerp_((g * g).mean(dim=-1, keepdim=True), beta)
                    state["col"].lerp_((g * g).mean(dim=-2, keepdim=True), beta)
                    v = state["row"] @ state["col"] / state["row"].mean(dim=-2, keepdim=True).clamp(min=e1)
                else:
                    state["v"].lerp_(g * g, beta)
                    v = state["v"]
                update = g * v.clamp(min=e1 * e1).rsqrt()
                update /= max(1.0, update.norm().item() / (math.sqrt(update.numel()) * group["d"]))
                p.add_(update, alpha=-alpha)
        ### END SOLUTION
# ==== cell demo_final
final_makers = {
    "fp32 AdamW": state_makers["fp32 AdamW"],
    "bitsandbytes AdamW8bit": state_makers["bitsandbytes AdamW8bit"],
    "your 8-bit AdamW": lambda ps: quant8.Fused8bitAdamW(ps, DYN_S, DYN_U, step_fn=adamw8bit_step, lr=1e-4),
    "torch Adafactor": state_makers["torch Adafactor"],
    "your Adafactor": lambda ps: Adafactor(ps, lr=1e-2),
}
final = {}
for name, make in final_makers.items():
    try:
        final[name] = quant8.memory_breakdown(mem_model, make, mem_batch)
    except NotImplementedError:
        print(f"({name}: finish its exercise to measure it)")
for name, m in final.items():
    print(f"{name:24} optimizer state {format_bytes(m['optimizer']):>10} = {m['optimizer'] / m['n_params']:.2f} B/param")
plot_training_memory({k: {s: m[s] for s in ("weights", "grads", "optimizer")} for k, m in final.items()},
                     unit="GiB" if ON_GPU else "MiB")
plt.title("the optimizers of this notebook on the course GPT")
plt.show()
