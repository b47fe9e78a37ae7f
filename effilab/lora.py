"""Low-rank adapters around the course GPT: the arithmetic, model surgery, a fine-tune, and peft.

Notebook 06 builds LoRA, DoRA and QLoRA layers itself; this module holds what is *not* an
exercise: counting parameters and bytes, putting any adapter layer into a GPT, a deterministic
fine-tune loop, the small pretrained base model that the fine-tunes start from, and bridges to
`peft <https://github.com/huggingface/peft>`_, the library the notebook compares against.

Papers
------
* LoRA: Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen (2021), "LoRA: Low-Rank Adaptation of
  Large Language Models": ``h = W x + (α / r) · B A x`` with A (r × d_in), B (d_out × r), B = 0 at
  the start, W frozen.
* rsLoRA: Kalajdzievski (2023), "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA":
  the scale α / √r keeps the update's size independent of the rank.
* DoRA: Liu, Wang, Yin, Molchanov, Wang, Cheng & Chen (2024), "DoRA: Weight-Decomposed Low-Rank
  Adaptation": ``W' = m · (W + s B A) / ‖W + s B A‖`` (row norms), the norm treated as a constant.
* QLoRA: Dettmers, Pagnoni, Holtzman & Zettlemoyer (2023): LoRA on a frozen NF4 base
  (:mod:`effilab.nf4`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = ["TARGETS", "lora_params", "lora_scaling", "finetune_memory", "target_linears", "adapt",
           "trainable_parameters", "peft_lora", "load_tiny_base", "save_tiny_base", "pretrain_tiny_base",
           "pretraining_data", "finetune_data", "finetune", "eval_loss", "build_gpt", "measure_step", "BASE_FILE", "FINETUNE_FILE"]

#: The names of the Linear layers inside a course GPT block (attn.c_attn, attn.c_proj, mlp.c_fc,
#: mlp.c_proj): adapting all of them is what QLoRA recommends ("every linear layer"); the lm head
#: (tied to the token embedding) stays out.
TARGETS = ("c_attn", "c_proj", "c_fc")
BASE_FILE = Path(__file__).resolve().parent / "assets" / "gpt_tiny_base.pt"
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # NF4 codes + 8-bit absmax + fp32 absmax2 (double quantization)


# ----------------------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------------------
def lora_params(d_in: int, d_out: int, r: int) -> int:
    """Trainable parameters of one rank-``r`` adapter on a d_out × d_in weight: r · (d_in + d_out)."""
    if min(d_in, d_out, r) <= 0:
        raise ValueError(f"d_in, d_out and r must be positive, got {d_in}, {d_out}, {r}")
    return r * (d_in + d_out)


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """The factor on B A: α / r (LoRA) or α / √r (rsLoRA)."""
    if r <= 0:
        raise ValueError(f"the rank r must be positive, got {r}")
    return alpha / math.sqrt(r) if rslora else alpha / r


def finetune_memory(n_params: float, n_adapted: float = 0.0, n_adapter: float = 0.0, method: str = "full",
                    activation_bytes: float = 0.0) -> dict[str, float]:
    """Bytes of one fine-tuning step by part, in the accounting of :func:`effilab.memory.training_memory`.

    * ``"full"``: every parameter trains in mixed precision: bf16 weights and grads, fp32 master
      weights and Adam moments — 2 + 2 + 4 + 8 = 16 bytes per parameter;
    * ``"lora"``: the ``n_params`` base weights stay in bf16 (2 B each) and get no gradient or
      optimizer state; the ``n_adapter`` adapter parameters are trained in fp32 (as peft does by
      default): 4 + 4 + 8 = 16 bytes each;
    * ``"qlora"``: the ``n_adapted`` weights of the adapted Linear layers are stored in NF4 with
      double quantization (4.127 bits each), the rest of the base in bf16, adapters as in LoRA.

    The optimizer state of Adam is the dominant term of full fine-tuning; LoRA removes it, QLoRA
    also shrinks the frozen weights. Activations (``activation_bytes``) are the same for all three.
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method is 'full', 'lora' or 'qlora', got {method!r}")
    if min(n_params, n_adapted, n_adapter, activation_bytes) < 0:
        raise ValueError("counts and bytes must be >= 0")
    if n_adapted > n_params:
        raise ValueError(f"n_adapted ({n_adapted}) cannot exceed n_params ({n_params})")
    if method == "full":
        return {"weights": 2.0 * n_params, "grads": 2.0 * n_params, "master_weights": 4.0 * n_params,
                "optimizer": 8.0 * n_params, "activations": float(activation_bytes)}
    frozen = 2.0 * n_params if method == "lora" else 2.0 * (n_params - n_adapted) + NF4_BITS / 8 * n_adapted
    return {"weights": frozen + 4.0 * n_adapter, "grads": 4.0 * n_adapter, "master_weights": 0.0,
            "optimizer": 8.0 * n_adapter, "activations": float(activation_bytes)}


# ----------------------------------------------------------------------------------------------
# Model surgery
# ----------------------------------------------------------------------------------------------
def target_linears(model: nn.Module, targets: Iterable[str] = TARGETS) -> list[tuple[str, nn.Linear]]:
    """(qualified name, layer) of every ``nn.Linear`` whose own name is one of ``targets``."""
    targets = tuple(targets)
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and name.rpartition(".")[2] in targets]


def adapt(model: nn.Module, make: Callable[[nn.Linear], nn.Module], targets: Iterable[str] = TARGETS) -> nn.Module:
    """Replace each target Linear by ``make(linear)`` in place and freeze every other parameter.

    ``make`` builds the adapter layer (a LoRA, DoRA or QLoRA layer wrapping the Linear); what it
    marks ``requires_grad`` is what trains. Returns ``model``. Raises ValueError when no layer
    matches ``targets`` (a typo would otherwise train nothing).
    """
    found = target_linears(model, targets)
    if not found:
        raise ValueError(f"no nn.Linear named one of {tuple(targets)} in {type(model).__name__}")
    model.requires_grad_(False)
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(linear))
    return model


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    """{name: number of elements} of the parameters that require a gradient."""
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def peft_lora(model: nn.Module, r: int = 8, alpha: float = 16, *, targets: Iterable[str] = TARGETS,
              use_dora: bool = False, use_rslora: bool = False, fp32_adapters: bool = True) -> nn.Module:
    """``model`` wrapped by peft's ``LoraModel`` (in place), adapters on ``targets``, dropout 0.

    ``fp32_adapters`` upcasts the adapters of a bf16/fp16 model to fp32, which is what
    ``peft.get_peft_model`` does by default (``autocast_adapter_dtype=True``); False keeps them in
    the base layer's dtype (the fastest peft configuration). peft is imported here, on first use:
    it takes seconds to import.
    """
    from peft import LoraConfig, LoraModel
    from peft.tuners.tuners_utils import cast_adapter_dtype

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none",
                     use_dora=use_dora, use_rslora=use_rslora)
    wrapped = LoraModel(model, cfg, "default")
    if fp32_adapters:
        cast_adapter_dtype(wrapped.model, adapter_name="default", autocast_adapter_dtype=True)
    return wrapped


# ----------------------------------------------------------------------------------------------
# The pretrained base and the fine-tuning data
# ----------------------------------------------------------------------------------------------
def _tiny_config():
    from .models import GPTConfig

    return GPTConfig.preset("cpu-tiny")


def pretrain_tiny_base(steps: int = 3000, batch: int = 32, lr: float = 3e-3, seed: int = 0, log=print):
    """The recipe of the shipped base (:data:`BASE_FILE`): the ``cpu-tiny`` GPT trained from seed 0 on
    the corpus *without* the fine-tuning domain (:func:`pretraining_data`): AdamW, betas 0.9/0.95,
    weight decay 0.01, 100 warm-up steps then cosine to 10 % of ``lr``, gradient clipping at 1.
    About 10 minutes on one CPU core."""
    from . import data
    from .models import GPT

    train = pretraining_data()
    model = GPT(_tiny_config(), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        f = min(1.0, (i + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps)))
        for group in opt.param_groups:
            group["lr"] = lr * f
        x, y = data.get_batch(train, batch, model.config.block_size, generator=g)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log and (i % 500 == 0 or i == steps - 1):
            log(f"step {i}: loss {loss.item():.4f}")
    return model


def save_tiny_base(model: nn.Module, path: str | Path = BASE_FILE) -> Path:
    """Store ``model``'s weights in bf16 (the checkpoint's precision), the format :func:`load_tiny_base` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, path)  # the lm head is tied to the token embedding: stored once
    return path


def load_tiny_base(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The pretrained ``cpu-tiny`` GPT shipped with the course (bf16 weights), in ``dtype`` on ``device``.

    Its weights are bf16 numbers (so a bf16 copy is exact); ``dtype=torch.float32`` computes on
    them in fp32. The recipe is :func:`pretrain_tiny_base`."""
    from .models import GPT

    if not BASE_FILE.is_file():
        raise FileNotFoundError(f"{BASE_FILE} is missing: rebuild it with effilab.lora.save_tiny_base("
                                "effilab.lora.pretrain_tiny_base())")
    state = torch.load(BASE_FILE, map_location="cpu", weights_only=True)
    model = GPT(_tiny_config(), seed=0)
    state["lm_head.weight"] = state["wte.weight"]  # tied (stored once)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device=device, dtype=dtype)


FINETUNE_FILE = "pydoc_data/topics.py"  # the fine-tuning domain: the prose of the Python documentation


def _domain_span(corpus: torch.Tensor) -> tuple[int, int] | None:
    """[start, end) of :data:`FINETUNE_FILE` inside a corpus (effilab.data marks each file with a
    header line), or None when the corpus does not hold it."""
    blob = corpus.numpy().tobytes()
    start = blob.find(f"# ---- {FINETUNE_FILE} ----\n".encode())
    if start < 0:
        return None
    end = blob.find(b"\n# ---- ", start + 1)
    return start, (end + 1 if end >= 0 else corpus.numel())


def pretraining_data() -> torch.Tensor:
    """The corpus without the fine-tuning domain: what the shipped base was trained on."""
    from . import data

    corpus = data.corpus()
    span = _domain_span(corpus)
    return corpus if span is None else torch.cat([corpus[:span[0]], corpus[span[1]:]])


def finetune_data(val_fraction: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) bytes of the fine-tuning domain: ``pydoc_data/topics.py``, the text of the
    Python documentation's topics (English prose inside string literals), which the base never saw
    (:func:`pretraining_data` leaves it out). It is a real shift for a model of Python code — the
    kind of new domain a LoRA fine-tune is for. The last ``val_fraction`` is the validation set.

    Where the default 8 MB corpus of this interpreter does not reach the file (another Python
    version orders its standard library differently), the whole standard library is searched;
    without the file at all, the last 10 % of the corpus stands in."""
    from . import data

    for corpus in (data.corpus(), data.corpus(64_000_000)):
        span = _domain_span(corpus)
        if span is not None:
            return data.train_val_split(corpus[span[0]:span[1]], val_fraction)
    _, tail = data.train_val_split(data.corpus(), 0.1)
    return data.train_val_split(tail, val_fraction)


# ----------------------------------------------------------------------------------------------
# A deterministic fine-tune
# ----------------------------------------------------------------------------------------------
def finetune(model: nn.Module, steps: int, *, batch: int = 8, block: int = 64, lr: float = 1e-2, seed: int = 0,
             data: torch.Tensor | None = None, grad_clip: float | None = 1.0) -> list[float]:
    """Train the parameters of ``model`` that require a gradient for ``steps`` AdamW steps; the losses.

    Constant learning rate, no weight decay (LoRA's usual setting, and the adapters start at B = 0),
    batches of ``batch`` windows of ``block`` bytes drawn from ``data`` (default: the fine-tuning
    split of :func:`finetune_data`) with a generator seeded by ``seed`` — so two models trained
    with the same arguments see the same bytes in the same order. The model's forward must be
    ``model(x, y) -> (logits, loss)`` (the course GPT, also inside peft's ``LoraModel``)."""
    from . import data as data_mod

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter: nothing to fine-tune")
    if data is None:
        data, _ = finetune_data()
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        x, y = data_mod.get_batch(data, batch, block, generator=g, device=device)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def eval_loss(model: nn.Module, data: torch.Tensor, *, batches: int = 4, batch: int = 32, block: int = 64,
              seed: int = 1234) -> float:
    """Mean loss over ``batches`` fixed batches of ``data`` (the same windows for every model)."""
    from . import data as data_mod

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    try:
        return sum(float(model(*data_mod.get_batch(data, batch, block, generator=g, device=device))[1])
                   for _ in range(batches)) / batches
    finally:
        model.train(was)


# ----------------------------------------------------------------------------------------------
# Building a GPT layer by layer (weights that never all exist in 16 bits)
# ----------------------------------------------------------------------------------------------
def build_gpt(config, *, device: str | torch.device, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
              convert: Callable[[nn.Module], None] | None = None):
    """A course GPT made directly on ``device`` in ``dtype``, one block at a time.

    Each block is initialised on the device (N(0, 0.02) weights from a generator seeded by
    ``seed`` and the block index, GPT-2's smaller std on the residual projections) and handed to
    ``convert(block)`` before the next one exists: a QLoRA conversion there replaces the block's
    Linear layers by NF4 ones, so the 16-bit weights of only one block are ever alive — how a large
    model is loaded for QLoRA. Without ``convert`` this is a plain bf16 model (the LoRA baseline).
    """
    from .models import GPT

    device = torch.device(device)
    with torch.device("meta"):
        model = GPT(config, seed=seed)  # shapes only: nothing is allocated yet
    std_res = 0.02 / math.sqrt(2 * config.n_layer)
    g = torch.Generator(device=device)

    def materialise(module: nn.Module, index: int) -> None:
        module.to(dtype).to_empty(device=device)  # allocated directly in dtype on the device
        g.manual_seed(seed * 1000 + index)
        with torch.no_grad():
            for name, p in module.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, std_res if name.endswith("c_proj.weight") else 0.02, generator=g)
                elif name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()

    for i, name in enumerate(("wte", "wpe", "ln_f")):
        materialise(getattr(model, name), 900 + i)
    model.lm_head.weight = model.wte.weight  # tied, as in GPT.__init__
    for i, block in enumerate(model.blocks):
        materialise(block, i)
        if convert is not None:
            convert(block)
    return model


# ----------------------------------------------------------------------------------------------
# Measuring a fine-tuning step
# ----------------------------------------------------------------------------------------------
def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def measure_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *, autocast: bool = False,
                 lr: float = 1e-4, reps: int = 3) -> dict[str, float]:
    """One AdamW step on the trainable parameters of ``model``, measured; bytes and milliseconds.

    Returns ``{"ms", "weights", "grads", "optimizer", "activations", "peak"}``. The state parts are
    counted from the tensors themselves after a first step (parameters and buffers; ``.grad`` of the
    trainable ones; every tensor in ``optimizer.state``), ``activations`` is the peak of the bytes
    autograd saves for backward (:class:`effilab.memory.SavedTensorMeter`), and ``peak`` is, on a
    GPU, the allocator's highest allocated memory during a step (everything alive at once:
    temporaries and the dequantized weights of QLoRA included) — on a CPU the sum of the parts.
    ``autocast`` runs the forward under bf16 autocast (mixed-precision full fine-tuning). ``reps``
    timed steps give ``ms`` (on a CPU ``reps=0`` reuses the metered step's time: one step less).
    """
    import time

    from .memory import SavedTensorMeter

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    dev = params[0].device
    x, y = (t.to(dev) for t in batch)
    opt = torch.optim.AdamW(params, lr=lr)

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast(dev.type, torch.bfloat16, enabled=autocast):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        return loss

    step()  # creates the gradients and Adam's moments
    meter = SavedTensorMeter(model)
    t0 = time.perf_counter()
    with meter.hooks():
        step()
    metered_ms = (time.perf_counter() - t0) * 1e3
    out = {"weights": float(_tensor_bytes(list(model.parameters()) + list(model.buffers()))),
           "grads": float(_tensor_bytes(p.grad for p in params if p.grad is not None)),
           "optimizer": float(_tensor_bytes(t for s in opt.state.values() for t in s.values())),
           "activations": float(meter.peak)}
    if dev.type == "cuda":
        from .bench import time_fn

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize()
        out["peak"] = float(torch.cuda.max_memory_allocated(dev))
        out["ms"] = time_fn(step, warmup=1, min_reps=max(1, reps), max_reps=max(reps, 10), max_time_s=1.0).median_ms
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        out["ms"] = (time.perf_counter() - t0) / reps * 1e3 if reps else metered_ms
        out["peak"] = out["weights"] + out["grads"] + out["optimizer"] + out["activations"]
    return out
