"""Exercise specs of notebook 10 — distributed training on gloo ranks (CPU).

Every case runs the student's code on 2 (a few on 3–4) gloo ranks started by the course's
launcher, :func:`effilab.dist.launch`, from ``run`` (in the grading sandbox: the ranks are forked
copies of the sandboxed worker, audit hook armed). Each rank returns what it observed as plain
data; the judge compares it with the real library run in the grader's process — never in the
sandbox: :class:`torch.nn.parallel.DistributedDataParallel` on the same ranks' data, or
:class:`torch.optim.AdamW` on the unsharded parameters.

1. ``bucketed_ddp(model, bucket_numel) -> finish``: data parallelism from scratch (Li et al., *PyTorch
   Distributed*, VLDB 2020): post-accumulate-grad hooks fill buckets in the order backward produces
   the gradients, each full bucket is all-reduced at once (``async_op=True``) while backward goes on,
   ``finish()`` reduces the last bucket, waits, and writes the averages back.
2. ``ZeroAdamW(params, lr, betas, eps, weight_decay)``: ZeRO stage 1 (Rajbhandari et al., *ZeRO:
   Memory Optimizations Toward Training Trillion Parameter Models*, SC 2020): each rank keeps AdamW's
   state for 1/N of the flattened parameters, updates that shard and all-gathers the result.
3. ``accumulate_no_sync(ddp_model, micro_batches, optimizer)``: gradient accumulation in a real DDP
   model, ``no_sync()`` on every micro-batch but the last: the large-batch step, one reduction.
"""
from __future__ import annotations

import math

import torch

from ..calls import Problem, describe_exception, to_device
from ..compare import compare_tensors
from ..core import Case, Exercise, Group, case_seeds, register

NOTEBOOK = "10_distributed"
STEPS = 3  # optimizer steps per case
LR = 0.1
RANK_TIMEOUT_S = 30.0  # per launch; a hung rank is killed then (a case takes < 1 s on 2 CPU cores)
# Calibration (CPU, torch 2.13, 2026-12-02; 120 parameter cases: the public suite and 3 hidden secrets):
# the reference solutions equal DistributedDataParallel and torch.optim.AdamW bit for bit after 3 steps,
# and the no_sync accumulation differs from DDP's large-batch step by at most 6.0e-8 (absolute, 17× below
# ATOL: the micro-batches sum the same products in another order). The classic mistakes of
# grader/examples/10_distributed/bugs.json are off by more than 1e-3 and cost their groups.
RTOL, ATOL = 1e-5, 1e-6
STATE_SLACK = 0.02  # ZeRO-1: state bytes per rank <= (1/N + STATE_SLACK) of unsharded AdamW's 8 bytes/param
_HUNG: set[str] = set()  # exercises whose ranks hung in this process: their later cases are not run


# ----------------------------------------------------------------------------------------------
# Models, data and the launch of one case
# ----------------------------------------------------------------------------------------------
def mlp(dims: tuple[int, ...], seed: int) -> torch.nn.Sequential:
    """Linear layers of widths ``dims`` with tanh between them; the same weights on every rank."""
    g = torch.Generator().manual_seed(int(seed) % (2 ** 31))
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) / math.sqrt(a))
            lin.bias.copy_(0.1 * torch.randn(b, generator=g))
        layers += [lin] + ([torch.nn.Tanh()] if i < len(dims) - 2 else [])
    return torch.nn.Sequential(*layers)


def batch(seed: int, n: int, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(int(seed) % (2 ** 31) + 1)
    return torch.randn(n, dims[0], generator=g), torch.randn(n, dims[-1], generator=g)


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's equal share of a batch (rows rank·B/N … (rank+1)·B/N)."""
    b = t.shape[0] // world
    return t[rank * b:(rank + 1) * b]


def sgd_step(params, lr: float = LR) -> None:
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad


def launch_case(ex: str, world: int, fn, *args):
    """The ranks' values, or a Problem: a rank that raised, died or hung (then later cases of the
    exercise are not run in this process, so that one deadlock costs one exercise, not the time
    limit of the whole notebook)."""
    from ...dist import RankError, launch

    if ex in _HUNG:
        return Problem("not run: an earlier case of this exercise hung", "make every rank call the same "
                       "collectives in the same order")
    try:
        return launch(world, fn, *args, timeout_s=RANK_TIMEOUT_S)
    except RankError as exc:
        if exc.reason == "timeout":
            _HUNG.add(ex)
            return Problem(str(exc), "every rank must call the same collectives, with tensors of the same "
                                     "size, in the same order; wait() on every async work")
        kind, _, text = exc.text.partition(": ")
        if kind.endswith(StudentError.__name__):  # the student's code raised: its message, the same on every rank
            msg, _, hint = text.partition(StudentError.SEP)
            return Problem(msg, hint)
        return Problem(str(exc)[:1500], "")


class StudentError(Exception):
    """The student's code raised in a rank: the message and the hint, as the rank's error text."""

    SEP = "\n-- hint: "


def on_cpu(args):
    """The case's tensors on the CPU, moved in the worker before the ranks fork: gloo reduces CPU
    tensors, and a rank forked from a process that initialised CUDA must not touch it."""
    return to_device(args, torch.device("cpu"))


def student_call(fn, *args, **kwargs):
    """Call the student's code in a rank; an exception becomes the rank's error (every rank stops)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        msg, hint = describe_exception(exc)
        raise StudentError(msg + StudentError.SEP + hint) from None


def compare_params(out_ranks, want: list[torch.Tensor], what: str) -> str | None:
    for rank, got in enumerate(out_ranks):
        for i, (g, w) in enumerate(zip(got, want)):
            problem = compare_tensors(g, w, rtol=RTOL, atol=ATOL, name=f"rank {rank}: parameter {i} {what}",
                                      max_show=3)
            if problem:
                return problem
    return None


_REFERENCES: dict[str, object] = {}


def _plain_key(key: tuple) -> str:
    """A cache key with every seed as its value: a hidden seed prints as ``#i`` whatever the secret,
    so its repr cannot tell two courses' cases apart."""
    return repr(tuple(int(k) if isinstance(k, int) else k for k in key))
_RUNS: dict[str, tuple] = {}


def shared_run(fn, key: tuple, compute):
    """The ranks' output for ``fn`` on these inputs, run once: groups that judge different properties
    of the same run (parameters, bucket sizes, event order) share it instead of launching it again."""
    k = _plain_key(key)
    hit = _RUNS.get(k)
    if hit is not None and hit[0] is fn:
        return hit[1]
    out = compute()
    if len(_RUNS) > 64:
        _RUNS.clear()
    _RUNS[k] = (fn, out)
    return out


def cached(key: tuple, compute):
    """The reference of a case, computed once per grader process (cases are fixed by their seeds)."""
    k = _plain_key(key)
    if k not in _REFERENCES:
        if len(_REFERENCES) > 512:
            _REFERENCES.clear()
        _REFERENCES[k] = compute()
    return _REFERENCES[k]


def reference_launch(world: int, fn, *args):
    """A launch of the real library's ranks, in the grader's process."""
    out = launch_case("reference", world, fn, *args)
    if isinstance(out, Problem):
        raise RuntimeError(f"the reference run failed: {out.message}")
    return out


# ----------------------------------------------------------------------------------------------
# 1. DDP from scratch: buckets reduced by hooks while backward runs
# ----------------------------------------------------------------------------------------------
def _ddp_rank(rank, world, fn, dims, seed, bucket, x, y):
    import torch.distributed as dist

    model = mlp(dims, seed)
    params = list(model.parameters())
    events: list[list] = []
    real = dist.all_reduce

    def recording(tensor, *a, **k):
        events.append(["reduce", int(tensor.numel())])
        return real(tensor, *a, **k)

    dist.all_reduce = recording  # only in this forked rank
    for i, p in enumerate(params):  # registered first: a gradient is recorded before the student's hook runs
        p.register_post_accumulate_grad_hook(lambda p, i=i: events.append(["grad", i, int(p.numel())]))
    finish = student_call(fn, model, bucket)
    if not callable(finish):
        raise TypeError(f"bucketed_ddp returned {type(finish).__name__}; return the function finish()")
    xs, ys = shard(x, rank, world), shard(y, rank, world)
    for step in range(STEPS):
        events.append(["step", step])
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        events.append(["backward_end"])
        student_call(finish)
        events.append(["finish_end"])
        sgd_step(params)
    return {"params": [p.detach() for p in params], "events": events}


def _ddp_reference_rank(rank, world, dims, seed, bucket, x, y):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = mlp(dims, seed)
    ddp = DDP(model, bucket_cap_mb=bucket * 4 / 2 ** 20)
    xs, ys = shard(x, rank, world), shard(y, rank, world)
    for _ in range(STEPS):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(ddp(xs), ys).backward()
        sgd_step(model.parameters())
    return [p.detach() for p in model.parameters()]




def expected_buckets(step_events: list[list], bucket: int) -> list[int]:
    """The sizes of the all-reduces of one step under the rule: gradients join the open bucket in the
    order they arrive; a bucket is reduced as soon as it holds ≥ ``bucket`` elements; the last,
    partial one in ``finish()``."""
    sizes, open_ = [], 0
    for e in step_events:
        if e[0] == "grad":
            open_ += e[2]
            if open_ >= bucket:
                sizes.append(open_)
                open_ = 0
    return sizes + ([open_] if open_ else [])


def split_steps(events: list[list]) -> list[list[list]]:
    steps: list[list[list]] = []
    for e in events:
        if e[0] == "step":
            steps.append([])
        elif steps:
            steps[-1].append(e)
    return steps


@register
class BucketedDDP(Exercise):
    single_thread = True
    name = "bucketed_ddp"
    notebook = NOTEBOOK
    title = "Data parallelism from scratch: bucketed all-reduce overlapped with backward by hooks"
    points = {"correctness": 3.0}
    signature = "bucketed_ddp(model: nn.Module, bucket_numel: int) -> finish: () -> None"

    LAYOUTS = [((7, 13, 5), 50), ((9, 11, 10, 3), 64), ((5, 17, 1), 30), ((12, 7, 7, 4), 45), ((3, 19, 6), 40)]

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        hints = {
            "params": "average, not sum: divide each reduced bucket by dist.get_world_size() before writing "
                      "it back into the .grad of its parameters",
            "buckets": "one dist.all_reduce per bucket: flatten the bucket's gradients (torch.cat of "
                       "p.grad.reshape(-1)) and reduce that; close a bucket as soon as it holds ≥ bucket_numel "
                       "elements; reduce the last, partial bucket in finish()",
            "overlap": "start each full bucket's reduction inside the hook (p.register_post_accumulate_grad_hook) "
                       "with async_op=True, while backward is still running; only wait() in finish()",
        }
        names = {"params": "parameters equal DistributedDataParallel's after 3 SGD steps (2 ranks, odd sizes)",
                 "buckets": "one all-reduce per bucket, in the order backward produces the gradients",
                 "overlap": "overlap: the first bucket is reduced before backward ends"}
        groups = []
        for what in ("params", "buckets", "overlap"):
            cases = []
            for s, (dims, bucket) in zip(seeds, self.LAYOUTS):
                x, y = batch(s, 8, dims)
                n = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
                cases.append(Case(f"widths {dims} ({n} parameters), buckets of {bucket}, seed {s}", (x, y),
                                  meta={"dims": dims, "bucket": bucket, "s": s, "world": 2, "what": what}))
            groups.append(Group(names[what], cases, hints[what]))
        return groups

    def run(self, fn, case):
        m = case.meta
        out = shared_run(fn, (self.name, m["world"], m["dims"], m["s"], m["bucket"]), lambda: launch_case(
            self.name, m["world"], _ddp_rank, fn, m["dims"], m["s"], m["bucket"], *on_cpu(case.args)))
        return out if isinstance(out, Problem) else {"ranks": out}

    def judge(self, out, case, expected=None):
        m = case.meta
        ranks = out["ranks"]
        if m["what"] == "params":
            x, y = case.args
            want = cached(("ddp", m["world"], m["dims"], m["s"], m["bucket"]), lambda: reference_launch(
                m["world"], _ddp_reference_rank, m["dims"], m["s"], m["bucket"], x, y)[0])
            return compare_params([r["params"] for r in ranks], want, "after 3 steps")
        for step, events in enumerate(split_steps(ranks[0]["events"])):
            reduced = [e[1] for e in events if e[0] == "reduce"]
            if m["what"] == "buckets":
                want = expected_buckets(events, m["bucket"])
                if reduced != want:
                    return (f"step {step}: all-reduce sizes {reduced[:12]}, expected one per bucket {want} "
                            f"(buckets of ≥ {m['bucket']} elements in gradient order)")
            else:
                kinds = [e[0] for e in events]
                end = kinds.index("backward_end") if "backward_end" in kinds else len(kinds)
                last_grad = max((i for i, k in enumerate(kinds) if k == "grad"), default=-1)
                first = kinds.index("reduce") if "reduce" in kinds else None
                if first is None:
                    return f"step {step}: no dist.all_reduce was called"
                if first > last_grad or first > end:
                    return (f"step {step}: the first all-reduce started after the last gradient was produced "
                            "(no overlap with backward)")
        return None


from .nb10_zero import AccumulateNoSync, ZeroAdamW  # noqa: E402,F401  (exercises 2 and 3)
