"""Exercises 2 and 3 of notebook 10: a ZeRO-1 sharded AdamW, and gradient accumulation with
``no_sync`` in a real DistributedDataParallel model (see nb10.py for the common machinery).

ZeRO: Rajbhandari, Rasley, Ruwase & He, *ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models*, SC 2020 (stage 1: optimizer state partitioned over the data-parallel ranks).
"""
from __future__ import annotations

import types

import torch

from ..core import Case, Exercise, Group, case_seeds, register
from .nb10 import (LR, STATE_SLACK, STEPS, batch, cached, compare_params, launch_case, mlp, on_cpu,
                   reference_launch, shard, shared_run, student_call)

NOTEBOOK = "10_distributed"
HYPER = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}


# ----------------------------------------------------------------------------------------------
# 2. ZeRO-1 AdamW
# ----------------------------------------------------------------------------------------------
def state_bytes(root, exclude: list[torch.Tensor], max_depth: int = 8) -> int:
    """Bytes of the tensors reachable from ``root`` (attributes, dicts, lists, tuples), each storage
    counted once, leaving out the storages of ``exclude`` (the parameters and their gradients)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if t is not None}
    seen_obj, seen_storage, total = set(), set(skip), 0
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        if id(obj) in seen_obj or depth > max_depth:
            continue
        seen_obj.add(id(obj))
        if isinstance(obj, torch.Tensor):
            st = obj.untyped_storage()
            if st.data_ptr() not in seen_storage:
                seen_storage.add(st.data_ptr())
                total += st.nbytes()
            continue
        if isinstance(obj, dict):
            items = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        elif isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType, str, bytes)):
            continue
        elif hasattr(obj, "__dict__"):
            items = list(vars(obj).values())
        else:
            continue
        stack += [(o, depth + 1) for o in items]
    return total


def _zero_rank(rank, world, fn, init, grads):
    params = [p.clone().requires_grad_(True) for p in init]
    opt = student_call(fn, params, **HYPER)
    if not callable(getattr(opt, "step", None)):
        raise TypeError(f"ZeroAdamW(...) gave {type(opt).__name__} without a step() method")
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        student_call(opt.step)
    kept = state_bytes(opt, [t for p in params for t in (p, p.grad)])
    return {"params": [p.detach() for p in params], "state_bytes": kept}


def adamw_reference(init, grads) -> list[torch.Tensor]:
    """Unsharded torch.optim.AdamW, STEPS steps, in the grader's process."""
    params = [p.clone().requires_grad_(True) for p in init]
    opt = torch.optim.AdamW(params, **HYPER)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def _zero_inputs(seed: int, shapes):
    g = torch.Generator().manual_seed(int(seed) % (2 ** 31) + 7)
    init = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) * (0.1 + i) for s in shapes] for i in range(STEPS)]
    return init, grads


@register
class ZeroAdamW(Exercise):
    single_thread = True
    name = "ZeroAdamW"
    notebook = NOTEBOOK
    title = "ZeRO-1: AdamW with its state sharded over the ranks"
    points = {"correctness": 3.0}
    signature = ("ZeroAdamW(params: list[Tensor], lr: float, betas: tuple, eps: float, weight_decay: float); "
                 ".step() -> None")

    ONE = [(101,), (7, 13), (255,), (3, 3, 3), (1,)]
    MANY = [[(13, 7), (7,), (1, 5)], [(33,), (2, 9), (4, 4, 3)], [(11, 11), (11,)], [(5,), (19, 3), (1,), (8, 2)],
            [(27, 5), (5,)]]
    WORLDS = [3, 4, 3, 4, 3]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)

        def make(what, world, shapes, s):
            n = sum(torch.Size(sh).numel() for sh in shapes)
            init, grads = _zero_inputs(s, shapes)
            return Case(f"{world} ranks, parameters {shapes} ({n} elements), seed {s}", (init, grads),
                        meta={"world": world, "what": what, "n": n, "s": s})

        return [
            Group("one parameter whose size is not a multiple of the world size (2 ranks)",
                  [make("params", 2, [sh], s) for s, sh in zip(seeds, self.ONE)],
                  "flatten the parameters, give rank r the elements [r·⌈P/N⌉, (r+1)·⌈P/N⌉) (the last shard is "
                  "shorter), update that slice with AdamW and all-gather the slices into every rank's parameters"),
            Group("several parameters of odd shapes (2 ranks)",
                  [make("params", 2, sh, s) for s, sh in zip(seeds, self.MANY)],
                  "after the update, every rank needs every parameter: all-gather (or broadcast from each owner) "
                  "the updated shards and copy them back into the parameters"),
            Group("3 and 4 ranks",
                  [make("params", w, sh, s) for s, sh, w in zip(seeds, self.MANY, self.WORLDS)],
                  "pad the flat vector to N·⌈P/N⌉ so that every rank's shard has the same size for all_gather"),
            Group(f"each rank keeps at most 1/N + {STATE_SLACK} of AdamW's state (2 ranks)",
                  [make("state", 2, sh, s) for s, sh in zip(seeds, self.MANY)],
                  "keep exp_avg and exp_avg_sq only for this rank's shard (⌈P/N⌉ elements each), not for every "
                  "parameter; keep no full copy of the parameters between steps"),
        ]

    def run(self, fn, case):
        m = case.meta
        out = shared_run(fn, (self.name, m["world"], m["n"], m["s"], case.label), lambda: launch_case(
            self.name, m["world"], _zero_rank, fn, *on_cpu(case.args)))
        return out if not isinstance(out, list) else {"ranks": out}

    def judge(self, out, case, expected=None):
        m = case.meta
        ranks = out["ranks"]
        if m["what"] == "params":
            init, grads = case.args
            return compare_params([r["params"] for r in ranks], adamw_reference(init, grads),
                                  f"after {STEPS} AdamW steps")
        full = 8 * m["n"]  # exp_avg and exp_avg_sq in fp32
        limit = (1 / m["world"] + STATE_SLACK) * full
        for rank, r in enumerate(ranks):
            kept = r["state_bytes"]
            if kept > limit:
                return (f"rank {rank} keeps {kept} bytes of tensors between steps; unsharded AdamW keeps {full}, "
                        f"a ZeRO-1 rank at most {limit:.0f} (1/{m['world']} + {STATE_SLACK})")
            if kept < 0.9 * full / m["world"]:
                return (f"rank {rank}: only {kept} bytes of state found on the optimizer (at least "
                        f"{0.9 * full / m['world']:.0f} expected): keep exp_avg and exp_avg_sq as its attributes")
        return None


# ----------------------------------------------------------------------------------------------
# 3. Gradient accumulation with no_sync
# ----------------------------------------------------------------------------------------------
NOSYNC_DIMS = [(7, 13, 5), (9, 11, 10, 3), (5, 17, 1), (12, 7, 7, 4), (3, 19, 6)]
ROWS = 12  # rows per rank and step: 1, 2, 3 or 4 equal micro-batches
BUCKET_MB = 48 * 4 / 2 ** 20  # buckets of 48 fp32 elements: 2–5 buckets for these widths


def _ddp(model):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(model, bucket_cap_mb=BUCKET_MB)
    counts: list[int] = [0]

    def counting(state, bucket):  # DDP's own averaging all-reduce, counted
        counts[-1] += 1
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting)
    return ddp, counts


def _nosync_rank(rank, world, fn, dims, seed, k, x, y):
    model = mlp(dims, seed)
    ddp, counts = _ddp(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        counts[-1:] = [0]
        xs, ys = shard(x[step], rank, world), shard(y[step], rank, world)
        micro = list(zip(xs.chunk(k), ys.chunk(k)))
        opt.zero_grad(set_to_none=True)
        student_call(fn, ddp, micro, opt)
        counts.append(0)
    return {"params": [p.detach() for p in model.parameters()], "reductions": counts[:-1]}


def _large_batch_rank(rank, world, dims, seed, x, y):
    model = mlp(dims, seed)
    ddp, counts = _ddp(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        counts[-1:] = [0]
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(ddp(shard(x[step], rank, world)), shard(y[step], rank, world)).backward()
        opt.step()
        counts.append(0)
    return {"params": [p.detach() for p in model.parameters()], "reductions": counts[:-1]}


@register
class AccumulateNoSync(Exercise):
    single_thread = True
    name = "accumulate_no_sync"
    notebook = NOTEBOOK
    title = "Gradient accumulation in DDP with no_sync: the large-batch step with one reduction"
    points = {"correctness": 2.0}
    signature = "accumulate_no_sync(ddp_model: DistributedDataParallel, micro_batches: list[(x, y)], optimizer) -> None"

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)

        def make(what, k, dims, s):
            # ROWS rows per rank whatever k: the large-batch reference of a seed serves every group
            xs, ys = zip(*(batch(s + 17 * i, 2 * ROWS, dims) for i in range(STEPS)))
            return Case(f"widths {dims}, {k} micro-batches of {ROWS // k} rows per rank, seed {s}",
                        (torch.stack(xs), torch.stack(ys)), meta={"what": what, "k": k, "dims": dims, "s": s})

        ks = [2, 3, 4, 2, 3]
        return [
            Group("k micro-batches: parameters equal the large-batch DDP step (2 ranks)",
                  [make("params", k, d, s) for s, k, d in zip(seeds, ks, NOSYNC_DIMS)],
                  "no_sync() on the first k−1 micro-batches, the last one synced; scale each micro-batch's loss "
                  "by 1/k so that the sum of the gradients is the large batch's mean"),
            Group("one reduction per step: no_sync on every micro-batch but the last",
                  [make("count", k, d, s) for s, k, d in zip(seeds, ks, NOSYNC_DIMS)],
                  "inside ddp_model.no_sync(), forward and backward of micro-batches 0…k−2; the last micro-batch's "
                  "backward, outside no_sync, all-reduces the accumulated gradients once"),
            Group("a single micro-batch (k = 1)",
                  [make("params", 1, d, s) for s, d in zip(seeds, NOSYNC_DIMS)],
                  "with one micro-batch nothing is accumulated: a plain DDP step, not under no_sync"),
        ]

    def run(self, fn, case):
        m = case.meta
        out = shared_run(fn, (self.name, m["dims"], m["s"], m["k"]), lambda: launch_case(
            self.name, 2, _nosync_rank, fn, m["dims"], m["s"], m["k"], *on_cpu(case.args)))
        return out if not isinstance(out, list) else {"ranks": out}

    def judge(self, out, case, expected=None):
        m = case.meta
        x, y = case.args
        want = cached(("large batch", m["dims"], m["s"]),
                      lambda: reference_launch(2, _large_batch_rank, m["dims"], m["s"], x, y)[0])
        ranks = out["ranks"]
        if m["what"] == "params":
            return compare_params([r["params"] for r in ranks], want["params"], f"after {STEPS} accumulated steps")
        for rank, r in enumerate(ranks):
            if r["reductions"] != want["reductions"]:
                return (f"rank {rank}: DDP reduced {r['reductions']} buckets in the {STEPS} steps, the large-batch "
                        f"step {want['reductions']}: gradients must be synchronised only on the last micro-batch")
        return None
