"""Speed and memory parts: declared once per exercise, measured where the code runs, decided in core.

A spec returns a :class:`SpeedPart` from ``speed_part(key)`` or a :class:`MemoryPart` from
``memory_part(key)``. The same declaration serves the self-check (everything in the notebook's
process) and the grader, which splits it three ways:

* **the student's side** (the sandbox): :func:`measure_speed` / :func:`measure_memory` run the
  student's code on the part's input — first once, and that output is returned for judging, then
  timed or metered — and return plain data: times, bytes, the kernels launched, the outputs;
* **the baseline** (:func:`baseline_speed` / :func:`baseline_memory`): timed or metered by the
  grader's own process, where student code never ran, so nothing the student patches reaches it;
* **the decision** (:func:`decide_speed` / :func:`decide_memory`): in the grader's process — the
  outputs judged against the grader's own expected values (speed and memory count only for
  correct answers, and skipping work while measured costs correctness), then ratio or budget.

Timing: each timed call first changes one element of the input to a value drawn from the input
itself, at positions drawn from a random ``nonce``; the output of the *last* timed call is judged
against the input as it was then (the grader replays the same changes on its own copy), so a
result cached on the input's identity, or replayed from an earlier call, fails. A fresh input is
judged after timing. Medians of CUDA-event times with an L2 flush (:mod:`effilab.bench`).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .calls import Problem, call_student
from .core import NOT_ON_CPU, Case, Exercise, Verdict, expect_case, judge_case, run_case

__all__ = ["SpeedPart", "MemoryPart", "measure_speed", "measure_memory", "baseline_speed", "baseline_memory",
           "decide_speed", "decide_memory", "self_check", "replay_mutations"]

# Device-wide wall time may exceed max(timed stream's median, the host's own time per call) by this factor
# (launch gaps). The host term matters for kernels of a few µs: a Triton launch from Python costs more host
# time than the kernel runs (H200, 2026-12-02: the W4A16 decode kernel ran 15 µs on its stream, 59 µs of
# wall per call: the host's time to launch it from Python, which the wall loop waits for), so wall time alone
# would fail every honest µs kernel.
WALL_SLACK = 1.5
_perf_counter = time.perf_counter  # captured before any student code runs
POOL = 997  # mutation positions and values cycle through this many draws


@dataclass
class SpeedPart:
    """A speed part: ``baseline_ms / yours_ms ≥ threshold`` on the same input earns the points."""

    inputs: Callable[[], Any]  # the timed input (deterministic: built alike by the sandbox and the grader)
    baseline: Callable | None  # the same signature as the student's function (None: ``call`` builds it)
    threshold: float
    baseline_name: str = "baseline"
    gate: Case | None = None  # judged before timing; None: the timed input itself, judged as a case
    gate_label: str = "the timed input"
    meta: dict = field(default_factory=dict)  # the meta of the timed input's case
    fresh: Callable[[], tuple] | None = None  # a fresh input judged after timing
    bytes_moved: int | None = None
    flops: float | Callable[[tuple], float] | None = None  # a callable gets the timed input
    own_kernels: bool = False  # the timed call must run the student's own Triton kernels
    mutate: bool = True  # change one element of inputs[0] before each timed call
    advice: str = ""
    cpu_note: str = ""  # what the part asks of a GPU, said on a CPU
    context: Callable[[], Any] | None = None  # a context manager factory around each timed phase
    # The part of the timed input's outputs that crosses to the grader and is judged, for outputs too
    # large to send and judge whole: view(inputs, pick) -> (the inputs of that part, the index of the
    # output to keep). ``pick`` is drawn at random *after* the student's call has returned, so the
    # student's code cannot know which part will be judged. Default: all of it.
    view: Callable[[tuple, int], tuple[tuple, Any]] | None = None
    # How a timed call is made from (fn, inputs), fn None meaning the baseline; default fn(*inputs).
    call: Callable[[Callable | None, Any], Callable[[], Any]] | None = None
    explain: Callable[[float], str] | None = None  # one more line about the measured ratio
    extra: dict = field(default_factory=dict)  # kept in the verdict's details
    # Thresholds for GPU classes (effilab.device.gpu_class) where the ratio the reference reaches differs
    # from the calibration GPU's: each value measured there and cited beside it. Other classes get `threshold`.
    per_gpu: dict[str, float] = field(default_factory=dict)

    def threshold_on(self, gpu: str | None) -> float:
        """The threshold on GPU class ``gpu`` (``threshold`` where no class-specific one is set)."""
        return float(self.per_gpu.get(gpu, self.threshold)) if gpu else float(self.threshold)

    def threshold_note(self, gpu: str | None) -> str:
        """Whether the threshold used on ``gpu`` was measured there ("" if so)."""
        from ..device import CALIBRATION_GPU

        if gpu is None or gpu in self.per_gpu or gpu == CALIBRATION_GPU:
            return ""
        return (f"the {self.threshold_on(gpu):g}× threshold was calibrated on an {CALIBRATION_GPU}; on this "
                f"{gpu} the same ratio is asked (not yet calibrated there)")

    def case(self, args: tuple, label: str | None = None) -> Case:
        """The timed input (or a replayed or fresh one) as a case the exercise's judge reads."""
        return Case(label or self.gate_label, args, {}, dict(self.meta))


@dataclass
class MemoryPart:
    """A memory part: the measured call's extra peak memory within a budget, or within ``ratio`` of
    the baseline's on the same input."""

    inputs: Callable[[], Any]  # what the measured call works on (deterministic)
    call: Callable[[Callable | None, Any], Callable[[], Any]]  # the zero-arg measured call; fn None: the baseline
    check: Callable[[Any, Any], str | None]  # (output, the grader's own inputs) -> None or what is wrong
    output: Callable[[Any, Any], Any] = lambda inputs, ret: ret  # the judged result: (inputs, call's return)
    meter: str = "auto"  # "cuda" (allocator peak), "saved" (bytes autograd saves), "auto": cuda on a GPU
    budget_bytes: int | None = None  # absolute mode
    ratio: float | None = None  # ratio mode: yours ≤ ratio × baseline
    model: Callable[[Any], torch.nn.Module | None] = lambda inputs: None  # parameters the saved meter skips
    what: str = ""
    advice: str = ""
    cpu_note: str = ""
    context: Callable[[], Any] | None = None
    extra: dict = field(default_factory=dict)  # kept in the verdict's details

    def use_cuda(self) -> bool:
        return self.meter == "cuda" or (self.meter == "auto" and torch.cuda.is_available())


def _ctx(part):
    return part.context() if part.context is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Mutating calls (both sides) and their replay (the grader)
# ----------------------------------------------------------------------------------------------
def _schedule(x: torch.Tensor, nonce: int):
    flat = x.view(-1)
    g = torch.Generator(device="cpu").manual_seed(nonce)
    pool = flat[torch.randint(0, flat.numel(), (POOL,), generator=g).to(flat.device)].clone()
    where = torch.randint(0, flat.numel(), (POOL,), generator=g).tolist()
    return flat, pool, where


def _mutable(args: tuple) -> bool:
    x = args[0] if args else None
    return isinstance(x, torch.Tensor) and x.is_contiguous() and x.numel() > 0 and x.dtype.is_floating_point


def replay_mutations(args: tuple, nonce: int, count: int) -> tuple:
    """``args`` as they were after ``count`` mutating calls with ``nonce`` (a copy; args untouched)."""
    if not count or not _mutable(args):
        return args
    x = args[0].clone()
    flat, pool, where = _schedule(x, nonce)
    for k in range(1, count + 1):
        flat[where[k % POOL]] = pool[(k * 7) % POOL]
    return (x,) + tuple(args[1:])


def _mutating_call(fn: Callable, args: tuple, nonce: int, mutate: bool):
    """A zero-argument call of ``fn(*args)`` that first changes one element of ``args[0]``; returns
    (call, state) where state holds the last output and the number of calls."""
    state: dict = {"count": 0}
    if not mutate or not _mutable(args):
        def plain():
            state["out"] = fn(*args)
        return plain, state
    flat, pool, where = _schedule(args[0], nonce)

    def call():
        k = state["count"] = state["count"] + 1
        flat[where[k % POOL]] = pool[(k * 7) % POOL]
        state["out"] = fn(*args)
    return call, state


def _timed_call(part: "SpeedPart", fn: Callable | None, args, nonce: int):
    """The zero-argument call that is timed: the part's own ``call``, or ``fn(*args)`` mutating."""
    if part.call is not None:
        state: dict = {"count": 0}
        inner = part.call(fn, args)

        def call():
            state["out"] = inner()
        return call, state
    return _mutating_call(fn if fn is not None else part.baseline, args, nonce, part.mutate)


def _time(call: Callable[[], Any]) -> "Any":
    from .. import bench

    return bench.time_fn(call, warmup=5, min_reps=15, max_reps=300, max_time_s=2.0, device="cuda")


def _wall_ms(call: Callable[[], Any], n: int = 10) -> tuple[float, float]:
    """(device-wide wall ms per call, host ms per call): ``n`` calls back to back between two
    synchronisations, and the median time the host spends inside one call before it returns."""
    torch.cuda.synchronize()
    host = []
    t0 = _perf_counter()
    for _ in range(n):
        t = _perf_counter()
        call()
        host.append(_perf_counter() - t)
    torch.cuda.synchronize()
    return (_perf_counter() - t0) / n * 1e3, sorted(host)[n // 2] * 1e3


# ----------------------------------------------------------------------------------------------
# The student's side (the sandbox when grading)
# ----------------------------------------------------------------------------------------------
def measure_speed(ex: Exercise, part: SpeedPart, fn: Callable) -> dict:
    """Run and time the student's ``fn`` as ``part`` says; plain data for :func:`decide_speed`."""
    args = part.inputs()
    gate = part.gate if part.gate is not None else part.case(args)
    res: dict = {"gate": run_case(ex, fn, gate)}
    if isinstance(res["gate"], Problem):
        return res
    if part.gate is None:
        res["gate"] = _viewed(part, args, res["gate"])
    with _ctx(part):
        nonce = int.from_bytes(os.urandom(6), "big")
        call, state = _timed_call(part, fn, args, nonce)
        t = _time(call)
        wall, host = _wall_ms(call)
        if part.own_kernels:  # the device's own record of what ran (torch.profiler): effilab.grading.gpushare;
            from .gpushare import gpu_time_share  # after the timed calls, so code that changes after a few

            res["provenance"] = gpu_time_share(lambda: fn(*args))  # calls is profiled as it was timed
    res.update({"nonce": nonce, "count": state["count"], "median_ms": t.median_ms, "spread": t.spread,
                "wall_ms": wall, "host_ms": host})
    if part.call is None and part.mutate and _mutable(args) and "out" in state:
        last = state["out"].detach() if isinstance(state["out"], torch.Tensor) else state["out"]
        res["last"] = _viewed(part, args, last)
    if part.fresh is not None:
        fresh = part.fresh()
        res["fresh"] = _viewed(part, fresh, call_student(fn, fresh))
    return res


def measure_memory(ex: Exercise, part: MemoryPart, fn: Callable) -> dict:
    """Run the student's call once, meter it, and return the measured bytes and its judged output."""
    inputs = part.inputs()
    with _ctx(part):
        try:
            step = part.call(fn, inputs)
            if part.use_cuda():
                step()  # warm-up: kernels compiled outside the measurement
                torch.cuda.synchronize()
            peak, ret = _meter(part, step, inputs)
        except Exception as exc:
            from .calls import student_error

            return {"output": student_error(exc)}
    return {"peak_bytes": int(peak), "output": part.output(inputs, ret)}


def _meter(part: MemoryPart, step: Callable[[], Any], inputs) -> tuple[int, Any]:
    if part.use_cuda():
        from ..memory import peak_memory

        r = peak_memory(step)
        return r.peak_bytes, r.result
    from ..memory import SavedTensorMeter

    meter = SavedTensorMeter(part.model(inputs))
    with meter.hooks():
        ret = step()
    return meter.peak, ret


# ----------------------------------------------------------------------------------------------
# The baseline (the grader's own process)
# ----------------------------------------------------------------------------------------------
def baseline_speed(part: SpeedPart) -> dict:
    if not torch.cuda.is_available():
        return {}
    args = part.inputs()
    with _ctx(part):
        call, _ = _timed_call(part, None, args, int.from_bytes(os.urandom(6), "big"))
        t = _time(call)
    return {"median_ms": t.median_ms, "spread": t.spread}


def baseline_memory(part: MemoryPart) -> dict:
    if part.ratio is None or (part.use_cuda() and not torch.cuda.is_available()):
        return {}
    inputs = part.inputs()
    with _ctx(part):
        step = part.call(None, inputs)
        if part.use_cuda():
            step()
            torch.cuda.synchronize()
        peak, _ = _meter(part, step, inputs)
    return {"peak_bytes": int(peak)}


# ----------------------------------------------------------------------------------------------
# Decisions (the grader's own process)
# ----------------------------------------------------------------------------------------------
def faster_than(threshold: float, baseline: str) -> str:
    """The speed goal in words: "≥ 2× faster than X", or "at least as fast as X" for a ratio of 1."""
    if threshold == 1:
        return f"at least as fast as {baseline}"
    return f"≥ {threshold:g}× faster than {baseline}"


def _not_on_cpu(ex: Exercise, part: str, note: str) -> Verdict:
    v = Verdict(ex.name, part, 0.0, float(ex.points.get(part, 0.0)))
    v.notes.append(f"{part}: {NOT_ON_CPU}." + (f" {note}" if note else ""))
    return v


def _pick() -> int:
    return int.from_bytes(os.urandom(6), "big")


def _viewed(part: "SpeedPart", args: tuple, out):
    """What of ``out`` crosses to the grader: with a view, a part chosen now, at random."""
    if part.view is None or isinstance(out, Problem) or not isinstance(out, torch.Tensor):
        return out
    pick = _pick()
    _, index = part.view(args, pick)
    return {"value": out[index].contiguous(), "pick": pick}


def _judged(ex: Exercise, out, case: Case, view=None) -> str | None:
    if view is not None and isinstance(out, dict) and "pick" in out and "value" in out:
        args, _ = view(case.args, int(out["pick"]))
        out, case = out["value"], Case(case.label, args, case.kwargs, case.meta)
    r = judge_case(ex, out, case, expect_case(ex, case) if not isinstance(out, Problem) else None)
    return None if r.ok else r.problem + (f" (hint: {r.hint})" if r.hint else "")


def wall_exceeds(stream_ms: float, wall_ms: float, host_ms: float) -> bool:
    """Whether a call's device-wide wall time shows work the timed stream did not: more than
    :data:`WALL_SLACK` × the larger of its stream time and its host time, plus 20 µs of launch gaps."""
    return wall_ms > WALL_SLACK * max(stream_ms, host_ms) + 0.02


def decide_speed(ex: Exercise, part: SpeedPart, mine: dict, base: dict, suite: str = "public") -> Verdict:
    """Judge the student's outputs on the grader's own inputs, check provenance, compare the medians."""
    points = float(ex.points.get("speed", 0.0))
    v = Verdict(ex.name, "speed", 0.0, points, suite=suite)
    if not torch.cuda.is_available():
        return _not_on_cpu(ex, "speed", part.cpu_note or f"On a GPU yours must be "
                                                          f"{faster_than(part.threshold, part.baseline_name)}.")
    built: list = []

    def args() -> tuple:  # the grader's own copy of the timed input, built once and only when needed
        if not built:
            built.append(part.inputs())
        return built[0]

    gate = part.gate if part.gate is not None else part.case(args())
    problem = _judged(ex, mine.get("gate", Problem("no output came back")), gate,
                      part.view if part.gate is None else None)
    if problem:
        v.notes.append("not timed: your code is not correct on the timed input — " + problem)
        return v
    prov = mine.get("provenance")
    if part.own_kernels:
        why = _provenance_problem(prov)
        if why:
            v.notes.append("not timed: " + why)
            return v
    if "last" in mine:
        final = replay_mutations(args(), int(mine.get("nonce", 0)), int(mine.get("count", 0)))
        problem = _judged(ex, mine["last"], part.case(final, "the last timed call"), part.view)
        if problem:
            v.notes.append("the output of a timed call was wrong for the input it was given (results cached or "
                           "replayed across calls do not count): " + problem)
            return v
    if part.fresh is not None:
        problem = _judged(ex, mine.get("fresh", Problem("no output came back")), part.case(part.fresh(), "a fresh input"),
                          part.view)
        if problem:
            v.notes.append("after timing, your code gave a wrong answer on a fresh input (cached results do not "
                           "count): " + problem)
            return v
    yours, theirs = float(mine["median_ms"]), float(base["median_ms"])
    ratio = theirs / yours if yours > 0 else math.inf
    wall, host = float(mine.get("wall_ms", 0.0)), float(mine.get("host_ms", 0.0))
    if wall_exceeds(yours, wall, host):
        v.notes.append(f"your call takes {wall:.3f} ms of device-wide wall time but {yours:.3f} ms on the timed "
                       f"stream and {host:.3f} ms on the host (work on another stream?): the wall time counts")
        ratio = min(ratio, theirs / wall)
    from .. import bench
    from ..device import gpu_class

    gpu = gpu_class()
    threshold = part.threshold_on(gpu)
    flops = part.flops(args()) if callable(part.flops) else part.flops
    tp = bench.throughput(yours, bytes=part.bytes_moved, flops=flops)
    v.details.update({"ratio": ratio, "yours_ms": yours, "baseline_ms": theirs, "wall_ms": wall, "host_ms": host,
                      "yours_spread": mine.get("spread"), "baseline_spread": base.get("spread"),
                      "gbs": tp.gbs, "tflops": tp.tflops, "threshold": threshold, "gpu_class": gpu})
    if prov:
        v.details["own_share"] = prov.get("share")
        v.details["kernels"] = ", ".join(str(k.get("name", ""))[:60] for k in prov.get("kernels", [])[:6])
    v.details.update(part.extra)
    v.notes.append(f"yours {yours:.3f} ms, {part.baseline_name} {theirs:.3f} ms (medians); yours: {tp}")
    if part.explain is not None:
        v.notes.append(part.explain(ratio))
    if part.threshold_note(gpu):
        v.notes.append(part.threshold_note(gpu))
    if ratio >= threshold:
        v.points = points
        v.notes.append(f"speed-up {ratio:.2f}× ≥ {threshold:g}×: full points")
    else:
        v.notes.append(f"speed-up {ratio:.2f}× < {threshold:g}×" + (f": {part.advice}" if part.advice else ""))
    return v


def _provenance_problem(prov: dict | None) -> str | None:
    """The timed call's GPU time must be the student's own kernels (≥ 90 %, no library compute)."""
    if not prov:
        return "no record of the kernels your call launched came back"
    from .gpushare import share_problem

    return share_problem(prov)


def decide_memory(ex: Exercise, part: MemoryPart, mine: dict, base: dict, suite: str = "public") -> Verdict:
    points = float(ex.points.get("memory", 0.0))
    v = Verdict(ex.name, "memory", 0.0, points, suite=suite)
    if part.use_cuda() and not torch.cuda.is_available():
        return _not_on_cpu(ex, "memory", part.cpu_note)
    out = mine.get("output", Problem("no output came back"))
    if isinstance(out, Problem):
        v.notes.append(f"not measured: your code failed on the measured input — {out.message}"
                       + (f" (hint: {out.hint})" if out.hint else ""))
        return v
    try:
        problem = part.check(out, part.inputs())
    except Exception as exc:
        problem = f"could not compare your output ({type(exc).__name__}: {str(exc)[:300]})"
    if problem:
        v.notes.append(f"not measured: your result is wrong on the measured input — {problem}")
        return v
    from ..memory import format_bytes

    peak = int(mine["peak_bytes"])
    v.details.update(part.extra)
    if part.ratio is not None:
        baseline = max(1, int(base["peak_bytes"]))
        ratio = peak / baseline
        ok = ratio <= part.ratio
        v.details.update({"ratio": ratio, "yours_bytes": peak, "baseline_bytes": baseline, "threshold": part.ratio})
        v.notes.append(f"{part.what}: yours {format_bytes(peak)}, baseline {format_bytes(baseline)}, ratio {ratio:.3f} "
                       f"({'≤' if ok else '>'} {part.ratio:.3f})")
    else:
        ok = peak <= int(part.budget_bytes)
        v.details.update({"peak_bytes": peak, "budget_bytes": int(part.budget_bytes)})
        v.notes.append(f"extra peak memory of your call: {format_bytes(peak)} (budget {format_bytes(part.budget_bytes)}"
                       + (f"; {part.what}" if part.what else "") + ")")
    if ok:
        v.points = points
        v.notes.append("within the budget: full points")
    else:
        v.notes.append("over the budget" + (f": {part.advice}" if part.advice else ""))
    return v


# ----------------------------------------------------------------------------------------------
# The self-check: all three sides in the notebook's process
# ----------------------------------------------------------------------------------------------
def self_check(ex: Exercise, part: str, fn: Callable, key) -> Verdict:
    if part == "speed":
        spec = ex.speed_part(key)
        if not torch.cuda.is_available():
            return decide_speed(ex, spec, {}, {}, key.suite)
        base = baseline_speed(spec)
        return decide_speed(ex, spec, measure_speed(ex, spec, fn), base, key.suite)
    if part == "memory":
        spec = ex.memory_part(key)
        if spec.use_cuda() and not torch.cuda.is_available():
            return decide_memory(ex, spec, {}, {}, key.suite)
        base = baseline_memory(spec)
        return decide_memory(ex, spec, measure_memory(ex, spec, fn), base, key.suite)
    raise ValueError(part)
