"""A tiny byte-level GPT: the model that notebooks 02 (mixed precision), 03 (gradient checkpointing)
and 04 (gradient accumulation) train.

It is the decoder-only Transformer of Vaswani et al. (2017, "Attention is all you need") in the
pre-LayerNorm arrangement of GPT-2 (Radford et al. 2019, "Language models are unsupervised multitask
learners"): token + learned position embeddings, ``n_layer`` blocks of

    x = x + attn(ln_1(x))      # causal self-attention through F.scaled_dot_product_attention
    x = x + mlp(ln_2(x))       # Linear(C, 4C) -> GELU -> Linear(4C, C)

then a final LayerNorm and a language-model head tied to the token embedding. The layout follows the
spirit of Karpathy's nanoGPT (one small flat file, shapes in comments) but the code is our own.

The vocabulary is the 256 byte values, so no tokenizer is needed (see :mod:`effilab.data`).

Hooks the notebooks rely on
---------------------------
* ``model.blocks`` is an :class:`nn.ModuleList`; :meth:`GPT.set_block_wrapper` injects a function
  ``fn(block, x) -> y`` that runs each (or selected) block, e.g. activation checkpointing::

      from torch.utils.checkpoint import checkpoint
      model.set_block_wrapper(lambda block, x: checkpoint(block, x, use_reentrant=False))

* ``forward(idx, targets, loss_mask=None, reduction="mean" | "sum")``: the "sum" form returns the
  summed token losses and the token count, which correct gradient accumulation over micro-batches of
  uneven length needs.
* All dropout (embeddings, attention probabilities, residual branches) draws from torch's global
  RNG, so recomputing a block without restoring the RNG state gives different masks: that is what
  ``preserve_rng_state`` in :func:`torch.utils.checkpoint.checkpoint` is for.
* :meth:`GPT.flops_per_token` gives the model FLOPs used for MFU (PaLM, Chowdhery et al. 2022).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPTConfig", "GPT", "PRESETS", "BlockWrapper"]

#: ``fn(block, x) -> y``: how a wrapper runs one block (the default is ``block(x)``).
BlockWrapper = Callable[[nn.Module, torch.Tensor], torch.Tensor]

# Named sizes. cpu-* run on a laptop/CI core in seconds; gpu-* are for the H100.
PRESETS: dict[str, dict] = {
    # ~0.12 M parameters: a training step takes milliseconds on one CPU core.
    "cpu-tiny": dict(block_size=64, n_layer=2, n_head=4, n_embd=64),
    # ~0.84 M parameters: a few hundred steps in a minute or two on 2 CPU cores.
    "cpu-small": dict(block_size=128, n_layer=4, n_head=4, n_embd=128),
    # GPT-2 small's shape (12 x 768, context 1024) with a byte vocabulary: ~86 M parameters.
    "gpu-real": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768),
    # 16 blocks of GPT-2-small width (~114 M parameters): activation memory grows with depth, so
    # gradient checkpointing (notebook 03) has something to save.
    "gpu-deep16": dict(block_size=1024, n_layer=16, n_head=12, n_embd=768),
}


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`GPT`.

    ``vocab_size`` is 256 because the model reads raw bytes. ``bias`` switches the biases of every
    Linear and LayerNorm on or off. ``dropout`` is applied to the embeddings, the attention
    probabilities and both residual branches (training mode only).
    """

    vocab_size: int = 256
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named size, optionally with some fields changed: ``GPTConfig.preset("cpu-tiny", dropout=0.1)``.

        Valid names: ``cpu-tiny``, ``cpu-small``, ``gpu-real``, ``gpu-deep16`` (see ``PRESETS``).
        """
        if name not in PRESETS:
            raise ValueError(
                f"unknown GPT preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}"
            )
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes) -> "GPTConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; the softmax(QK^T/sqrt(d))V core is F.scaled_dot_product_attention,
    which picks a fused kernel (FlashAttention / memory-efficient) when it can."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hd)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """One pre-LN Transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    """A decoder-only Transformer language model over bytes.

    ``GPT(config, seed=0)`` initialises deterministically from ``seed`` with a private generator
    (the global RNG is left untouched), identically on every device: weights N(0, 0.02), the two
    residual output projections of every block N(0, 0.02/sqrt(2 n_layer)) as in GPT-2, biases 0,
    LayerNorm weights 1.
    """

    def __init__(self, config: GPTConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        # The layers' own default init draws from the global RNG; fork it so that building a
        # model leaves the RNG as it was (reset_parameters below overwrites every value anyway).
        with torch.random.fork_rng(devices=[]):
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embedding
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
            self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (one matrix, counted once)
        self._block_wrapper: BlockWrapper | None = None
        self._wrapped_layers: frozenset[int] | None = None
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """(Re-)initialise every parameter from ``seed`` (device-independent, global RNG untouched)."""
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layer)

        def normal_(p: torch.Tensor, std: float) -> None:
            # Draw on the CPU with our own generator, then copy: the same numbers on any device.
            p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=g))

        for name, p in self.named_parameters():  # deterministic order; tied weight appears once
            if name.endswith("c_proj.weight"):
                normal_(p, resid_std)
            elif p.dim() >= 2:  # Linear weights and both embeddings
                normal_(p, 0.02)
            elif name.endswith(".weight"):  # LayerNorm scale
                p.fill_(1.0)
            else:  # biases
                p.zero_()

    # ------------------------------------------------------------------ hooks
    def set_block_wrapper(self, fn: BlockWrapper | None, layers: Iterable[int] | None = None) -> "GPT":
        """Run blocks through ``fn(block, x) -> y`` instead of ``block(x)``; ``fn=None`` removes it.

        ``layers`` restricts the wrapper to those block indices (e.g. every other block for selective
        checkpointing); the default wraps all blocks. Returns ``self``. The wrapper is not part of
        the state dict.
        """
        if fn is not None and not callable(fn):
            raise TypeError("the block wrapper must be callable as fn(block, x) -> y, or None")
        if layers is not None:
            layers = frozenset(int(i) for i in layers)
            bad = sorted(i for i in layers if not 0 <= i < len(self.blocks))
            if bad:
                raise ValueError(f"block indices {bad} out of range 0..{len(self.blocks) - 1}")
        self._block_wrapper = fn
        self._wrapped_layers = layers if fn is not None else None
        return self

    @contextlib.contextmanager
    def block_wrapper(self, fn: BlockWrapper | None, layers: Iterable[int] | None = None) -> Iterator["GPT"]:
        """Context-manager form of :meth:`set_block_wrapper`; restores the previous wrapper on exit."""
        previous = (self._block_wrapper, self._wrapped_layers)
        self.set_block_wrapper(fn, layers)
        try:
            yield self
        finally:
            self._block_wrapper, self._wrapped_layers = previous

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the residual stream (B, T, C) through every block, using the block wrapper if set."""
        fn, layers = self._block_wrapper, self._wrapped_layers
        for i, block in enumerate(self.blocks):
            if fn is not None and (layers is None or i in layers):
                x = fn(block, x)
            else:
                x = block(x)
        return x  # (B, T, C)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ):
        """Logits for every position, and the next-byte cross-entropy if ``targets`` are given.

        Parameters
        ----------
        idx : (B, T) integer tensor of byte ids, T <= block_size.
        targets : (B, T) integer tensor, the next byte at each position (or None).
        loss_mask : optional (B, T) 0/1 (or bool) tensor; only positions where it is 1 count. Use it
            for right-padded batches of uneven length (causal attention means padding on the right
            never changes the logits of the real tokens to its left).
        reduction : ``"mean"`` -> ``(logits, loss)`` with ``loss`` the mean over counted tokens;
            ``"sum"`` -> ``(logits, loss_sum, n_tokens)`` with the summed token losses and the
            number of counted tokens as a 0-dim int64 tensor on the logits' device (no host sync).
            Gradient accumulation over micro-batches of uneven length divides each micro-batch's
            ``loss_sum`` by the total token count of the whole batch.

        Returns ``(logits, None)`` when ``targets`` is None; logits are (B, T, vocab_size).
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        x = self.forward_blocks(x)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        # Token losses in fp32 even under autocast: (B*T,)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none"
        )
        if loss_mask is None:
            if reduction == "mean":
                return logits, losses.mean()
            # new_full launches a fill kernel: unlike torch.tensor(..., device=...), no host sync
            return logits, losses.sum(), losses.new_full((), losses.numel(), dtype=torch.int64)
        if loss_mask.shape != targets.shape:
            raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != targets shape {tuple(targets.shape)}")
        m = loss_mask.reshape(-1)  # (B*T,)
        loss_sum = (losses * m.to(losses.dtype)).sum()
        n_tokens = m.to(torch.int64).sum()
        if reduction == "sum":
            return logits, loss_sum, n_tokens
        return logits, loss_sum / n_tokens.clamp(min=1).to(loss_sum.dtype)

    # ------------------------------------------------------------------ accounting
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters; the tied lm-head/token-embedding matrix counts once.

        ``exclude_embeddings=True`` leaves out the token and position embeddings: the
        "non-embedding parameter count" N of Kaplan et al. (2020). For the formula see
        :meth:`param_formula`.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    @staticmethod
    def param_formula(config: GPTConfig) -> dict[str, int]:
        """Closed-form parameter counts (what :meth:`num_params` must equal).

        Per block with bias: ln_1, ln_2 (2C each), qkv (3C^2 + 3C), attn proj (C^2 + C),
        mlp in (4C^2 + 4C), mlp out (4C^2 + C): 12 C^2 + 13 C. Without bias: 12 C^2 + 2 C.
        Embeddings: V C + T_max C; final LayerNorm 2C (C without bias); the lm head is tied.
        """
        C, V, Tm, L = config.n_embd, config.vocab_size, config.block_size, config.n_layer
        per_block = 12 * C * C + (13 * C if config.bias else 2 * C)
        ln_f = 2 * C if config.bias else C
        embeddings = V * C + Tm * C
        non_embedding = L * per_block + ln_f
        return {"per_block": per_block, "embeddings": embeddings, "non_embedding": non_embedding,
                "total": non_embedding + embeddings}

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), the numerator of MFU.

        ``6 N + 12 L H Q T`` (PaLM appendix B, Chowdhery et al. 2022; the 6N rule is Kaplan et al.
        2020): every weight does one multiply-add (2 FLOPs) per token forward and twice that
        backward, so 6 FLOPs per weight per token. Here N counts the weights that take part in a
        matmul: all parameters except the position embedding; the tied token embedding counts
        because it is the lm head's matrix (N = num_params(exclude_embeddings=True) + V C). The
        attention scores QK^T and the weighted sum AV add 2 * 2 T C FLOPs per token per layer
        forward, times 3 for forward + backward: 12 L H Q T with H heads of size Q (H Q = C) and
        context T (default block_size). As in PaLM the causal mask is not credited (fused
        kernels skip about half of that work), and softmax, LayerNorm, GELU and other
        elementwise work are left out. Recomputation by activation checkpointing is not counted
        either: MFU counts model FLOPs, not hardware FLOPs.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else int(seq_len)
        n = self.num_params(exclude_embeddings=True) + cfg.vocab_size * cfg.n_embd
        return float(6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled bytes to ``idx`` (B, T); returns (B, T + max_new_tokens)."""
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                ctx = idx[:, -self.config.block_size:]  # (B, <=block_size)
                logits, _ = self(ctx)
                logits = logits[:, -1, :].float() / max(temperature, 1e-8)  # (B, V)
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                idx = torch.cat([idx, nxt], dim=1)
        finally:
            self.train(was_training)
        return idx

    def extra_repr(self) -> str:
        c = self.config
        return f"n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, block_size={c.block_size}"
