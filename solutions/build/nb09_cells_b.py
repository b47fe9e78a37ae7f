"""Cells of notebook 09, part 2: Inductor's code, custom operators, modes and compile time (exercises 3–4) (solutions/build/09_torch_compile.py assembles them).

Kept as plain data — markdown and code sources with their grade ids — so the build script stays a
list, and the notebook's text can be reviewed here with the code it describes.
"""
from grader.authoring import code, md, solution, test

CELLS = []
add = CELLS.append

# ---------------------------------------------------------------------------------------------- 4. inductor
add(md(r"""
## 4. Reading Inductor's output: the fusion of notebook 08, generated

In notebook 08 you wrote RMSNorm as one Triton kernel because eager PyTorch runs it as a chain of
kernels, each reading its input from memory and writing its output back. For rows of $n$ elements
of $b$ bytes, a fused kernel moves $2nb$ bytes per row (read $x$, write $y$) plus the weight once.
Inductor finds the same fusion by itself: the reduction (`mean` of $x^2$) and the pointwise chain
around it (`rsqrt`, two multiplies, the casts) become **one kernel** — on a GPU a Triton reduction
kernel (`triton_per_fused_…`, a "persistent" reduction, when a whole row fits one program as in
yours; `triton_red_fused_…` when the program loops over a long row), on a CPU a C++ loop nest
(`cpp_fused_…`) parallel over rows, with a vectorised inner loop.

`TORCH_LOGS=output_code` prints the generated module; `torch._inductor.utils.run_and_get_code`
returns it as a string, which `effilab.compiling.kernels_in` splits into kernels. The kernel's
name lists the ops it fused.
""", "md_inductor"))

add(code(r"""
def rms_norm_eager(x, weight, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


R, C, dt = (16384, 4096, torch.bfloat16) if GPU else (2048, 1024, torch.float32)
xr = torch.randn(R, C, device=DEV, dtype=dt)
wr = torch.randn(C, device=DEV, dtype=dt)
_, eager_ops = count_bytes(rms_norm_eager, xr, wr)

rms_compiled = torch.compile(rms_norm_eager)
t0 = time.perf_counter()
out, modules = inductor_code(rms_compiled, xr, wr)        # compiles now: this is the compile time
rms_compile_s = time.perf_counter() - t0
kernels = [k for m in modules for k in kernels_in(m)]
print(f"eager: {len(eager_ops)} aten kernels moving {format_bytes(sum(o.total for o in eager_ops))}")
print(f"Inductor: {len(kernels)} kernel(s), compiled in {rms_compile_s:.1f} s: {[k.name for k in kernels]}")
print("max |compiled - eager|:", (out.float() - rms_norm_eager(xr, wr).float()).abs().max().item())
src = kernels[0].source
print(f"\n--- {kernels[0].name} ({kernels[0].language}), first 45 lines ---")
print("\n".join(src.splitlines()[:45]))
""", "demo_inductor"))

add(code(r"""
cmp = bench.compare({"eager (5+ kernels)": lambda: rms_norm_eager(xr, wr),
                     "torch.compile (1 kernel)": lambda: rms_compiled(xr, wr)}, max_time_s=1.0 if GPU else 0.2)
print(cmp.table())
fused_bytes = 2 * xr.numel() * xr.element_size() + wr.numel() * wr.element_size()
gbs = {n: fused_bytes / (t.median_ms * 1e-3) / 1e9 for n, t in cmp.timings.items()}
bench.bar_plot(gbs, ylabel="GB/s (bytes of one fused pass)", title=f"RMSNorm {R}×{C} {str(dt)[6:]} on {DEV.type}")
plt.show()
eager_ms, comp_ms = (cmp.timings[n].median_ms for n in cmp.timings)
calls = break_even_steps(rms_compile_s, eager_ms, comp_ms)
print(f"compiling took {rms_compile_s:.1f} s and saves {eager_ms - comp_ms:.3f} ms per call: it pays after "
      f"{calls:,.0f} calls" if math.isfinite(calls) else "the compiled version is not faster here")
""", "demo_inductor_timing"))

add(md(r"""
On an H100 the nb08 benchmarks measured this exactly: for a 16384×4096 bf16 RMSNorm forward the
hand-written Triton kernel took 0.094 ms, `torch.compile` of the eager formula 0.095 ms (both ~95 %
of copy bandwidth), eager `F.rms_norm` 0.118 ms (the course's operator benchmarks). For a
pointwise-plus-reduction chain, Inductor is as good as a careful hand kernel. Where it is not —
the online softmax over a 128k vocabulary, flash attention, a kernel with its own tiling — you
keep your kernel and make it visible to the compiler.

## 5. Your Triton kernel as a custom operator

Dynamo traces *Python*. A function that launches a Triton kernel is Python that computes grid
sizes, reads `data_ptr()`s and calls a launcher — on a GPU Dynamo can often trace even that
(it has special support for `@triton.jit` kernels), but on a CPU, where Triton's interpreter runs
the kernel *as Python*, Dynamo runs into the interpreter's own code, which it refuses to trace: a
graph break, so `fullgraph=True` fails. The notebook-08 LayerNorm, an `autograd.Function` around
two Triton launches:
""", "md_custom_op"))

add(code(r"""
from effilab.ops import layer_norm as nb08_layer_norm      # the worked example of notebook 08

xs = torch.randn(8, 64, device=DEV)
ws, bs = torch.ones(64, device=DEV), torch.zeros(64, device=DEV)
try:
    with dynamo_logs():
        torch.compile(lambda t: nb08_layer_norm(t, ws, bs) * 2, fullgraph=True, backend="eager")(xs)
    print("fullgraph=True compiled it: Dynamo traced the launcher and the @triton.jit kernel (a GPU)")
except Exception as e:
    print("fullgraph=True fails:", type(e).__name__, "—", str(e).strip().splitlines()[0][:200])
""", "demo_custom_op_problem"))

add(md(r"""
The robust way is to make the kernel an **operator** that the compiler treats like `aten.mm`:
it calls it, it never looks inside. `torch.library` needs three things from you:

1. **the operator**: `@torch.library.custom_op("namespace::name", mutates_args=())` on a function
   with type annotations (the schema is inferred from them: `Tensor`, `float`, `int`, tuples of
   tensors as outputs). Inside, you run your kernel on real tensors. An operator must be
   *functional*: it returns new tensors and declares in `mutates_args` any input it writes.
2. **a fake kernel**: `@op.register_fake` — given `FakeTensor`s, return empty tensors with the
   shapes, dtypes and strides the real kernel would produce. Dynamo and AOTAutograd trace with fake
   tensors; without it they cannot know the output's shape.
3. **a derivative**: `op.register_autograd(backward, setup_context=setup_context)`.
   `setup_context(ctx, inputs, output)` saves what the backward needs; `backward(ctx, *grads)`
   returns one gradient per input (None for non-tensors). For the backward to compile too, it
   should itself call operators (a second custom op for your backward kernel).

`torch.library.opcheck(op, args)` then tests the registration: the schema (does the kernel write
an input it did not declare?), the fake kernel against the real one, the autograd registration and
AOTAutograd's tracing. On a GPU there is a second way, `torch.library.triton_op` with
`torch.library.wrap_triton(kernel)[grid](…)` inside: the operator stays an operator for
`torch.export`, but Inductor sees the Triton kernel itself and schedules it in its own generated
code. It needs a real GPU (the interpreter cannot trace fake tensors), so the exercise uses
`custom_op`, which works everywhere.

A forward-only example: Gemma 2's logit **soft-capping** $y = c\tanh(x/c)$ as a Triton kernel,
registered with a fake kernel, checked with `opcheck`, compiled with `fullgraph=True`:
""", "md_custom_op_api"))

add(code(r"""
@triton.jit
def softcap_kernel(x_ptr, y_ptr, n, cap, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    z = tl.load(x_ptr + offs, mask=inside).to(tl.float32) / cap
    y = cap * (2.0 * tl.sigmoid(2.0 * z) - 1.0)                  # c · tanh(x / c)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inside)


ns = fresh_namespace("nb09_demo")          # a new namespace each run: an operator is defined only once


@torch.library.custom_op(f"{ns}::softcap", mutates_args=())
def softcap(x: Tensor, cap: float) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    softcap_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), cap, BLOCK=1024)
    return y


@softcap.register_fake
def _(x, cap):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


xs = torch.randn(4, 333, device=DEV) * 50
print("softcap max |error|:", (softcap(xs, 30.0) - 30.0 * torch.tanh(xs / 30.0)).abs().max().item())
with dynamo_logs():
    print("opcheck:", torch.library.opcheck(softcap, (xs, 30.0), test_utils=("test_schema", "test_faketensor")))
counter = CountingBackend("eager")
g = torch.compile(lambda t: softcap(t * 2, 30.0) + 1, fullgraph=True, backend=counter)
g(xs)
print("Dynamo's graph calls the operator:", counter.graphs[0].ops)

if GPU:   # the triton_op variant: Inductor puts the user kernel into its own generated code
    @torch.library.triton_op(f"{ns}::softcap_t", mutates_args=())
    def softcap_t(x: Tensor, cap: float) -> Tensor:
        y = torch.empty_like(x)
        torch.library.wrap_triton(softcap_kernel)[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), cap, BLOCK=1024)
        return y

    gt = torch.compile(lambda t: softcap_t(t * 2, 30.0) + 1, fullgraph=True)
    _, mods = inductor_code(gt, xs)
    print("Inductor's kernels with triton_op:", [k.name for m in mods for k in kernels_in(m)])
""", "demo_softcap_op"))

add(md(r"""
### Exercise 3 — `make_layer_norm_op`: notebook 08's LayerNorm kernels as an operator with autograd (4 points)

`effilab.ops.layernorm` has the two launchers of notebook 08's worked LayerNorm:

* `layer_norm_forward(x, weight, bias, eps) -> (y2d, x2d, mean, rstd)`: `y2d` and `x2d` are
  `(rows, n)` (rows = all leading dimensions), `mean` and `rstd` float32 of shape `(rows,)`;
* `layer_norm_backward(dy, x2d, weight, mean, rstd) -> (dx2d, dweight, dbias)`.

Write `make_layer_norm_op(namespace)` that registers them as custom operators in `namespace`
(`f"{namespace}::layer_norm_fwd"`, …; the checker passes a fresh namespace each time, so defining
the operators *inside* the function is what lets it run more than once) and returns
`layer_norm(x, weight, bias, eps=1e-5) -> y` (x's shape and dtype). Required:

* forward and backward equal `F.layer_norm`'s (fp32 and fp16, 2-D and 3-D `x`);
* `torch.library.opcheck`'s schema and fake-tensor tests pass for every operator you register;
* `torch.compile(block, fullgraph=True)` of `x + gelu(layer_norm(x)) @ Wᵀ` compiles to **one
  graph that calls your operator**, and its forward and backward are correct.

`F.layer_norm` (and `nn.LayerNorm`, which calls it) are off limits: the work is done by the Triton kernels.
""", "md_ex3"))

add(solution(r"""
def make_layer_norm_op(namespace):
    '''Register notebook 08's LayerNorm Triton kernels as custom operators with autograd.

    Args:
        namespace: the torch.library namespace to define the operators in (a fresh one per call).
    Returns:
        layer_norm(x, weight, bias, eps=1e-5) -> Tensor, calling the registered operator.
    '''
    ### BEGIN SOLUTION
    @torch.library.custom_op(f"{namespace}::layer_norm_fwd", mutates_args=())
    def layer_norm_fwd(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        y2d, _, mean, rstd = layer_norm_forward(x, weight, bias, eps)
        return y2d.view(x.shape), mean, rstd

    @layer_norm_fwd.register_fake
    def _(x, weight, bias, eps):
        rows = x.numel() // x.shape[-1]
        stats = x.new_empty(rows, dtype=torch.float32)
        return x.new_empty(x.shape), stats, torch.empty_like(stats)

    @torch.library.custom_op(f"{namespace}::layer_norm_bwd", mutates_args=())
    def layer_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                       rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dx2d, dweight, dbias = layer_norm_backward(dy, x.reshape(-1, x.shape[-1]), weight, mean, rstd)
        return dx2d.view(x.shape), dweight, dbias

    @layer_norm_bwd.register_fake
    def _(dy, x, weight, mean, rstd):
        return x.new_empty(x.shape), torch.empty_like(weight), torch.empty_like(weight)

    def setup_context(ctx, inputs, output):
        x, weight, _bias, _eps = inputs
        _y, mean, rstd = output
        ctx.save_for_backward(x, weight, mean, rstd)

    def backward(ctx, dy, _dmean, _drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_bwd(dy.contiguous(), x, weight, mean, rstd)
        return dx, dweight, dbias, None

    layer_norm_fwd.register_autograd(backward, setup_context=setup_context)

    def layer_norm(x, weight, bias, eps=1e-5):
        return layer_norm_fwd(x, weight, bias, eps)[0]

    return layer_norm
    ### END SOLUTION
""", "make_layer_norm_op_solution"))

add(test(r"""
# Check exercise 3 (graded; the last line is your points).
result = check("make_layer_norm_op", make_layer_norm_op)
result.points
""", "make_layer_norm_op_check", points=4))

add(code(r"""
# Your operator inside a compiled block: what each stage sees.
try:
    ln = make_layer_norm_op(fresh_namespace("nb09"))
    xb = torch.randn(16, 96, device=DEV, requires_grad=True)
    wb = torch.ones(96, device=DEV, requires_grad=True)
    bb = torch.zeros(96, device=DEV, requires_grad=True)
    counter = CountingBackend("aot_eager")
    block = torch.compile(lambda t: t + F.gelu(ln(t, wb, bb)), fullgraph=True, backend=counter)
    block(xb).sum().backward()
    mine = lambda ops: [o for o in ops if o.startswith("nb09_")]
    print("Dynamo's graph:", counter.graphs[0].ops)
    print("forward graph calls:", mine(counter.forward[0].ops), "| backward graph calls:", mine(counter.backward[0].ops))
except NotImplementedError:
    print("Finish exercise 3 to see your operator inside the compiled graphs.")
except Exception as e:  # a half-finished operator: the check above says what is missing
    print(f"Your operator does not compile yet ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}).")
    print("The check of exercise 3 above names the missing piece (fake kernel, schema, autograd formula).")
""", "demo_layer_norm_op"))

# ---------------------------------------------------------------------------------------------- 6. modes
add(md(r"""
## 6. Modes, compile time, and when compiling pays

`torch.compile(model, mode=…)`:

* **default** — Inductor's fusion and code generation, cuBLAS for matmuls;
* **`reduce-overhead`** — the same kernels replayed through **CUDA graphs**: the whole sequence of
  launches is recorded once and replayed with one launch, which removes the CPU's per-kernel launch
  cost (a few µs each). It pays when the GPU waits for the CPU — small batches, inference, many
  tiny kernels — and needs static shapes and a private memory pool (inputs are copied into it);
* **`max-autotune`** — also benchmarks Triton templates for every matmul and convolution and keeps
  the fastest, and uses CUDA graphs; **`max-autotune-no-cudagraphs`** — the autotuning alone.
  Compiling takes minutes.

A compile is paid once, a step time every step. With compile time $T_c$ and step times
$t_{\text{eager}}$ and $t_{\text{compiled}}$, compiling pays after

$$ N^* = \frac{T_c}{t_{\text{eager}} - t_{\text{compiled}}} \ \text{steps}. $$

Measured on an H200 for the course GPT `gpu-real` (12 × 768, context 1024, bf16, batch 16 × 1024,
fused AdamW): eager 30.6 ms per step; default 24.6 ms (1.24×) after 24.5 s of compiling —
$N^* \approx 4{,}100$ steps, about two minutes of training; `max-autotune-no-cudagraphs` 24.7 ms
after 347 s — $N^* \approx 59{,}000$ steps, and no faster (its matmul autotuning even hit the H200's
shared-memory limits on some candidates). For a run of 100k steps both pay; for a 2,000-step
experiment neither does.
""", "md_modes"))

add(code(r"""
fig = plot_compile_tradeoff(H200_TRAIN_STEP, title="gpu-real training step on an H200 (measured 2026-12-01)",
                            max_steps=80_000)
plt.show()
for m in H200_TRAIN_STEP[1:]:
    n = break_even_steps(m.compile_s, H200_TRAIN_STEP[0].step_ms, m.step_ms)
    print(f"{m.name:28} {m.step_ms:5.1f} ms/step after {m.compile_s:5.1f} s of compiling: pays after {n:8,.0f} steps")
""", "demo_tradeoff"))

add(md(r"""
**Regional compilation.** A transformer is the same block $L$ times. Compiling the whole model
traces and optimises all $L$ copies; compiling the **block** (`block.compile()` for each block, or
`torch.compile(block)`) gives one graph that every block reuses: the parameters are graph inputs
(Dynamo treats the modules of `torch.nn` as code to inline, not as constants), so the guards of the
second block's call pass and nothing compiles again. Compile time stops growing with depth
(`gpu-real` on an H200: 3 s instead of 25 s). The price is paid at run time: nothing fuses across
block boundaries, and the host enters and leaves a compiled region twice per block and step (guards,
AOTAutograd's wrappers, an autograd node). For the 12-block training step that left the GPU idle
4.0 ms a step against 1.3 ms for the whole model, so regional compilation ran 1.09× eager where the
whole model ran 1.21×: it pays when compile time matters
(many short runs, big models), and when each region holds enough GPU work to hide the host's.
Below, the time Dynamo alone takes to capture a GPT forward, whole or per block, for growing depth
(the cheapest stage: AOTAutograd and Inductor's code generation grow with the graph the same way
and multiply these seconds; the course's GPU benchmarks measure the full compile of `gpu-real`
both ways):
""", "md_regional"))

add(code(r"""
def capture_seconds(n_layer, regional):
    torch._dynamo.reset()
    model = GPT(GPTConfig(block_size=64, n_layer=n_layer, n_head=4, n_embd=64), seed=0).to(DEV)
    counter = CountingBackend("eager")
    if regional:
        for blk in model.blocks:
            blk.compile(backend=counter)       # in place; the same code, the same graph for every block
        run = model
    else:
        run = torch.compile(model, backend=counter)
    idx = torch.randint(0, 256, (2, 64), device=DEV)
    with torch.no_grad():
        seconds, _ = first_call_seconds(run, idx)
    return seconds, counter.compiles


depths = [1, 4]
times = {"whole model": [], "regional (blocks)": []}
for L in depths:
    for name in times:
        s, graphs = capture_seconds(L, regional=name != "whole model")
        times[name].append(s)
        print(f"{L} blocks, {name:18}: {s:5.2f} s, {graphs} graph(s)")
torch._dynamo.reset()
fig, ax = plt.subplots(figsize=(5, 3))
for name, ts in times.items():
    ax.plot(depths, ts, "o-", label=name)
ax.set_xlabel("blocks")
ax.set_ylabel("first-call time (s)")
ax.set_title("graph capture: whole model vs regional")
ax.legend()
plt.show()
""", "demo_regional"))

add(code(r"""
# On a GPU: eager, default and regional compilation of a training step, measured here.
def eager_step(model, optimizer, batch):
    idx, targets = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(idx.device.type, dtype=torch.bfloat16):
        loss = model(idx, targets)[1]
    loss.backward()
    optimizer.step()
    return loss.detach()


if GPU:
    cfg = GPTConfig.preset("gpu-real", n_layer=2)
    tokens = torch.randint(0, 256, (4, cfg.block_size + 1), device=DEV)
    batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    rows = []
    for name in ["eager", "torch.compile (default)", "regional (blocks)"]:
        torch._dynamo.reset()
        model = GPT(cfg, seed=0).to(DEV)
        opt = make_optimizer(model)
        if name == "regional (blocks)":
            for blk in model.blocks:
                blk.compile()
        run = torch.compile(model) if name.startswith("torch.compile") else model
        with dynamo_logs():
            first, _ = first_call_seconds(lambda: eager_step(run, opt, batch), device="cuda")
            ms = bench.time_fn(lambda: eager_step(run, opt, batch), max_time_s=1.0).median_ms
        rows.append(ModeResult(name, 0.0 if name == "eager" else first, ms))
        print(f"{name:26} first step {first:6.1f} s, then {ms:6.2f} ms/step")
    plot_compile_tradeoff(rows, title=f"2-block gpu-real, batch 4×1024, on {torch.cuda.get_device_name()}")
    plt.show()
else:
    print("On a CPU a compiled training step takes minutes to build; the H200 measurements above stand in.")
""", "demo_modes_gpu"))

add(md(r"""
### Exercise 4 — `make_compiled_step`: a compiled training step, faster than eager (1.5 points correctness + 2 points speed)

Write `make_compiled_step(model, optimizer, backend="inductor")` that compiles what it needs (with
`backend=backend`) and returns `step(batch) -> loss` for batches `(idx, targets)`. Each step is
the eager step above, compiled: `zero_grad(set_to_none=True)`, the forward under
`torch.autocast(device_type, dtype=torch.bfloat16)` with the loss of `GPT.forward` (the mean
cross-entropy, computed in fp32), `loss.backward()`, `optimizer.step()`, return `loss.detach()`.

* **Correctness (any machine):** on a small GPT the losses of three steps and the parameters after
  them equal the eager step's, and every block's four matmuls and the backward run inside compiled
  graphs (the checker passes a counting `aot_eager` backend).
* **Speed (graded on a GPU):** on `gpu-real`, batch 16 × 1024, your step must be at least
  **1.15×** faster than the eager step (`STEP_SPEED_THRESHOLD` in the spec). Measured on an
  H200 (2026-12-02, measured by the course staff): `torch.compile(model)` 1.21× after 25 s of
  compiling; regional compilation of the blocks 1.09× (3 s of compiling) with a 16 % spread
  between steps — the GPU ran the same kernels (24.0 ms against 23.8 ms) but sat idle 4 ms a step
  waiting for the host, which enters and leaves 24 compiled regions (12 forward, 12 backward) per
  step. No host syncs in the step (`.item()`, `float(loss)`, printing).

Note that `torch.compile(module)` returns a *new* module and leaves `module` as it was, while
`module.compile()` compiles it in place.
""", "md_ex4"))

add(solution(r"""
def make_compiled_step(model, optimizer, backend="inductor"):
    '''A compiled bf16 training step for the course GPT.

    Args:
        model: an effilab GPT (its blocks in model.blocks), on the device it trains on.
        optimizer: the optimizer over model's parameters (AdamW).
        backend: the torch.compile backend for every region you compile.
    Returns:
        step(batch) -> loss: one training step on batch = (idx, targets); loss detached, 0-dim.
    '''
    ### BEGIN SOLUTION
    # The whole model as one graph: the blocks, the final LayerNorm, the head and the fp32
    # cross-entropy fuse; AOTAutograd compiles the backward of that graph too. The parameters stay
    # the model's own (torch.compile wraps the module, it does not copy it).
    compiled = torch.compile(model, backend=backend)

    def step(batch):
        idx, targets = batch
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(idx.device.type, dtype=torch.bfloat16):
            loss = compiled(idx, targets)[1]      # (logits, loss): the mean loss, computed in fp32
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
    ### END SOLUTION
""", "make_compiled_step_solution"))

add(test(r"""
# Check exercise 4, correctness (graded; the last line is your points).
result = check("make_compiled_step", make_compiled_step)
result.points
""", "make_compiled_step_check", points=1.5))

add(test(r"""
# Check exercise 4, speed (graded on a CUDA GPU; on a CPU it awards nothing and says so).
result = check("make_compiled_step", make_compiled_step, "speed")
result.points
""", "make_compiled_step_speed", points=2))

# ---------------------------------------------------------------------------------------------- summary
add(md(r"""
## Summary

* `torch.compile` = **TorchDynamo** (bytecode → FX graph + guards) → **AOTAutograd** (aten graphs,
  the backward derived ahead of time, a min-cut split of what to save) → **Inductor** (fusion and
  code generation: Triton on a GPU, C++ on a CPU).
* **Graph breaks** come from values sent to Python (`.item()`), Python branches on data,
  data-dependent shapes and untraceable calls. Find them with `torch._dynamo.explain`,
  `TORCH_LOGS=graph_breaks` and `fullgraph=True`; remove them with tensor-valued code
  (`torch.where`, masks instead of boolean indexing).
* **Guards** decide when a graph can be reused. Shapes recompile once per changing dimension under
  automatic dynamic shapes; `dynamic=True` / `mark_dynamic` compile symbolically from the start;
  past the recompile limit a frame silently runs eagerly.
* Inductor fuses reductions with the pointwise work around them — the RMSNorm of notebook 08 comes
  out as one kernel at the speed of the hand-written one.
* A Triton kernel joins a compiled graph as a **custom operator**: the op, a fake kernel, an
  autograd formula (itself an operator), checked with `torch.library.opcheck`.
* Compile time is paid once: $N^* = T_c / (t_{\text{eager}} - t_{\text{compiled}})$ steps.
  **Regional compilation** keeps $T_c$ independent of depth; `max-autotune` rarely pays for a
  training run; `reduce-overhead` (CUDA graphs) pays when the CPU is the bottleneck.

This is the last notebook of the learning path: from number formats to a compiled, fused, mixed-
precision training step.
""", "summary"))
