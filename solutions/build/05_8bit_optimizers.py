"""Build solutions/05_8bit_optimizers.ipynb (the nbgrader source notebook) from this script.

    python solutions/build/05_8bit_optimizers.py      # from the repo root, then
    python -m grader release && python -m grader examples

Cells have stable grade ids and cell ids, so a rebuild changes only what was edited here. The
numbers the markdown quotes (thresholds, tolerances, problem sizes) are read from the spec module,
effilab/grading/specs/nb05*.py, and each is named in an HTML comment beside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from grader.authoring import code, md, notebook, solution, test, write  # noqa: E402

from effilab.grading.specs import nb05 as S  # noqa: E402
from effilab.grading.specs import nb05_optim as O  # noqa: E402

CELLS_FILE = Path(__file__).with_name("05_cells.py")


def _sources() -> dict[str, str]:
    """The code cells, kept in 05_cells.py (one ``# ==== cell <grade id>`` header per cell)."""
    import re

    parts = re.split(r"^# ==== cell (\S+)\n", CELLS_FILE.read_text(), flags=re.M)
    return {parts[i]: parts[i + 1].rstrip("\n") for i in range(1, len(parts), 2)}


def build():
    src = _sources()
    c = []
    c.append(md("""
# 05 — 8-bit optimizers: block-wise quantization and a fused 8-bit AdamW

Adam keeps two numbers per parameter, the running mean of the gradient $m$ and of its square $v$.
In fp32 that is 8 bytes per parameter — **twice the weights** — and for a 7 B-parameter model
56 GB before a single activation. *8-bit optimizers* (Dettmers, Lewis, Shleifer & Zettlemoyer,
*8-bit Optimizers via Block-wise Quantization*, ICLR 2022) store $m$ and $v$ in one byte each and
train as well as 32-bit Adam. The trick is in *how* the bytes are chosen. In this notebook you will

1. **measure** where the memory of a training step goes: 16 bytes per parameter for fp32 AdamW,
   about 10 with 8-bit states;
2. see why **linear** 8-bit quantization of Adam's state fails, and build the **dynamic** code map
   that fixes it (exercise 1, equal to `bitsandbytes.functional.create_dynamic_map`);
3. write **block-wise quantization** and dequantization kernels in Triton, equal to bitsandbytes'
   (exercise 2);
4. run an **ablation** on the course GPT: fp32 AdamW, linear 8-bit and dynamic block-wise 8-bit states;
5. write a **fused 8-bit AdamW step** in Triton — dequantize, update, requantize in one pass over
   memory — whose trajectory follows `bitsandbytes.optim.AdamW8bit` (exercise 3);
6. see **paged optimizers** survive a full GPU, and write **Adafactor**'s factored second moment,
   $n + m$ numbers for an $n \\times m$ matrix (exercise 4).

**How grading works.** Each exercise has a *solution* cell, then *check* cells. Correctness is checked
on any machine (plus hidden tests in the grader); the references are bitsandbytes itself (installed
with the course) and `torch.optim.Adafactor`. Speed and memory parts are measured on a CUDA GPU; on
a machine without one they say *needs a CUDA GPU — not awarded here*, and Triton kernels run, slowly,
in Triton's CPU interpreter. Write your own kernels: calling bitsandbytes in your solutions earns nothing.
""", "intro"))
    c.append(code(src["setup_imports"], "setup_imports", locked=True))

    c.append(md(r"""
## 1. Where the memory of a training step goes

Before any activation, a training step keeps the **model state**: the weights, their gradients and
the optimizer's state. Per parameter ($N$ of them):

| recipe | weights | grads | fp32 master | optimizer | bytes / param |
|---|---|---|---|---|---|
| fp32 AdamW | 4 | 4 | — | $m$, $v$: 4 + 4 | **16** |
| mixed precision AdamW (ZeRO accounting) | 2 (bf16) | 2 | 4 | 8 | **16** |
| fp32 weights, 8-bit AdamW | 4 | 4 | — | 1 + 1 (+ 8 B per 256 values) | **≈ 10** |
| mixed precision, 8-bit AdamW | 2 | 2 | 4 | ≈ 2 | **≈ 10** |
| Adafactor (fp32) | 4 | 4 | — | $\approx (n + m)/(nm)$ per matrix | **≈ 8** |

(Rajbhandari et al., *ZeRO*, SC 2020, for the mixed-precision accounting.) The optimizer is the
largest single part in every AdamW recipe. The cell below measures it on the course GPT: the bytes of
the weights, of the `.grad` tensors after backward, and of every tensor in `optimizer.state` after a
step — each storage counted once (`effilab.quant8.memory_breakdown`). bitsandbytes' `AdamW8bit` keeps
**fp32** state for tensors under 4096 values (`min_8bit_size`): on a small model that shows.
""", "md_memory"))
    c.append(code(src["demo_memory"], "demo_memory"))

    c.append(md(r"""
## 2. Eight bits for a state: linear quantization fails, dynamic quantization works

**Linear (absmax) quantization** stores $q = \mathrm{round}(127\, x / N)$ with $N = \max|x|$: 255
evenly spaced levels, a step of $N/127$. Every value below half a step — $|x| < N/254$ — becomes 0.
Adam's $v$ is the running mean of $g^2$; gradients spread over several decades, so $v$ spreads over
twice as many, and one large entry sets $N$ for everybody. A zeroed $v$ has a drastic effect: at the
next step $v \leftarrow (1 - \beta_2) g^2$ alone, the update $m / \sqrt{v}$ is many times too large,
and the zeroed $m$ forgets its momentum. Dettmers et al. report that in their ablation (Table 3) Adam
with linear 8-bit states was unstable in most runs.

**Dynamic ("tree") quantization** (Dettmers, *8-Bit Approximations for Parallelism in Deep
Learning*, ICLR 2016) spends the bits like a floating-point number: a value $s \in [-1, 1]$ is
$\pm 10^{-k} \cdot f$ with a *decade* $k \in \{0, \dots, 6\}$ and a linear *fraction* $f \in [0.1, 1]$;
small decades get few fraction steps, large ones many. The relative error grows slowly as values
shrink — a few percent down to $10^{-2}$ of the absmax, tens of percent at $10^{-5}$ — and only
values below about $3 \cdot 10^{-7}$ become 0: **seven decades** instead of two (the plots below).
For $v \ge 0$ the sign bit is wasted, so bitsandbytes uses an **unsigned** map for $v$ with twice the
fraction steps.

**Block-wise.** One absmax per tensor lets one outlier coarsen a million values. Cut the flat tensor
into blocks of $B$ values, each with its own fp32 absmax: an outlier costs only its block. The paper
used $B = 2048$; bitsandbytes' 8-bit optimizers use **$B = 256$** today (the cell below checks), so the
absmax adds $4/256$ byte per value and state. **Small tensors** (biases, norms: under 4096 values) keep
fp32 state: they cost little memory, and a block of 256 would hold most of their values anyway.
""", "md_linear"))
    c.append(code(src["demo_maps"], "demo_maps"))
    c.append(md(r"""
The plot is the whole story: the linear map's relative error reaches 100 % (the value became 0) below
$1/254$ of the absmax; the dynamic map's error grows slowly and reaches 100 % only below
$3 \cdot 10^{-7}$. On a real $v$
(below: after 30 AdamW steps on the course GPT, one entry multiplied by $10^4$ as an outlier) the table
counts the values that 8 bits turn into 0, per tensor and per block of 256.
""", "md_report"))
    c.append(code(src["demo_report"], "demo_report"))

    c.append(md(r"""
### Exercise 1 — the dynamic map: `create_dynamic_map(signed, max_exponent_bits, total_bits)` (2 points)

Build bitsandbytes' map exactly (`bitsandbytes.functional.create_dynamic_map`; you may read its
source, but not call it). With $e$ = `max_exponent_bits`, $b$ = `total_bits` and $b-1$ non-sign bits:

* for each exponent $i = 0, \dots, e-1$ there are $K_i = 2^{\,i + (b-1) - e}$ fraction steps
  (signed) or $K_i = 2^{\,i + (b-1) - e + 1}$ (unsigned: the sign bit becomes one more fraction bit).
  Take the $K_i + 1$ points `torch.linspace(0.1, 1, K_i + 1)` (float32), the $K_i$ **means** of
  neighbouring points, and multiply them by $10^{\,i - e + 1}$; a signed map adds their negatives;
* when the exponents leave bits unused ($e < b - 1$), $2^{(b-1)-e} - 1$ more means of
  `torch.linspace(0.1, 1, 2^((b-1)-e))` go in at the largest scale, $10^0$ (both signs when signed);
* add $0$ and $1.0$; a map of fewer than 8 bits has $2^b$ values: **pad it with zeros** to 256; sort.

For the default $b = 8$, $e = 7$: the signed map has $2 \cdot (1 + 2 + \dots + 64) = 254$ values plus 0 and 1;
the unsigned one $2 + 4 + \dots + 128 = 254$ positive values plus 0 and 1. The check compares your
map with bitsandbytes' within a relative $10^{-6}$ (a float64 construction rounded once passes).
""", "md_ex1"))
    c.append(solution(src["create_dynamic_map_solution"], "create_dynamic_map_solution"))
    c.append(test('# Check exercise 1 (graded; the last line is your points).\n'
                  'result = check("create_dynamic_map", create_dynamic_map)\nresult.points',
                  "create_dynamic_map_check", points=S.CreateDynamicMap.points["correctness"]))

    c.append(md(f"""
## 3. Block-wise quantization in Triton

A program takes a tile of `ROWS` blocks × `BLOCK` values, viewed as a `[ROWS, BLOCK]` tensor: one
row per block. Per row, the absmax $N_b = \\max_i |x_i|$ (`tl.max(..., axis=1)`), then per value
$s = x / N_b \\in [-1, 1]$ and the **index of the nearest code**. Dequantization is one gather,
$\\hat x = \\text{{code}}[q] \\cdot N_b$.

**The nearest code, exactly.** With the fp32 midpoints $\\text{{mid}}_k = (\\text{{code}}[k] + \\text{{code}}[k+1])/2$,
the nearest code's index is the number of midpoints *strictly below* $s$ — so a value exactly halfway
takes the **lower** code, the rule of `torch.bucketize` and of bitsandbytes' PyTorch backend. A binary
search finds it in 8 steps over the sorted table of midpoints (1 KB: it stays in the L1 cache):
`q = 0; for step in 128, 64, …, 1: if mid[q + step - 1] < s: q += step`. Compute the 255 midpoints
once per call with a one-program kernel (`midpoints_kernel`): as in notebook 08, your functions may
only allocate, view and copy tensors around your own kernels — PyTorch arithmetic in the call earns
nothing, even for 255 values.
An all-zero block has $N_b = 0$: divide by 1 instead, so that $s = 0$ (dividing by $N_b$ rather than
multiplying by $1/N_b$ also keeps blocks of tiny values, $N_b < 10^{{-38}}$, finite).

**Against bitsandbytes.** Your absmax must equal bitsandbytes' bit for bit, and each code must be
bitsandbytes' or a nearest one: bitsandbytes' CUDA kernel finds the nearest code by a binary search,
but its CPU build rounds $s$ to a grid of 65 536 bins first (a lookup table), so where codes are
closer than $3 \\cdot 10^{{-5}}$ (small $|s|$) its CPU code is not always the nearest. Values exactly on a
midpoint are checked against the tie rule.

### Exercise 2 — `quantize_blockwise(x, code, blocksize)` and `dequantize_blockwise(codes, absmax, code, blocksize, dtype)` (3 + 1 points correctness, 1 point speed)

* `x`: any shape, fp32 / fp16 / bf16; `code`: 256 sorted fp32 values on `x`'s device; `blocksize`: a
  power of two from 64 to 4096; the last block may be partial (mask it: a padded 0 never raises an absmax);
* return `(codes, absmax)`: `uint8` codes of `x`'s shape and `ceil(n / blocksize)` fp32 absmax values;
* `dequantize_blockwise` returns `code[q] · absmax` in `dtype` (computed in fp32, rounded once).

**Speed (graded on a GPU):** on {S.QUANT_SPEED_N:,} fp32 values <!-- nb05.QUANT_SPEED_N --> with blocks of
256, yours must be at least **{S.QUANT_SPEED_THRESHOLD:g}×** <!-- nb05.QUANT_SPEED_THRESHOLD --> as fast as
`bitsandbytes.functional.quantize_blockwise`. It moves 5 bytes per value; the grader reports your GB/s.
""", "md_quant"))
    c.append(solution(src["quantize_blockwise_solution"], "quantize_blockwise_solution"))
    c.append(test('# Check exercise 2, quantization (graded; the last line is your points).\n'
                  'result = check("quantize_blockwise", quantize_blockwise)\nresult.points',
                  "quantize_blockwise_check", points=S.QuantizeBlockwise.points["correctness"]))
    c.append(test('# Check exercise 2, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).\n'
                  'result = check("quantize_blockwise", quantize_blockwise, "speed")\nresult.points',
                  "quantize_blockwise_speed", points=S.QuantizeBlockwise.points["speed"]))
    c.append(solution(src["dequantize_blockwise_solution"], "dequantize_blockwise_solution"))
    c.append(test('# Check exercise 2, dequantization (graded; the last line is your points).\n'
                  'result = check("dequantize_blockwise", dequantize_blockwise)\nresult.points',
                  "dequantize_blockwise_check", points=S.DequantizeBlockwise.points["correctness"]))
    c.append(md(r"""
Your kernels against bitsandbytes on one tensor: how many codes agree, why the others differ (on a CPU,
bitsandbytes' lookup table), the round-trip error, and on a GPU the bandwidth of both next to a copy.
""", "md_quant_compare"))
    c.append(code(src["demo_quant_compare"], "demo_quant_compare"))

    c.append(md(r"""
## 4. The ablation: what the bytes of the state are worth

The same AdamW algorithm, four ways to store $m$ and $v$: in fp32 (`torch.optim.AdamW`); in 8 bits
with a **linear** map, block-wise; in 8 bits with the **dynamic** maps, block-wise
(`effilab.quant8.quantized_adamw_step`, bitsandbytes' algorithm in plain PyTorch); and
`bitsandbytes.optim.AdamW8bit` itself. `quant8.Fused8bitAdamW` is the optimizer around a step function
(it keeps fp32 state for tensors under 4096 values, as bitsandbytes does); the same wrapper will run
your fused kernel in section 5.
""", "md_ablation"))
    c.append(code(src["demo_ablation"], "demo_ablation"))
    c.append(md(r"""
Linear 8-bit states blow the loss up within a few dozen steps; the dynamic block-wise states follow
fp32 AdamW, as does bitsandbytes. (On a model this small one absmax per tensor already works with
the dynamic map; the table of section 2 shows what a single outlier does to it.)
""", "md_ablation_after"))

    c.append(md(f"""
## 5. A fused 8-bit AdamW step

One AdamW step with 8-bit moments, for every value, in one kernel (Kingma & Ba, *Adam*, 2015;
Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019, for the decay):

$$ m \\leftarrow \\beta_1\\, \\hat m + (1 - \\beta_1)\\, g, \\qquad v \\leftarrow \\beta_2\\, \\hat v + (1 - \\beta_2)\\, g^2
\\qquad (\\hat m = \\text{{code}}_m[q_m] \\cdot N_m,\\ \\hat v = \\text{{code}}_v[q_v] \\cdot N_v) $$

$$ p \\leftarrow p\\,(1 - \\mathrm{{lr}} \\cdot \\mathrm{{wd}}) \\;-\\; \\frac{{\\mathrm{{lr}}}}{{1 - \\beta_1^t}}\\;
\\frac{{m}}{{\\sqrt{{v}} / \\sqrt{{1 - \\beta_2^t}} + \\epsilon}} $$

then $N_m = \\max |m|$, $N_v = \\max v$ over each block of 256, and $q_m, q_v$ the nearest codes of
$m / N_m$ (signed map) and $v / N_v$ (unsigned map). Three details decide whether it trains:

* **bias correction** — at $t = 1$, $m = 0.1\\,g$ and $v = 0.001\\,g^2$: without the two corrections the
  first update is $0.1/\\sqrt{{0.001}} \\approx 3.2$ times the corrected one, $\\mathrm{{lr}} \\cdot \\mathrm{{sign}}(g)$;
* **the update reads the fp32 moments**, not the requantized ones: a small $v$ that rounds to 0 would
  divide by $\\epsilon$ alone and throw that parameter away;
* **decoupled weight decay** multiplies $p$ by $1 - \\mathrm{{lr}} \\cdot \\mathrm{{wd}}$; adding $\\mathrm{{wd}} \\cdot p$ to the
  gradient instead (Adam with L2) divides the decay by $\\sqrt{{v}}$.

**One pass over memory.** Per fp32 parameter the kernel reads $p$, $g$ and two codes and writes $p$ and
two codes: 16 bytes (plus 16 per 256 values of absmax), against 28 for fp32 AdamW (it also reads and
writes two fp32 moments). Everything in between stays in registers: a kernel that dequantizes into fp32
buffers first moves 8 more bytes per value and allocates them.

### Exercise 3 — `adamw8bit_step(param, grad, state, step, lr, beta1, beta2, eps, weight_decay)` (4 points correctness, 2 speed, 1 memory)

* update `param` (contiguous, fp32 / fp16 / bf16) in place; `state` holds `qmap_m` (signed) and
  `qmap_v` (unsigned); on the first call add `m`, `v` (uint8, one code per value) and `m_absmax`,
  `v_absmax` (fp32, one per block of 256), all zero — an absmax of 0 decodes every code to 0;
* the check drives your step over scripted gradients and compares `param` after **every step** with
  bitsandbytes' 8-bit AdamW algorithm (computed exactly): the total update $\\Delta p$ must be within a
  relative {O.ADAM_TOL:g} <!-- nb05_optim.ADAM_TOL --> of the reference's. Why that number: two correct
  kernels differ by ≤ 5e-4 (bitsandbytes' CUDA kernel decays *after* the Adam step, a difference of
  lr·wd), while a `v` quantized with the signed map is off by 3e-3 and more, fp32 AdamW (no
  quantization at all) by 6e-3 and more;
* your state may take at most **{O.MAX_STATE_BYTES} bytes per parameter** <!-- nb05_optim.MAX_STATE_BYTES -->
  (2 bytes of codes + 8 bytes of absmax per 256 values = 2.03).

**Speed (GPU):** one step on {O.ADAM_SPEED_N:,} fp32 parameters <!-- nb05_optim.ADAM_SPEED_N --> at least
**{O.ADAM_SPEED_THRESHOLD:g}×** <!-- nb05_optim.ADAM_SPEED_THRESHOLD --> as fast as `bitsandbytes.optim.AdamW8bit`.
**Memory (GPU):** a step (after the first) may allocate at most
{O.ADAM_MEMORY_FRACTION:g} <!-- nb05_optim.ADAM_MEMORY_FRACTION --> × the bytes of the fp32 parameters: no fp32
copies of $m$ and $v$. Exercise 2's `nearest_code` and `midpoints` are yours to reuse; the state
may be allocated with `torch.zeros` in the call, everything else happens in your kernels.
""", "md_ex3"))
    c.append(solution(src["adamw8bit_step_solution"], "adamw8bit_step_solution"))
    c.append(test('# Check exercise 3, correctness (graded; the last line is your points).\n'
                  'result = check("adamw8bit_step", adamw8bit_step)\nresult.points',
                  "adamw8bit_step_check", points=O.AdamW8bitStep.points["correctness"]))
    c.append(test('# Check exercise 3, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).\n'
                  'result = check("adamw8bit_step", adamw8bit_step, "speed")\nresult.points',
                  "adamw8bit_step_speed", points=O.AdamW8bitStep.points["speed"]))
    c.append(test('# Check exercise 3, memory (graded on a CUDA GPU; on a CPU it awards nothing and says so).\n'
                  'result = check("adamw8bit_step", adamw8bit_step, "memory")\nresult.points',
                  "adamw8bit_step_memory", points=O.AdamW8bitStep.points["memory"]))
    c.append(md(r"""
Your kernel as an optimizer: `Fused8bitAdamW(params, qmap_m, qmap_v, step_fn=adamw8bit_step)` next to
bitsandbytes' `AdamW8bit` and PyTorch's fused AdamW on the course GPT — the losses, the state bytes,
and on a GPU the time of a whole training step.
""", "md_your_optimizer"))
    c.append(code(src["demo_your_optimizer"], "demo_your_optimizer"))

    c.append(md(r"""
## 6. Paged optimizers: when the state does not fit

Memory use is not flat: a long sequence, a large batch, an evaluation pass can push a step over the
GPU's capacity for a moment. **Paged optimizers** (Dettmers et al., *QLoRA*, NeurIPS 2023) allocate
the optimizer state in CUDA **unified memory** (`cudaMallocManaged`): the driver moves its pages to
host RAM when the GPU runs out and back on the next access, so the step slows down instead of failing.
bitsandbytes' `PagedAdamW8bit` does this for every state tensor of ≥ 100 000 values (and prefetches the
pages before each step). On a GPU the cell below fills the memory so that the weights and gradients
fit but the 8-bit state does not: `AdamW8bit` runs out of memory, `PagedAdamW8bit` runs, slower.
""", "md_paged"))
    c.append(code(src["demo_paged"], "demo_paged"))

    c.append(md(r"""
## 7. Adafactor: a second moment of $n + m$ numbers

For a matrix gradient $G \in \mathbb{R}^{n \times m}$, Adafactor (Shazeer & Stern, *Adafactor:
Adaptive Learning Rates with Sublinear Memory Cost*, ICML 2018) keeps only the running means of $G^2$
over each row and each column,

$$ R \leftarrow R + \hat\beta_t\,(\mathrm{mean}_j\, G_{ij}^2 - R), \qquad C \leftarrow C + \hat\beta_t\,(\mathrm{mean}_i\, G_{ij}^2 - C),
\qquad \hat V = \frac{R\, C^\top}{\mathrm{mean}(R)} , $$

the rank-1 matrix closest to the full second moment in the paper's (generalized KL) sense: $n + m$
numbers instead of $nm$. `torch.optim.Adafactor` (no momentum) then steps by

* $\hat\beta_t = t^{\,\text{beta2\_decay}}$ (1 at $t = 1$; $-0.8$ by default), so no bias correction is needed;
* the update $U = G / \sqrt{\max(\hat V, \epsilon_1^2)}$, divided by $\max(1, \mathrm{RMS}(U)/d)$ (*update clipping*);
* a *relative* step size $\alpha_t = \max(\epsilon_2, \mathrm{RMS}(p))\cdot \min(\mathrm{lr}, 1/\sqrt t)$, with $p$
  before the decay; weight decay $p \leftarrow p\,(1 - \mathrm{lr}\cdot\mathrm{wd})$; then $p \leftarrow p - \alpha_t U$.

Tensors with more than two dimensions are factored over the last two; vectors keep their full $v$.

### Exercise 4 — `class Adafactor(torch.optim.Optimizer)` (3 points)

Same constructor as `torch.optim.Adafactor`: `(params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
weight_decay=0.0)`, with `eps1 = None` meaning the dtype's machine epsilon. The check runs yours and
PyTorch's on the same parameters and gradients for a few steps — vectors, matrices, 3-D and 4-D tensors,
weight decay, `lr` above $1/\sqrt t$ — and compares every parameter after every step (relative
$10^{-4}$ of the update, <!-- nb05_optim.ADAFACTOR_TOL --> float32 rounding only), and it counts the numbers
your `self.state[p]` holds for each matrix.
""", "md_ex4"))
    c.append(solution(src["adafactor_solution"], "adafactor_solution"))
    c.append(test('# Check exercise 4 (graded; the last line is your points).\n'
                  'result = check("Adafactor", Adafactor)\nresult.points',
                  "adafactor_check", points=O.AdafactorExercise.points["correctness"]))
    c.append(md(r"""
The optimizers side by side on the course GPT: the state each keeps, measured.
""", "md_final"))
    c.append(code(src["demo_final"], "demo_final"))
    c.append(md(r"""
## Summary

* AdamW's state is 8 of its 16 bytes per parameter. Stored in 8 bits it costs 2 (and 8 bytes per 256
  values of absmax): a training step needs about 10 bytes per parameter instead of 16.
* **Linear** 8-bit states zero every value below 1/254 of the absmax, and Adam diverges. The **dynamic**
  map spends the bits like a float (7 decades); **block-wise** absmax (256 values in bitsandbytes, 2048
  in the paper) confines outliers. Small tensors stay in fp32.
* The update must read the **fp32** moments, and the whole step — dequantize, update, requantize — fits
  in **one pass** over memory: 16 bytes per parameter against fp32 AdamW's 28, so an 8-bit AdamW can be
  *faster* than the fp32 one, not only smaller.
* **Paged** optimizers trade speed for survival when memory runs out; **Adafactor** factors the second
  moment of a matrix into $n + m$ numbers and drops the first.

**Next: 06 — LoRA and QLoRA**, where the same block-wise quantization stores frozen weights in 4 bits (NF4).
""", "summary"))
    return notebook(c, "05 — 8-bit optimizers: block-wise quantization and a fused 8-bit AdamW")


if __name__ == "__main__":
    out = REPO / "solutions" / "05_8bit_optimizers.ipynb"
    write(build(), out)
    print(f"wrote {out}")
