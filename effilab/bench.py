"""Timing GPU (and CPU) code honestly: warm-up, L2 flush, CUDA events, medians and spreads.

GPU work is asynchronous: a Python call returns as soon as the kernels are *queued*. Timing it with
``time.time()`` measures the launch, not the work. :func:`time_fn` therefore records a pair of
CUDA events around each call and reads their elapsed time after a synchronize.

What :func:`time_fn` does, and why
----------------------------------
1. **warm-up** calls first: the first call pays for compilation (Triton, ``torch.compile``),
   cuBLAS heuristics, allocator growth.
2. **L2 flush** before every repetition: writing a buffer larger than the L2 cache evicts the
   inputs, so each repetition reads them from DRAM as in a real training step (otherwise a 20 MB
   input stays in H100's 50 MB L2 and the "bandwidth" exceeds the datasheet). The idea comes from
   Triton's ``triton.testing.do_bench``.
3. **one event pair per repetition**, then statistics that resist outliers: the median and the
   inter-quartile range (IQR). Repetitions continue in batches until the IQR/median is at most
   ``target_spread`` (after ``min_reps``), or ``max_reps`` / ``max_time_s`` is reached.

What it cannot do for you: time on realistic inputs. Random data, not ``torch.zeros``: some
kernels (and the GPU's power draw, hence its clock) behave differently on zeros.

Rates: :func:`throughput` turns a time and a byte/FLOP count into GB/s and TFLOP/s and compares
them with the device's ceilings (:mod:`effilab.device`). :func:`compare` times several candidates
interleaved, :func:`bar_plot` draws the result.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from effilab import device as _device

if TYPE_CHECKING:  # matplotlib is imported lazily: plotting is optional at import time
    from matplotlib.axes import Axes

__all__ = ["Timing", "time_fn", "kernel_times", "Throughput", "throughput", "Comparison", "compare", "bar_plot"]

FLUSH_BYTES = 256 * 2**20  # 256 MiB: larger than the L2 of every current GPU (H100: 50 MB)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def _fmt_ms(ms: float) -> str:
    """A duration in a readable unit: ``'0.412 ms'``, ``'3.10 ms'``; µs below 10 µs, s above 1 s."""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms < 0.01:
        return f"{ms * 1000:.3g} µs"
    if ms < 1:
        return f"{ms:.3f} ms"
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.1f} ms"


@dataclass
class Timing:
    """Statistics of repeated timings of one function.

    Attributes:
        median_ms: median time per call, milliseconds (the number to report).
        q1_ms, q3_ms: first and third quartiles, ms.
        min_ms: fastest call, ms.
        n: number of timed calls.
        spread: (q3 - q1) / median, the relative inter-quartile range.
        samples_ms: every timed call, ms, in the order measured.
        device: ``"cuda:0"``, ``"cpu"``, ...
        method: ``"cuda-events"`` or ``"perf_counter"``.

    ``str(t)`` reads like ``"0.412 ms (IQR ±1.2%, n=200)"``: ±x% is half the IQR relative to the
    median (``spread / 2``), i.e. the quartiles lie about x% below and above the median.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    n: int
    spread: float
    samples_ms: list[float] = field(repr=False)
    device: str = "cpu"
    method: str = "perf_counter"

    @classmethod
    def from_samples(cls, samples_ms: list[float], device: str, method: str) -> "Timing":
        """Summarise raw per-call times (ms)."""
        if not samples_ms:
            raise ValueError("no samples to summarise: time at least one call")
        s = np.asarray(samples_ms, dtype=np.float64)
        q1, med, q3 = (float(v) for v in np.percentile(s, [25, 50, 75]))
        spread = (q3 - q1) / med if med > 0 else math.inf
        return cls(med, q1, q3, float(s.min()), len(s), spread, [float(v) for v in s], device, method)

    @property
    def seconds(self) -> float:
        """The median in seconds."""
        return self.median_ms / 1000

    def __str__(self) -> str:
        # ±: half the IQR relative to the median, i.e. the quartiles lie about ±x% around it.
        return f"{_fmt_ms(self.median_ms)} (IQR ±{50 * self.spread:.1f}%, n={self.n})"


def _find_device(args: tuple, kwargs: dict) -> torch.device:
    """The device of the first tensor (or module) argument; the default device if there is none."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device
        if isinstance(a, torch.nn.Module):
            p = next(a.parameters(), None)
            if p is not None:
                return p.device
    return _device.default_device()


def _check_rep_args(warmup: int, min_reps: int, max_reps: int, max_time_s: float,
                    target_spread: float) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_reps < 1 or max_reps < 1:
        raise ValueError(f"min_reps and max_reps must be >= 1, got {min_reps} and {max_reps}")
    if min_reps > max_reps:
        raise ValueError(f"min_reps ({min_reps}) must not exceed max_reps ({max_reps})")
    if not max_time_s > 0:
        raise ValueError(f"max_time_s must be > 0 seconds, got {max_time_s}")
    if target_spread < 0:
        raise ValueError(f"target_spread must be >= 0 (e.g. 0.03 for 3%), got {target_spread}")


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 10,
    min_reps: int = 10,
    max_reps: int = 500,
    max_time_s: float = 2.0,
    target_spread: float = 0.03,
    flush_l2: bool = True,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: median over repetitions, each timed on its own.

    Args:
        fn: the function to time. Its return value is discarded.
        *args, **kwargs: passed to ``fn``. The keywords below are consumed by ``time_fn``; wrap
            ``fn`` in a ``lambda`` if it takes keywords with the same names.
        warmup: untimed calls first (compilation, autotuning, allocator growth).
        min_reps: at least this many timed calls (unless ``max_time_s`` runs out first).
        max_reps: at most this many timed calls.
        max_time_s: stop after this much time spent timing (checked between batches of calls;
            the first batch always runs, and always has at least one call).
        target_spread: stop once ``n >= min_reps`` and IQR/median <= this (0.03 = 3%).
        flush_l2: on CUDA, evict the L2 cache before every call (ignored on CPU).
        device: where ``fn`` runs. Default: the device of the first tensor argument, else CUDA if
            present. Pass ``device="cpu"`` to time CPU code on a GPU machine.

    Returns:
        :class:`Timing`. On CUDA, ``method="cuda-events"``: GPU time between events recorded just
        before and after the call, after an L2 flush. On CPU, ``method="perf_counter"``.

    Time realistic inputs: random data, not zeros (the caller's job).
    """
    _check_rep_args(warmup, min_reps, max_reps, max_time_s, target_spread)
    dev = torch.device(device) if device is not None else _find_device(args, kwargs)
    if dev.type == "cuda":
        if not _device.has_cuda():
            raise RuntimeError("time_fn got device='cuda' but this machine has no CUDA GPU; "
                               "pass device='cpu' or tensors on the CPU")
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
        with torch.cuda.device(dev):
            samples = _time_cuda(fn, args, kwargs, warmup, min_reps, max_reps, max_time_s,
                                 target_spread, flush_l2, dev)
        return Timing.from_samples(samples, str(dev), "cuda-events")
    samples = _time_cpu(fn, args, kwargs, warmup, min_reps, max_reps, max_time_s, target_spread)
    return Timing.from_samples(samples, str(dev), "perf_counter")


def kernel_times(fn: Callable[[], Any], calls: int = 3) -> tuple[float, list[tuple[str, float, int]]]:
    """What the GPU ran for one call of ``fn``: ``(total_ms, rows)``, rows ``(kernel name, ms per call,
    launches per call)`` sorted by time, from ``torch.profiler``'s CUDA activity over ``calls`` calls
    (warm ``fn`` up first). A call's wall time minus ``total_ms`` is the time the GPU sat idle in it
    (waiting for the host, or for a host sync). CUDA only."""
    if not torch.cuda.is_available():
        raise RuntimeError("kernel_times needs a CUDA GPU: it reads what the GPU ran from torch.profiler's CUDA activity")
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.self_device_time_total / calls / 1e3, e.count // calls) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    return sum(r[1] for r in rows), rows


def _spread(samples: list[float]) -> float:
    q1, med, q3 = np.percentile(np.asarray(samples), [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else math.inf


def _next_batch(n: int, min_reps: int, max_reps: int, remaining_s: float, per_call_s: float) -> int:
    """How many calls to time in the next batch: fill up to ``min_reps``, then ``min_reps`` more,
    never past ``max_reps`` nor (by the current per-call estimate) past the time budget."""
    want = (min_reps - n) if n < min_reps else min_reps
    want = min(want, max_reps - n)
    if per_call_s > 0:
        want = min(want, int(remaining_s / per_call_s))
    return max(1, want)


def _should_stop(samples: list[float], min_reps: int, max_reps: int, target_spread: float,
                 elapsed_s: float, max_time_s: float) -> bool:
    n = len(samples)
    if n >= max_reps or elapsed_s >= max_time_s:
        return True
    return n >= min_reps and _spread(samples) <= target_spread


def _time_cpu(fn, args, kwargs, warmup, min_reps, max_reps, max_time_s, target_spread) -> list[float]:
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn(*args, **kwargs)
    per_call = (time.perf_counter() - t0) / warmup if warmup else 0.0

    samples: list[float] = []
    start = time.perf_counter()
    while True:
        b = _next_batch(len(samples), min_reps, max_reps,
                        max_time_s - (time.perf_counter() - start), per_call)
        tb = time.perf_counter()
        for _ in range(b):
            t = time.perf_counter()
            fn(*args, **kwargs)
            samples.append((time.perf_counter() - t) * 1e3)
        per_call = (time.perf_counter() - tb) / b
        if _should_stop(samples, min_reps, max_reps, target_spread,
                        time.perf_counter() - start, max_time_s):
            return samples


def _time_cuda(fn, args, kwargs, warmup, min_reps, max_reps, max_time_s, target_spread,
               flush_l2, dev: torch.device) -> list[float]:
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn(*args, **kwargs)
    torch.cuda.synchronize(dev)
    per_call = (time.perf_counter() - t0) / warmup if warmup else 0.0

    flush = None
    if flush_l2:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or 0
        flush = torch.empty(max(FLUSH_BYTES, 4 * l2), dtype=torch.int8, device=dev)

    samples: list[float] = []
    start = time.perf_counter()
    while True:
        b = _next_batch(len(samples), min_reps, max_reps,
                        max_time_s - (time.perf_counter() - start), per_call)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(b)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(b)]
        tb = time.perf_counter()
        for i in range(b):
            if flush is not None:
                flush.zero_()  # evict L2 (not timed: it runs before the start event)
            starts[i].record()
            fn(*args, **kwargs)
            ends[i].record()
        torch.cuda.synchronize(dev)
        per_call = (time.perf_counter() - tb) / b
        samples.extend(s.elapsed_time(e) for s, e in zip(starts, ends))
        if _should_stop(samples, min_reps, max_reps, target_spread,
                        time.perf_counter() - start, max_time_s):
            del flush
            return samples


# --------------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------------
def _fmt_gbs(gbs: float) -> str:
    return f"{gbs / 1000:.2f} TB/s" if gbs >= 1000 else f"{gbs:.3g} GB/s"


def _fmt_tflops(tf: float) -> str:
    return f"{tf:.3g} TFLOP/s" if tf >= 1 else f"{tf * 1000:.3g} GFLOP/s"


@dataclass
class Throughput:
    """Rates achieved by one timed call, and how they compare with the device's ceilings.

    Attributes:
        ms: the time the rates are computed from, milliseconds.
        gbs: bytes / time in GB/s (1e9), or None if no byte count was given.
        tflops: FLOPs / time in TFLOP/s (1e12), or None.
        frac_bandwidth: gbs / datasheet bandwidth (None if unknown).
        frac_flops: tflops / datasheet peak for ``dtype`` (None if unknown).
        frac_measured_bandwidth: gbs / measured copy bandwidth of the reference GPU (None if
            this is not that GPU).
        frac_measured_flops: tflops / measured matmul ceiling (None if unknown).
        peak_gbs, peak_tflops: the datasheet ceilings used.
        dtype: the format whose FLOP peak was used (as a short string).
    """

    ms: float
    gbs: float | None
    tflops: float | None
    frac_bandwidth: float | None
    frac_flops: float | None
    frac_measured_bandwidth: float | None
    frac_measured_flops: float | None = None
    peak_gbs: float | None = None
    peak_tflops: float | None = None
    dtype: str = "bf16"

    def __str__(self) -> str:
        parts = []
        if self.gbs is not None:
            s = _fmt_gbs(self.gbs)
            if self.frac_bandwidth is not None and self.peak_gbs is not None:
                s += f" = {self.frac_bandwidth:.0%} of peak {_fmt_gbs(self.peak_gbs)}"
            if self.frac_measured_bandwidth is not None:
                s += f" ({self.frac_measured_bandwidth:.0%} of measured copy)"
            parts.append(s)
        if self.tflops is not None:
            s = _fmt_tflops(self.tflops)
            if self.frac_flops is not None and self.peak_tflops is not None:
                s += f" = {self.frac_flops:.0%} of {self.dtype} peak {_fmt_tflops(self.peak_tflops)}"
            if self.frac_measured_flops is not None:
                s += f" ({self.frac_measured_flops:.0%} of measured)"
            parts.append(s)
        return "; ".join(parts) if parts else f"{_fmt_ms(self.ms)} (no bytes or flops given)"


def throughput(
    ms: float | Timing,
    *,
    bytes: float | None = None,  # noqa: A002  (the natural name for a byte count)
    flops: float | None = None,
    info: _device.DeviceInfo | None = None,
    dtype: torch.dtype | str | None = None,
) -> Throughput:
    """Rates of a call that took ``ms`` milliseconds (or a :class:`Timing`: its median).

    Args:
        ms: time per call in milliseconds, or a :class:`Timing`.
        bytes: bytes moved to/from DRAM per call (reads + writes), for GB/s.
        flops: floating-point operations per call (a matmul m×k @ k×n: ``2*m*n*k``), for TFLOP/s.
        info: the device whose ceilings apply (default: :func:`effilab.device.info`).
        dtype: the format whose FLOP peak applies; default ``torch.bfloat16``.

    Example::

        t = time_fn(torch.add, x, y)          # x, y: float32, N elements
        print(throughput(t, bytes=3 * 4 * N))  # reads x and y, writes the sum
    """
    ms_val = ms.median_ms if isinstance(ms, Timing) else float(ms)
    if not ms_val > 0:
        raise ValueError(f"time must be > 0 ms, got {ms_val}")
    dtype = torch.bfloat16 if dtype is None else dtype
    s = ms_val / 1e3
    gbs = None if bytes is None else bytes / s / 1e9
    tflops = None if flops is None else flops / s / 1e12
    rf = _device.roofline_fraction(gbs, tflops, dtype=dtype, info=info)
    return Throughput(
        ms=ms_val, gbs=gbs, tflops=tflops,
        frac_bandwidth=rf["frac_bandwidth"], frac_flops=rf["frac_flops"],
        frac_measured_bandwidth=rf["frac_measured_bandwidth"],
        frac_measured_flops=rf["frac_measured_flops"],
        peak_gbs=rf["peak_gbs"], peak_tflops=rf["peak_tflops"],
        dtype=_device._flops_field(dtype).split("_")[0],
    )


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Timings of several candidates measured interleaved in one process.

    Attributes:
        timings: name -> :class:`Timing` over all rounds.
        rounds: how many interleaved rounds were run.
        round_medians: name -> the median of each round, ms (shows drift across rounds).
    """

    timings: dict[str, Timing]
    rounds: int
    round_medians: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, slow: str, fast: str) -> float:
        """``median(slow) / median(fast)``: how many times faster ``fast`` is than ``slow``."""
        for name in (slow, fast):
            if name not in self.timings:
                raise KeyError(f"no candidate named {name!r}; candidates: {list(self.timings)}")
        return self.timings[slow].median_ms / self.timings[fast].median_ms

    @property
    def fastest(self) -> str:
        """Name of the candidate with the smallest median."""
        return min(self.timings, key=lambda k: self.timings[k].median_ms)

    def table(self) -> str:
        """A text table: median, IQR, n, and speed relative to the first candidate."""
        names = list(self.timings)
        base = self.timings[names[0]].median_ms
        width = max(8, *(len(n) for n in names))
        lines = [f"{'name':<{width}}  {'median':>10}  {'IQR':>7}  {'n':>5}  {'vs ' + names[0]:>12}",
                 "-" * (width + 44)]
        for name in names:
            t = self.timings[name]
            rel = base / t.median_ms
            lines.append(f"{name:<{width}}  {_fmt_ms(t.median_ms):>10}  {t.spread:>7.1%}  {t.n:>5}"
                         f"  {rel:>11.2f}×")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax: "Axes | None" = None, baseline: str | None = None) -> "Axes":
        """Bar plot of the medians (IQR as error bars), labelled with speed-ups vs ``baseline``
        (default: the first candidate)."""
        names = list(self.timings)
        return bar_plot(
            {n: self.timings[n].median_ms for n in names},
            ylabel="median time per call (ms)",
            title=f"{self.rounds} interleaved rounds; labels: speed-up vs {baseline or names[0]}",
            ax=ax, baseline=baseline or names[0], lower_is_better=True,
            errors={n: (self.timings[n].q1_ms, self.timings[n].q3_ms) for n in names},
        )


def compare(
    fns: dict[str, Callable[..., Any]],
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    *,
    rounds: int = 5,
    **time_fn_kwargs: Any,
) -> Comparison:
    """Time several candidates on the same inputs, interleaved over ``rounds`` rounds.

    Round r times A, then B, then C, ...; drift (GPU clocks, thermal state, other processes) then
    affects every candidate alike instead of penalising whichever ran last. Each candidate's
    :class:`Timing` pools the samples of all rounds.

    ``time_fn_kwargs`` (``warmup``, ``min_reps``, ``max_reps``, ``max_time_s``, ...) are the total
    budget per candidate; it is split evenly over the rounds. The full warm-up runs in the first
    round, a short one (``warmup // 5``, at least 1) before each later round.

    Example::

        c = compare({"eager": f, "compiled": torch.compile(f)}, args=(x,))
        print(c.table()); c.ratio("eager", "compiled")
    """
    if not fns:
        raise ValueError("compare needs at least one candidate: fns={'name': callable, ...}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    kwargs = kwargs or {}
    warmup = int(time_fn_kwargs.pop("warmup", 10))
    min_reps = int(time_fn_kwargs.pop("min_reps", 10))
    max_reps = int(time_fn_kwargs.pop("max_reps", 500))
    max_time_s = float(time_fn_kwargs.pop("max_time_s", 2.0))
    _check_rep_args(warmup, min_reps, max_reps, max_time_s, time_fn_kwargs.get("target_spread", 0))
    if "device" not in time_fn_kwargs:
        time_fn_kwargs["device"] = _find_device(tuple(args), kwargs)
    per_round = dict(
        min_reps=max(1, math.ceil(min_reps / rounds)),
        max_reps=max(1, max_reps // rounds),
        max_time_s=max_time_s / rounds,
    )
    per_round["min_reps"] = min(per_round["min_reps"], per_round["max_reps"])

    samples: dict[str, list[float]] = {name: [] for name in fns}
    round_medians: dict[str, list[float]] = {name: [] for name in fns}
    dev, method = "cpu", "perf_counter"
    for r in range(rounds):
        for name, fn in fns.items():
            t = time_fn(lambda: fn(*args, **kwargs),
                        warmup=warmup if r == 0 else max(1, warmup // 5),
                        **per_round, **time_fn_kwargs)
            samples[name].extend(t.samples_ms)
            round_medians[name].append(t.median_ms)
            dev, method = t.device, t.method
    timings = {name: Timing.from_samples(s, dev, method) for name, s in samples.items()}
    return Comparison(timings, rounds, round_medians)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def bar_plot(
    values: dict[str, float],
    *,
    ylabel: str,
    title: str | None = None,
    ax: "Axes | None" = None,
    annotate: bool = True,
    baseline: str | None = None,
    lower_is_better: bool = False,
    errors: dict[str, tuple[float, float]] | None = None,
) -> "Axes":
    """A bar chart of ``values`` (one bar per key, in order), values annotated on top.

    Args:
        values: label -> value (e.g. GB/s, or ms).
        ylabel, title: axis label and optional title.
        ax: draw into this Axes (default: a new figure).
        annotate: write each value (and the ratio, with a ``baseline``) above its bar.
        baseline: a key of ``values``; each bar is then labelled ``value / baseline`` (or
            ``baseline / value`` when ``lower_is_better``, so that times read as speed-ups) and the
            baseline bar is drawn in grey.
        lower_is_better: the values are costs (times, bytes) rather than rates.
        errors: optional label -> (low, high) absolute range drawn as an error bar (e.g. quartiles).

    Returns:
        The matplotlib Axes. Works with any backend, including the headless ``Agg``.
    """
    if not values:
        raise ValueError("bar_plot needs at least one value: values={'label': number, ...}")
    if baseline is not None and baseline not in values:
        raise KeyError(f"baseline {baseline!r} is not one of the bars: {list(values)}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(values) + 1.5), 3.5))
    names = list(values)
    heights = [float(values[n]) for n in names]
    colors = ["0.6" if n == baseline else f"C{i % 10}" for i, n in enumerate(names)]
    yerr = None
    if errors:
        lo = [max(0.0, h - errors[n][0]) if n in errors else 0.0 for n, h in zip(names, heights)]
        hi = [max(0.0, errors[n][1] - h) if n in errors else 0.0 for n, h in zip(names, heights)]
        yerr = [lo, hi]
    bars = ax.bar(range(len(names)), heights, color=colors, yerr=yerr, capsize=4 if yerr else 0)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20 if max(len(n) for n in names) > 10 else 0,
                       ha="right" if max(len(n) for n in names) > 10 else "center")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate:
        base = float(values[baseline]) if baseline is not None else None
        top = max(heights + ([max(e[1] for e in errors.values())] if errors else []))
        for bar, name, h in zip(bars, names, heights):
            text = f"{h:.3g}"
            if base is not None and h > 0 and base > 0:
                r = base / h if lower_is_better else h / base
                text += f"\n{r:.2f}×"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, h), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9)
        if top > 0:
            ax.set_ylim(0, top * 1.22)
    return ax
