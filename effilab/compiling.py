"""Looking inside ``torch.compile``: the tools of notebook 09.

``torch.compile`` is three stages (Ansel et al., 2024, "PyTorch 2: Faster Machine Learning Through
Dynamic Python Bytecode Transformation and Graph Compilation", ASPLOS '24):

* **TorchDynamo** reads the Python bytecode of a frame, runs it symbolically on fake tensors and
  records the tensor operations in an FX graph. What it cannot record (``print``, ``.item()``, a
  branch on a tensor's value, an op whose output shape depends on the data) ends the graph: a
  *graph break*. Every graph comes with *guards* (shapes, dtypes, Python values it assumed); a
  call that fails them compiles again: a *recompile*.
* **AOTAutograd** traces the graph again at the level of aten ops, derives the backward graph,
  and cuts the joint graph into a forward and a backward.
* **Inductor** fuses the aten ops into loops and writes the kernels: Triton on a GPU, C++ with
  OpenMP and vector intrinsics on a CPU.

This module holds what the notebook and its checker use to watch those stages:

* :class:`CountingBackend` — a ``torch.compile`` backend that counts graphs, their ops and how
  often they run, in front of ``eager``, ``aot_eager`` (forward and backward graphs counted too)
  or ``inductor``;
* :func:`dynamo_logs` — ``torch._logging`` artifacts (``graph_breaks``, ``recompiles``, …)
  collected into a list instead of stderr; :func:`graph_breaks` — every break with its reason
  and line;
* :func:`inductor_code` / :func:`kernels_in` — the code Inductor generated, split into kernels;
* :func:`break_even_steps`, :data:`H200_TRAIN_STEP` and :func:`plot_compile_tradeoff` — when the
  compile time is paid back;
* the models the exercises start from (:mod:`effilab.compile_models`): :class:`BreakyBlock`
  (graph breaks) and :class:`TinyLM` (recompiles).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from .compile_models import BreakyBlock, TinyLM

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CountingBackend", "GraphRecord", "dynamo_logs", "graph_breaks", "BreakSite", "BreakReport",
           "inductor_code", "kernels_in", "Kernel", "first_call_seconds", "break_even_steps", "ModeResult",
           "H200_TRAIN_STEP", "plot_compile_tradeoff", "fresh_namespace", "matmul_count", "BreakyBlock", "TinyLM",
           "recompile_limit"]

INNER_BACKENDS = ("eager", "aot_eager", "inductor")
_MATMULS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_mm")


# ----------------------------------------------------------------------------------------------
# A backend that counts
# ----------------------------------------------------------------------------------------------
@dataclass
class GraphRecord:
    """One graph a backend received: which stage made it, its ops, and how often it ran."""

    kind: str  # "dynamo" (TorchDynamo's FX graph), "forward" or "backward" (AOTAutograd's)
    ops: list[str]  # the call targets, in order, as strings ("aten.mm.default", "linear", …)
    runs: int = 0
    code: str = ""  # the graph as Python (GraphModule.code): what the stage will run

    @property
    def n_ops(self) -> int:
        return len(self.ops)


def _op_names(gm: torch.fx.GraphModule) -> list[str]:
    """The call targets of a graph, in order: ``"aten.mm.default"`` for an aten (or custom) operator,
    the function's name (``"linear"``) for a torch function, the method or submodule name otherwise."""
    out = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        t = node.target
        if isinstance(t, str):
            out.append(t)
        elif isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
            out.append(str(t))
        else:
            out.append(getattr(t, "__name__", None) or str(t))
    return out


def matmul_count(ops: list[str]) -> int:
    """How many of ``ops`` are matrix products (``mm``, ``addmm``, ``linear`` …, at any stage)."""
    n = 0
    for op in ops:
        base = op.split(".")[-2] if op.startswith("aten.") and op.count(".") >= 2 else op.split(".")[-1]
        n += base in _MATMULS
    return n


class CountingBackend:
    """A ``torch.compile`` backend that records what it compiles and counts what runs.

    ``CountingBackend("eager")`` runs Dynamo's graphs as they are; ``"aot_eager"`` passes them
    through AOTAutograd (so the forward and backward graphs are recorded and counted too) and
    runs those; ``"inductor"`` compiles them with Inductor. Use it as ``torch.compile(fn,
    backend=counter)``. Afterwards:

    * ``compiles`` — graphs Dynamo handed over (one per graph, per recompile);
    * ``runs`` — executions of any Dynamo graph; ``graphs`` — a :class:`GraphRecord` per graph,
      ``forward`` / ``backward`` — AOTAutograd's graphs (``aot_eager`` only);
    * :meth:`reset_counts` zeroes the run counters and keeps the graphs (they stay compiled).

    Dynamo keeps compiled code per backend object (a guard checks it), so reusing one counter
    reuses its compiled graphs: that is what makes it cheap to grade many cases of one model.
    """

    def __init__(self, inner: str = "eager"):
        if inner not in INNER_BACKENDS:
            raise ValueError(f"inner backend {inner!r} is not one of {INNER_BACKENDS}")
        self.inner = inner
        self.graphs: list[GraphRecord] = []
        self.forward: list[GraphRecord] = []
        self.backward: list[GraphRecord] = []
        self.__name__ = f"counting_{inner}"  # torch.compile names the backend after this

    # -- what torch.compile calls ----------------------------------------------------------------
    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        rec = GraphRecord("dynamo", _op_names(gm), code=gm.code)
        self.graphs.append(rec)
        if self.inner == "eager":
            compiled = gm.forward
        elif self.inner == "aot_eager":
            compiled = self._aot(gm, example_inputs)
        else:
            from torch._inductor.compile_fx import compile_fx

            compiled = compile_fx(gm, example_inputs)

        def run(*args):  # Dynamo calls what a backend returns with the graph's inputs as arguments
            rec.runs += 1
            return compiled(*args)

        return run

    def _aot(self, gm, example_inputs):
        from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
        from torch._dynamo.backends.common import aot_autograd

        def recorder(kind: str, into: list):
            def compiler(g: torch.fx.GraphModule, _inputs):
                rec = GraphRecord(kind, _op_names(g), code=g.code)
                into.append(rec)
                inner = make_boxed_func(g)

                def run(args):
                    rec.runs += 1
                    return inner(args)

                run._boxed_call = True
                return run

            return compiler

        return aot_autograd(fw_compiler=recorder("forward", self.forward),
                            bw_compiler=recorder("backward", self.backward),
                            partition_fn=min_cut_rematerialization_partition,
                            keep_inference_input_mutations=True)(gm, example_inputs)

    # -- what a caller reads ---------------------------------------------------------------------
    @property
    def compiles(self) -> int:
        return len(self.graphs)

    @property
    def runs(self) -> int:
        return sum(g.runs for g in self.graphs)

    def reset_counts(self) -> None:
        for g in self.graphs + self.forward + self.backward:
            g.runs = 0

    def summary(self) -> str:
        parts = [f"{self.compiles} graph(s) compiled, {self.runs} run(s)"]
        for i, g in enumerate(self.graphs):
            parts.append(f"  graph {i}: {g.n_ops} ops, ran {g.runs}×")
        return "\n".join(parts)


def recompile_limit() -> int:
    """Dynamo's limit on compiled versions of one frame (``recompile_limit``, older ``cache_size_limit``)."""
    cfg = torch._dynamo.config
    return int(getattr(cfg, "recompile_limit", getattr(cfg, "cache_size_limit", 8)))


# ----------------------------------------------------------------------------------------------
# Logs: torch._logging artifacts into a list, never onto stderr
# ----------------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if msg.strip():
                self.into.append(msg)
        except Exception:  # a record that cannot be formatted is dropped, never raised
            pass


@contextlib.contextmanager
def dynamo_logs(*artifacts: str) -> Iterator[list[str]]:
    """Turn on ``torch._logging`` artifacts (``"graph_breaks"``, ``"recompiles"``, ``"guards"``,
    ``"output_code"`` …: what ``TORCH_LOGS=graph_breaks,recompiles`` does) and collect every
    message torch logs meanwhile into the yielded list. Nothing reaches stderr (a notebook cell
    that writes to stderr looks like a failure); torch's own handlers and settings come back on exit.
    """
    messages: list[str] = []
    handler = _Collect(messages)
    before = {lg: lg.handlers[:] for lg in _torch_loggers()}
    torch._logging.set_logs(**{a: True for a in artifacts})
    # torch._logging gives every logger it configures (torch._dynamo, torch._inductor, one per
    # artifact…) a handler of its own and stops propagation: each of them gets ours instead.
    for lg in _torch_loggers():
        if lg.handlers:
            lg.handlers[:] = [handler]
    try:
        yield messages
    finally:
        torch._logging.set_logs()  # torch's default settings, then the handlers that were there before
        for lg in _torch_loggers():
            if lg in before:
                lg.handlers[:] = before[lg]
            elif handler in lg.handlers:
                lg.removeHandler(handler)


def _torch_loggers() -> list[logging.Logger]:
    return [logging.getLogger("torch")] + [lg for name, lg in list(logging.Logger.manager.loggerDict.items())
                                           if name.startswith("torch.") and isinstance(lg, logging.Logger)]


@dataclass
class BreakSite:
    """Where a graph break happened and why (Dynamo's words, first line)."""

    reason: str
    where: str  # "file.py:line" of the user code (file name only), when Dynamo's log said it


@dataclass
class BreakReport:
    """What compiling one call did: the graphs it made and the breaks between them."""

    graphs: list[GraphRecord]
    breaks: list[BreakSite] = field(default_factory=list)

    @property
    def n_graphs(self) -> int:
        return len(self.graphs)

    def __str__(self) -> str:
        lines = [f"{self.n_graphs} graph(s), {len(self.breaks)} graph break(s)"]
        for i, g in enumerate(self.graphs):
            lines.append(f"  graph {i}: {', '.join(g.ops[:8])}{' …' if g.n_ops > 8 else ''}")
        for b in self.breaks:
            lines.append(f"  break at {b.where or '?'}: {b.reason}")
        return "\n".join(lines)


_BREAK_AT = re.compile(r"Graph break in user code at (\S+)")
_REASON = re.compile(r"Graph Break Reason: (.*)")


def _break_sites(messages: list[str]) -> list[BreakSite]:
    """Break sites from Dynamo's ``graph_breaks`` log: the user line, the reason and its explanation."""
    sites = []
    for m in messages:
        at = _BREAK_AT.search(m)
        if not at:
            continue
        lines = [ln.strip() for ln in m.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if _REASON.search(ln)), None)
        reason = ""
        if start is not None:
            head = _REASON.search(lines[start]).group(1)
            rest = lines[start + 1:]
            # "Encountered graph break when attempting to trace CALL…:" introduces the real reason
            if head.endswith(":") or "gracefully" in head or not head:
                head = rest.pop(0) if rest else head
            why = next((ln.removeprefix("Explanation: ") for ln in rest if ln.startswith("Explanation:")), "")
            reason = head + (f" — {why}" if why else "")
        where = at.group(1)
        sites.append(BreakSite(reason[:300], where.rsplit("/", 1)[-1]))  # file:line, without the directories
    return sites


def graph_breaks(fn: Callable, *args, **kwargs) -> BreakReport:
    """Compile ``fn`` from scratch (``torch._dynamo.reset()``), call it once on ``args``, and report
    every graph Dynamo made and every graph break with its reason and user line. Unlike
    ``torch._dynamo.explain``, whose break count is *graphs − 1*, this lists break sites that
    produced no graph of their own too (a ``print`` right after another break)."""
    torch._dynamo.reset()
    counter = CountingBackend("eager")
    with dynamo_logs("graph_breaks") as messages:
        torch.compile(fn, backend=counter)(*args, **kwargs)
    torch._dynamo.reset()
    return BreakReport(counter.graphs, _break_sites(messages))


# ----------------------------------------------------------------------------------------------
# Inductor's output: the generated code, kernel by kernel
# ----------------------------------------------------------------------------------------------
@dataclass
class Kernel:
    """One kernel of Inductor's output code."""

    name: str  # e.g. triton_per_fused_add_mean_mul_pow_rsqrt_0, cpp_fused_add_mean_mul_pow_rsqrt_0
    language: str  # "triton" or "c++"
    source: str

    @property
    def fused_ops(self) -> list[str]:
        """The aten ops Inductor names in the kernel's name (``fused_add_mean_…`` → add, mean, …)."""
        m = re.search(r"fused_(.*?)_\d+$", self.name)
        return m.group(1).split("_") if m else []


_KERNEL_DEF = re.compile(r"^(\w+) = async_compile\.(triton|cpp_pybinding|cpp)\(", re.M)
_SOURCE = re.compile(r"r?'''(.*?)'''", re.S)


def kernels_in(code: str) -> list[Kernel]:
    """The kernels defined in one module of Inductor's output code, in order."""
    out = []
    for m in _KERNEL_DEF.finditer(code):
        src = _SOURCE.search(code, m.end())
        out.append(Kernel(m.group(1), "triton" if m.group(2) == "triton" else "c++", src.group(1).strip() if src else ""))
    return out


def inductor_code(compiled: Callable, *args) -> tuple[Any, list[str]]:
    """Call ``compiled`` (a ``torch.compile``-d function; it compiles now unless it did before) and
    return ``(its result, [source of each module Inductor generated])`` — what
    ``TORCH_LOGS=output_code`` prints, as strings (``torch._inductor.utils.run_and_get_code``).
    Keep using the same ``compiled`` afterwards: a new ``torch.compile(fn)`` compiles again."""
    from torch._inductor.utils import run_and_get_code

    with dynamo_logs():  # Inductor's warnings stay off stderr
        return run_and_get_code(compiled, *args)


# ----------------------------------------------------------------------------------------------
# Compile time against step time
# ----------------------------------------------------------------------------------------------
def _sync(device: str | None) -> None:
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def first_call_seconds(fn: Callable, *args, device: str | None = None) -> tuple[float, Any]:
    """Wall-clock seconds of the first call of ``fn(*args)`` (for a compiled ``fn``: the compile
    time plus one run), and its result."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn(*args)
    _sync(device)
    return time.perf_counter() - t0, out


def break_even_steps(compile_s: float, eager_ms: float, compiled_ms: float) -> float:
    """Steps after which compiling has paid for itself: ``compile_s / (eager − compiled)``;
    ``inf`` when the compiled step is not faster."""
    if compile_s < 0 or eager_ms <= 0 or compiled_ms <= 0:
        raise ValueError(f"times must be positive (compile {compile_s} s, eager {eager_ms} ms, "
                         f"compiled {compiled_ms} ms)")
    gain_s = (eager_ms - compiled_ms) / 1e3
    return compile_s / gain_s if gain_s > 0 else math.inf


@dataclass
class ModeResult:
    """A way of running a training step: its one-time compile seconds and its steady step time."""

    name: str
    compile_s: float
    step_ms: float
    source: str = ""

    def total_s(self, steps: float) -> float:
        return self.compile_s + steps * self.step_ms / 1e3


#: The course GPT ``gpu-real`` (12 × 768, context 1024), bf16 autocast, batch 16 × 1024, fused
#: AdamW, one training step. Measured on an NVIDIA H200, 2026-12-01 (issue 13 of the course;
#: ``benchmarks/gpu/nb09.sh`` measures eager, default and regional compilation again).
#: max-autotune's matmul autotuning hit the H200's shared-memory limits on some candidates.
H200_TRAIN_STEP = [
    ModeResult("eager", 0.0, 30.6, "H200, 2026-12-01"),
    ModeResult("torch.compile (default)", 24.5, 24.6, "H200, 2026-12-01"),
    ModeResult("max-autotune-no-cudagraphs", 347.0, 24.7, "H200, 2026-12-01"),
]


def plot_compile_tradeoff(modes: list[ModeResult], title: str = "", max_steps: float | None = None) -> "Figure":
    """Two panels: each mode's compile time against its step time, and the total time of ``n``
    steps (compile + n × step) for each mode, with the step where each compiled mode overtakes
    the first (eager) one marked."""
    import matplotlib.pyplot as plt

    if not modes:
        raise ValueError("no modes to plot")
    base = modes[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for m in modes:
        a.scatter(m.compile_s, m.step_ms, s=50)
        a.annotate(m.name, (m.compile_s, m.step_ms), textcoords="offset points", xytext=(5, 5), fontsize=8)
    a.set_xlabel("compile time (s)")
    a.set_ylabel("step time (ms)")
    a.set_title("compile time vs step time")
    evens = [break_even_steps(m.compile_s, base.step_ms, m.step_ms) for m in modes[1:]]
    finite = [e for e in evens if math.isfinite(e)]
    top = max_steps or (2.0 * max(finite) if finite else 1000.0)
    steps = [top * i / 200 for i in range(201)]
    for m, e in zip(modes, [None] + evens):
        b.plot(steps, [m.total_s(n) / 60 for n in steps], label=m.name)
        if e is not None and math.isfinite(e) and e <= top:
            b.axvline(e, ls=":", lw=0.8, color="gray")
            b.annotate(f"pays after {e:,.0f} steps", (e, m.total_s(e) / 60), fontsize=8,
                       textcoords="offset points", xytext=(4, -12))
    b.set_xlabel("training steps")
    b.set_ylabel("total time (min)")
    b.set_title("when compiling pays")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Custom operators: a fresh name per registration
# ----------------------------------------------------------------------------------------------
_namespaces = itertools.count()


def fresh_namespace(prefix: str = "nb09") -> str:
    """A library namespace no operator has used yet in this process (``nb09_0``, ``nb09_1`` …):
    ``torch.library`` refuses to define the same operator name twice, so a cell that registers
    operators can be run again, and every check registers its own."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ValueError(f"a namespace prefix must be a Python identifier, got {prefix!r}")
    return f"{prefix}_{next(_namespaces)}"
