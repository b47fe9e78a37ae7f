"""Cells of notebook 10 — distributed training (solutions/build/10_distributed.py assembles them).

Plain data: markdown and code sources with their grade ids. The numbers the markdown quotes come
from the spec modules, effilab/grading/specs/nb10.py and nb10_zero.py (named beside each).
"""
from grader.authoring import code, md, solution, test

from effilab.grading.specs import nb10 as S

CELLS = []
add = CELLS.append

add(md(r"""
# 10 — Distributed training: DDP, ZeRO and FSDP from scratch on gloo

One GPU holds one copy of the model and sees one batch at a time. To train on N of them you must
decide **what each rank holds** (the whole model, or 1/N of its state) and **what they exchange**
(gradients, parameters, activations). This notebook builds the common answers from the collective
operations up, on several CPU processes that talk through **gloo** — the same code runs on GPUs over
NCCL, only faster:

1. **all-reduce** and what it costs: a ring moves 2(N−1)/N of the tensor's bytes per rank, whatever N;
2. **data parallelism** (DDP): gradients averaged over the ranks in *buckets*, each reduced while the
   backward pass still runs (exercise 1: DDP from scratch with gradient hooks);
3. **ZeRO**: the optimizer state, the gradients and the parameters sharded 1/N per rank — the memory per
   rank of each stage against N (exercise 2: a ZeRO-1 AdamW);
4. **gradient accumulation with `no_sync`**: one reduction per optimizer step (exercise 3);
5. **FSDP2** (`torch.distributed.fsdp.fully_shard`), the library's ZeRO-3;
6. **tensor and pipeline parallelism**, on paper and in a small demo.

Ideas and papers: Li et al., *PyTorch Distributed: Experiences on Accelerating Data Parallel Training*
(VLDB 2020); Rajbhandari et al., *ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models* (SC 2020); Zhao et al., *PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel*
(VLDB 2023); Shoeybi et al., *Megatron-LM* (2019); Huang et al., *GPipe* (NeurIPS 2019).

**How ranks start here.** `effilab.dist.launch(world_size, fn, *args)` forks `world_size` copies of
this kernel, joins them in a gloo process group (a `FileStore` in a temporary folder: no port to
choose), runs `fn(rank, world_size, *args)` in each and returns their return values — tensors,
numbers, lists, dicts — in rank order. A rank that raises, dies or hangs (a collective that another
rank never joins) is reported as a `RankError`, and hung ranks are killed after `timeout_s`.
Everything here is measured on a CPU over gloo, with tiny models; the GPU numbers over NCCL belong to
the two-GPU notebook run and are not quoted here.

**How grading works.** Each exercise has a solution cell and a check cell. The checker runs your
function on 2 ranks (a few cases on 3 and 4) and compares what the ranks return with the real
library: `DistributedDataParallel` and `torch.optim.AdamW` run on the same data.
""", "intro"))

add(code(r"""
# Setup. `import effilab` comes first (it configures Triton for a CPU).
import math
import time

import effilab
import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from effilab.dist import RankError, launch
from effilab.grading import check

torch.set_num_threads(1)  # several ranks share this machine's cores


def tiny_mlp(dims, seed=0):
    # Linear layers of widths `dims` with tanh between them; the same seed gives every rank the same weights
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.Tanh()] if i < len(dims) - 2 else [])
    return torch.nn.Sequential(*layers)
""", "setup_imports", locked=True))

# ---------------------------------------------------------------------------------------------- 1 all-reduce
add(md(r"""
## 1. All-reduce, and what it costs

`dist.all_reduce(t)` replaces `t` on every rank by the sum over the ranks. The cheapest way to do
it with large tensors is a **ring**: cut the tensor into N chunks; in N−1 steps each rank sends one
chunk to its right neighbour and adds the chunk arriving from its left (*reduce-scatter*: rank r now
holds the full sum of chunk r+1), then in N−1 more steps the summed chunks travel around the ring
(*all-gather*). Every rank sends 2(N−1) chunks of size S/N: **2(N−1)/N · S bytes** — almost 2S
whatever the number of ranks, so the time of an all-reduce hardly grows with N when the links are
the bottleneck. Below, a ring all-reduce written with point-to-point `isend` / `irecv`, checked
against `dist.all_reduce` on 3 ranks.
""", "allreduce_md"))

add(code(r"""
def ring_all_reduce(t):
    # Sum `t` over the ranks in place, with 2(N-1) neighbour exchanges of N-th chunks
    rank, world = dist.get_rank(), dist.get_world_size()
    chunks = list(t.view(-1).tensor_split(world))
    right, left = (rank + 1) % world, (rank - 1) % world
    for phase in ("reduce-scatter", "all-gather"):
        for step in range(world - 1):
            send_i = (rank - step + (1 if phase == "all-gather" else 0)) % world
            recv_i = (send_i - 1) % world
            incoming = torch.empty_like(chunks[recv_i])
            reqs = [dist.isend(chunks[send_i].clone(), right), dist.irecv(incoming, left)]
            for r in reqs:
                r.wait()
            if phase == "reduce-scatter":
                chunks[recv_i] += incoming
            else:
                chunks[recv_i].copy_(incoming)
    return t


def ring_demo(rank, world):
    torch.manual_seed(rank)
    x = torch.randn(1001)  # not a multiple of the world size
    ours, ref = ring_all_reduce(x.clone()), x.clone()
    dist.all_reduce(ref)
    return float((ours - ref).abs().max())


print("ring vs dist.all_reduce, max difference per rank:", launch(3, ring_demo))
""", "demo_ring"))

add(code(r"""
def time_all_reduce(rank, world, sizes, repeats=5):
    # Median seconds of dist.all_reduce for tensors of `sizes` fp32 elements
    out = []
    for n in sizes:
        t = torch.ones(n)
        dist.all_reduce(t)  # warm-up
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out.append(sorted(times)[len(times) // 2])
    return out


sizes = [2 ** k for k in range(8, 21, 2)]
secs = launch(2, time_all_reduce, sizes)[0]
busbw = [2 * (2 - 1) / 2 * 4 * n / s / 1e9 for n, s in zip(sizes, secs)]  # the ring's bytes per rank / time

fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
ax[0].loglog([4 * n for n in sizes], [1e6 * s for s in secs], "o-")
ax[0].set(xlabel="tensor bytes", ylabel="µs per all-reduce", title="gloo, 2 ranks on this CPU")
ax[1].plot(range(2, 65), [2 * (n - 1) / n for n in range(2, 65)])
ax[1].set(xlabel="ranks N", ylabel="bytes sent per rank / tensor bytes", title="ring all-reduce: 2(N−1)/N")
plt.tight_layout()
plt.show()
print("bus bandwidth (GB/s) at each size:", [f"{b:.2f}" for b in busbw])
""", "demo_allreduce_cost"))

add(md(r"""
Small tensors are dominated by the fixed cost of a collective (latency: here tens of µs through the
loopback; a few µs over NVLink), large ones by bandwidth. That is why DDP does not reduce each
parameter's gradient on its own but groups them into **buckets** of ~25 MB.

## 2. Data parallelism and DDP from scratch

Every rank holds the whole model and computes the gradient of its share of the batch; averaging
the gradients over the ranks gives every rank the gradient of the whole batch, so all ranks take the
same step and stay equal. The naive version — backward, then one all-reduce per parameter — leaves
the network idle during backward and the processor idle during communication. DDP (Li et al. 2020)
does better:

* it **buckets** parameters in (roughly) the reverse order of their use: the order backward produces
  their gradients;
* a hook fires as each gradient is accumulated; when every gradient of a bucket is ready, the
  bucket's all-reduce starts **asynchronously**, while backward computes the earlier layers;
* at the end of backward, it waits for the outstanding reductions and writes the averaged
  gradients back.

### Exercise 1 — `bucketed_ddp(model, bucket_numel)`

Register a hook on every parameter with `p.register_post_accumulate_grad_hook(hook)` (the hook gets
the parameter, its `.grad` final for this backward). Gradients join the open bucket **in the order
they arrive**; as soon as the bucket holds ≥ `bucket_numel` elements, flatten its gradients
(`torch.cat` of `p.grad.reshape(-1)`), start `dist.all_reduce(flat, async_op=True)` and open a new
bucket. Return a function `finish()` that the training loop calls after `loss.backward()`: it
reduces the last, partial bucket, `wait()`s for every reduction, divides by the world size and copies
each bucket back into its parameters' `.grad`. Call `dist.all_reduce` as `dist.all_reduce` (the
checker records the calls). The check compares the parameters after 3 SGD steps with
`DistributedDataParallel`'s (rtol 1e-5, atol 1e-6), the sizes of your all-reduces with the bucket
rule, and the order of events: the first bucket must be reduced before the last gradient exists.
<!-- RTOL, ATOL, STEPS: effilab/grading/specs/nb10.py -->
""", "ddp_md"))

add(solution(r"""
def bucketed_ddp(model, bucket_numel):
    # model: a torch.nn.Module, the same weights on every rank (called inside a launched rank)
    # bucket_numel: a bucket is reduced as soon as it holds at least this many gradient elements
    # returns: finish(), to call after loss.backward(): averaged gradients in every p.grad
    ### BEGIN SOLUTION
    world = dist.get_world_size()
    state = {"bucket": [], "numel": 0, "pending": []}

    def reduce_bucket():
        params = state["bucket"]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        work = dist.all_reduce(flat, async_op=True)
        state["pending"].append((work, flat, params))
        state["bucket"], state["numel"] = [], 0

    def on_grad_ready(param):
        state["bucket"].append(param)
        state["numel"] += param.numel()
        if state["numel"] >= bucket_numel:
            reduce_bucket()

    for param in model.parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(on_grad_ready)

    def finish():
        if state["bucket"]:
            reduce_bucket()
        for work, flat, params in state["pending"]:
            work.wait()
            flat /= world
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        state["pending"] = []

    return finish
    ### END SOLUTION
""", "bucketed_ddp_solution"))

add(test(r"""
result = check("bucketed_ddp", bucketed_ddp)
result.points
""", "bucketed_ddp_check", points=S.BucketedDDP.points["correctness"]))

add(code(r"""
def ddp_timeline(rank, world, bucket_numel):
    # One backward with your hooks: the order in which gradients arrive and buckets are reduced
    model = tiny_mlp((16, 32, 32, 8))
    events, real = [], dist.all_reduce

    def recording(t, *a, **k):
        events.append(f"all-reduce {t.numel()}")
        return real(t, *a, **k)

    dist.all_reduce = recording
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: events.append(f"grad {name}"))
    finish = bucketed_ddp(model, bucket_numel)
    torch.manual_seed(rank)
    F.mse_loss(model(torch.randn(4, 16)), torch.randn(4, 8)).backward()
    events.append("---- backward returned")
    finish()
    return events


try:
    for e in launch(2, ddp_timeline, 600)[0]:
        print(e)
except RankError as err:  # bucketed_ddp not written yet
    print("fill in bucketed_ddp above to see its timeline:", err)
""", "demo_ddp_timeline"))

add(code(r"""
def time_buckets(rank, world, n_tensors, numel, bucket_sizes, repeats=5):
    # Median seconds to all-reduce n_tensors gradients of `numel` elements, in buckets of each size
    grads = [torch.randn(numel) for _ in range(n_tensors)]
    out = []
    for per_bucket in bucket_sizes:
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            works = []
            for i in range(0, n_tensors, per_bucket):
                flat = torch.cat(grads[i:i + per_bucket])
                works.append(dist.all_reduce(flat, async_op=True))
            for w in works:
                w.wait()
            times.append(time.perf_counter() - t0)
        out.append(sorted(times)[len(times) // 2])
    return out


per_bucket = [1, 4, 16, 64, 256]
secs = launch(2, time_buckets, 256, 1000, per_bucket)[0]
plt.figure(figsize=(5, 3.2))
plt.semilogx([1000 * 4 * b for b in per_bucket], [1e3 * s for s in secs], "o-")
plt.xlabel("bucket bytes"), plt.ylabel("ms to reduce 256 gradients of 4 kB")
plt.title("gloo, 2 ranks: fewer, larger reductions")
plt.show()
""", "demo_bucket_sizes"))

add(md(r"""
The last layer's gradients arrive first; its bucket is on the wire while backward goes on through the
first layers. On a GPU this overlap hides most of the communication (NCCL runs on its own stream); on
gloo over the loopback both compete for the same cores, so the overlap shows in the order of events
rather than in the time.
""", "ddp_after_md"))
