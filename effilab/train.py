"""Training helpers shared by notebooks 02 (mixed precision), 03 (checkpointing), 04 (accumulation).

* :func:`train` — a small AdamW training loop with a progress bar, precision switch
  (``"fp32" | "tf32" | "bf16" | "fp16"``), gradient accumulation, per-step timing; returns a
  :class:`TrainLog` (losses, step times, tokens/s, MFU, peak memory) with ``.plot()`` and
  ``.summary()``.
* :func:`train_step` — one optimizer step over a list of micro-batches (the body of :func:`train`),
  usable on its own with :func:`step_time`.
* :func:`mfu` — model FLOPs utilization: achieved model FLOP/s over the device's peak. The
  definition is PaLM's (Chowdhery et al. 2022, appendix B); FLOPs per token come from
  :meth:`effilab.models.GPT.flops_per_token` (6N + 12 L H Q T; 6N is Kaplan et al. 2020).
* :func:`measure_memory_breakdown` / :func:`plot_memory_breakdown` — measured bytes of weights,
  gradients, optimizer state and activations, drawn next to the model of
  :func:`effilab.memory.training_memory`.

Everything runs on a CPU too (slowly); MFU is ``None`` there, as it is on GPUs whose peak rate
:mod:`effilab.device` does not know.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "PRECISIONS",
    "TrainLog",
    "train",
    "train_step",
    "evaluate",
    "precision_context",
    "autocast_context",
    "make_optimizer",
    "param_groups",
    "mfu",
    "step_time",
    "MemoryBreakdown",
    "measure_memory_breakdown",
    "plot_memory_breakdown",
]

#: fp32: plain float32 matmuls (TF32 off). tf32: float32 tensors, matmuls on tensor cores in TF32.
#: bf16 / fp16: autocast to that type (fp16 also uses a GradScaler). Weights stay fp32 in all four.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32", "highest": "fp32",
    "tf32": "tf32", "high": "tf32",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
}
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What effilab.device.flops_peak calls the peak that applies to each precision.
_PEAK_DTYPE: dict[str, Any] = {"fp32": torch.float32, "tf32": "tf32", "bf16": torch.bfloat16,
                               "fp16": torch.float16}


def _precision(p: Any) -> str:
    """Normalise ``None``/``torch.float32``/``"bf16"``/... to one of :data:`PRECISIONS`."""
    if p is None:
        return "fp32"
    key = str(p).lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown precision {p!r}; use one of {', '.join(PRECISIONS)} "
                         "(or torch.float32 / torch.bfloat16 / torch.float16)")
    return _ALIASES[key]


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------- precision
@contextlib.contextmanager
def autocast_context(precision: Any, device_type: str):
    """``torch.autocast`` for ``"bf16"``/``"fp16"``, nothing for ``"fp32"``/``"tf32"``."""
    p = _precision(precision)
    if p in _AUTOCAST_DTYPE:
        with torch.autocast(device_type=device_type, dtype=_AUTOCAST_DTYPE[p]):
            yield
    else:
        yield


@contextlib.contextmanager
def precision_context(precision: Any, device_type: str | None = None):
    """Float32-matmul precision for the block (TF32 only for ``"tf32"``), restored on exit.

    For ``"bf16"``/``"fp16"`` it also enables autocast when ``device_type`` is given. Uses
    ``torch.set_float32_matmul_precision`` ("highest" = true fp32, "high" = TF32 allowed), which
    works on every torch version the course supports.
    """
    p = _precision(precision)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if p == "tf32" else "highest")
    try:
        if device_type is not None:
            with autocast_context(p, device_type):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


# ----------------------------------------------------------------------------------- optimizer
def make_optimizer(
    model: torch.nn.Module,
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, LayerNorm or 1-D parameters).

    ``fused=None`` uses PyTorch's fused CUDA kernel when the parameters are on a GPU.
    """
    groups = param_groups(model, weight_decay)
    if fused is None:
        first = next((p for g in groups for p in g["params"]), None)
        fused = first is not None and first.is_cuda
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def param_groups(model: torch.nn.Module, weight_decay: float = 0.1) -> list[dict]:
    """Two parameter groups: matrices (embeddings, Linear weights) with ``weight_decay``, and
    everything 1-D (biases, LayerNorm) without; empty groups are dropped."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


# ----------------------------------------------------------------------------------- one step
def _call_model(model, batch, reduction: str = "mean"):
    x, y = batch[0], batch[1]
    mask = batch[2] if len(batch) > 2 else None
    return model(x, y, loss_mask=mask, reduction=reduction)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Sequence[torch.Tensor]],
    *,
    precision: Any = "fp32",
    scaler: "torch.amp.GradScaler | None" = None,
    grad_clip: float | None = 1.0,
) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` (gradient accumulation when there are several).

    Each micro-batch is ``(x, y)`` or ``(x, y, mask)``. The gradient is that of the loss of the
    whole batch:

    * without masks every micro-batch has the same number of tokens, so each mean loss is divided
      by the number of micro-batches;
    * with masks (uneven lengths) each micro-batch's *summed* token loss is divided by the token
      count of all micro-batches together (``reduction="sum"``), so every token weighs the same —
      averaging per-micro-batch means would over-weight the tokens of short micro-batches.

    The forward runs under autocast for bf16/fp16; the whole step (backward included) under the
    float32-matmul precision of ``precision``. Returns the batch loss, detached (no host sync).
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    p = _precision(precision)
    dev_type = _device_of(model).type
    masked = [len(b) > 2 and b[2] is not None for b in micro_batches]
    if any(masked) and not all(masked):
        raise ValueError("either every micro-batch has a loss mask or none has")
    optimizer.zero_grad(set_to_none=True)
    total_loss = None
    with precision_context(p):
        if all(masked):
            n_total = sum(b[2].sum() for b in micro_batches).clamp(min=1)  # tensor, no host sync
        for b in micro_batches:
            with autocast_context(p, dev_type):
                if all(masked):
                    _, loss_sum, _ = _call_model(model, b, reduction="sum")
                    loss = loss_sum / n_total
                else:
                    _, loss = _call_model(model, b)
                    loss = loss / len(micro_batches)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return total_loss


# ----------------------------------------------------------------------------------- the log
@dataclass
class TrainLog:
    """What :func:`train` measured.

    Attributes:
        losses: training loss of every optimizer step (the whole batch, all micro-batches).
        step_times_s: wall time of every step in seconds (the GPU is synchronized each step).
        tokens: tokens (mask-counted for padded batches) of every step.
        flops_per_token: model FLOPs per token (``model.flops_per_token``; 6N if it has none).
        timing_warmup: number of first steps left out of ``tokens_per_s`` and ``mfu``.
        tokens_per_s: median over the timed steps of tokens / step time.
        mfu: model FLOPs utilization against the datasheet peak for this precision (fp32 peak
            for "fp32", TF32 for "tf32", bf16/fp16 tensor-core peak otherwise); None on CPU and
            on unknown GPUs.
        peak_memory_bytes: ``torch.cuda.max_memory_allocated`` over the run (None on CPU).
        val_losses: ``(step, loss)`` pairs when a validation set was given.
    """

    losses: list[float] = field(default_factory=list, repr=False)
    step_times_s: list[float] = field(default_factory=list, repr=False)
    tokens: list[int] = field(default_factory=list, repr=False)
    flops_per_token: float = 0.0
    precision: str = "fp32"
    device: str = "cpu"
    device_name: str = ""
    batch_size: int = 0
    block_size: int = 0
    grad_accum: int = 1
    lr: float = 0.0
    n_params: int = 0
    timing_warmup: int = 0
    tokens_per_s: float = 0.0
    mfu: float | None = None
    peak_memory_bytes: int | None = None
    val_losses: list[tuple[int, float]] = field(default_factory=list, repr=False)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def median_step_s(self) -> float:
        timed = self.step_times_s[self.timing_warmup:] or self.step_times_s
        return statistics.median(timed) if timed else math.nan

    @property
    def tflops(self) -> float:
        """Achieved model TFLOP/s (tokens/s times FLOPs per token)."""
        return self.tokens_per_s * self.flops_per_token / 1e12

    def final_loss(self, last: int = 10) -> float:
        """Mean training loss of the last ``last`` steps (less noisy than the very last one)."""
        tail = self.losses[-last:]
        return sum(tail) / len(tail) if tail else math.nan

    def summary(self) -> str:
        """A few lines of text: loss, speed, utilization, memory."""
        lines = [
            f"{self.steps} steps, {self.precision} on {self.device_name or self.device}: "
            f"batch {self.batch_size} x {self.block_size} tokens"
            + (f" x {self.grad_accum} micro-batches" if self.grad_accum > 1 else "")
            + f", {self.n_params / 1e6:.3g} M parameters",
            f"  loss {self.losses[0]:.4f} -> {self.final_loss():.4f} (mean of the last "
            f"{min(10, self.steps)} steps)"
            if self.losses else "  no steps",
            f"  step time {self.median_step_s * 1e3:.4g} ms (median, first {self.timing_warmup} "
            f"steps left out), {self.tokens_per_s:,.0f} tokens/s, {self.tflops:.3g} model TFLOP/s",
            "  MFU " + (f"{100 * self.mfu:.1f} %" if self.mfu is not None
                        else "n/a (no known peak for this device)"),
        ]
        if self.peak_memory_bytes is not None:
            lines.append(f"  peak memory {self.peak_memory_bytes / 2**30:.2f} GiB")
        if self.val_losses:
            lines.append(f"  validation loss {self.val_losses[-1][1]:.4f} at step {self.val_losses[-1][0]}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, ax: "Axes | None" = None, *, label: str | None = None, smooth: float = 0.0,
             **kwargs) -> "Axes":
        """Loss against step (and validation points if any). ``smooth`` in [0, 1) applies an
        exponential moving average, e.g. 0.9. Draw several runs into one ``ax`` to compare them."""
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        ys = list(self.losses)
        if smooth:
            if not 0.0 <= smooth < 1.0:
                raise ValueError("smooth must be in [0, 1)")
            acc, out = None, []
            for v in ys:
                acc = v if acc is None else smooth * acc + (1 - smooth) * v
                out.append(acc)
            ys = out
        label = label if label is not None else self.precision
        (line,) = ax.plot(range(1, len(ys) + 1), ys, label=label, **kwargs)
        if self.val_losses:
            s, v = zip(*self.val_losses)
            ax.plot(s, v, "o--", color=line.get_color(), label=f"{label} (val)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats / byte)")
        ax.legend()
        return ax


# ----------------------------------------------------------------------------------- MFU
def mfu(tokens_per_s: float, flops_per_token: float, info=None, dtype: Any = torch.bfloat16) -> float | None:
    """Model FLOPs utilization: ``tokens_per_s * flops_per_token / peak FLOP/s`` (a fraction).

    The PaLM paper's definition (Chowdhery et al. 2022): only the FLOPs the model needs count
    (no recomputation, no padding tricks), against the device's datasheet peak for ``dtype``
    (``torch.bfloat16``, ``torch.float16``, ``torch.float32`` or ``"tf32"``; also ``"bf16"``...).
    ``info`` is an :class:`effilab.device.DeviceInfo` (default: the current device). Returns
    ``None`` on a CPU or on a GPU with no known peak for that dtype.
    """
    from effilab import device as _dev

    info = _dev.info() if info is None else info
    if getattr(info, "kind", "cpu") != "cuda" or getattr(info, "peak", None) is None:
        return None
    if isinstance(dtype, str):
        dtype = _PEAK_DTYPE[_precision(dtype)]
    peak_tflops = _dev.flops_peak(info.peak, dtype)
    if not peak_tflops:
        return None
    return float(tokens_per_s) * float(flops_per_token) / (peak_tflops * 1e12)


# ----------------------------------------------------------------------------------- training
def _progress(total: int, disable: bool, desc: str):
    # tqdm.auto warns (to stderr) in a kernel without ipywidgets; graded cells must not write to
    # stderr, so import it quietly. file=sys.stdout for the console bar, for the same reason.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(total=total, disable=disable, desc=desc, file=sys.stdout, dynamic_ncols=True)


def _move(batch, device: torch.device):
    out = []
    for t in batch:
        if t is None:
            out.append(None)
        elif device.type == "cuda" and t.device.type == "cpu":
            out.append(t.pin_memory().to(device, non_blocking=True))
        else:
            out.append(t.to(device))
    return tuple(out)


def _count_tokens(batch) -> int:
    if len(batch) > 2 and batch[2] is not None:
        return int(batch[2].sum())
    return int(batch[1].numel())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: torch.Tensor,
    *,
    batch_size: int,
    block_size: int | None = None,
    batches: int = 8,
    seed: int = 1234,
    device: Any = None,
    precision: Any = "fp32",
) -> float:
    """Mean loss over ``batches`` random batches of ``data`` (eval mode, no grad; the same
    batches for the same ``seed``)."""
    from effilab.data import get_batch

    dev = torch.device(device) if device is not None else _device_of(model)
    block_size = block_size or model.config.block_size
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        with precision_context(precision, dev.type):
            for _ in range(batches):
                x, y = get_batch(data, batch_size, block_size, generator=g, device=dev)
                total += float(model(x, y)[1])
    finally:
        model.train(was_training)
    return total / batches


def train(
    model: torch.nn.Module,
    data: torch.Tensor | None,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    block_size: int | None = None,
    device: Any = None,
    precision: Any = "fp32",
    dtype: Any = None,
    grad_accum: int = 1,
    log_every: int = 10,
    seed: int = 0,
    progress: bool = True,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    optimizer: "torch.optim.Optimizer | Callable[[list], torch.optim.Optimizer] | None" = None,
    batch_fn: Callable[[torch.Generator], tuple] | None = None,
    val_data: torch.Tensor | None = None,
    eval_every: int = 0,
    eval_batches: int = 8,
    timing_warmup: int | None = None,
    desc: str | None = None,
) -> TrainLog:
    """Train ``model`` for ``steps`` optimizer steps and measure how fast it went.

    Args:
        model: a module called as ``model(x, y, loss_mask=..., reduction=...)`` returning
            ``(logits, loss)`` like :class:`effilab.models.GPT`. Moved to ``device``; trained in place.
        data: a 1-D uint8 tensor of bytes (see :mod:`effilab.data`); batches are random windows.
        steps: optimizer steps.
        batch_size: sequences per micro-batch; a step sees ``batch_size * grad_accum`` sequences.
        lr: AdamW learning rate (constant after ``warmup_steps`` of linear warm-up).
        block_size: sequence length (default ``model.config.block_size``).
        device: default CUDA if available, else CPU.
        precision: ``"fp32"`` (TF32 off), ``"tf32"``, ``"bf16"`` or ``"fp16"`` autocast (fp16 with
            a GradScaler); ``dtype=torch.bfloat16`` etc. is accepted as an alias.
        grad_accum: micro-batches per step (see :func:`train_step` for the loss scaling).
        log_every: refresh the progress bar's loss / tokens/s every this many steps.
        seed: seeds the batch sampler and torch's global RNG (dropout), so a run is reproducible
            on one machine (see :mod:`effilab.data` on why not across Python versions).
        progress: show a tqdm bar (written to stdout, never stderr); False for silence.
        optimizer: an optimizer built on ``model``'s parameters, or a callable taking the
            parameter groups (decay / no-decay) and returning one; default AdamW (``make_optimizer``).
        batch_fn: ``batch_fn(generator) -> (x, y)`` or ``(x, y, mask)`` to draw micro-batches
            yourself (e.g. :func:`effilab.data.variable_length_batch`); ``data`` may then be None.
        val_data, eval_every, eval_batches: evaluate on ``val_data`` every ``eval_every`` steps
            and at the end (outside the timed region).
        timing_warmup: first steps excluded from tokens/s and MFU (default ``min(5, steps // 5)``:
            the first steps pay for cuBLAS/allocator start-up).

    Returns:
        :class:`TrainLog`. Each step is timed from the copy of its batches to the device to the
        end of the optimizer step (the GPU is synchronized on both sides, and the loss is read
        back every step); drawing the batches on the CPU and evaluation are not timed.
    """
    from effilab.data import get_batch

    if steps < 1 or batch_size < 1 or grad_accum < 1:
        raise ValueError("steps, batch_size and grad_accum must be >= 1")
    if dtype is not None:
        if precision not in (None, "fp32") and _precision(precision) != _precision(dtype):
            raise ValueError(f"precision={precision!r} and dtype={dtype!r} disagree; pass one")
        precision = dtype
    p = _precision(precision)
    dev = torch.device(device) if device is not None else _default_device()
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if batch_fn is None and data is None:
        raise ValueError("give data (a 1-D byte tensor) or a batch_fn")
    cfg = getattr(model, "config", None)
    block_size = int(block_size or getattr(cfg, "block_size", 0))
    if batch_fn is None and block_size < 1:
        raise ValueError("block_size is needed when the model has no config.block_size")

    model.to(dev)
    model.train()
    torch.manual_seed(seed)  # dropout masks come from the global RNG
    g = torch.Generator(device="cpu").manual_seed(int(seed))

    def draw():
        if batch_fn is not None:
            return tuple(batch_fn(g))
        return get_batch(data, batch_size, block_size, generator=g)

    if optimizer is None:
        opt = make_optimizer(model, lr, weight_decay=weight_decay, betas=betas)
    elif isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = optimizer(param_groups(model, weight_decay))
    base_lrs = [group.get("lr", lr) for group in opt.param_groups]
    scaler = torch.amp.GradScaler(dev.type) if p == "fp16" else None

    flops_fn = getattr(model, "flops_per_token", None)
    n_params = sum(t.numel() for t in model.parameters())
    log = TrainLog(precision=p, device=str(dev), batch_size=batch_size, block_size=block_size,
                   grad_accum=grad_accum, lr=lr, n_params=n_params)
    if timing_warmup is None:
        timing_warmup = min(5, steps // 5)
    log.timing_warmup = int(min(timing_warmup, steps - 1))
    if dev.type == "cuda":
        log.device_name = torch.cuda.get_device_name(dev)
        torch.cuda.reset_peak_memory_stats(dev)

    bar = _progress(steps, not progress, desc or f"train {p}")
    try:
        for step in range(1, steps + 1):
            if warmup_steps and step <= warmup_steps:
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base * step / warmup_steps
            elif warmup_steps and step == warmup_steps + 1:
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base
            micro = [draw() for _ in range(grad_accum)]
            n_tok = sum(_count_tokens(b) for b in micro)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            micro = [_move(b, dev) for b in micro]
            loss = train_step(model, opt, micro, precision=p, scaler=scaler, grad_clip=grad_clip)
            loss_value = float(loss)  # waits for the step's kernels
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            if not log.flops_per_token:
                T = micro[0][0].shape[1]
                log.flops_per_token = float(flops_fn(T) if flops_fn is not None else 6 * n_params)
            log.losses.append(loss_value)
            log.step_times_s.append(dt)
            log.tokens.append(n_tok)
            if val_data is not None and eval_every and (step % eval_every == 0 or step == steps):
                log.val_losses.append((step, evaluate(model, val_data, batch_size=batch_size,
                                                      block_size=block_size, batches=eval_batches,
                                                      device=dev, precision=p)))
            bar.update(1)
            if progress and (step % max(1, log_every) == 0 or step == steps):
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{n_tok / dt:,.0f}", refresh=False)
    finally:
        bar.close()

    w = log.timing_warmup
    rates = [n / t for n, t in zip(log.tokens[w:], log.step_times_s[w:]) if t > 0]
    log.tokens_per_s = float(statistics.median(rates)) if rates else 0.0
    log.mfu = mfu(log.tokens_per_s, log.flops_per_token, dtype=_PEAK_DTYPE[p]) if dev.type == "cuda" else None
    if dev.type == "cuda":
        log.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev))
    return log


# ----------------------------------------------------------------------------------- timing
def step_time(fn: Callable[..., Any], *args: Any, warmup: int = 3, min_reps: int = 5,
              max_reps: int = 50, max_time_s: float = 5.0, **kwargs: Any):
    """Time a whole training step ``fn(*args, **kwargs)`` with :func:`effilab.bench.time_fn`.

    Defaults suit steps of milliseconds to seconds: a few warm-up calls, 5-50 timed ones, no L2
    flush (a step's working set is far larger than the L2 anyway). Returns a
    :class:`effilab.bench.Timing` (``.median_ms``).
    """
    from effilab.bench import time_fn

    kwargs.setdefault("flush_l2", False)
    return time_fn(fn, *args, warmup=warmup, min_reps=min_reps, max_reps=max_reps,
                   max_time_s=max_time_s, **kwargs)


# ----------------------------------------------------------------------------------- memory
class MemoryBreakdown(dict):
    """Measured bytes by part, with the keys of :func:`effilab.memory.training_memory`
    (``weights, grads, master_weights, optimizer, activations``), so it plots next to the model.

    Extra attributes: ``optimizer_scalars`` (bytes of 0-dim optimizer state such as Adam's step
    counters, left out of ``optimizer``), ``activation_method``, ``n_params``, ``device``.
    """

    optimizer_scalars: int = 0
    activation_method: str = ""
    n_params: int = 0
    device: str = "cpu"

    @property
    def total(self) -> float:
        return float(sum(self.values()))

    def __str__(self) -> str:
        from effilab.memory import format_bytes

        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.items())
        return f"{parts} (total {format_bytes(self.total)}; activations: {self.activation_method})"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def measure_memory_breakdown(
    model: torch.nn.Module,
    batch: Sequence[torch.Tensor],
    optimizer_factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: Any = None,
    *,
    precision: Any = "fp32",
    copy_model: bool = True,
) -> MemoryBreakdown:
    """Measure the memory of one training step, part by part, in bytes.

    Runs forward, backward and one optimizer step on a copy of ``model`` (``copy_model=False``
    to use the model itself, which is then updated) with ``batch = (x, y)`` or ``(x, y, mask)``:

    * ``weights``: bytes of the (unique) parameters;
    * ``grads``: bytes of the ``.grad`` tensors after backward;
    * ``optimizer``: bytes of the tensors in ``optimizer.state`` after the step, except 0-dim
      ones (Adam's step counters, reported as ``.optimizer_scalars``). For fp32 AdamW,
      weights + grads + optimizer = 4 + 4 + 8 = 16 bytes per parameter exactly;
    * ``activations``: on CUDA the growth of ``torch.cuda.memory_allocated`` across the forward
      (everything the forward leaves alive for backward: saved tensors, logits, loss, autocast's
      casted weight copies); on CPU :func:`effilab.memory.saved_activation_bytes` (tensors saved
      for backward, parameters excluded);
    * ``master_weights``: 0 (the parameters are the fp32 copy; autocast keeps no separate master).

    ``optimizer_factory(params)`` builds the optimizer (default ``torch.optim.AdamW(params)``).
    """
    dev = torch.device(device) if device is not None else _device_of(model)
    m = copy.deepcopy(model) if copy_model else model
    m.to(dev)
    m.train()
    batch = _move(tuple(batch), dev)
    params = list(m.parameters())
    factory = optimizer_factory or (lambda ps: torch.optim.AdamW(ps, lr=1e-3))
    opt = factory(params)
    opt.zero_grad(set_to_none=True)
    p = _precision(precision)
    out = MemoryBreakdown()
    out.n_params = sum(t.numel() for t in params)
    out.device = str(dev)

    weights = sum(_nbytes(t) for t in params)
    with precision_context(p):
        if dev.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            with autocast_context(p, dev.type):
                logits, loss = _call_model(m, batch)[:2]
            torch.cuda.synchronize(dev)
            activations = torch.cuda.memory_allocated(dev) - before
            out.activation_method = "cuda memory_allocated delta across the forward"
        else:
            from effilab.memory import saved_activation_bytes

            def fwd():
                with autocast_context(p, dev.type):
                    return _call_model(m, batch)[1]

            report = saved_activation_bytes(fwd, model=m)
            loss, logits = report.result, None
            activations = report.total_bytes
            out.activation_method = "saved_activation_bytes (tensors saved for backward)"
        loss.backward()
        del logits, loss
        grads = sum(_nbytes(t.grad) for t in params if t.grad is not None)
        opt.step()
    optimizer, scalars = 0, 0
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                if v.dim() == 0:
                    scalars += _nbytes(v)
                else:
                    optimizer += _nbytes(v)
    out.update(weights=float(weights), grads=float(grads), master_weights=0.0,
               optimizer=float(optimizer), activations=float(activations))
    out.optimizer_scalars = scalars
    if copy_model:
        del m, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def plot_memory_breakdown(
    measured: dict,
    model_formula: dict,
    ax: "Axes | None" = None,
    *,
    unit: str = "GiB",
    labels: tuple[str, str] = ("measured", "formula"),
) -> "Axes":
    """Stacked bars of a measured breakdown next to a modelled one
    (:func:`effilab.memory.training_memory`), through :func:`effilab.memory.plot_training_memory`."""
    from effilab.memory import plot_training_memory

    return plot_training_memory({labels[0]: dict(measured), labels[1]: dict(model_formula)},
                                ax=ax, unit=unit)
