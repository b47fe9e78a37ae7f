"""Notebook 06, part 1: the arithmetic of adapters, LoRA (exercise 1), rsLoRA, DoRA (exercise 2)."""
from grader.authoring import code, md, solution, test

INTRO = md(r"""
# 06 — LoRA, DoRA and QLoRA from scratch

Fine-tuning all the weights of a pretrained model costs, with Adam in mixed precision, about
**16 bytes per parameter** before the first activation is stored (notebook 02): 112 GB for a 7 B
model. Yet the change that fine-tuning makes to a weight matrix has a low *intrinsic rank*
(Aghajanyan et al., 2020). **LoRA** (Hu et al., 2021) freezes the pretrained weight $W$ and trains
a low-rank update $\Delta W = BA$ instead; **QLoRA** (Dettmers et al., 2023) also stores the frozen
$W$ in 4 bits. In this notebook you will

1. count what adapters save — parameters, optimizer state, bytes — and what they do not
   (activations);
2. write a **LoRA layer** equal to peft's (exercise 1), and see why rsLoRA scales by $\alpha/\sqrt r$;
3. write **DoRA**, which splits the weight into a magnitude and a direction (exercise 2);
4. write the **NF4** quantizer of QLoRA in Triton, with double quantization, equal to
   bitsandbytes bit for bit (exercise 3), and its dequantizer (exercise 4);
5. put them together in a **QLoRA layer** and fine-tune the course GPT on a new domain
   (exercise 5), and measure **when adapters pay** and when they do not;
6. fuse the LoRA linear layer into **one Triton kernel** (exercise 6).

**How grading works.** Each exercise has a *solution* cell, then *check* cells. Correctness is
checked on any machine (plus hidden tests in the grader), against the real libraries: **peft**
for the adapters, **bitsandbytes** for NF4. Speed and memory parts are measured on a CUDA GPU; on
a machine without one they say *needs a CUDA GPU — not awarded here*, and the Triton kernels run,
slowly, in Triton's CPU interpreter. Graded code may not call peft or bitsandbytes.
""", "intro")

SETUP = code(r"""
# Setup. `import effilab` comes first: on a machine without a CUDA GPU it switches Triton to its
# CPU interpreter, which must happen before triton is imported.
import copy
import math
import os
import time

import effilab
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from effilab import bench, data, device, lora, nf4
from effilab.grading import check
from effilab.memory import format_bytes, plot_training_memory
from effilab.models import GPT, GPTConfig

DEV = device.default_device()
GPU = DEV.type == "cuda"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # True on a CPU: small demos, few fat programs
NF4_TABLE = nf4.nf4_code()          # the 16 NF4 values (float32, sorted): code c decodes to NF4_TABLE[c]
DYNAMIC_TABLE = nf4.dynamic_code()  # the 256 sorted values of the 8-bit "dynamic" code (double quantization)
_COPIES = {}


def on_device(table: torch.Tensor, dev) -> torch.Tensor:
    '''`table` on `dev`, copied once: a `.to(dev)` per call is a blocking host-to-device copy.'''
    key = (id(table), str(dev))
    if key not in _COPIES:
        _COPIES[key] = table.to(dev)
    return _COPIES[key]


if not GPU:
    torch.set_num_threads(1)  # the tiny models here run faster (and reproducibly) on one CPU thread
print(device.info().summary())
""", "setup_imports", locked=True)

MD_ARITH = md(r"""
## 1. What a low-rank adapter saves

A linear layer $y = Wx + b$ with $W \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$ is adapted as

$$ y = Wx + b + \frac{\alpha}{r}\, B A x, \qquad A \in \mathbb{R}^{r\times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out}\times r},\; r \ll \min(d_\text{in}, d_\text{out}) $$

with $W$ and $b$ frozen. The adapter has $r(d_\text{in} + d_\text{out})$ parameters instead of
$d_\text{in} d_\text{out}$: for a $4096\times4096$ projection at $r = 16$, 131 k instead of 16.8 M
(0.8 %). Three details matter:

* **Initialisation.** $A$ is drawn like an `nn.Linear` weight (Kaiming-uniform, $a=\sqrt5$, i.e.
  $U(-1/\sqrt{d_\text{in}}, 1/\sqrt{d_\text{in}})$) and $B = 0$: the adapted model starts *exactly*
  equal to the pretrained one, and the first gradient step moves $B$ (whose gradient
  $\propto (Ax)^\top$ is non-zero) before $A$ (whose gradient $\propto B^\top$ is zero at first).
* **The scale $\alpha/r$.** With Adam the size of an update barely depends on the gradient's
  size, so the product $BA$ would change faster as $r$ grows; dividing by $r$ lets one keep the
  learning rate when changing $r$ — "tuning $\alpha$ is roughly tuning the learning rate" (Hu et
  al., §4.1). **rsLoRA** (Kalajdzievski, 2023) shows that $\alpha/r$ *over*-corrects: the update
  then shrinks like $1/\sqrt r$ and large ranks learn no better than small ones; $\alpha/\sqrt r$
  keeps it rank-stable.
* **Merging.** After training, $W \leftarrow W + \frac{\alpha}{r}BA$ gives a plain `nn.Linear`
  again: no inference cost at all. `unmerge()` subtracts the same product.

Which layers to adapt? The LoRA paper adapted only the attention's $W_q, W_v$; QLoRA found that
adapting **every linear layer** is needed to match full fine-tuning. In the course GPT that is
`attn.c_attn`, `attn.c_proj`, `mlp.c_fc` and `mlp.c_proj` of each block (`effilab.lora.TARGETS`).

The memory of a fine-tuning step, by part (the accounting of notebook 02; `lora.finetune_memory`):

| | frozen weights | trainable weights | gradients | Adam $m, v$ | fp32 master |
|---|---|---|---|---|---|
| full (mixed precision) | – | 2 B/param | 2 | 8 | 4 |
| LoRA | 2 B/param (bf16) | 4 B/adapter param | 4 | 8 | – |
| QLoRA | **0.52 B/param (NF4)** | 4 | 4 | 8 | – |

Activations are the same in all three: LoRA does not shrink them at all.
""", "md_arith")

DEMO_ARITH = code(r"""
cfg = GPTConfig.preset("gpu-real")                     # the course GPT of notebooks 02–04: 86 M parameters
C, r = cfg.n_embd, 16
shapes = {"attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
print(f"{'layer':12} {'d_in':>5} {'d_out':>6} {'full':>10} {'LoRA r=16':>10} {'share':>7}")
for name, (d_in, d_out) in shapes.items():
    full, ad = d_in * d_out, lora.lora_params(d_in, d_out, r)
    print(f"{name:12} {d_in:5} {d_out:6} {full:10,} {ad:10,} {ad / full:7.2%}")
n_params = GPT.param_formula(cfg)["total"]
n_adapted = cfg.n_layer * sum(i * o for i, o in shapes.values())
n_adapter = cfg.n_layer * sum(lora.lora_params(i, o, r) for i, o in shapes.values())
print(f"\ngpu-real: {n_params / 1e6:.1f} M parameters, {n_adapted / 1e6:.1f} M of them in adapted Linear layers, "
      f"{n_adapter / 1e6:.2f} M adapter parameters ({n_adapter / n_params:.2%})")

# The same accounting for a 7 B model of LLaMA's shape (32 layers of width 4096, MLP 11008, 4 + 3 Linear layers)
d, h, L = 4096, 11008, 32
big_adapted = L * (4 * d * d + 3 * d * h)
big_adapter = L * (4 * lora.lora_params(d, d, r) + 2 * lora.lora_params(d, h, r) + lora.lora_params(h, d, r))
big = big_adapted + 2 * 32000 * d
breakdowns = {}
for label, n, n_ad, n_lora in (("gpu-real", n_params, n_adapted, n_adapter), ("7 B", big, big_adapted, big_adapter)):
    for method in ("full", "lora", "qlora"):
        breakdowns[f"{label}\n{method}"] = lora.finetune_memory(n, n_ad, n_lora, method)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
plot_training_memory({k: v for k, v in breakdowns.items() if k.startswith("gpu")}, ax=axes[0], unit="GiB")
plot_training_memory({k: v for k, v in breakdowns.items() if k.startswith("7")}, ax=axes[1], unit="GiB")
axes[0].set_title("gpu-real (86 M): model state of one step")
axes[1].set_title("a 7 B model: model state of one step")
plt.show()
""", "demo_arith")

MD_EX1 = md(r"""
### Exercise 1 — `LoRALinear` (4 points)

Write the layer. The checker wraps random `nn.Linear`s (odd sizes, with and without bias, $r$ from
1 to 16, $\alpha$ below and above $r$) with your class and with **peft's `LoraModel`**, loads the
same $A$ and $B$ into both, and compares:

* **init**: `lora_B` is zero, `lora_A` is Kaiming-uniform (bound $1/\sqrt{d_\text{in}}$), the
  layer's output equals the base layer's, and the only trainable parameters are `lora_A` and
  `lora_B` — $r(d_\text{in}+d_\text{out})$ values;
* **forward** and **gradients** (of $x$, $A$, $B$; none for the base) equal peft's;
* **merge / unmerge**: `merge()` adds $\frac{\alpha}{r}BA$ to `base.weight` in place (and the
  forward then skips the adapter), `unmerge()` restores the weight;
* **rsLoRA**: `use_rslora=True` scales by $\alpha/\sqrt r$.

Names the checker relies on: `self.base` (the wrapped `nn.Linear`), `self.lora_A` ($r \times
d_\text{in}$) and `self.lora_B` ($d_\text{out} \times r$), both `nn.Parameter`s in the base weight's
dtype and device, and `self.scaling`. A tip for speed: `torch.addmm(y, xa, B.t(), alpha=s)` adds
the low-rank term inside the GEMM's epilogue, instead of one pass to scale it and another to add it.
""", "md_ex1")

LORA_SOLUTION = solution(r"""
class LoRALinear(nn.Module):
    '''A frozen nn.Linear plus a trainable low-rank update: y = base(x) + s · (x Aᵀ) Bᵀ.

    s = alpha / r (LoRA, Hu et al. 2021) or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023).
    '''

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, use_rslora: bool = False):
        # base: the pretrained layer, frozen here (its weight and bias get requires_grad=False)
        # r: the rank of the update (lora_A is r × d_in, lora_B is d_out × r)
        # alpha: the numerator of the scale
        # use_rslora: scale by alpha / sqrt(r) instead of alpha / r
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if int(r) != r or r <= 0:
            raise ValueError(f"the rank r must be a positive integer, got {r}")
        self.base, self.r, self.alpha, self.merged = base, int(r), float(alpha), False
        ### BEGIN SOLUTION
        for p in base.parameters():
            p.requires_grad_(False)
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., d_in); returns (..., d_out)
        ### BEGIN SOLUTION
        y = self.base(x)
        if self.merged:                                      # the update already lives in base.weight
            return y
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        xa = x2 @ self.lora_A.t().to(x2.dtype)              # (M, r): tiny
        # y + s · xa Bᵀ in one GEMM: the scale and the add happen in its epilogue
        return torch.addmm(y2, xa, self.lora_B.t().to(xa.dtype), alpha=self.scaling).view(y.shape)
        ### END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        '''W ← W + s · B A, in place; the forward then skips the adapter.'''
        ### BEGIN SOLUTION
        if not self.merged:
            self.base.weight += (self.scaling * (self.lora_B @ self.lora_A)).to(self.base.weight.dtype)
            self.merged = True
        ### END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        '''W ← W − s · B A: the pretrained weight again (up to rounding).'''
        ### BEGIN SOLUTION
        if self.merged:
            self.base.weight -= (self.scaling * (self.lora_B @ self.lora_A)).to(self.base.weight.dtype)
            self.merged = False
        ### END SOLUTION
""", "lora_solution")

LORA_CHECK = test(r"""
# Check exercise 1 (graded; the last line is your points).
result = check("LoRALinear", LoRALinear)
result.points
""", "lora_check", points=4)

MD_PEFT = md(r"""
Your layer and peft's on the pretrained tiny GPT that this notebook fine-tunes later
(`lora.load_tiny_base()`: the `cpu-tiny` course GPT, 0.12 M parameters, trained on the standard
library's sources): the same number of trainable parameters, and — with the same $A$ and $B$ — the
same loss.
""", "md_peft")

DEMO_PEFT = code(r"""
base = lora.load_tiny_base()
try:
    mine = lora.adapt(copy.deepcopy(base), lambda lin: LoRALinear(lin, r=8, alpha=16))
    theirs = lora.peft_lora(copy.deepcopy(base), r=8, alpha=16)
    n_mine, n_theirs = sum(lora.trainable_parameters(mine).values()), sum(lora.trainable_parameters(theirs).values())
    print(f"trainable: yours {n_mine:,}, peft {n_theirs:,} (of {base.num_params():,}: {n_mine / base.num_params():.1%})")
    ours = [m for m in mine.modules() if isinstance(m, LoRALinear)]
    peft_layers = [m for m in theirs.modules() if isinstance(getattr(m, "lora_A", None), nn.ModuleDict)]
    with torch.no_grad():                   # give both the same non-zero adapters, then compare
        for a, b in zip(ours, peft_layers):
            a.lora_B.normal_(0, 0.02)
            b.lora_A["default"].weight.copy_(a.lora_A)
            b.lora_B["default"].weight.copy_(a.lora_B)
    x, y = data.get_batch(lora.finetune_data()[0], 4, 64, seed=0)
    print(f"loss with these adapters: yours {mine(x, y)[1].item():.6f}, peft {theirs(x, y)[1].item():.6f}")
except NotImplementedError:
    print("Finish exercise 1 to compare your layer with peft's here.")
""", "demo_peft")

MD_RSLORA = md(r"""
### α/r or α/√r? A measured answer

One adapted layer learns a random linear map of rank 64 (a teacher $y = (W + \Delta)x$ with a
rank-64 $\Delta$), with Adam at one learning rate and $\alpha = 2$, for ranks $r$ = 4, 16 and 64
under both scales. With $\alpha/r$ the three ranks learn at the same slow pace — a rank-64 adapter
is no better than a rank-4 one, because the scale shrinks its update as fast as the extra rank
could help; with $\alpha/\sqrt r$ the larger ranks learn faster, as rsLoRA predicts. (With
$\alpha/r$ one would have to retune the learning rate for every rank.)
""", "md_rslora")

DEMO_RSLORA = code(r"""
def fit(r, rslora, steps=200, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(d, 64, generator=g) @ torch.randn(64, d, generator=g) / d
    layer = LoRALinear(nn.Linear(d, d, bias=False), r=r, alpha=2, use_rslora=rslora)
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=5e-4)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, d, generator=g)
        loss = (layer(x) - layer.base(x) - x @ teacher.t()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

try:
    curves = {(r, rs): fit(r, rs) for rs in (False, True) for r in (4, 16, 64)}
except NotImplementedError:
    curves = {}
    print("Finish exercise 1 to compare the two scales here.")
if curves:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True, layout="constrained")
    for (r, rs), losses in curves.items():
        axes[int(rs)].plot(losses, label=f"r = {r}")
    for ax, rs in zip(axes, (False, True)):
        ax.set_title("rsLoRA: α/√r" if rs else "LoRA: α/r")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    axes[0].set_ylabel("loss")
    plt.show()
    for r in (4, 16, 64):
        print(f"r = {r:2}: final loss α/r {curves[(r, False)][-1]:.4f}, α/√r {curves[(r, True)][-1]:.4f}")
""", "demo_rslora")

MD_DORA = md(r"""
## 2. DoRA: magnitude and direction

DoRA (Liu et al., 2024) looked at how full fine-tuning changes a weight matrix and found that the
*length* and the *direction* of each output row move differently, which plain LoRA couples. It
writes the adapted weight as a **magnitude** vector times a **normalised direction**:

$$ W' = m \cdot \frac{W + sBA}{\lVert W + sBA\rVert_r}, \qquad y = W'x + b, $$

where $\lVert\cdot\rVert_r$ is the norm of each output row (one value per output feature, as peft
computes it: `torch.linalg.norm(W + s·B@A, dim=1)`) and $m \in \mathbb{R}^{d_\text{out}}$ is
trainable, initialised to $\lVert W\rVert_r$ so that $W' = W$ at the start. Two implementation
points, both as in the paper and in peft:

* **the norm is detached** (DoRA §4.3): in backward $\lVert W + sBA\rVert_r$ is treated as a
  constant. This saves the memory and time of differentiating through the norm, and the paper
  shows it changes little; without it the gradients of $A$ and $B$ pick up an extra term — and no
  longer equal peft's;
* the forward never forms $W'$: $y = \frac{m}{\lVert W+sBA\rVert_r}\odot(Wx + s\,(xA^\top)B^\top) + b$.

Merging writes $W'$ into the base weight; to unmerge you need the norm you divided by (the merged
weight's rows have other norms), so keep it.

### Exercise 2 — `DoRALinear(LoRALinear)` (3 points)

Subclass your LoRA layer: add `self.magnitude` (an `nn.Parameter` of shape `(d_out,)`) and
override `forward`, `merge` and `unmerge`. Checked against peft's `LoraConfig(use_dora=True)`:
init, forward, gradients (of $x$, $A$, $B$ and $m$) and merge/unmerge.
""", "md_dora")

DORA_SOLUTION = solution(r"""
class DoRALinear(LoRALinear):
    '''DoRA (Liu et al. 2024): y = m / ‖W + s B A‖ ⊙ (W x + s (x Aᵀ) Bᵀ) + b, the row norm detached.'''

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, use_rslora: bool = False):
        # the same arguments as LoRALinear; adds self.magnitude, one value per output row
        super().__init__(base, r, alpha, use_rslora)
        ### BEGIN SOLUTION
        self.magnitude = nn.Parameter(self.weight_norm().detach().clone())
        ### END SOLUTION

    def weight_norm(self) -> torch.Tensor:
        '''‖W + s · B A‖ of every output row: shape (d_out,).'''
        ### BEGIN SOLUTION
        w = self.base.weight
        return torch.linalg.norm(w + self.scaling * (self.lora_B @ self.lora_A).to(w.dtype), dim=1)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., d_in); returns (..., d_out)
        ### BEGIN SOLUTION
        if self.merged:
            return self.base(x)
        scale = self.magnitude / self.weight_norm().detach()     # detached: a constant in backward (DoRA §4.3)
        x2 = x.reshape(-1, self.base.in_features)
        y = F.linear(x2, self.base.weight)
        y = torch.addmm(y, x2 @ self.lora_A.t(), self.lora_B.t(), alpha=self.scaling) * scale
        if self.base.bias is not None:
            y = y + self.base.bias
        return y.view(*x.shape[:-1], -1)
        ### END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        '''W ← m · (W + s B A) / ‖W + s B A‖ (row norms); keeps the norm for unmerge().'''
        ### BEGIN SOLUTION
        if not self.merged:
            self._merge_norm = self.weight_norm()
            w = self.base.weight
            w.copy_((self.magnitude / self._merge_norm)[:, None] * (w + self.scaling * (self.lora_B @ self.lora_A)))
            self.merged = True
        ### END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        ### BEGIN SOLUTION
        if self.merged:
            w = self.base.weight
            w.copy_(w / (self.magnitude / self._merge_norm)[:, None] - self.scaling * (self.lora_B @ self.lora_A))
            self.merged = False
        ### END SOLUTION
""", "dora_solution")

DORA_CHECK = test(r"""
# Check exercise 2 (graded; the last line is your points).
result = check("DoRALinear", DoRALinear)
result.points
""", "dora_check", points=3)

CELLS = [INTRO, SETUP, MD_ARITH, DEMO_ARITH, MD_EX1, LORA_SOLUTION, LORA_CHECK, MD_PEFT, DEMO_PEFT, MD_RSLORA,
         DEMO_RSLORA, MD_DORA, DORA_SOLUTION, DORA_CHECK]
