"""Training data made offline: a byte-level corpus of the Python standard library's own sources.

The course machines cannot download data sets, but every Python installation ships several
megabytes of well-formed, mostly ASCII text: the ``.py`` files of its standard library. :func:`corpus`
concatenates them (sorted by relative path, test suites, vendored ``site-packages`` and generated
codec tables left out) up to ``max_bytes`` and caches the result as a uint8 tensor under
``~/.cache/effilab/`` (or ``$EFFILAB_CACHE``), so the second call only reads one file.

Reproducibility
---------------
The text depends on the Python version: 3.11 and 3.12 ship different standard libraries
(``distutils`` is gone in 3.12, many modules changed), and even patch releases edit files. So the
corpus, the batches drawn from it and therefore the loss curves are bit-for-bit reproducible on one
machine (one interpreter), but NOT across machines: the course's CPU image runs 3.11 and the GPU
grader 3.12. Grade with tolerances or thresholds (e.g. "loss below 2.0 after 200 steps"), never with
exact loss values recorded elsewhere. :func:`corpus_info` reports what a run used. The cache file name
includes the interpreter version, so the two never mix.

Batches
-------
:func:`get_batch` draws B random windows of T+1 bytes and returns inputs and next-byte targets as int64
(B, T) tensors; :func:`variable_length_batch` returns right-padded windows of uneven length with a 0/1
loss mask, for gradient accumulation with uneven micro-batches (notebook 04).
"""
from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
import tempfile
from pathlib import Path

import torch

__all__ = [
    "cache_dir",
    "corpus",
    "corpus_info",
    "train_val_split",
    "get_batch",
    "batches",
    "variable_length_batch",
    "encode",
    "decode",
]

DEFAULT_MAX_BYTES = 8_000_000
_FORMAT = 1  # bump when the selection rules below change: old cache files are then ignored
# Directory names skipped anywhere in the path: third-party packages, test suites (which contain
# deliberately malformed and non-UTF-8 files), caches, and the generated codec tables in encodings/.
_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings"}
)


def cache_dir() -> Path:
    """Where effilab caches derived data: ``$EFFILAB_CACHE`` if set, else ``~/.cache/effilab``."""
    env = os.environ.get("EFFILAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "effilab"


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _source_files(root: Path) -> list[Path]:
    """The stdlib ``.py`` files used, sorted by their path relative to ``root`` (posix form)."""
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or not p.is_file():
            continue
        files.append((rel.as_posix(), p))
    files.sort(key=lambda t: t[0])
    return [p for _, p in files]


def _cache_path(max_bytes: int) -> Path:
    root = str(_stdlib_root())
    tag = hashlib.sha1(f"{_FORMAT}|{root}".encode()).hexdigest()[:8]
    return cache_dir() / f"stdlib-corpus-py{platform.python_version()}-{max_bytes}-{tag}.pt"


def _build(max_bytes: int) -> torch.Tensor:
    root = _stdlib_root()
    parts: list[bytes] = []
    total = 0
    for p in _source_files(root):
        rel = p.relative_to(root).as_posix()
        chunk = f"# ---- {rel} ----\n".encode() + p.read_bytes().replace(b"\r\n", b"\n") + b"\n"
        parts.append(chunk)
        total += len(chunk)
        if total >= max_bytes:
            break
    blob = b"".join(parts)[:max_bytes]
    if not blob:
        raise RuntimeError(f"no standard-library sources found under {root}")
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()


def corpus(max_bytes: int = DEFAULT_MAX_BYTES, *, cache: bool = True, refresh: bool = False) -> torch.Tensor:
    """The standard-library text as a 1-D uint8 tensor of at most ``max_bytes`` bytes.

    Deterministic for a given interpreter (see the module docstring for why it differs between
    Python versions). With ``cache=True`` the tensor is saved under :func:`cache_dir` the first time
    and loaded from there afterwards; ``refresh=True`` rebuilds it. The Python 3.11 standard library
    gives about 10 MB before the cap; if it has fewer bytes, the whole of it is returned.
    """
    max_bytes = int(max_bytes)
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    path = _cache_path(max_bytes)
    if cache and not refresh and path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            if isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.dim() == 1:
                return data
        except Exception:  # a truncated or foreign file: rebuild it below
            pass
    data = _build(max_bytes)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename, so concurrent notebooks never read half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save(data, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return data


def corpus_info(data: torch.Tensor | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """What a corpus is made of: Python version, stdlib path, size, SHA-256 prefix, cache file."""
    if data is None:
        data = corpus(max_bytes)
    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    return {
        "python": platform.python_version(),
        "stdlib": str(_stdlib_root()),
        "n_bytes": int(data.numel()),
        "sha256": digest,
        "cache_file": str(_cache_path(max_bytes)),
    }


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a uint8 tensor (the model's vocabulary is the 256 byte values)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def decode(ids) -> str:
    """Bytes (any integer tensor or sequence with values 0..255) back to text; bad UTF-8 is replaced."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().reshape(-1).tolist()
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def train_val_split(data: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D tensor into a leading training part and a trailing validation part (views)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(data.numel() * val_fraction)))
    return data[:-n_val], data[-n_val:]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator= or seed=, not both")
    if seed is not None:
        return torch.Generator(device="cpu").manual_seed(int(seed))
    return generator  # None: torch's global RNG (reproducible after torch.manual_seed)


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``data``: inputs x and next-byte targets y, int64 (B, T).

    ``y[b, t] == x[b, t + 1]`` and ``y[b, T-1]`` is the byte after the window. Starting offsets are
    drawn on the CPU from ``generator`` (a CPU :class:`torch.Generator`; pass the same one on every
    call to get a reproducible stream of batches), from a fresh generator seeded with ``seed``, or
    from torch's global RNG if neither is given. The result is moved to ``device``.
    """
    if data.dim() != 1:
        raise ValueError("data must be a 1-D tensor of byte ids")
    n_start = data.numel() - block_size  # windows need block_size + 1 bytes
    if n_start < 1:
        raise ValueError(f"data has {data.numel()} bytes, too few for block_size={block_size}")
    g = _generator(generator, seed)
    ix = torch.randint(n_start, (batch_size,), generator=g)  # (B,)
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    chunk = data[offsets.to(data.device)].to(torch.int64)  # (B, T+1)
    x = chunk[:, :-1]  # (B, T)
    y = chunk[:, 1:]  # (B, T)
    return _to_device(x.contiguous(), device), _to_device(y.contiguous(), device)


def batches(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
):
    """An endless, reproducible iterator of :func:`get_batch` batches drawn from one generator."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    while True:
        yield get_batch(data, batch_size, block_size, generator=g, device=device)


def variable_length_batch(
    data: torch.Tensor,
    batch_size: int,
    max_len: int,
    min_len: int | None = None,
    seed: int | None = 0,
    pad_id: int = 0,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A right-padded batch of sequences of uneven length, for notebook 04.

    Each row b gets a length ``L_b`` drawn uniformly from ``[min_len, max_len]`` (``min_len``
    defaults to ``max(1, max_len // 8)``) and a random window of ``L_b + 1`` bytes. Returns int64
    tensors of shape (B, max_len):

    * ``x[b, :L_b]`` the inputs, ``y[b, :L_b]`` the next-byte targets (``y[b, t] == x[b, t+1]``
      for ``t < L_b - 1``);
    * ``mask[b, t] = 1`` for ``t < L_b`` and 0 on the padding; x and y hold ``pad_id`` there.

    The number of real tokens is ``mask.sum()`` and the lengths are ``mask.sum(1)``. Because the
    padding is on the right and attention is causal, ``model(x, y, loss_mask=mask)`` gives each real
    token exactly the loss it would get in an unpadded sequence. Reproducible from ``seed``; a
    CPU ``generator``, when given, is used instead of ``seed`` (for a stream of batches).
    """
    if min_len is None:
        min_len = max(1, max_len // 8)
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if data.numel() < max_len + 1:
        raise ValueError(f"data has {data.numel()} bytes, too few for max_len={max_len}")
    g = generator if generator is not None else _generator(None, seed)
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=g)  # (B,)
    starts = (torch.rand(batch_size, generator=g, dtype=torch.float64) * (data.numel() - lengths)).long()  # (B,)
    pos = torch.arange(max_len)  # (T,)
    mask = (pos[None, :] < lengths[:, None]).to(torch.int64)  # (B, T)
    src = (starts[:, None] + pos[None, :]).clamp(max=data.numel() - 2)  # (B, T)
    cpu = data.cpu() if data.device.type != "cpu" else data
    x = cpu[src].to(torch.int64)  # (B, T)
    y = cpu[src + 1].to(torch.int64)  # (B, T)
    x = torch.where(mask.bool(), x, torch.full_like(x, pad_id))
    y = torch.where(mask.bool(), y, torch.full_like(y, pad_id))
    return _to_device(x, device), _to_device(y, device), _to_device(mask, device)
