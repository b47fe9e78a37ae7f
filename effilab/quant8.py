"""8-bit optimizer states for notebook 05: block-wise quantization in plain PyTorch, a reference
8-bit AdamW, and the memory accounting of a training step.

Everything here is *public* teaching material, in plain PyTorch. The graded exercises of the
notebook — the dynamic code map, the Triton quantization kernels, the fused 8-bit AdamW kernel and
the factored (Adafactor) second moment — are not solved here; the reference below is what the
checkers compare a fused kernel with.

Block-wise quantization (Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022, arXiv 2110.02861) cuts a flat tensor into blocks of ``B`` values; each
block keeps its absolute maximum ``N_b`` in fp32 and each value the index of the code nearest to
``x / N_b``::

    q_i = argmin_k |x_i / N_b - code[k]|          x̂_i = code[q_i] · N_b

``code`` is any sorted table of 256 values in [-1, 1]: a *linear* one (evenly spaced) or the
*dynamic* one of bitsandbytes (an exponent and a linear fraction, precise over seven decades).

The nearest-code rule, exactly (what the checkers of notebook 05 hold every kernel to): with the
fp32 midpoints ``mid_k = (code[k] + code[k+1]) / 2``, the index is the number of midpoints strictly
below ``s = x / N_b``. A value exactly on a midpoint therefore takes the *lower* code — the rule of
``torch.bucketize`` and of bitsandbytes' pure-PyTorch backend. A block of zeros has ``N_b = 0`` and
quantizes as ``s = 0``.

bitsandbytes keeps the state of its 8-bit optimizers in blocks of 256 (``BLOCKSIZE_2STATE`` in its
CUDA sources, ``blocksize = 256`` in ``Optimizer2State.init_state``); the paper used 2048. Tensors
with fewer than 4096 values keep 32-bit state (``min_8bit_size``).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable

import torch

__all__ = [
    "BLOCK_SIZE", "MIN_8BIT_SIZE", "STATE_KEYS", "linear_map", "midpoints", "n_blocks",
    "quantize_blockwise_torch", "dequantize_blockwise_torch", "new_8bit_state", "quantized_adamw_step",
    "Fused8bitAdamW", "state_bytes", "memory_breakdown", "quantization_report", "plot_code_maps",
    "plot_relative_error", "paged_optimizer_demo",
]

BLOCK_SIZE = 256  # values per absmax in bitsandbytes' 8-bit optimizers (the paper: 2048)
MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 state, as bitsandbytes' min_8bit_size
STATE_KEYS = ("m", "v", "m_absmax", "v_absmax")  # what a fused 8-bit AdamW step keeps per parameter


# ----------------------------------------------------------------------------------------------
# Code maps and the nearest-code rule
# ----------------------------------------------------------------------------------------------
def linear_map(signed: bool = True) -> torch.Tensor:
    """A *linear* 8-bit code: 256 sorted fp32 values, evenly spaced, with an exact 0.

    Signed: ``k / 127`` for k = -127 … 127 (255 values, the absmax int8 grid) and -1 once more, to
    make 256 entries. Unsigned: ``k / 255`` for k = 0 … 255. The step is 1/127 (1/255): any value
    below half a step of its block's absmax becomes 0 — the failure notebook 05 measures.
    """
    if signed:
        return torch.cat([torch.tensor([-1.0]), torch.arange(-127, 128, dtype=torch.float32) / 127])
    return torch.arange(256, dtype=torch.float32) / 255


def _check_code(code: torch.Tensor) -> None:
    if not isinstance(code, torch.Tensor) or code.dim() != 1 or code.numel() < 2:
        raise ValueError("code must be a 1-D tensor of sorted values (256 for 8 bits), e.g. "
                         "bitsandbytes.functional.create_dynamic_map(signed=True)")
    if bool((code[1:] < code[:-1]).any()):
        raise ValueError("code must be sorted ascending: the nearest-code search is a search in a sorted table")


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """The fp32 midpoints ``(code[k] + code[k+1]) / 2`` between neighbouring codes (255 for 8 bits)."""
    _check_code(code)
    c = code.float()
    return (c[:-1] + c[1:]) / 2


def n_blocks(n: int, blocksize: int) -> int:
    """Blocks of ``blocksize`` values that cover ``n`` values (the last one may be partial)."""
    return -(-int(n) // int(blocksize))


def _blocksize(n: int, blocksize: int | None) -> int:
    if blocksize is None:
        return max(1, int(n))  # one block: per-tensor absmax
    if int(blocksize) < 1:
        raise ValueError(f"blocksize must be >= 1 (or None for one block per tensor), got {blocksize}")
    return int(blocksize)


def _padded_blocks(x: torch.Tensor, bs: int) -> tuple[torch.Tensor, int]:
    """``x`` flattened, in fp32, zero-padded to whole blocks: (blocks × bs, n)."""
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    nb = max(1, n_blocks(n, bs))
    out = torch.zeros(nb * bs, dtype=torch.float32, device=x.device)
    out[:n] = flat
    return out.view(nb, bs), n


def quantize_blockwise_torch(x: torch.Tensor, code: torch.Tensor,
                             blocksize: int | None = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise quantization in plain PyTorch: ``(codes, absmax)``.

    ``codes``: uint8 of ``x``'s shape, the nearest-code index of each value (the rule of the module
    docstring); ``absmax``: fp32, one per block (``blocksize=None``: one for the whole tensor). The
    padding of the last block is zeros, so it never changes that block's absmax.
    """
    _check_code(code)
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=torch.uint8, device=x.device), torch.empty(0, device=x.device)
    bs = _blocksize(x.numel(), blocksize)
    blocks, n = _padded_blocks(x, bs)
    absmax = blocks.abs().amax(dim=1)
    s = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]  # a zero block: s = 0
    q = torch.bucketize(s, midpoints(code).to(s.device))  # the number of midpoints strictly below s
    return q.reshape(-1)[:n].to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise_torch(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                               blocksize: int | None = BLOCK_SIZE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``code[q] * absmax[block]`` in fp32, cast to ``dtype``, in ``q``'s shape."""
    n = q.numel()
    bs = _blocksize(n, blocksize)
    idx = torch.arange(n, device=q.device) // bs
    vals = code.float().to(q.device)[q.reshape(-1).long()] * absmax.float().to(q.device)[idx]
    return vals.to(dtype).view(q.shape)


# ----------------------------------------------------------------------------------------------
# The reference 8-bit AdamW step
# ----------------------------------------------------------------------------------------------
def new_8bit_state(p: torch.Tensor, block_size: int | None = BLOCK_SIZE) -> dict[str, torch.Tensor]:
    """Zero 8-bit state for ``p``: codes ``m``, ``v`` (uint8, ``p.numel()`` values) and one fp32
    absmax per block for each. A zero absmax dequantizes to 0 whatever the codes say."""
    n = p.numel()
    nb = 1 if block_size is None else n_blocks(n, block_size)
    z8 = lambda: torch.zeros(n, dtype=torch.uint8, device=p.device)  # noqa: E731
    z32 = lambda: torch.zeros(nb, dtype=torch.float32, device=p.device)  # noqa: E731
    return {"m": z8(), "v": z8(), "m_absmax": z32(), "v_absmax": z32()}


@torch.no_grad()
def quantized_adamw_step(p: torch.Tensor, g: torch.Tensor, state: dict, step: int, lr: float = 1e-3,
                         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2,
                         *, block_size: int | None = BLOCK_SIZE) -> None:
    """One AdamW step with 8-bit moments, in place: the algorithm of bitsandbytes' ``AdamW8bit``.

    ``state`` holds the code maps ``qmap_m`` (signed, for m) and ``qmap_v`` (unsigned, for v ≥ 0);
    the first call adds the 8-bit moments (:func:`new_8bit_state`). Each step, per value:

    1. dequantize ``m``, ``v`` (``code[q] * absmax``);
    2. update them in fp32: ``m = β1 m + (1 - β1) g``, ``v = β2 v + (1 - β2) g²``;
    3. decoupled weight decay, then the bias-corrected Adam step *from the fp32 moments*::

           p ← p (1 - lr·wd);    p ← p - lr/(1 - β1ᵗ) · m / (√v / √(1 - β2ᵗ) + eps)

    4. requantize ``m`` and ``v`` with a new absmax per block.

    Step 3 reads the fp32 moments, not the requantized ones: a small ``v`` that rounds to 0 would
    otherwise divide by ``eps`` alone. The decay comes first, as in ``torch.optim.AdamW`` and
    bitsandbytes' CPU path (its CUDA kernel decays after the step: the two orders differ by
    ``lr·wd`` times the step, far below the checkers' tolerance). ``block_size=None`` keeps one
    absmax per tensor; with ``linear_map`` codes this is the naive 8-bit Adam of the ablation.
    """
    if not (isinstance(step, int) and step >= 1):
        raise ValueError(f"step is the 1-based step count t of the bias correction, got {step!r}")
    for key in ("qmap_m", "qmap_v"):
        if key not in state:
            raise KeyError(f"state needs the code map {key!r} (a 256-value sorted fp32 tensor)")
    if "m" not in state:
        state.update(new_8bit_state(p, block_size))
    qm, qv = state["qmap_m"], state["qmap_v"]
    m = dequantize_blockwise_torch(state["m"], state["m_absmax"], qm, block_size)
    v = dequantize_blockwise_torch(state["v"], state["v_absmax"], qv, block_size)
    g32 = g.detach().reshape(-1).float()
    m = beta1 * m + (1 - beta1) * g32
    v = beta2 * v + (1 - beta2) * g32 * g32
    c1 = 1 - beta1 ** step
    c2 = math.sqrt(1 - beta2 ** step)
    p32 = p.detach().reshape(-1).float() * (1 - lr * weight_decay)
    p32 = p32 - (lr / c1) * m / (v.sqrt() / c2 + eps)
    p.copy_(p32.view(p.shape))
    for name, val, code in (("m", m, qm), ("v", v, qv)):
        q, absmax = quantize_blockwise_torch(val, code, block_size)
        state[name].copy_(q)
        state[name + "_absmax"].copy_(absmax)


# ----------------------------------------------------------------------------------------------
# A drop-in optimizer around any fused step function
# ----------------------------------------------------------------------------------------------
StepFn = Callable[..., None]


class Fused8bitAdamW(torch.optim.Optimizer):
    """AdamW with 8-bit moments, one call of ``step_fn`` per large parameter tensor.

    ``step_fn(p, grad, state, step, lr, beta1, beta2, eps, weight_decay)`` updates ``p`` and its
    8-bit ``state`` in place — the signature of notebook 05's fused Triton kernel and of
    :func:`quantized_adamw_step` (the default). ``qmap_m`` / ``qmap_v`` are the code maps (signed,
    unsigned), shared by every state (one copy per device). As in bitsandbytes, tensors with fewer
    than ``min_8bit_size`` values keep fp32 moments and take a plain AdamW step here.
    """

    def __init__(self, params: Iterable, qmap_m: torch.Tensor, qmap_v: torch.Tensor, step_fn: StepFn | None = None,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, min_8bit_size: int = MIN_8BIT_SIZE):
        if not 0.0 <= lr:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        _check_code(qmap_m)
        _check_code(qmap_v)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.step_fn = step_fn or quantized_adamw_step
        self.min_8bit_size = int(min_8bit_size)
        self._host_maps = (qmap_m.detach().float().cpu(), qmap_v.detach().float().cpu())
        self._maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _maps_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._maps:
            self._maps[key] = tuple(t.to(device) for t in self._host_maps)
        return self._maps[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for hp in self.param_groups:
            b1, b2 = hp["betas"]
            for param in (q for q in hp["params"] if q.grad is not None):
                st = self.state[param]
                st["step"] = st.get("step", 0) + 1
                args = (st["step"], hp["lr"], b1, b2, hp["eps"], hp["weight_decay"])
                if param.numel() >= self.min_8bit_size:
                    if "qmap_m" not in st:
                        st["qmap_m"], st["qmap_v"] = self._maps_on(param.device)
                    self.step_fn(param.data, param.grad, st, *args)
                else:
                    self._fp32_step(param, st, *args)
        return loss

    @staticmethod
    def _fp32_step(p, state, t, lr, b1, b2, eps, wd) -> None:
        """Plain AdamW with fp32 moments (the small tensors), in torch.optim.AdamW's order."""
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        g = p.grad.float()
        state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        p32 = p.data.float().mul_(1 - lr * wd)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
        p32.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1 ** t))
        p.data.copy_(p32)


# ----------------------------------------------------------------------------------------------
# Memory accounting
# ----------------------------------------------------------------------------------------------
def _storage_key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr()), st.nbytes()


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors, each storage counted once (bitsandbytes and
    :class:`Fused8bitAdamW` share one code map between all parameters); 0-dim step counters are left out."""
    seen: dict = {}
    for st in optimizer.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                key, nbytes = _storage_key(v)
                seen[key] = nbytes
    return int(sum(seen.values()))


def memory_breakdown(model: torch.nn.Module, optimizer_factory: Callable[[list], torch.optim.Optimizer],
                     batch: tuple[torch.Tensor, torch.Tensor], steps: int = 1) -> dict[str, float]:
    """Measured bytes of one training step's model state: ``weights``, ``grads``, ``optimizer``.

    Runs ``steps`` forward/backward/step on a copy of ``model`` with ``optimizer_factory(params)``
    and counts unique storages (the keys of :func:`effilab.memory.training_memory`, so the result
    plots with :func:`effilab.memory.plot_training_memory`). Activations are not counted here
    (notebook 03 measures them)."""
    m = copy.deepcopy(model)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = optimizer_factory(params)
    x, y = batch
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _, loss = m(x, y)
        loss.backward()
        opt.step()
    weights = {_storage_key(p)[0]: _storage_key(p)[1] for p in params}
    grads = {_storage_key(p.grad)[0]: _storage_key(p.grad)[1] for p in params if p.grad is not None}
    return {"weights": float(sum(weights.values())), "grads": float(sum(grads.values())),
            "optimizer": float(state_bytes(opt)), "n_params": float(sum(p.numel() for p in params))}


def quantization_report(x: torch.Tensor, maps: dict[str, tuple[torch.Tensor, int | None]]) -> list[dict[str, Any]]:
    """How well each (code, blocksize) keeps the values of ``x`` (e.g. Adam's ``v``).

    Per entry ``name: (code, blocksize)``: the median relative error over the nonzero values, the
    fraction of nonzero values that became exactly 0, and the relative error of ``1/√x`` (what
    Adam divides by) at its median."""
    rows = []
    nz = x.reshape(-1) != 0
    for name, (code, bs) in maps.items():
        q, absmax = quantize_blockwise_torch(x, code, bs)
        xh = dequantize_blockwise_torch(q, absmax, code, bs).reshape(-1)
        xv, hv = x.reshape(-1).float()[nz], xh[nz]
        rel = ((hv - xv).abs() / xv.abs())
        zeroed = float((hv == 0).float().mean()) if xv.numel() else 0.0
        rows.append({"name": name, "median_rel_error": float(rel.median()) if rel.numel() else 0.0,
                     "zeroed": zeroed})
    return rows


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------
def plot_code_maps(maps: dict[str, torch.Tensor], ax=None):
    """The positive values of each code on a log axis: where a code can represent numbers."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.2 + 0.4 * len(maps)), layout="constrained")
    for i, (name, code) in enumerate(maps.items()):
        pos = code[code > 0].double()
        ax.scatter(pos, [i] * pos.numel(), marker="|", s=200, label=name)
    ax.set_xscale("log")
    ax.set_yticks(range(len(maps)))
    ax.set_yticklabels(list(maps))
    ax.set_xlabel("code value (positive half), log scale")
    ax.set_ylim(-0.7, len(maps) - 0.3)
    return ax


def plot_relative_error(maps: dict[str, torch.Tensor], ax=None, lo: float = 1e-8):
    """Relative round-trip error of a value ``s ∈ (0, 1]`` (its block's absmax is 1) for each code."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    s = torch.logspace(math.log10(lo), 0, 4000)
    for name, code in maps.items():
        q = torch.bucketize(s, midpoints(code))
        err = ((code[q] - s).abs() / s).clamp(max=1.0)
        ax.plot(s, err, label=name, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("value / block absmax")
    ax.set_ylabel("relative error after 8 bits")
    ax.legend(fontsize=8)
    return ax


# ----------------------------------------------------------------------------------------------
# Paged optimizers under memory pressure (GPU only)
# ----------------------------------------------------------------------------------------------
def _time_steps(opt, steps: int) -> float:
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    opt.step()  # the first step allocates the state
    ev[0].record()
    for _ in range(steps):
        opt.step()
    ev[1].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1]) / steps


def paged_optimizer_demo(n_params: int = 2 ** 27, steps: int = 3, log=print) -> dict[str, Any]:
    """AdamW8bit against PagedAdamW8bit when the GPU has no room left for the optimizer state.

    Fills the GPU with a filler tensor so that the weights and gradients fit but only half of the
    8-bit state (2 bytes per value) would: ``AdamW8bit`` allocates its state with the caching
    allocator and runs out of memory; ``PagedAdamW8bit`` allocates it in CUDA unified memory
    (``cudaMallocManaged``), which the driver pages out to host RAM under pressure and back on
    access, so the step runs — slower, paying for page migrations. Then the same steps without
    pressure. Frees everything it took, whatever happens; returns what it measured (ms per step).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("paged_optimizer_demo needs a CUDA GPU (unified memory paging)")
    import bitsandbytes as bnb

    out: dict[str, Any] = {"n_params": n_params}
    p = torch.nn.Parameter(torch.randn(n_params, device="cuda"))
    p.grad = torch.randn_like(p) * 1e-2
    need = 2 * n_params + 8 * n_blocks(n_params, BLOCK_SIZE)
    try:
        out.update(_under_pressure(bnb, p, need, steps))
    except Exception as exc:  # a GPU shared with others, fragmentation…: report it, never fail the notebook
        out["pressure_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    torch.cuda.empty_cache()
    out["paged_ms"] = _time_steps(bnb.optim.PagedAdamW8bit([p], lr=1e-4), steps)
    out["adamw8bit_ms"] = _time_steps(bnb.optim.AdamW8bit([p], lr=1e-4), steps)
    del p
    torch.cuda.empty_cache()
    log(f"{n_params / 1e6:.0f} M parameters, 8-bit state {need / 2**20:.0f} MiB")
    if "pressure_error" in out:
        log(f"  could not set up the memory pressure: {out['pressure_error']}")
    else:
        log(f"  under pressure ({out['free_for_state_bytes'] / 2**20:.0f} MiB left on the GPU):")
        log(f"    AdamW8bit:       {out['adamw8bit_under_pressure']}")
        log(f"    PagedAdamW8bit:  {out['paged_ms_under_pressure']:.2f} ms/step")
    log(f"  without pressure: PagedAdamW8bit {out['paged_ms']:.2f} ms/step, AdamW8bit {out['adamw8bit_ms']:.2f} ms/step")
    return out


def _under_pressure(bnb, p: torch.nn.Parameter, need: int, steps: int) -> dict[str, Any]:
    """Both optimizers with only need / 2 bytes free on the GPU (a filler takes the rest)."""
    res: dict[str, Any] = {}
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(max(0, free - need // 2), dtype=torch.uint8, device="cuda")
    try:
        res["free_for_state_bytes"] = int(torch.cuda.mem_get_info()[0])
        try:
            _time_steps(bnb.optim.AdamW8bit([p], lr=1e-4), 1)
            res["adamw8bit_under_pressure"] = "ran (the allocator found room)"
        except torch.OutOfMemoryError:
            res["adamw8bit_under_pressure"] = "out of memory"
        torch.cuda.empty_cache()
        res["paged_ms_under_pressure"] = _time_steps(bnb.optim.PagedAdamW8bit([p], lr=1e-4), steps)
    finally:
        del filler
        torch.cuda.empty_cache()
    return res
