"""Notebook 06, part 2: NF4 and double quantization (exercises 3 and 4, Triton kernels)."""
from grader.authoring import code, md, solution, test

MD_NF4 = md(r"""
## 3. NF4: four bits per weight

**Blockwise absmax quantization.** Cut the flattened weight into blocks of 64 values; divide each
block by its absolute maximum, so every value lands in $[-1, 1]$; round it to the nearest of 16
code values and store the 4-bit index; keep the block's absmax. Dequantize with
$\hat w = \text{absmax}_b \cdot \text{code}[q]$. Small blocks keep an outlier from flattening the
resolution of the whole tensor: it only costs its own 64 neighbours.

**Which 16 values?** Pretrained weights are close to normally distributed, so the best code for
them puts equal probability mass between consecutive values — **quantiles** of $N(0, 1)$.
QLoRA's **NormalFloat** (NF4, Dettmers et al., 2023, §3 and appendix E) needs an exact zero as
well (padding, pruned weights), which a symmetric quantile code lacks, so it takes 8 quantiles for
the positive half and 7 for the negative half, each over probabilities from
$\delta = 1 - \frac12(\frac1{30} + \frac1{32}) = 0.9677$ down to $\frac12$, merges the two zeros
into one, and rescales to $[-1, 1]$: 8 + 7 + 1 = 16 values. The cell below re-derives them and
compares them with bitsandbytes' table (`effilab.nf4.NF4_VALUES`).

**Packing.** Two codes per byte: element $2i$ in the *high* nibble, $2i+1$ in the low one, as
bitsandbytes does; an odd count leaves a padding nibble in the last byte.

**Double quantization** (QLoRA §3). An fp32 absmax per 64 values costs $32/64 = 0.5$ bit per
parameter — an eighth of the 4 bits. QLoRA quantizes the absmax values too: subtract their mean
(the **offset**; they are all positive, and centring them uses the signed code fully), then
quantize them in blocks of 256 with an **8-bit** code and one fp32 **absmax2** per block:
$8/64 + 32/(64\cdot256) = 0.127$ bit per parameter, **4.127 bits** in all. The 8-bit code is the
"dynamic" data type of Dettmers (2016): a sign, a decade $10^{k-6}$ and $2^k$ linear fractions
(`nf4.dynamic_code()`, 256 sorted values).
""", "md_nf4")

DEMO_NF4 = code(r"""
import bitsandbytes.functional as bnbf   # the library QLoRA shipped with (here only to compare)

derived = nf4.nf4_from_normal_quantiles()
print("NF4 from the normal quantiles:", [round(v, 4) for v in derived.tolist()])
print(f"largest difference to bitsandbytes' table: {(derived.float() - NF4_TABLE).abs().max().item():.1e}")

base = lora.load_tiny_base()
weights = [lin.weight.detach() for _, lin in lora.target_linears(base)]
w_all = torch.cat([w.reshape(-1) for w in weights])


def int4_round_trip(w):
    '''Blockwise absmax with 15 evenly spaced levels (symmetric INT4, -7…7 / 7): the uniform alternative.'''
    flat = w.reshape(-1, 64)
    amax = flat.abs().amax(1, keepdim=True)
    return ((flat / amax * 7).round() / 7 * amax).view(w.shape)


errors = {"INT4 (uniform)": [], "FP4 (bitsandbytes)": [], "NF4 (bitsandbytes)": []}
for w in weights + [torch.randn(256, 256, generator=torch.Generator().manual_seed(0))]:
    errors["INT4 (uniform)"].append(nf4.relative_error(w, int4_round_trip(w)))
    q, st = bnbf.quantize_4bit(w.contiguous(), blocksize=64, quant_type="fp4")
    errors["FP4 (bitsandbytes)"].append(nf4.relative_error(w, bnbf.dequantize_4bit(q, st)))
    errors["NF4 (bitsandbytes)"].append(nf4.relative_error(w, nf4.bnb_round_trip(w, double_quant=False)))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
scaled = (w_all.view(-1, 64) / w_all.view(-1, 64).abs().amax(1, keepdim=True)).reshape(-1)
axes[0].hist(scaled.numpy(), bins=120, color="C7")
for v in NF4_TABLE.tolist():
    axes[0].axvline(v, color="C3", lw=0.8)
axes[0].set_title("pretrained tiny-GPT weights / block absmax, with the 16 NF4 values")
labels = [n.removeprefix("blocks.") for n, _ in lora.target_linears(base)] + ["N(0,1) 256²"]
xs = torch.arange(len(labels)).float()
for i, (name, errs) in enumerate(errors.items()):
    axes[1].bar(xs + 0.27 * (i - 1), errs, width=0.27, label=name)
axes[1].set_xticks(xs.tolist(), labels, rotation=30, ha="right", fontsize=8)
axes[1].set_ylabel("‖w − ŵ‖ / ‖w‖")
axes[1].set_title("4-bit round-trip error per weight matrix (blocks of 64)")
axes[1].set_ylim(0, max(max(e) for e in errors.values()) * 1.3)
axes[1].legend(fontsize=8, ncol=3, loc="upper center")
plt.show()
for name, errs in errors.items():
    print(f"{name:20} mean relative error {sum(errs) / len(errs):.4f}")
""", "demo_nf4")

MD_EX3 = md(r"""
### Exercise 3 — `nf4_quantize(w, double_quant=True)` in Triton (3 points correctness + 1 point speed)

Write the kernels and the launcher. `w` is any float32 / float16 / bfloat16 tensor, read flat;
return a dict (the layout of `effilab.nf4`, the one bitsandbytes uses):

| key | dtype, shape | what |
|---|---|---|
| `packed` | uint8, $\lceil n/2\rceil$ | two codes per byte, element $2i$ in the high nibble |
| `absmax` | float32, $\lceil n/64\rceil$ — or, with double quantization, **uint8** | max $\lvert w\rvert$ of each block / its 8-bit code |
| `absmax2` | float32, $\lceil n_\text{blocks}/256\rceil$ | double quantization only: max $\lvert\text{absmax}-\text{offset}\rvert$ per 256 blocks |
| `offset` | float32, 0-dim | double quantization only: the mean of the fp32 absmax |

Rules, all checked against `bitsandbytes.functional.quantize_4bit(w, blocksize=64,
quant_type="nf4", compress_statistics=double_quant)`:

* compute in fp32; a value's code is the **nearest** NF4 value to `w / absmax` (compare with the
  midpoints between neighbours; a value exactly on a midpoint may go either way); an all-zero block
  has absmax 0 and any code;
* the last block may be partial and the count odd: mask the loads (`other=0.0`);
* double quantization: the absmax codes are the nearest `DYNAMIC_TABLE` values to
  `(absmax − offset) / absmax2`; the offset is a mean over *all* blocks, so it needs a second
  launch after the first has finished (an atomic add of each program's partial sum is one way to
  collect it); the checker accepts any summation order (within $10^{-5}$);
* on large tensors the state must take **≤ 4.13 bits per parameter** (`nf4.bits_per_param`).

`nearest_code` is a small `@triton.jit` helper you write once and use for both codes. Write your
own kernels: bitsandbytes (and `effilab.nf4.bnb_*`) earn nothing here.

**Speed (graded on a GPU):** on an 8192 × 8192 bf16 weight with double quantization, at least
**3.5×** faster than bitsandbytes' `quantize_4bit` (`QUANT_SPEED_THRESHOLD`). One pass over the
weight: each program quantizes a 2-D tile of many blocks.
""", "md_ex3")

QUANT_SOLUTION = solution(r"""
@triton.jit
def nearest_code(
    s,                      # a tile of values in [-1, 1] (float32)
    code_ptr,               # pointer to a sorted table of 2**BITS float32 values
    BITS: tl.constexpr,     # 4 for NF4, 8 for the dynamic code
):
    '''The index (int32, s's shape) of the table entry nearest to each value of s.'''
    ### BEGIN SOLUTION
    # Branch-free binary search over the midpoints between neighbours: BITS steps of one comparison.
    idx = tl.zeros(s.shape, tl.int32)
    for i in tl.static_range(BITS):
        step = 1 << (BITS - 1 - i)
        mid = (tl.load(code_ptr + idx + (step - 1)) + tl.load(code_ptr + idx + step)) * 0.5
        idx = tl.where(s > mid, idx + step, idx)
    return idx
    ### END SOLUTION


@triton.jit
def nf4_quantize_kernel(
    w_ptr,                  # pointer to the weight, flat, n values (fp32/fp16/bf16)
    code_ptr,               # pointer to NF4_TABLE (16 float32)
    packed_ptr,             # out: ceil(n / 2) uint8, two codes per byte
    absmax_ptr,             # out: n_blocks float32, max |w| of each block of 64
    sum_ptr,                # out (double quantization): a float64 scalar, += the sum of this program's absmax
    n,                      # number of values
    n_blocks,               # ceil(n / 64)
    BLOCKS: tl.constexpr,   # blocks of 64 per program (a power of two)
    SUM: tl.constexpr,      # accumulate the absmax sum (double quantization)
):
    ### BEGIN SOLUTION
    blk = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    offs = blk.to(tl.int64)[:, None] * 64 + tl.arange(0, 64)[None, :]      # a (BLOCKS, 64) tile
    x = tl.load(w_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    s = x * (1.0 / tl.where(amax > 0, amax, 1.0))[:, None]                  # an all-zero block stays 0
    hi, lo = tl.split(tl.reshape(nearest_code(s, code_ptr, 4), (BLOCKS, 32, 2)))  # elements 2i, 2i + 1
    poffs = blk.to(tl.int64)[:, None] * 32 + tl.arange(0, 32)[None, :]
    tl.store(packed_ptr + poffs, (hi * 16 + lo).to(tl.uint8), mask=poffs * 2 < n)
    tl.store(absmax_ptr + blk, amax, mask=blk < n_blocks)
    if SUM:
        tl.atomic_add(sum_ptr, tl.sum(tl.where(blk < n_blocks, amax, 0.0), axis=0).to(tl.float64))
    ### END SOLUTION


@triton.jit
def absmax_quantize_kernel(
    absmax_ptr,             # pointer to the n_blocks float32 absmax
    sum_ptr,                # pointer to their float64 sum
    dyn_ptr,                # pointer to DYNAMIC_TABLE (256 float32)
    q_ptr,                  # out: n_blocks uint8 codes
    absmax2_ptr,            # out: n_groups float32, max |absmax - offset| of each group of 256
    offset_ptr,             # out: the float32 offset (mean of the absmax)
    n_blocks,               # number of absmax values
    n_groups,               # ceil(n_blocks / 256)
    GROUPS: tl.constexpr,   # groups of 256 per program
):
    ### BEGIN SOLUTION
    grp = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    i = grp.to(tl.int64)[:, None] * 256 + tl.arange(0, 256)[None, :]
    ok = i < n_blocks
    offset = (tl.load(sum_ptr) / n_blocks).to(tl.float32)
    v = tl.where(ok, tl.load(absmax_ptr + i, mask=ok, other=0.0) - offset, 0.0)
    amax2 = tl.max(tl.abs(v), axis=1)
    s = v * (1.0 / tl.where(amax2 > 0, amax2, 1.0))[:, None]
    tl.store(q_ptr + i, nearest_code(s, dyn_ptr, 8).to(tl.uint8), mask=ok)
    tl.store(absmax2_ptr + grp, amax2, mask=grp < n_groups)
    if tl.program_id(0) == 0:
        tl.store(offset_ptr, offset)
    ### END SOLUTION


def nf4_quantize(w: torch.Tensor, double_quant: bool = True) -> dict:
    '''NF4 codes of w (read flat) in blocks of 64, with the absmax of each block — double-quantised
    (8-bit codes in blocks of 256, absmax2, offset) when double_quant. Layout: see the table above.'''
    ### BEGIN SOLUTION
    n = w.numel()
    nb = triton.cdiv(n, 64)
    dev = w.device
    flat = w.contiguous().view(-1)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=dev)
    absmax = torch.empty(nb, dtype=torch.float32, device=dev)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    BLOCKS = min(1024, triton.next_power_of_2(nb)) if INTERPRET else 64    # CPU: few, fat programs
    nf4_quantize_kernel[(triton.cdiv(nb, BLOCKS),)](flat, on_device(NF4_TABLE, dev), packed, absmax, total, n, nb,
                                                    BLOCKS=BLOCKS, SUM=double_quant)
    if not double_quant:                                # fp32 absmax: 4.5 bits per value
        return {"packed": packed, "absmax": absmax}
    ng = triton.cdiv(nb, 256)
    codes = torch.empty(nb, dtype=torch.uint8, device=dev)
    absmax2 = torch.empty(ng, dtype=torch.float32, device=dev)
    offset = torch.empty((), dtype=torch.float32, device=dev)
    GROUPS = min(64, triton.next_power_of_2(ng)) if INTERPRET else 1
    absmax_quantize_kernel[(triton.cdiv(ng, GROUPS),)](absmax, total, on_device(DYNAMIC_TABLE, dev), codes, absmax2, offset,
                                                       nb, ng, GROUPS=GROUPS)
    return {"packed": packed, "absmax": codes, "absmax2": absmax2, "offset": offset}
    ### END SOLUTION
""", "nf4_quantize_solution")

QUANT_CHECK = test(r"""
# Check exercise 3, correctness (graded; the last line is your points).
result = check("nf4_quantize", nf4_quantize)
result.points
""", "nf4_quantize_check", points=3)

QUANT_SPEED = test(r"""
# Check exercise 3, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).
result = check("nf4_quantize", nf4_quantize, "speed")
result.points
""", "nf4_quantize_speed", points=1)

MD_EX4 = md(r"""
### Exercise 4 — `nf4_dequantize(q, shape, dtype)` in Triton (2 points correctness + 1 point speed)

The inverse: $\hat w_j = \text{NF4}[\text{code}_j]\cdot\text{absmax}_{\lfloor j/64\rfloor}$, where a
double-quantised absmax is first decoded as
$\text{absmax}_b = \text{dynamic}[\text{code}_b]\cdot\text{absmax2}_{\lfloor b/256\rfloor} + \text{offset}$
(fp32). Return a tensor of `shape` and `dtype` (fp32, fp16 or bf16: compute in fp32, round once),
equal to `bitsandbytes.functional.dequantize_4bit` of the same state.

**Speed (graded on a GPU):** 8192 × 8192 to bf16 from a double-quantised state, at least as fast
(**1×**) as bitsandbytes' `dequantize_4bit` (`DEQUANT_SPEED_THRESHOLD`), which decodes the absmax
in a separate pass. Decode them inside your kernel, store each block of 64 outputs as one
contiguous row (`tl.join(high, low)` then `tl.reshape`), and copy the code tables to the GPU once
(`on_device`): a `.to(device)` per call is a blocking host-to-device copy that costs as much as
the kernel.
""", "md_ex4")

DEQUANT_SOLUTION = solution(r"""
@triton.jit
def nf4_dequantize_kernel(
    packed_ptr,             # pointer to ceil(n / 2) uint8, two codes per byte (high nibble first)
    code_ptr,               # pointer to NF4_TABLE (16 float32)
    absmax_ptr,             # pointer to the absmax: n_blocks float32, or uint8 codes when DOUBLE
    absmax2_ptr,            # pointer to absmax2 (n_groups float32; read only when DOUBLE)
    offset_ptr,             # pointer to the float32 offset (read only when DOUBLE)
    dyn_ptr,                # pointer to DYNAMIC_TABLE (256 float32)
    out_ptr,                # out: n values of the output dtype
    n,                      # number of values
    n_blocks,               # ceil(n / 64)
    BLOCKS: tl.constexpr,   # blocks of 64 per program
    DOUBLE: tl.constexpr,   # the absmax are double-quantised
):
    ### BEGIN SOLUTION
    blk = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    poffs = blk.to(tl.int64)[:, None] * 32 + tl.arange(0, 32)[None, :]
    byte = tl.load(packed_ptr + poffs, mask=poffs * 2 < n, other=0).to(tl.int32)
    codes = tl.reshape(tl.join(byte >> 4, byte & 15), (BLOCKS, 64))       # element 2i, then 2i + 1
    if DOUBLE:
        qa = tl.load(absmax_ptr + blk, mask=blk < n_blocks, other=0).to(tl.int32)
        a = tl.load(dyn_ptr + qa) * tl.load(absmax2_ptr + blk // 256, mask=blk < n_blocks, other=0.0) \
            + tl.load(offset_ptr)
    else:
        a = tl.load(absmax_ptr + blk, mask=blk < n_blocks, other=0.0)
    out = tl.load(code_ptr + codes) * a[:, None]
    offs = blk.to(tl.int64)[:, None] * 64 + tl.arange(0, 64)[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=offs < n)
    ### END SOLUTION


def nf4_dequantize(q: dict, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    '''The tensor of `shape` and `dtype` that the NF4 state q (from nf4_quantize) encodes.'''
    ### BEGIN SOLUTION
    n = math.prod(shape)                                # values to decode
    nb = triton.cdiv(n, 64)
    dev = q["packed"].device
    out = torch.empty(shape, dtype=dtype, device=dev)
    double = "absmax2" in q
    BLOCKS = min(1024, triton.next_power_of_2(nb)) if INTERPRET else 32
    nf4_dequantize_kernel[(triton.cdiv(nb, BLOCKS),)](
        q["packed"], on_device(NF4_TABLE, dev), q["absmax"], q["absmax2"] if double else q["absmax"],
        q["offset"] if double else q["absmax"], on_device(DYNAMIC_TABLE, dev), out, n, nb, BLOCKS=BLOCKS, DOUBLE=double)
    return out
    ### END SOLUTION
""", "nf4_dequantize_solution")

DEQUANT_CHECK = test(r"""
# Check exercise 4, correctness (graded; the last line is your points).
result = check("nf4_dequantize", nf4_dequantize)
result.points
""", "nf4_dequantize_check", points=2)

DEQUANT_SPEED = test(r"""
# Check exercise 4, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).
result = check("nf4_dequantize", nf4_dequantize, "speed")
result.points
""", "nf4_dequantize_speed", points=1)

MD_BITS = md(r"""
**Measured: bits per parameter, error, bandwidth.** Your state and bitsandbytes' on the same
weight, with and without double quantization. On a GPU the cell also times both directions and
reports the bandwidth (bytes that must move: the 16-bit weight, the codes, the absmax) next to a
plain device copy.
""", "md_bits")

DEMO_BITS = code(r"""
shape = (8192, 8192) if GPU else (256, 512)
w = (torch.randn(shape, device=DEV) * 0.02).to(torch.bfloat16 if GPU else torch.float32)
try:
    rows = []
    for dq in (False, True):
        mine, theirs = nf4_quantize(w, dq), nf4.bnb_quantize(w, dq)
        rows.append((dq, nf4.bits_per_param(mine, w.numel()), nf4.bits_per_param(theirs, w.numel()),
                     nf4.relative_error(w, nf4_dequantize(mine, w.shape, w.dtype)),
                     nf4.relative_error(w, nf4.bnb_dequantize(theirs, w.shape, w.dtype))))
    print(f"{'double quant':12} {'bits/param yours':>17} {'bnb':>6} {'error yours':>12} {'bnb':>8}")
    for dq, b1, b2, e1, e2 in rows:
        print(f"{str(dq):12} {b1:17.4f} {b2:6.4f} {e1:12.5f} {e2:8.5f}")
    if GPU:
        import bitsandbytes.functional as bnbf
        n = w.numel()
        q, st = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        mine = nf4_quantize(w, True)
        moved_q, moved_d = 2 * n + n // 2 + n // 64, n // 2 + n // 64 + 2 * n
        for name, fn, nbytes in (("quantize (yours)", lambda: nf4_quantize(w, True), moved_q),
                                 ("quantize_4bit (bnb)", lambda: bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                                                                    compress_statistics=True), moved_q),
                                 ("dequantize (yours)", lambda: nf4_dequantize(mine, w.shape, w.dtype), moved_d),
                                 ("dequantize_4bit (bnb)", lambda: bnbf.dequantize_4bit(q, st), moved_d),
                                 ("copy (w.clone())", lambda: w.clone(), 4 * n)):
            print(f"{name:22}", bench.throughput(bench.time_fn(fn, max_time_s=1.0), bytes=nbytes))
    else:
        print("(CPU: the kernels run in Triton's interpreter; bandwidths are measured on a GPU.)")
except NotImplementedError:
    print("Finish exercises 3 and 4 to see your numbers here.")
""", "demo_bits")

CELLS = [MD_NF4, DEMO_NF4, MD_EX3, QUANT_SOLUTION, QUANT_CHECK, QUANT_SPEED, MD_EX4, DEQUANT_SOLUTION, DEQUANT_CHECK,
         DEQUANT_SPEED, MD_BITS, DEMO_BITS]
