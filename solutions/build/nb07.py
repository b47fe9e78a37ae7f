"""Build solutions/07_quantization.ipynb:  python solutions/build/nb07.py  (from the repo root).

The committed artefact is the notebook; this script keeps its cells reviewable as text. The solution
cells are in nb07_solutions.py beside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grader.authoring import code, md, notebook, solution, test, write  # noqa: E402
import nb07_solutions as S  # noqa: E402

TITLE = "07 — Quantization: RTN, GPTQ and AWQ, int4 packing and a W4A16 kernel"


def check_cell(gid, name, part, points, what):
    where = {"correctness": "graded; the last line is your points",
             "speed": "graded on a CUDA GPU; on a CPU it awards nothing and says so"}[part]
    arg = "" if part == "correctness" else f', "{part}"'
    return test(f'# Check {what} ({where}).\nresult = check("{name}", {name}{arg})\nresult.points', gid, points)


CELLS = [
    md(r"""
# 07 — Quantization: RTN, GPTQ and AWQ from scratch, int4 packing and a W4A16 kernel

A model's weights are most of what inference reads from memory. Storing them in **4 bits** instead of
16 makes a model 3.8× smaller and — because generating one token at a time is limited by memory
bandwidth, not arithmetic — up to ~3.8× faster to decode. The price is accuracy: every weight is
rounded to one of 16 values. This notebook measures that price on a language model and shows the two
ideas that make 4 bits (almost) free:

1. **round to nearest (RTN)**: affine vs symmetric codes, per-tensor / per-channel / group-wise
   scales, and why a few outliers ruin per-tensor scales (exercise 1);
2. **int4 packing**: two codes a byte (exercise 1);
3. **GPTQ** (Frantar et al., 2022): quantize one column at a time and let the remaining columns
   compensate the error, through the inverse Hessian of the layer's output error (exercise 2);
4. **AWQ** (Lin et al., 2023): protect the weights that meet large activations by scaling them up
   before rounding (exercise 3);
5. a **W4A16 matmul in Triton** that reads packed int4 weights and dequantizes them in registers
   (exercise 4), and why decode is memory bound;
6. the **perplexity table** of the course model for fp16 / RTN / GPTQ / AWQ at 3 and 4 bits
   (exercise 5), and the formats you meet in practice (GPTQ, AWQ, GGUF, bitsandbytes).

**How grading works.** Each exercise has a *solution* cell, then *check* cells. Correctness is checked
on any machine (plus hidden tests in the grader); the kernel's speed part needs a CUDA GPU and says so
elsewhere. Write your own code: `effilab.quant.reference` and `effilab.ops` (the instructor's
solutions) earn nothing.
""", "intro"),
    code(r"""
# Setup. `import effilab` comes first: on a machine without a CUDA GPU it switches Triton to its
# CPU interpreter, which must happen before triton is imported.
import math
import os

import effilab
import matplotlib.pyplot as plt
import torch
import triton
import triton.language as tl

from effilab import bench, device
from effilab.grading import check
from effilab.quant import (course_texts, format_table, linear_inputs, linear_names, load_course_model, perplexity,
                           windows)

DEV = device.default_device()
GPU = DEV.type == "cuda"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"   # True on a CPU: small demos, big blocks
print(device.info().summary())
""", "setup_imports", locked=True),
    md(r"""
## 1. The model we quantize

No model hub is reachable from the course machines, so the course ships its own: the byte-level GPT of
`effilab.models` (2 blocks, width 256, 4 heads, context 128 bytes, 1.7 M parameters) trained on the
Python standard library's sources (`python -m effilab.quant.model` rebuilds it deterministically). The
checkpoint holds the weights in fp16 — the **fp16 baseline** — and two texts: `heldout` (from the validation split, never seen in training) and
`calib` (from the training split, the *calibration* data of GPTQ and AWQ, as C4 samples are in the
papers). We quantize the 8 linear layers of the blocks; the tied embedding / LM head stays in 16 bits,
as in GPTQ and AWQ.

The quality measure is **perplexity** on held-out text, $\mathrm{PPL} = \exp\big(-\tfrac1T\sum_t \log p(x_t\mid x_{<t})\big)$:
the effective number of bytes the model hesitates between. A quantized model is judged by its *gap*
$\mathrm{PPL}_q - \mathrm{PPL}_{fp16}$.
""", "md_model"),
    code(r"""
model = load_course_model()
texts = course_texts()
EVAL = windows(texts["heldout"], 254 if GPU else 24)     # 128-byte windows of held-out text
CALIB = windows(texts["calib"], 16, seed=0)               # 16 × 128 calibration tokens
n_params = sum(p.numel() for p in model.parameters())
print(f"{n_params / 1e6:.2f} M parameters; quantized layers: {linear_names(model)}")
PPL_FP16 = perplexity(model, EVAL)
print(f"fp16 perplexity on {EVAL.shape[0] * 128} held-out bytes: {PPL_FP16:.4f}")
""", "demo_model"),
    md(r"""
## 2. Round to nearest: scales, zero points, granularity

A $b$-bit code is an integer $q \in \{0, \dots, 2^b - 1\}$ that stands for the weight $\hat w = (q - z)\,s$
with a **scale** $s$ and an integer **zero point** $z$. Rounding to nearest (RTN) picks the code of
each weight independently:

* **asymmetric (affine)**: the range $[\ell, h] = [\min(w, 0), \max(w, 0)]$ is spread over $2^b - 1$ steps,
  $$s = \frac{h - \ell}{2^b - 1}, \qquad z = \operatorname{round}(-\ell / s), \qquad q = \operatorname{clamp}\big(\operatorname{round}(w/s) + z,\ 0,\ 2^b-1\big);$$
  including 0 in the range makes $w = 0$ exact (GPTQ's convention);
* **symmetric**: $s = \max|w| / (2^{b-1} - 1)$ and $z = 2^{b-1}$ (8 for int4): one less level, no zero point
  to store, and a cheaper dequantization.

Round half to even (`torch.round`); an all-zero group gets $s = 1$. The **granularity** is how many
weights share one $(s, z)$: the whole tensor (*per-tensor*), a row of the weight matrix (*per-channel*:
one output channel), or **groups** of $G$ consecutive weights of a row ($G = 128$ is the standard of
GPTQ/AWQ checkpoints; $-1$ below means one group per row). The worst-case rounding error of a weight is
$s/2$, and $s$ grows with the largest $|w|$ of the group: **one outlier stretches the grid for every
weight that shares its scale**. Smaller groups isolate outliers, at the price of metadata: a 16-bit scale
and a 4-bit zero per 128 weights add 0.16 bits to every weight.
""", "md_rtn"),
    md(r"""
### Exercise 1a — `quantize_rtn` and `dequantize_rtn` (2 + 1 points)

Implement the formulas above for a weight matrix `w` of shape `(N, K)` (an `nn.Linear`'s weight,
quantized along its rows): reshape to `(N, K // G, G)`, compute each group's parameters in fp32, round.
Return `q` (uint8, `(N, K)`), `scale` (fp32, `(N, K // G)`), `zero` (uint8, `(N, K // G)`). The checker
compares with the formulas exactly — including crafted grids with exact half-steps, where
`floor(x + 0.5)` is not round-half-to-even — on odd widths (781, 65, 3) and 2…8 bits.
""", "md_ex1"),
    solution(S.QUANTIZE_RTN, "quantize_rtn_solution"),
    check_cell("quantize_rtn_check", "quantize_rtn", "correctness", 2, "exercise 1a, quantize"),
    solution(S.DEQUANTIZE_RTN, "dequantize_rtn_solution"),
    check_cell("dequantize_rtn_check", "dequantize_rtn", "correctness", 1, "exercise 1a, dequantize"),
    md(r"""
### Why outliers hurt RTN — measured

Take the MLP's down projection of the first block, add one outlier to each of a few rows (trained LLMs
have such weights, and far larger activation outliers, Dettmers et al. 2022), and compare the relative
weight error $\lVert \hat W - W\rVert / \lVert W \rVert$ per tensor, per channel and per group of 128.
""", "md_outliers"),
    code(r"""
def per_tensor(w, bits, symmetric):        # one group holding every weight
    q, s, z = quantize_rtn(w.reshape(1, -1), bits, -1, symmetric)
    return dequantize_rtn(q, s, z, -1).reshape(w.shape)


W_down = model.get_submodule("blocks.0.mlp.c_proj").weight.detach().clone()
W_out = W_down.clone()
W_out[::32, 7] = 30 * W_down.abs().max()          # one outlier in every 32nd row
rel = lambda a, b: float((a - b).norm() / b.norm())
rows = []
try:
    for label, w in (("trained weights", W_down), ("with outliers", W_out)):
        for bits in (3, 4, 8):
            rows.append((label, bits,
                         rel(per_tensor(w, bits, True), w),
                         rel(dequantize_rtn(*quantize_rtn(w, bits, -1, True), -1), w),
                         rel(dequantize_rtn(*quantize_rtn(w, bits, 128, False), 128), w)))
except NotImplementedError:
    print("Finish exercise 1a to see this measurement.")
if rows:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, label in zip(axes, ("trained weights", "with outliers")):
        sub = [r for r in rows if r[0] == label]
        xs = range(len(sub))
        for i, name in enumerate(("per tensor (sym)", "per channel (sym)", "group 128 (asym)")):
            ax.bar([x + 0.27 * (i - 1) for x in xs], [r[2 + i] for r in sub], width=0.27, label=name)
        ax.set_xticks(list(xs), [f"{r[1]} bits" for r in sub]); ax.set_yscale("log"); ax.set_title(label)
    axes[0].set_ylabel("relative weight error"); axes[1].legend(); plt.tight_layout(); plt.show()
    for r in rows:
        print(f"{r[0]:16} {r[1]} bits: per tensor {r[2]:.4f}   per channel {r[3]:.4f}   group 128 {r[4]:.4f}")
""", "demo_outliers"),
    md(r"""
The outliers multiply the per-tensor error many times over; per-channel scales confine the damage to
the rows that hold an outlier, groups of 128 to one group of each. That is why every 4-bit LLM format
is group-wise.

## 3. Two codes a byte

PyTorch has no 4-bit dtype: codes live in a `uint8` each until we **pack** them. The layout used here
(and by the kernel of exercise 4) packs along $K$: byte $j$ of a row holds column $2j$ in its low nibble
and column $2j+1$ in its high nibble, `byte = q[2j] | (q[2j+1] << 4)`. (GPTQ checkpoints pack 8 codes
in an `int32`, AWQ's interleave them for their kernel; the idea is the same.)

### Exercise 1b — `pack_int4` and `unpack_int4` (1 + 1 points)

Pack and unpack along the last dimension of any-rank tensors. Packing rejects codes that are not
uint8 or an odd last dimension with a `ValueError`.
""", "md_pack"),
    solution(S.PACK, "pack_int4_solution"),
    check_cell("pack_int4_check", "pack_int4", "correctness", 1, "exercise 1b, pack"),
    check_cell("unpack_int4_check", "unpack_int4", "correctness", 1, "exercise 1b, unpack"),
    md(r"""
## 4. GPTQ: let the remaining columns fix the error

RTN minimises each weight's error, but what matters is the layer's **output** on real inputs. For a layer
$y = Wx$ with calibration inputs $X$ ($n$ tokens × $K$ features) the error of row $w$ of $W$ is
$$ E(\hat w) = \tfrac1n \lVert (\hat w - w) X^\top \rVert^2 = (\hat w - w)\, H\, (\hat w - w)^\top / 2, \qquad H = \tfrac{2}{n} X^\top X ,$$
the same **Hessian** $H$ ($K \times K$) for every row. Optimal Brain Quantization (Frantar & Alistarh 2022)
quantizes one weight $w_j$ and updates the weights not yet quantized to minimise $E$ again:
$$ \delta = -\frac{w_j - \hat w_j}{[H^{-1}]_{jj}}\,(H^{-1})_{j,:} , \qquad H^{-1} \leftarrow \text{(drop row and column } j). $$
**GPTQ** (Frantar, Ashkboos, Hoefler & Alistarh 2022) makes that practical for billions of weights:

* every row is quantized in the **same column order**, so $H^{-1}$ is shared by all rows and each step
  is a rank-1 update of the whole matrix;
* the inverse with columns removed one after another is read off the **upper Cholesky factor** of
  $H^{-1}$: with $U = \mathrm{chol}(H^{-1})^\top$, step $j$ uses row $j$ of $U$ — no re-inversion;
* **dampening**: $H + \lambda I$ with $\lambda = 0.01 \cdot \mathrm{mean}(\mathrm{diag}\,H)$, or the Cholesky
  factorisation fails when $X$ has fewer tokens than features or dead inputs;
* **lazy batch updates**: the update of the columns *after* a block of 128 is applied once, as a matmul
  $W_{:, \text{rest}} \mathrel{-}= E_{\text{block}}\, U_{\text{block}, \text{rest}}$, which keeps the GPU busy;
* **groups** ($G = 128$): the $(s, z)$ of a group are computed when its first column is reached, from the
  weights *as updated so far*; **act-order**: quantize columns by decreasing $\mathrm{diag}(H)$ (the inputs
  with the most energy first, while many columns remain to absorb the error); groups then follow that
  order, so the format stores `g_idx`, the group of every column.

```
for each block of 128 columns:
    for column j of the block:
        new group? -> (s, z) from the current W[:, j:j+G]
        q = quant(W[:, j]);  err = (W[:, j] - deq(q)) / U[j, j]
        W[:, j:block_end] -= err ⊗ U[j, j:block_end]
    W[:, block_end:] -= Err_block @ U[block, block_end:]
```

### Exercise 2 — `gptq_quantize` (4 points)

Return `(q, scale, zero, g_idx)` with `q` in the **original** column order. The checker runs your
function on layers of the course model with calibration activations from `calib` and measures
$\lVert XW^\top - X\hat W^\top\rVert^2 / \lVert XW^\top\rVert^2$ on **held-out** activations: yours must be
within 1.05× of the reference GPTQ's and at most 0.5× RTN's (`GPTQ_VS_REFERENCE`, `GPTQ_VS_RTN` in
`effilab/grading/specs/nb07.py`), with act-order, per-channel 3-bit, and a case with fewer tokens than
features and dead input channels.
""", "md_gptq"),
    solution(S.GPTQ, "gptq_quantize_solution"),
    check_cell("gptq_quantize_check", "gptq_quantize", "correctness", 4, "exercise 2"),
    md(r"""
### GPTQ vs RTN, layer by layer

Held-out output error of every layer of the course model at 4 bits, group 128 (calibration: `CALIB`).
""", "md_gptq_demo"),
    code(r"""
HELD = windows(texts["heldout"], 8, seed=5)
acts_cal, acts_held = linear_inputs(model, CALIB), linear_inputs(model, HELD)


def out_err(W, W_hat, X):
    y = X.double() @ W.double().T
    return float(((X.double() @ W_hat.double().T - y) ** 2).sum() / (y ** 2).sum())


names = linear_names(model)
errs = {"RTN": [], "GPTQ": [], "GPTQ act-order": []}
try:
    for name in names:
        W = model.get_submodule(name).weight.detach()
        errs["RTN"].append(out_err(W, dequantize_rtn(*quantize_rtn(W, 4, 128), 128), acts_held[name]))
        for key, ao in (("GPTQ", False), ("GPTQ act-order", True)):
            q, s, z, gi = gptq_quantize(W, acts_cal[name], 4, 128, act_order=ao)
            errs[key].append(out_err(W, (q.float() - z.float()[:, gi]) * s[:, gi], acts_held[name]))
except NotImplementedError:
    print("Finish exercises 1a and 2 to see this comparison.")
if errs["GPTQ act-order"]:
    xs = range(len(names))
    for i, (key, v) in enumerate(errs.items()):
        plt.bar([x + 0.27 * (i - 1) for x in xs], v, width=0.27, label=key)
    plt.xticks(list(xs), [n.replace("blocks.", "b").replace(".weight", "") for n in names], rotation=30, ha="right")
    plt.yscale("log"); plt.ylabel("held-out relative output error"); plt.legend(); plt.title("4 bits, group 128")
    plt.tight_layout(); plt.show()
    for n, a, b, c in zip(names, *errs.values()):
        print(f"{n:24} RTN {a:.2e}  GPTQ {b:.2e} ({b / a:.2f}×)  act-order {c:.2e} ({c / a:.2f}×)")
""", "demo_gptq"),
    md(r"""
## 5. AWQ: scale the salient channels

AWQ (Lin et al. 2023) starts from an observation: the weights that matter are those that multiply
**large activations** — a few input channels carry most of the output. Keeping 1 % of the channels in
fp16 would protect them but makes a mixed-precision mess. Instead, scale input channel $k$ of $W$ **up**
by $s_k > 1$ and its input **down** by the same factor; the product is unchanged,
$$ W x = \big(W \operatorname{diag}(s)\big)\big(\operatorname{diag}(s)^{-1} x\big), $$
and the division is folded into the previous operation (the LayerNorm's weight, the previous linear's
rows). Rounding $W\operatorname{diag}(s)$ adds the same absolute error as before to the scaled column, which
is a $1/s_k$ smaller error on the original weight — as long as the group's scale does not grow (it does
if $s$ is too large). AWQ searches $s = \bar s_x^{\,\alpha}$ with $\bar s_x$ the mean $|x_k|$ over the
calibration tokens, for $\alpha$ on a grid $\{0, \tfrac1{20}, \dots, \tfrac{19}{20}\}$, normalised by
$\sqrt{\max s \cdot \min s}$, picking the $\alpha$ with the smallest output error
$\lVert X W^\top - X\,(Q(W \operatorname{diag} s)\operatorname{diag} s^{-1})^\top \rVert^2$. $\alpha = 0$ is plain RTN,
so AWQ is never worse than RTN on the calibration data. A second search **clips** each group's range
(shrinking $\max|w|$ by up to 50 %) when rounding the rare large weights finer pays for clipping them.
No weight is updated, unlike GPTQ: AWQ needs little calibration data and does not overfit it.

For the accuracy study we keep $\hat W = Q(W\operatorname{diag} s)\operatorname{diag}(s)^{-1}$ (mathematically the
folded model); a deployed model stores $Q(W\operatorname{diag} s)$ and folds $1/s$ into the previous op.

### Exercise 3 — `awq_search_scales` (2 points)

Return the best $s$ (fp32, shape `(K,)`). Judged on the calibration tokens: your error must be at
most RTN's and within 1.02× of the reference AWQ's (`AWQ_VS_REFERENCE`).
""", "md_awq"),
    solution(S.AWQ, "awq_search_scales_solution"),
    check_cell("awq_search_scales_check", "awq_search_scales", "correctness", 2, "exercise 3"),
    code(r"""
# The error against alpha for the first block's c_fc (fed by a LayerNorm) and c_proj (fed by GELU)
try:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name in ("blocks.0.mlp.c_fc", "blocks.0.mlp.c_proj"):
        W, X = model.get_submodule(name).weight.detach(), acts_cal[name]
        s_x, curve = X.abs().mean(0), []
        for i in range(20):
            s = s_x.pow(i / 20).clamp(min=1e-4); s = s / (s.max() * s.min()).sqrt()
            curve.append(out_err(W, dequantize_rtn(*quantize_rtn(W * s, 4, 128), 128) / s, acts_held[name]))
        ax.plot([i / 20 for i in range(20)], [c / curve[0] for c in curve], marker="o", label=name)
    ax.axhline(1.0, color="gray", lw=0.8); ax.set_xlabel("α"); ax.set_ylabel("held-out error / RTN's")
    ax.legend(); plt.tight_layout(); plt.show()
except NotImplementedError:
    print("Finish exercise 1a to see this curve.")
""", "demo_awq"),
    md(r"""
## 6. Why 4-bit weights make decode fast: a W4A16 kernel

Generating one token multiplies a **single** activation row by every weight matrix: $y = xW^\top$ with
$x \in \mathbb{R}^{1\times K}$. Each weight is read once and used for one multiply-add, so the arithmetic
intensity is ≈ 1 FLOP per byte in bf16 — far left of the roofline's ridge (≈ 200 FLOP/B on an H200).
The time is the bytes divided by the bandwidth. At $4096\times4096$: 32 MiB of bf16 weights (7.9 µs at
4.25 TB/s, a bf16 `torch.matmul` takes ≈ 18.7 µs) against 8.3 MiB of int4 codes, scales and zeros
(≈ 2 µs). A **W4A16** kernel (4-bit weights, 16-bit activations) reads the packed bytes, dequantizes
them **in registers** and never writes the 16-bit weights anywhere. At large batch the picture flips:
the matmul becomes compute bound and the dequantization is extra work.
""", "md_w4a16"),
    code(r"""
print(format_table(4096 * 4096, 4250.0))
""", "demo_formats_bytes"),
    md(r"""
### Exercise 4 — `w4a16_matmul` in Triton (3 points correctness + 2 points speed)

`y = x @ Ŵᵀ` with `Ŵ[n, k] = (code[n, k] − zeros[n, k // G]) · scales[n, k // G]` and the codes packed
as in exercise 1b (`qweight` is `(N, K // 2)` uint8). One program computes `BLOCK_N` outputs for
`BLOCK_M` rows of `x`, looping over $K$:

* load `BLOCK_K // 2` bytes of each of its weight rows; `p & 15` are the even columns, `p >> 4` the odd;
* view a K step as chunks of `CHUNK` columns (a power of two dividing `G`): inside a chunk the scale
  and zero are constants, so load them once per chunk, not once per weight;
* multiply the even columns with `x[:, 0::2]` and the odd ones with `x[:, 1::2]` (no interleaving
  needed): for one row (decode) use $\sum_k x_k (q_k - z)s = s\,(\sum_k x_k q_k - z \sum_k x_k)$ per
  chunk; from 16 rows on, dequantize the tile and use `tl.dot`;
* accumulate in fp32, store in x's dtype; mask the tails of $N$, $M$ and $K$.

**Speed (graded on a GPU):** at decode, `x` 1 × 4096 bf16 and a 4096 × 4096 int4 weight (g128), yours must
be at least `W4A16_SPEED_THRESHOLD` = 1.25× faster than bf16 `torch.matmul` with the dense weight
(the reference reaches ≈ 1.45× on an H200, bitsandbytes' NF4 GEMV ≈ 1.15×; the bytes alone would allow
≈ 3.8×). Many narrow programs (`BLOCK_N` = 4) with wide loads along $K$ (2048 columns a step) fill the
GPU; a per-weight load of the scale and zero costs as much as the weights. On a CPU, Triton's
interpreter runs the kernel.
""", "md_ex4"),
    solution(S.W4A16, "w4a16_matmul_solution"),
    check_cell("w4a16_matmul_check", "w4a16_matmul", "correctness", 3, "exercise 4, correctness"),
    check_cell("w4a16_matmul_speed", "w4a16_matmul", "speed", 2, "exercise 4, speed"),
    code(r"""
# Decode and batch-16 timings against bf16 torch.matmul and bitsandbytes' NF4 (on a GPU)
if GPU:
    import bitsandbytes.functional as bnbF
    K = N = 4096
    qw = torch.randint(0, 256, (N, K // 2), device=DEV, dtype=torch.uint8)
    sc = (torch.rand(N, K // 128, device=DEV) * 0.02).to(torch.bfloat16)
    zp = torch.randint(0, 16, (N, K // 128), device=DEV, dtype=torch.uint8)
    Wd = torch.randn(N, K, device=DEV, dtype=torch.bfloat16) * 0.02
    nf4, state = bnbF.quantize_4bit(Wd, blocksize=64, quant_type="nf4")
    for M in (1, 16):
        x = torch.randn(M, K, device=DEV, dtype=torch.bfloat16)
        cands = {"bf16 torch.matmul": lambda: torch.matmul(x, Wd.T),
                 "your w4a16_matmul": lambda: w4a16_matmul(x, qw, sc, zp, 128)}
        if M == 1:
            cands["bitsandbytes gemv_4bit (NF4)"] = lambda: bnbF.gemv_4bit(x, nf4.t(), state=state)
        print(f"M = {M}:\n" + bench.compare(cands, max_time_s=1.0).table())
else:
    print("(CPU: Triton runs in its interpreter here; the timings that matter are measured on a GPU.)")
""", "demo_w4a16_bench"),
    md(r"""
## 7. The whole model: the perplexity table

A quantized model is more than its layers: each layer's error changes the inputs of the next one.
GPTQ and AWQ therefore run **sequentially**: quantize the layers in forward order and take each layer's
calibration inputs from the model whose earlier layers are already quantized, so that later layers
compensate earlier errors.

### Exercise 5 — `quantize_model` (3 points)

For every linear layer of the blocks (`linear_names(model)`), in order: capture its inputs on `calib`
with `linear_inputs(model, calib, [name])` (hooks on the current model), quantize it with your RTN,
GPTQ or AWQ, and **write the dequantized weight back** into the model before the next layer. Return
`{name: {"q", "scale", "zero", "g_idx"}}`. The checker evaluates the held-out perplexity of your
layers: with `method="rtn"` they must be RTN's exactly; with GPTQ at 3 bits, group 128, the gap to fp16
must be at most 0.75× RTN-3's (`PPL_GAP_3BIT`) — the pattern of GPTQ's Table 3 (OPT-125M: fp16 27.65,
RTN-4 37.28, GPTQ-4 31.12; at 3 bits RTN 1.3e3, GPTQ 53.85). On our small model RTN does not *collapse*
at 3 bits (its weights have no outlier features), and at 4 bits g128 RTN is already within 0.1 % of
fp16 — the table below shows both.
""", "md_ex5"),
    solution(S.QUANTIZE_MODEL, "quantize_model_solution"),
    check_cell("quantize_model_check", "quantize_model", "correctness", 3, "exercise 5"),
    code(r"""
# Perplexity against bits for RTN, GPTQ and AWQ (group 128)
table = {}
try:
    for method in ("rtn", "gptq", "awq"):
        for bits in (3, 4):
            m = load_course_model()
            quantize_model(m, CALIB, bits, 128, method)
            table[(method, bits)] = perplexity(m, EVAL)
except NotImplementedError:
    print("Finish exercises 1–3 and 5 to see the table.")
if len(table) == 6:
    print(f"{'method':6} {'3 bits':>9} {'4 bits':>9}   (fp16 {PPL_FP16:.4f})")
    for method in ("rtn", "gptq", "awq"):
        print(f"{method:6} {table[(method, 3)]:9.4f} {table[(method, 4)]:9.4f}   gap at 4 bits "
              f"{table[(method, 4)] - PPL_FP16:+.4f}")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method in ("rtn", "gptq", "awq"):
        ax.plot([3, 4, 16], [table[(method, 3)], table[(method, 4)], PPL_FP16], marker="o", label=method.upper())
    ax.axhline(PPL_FP16, color="gray", lw=0.8, ls="--", label="fp16")
    ax.set_xscale("log", base=2); ax.set_xticks([3, 4, 16], ["3", "4", "16"]); ax.set_yscale("log")
    ax.set_xlabel("bits per weight (group 128)"); ax.set_ylabel("held-out perplexity"); ax.legend()
    plt.tight_layout(); plt.show()
""", "demo_ppl"),
    md(r"""
## 8. The formats you meet

| format | what is stored | how it is made | runs with |
|---|---|---|---|
| **GPTQ** (`.safetensors` + `quantize_config.json`) | int4 codes packed 8 per int32, fp16 scales, packed zeros, `g_idx` per group of 128 | GPTQ on ~128 calibration samples, optional act-order | exllama/Marlin kernels (vLLM, TGI, transformers) |
| **AWQ** | int4 codes (interleaved for its kernel), fp16 scales and zeros, g128; the scales $s$ already folded | AWQ scale + clip search, no weight updates | AutoAWQ GEMM/GEMV kernels, vLLM, TensorRT-LLM |
| **GGUF** (`Q4_K`, `Q8_0`, …) | blocks of 32 weights with 6-bit sub-scales in super-blocks of 256 (`Q4_K`: 4.5 bits/weight) | RTN with a local search per block (optionally an importance matrix from calibration) | llama.cpp (CPU, Metal, CUDA) |
| **bitsandbytes 4-bit** (NF4 / FP4) | 4-bit indices into a 16-value code book (NF4: quantiles of a normal), an absmax per block of 64 | RTN at load time, no calibration | `load_in_4bit`, QLoRA (notebook 06) |

The byte counts of section 6 and bitsandbytes itself, on the course model's down projection:
""", "md_formats"),
    code(r"""
import bitsandbytes.functional as bnbF

W = model.get_submodule("blocks.0.mlp.c_proj").weight.detach().float().contiguous()
X = acts_held["blocks.0.mlp.c_proj"]
rows = []
for qt in ("nf4", "fp4"):
    packed, state = bnbF.quantize_4bit(W, blocksize=64, quant_type=qt)
    rows.append((f"bitsandbytes {qt.upper()} (block 64)", bnbF.dequantize_4bit(packed, state)))
try:
    rows.append(("int4 asym, group 64 (yours)", dequantize_rtn(*quantize_rtn(W, 4, 64), 64)))
    rows.append(("int4 sym, group 64 (yours)", dequantize_rtn(*quantize_rtn(W, 4, 64, True), 64)))
except NotImplementedError:
    print("Finish exercise 1a to compare your RTN.")
for name, w_hat in rows:
    print(f"{name:30} weight error {float((w_hat - W).norm() / W.norm()):.4f}   "
          f"held-out output error {out_err(W, w_hat, X):.2e}")
""", "demo_bnb"),
    md(r"""
## Summary

* RTN with **group-wise** scales (g128) and zero points is the baseline every format builds on; one
  outlier stretches a shared scale, so granularity matters more than anything at 3–4 bits.
* **GPTQ** quantizes column by column and pushes each column's error onto the columns not yet
  quantized through the Cholesky factor of $H^{-1}$, $H = 2X^\top X/n$ (dampened by 1 %), in lazy blocks of
  128; act-order quantizes the high-energy inputs first.
* **AWQ** rescales input channels by their activation magnitude ($s = \bar s_x^{\alpha}$, 20-point grid)
  and clips group ranges; it updates no weight and needs little calibration data.
* Decode is **memory bound**: 4-bit weights (0.52 bytes per weight with g128 metadata) make a decode
  GEMV up to ≈ 3.8× faster, provided the kernel dequantizes in registers, as your W4A16 kernel does.

**Next: 08 — operator fusion**, where you write more Triton kernels and put them on the roofline.
""", "summary"),
]


def main() -> None:
    write(notebook(CELLS, TITLE), ROOT / "solutions" / "07_quantization.ipynb")
    print("wrote solutions/07_quantization.ipynb")


if __name__ == "__main__":
    main()
