"""The model notebook 07 quantizes: a small course GPT, trained once, shipped as a checkpoint.

No model hub is reachable from the course machines, so the course trains its own model: the byte
GPT of :mod:`effilab.models.gpt` (2 blocks, width 256, 4 heads, context 128, 1.7 M parameters) on
the standard-library corpus of :mod:`effilab.data`. :func:`train_course_model` is deterministic
(one thread, fixed batches, fixed init); ``python -m effilab.quant.model`` rebuilds the checkpoint
(500 AdamW steps of 32 × 128 bytes: about 12 minutes of one CPU core, well under 2 minutes on a GPU).

What ships (``effilab/quant/course_gpt.pt``, about 3.5 MB): the weights in fp16 (the "fp16"
baseline of the perplexity table), the config, the training recipe, and two byte strings cut from
the corpus the model was trained on — ``heldout`` from the validation split (never trained on)
and ``calib`` from the training split (the calibration text of GPTQ and AWQ, as C4 samples are in
the papers). Shipping the text makes perplexities identical on every machine: the corpus itself
depends on the Python version (:mod:`effilab.data`).

Width 256 makes every linear layer's input a multiple of the group size 128 (c_attn and c_fc have
2 groups per row, the MLP's c_proj 8), so group-wise and per-channel quantization differ.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.gpt import GPT, GPTConfig

__all__ = ["CONFIG", "CHECKPOINT", "RECIPE", "load_course_model", "course_texts", "perplexity", "windows",
           "linear_names", "linear_inputs", "train_course_model", "save_checkpoint"]

CONFIG = GPTConfig(vocab_size=256, block_size=128, n_layer=2, n_head=4, n_embd=256, dropout=0.0, bias=True)
CHECKPOINT = Path(__file__).resolve().with_name("course_gpt.pt")
RECIPE = dict(steps=500, batch_size=32, lr=4e-3, min_lr=4e-4, warmup=30, weight_decay=0.1, betas=(0.9, 0.95),
              clip=1.0, seed=0, heldout_bytes=32_768, calib_bytes=65_536)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _checkpoint() -> dict:
    if not CHECKPOINT.is_file():
        raise FileNotFoundError(f"{CHECKPOINT} is missing: rebuild it with `python -m effilab.quant.model`")
    return torch.load(CHECKPOINT, weights_only=True)


def load_course_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GPT:
    """A fresh copy of the course model in eval mode (weights are the shipped fp16 values, cast to ``dtype``)."""
    ck = _checkpoint()
    model = GPT(GPTConfig(**ck["config"]))
    model.load_state_dict({k: v.to(torch.float32) for k, v in ck["state_dict"].items()})
    return model.to(device=device, dtype=dtype).eval()


def course_texts() -> dict[str, torch.Tensor]:
    """``{"heldout": uint8 bytes, "calib": uint8 bytes}`` shipped with the checkpoint."""
    ck = _checkpoint()
    return {"heldout": ck["heldout"], "calib": ck["calib"]}


def windows(data: torch.Tensor, n: int, length: int = 128, *, seed: int | None = None) -> torch.Tensor:
    """``n`` windows of ``length + 1`` bytes as int64 (n, length + 1): consecutive, non-overlapping ones
    from the start when ``seed`` is None, else random starts drawn from ``seed``."""
    if data.dim() != 1 or data.numel() < length + 1:
        raise ValueError(f"need a 1-D byte tensor of at least {length + 1} bytes, got shape {tuple(data.shape)}")
    if seed is None:
        if n * (length + 1) > data.numel():
            raise ValueError(f"{n} windows of {length + 1} bytes need {n * (length + 1)} bytes; "
                             f"the text has {data.numel()}")
        starts = torch.arange(n) * (length + 1)
    else:
        g = torch.Generator().manual_seed(int(seed))
        starts = torch.randint(0, data.numel() - length, (n,), generator=g)
    return data[starts[:, None] + torch.arange(length + 1)].to(torch.int64)


@torch.no_grad()
def perplexity(model: GPT, tokens: torch.Tensor, batch_size: int = 32) -> float:
    """exp(mean next-byte cross-entropy) of ``model`` over ``tokens`` (n, T + 1) windows."""
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, tokens.shape[0], batch_size):
        w = tokens[i:i + batch_size].to(dev)
        logits, _ = model(w[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    return math.exp(total / count)


def linear_names(model: GPT) -> list[str]:
    """The quantized layers, in the order a forward pass reaches them: every nn.Linear of the blocks
    (the tied embedding / LM head stays in full precision, as in GPTQ and AWQ)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]


@torch.no_grad()
def linear_inputs(model: GPT, tokens: torch.Tensor, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The input rows (tokens × in_features, fp32) that each named linear sees on ``tokens``[:, :-1]."""
    names = names or linear_names(model)
    mods = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0].reshape(-1, a[0].shape[-1])
                                                                                   .float().cpu()))
             for n in names]
    try:
        model(tokens[:, :-1].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {n: seen[n] for n in names}


# ----------------------------------------------------------------------------------------------
# Training (how the shipped checkpoint was made)
# ----------------------------------------------------------------------------------------------
def _lr(step: int, r: dict) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr``."""
    if step < r["warmup"]:
        return r["lr"] * (step + 1) / r["warmup"]
    t = (step - r["warmup"]) / max(1, r["steps"] - r["warmup"])
    return r["min_lr"] + 0.5 * (r["lr"] - r["min_lr"]) * (1 + math.cos(math.pi * t))


def train_course_model(recipe: dict | None = None, device: str = "cpu", log=print) -> tuple[GPT, dict]:
    """Train the course model from scratch, deterministically; returns (model, texts)."""
    from ..data import batches, corpus, train_val_split

    r = {**RECIPE, **(recipe or {})}
    torch.manual_seed(r["seed"])
    data = corpus()
    train, val = train_val_split(data, 0.1)
    model = GPT(CONFIG, seed=r["seed"]).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]}, {"params": rest, "weight_decay": 0.0}],
                            lr=r["lr"], betas=r["betas"])
    stream = batches(train, r["batch_size"], CONFIG.block_size, seed=r["seed"], device=device)
    t0 = time.time()
    model.train()
    for step in range(r["steps"]):
        for gr in opt.param_groups:
            gr["lr"] = _lr(step, r)
        x, y = next(stream)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
        opt.step()
        if step % 50 == 0 or step == r["steps"] - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  lr {_lr(step, r):.2e}  {time.time() - t0:.0f} s")
    model.eval()
    g = torch.Generator().manual_seed(r["seed"] + 1)
    start = int(torch.randint(0, train.numel() - r["calib_bytes"], (1,), generator=g))
    texts = {"heldout": val[: r["heldout_bytes"]].clone(), "calib": train[start:start + r["calib_bytes"]].clone()}
    return model, texts


def save_checkpoint(model: GPT, texts: dict, path: Path = CHECKPOINT, recipe: dict | None = None) -> Path:
    sd = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": sd, "recipe": {**RECIPE, **(recipe or {})},
                "heldout": texts["heldout"], "calib": texts["calib"]}, path)
    _checkpoint.cache_clear()
    return path


def main() -> None:  # python -m effilab.quant.model
    torch.set_num_threads(1)  # deterministic reductions on a CPU
    model, texts = train_course_model()
    path = save_checkpoint(model, texts)
    m = load_course_model()
    ppl = perplexity(m, windows(course_texts()["heldout"], 254))
    print(f"saved {path} ({path.stat().st_size / 2**20:.1f} MiB); held-out perplexity (fp16 weights) {ppl:.4f}")


if __name__ == "__main__":
    main()
