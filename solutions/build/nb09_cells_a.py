"""Cells of notebook 09, part 1: the stack, graph breaks, guards and recompiles (exercises 1–2) (solutions/build/09_torch_compile.py assembles them).

Kept as plain data — markdown and code sources with their grade ids — so the build script stays a
list, and the notebook's text can be reviewed here with the code it describes.
"""
from grader.authoring import code, md, solution, test

CELLS = []
add = CELLS.append

# ---------------------------------------------------------------------------------------------- intro
add(md(r"""
# 09 — `torch.compile`: graphs, guards, fusion, and your kernel inside

Notebook 08 fused operators by hand. `torch.compile` does it for you — when it can see the code.
This notebook opens the compiler up:

1. the **stack**: TorchDynamo captures a graph from Python bytecode, AOTAutograd derives the
   backward graph, Inductor generates the kernels (Triton on a GPU, C++ on a CPU);
2. **graph breaks** — what ends a graph, how to find each one (`torch._dynamo.explain`,
   `TORCH_LOGS=graph_breaks`, `fullgraph=True`) and how to rewrite it away (exercise 1);
3. **guards and recompiles** — shapes, automatic dynamic shapes, `mark_dynamic`, `dynamic=True`,
   the recompile limit (exercise 2);
4. **reading Inductor's output**: the one kernel it writes for an eager RMSNorm;
5. **your Triton kernel as a custom operator** (`torch.library.custom_op`, `triton_op`,
   `register_fake`, `register_autograd`, `opcheck`) so that `fullgraph=True` compiles through it
   (exercise 3);
6. **modes and compile time**: default, `reduce-overhead`, `max-autotune`; regional compilation;
   when compiling pays — and a compiled training step that beats eager on a GPU (exercise 4).

The design is that of Ansel et al. (2024), *PyTorch 2: Faster Machine Learning Through Dynamic
Python Bytecode Transformation and Graph Compilation* (ASPLOS '24).

**How grading works.** Each exercise has a *solution* cell, then *check* cells. Correctness is
checked on any machine (plus hidden tests in the grader); the speed part of exercise 4 needs a CUDA
GPU and says so elsewhere. The checker compiles your code with the cheap backends `eager` and
`aot_eager` (where you call `torch.compile`, it passes them to you as `backend=`): guards,
recompiles and graph breaks are TorchDynamo's and do not depend on the backend, and a check then
takes seconds instead of minutes.
On a CPU, Inductor writes C++ and compiles it with `g++`: the one cell below that uses it takes
15–30 s the first time.
""", "intro"))

add(code(r"""
# Setup. `import effilab` comes first: on a machine without a CUDA GPU it switches Triton to its
# CPU interpreter, which must happen before triton is imported.
import inspect
import math
import time

import effilab
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from effilab import bench, device
from effilab.compile_models import BreakyBlock, TinyLM
from effilab.compiling import (H200_TRAIN_STEP, CountingBackend, ModeResult, break_even_steps, dynamo_logs,
                               first_call_seconds, fresh_namespace, graph_breaks, inductor_code, kernels_in,
                               plot_compile_tradeoff, recompile_limit)
from effilab.grading import check
from effilab.memory import format_bytes
from effilab.models import GPT, GPTConfig
from effilab.ops.layernorm import layer_norm_backward, layer_norm_forward
from effilab.roofline import count_bytes
from effilab.train import make_optimizer

DEV = device.default_device()
GPU = DEV.type == "cuda"
print(device.info().summary())
print("torch", torch.__version__, "| Inductor generates", "Triton" if GPU else "C++ (g++)")
""", "setup_imports", locked=True))

# ---------------------------------------------------------------------------------------------- 1. stack
add(md(r"""
## 1. The stack: TorchDynamo → AOTAutograd → Inductor

`torch.compile(fn)` returns a function that, on its first call, does three things.

**TorchDynamo** hooks CPython's frame evaluation (PEP 523). Instead of running `fn`'s bytecode it
*interprets* it symbolically: Python values stay Python, tensors become `FakeTensor`s that carry
only shape, dtype and device, and every torch operation is appended to an FX graph. It records the
**guards** — the facts the graph relies on: `x` is a float32 tensor of shape (8, 16), `self.clip ==
1.0`, grad mode is on. Later calls check the guards (microseconds) and run the compiled graph.

**AOTAutograd** re-traces the graph at the level of aten operators, *ahead of time* derives the
backward graph from each op's derivative formula, and splits the joint graph into a forward and a
backward with a min-cut partitioner, which decides what the forward saves and what the backward
recomputes (cheap pointwise ops are recomputed rather than stored).

**Inductor** lowers both graphs to a loop-level IR, **fuses** pointwise ops and reductions into as
few loops as memory allows, and writes the code: Triton kernels on a GPU (Tillet, Kung & Cox 2019),
C++ with OpenMP and vector intrinsics on a CPU. Matrix products go to cuBLAS / oneDNN (or, with
`max-autotune`, to generated Triton GEMMs).

The cell below compiles a three-op function with a backend that records what each stage received.
""", "md_stack"))

add(code(r"""
def mlp(x, w1, w2):
    return torch.relu(x @ w1) @ w2 + x


x = torch.randn(8, 16, requires_grad=True)
w1 = torch.randn(16, 32, requires_grad=True)
w2 = torch.randn(32, 16, requires_grad=True)
counter = CountingBackend("aot_eager")          # records the graphs, then runs them through AOTAutograd
y = torch.compile(mlp, backend=counter)(x, w1, w2)
y.sum().backward()

interesting = lambda ops: [o for o in ops if not o.startswith(("aten.view", "aten.t.", "getitem"))]
print("TorchDynamo's graph (torch-level calls):", counter.graphs[0].ops)
print(counter.graphs[0].code.strip())
print("\nAOTAutograd's forward graph (aten ops): ", interesting(counter.forward[0].ops))
print("AOTAutograd's backward graph (aten ops):", interesting(counter.backward[0].ops))
""", "demo_stack"))

# ---------------------------------------------------------------------------------------------- 2. breaks
add(md(r"""
## 2. Graph breaks: what ends a graph, and how to find it

Dynamo records tensor operations. When it meets something it cannot put in a graph, it **breaks**:
it compiles the graph so far, runs the offending bytecode in ordinary Python, and starts a new graph
in a *resume function* after it. The program stays correct, but each break costs

* fusion across the break (the kernels on either side cannot merge),
* a return to the Python interpreter, often a device→host **synchronisation** (`.item()` waits for
  the GPU), and one more set of guards to check on every call.

The usual causes:

| cause | example | rewrite |
|---|---|---|
| a value to Python | `x.max().item()`, `float(t)`, `t.tolist()` | keep it a 0-dim tensor |
| Python control flow on data | `if t.sum() > 0:` | `torch.where(cond, a, b)` (both branches are computed) or `torch.cond` |
| data-dependent output shapes | `x[mask]`, `mask.nonzero()`, `torch.unique` | multiply by the mask; fixed-shape ops |
| untraceable calls | `print`, `logging`, C extensions, some NumPy | move them out, or register an op (§5) |

Three tools find breaks: `torch._dynamo.explain(fn)(*args)` (its count is *graphs − 1*);
`TORCH_LOGS=graph_breaks` (`torch._logging.set_logs(graph_breaks=True)` in a notebook; effilab's
`dynamo_logs("graph_breaks")` collects the messages instead of printing them to stderr); and
`torch.compile(fn, fullgraph=True)`, which raises at the first break — the setting to use once a
model is clean, so that a break can never come back unnoticed.

Here is a residual MLP block with the habits research code picks up — and every one is a break:
""", "md_breaks"))

add(code(r"""
print(inspect.getsource(BreakyBlock.forward))
blk = BreakyBlock(dim=24, hidden=40, clip=1.0, seed=0)
x = torch.randn(4, 9, 24) * 3
mask = torch.ones(4, 9, dtype=torch.bool)
mask[1, 6:] = False                          # a padded sequence
print(graph_breaks(blk, x, mask))            # every break, with Dynamo's reason and the line

with dynamo_logs():                          # explain's own warnings stay off stderr
    ex = torch._dynamo.explain(blk)(x, mask)
print(f"\ntorch._dynamo.explain: {ex.graph_count} graphs, {ex.graph_break_count} graph breaks")
try:
    with dynamo_logs():
        torch.compile(blk, fullgraph=True, backend="eager")(x, mask)
except Exception as e:
    print("fullgraph=True refuses it:", type(e).__name__, "—", str(e).strip().splitlines()[0])
""", "demo_breaks"))

add(md(r"""
`explain` counts fewer breaks than there are break sites: the `print` comes right after the
`.item()` break, so the resume function breaks again before it has recorded anything, and no graph
is counted for it. Either way the block runs as several graphs with Python in between.

### Exercise 1 — `FixedBlock`: the same block in one graph (3 points)

Write `class FixedBlock(BreakyBlock)` whose `forward(x, mask)` returns exactly what
`BreakyBlock.forward` returns, with **no graph break**: `torch._dynamo.explain` must find one graph
and no break. Keep `BreakyBlock`'s `__init__` (only `forward` changes) and compute:

* `h = fc2(gelu(fc1(x)))`; if `max |h| > clip`, scale the whole `h` by `clip / max |h|`
  (one factor for the whole tensor, not a clamp of each element);
* the mean of `h` over the **real** tokens (where `mask` is True) — $\bar h = \sum_{b,t} m_{bt}\,h_{bt} /
  \sum_{b,t} m_{bt}$ — and return `x + h - mean`.

Drop the `print` (logging is not part of the output). The checker compares your outputs with
`BreakyBlock`'s when the rescaling happens, when it does not, and on padded batches, and refuses
`capture_scalar_outputs` / `allow_in_graph` tricks: rewrite the code, do not hide it from Dynamo.
""", "md_ex1"))

add(solution(r"""
class FixedBlock(BreakyBlock):
    def forward(self, x, mask):
        '''BreakyBlock's forward in one graph.

        Args:
            x: (B, T, dim) float tensor.
            mask: (B, T) bool tensor, True at real tokens, False at padding.
        Returns:
            x + h - mean, with h rescaled to max |h| <= clip and the mean over the real tokens.
        '''
        ### BEGIN SOLUTION
        h = self.fc2(F.gelu(self.fc1(x)))
        peak = h.abs().amax()                                        # a 0-dim tensor, not a Python float
        h = torch.where(peak > self.clip, h * (self.clip / peak), h)  # both branches, chosen on the device
        m = mask.unsqueeze(-1).to(h.dtype)                           # 1 at real tokens, 0 at padding
        mean = (h * m).sum(dim=(0, 1)) / m.sum()                     # mean over the real tokens only
        return x + h - mean
        ### END SOLUTION
""", "FixedBlock_solution"))

add(test(r"""
# Check exercise 1 (graded; the last line is your points).
result = check("FixedBlock", FixedBlock)
result.points
""", "FixedBlock_check", points=3))

# ---------------------------------------------------------------------------------------------- 3. guards
add(md(r"""
## 3. Guards and recompiles

A compiled graph is valid only under its guards. A call that fails them compiles again — a
**recompile** — and the new graph is added to the cache of that frame. What is guarded:

* every tensor input's dtype, device, `requires_grad`, and **sizes and strides**;
* Python values the code read: module attributes (`self.clip`), globals, arguments that are ints,
  bools, strings; the global state (grad mode, autocast, default dtype).

**Shapes.** By default the first call compiles a *static* graph for the exact sizes it saw. When a
size changes, Dynamo recompiles once with that dimension **symbolic** (a `SymInt`, guarded by a
range such as `2 <= T <= 128`) — *automatic dynamic shapes* — and later sizes reuse that graph.
Each dimension that changes costs one such recompile. To compile symbolically from the first call:
`torch._dynamo.mark_dynamic(x, dim)` on the input (per tensor, per dimension) or
`torch.compile(..., dynamic=True)` (every dimension). Sizes 0 and 1 stay special: Dynamo
specialises them (a size-1 dimension broadcasts), so a batch of one gets a graph of its own.

**The recompile limit.** After `torch._dynamo.config.recompile_limit` versions of one frame
(8 by default), Dynamo stops compiling it and runs it **eagerly**, with a one-line warning — a
silent slowdown that is easy to miss. Below, a Python loop over an int argument is unrolled into
the graph, so each value of `n` is a new graph:
""", "md_guards"))

add(code(r"""
def repeat_double(x, n: int):
    for _ in range(n):             # unrolled while tracing: the graph depends on n
        x = x * 2
    return x


torch._dynamo.reset()
counter = CountingBackend("eager")
f = torch.compile(repeat_double, backend=counter)
with dynamo_logs() as log:
    for n in range(1, 13):
        f(torch.ones(3), n)
print(f"12 calls with n = 1..12: {counter.compiles} graphs compiled (recompile_limit = {recompile_limit()})")
print(next(m for m in log if "recompile_limit" in m).splitlines()[0], "→ the remaining calls run eagerly")
""", "demo_recompile_limit"))

add(md(r"""
Now an evaluation loop: the same model on sequences of different lengths. `TinyLM` is a one-block
causal language model (token and position embeddings, a token-shift MLP — each position also sees
the previous one — and a head; `effilab/compile_models.py`). We count the
graphs compiled at each call — static (`dynamic=False`), with the default automatic dynamic shapes,
and with the length marked dynamic — and print the guard failure that triggered the recompile
(`TORCH_LOGS=recompiles`):
""", "md_recompiles"))

add(code(r"""
lm = TinyLM(seed=0).eval()
lengths = [17, 33, 50]
calls = [torch.randint(0, 64, (4, T)) for T in lengths]
per_call, reasons = {}, []
strategies = [("dynamic=False", dict(dynamic=False), False), ("default (automatic dynamic)", {}, False),
              ("mark_dynamic(idx, 1)", {}, True)]
for name, kw, mark in strategies:
    torch._dynamo.reset()
    counter = CountingBackend("eager")
    f = torch.compile(lm, backend=counter, **kw)
    compiled = []
    with dynamo_logs("recompiles") as log, torch.no_grad():
        for idx in calls:
            if mark:
                torch._dynamo.mark_dynamic(idx, 1)   # the length is symbolic from the first call
            before = counter.compiles
            f(idx)
            compiled.append(counter.compiles - before)
    per_call[name] = compiled
    if name.startswith("default"):
        reasons = [m for m in log if "triggered by" in m]
torch._dynamo.reset()

for name, c in per_call.items():
    print(f"{name:28} graphs compiled per call: {c}  (total {sum(c)})")
print("\nwhy the default recompiled:\n" + "\n".join(r.strip() for r in reasons))

fig, ax = plt.subplots(figsize=(6, 3))
for name, c in per_call.items():
    ax.step(range(1, len(c) + 1), [sum(c[:i + 1]) for i in range(len(c))], where="post", label=name)
ax.set_xticks(range(1, len(lengths) + 1), [f"T={T}" for T in lengths])
ax.set_ylabel("graphs compiled so far")
ax.set_title(f"TinyLM over {len(lengths)} sequence lengths")
ax.legend()
plt.show()
""", "demo_recompiles"))

add(md(r"""
### Exercise 2 — `compile_for_lengths`: at most one recompile (3 points)

Write `compile_for_lengths(model, backend="inductor")` that returns a callable `idx → logits`
running `model` compiled with `torch.compile(..., backend=backend)` (always pass the `backend`
argument on: the checker gives you a counting `eager` backend). The checker calls it on a fresh
`TinyLM` with five batches: three of one batch size with three different lengths, then two with
other batch sizes and lengths, and requires

* **at most one recompile** (`MAX_RECOMPILES = 1` in the spec) over the first three calls *and*
  over all five — counted as the graphs Dynamo hands to the backend after the first call;
* every call to run a compiled graph (no eager fallback), and the logits to equal the eager
  model's on every call.

The default `torch.compile(model)` passes the first three calls (one recompile, then the length is
dynamic) — and then recompiles again when the batch size changes.
""", "md_ex2"))

add(solution(r"""
def compile_for_lengths(model, backend="inductor"):
    '''The model compiled so that new sequence lengths and batch sizes do not recompile.

    Args:
        model: a module mapping token ids (B, T) to logits (B, T, vocab), e.g. TinyLM.
        backend: the torch.compile backend to use (pass it on to torch.compile).
    Returns:
        a callable idx -> logits.
    '''
    ### BEGIN SOLUTION
    return torch.compile(model, backend=backend, dynamic=True)   # B and T symbolic from the first call
    ### END SOLUTION
""", "compile_for_lengths_solution"))

add(test(r"""
# Check exercise 2 (graded; the last line is your points).
result = check("compile_for_lengths", compile_for_lengths)
result.points
""", "compile_for_lengths_check", points=3))
