"""Notebook 06, part 3: QLoRA (exercise 5), when adapters pay, a fused LoRA kernel (exercise 6)."""
from grader.authoring import code, md, solution, test

MD_QLORA = md(r"""
## 4. QLoRA: LoRA on a 4-bit base

QLoRA (Dettmers et al., 2023) fine-tunes a 65 B model on one 48 GB GPU with three ideas:

1. the frozen base weights are stored in **NF4 with double quantization** (exercises 3–4): 4.127
   bits per parameter instead of 16;
2. they are **dequantized on the fly** to the compute dtype (bf16) for each matmul, in the
   forward *and again in the backward* — the gradient of the input needs $\hat W$, and keeping the
   dequantized copy for backward would cost the 16 bits per weight that were saved;
3. **paged optimizers**: the Adam states live in CUDA unified memory, so that a spike (a long
   sequence) pages them out to the CPU instead of running out of memory
   (`bitsandbytes.optim.PagedAdamW`). With LoRA the Adam states are small; paging matters for
   large models on small GPUs, not for the models of this course, and needs a GPU.

The layer is a `torch.autograd.Function` for $x\hat W^\top + b$ — whose backward dequantizes
again and returns $g\hat W$ for $x$ (the base gets no gradient) — plus the LoRA term of exercise 1.

### Exercise 5 — `QLoRALinear` (3 points correctness + 1 point memory)

* `__init__(base, r, alpha)`: quantize `base.weight` with **your** `nf4_quantize(…,
  double_quant=True)` and register the four tensors as buffers; keep the bias (frozen); create
  `lora_A` (Kaiming-uniform) and `lora_B` (zeros) in fp32, and `scaling = alpha / r`. Do **not**
  keep `base` or its weight: the point is that the 16/32-bit weight can be freed.
* `quant_state()` returns the dict of the four buffers; `dequantized(dtype)` returns $\hat W$.
* `forward(x)` computes $x\hat W^\top + b + \frac{\alpha}{r}(xA^\top)B^\top$ in `x`'s dtype.

Checked: the storage (≤ 4.13 bits per base parameter, no full-precision copy anywhere, only $A$
and $B$ train); forward and gradients against bitsandbytes' dequantization of your layer's own
state; the bytes a forward saves for backward (no $\hat W$); and a **QLoRA fine-tune** of the
pretrained tiny GPT on a new domain (every `c_fc` on a CPU, every Linear on a GPU) whose first loss
must be the NF4 base's and whose loss after the last step must lie within **0.05**
(`FINETUNE_MARGIN`) of peft's LoRA on the bf16 base, started from your layers' initial $A$.

**Memory (graded on a GPU):** a GPT of 12 blocks of width 2048 (0.6 B parameters) built block by
block — each block converted to QLoRA as soon as it exists — plus one training step at batch 1 ×
128 must peak at **≤ 0.5×** peft's LoRA on the bf16 model (`QLORA_MEMORY_RATIO`).
""", "md_qlora")

QLORA_SOLUTION = solution(r"""
class NF4Linear(torch.autograd.Function):
    '''x Ŵᵀ + b with Ŵ dequantized from the layer's NF4 state in forward and again in backward.'''

    @staticmethod
    def forward(ctx, x, layer):
        # x: (M, d_in); layer: the QLoRALinear whose state to use (its bias is frozen)
        ### BEGIN SOLUTION
        ctx.layer = layer                                   # a reference, not a tensor: nothing is saved
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return F.linear(x, layer.dequantized(x.dtype), bias)
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad):
        # grad: (M, d_out); returns the gradient of x and None for layer
        ### BEGIN SOLUTION
        return grad @ ctx.layer.dequantized(grad.dtype), None
        ### END SOLUTION


class QLoRALinear(nn.Module):
    '''A frozen NF4 base weight (double quantization) plus a trainable LoRA update (QLoRA).'''

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        # base: the layer to quantize (only read here: do not keep it)
        # r, alpha: as in LoRALinear (scale alpha / r); the adapters are fp32
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"QLoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.in_features, self.out_features, self.r = base.in_features, base.out_features, int(r)
        self.weight_dtype = base.weight.dtype               # the compute dtype of dequantized()
        ### BEGIN SOLUTION
        for name, t in nf4_quantize(base.weight.detach(), double_quant=True).items():
            self.register_buffer(name, t)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        self.scaling = alpha / r
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        ### END SOLUTION

    def quant_state(self) -> dict:
        '''The NF4 state of the base weight: {"packed", "absmax", "absmax2", "offset"}.'''
        ### BEGIN SOLUTION
        return {"packed": self.packed, "absmax": self.absmax, "absmax2": self.absmax2, "offset": self.offset}
        ### END SOLUTION

    def dequantized(self, dtype=None) -> torch.Tensor:
        '''Ŵ, (d_out, d_in), in dtype (default: the base weight's dtype).'''
        ### BEGIN SOLUTION
        return nf4_dequantize(self.quant_state(), (self.out_features, self.in_features), dtype or self.weight_dtype)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., d_in) in the compute dtype; returns (..., d_out)
        ### BEGIN SOLUTION
        x2 = x.reshape(-1, self.in_features)
        y = NF4Linear.apply(x2, self)
        xa = x2 @ self.lora_A.t().to(x2.dtype)
        y = torch.addmm(y, xa, self.lora_B.t().to(xa.dtype), alpha=self.scaling)
        return y.view(*x.shape[:-1], self.out_features)
        ### END SOLUTION
""", "qlora_solution")

QLORA_CHECK = test(r"""
# Check exercise 5, correctness (graded; the last line is your points).
result = check("QLoRALinear", QLoRALinear)
result.points
""", "qlora_check", points=3)

QLORA_MEMORY = test(r"""
# Check exercise 5, memory (graded on a CUDA GPU; on a CPU it awards nothing and says so).
result = check("QLoRALinear", QLoRALinear, "memory")
result.points
""", "qlora_memory", points=1)

MD_FINETUNE = md(r"""
### A QLoRA fine-tune of the course GPT

The pretrained tiny GPT knows Python code; the new domain is `pydoc_data/topics.py` — the prose
of the Python documentation, which pretraining never saw (`lora.finetune_data()`). The cell
fine-tunes it three ways on the same batches: peft's LoRA and yours on the bf16 base, and your
QLoRA on the NF4 base (every Linear of the blocks, $r = 8$, $\alpha = 16$). NF4 costs the base a
little loss; the adapters win it back.
""", "md_finetune")

DEMO_FINETUNE = code(r"""
steps = 100 if GPU else 8
train_bytes, val_bytes = lora.finetune_data()
base = lora.load_tiny_base(device=DEV)
print(f"validation loss of the base: {lora.eval_loss(base, val_bytes):.4f}")
runs = {}
try:
    for name, make in (("peft LoRA, bf16 base", lambda m: lora.peft_lora(m, r=8, alpha=16)),
                       ("your LoRA, bf16 base", lambda m: lora.adapt(m, lambda lin: LoRALinear(lin, 8, 16))),
                       ("your QLoRA, NF4 base", lambda m: lora.adapt(m, lambda lin: QLoRALinear(lin, 8, 16)))):
        model = make(copy.deepcopy(base))
        before = lora.eval_loss(model, val_bytes)
        t0 = time.perf_counter()
        losses = lora.finetune(model, steps, batch=16, lr=3e-3, data=train_bytes)
        runs[name] = dict(losses=losses, before=before, after=lora.eval_loss(model, val_bytes),
                          s=time.perf_counter() - t0)
except NotImplementedError:
    print("Finish exercises 1, 3, 4 and 5 to fine-tune with your layers (peft's run is below).")
for name, r in runs.items():
    print(f"{name:22} validation loss {r['before']:.4f} → {r['after']:.4f}  ({r['s']:.1f} s for {steps} steps)")
if runs:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    for name, r in runs.items():
        ax1.plot(r["losses"], label=name)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (one batch per step)")
    ax1.set_title(f"fine-tuning the tiny GPT on {lora.FINETUNE_FILE}")
    ax1.legend(fontsize=8)
    xs = torch.arange(len(runs)).float()
    ax2.bar(xs - 0.2, [r["before"] for r in runs.values()], width=0.4, label="before", color="C7")
    ax2.bar(xs + 0.2, [r["after"] for r in runs.values()], width=0.4, label=f"after {steps} steps", color="C2")
    ax2.set_xticks(xs.tolist(), [n.replace(", ", "\n") for n in runs], fontsize=8)
    ax2.set_ylim(min(r["after"] for r in runs.values()) * 0.9, max(r["before"] for r in runs.values()) * 1.03)
    ax2.set_ylabel("validation loss")
    ax2.set_title("held-out documentation prose: before and after")
    ax2.legend(fontsize=8)
    plt.show()
""", "demo_finetune")

MD_PAYS = md(r"""
## 5. When does LoRA pay?

Adapters remove the gradients and the optimizer state of the frozen weights, and QLoRA also shrinks
the weights — but neither touches the **activations**, and both *add* work to every step: the
low-rank matmuls and, for QLoRA, two dequantizations per layer. Measured on an H200 (2026-12-01)
with the course GPT `gpu-real` (86 M parameters, bf16, batch 16 × 1024), every Linear adapted at
$r = 16$:

| | step | peak memory |
|---|---|---|
| full fine-tuning | 30.5 ms | 6.53 GiB |
| peft LoRA | 42.1 ms | 6.36 GiB |
| peft + bitsandbytes QLoRA | 57.6 ms | 7.04 GiB |

At this size the activations dominate: LoRA saves 3 % of the memory and costs 38 % more time;
QLoRA even needs *more* memory (its dequantized copies). Adapters win when the **model state**
dominates — many or wide layers, short sequences, small batches: the regime of fine-tuning a
large model on one GPU. The sweep below measures the three methods on two widths and three batch
sizes with your layers (`lora.measure_step`: weights, gradients and Adam state counted from the
tensors, activations from the tensors autograd saves; on a GPU the allocator's real peak).
""", "md_pays")

DEMO_PAYS = code(r"""
if GPU:
    widths, batches, T, reps = [(768, 12), (2048, 12)], [1, 16], 512, 3
else:
    widths, batches, T, reps = [(64, 2), (192, 2)], [1, 16], 64, 0
dtype = torch.bfloat16 if GPU else torch.float32


def build(cfg, method):
    if method == "full":                                      # fp32 master weights, bf16 autocast on a GPU
        return lora.build_gpt(cfg, device=DEV, dtype=torch.float32)
    if method == "lora":
        return lora.adapt(lora.build_gpt(cfg, device=DEV, dtype=dtype), lambda lin: LoRALinear(lin, 16, 32))
    model = lora.build_gpt(cfg, device=DEV, dtype=dtype,
                           convert=lambda block: lora.adapt(block, lambda lin: QLoRALinear(lin, 16, 32)))
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


sweep = {}
try:
    for C, L in widths:
        cfg = GPTConfig(block_size=T, n_layer=L, n_head=max(1, C // 64), n_embd=C)
        for method in ("full", "lora", "qlora"):
            model = build(cfg, method)
            for B in batches:
                tok = torch.randint(0, 256, (B, T + 1), generator=torch.Generator().manual_seed(B))
                sweep[(C, method, B)] = lora.measure_step(model, (tok[:, :-1], tok[:, 1:]),
                                                          autocast=GPU and method == "full", reps=reps)
            del model
            if GPU:
                torch.cuda.empty_cache()
except NotImplementedError:
    sweep = {}
    print("Finish exercises 1, 3, 4 and 5 to run the sweep with your layers.")
if sweep:
    fig, axes = plt.subplots(1, 2 * len(widths), figsize=(13, 3.4), layout="constrained")
    for i, (C, L) in enumerate(widths):
        for method, style in (("full", "o-"), ("lora", "s-"), ("qlora", "^-")):
            mem = [sweep[(C, method, B)]["peak"] / 2**20 for B in batches]
            ms = [sweep[(C, method, B)]["ms"] for B in batches]
            axes[2 * i].plot(batches, mem, style, label=method)
            axes[2 * i + 1].plot(batches, ms, style, label=method)
        axes[2 * i].set_title(f"width {C}, {L} layers: peak memory (MiB)", fontsize=9)
        axes[2 * i + 1].set_title(f"width {C}: ms per step", fontsize=9)
        for ax in axes[2 * i: 2 * i + 2]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"batch (× {T} tokens)")
            ax.legend(fontsize=8)
    plt.show()
    print(f"{'width':>5} {'batch':>5} | {'full MiB':>9} {'LoRA':>7} {'QLoRA':>7} | {'full ms':>8} {'LoRA':>7} {'QLoRA':>7}")
    for C, _ in widths:
        for B in batches:
            m = [sweep[(C, k, B)] for k in ("full", "lora", "qlora")]
            print(f"{C:5} {B:5} | " + " ".join(f"{x['peak'] / 2**20:8.1f}" for x in m) + " | "
                  + " ".join(f"{x['ms']:7.1f}" for x in m))
    if not GPU:
        print("(CPU: memory is counted from the tensors; QLoRA's times are those of Triton's interpreter.)")
""", "demo_pays")

MD_EX6 = md(r"""
## 6. One kernel for the LoRA linear

peft's LoRA layer runs `base(x)`, `lora_A(x)`, `lora_B(·)`, `· * scaling` and `result + ·`: five
kernels, of which the last three read or write a full $M \times N$ tensor. When $K = d_\text{in}$ is
small those passes cost as much as the matmul itself: a matmul does $2MNK$ FLOPs, the three
elementwise passes move about $5 \cdot 2MN$ bytes, so at $K = 768$ on an H200 (≈ 790 TFLOP/s,
≈ 4.3 TB/s) they take about as long as the GEMM.

A fused kernel computes each $M\times N$ output tile in one program: in the loop over $K$ it
accumulates $xW^\top$ **and** $xA^\top$ (a `BLOCK_M × r` tile that stays in registers — $xA^\top$
is never written to memory), then adds $s\,(xA^\top)B^\top$ and the bias once, and stores the tile:
$x$ is read once per column of tiles, $y$ written once. The price is recomputing $xA^\top$ for
every column of tiles — $r/\text{BLOCK\_N}$ of the main matmul's work, about 12 % at $r = 16$.

### Exercise 6 — `lora_linear(x, weight, bias, lora_A, lora_B, scaling)` (2 points correctness + 2 points speed)

One Triton kernel for $x W^\top + b + s\,(xA^\top)B^\top$; `x` is $(\dots, K)$, `weight`
$(N, K)$, `bias` $(N,)$ or `None`, `lora_A` $(r, K)$, `lora_B` $(N, r)$; return $(\dots, N)$ in
`x`'s dtype (fp32, fp16, bf16 on a GPU; accumulate in fp32). Any $M$, $K$, $N$ and $r$: pad $r$
to a power of two ≥ 16 for `tl.dot` and mask.

**Speed (graded on a GPU):** the course GPT's MLP up-projection at batch 16 × 1024 in bf16
($M = 16384$, $K = 768$, $N = 3072$, $r = 16$), at least **1.3×** faster than peft's `lora.Linear`
with bf16 adapters (`FUSED_SPEED_THRESHOLD`).
""", "md_ex6")

FUSED_SOLUTION = solution(r"""
@triton.jit
def lora_linear_kernel(
    x_ptr,                  # pointer to x, (M, K), unit column stride
    w_ptr,                  # pointer to the base weight, (N, K), unit column stride
    bias_ptr,               # pointer to the bias, (N,) (read only when HAS_BIAS)
    a_ptr,                  # pointer to lora_A, (R, K)
    b_ptr,                  # pointer to lora_B, (N, R)
    y_ptr,                  # out: (M, N), x's dtype
    M, N, K, R,             # sizes
    scaling,                # the LoRA scale s
    stride_xm, stride_wn, stride_am, stride_bn, stride_ym,  # row strides (elements)
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,  # a power of two >= max(R, 16): tl.dot needs 16
    GROUP_M: tl.constexpr,  # tiles of M per group of the program order (L2 reuse of W)
):
    ### BEGIN SOLUTION
    tile = tl.program_id(0)                                     # one (BLOCK_M × BLOCK_N) output tile
    n_m, n_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    first_m = (tile // (GROUP_M * n_n)) * GROUP_M                # grouped ordering: neighbours share W tiles
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (tile % (GROUP_M * n_n)) % size_m
    pid_n = (tile % (GROUP_M * n_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, BLOCK_R)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    xa = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)                # x Aᵀ for this row tile: registers only
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_xm + kk[None, :],
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        w = tl.load(w_ptr + rn.to(tl.int64)[:, None] * stride_wn + kk[None, :],
                    mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
        a = tl.load(a_ptr + rr[:, None] * stride_am + kk[None, :], mask=(rr[:, None] < R) & (kk[None, :] < K),
                    other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        xa = tl.dot(x, tl.trans(a), xa)
    b = tl.load(b_ptr + rn.to(tl.int64)[:, None] * stride_bn + rr[None, :], mask=(rn[:, None] < N) & (rr[None, :] < R),
                other=0.0)
    acc = tl.dot((xa * scaling).to(b.dtype), tl.trans(b), acc)    # + s (x Aᵀ) Bᵀ
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))
    ### END SOLUTION


def lora_linear(x, weight, bias, lora_A, lora_B, scaling):
    '''x Wᵀ + b + scaling · (x Aᵀ) Bᵀ in one kernel; x (..., K) -> (..., N) in x's dtype.'''
    ### BEGIN SOLUTION
    K, N, R = x.shape[-1], weight.shape[0], lora_A.shape[0]
    x2 = x.reshape(-1, K).contiguous()                      # (M, K) rows, unit column stride
    w, a, b = weight.contiguous(), lora_A.contiguous(), lora_B.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    BLOCK_R = max(16, triton.next_power_of_2(R))
    if INTERPRET:
        BM, BN, BK, warps, stages = 64, 64, 64, 4, 1
    else:                                                       # H100/H200, bf16: to tune with the GPU script
        BM, BN, BK, warps, stages = 128, 128, 64, 8, 3
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    lora_linear_kernel[grid](x2, w, bias if bias is not None else w, a, b, y, M, N, K, R, float(scaling),
                             x2.stride(0), w.stride(0), a.stride(0), b.stride(0), y.stride(0),
                             HAS_BIAS=bias is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, BLOCK_R=BLOCK_R,
                             GROUP_M=8, num_warps=warps, num_stages=stages)
    return y.view(*x.shape[:-1], N)
    ### END SOLUTION
""", "lora_linear_solution")

FUSED_CHECK = test(r"""
# Check exercise 6, correctness (graded; the last line is your points).
result = check("lora_linear", lora_linear)
result.points
""", "lora_linear_check", points=2)

FUSED_SPEED = test(r"""
# Check exercise 6, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).
result = check("lora_linear", lora_linear, "speed")
result.points
""", "lora_linear_speed", points=2)

DEMO_FUSED = code(r"""
if GPU:
    M, K, N, r = 16384, 768, 3072, 16
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device=DEV, generator=g, dtype=torch.bfloat16)
    lin = nn.Linear(K, N, device=DEV, dtype=torch.bfloat16)
    layer = lora.peft_lora(nn.Sequential(lin), r=r, alpha=2 * r, targets=("0",), fp32_adapters=False)
    A, B = (torch.randn(r, K, device=DEV, dtype=torch.bfloat16) / K ** 0.5,
            torch.randn(N, r, device=DEV, dtype=torch.bfloat16) * 0.1)
    try:
        cmp = bench.compare({
            "F.linear (the base matmul alone)": lambda: F.linear(x, lin.weight, lin.bias),
            "peft lora.Linear (bf16 adapters)": lambda: layer(x),
            "your fused lora_linear": lambda: lora_linear(x, lin.weight, lin.bias, A, B, 2.0),
        }, max_time_s=1.0)
        print(cmp.table())
        t = cmp.timings["your fused lora_linear"]
        print("yours:", bench.throughput(t, flops=2 * M * N * K + 2 * M * r * (K + N)))
    except NotImplementedError:
        print("Finish exercise 6 to time your kernel.")
else:
    print("(CPU: Triton's interpreter runs the kernel for the checks; its speed is measured on a GPU.)")
""", "demo_fused")

SUMMARY = md(r"""
## Summary

* **LoRA** trains $r(d_\text{in} + d_\text{out})$ parameters per layer instead of
  $d_\text{in}d_\text{out}$; with $B = 0$ it starts at the pretrained model, and merging makes it
  free at inference. **rsLoRA**'s $\alpha/\sqrt r$ keeps large ranks learning.
* **DoRA** trains a magnitude per output row beside a LoRA-updated, normalised direction; the
  norm is treated as a constant in backward.
* **NF4** places 16 codes at quantiles of the normal distribution; blocks of 64 with their
  absmax, double-quantised in 8 bits, cost **4.127 bits per weight** — about a quarter of bf16.
* **QLoRA** keeps the base in NF4 and dequantizes it on the fly, twice per step; the adapters win
  back the loss that quantization costs.
* Adapters save **model state**, not activations, and cost extra kernels: they pay for large
  models at small batches, not for a small model at a large batch — measure before you choose.
  Fusing the low-rank path into the base matmul removes most of their time cost.

**Next: 07 — Quantization** (post-training quantization, GPTQ, AWQ), where the quantized weights
are the whole model, not a frozen base under adapters.
""", "summary")

CELLS = [MD_QLORA, QLORA_SOLUTION, QLORA_CHECK, QLORA_MEMORY, MD_FINETUNE, DEMO_FINETUNE, MD_PAYS, DEMO_PAYS, MD_EX6,
         FUSED_SOLUTION, FUSED_CHECK, FUSED_SPEED, DEMO_FUSED, SUMMARY]
