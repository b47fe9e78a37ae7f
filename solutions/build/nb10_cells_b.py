"""Cells of notebook 10, part 2: ZeRO (exercise 2), no_sync (exercise 3), FSDP2, tensor and
pipeline parallelism (solutions/build/10_distributed.py assembles them)."""
from grader.authoring import code, md, solution, test

from effilab.grading.specs import nb10_zero as Z

CELLS = []
add = CELLS.append

add(md(r"""
## 3. ZeRO: shard what every rank keeps

With mixed-precision Adam a model of Ψ parameters keeps 2Ψ bytes of bf16 weights, 2Ψ of bf16
gradients and K·Ψ = 12Ψ of optimizer state (fp32 master weights, m and v): **16Ψ bytes on every
rank**, however many ranks. Rajbhandari et al. (2020) observed that data parallelism keeps N copies
of all of it, and partition it instead:

* **stage 1** (P_os): each rank keeps the optimizer state of 1/N of the parameters, updates that
  shard, and the ranks all-gather the new parameters: 4Ψ + 12Ψ/N;
* **stage 2** (P_os+g): the gradients too — reduce-*scatter* instead of all-reduce: 2Ψ + 14Ψ/N;
* **stage 3** (P_os+g+p): the parameters too, all-gathered layer by layer just before they are used,
  in forward and again in backward: 16Ψ/N.

Stages 1 and 2 communicate as much as DDP (a reduce-scatter plus an all-gather *is* an all-reduce);
stage 3 adds one all-gather of the parameters per pass (1.5× DDP's bytes).
""", "zero_md"))

add(code(r"""
def zero_bytes_per_rank(psi, n, stage, k=12):
    # Bytes per rank for Psi parameters with mixed-precision Adam (2 + 2 + K bytes per parameter)
    params, grads, states = 2 * psi, 2 * psi, k * psi
    if stage >= 1:
        states /= n
    if stage >= 2:
        grads /= n
    if stage >= 3:
        params /= n
    return params + grads + states


psi, ns = 7.5e9, [1, 2, 4, 8, 16, 32, 64]
fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharey=True)
for stage, ax in enumerate(axes):
    ax.plot(ns, [zero_bytes_per_rank(psi, n, stage) / 2 ** 30 for n in ns], "o-")
    ax.set(xscale="log", yscale="log", xlabel="ranks N", title=["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"][stage])
axes[0].set_ylabel("GiB per rank, 7.5 B parameters")
plt.tight_layout()
plt.show()
print({f"stage {s}": f"{zero_bytes_per_rank(psi, 64, s) / 2 ** 30:.1f} GiB at N=64" for s in range(4)})
""", "demo_zero_plot"))

add(md(r"""
### Exercise 2 — `ZeroAdamW(params, lr, betas, eps, weight_decay)`: ZeRO stage 1

A class with a `step()` method, built on every rank with the same parameters (their `.grad`s are
already averaged over the ranks, as after DDP's all-reduce). Flatten the parameters into one vector of
P elements; rank r owns the elements [r·⌈P/N⌉, min((r+1)·⌈P/N⌉, P)) — the last shard is shorter
when N does not divide P. Keep `exp_avg` and `exp_avg_sq` **only for your shard**, as attributes of
the object. `step()` applies AdamW (decoupled weight decay, bias corrections — the formulas of
`torch.optim.AdamW`) to your shard of the flat parameters, then the ranks `dist.all_gather` the
updated shards (padded to ⌈P/N⌉ each, since all_gather wants equal sizes) and every rank copies the
whole vector back into its parameters. The check compares the parameters of every rank after 3 steps
with unsharded `torch.optim.AdamW` (rtol 1e-5, atol 1e-6), on 2, 3 and 4 ranks, and counts the bytes
of the tensors your optimizer keeps between steps (the parameters and gradients left out): at most
(1/N + 0.02) of AdamW's 8 bytes per parameter.
<!-- RTOL, ATOL: effilab/grading/specs/nb10.py; STATE_SLACK = 0.02 -->
""", "zero_ex_md"))

add(solution(r"""
class ZeroAdamW:
    # params: list of tensors (the same on every rank), their .grad averaged over the ranks before step()
    # lr, betas, eps, weight_decay: AdamW's hyper-parameters (as torch.optim.AdamW)
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        ### BEGIN SOLUTION
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        total = sum(p.numel() for p in self.params)
        self.chunk = -(-total // self.world)  # ceil(P / N)
        self.lo = min(self.rank * self.chunk, total)
        self.hi = min(self.lo + self.chunk, total)
        self.exp_avg = torch.zeros(self.hi - self.lo)
        self.exp_avg_sq = torch.zeros(self.hi - self.lo)
        self.t = 0
        ### END SOLUTION

    @torch.no_grad()
    def step(self):
        ### BEGIN SOLUTION
        self.t += 1
        b1, b2 = self.betas
        flat = torch.cat([p.reshape(-1) for p in self.params])
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        p, g = flat[self.lo:self.hi], grad[self.lo:self.hi]
        p.mul_(1 - self.lr * self.weight_decay)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        p.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1 ** self.t))
        mine = torch.zeros(self.chunk)
        mine[:self.hi - self.lo] = p
        shards = [torch.empty(self.chunk) for _ in range(self.world)]
        dist.all_gather(shards, mine)
        full = torch.cat(shards)
        offset = 0
        for q in self.params:
            q.copy_(full[offset:offset + q.numel()].view_as(q))
            offset += q.numel()
        ### END SOLUTION
""", "zero_adamw_solution"))

add(test(r"""
result = check("ZeroAdamW", ZeroAdamW)
result.points
""", "zero_adamw_check", points=Z.ZeroAdamW.points["correctness"]))

add(code(r"""
def zero_state(rank, world, shapes):
    # Bytes of AdamW state kept by this rank: yours (sharded) and torch.optim.AdamW's (every parameter)
    torch.manual_seed(0)
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    ours = ZeroAdamW(params, lr=1e-3)
    ours.step()
    full = torch.optim.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-3)
    for q, p in zip(full.param_groups[0]["params"], params):
        q.grad = p.grad.clone()
    full.step()
    mine = ours.exp_avg.nbytes + ours.exp_avg_sq.nbytes
    theirs = sum(s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes for s in full.state.values())
    return mine, theirs


shapes = [(300, 77), (77,), (77, 41)]
ranks = [1, 2, 3, 4]
try:
    per_rank = [launch(n, zero_state, shapes)[0] for n in ranks]
except RankError as err:  # ZeroAdamW not written yet
    per_rank = None
    print("fill in ZeroAdamW above to measure its state:", err)
if per_rank:
    plt.figure(figsize=(5, 3.2))
    plt.plot(ranks, [m / 1024 for m, _ in per_rank], "o-", label="ZeroAdamW (rank 0)")
    plt.plot(ranks, [t / 1024 for _, t in per_rank], "s--", label="torch.optim.AdamW")
    plt.xlabel("ranks N"), plt.ylabel("optimizer state per rank (KiB)"), plt.legend()
    plt.title("measured: 1/N of the state per rank")
    plt.show()
""", "demo_zero_measured"))

add(md(r"""
## 4. Gradient accumulation with `no_sync`

Notebook 04 accumulated gradients over micro-batches to emulate a large batch. Under DDP every
backward triggers the bucket reductions, so k micro-batches would communicate k times for one
optimizer step. `ddp_model.no_sync()` is a context manager that turns the reductions off: the
gradients accumulate locally, and the backward of the **last** micro-batch, outside `no_sync`,
reduces the sum once. The result is the large-batch step with one reduction.

### Exercise 3 — `accumulate_no_sync(ddp_model, micro_batches, optimizer)`

`ddp_model` is a real `DistributedDataParallel` model, `micro_batches` this rank's list of k
`(x, y)` pairs of equal size, and the loss of a micro-batch is `F.mse_loss(ddp_model(x), y)`.
Accumulate the gradients of all k micro-batches so that they equal the gradient of the mean loss
over the whole batch (scale each loss by 1/k), with `no_sync()` on every micro-batch but the last,
then call `optimizer.step()` (the gradients were zeroed before the call). The check compares the
parameters after 3 such steps with DDP's large-batch step (the same data in one forward and
backward) and counts DDP's bucket reductions: the same number as the large-batch step.
""", "nosync_md"))

add(solution(r"""
def accumulate_no_sync(ddp_model, micro_batches, optimizer):
    # ddp_model: a torch.nn.parallel.DistributedDataParallel model (inside a launched rank)
    # micro_batches: this rank's list of k (x, y) pairs of equal size; loss = F.mse_loss(ddp_model(x), y)
    # optimizer: steps the model's parameters; call optimizer.step() once, after the last micro-batch
    ### BEGIN SOLUTION
    k = len(micro_batches)
    for i, (x, y) in enumerate(micro_batches):
        if i < k - 1:
            with ddp_model.no_sync():
                (F.mse_loss(ddp_model(x), y) / k).backward()
        else:
            (F.mse_loss(ddp_model(x), y) / k).backward()
    optimizer.step()
    ### END SOLUTION
""", "accumulate_no_sync_solution"))

add(test(r"""
result = check("accumulate_no_sync", accumulate_no_sync)
result.points
""", "accumulate_no_sync_check", points=Z.AccumulateNoSync.points["correctness"]))

add(md(r"""
## 5. FSDP2: ZeRO-3 in the library

`torch.distributed.fsdp.fully_shard(module, mesh=...)` (Zhao et al. 2023; the second version, FSDP2,
shards each parameter as a `DTensor`) turns a module into ZeRO-3: each parameter is stored as a 1/N
shard (dimension 0 split over the ranks); before a sharded module's forward the shards are
all-gathered, after it the full parameters are freed, and in backward the gradients are
reduce-scattered. Apply it to each layer (each becomes a unit that is gathered and freed on its own),
then to the root. Below, two ranks: each stores a shard of every weight, and one SGD step leaves the
full parameters equal on both ranks.
""", "fsdp_md"))

add(code(r"""
def fsdp_demo(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    model = tiny_mlp((7, 13, 5))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    stored = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1 + rank)
    F.mse_loss(model(torch.randn(4, 7)), torch.randn(4, 5)).backward()
    opt.step()
    return {"stored": stored, "weight[0]": model[0].weight.full_tensor()[0, :4]}


for rank, out in enumerate(launch(2, fsdp_demo)):
    print(f"rank {rank} stores {out['stored']}; after the step weight[0] starts {out['weight[0]']}")
""", "demo_fsdp"))

add(md(r"""
## 6. Tensor and pipeline parallelism

Data parallelism and ZeRO split the *batch*; a layer too large or too slow for one device must be
split itself.

**Tensor parallelism** (Megatron-LM, Shoeybi et al. 2019) splits the matrices of a layer. In an MLP
`W2·gelu(W1·x)`, cut W1 by columns (each rank computes half of the hidden units, no communication)
and W2 by rows (each rank multiplies its half): the two partial outputs add up — one all-reduce per
MLP in forward, one in backward. It needs fast links (inside one NVLink node).

**Pipeline parallelism** (GPipe, Huang et al. 2019) gives each rank a contiguous stage of layers and
streams m micro-batches through the p stages; at the start and at the end of each step stages wait
for each other — the *bubble*, a fraction (p−1)/(m+p−1) of the time. 1F1B schedules keep the
activations of fewer micro-batches alive; the bubble stays.

Below, on 2 ranks: the tensor-parallel MLP equals the whole one, and a 2-stage pipeline forward
(activations sent with `dist.send` / `dist.recv`, micro-batch by micro-batch) equals the whole model.
""", "tp_pp_md"))

add(code(r"""
def tensor_parallel_mlp(rank, world):
    # Column-parallel W1, row-parallel W2: the sum of the ranks' partial outputs is the full MLP's output
    torch.manual_seed(0)
    w1, w2, x = torch.randn(24, 10), torch.randn(6, 24), torch.randn(3, 10)
    full = F.gelu(x @ w1.T) @ w2.T
    cols = w1.tensor_split(world, dim=0)[rank]   # this rank's hidden units
    rows = w2.tensor_split(world, dim=1)[rank]
    partial = F.gelu(x @ cols.T) @ rows.T
    dist.all_reduce(partial)
    return float((partial - full).abs().max())


print("tensor-parallel MLP vs the full MLP, max difference:", launch(2, tensor_parallel_mlp))


def pipeline_forward(rank, world, n_micro=4):
    # Two stages: rank 0 runs the first layer on each micro-batch and sends its activations to rank 1,
    # which runs the second layer; while rank 1 works on micro-batch i, rank 0 computes i + 1
    model = tiny_mlp((10, 16, 3))
    stage = model[:2] if rank == 0 else model[2:]
    torch.manual_seed(1)
    x = torch.randn(8, 10)
    outs = []
    with torch.no_grad():
        for mb in x.chunk(n_micro):
            if rank == 0:
                dist.send(stage(mb), dst=1)
            else:
                h = torch.empty(mb.shape[0], 16)
                dist.recv(h, src=0)
                outs.append(stage(h))
        return float((torch.cat(outs) - model(x)).abs().max()) if rank == 1 else None


print("2-stage pipeline vs the whole model, max difference:", launch(2, pipeline_forward)[1])

ms = list(range(1, 33))
plt.figure(figsize=(5, 3.2))
for p in (2, 4, 8):
    plt.plot(ms, [(p - 1) / (m + p - 1) for m in ms], label=f"{p} stages")
plt.xlabel("micro-batches m"), plt.ylabel("bubble fraction (p−1)/(m+p−1)"), plt.legend()
plt.title("pipeline bubble (GPipe schedule)")
plt.show()
""", "demo_tp_pp"))

add(md(r"""
## Summary

| method | each rank holds | communication per step |
|---|---|---|
| DDP | the whole model, its gradients and optimizer state | one all-reduce of the gradients, overlapped with backward |
| ZeRO-1 / -2 | 1/N of the optimizer state (and of the gradients) | reduce-scatter + all-gather: as DDP |
| ZeRO-3 / FSDP | 1/N of everything | + an all-gather of the parameters per pass (≈1.5× DDP) |
| tensor parallel | 1/N of each layer's matrices | all-reduces of activations in every layer |
| pipeline | a contiguous 1/N of the layers | activations between neighbouring stages; a bubble |

On GPUs, NCCL over NVLink replaces gloo over the loopback and the overlap of communication with
backward shows in the time; those measurements are made on a machine with two GPUs.
""", "summary"))
