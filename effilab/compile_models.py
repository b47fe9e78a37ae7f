"""Two small models for notebook 09 (torch.compile): where graphs break, and where shapes recompile.

* :class:`BreakyBlock` — a residual MLP block written the way research code often is: it logs a
  statistic, takes a value to Python with ``.item()`` to decide a branch, and averages over the
  real (unpadded) tokens by boolean indexing. Each of those habits ends a TorchDynamo graph; the
  exercise of the notebook rewrites ``forward`` to give the same outputs in one graph.
* :class:`TinyLM` — a one-block causal language model (token and position embeddings, a
  token-shift mixing MLP, a language-model head), small enough that compiling it for symbolic
  shapes takes well under a second. Its logits depend on the sequence length, the shape that
  changes between the calls of an evaluation loop.

Both initialise deterministically from a ``seed`` with a private generator (the global RNG is
left as it was), so the checker can rebuild exactly the model a student's code received.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BreakyBlock", "TinyLM"]


def _init_(module: nn.Module, seed: int, bias_std: float = 0.02) -> None:
    """Linear/Embedding weights N(0, 1/fan_in) (embeddings N(0, 1)), biases N(0, bias_std²), norms 1."""
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                std = 1.0 if "emb" in name or name.startswith(("tok", "pos")) else 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * bias_std)
            else:
                p.fill_(1.0)


class BreakyBlock(nn.Module):
    """``x + h − mean(h over real tokens)`` with ``h = fc2(gelu(fc1(x)))`` rescaled so that its
    largest magnitude is at most ``clip`` — written with three graph breaks.

    Args:
        dim: width of the residual stream (the last dimension of ``x``).
        hidden: width of the MLP.
        clip: the largest ``|h|`` allowed; a larger ``h`` is scaled down by ``clip / max|h|``.
        seed: initialisation seed (weights N(0, 1/fan_in), biases N(0, 0.02²)).
        log: print the statistic at every call (what debugging code leaves behind).
    """

    def __init__(self, dim: int = 24, hidden: int = 40, clip: float = 1.0, *, seed: int = 0, log: bool = True):
        super().__init__()
        if dim <= 0 or hidden <= 0 or not clip > 0:
            raise ValueError(f"dim and hidden must be positive and clip > 0 (got {dim}, {hidden}, {clip})")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.clip = float(clip)
        self.log = bool(log)
        _init_(self, seed)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) float; mask: (B, T) bool, True at real tokens (padding is False).
        Returns (B, T, dim)."""
        h = self.fc2(F.gelu(self.fc1(x)))  # (B, T, dim)
        peak = h.abs().max().item()  # the value goes to Python: graph break
        if self.log:
            print(f"BreakyBlock: max |h| = {peak:.3f}")  # print cannot be put in a graph: graph break
        if peak > self.clip:  # a Python branch on a value of the data
            h = h * (self.clip / peak)  # now max |h| == clip
        rows = mask.nonzero(as_tuple=True)  # how many rows there are depends on the data: graph break
        mean = h[rows].mean(0)  # (dim,): the mean of h over the real tokens
        return x + h - mean  # (B, T, dim)


class TinyLM(nn.Module):
    """A one-block causal language model over a vocabulary of ``vocab`` tokens.

    ``forward(idx)`` takes token ids ``(B, T)`` with ``T <= max_len`` and returns the logits
    ``(B, T, vocab)``::

        x = tok(idx) + pos[:T]
        prev = x shifted one position to the right (zeros at t = 0)       # token shift
        x = x + proj(gelu(fc(ln(x) + prev)))
        logits = head(x)

    The token mixing is a *token shift* (each position also sees the one before it, as in RWKV,
    Peng et al. 2023) rather than attention: it keeps the model causal — the logits at position
    ``t`` depend only on tokens ``0..t``, so right-padding a batch leaves the logits of the real
    tokens unchanged — and makes compiling it for symbolic shapes cheap (the exercise compiles it
    many times). What matters for notebook 09 is that the computation depends on ``T``.
    """

    def __init__(self, vocab: int = 64, dim: int = 32, max_len: int = 128, *, hidden: int = 64, seed: int = 0):
        super().__init__()
        if min(vocab, dim, max_len, hidden) <= 0:
            raise ValueError(f"vocab, dim, max_len and hidden must be positive (got {vocab}, {dim}, {max_len}, {hidden})")
        self.max_len = int(max_len)
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, vocab)
        _init_(self, seed)
        with torch.no_grad():  # embeddings of unit scale would swamp the mixing branch
            self.tok.weight.mul_(0.5)
            self.pos.weight.mul_(0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}")
        x = self.tok(idx) + self.pos.weight[:T]  # (B, T, dim)
        prev = F.pad(x, (0, 0, 1, 0))[:, :T]  # position t holds x[t - 1]; zeros at t = 0
        x = x + self.proj(F.gelu(self.fc(self.ln(x) + prev)))
        return self.head(x)  # (B, T, vocab)
