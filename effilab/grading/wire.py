"""Plain data between the grading sandbox and the grader: no pickle, no code, exact ``torch.Tensor``\\ s.

What the student's code returns crosses from the sandbox to the grader as bytes that only *data*
can come from. The format is a JSON header and the tensors' raw bytes after it:

    b"EFW1" | len(header) (8 bytes, little endian) | header (UTF-8 JSON) | tensor bytes…

The header holds ``null``, booleans, numbers (NaN and ±inf included), strings, lists and objects
with string keys; a tensor is ``{"__t": [dtype, shape, offset, nbytes]}``, a tuple
``{"__tuple": [...]}`` and a :class:`~effilab.grading.calls.Problem` ``{"__problem": [message, hint]}``.
:func:`loads` rebuilds each tensor with ``torch.frombuffer`` into a new, plain, contiguous CPU
``torch.Tensor`` — never a subclass, never an object whose methods the student wrote — and
refuses anything else (unknown dtypes, bad sizes, deep nesting, over :data:`MAX_BYTES`).

Compared with ``torch.load(weights_only=True)``: no unpickler runs on student-made bytes, and a
tensor subclass with ``__torch_function__`` cannot reach the grader's comparisons.
"""
from __future__ import annotations

import json
import math
import struct

import torch

from .calls import Problem

__all__ = ["dumps", "loads", "WireError", "MAX_BYTES", "MAX_DEPTH", "to_plain"]

MAGIC = b"EFW1"
MAX_BYTES = 4 << 30  # the largest message: a few outputs of the GPU problem sizes
MAX_DEPTH = 64
MAX_STR = 1 << 20

DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64)}
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        DTYPES[_name] = getattr(torch, _name)


class WireError(ValueError):
    """The bytes are not a message of this format, or hold something it does not carry."""


def to_plain(t: torch.Tensor) -> torch.Tensor:
    """A plain, contiguous CPU ``torch.Tensor`` with the same bits (subclasses unwrapped)."""
    if type(t) is not torch.Tensor:  # a subclass (or a Parameter): its data as the base class
        t = torch.Tensor.as_subclass(t, torch.Tensor)
    return t.detach().cpu().contiguous()


def _encode(obj, blobs: list, size: list, depth: int):
    if depth > MAX_DEPTH:
        raise WireError(f"the output is nested deeper than {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj if -(1 << 63) <= obj < (1 << 63) else float(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__f": repr(obj)}
    if isinstance(obj, Problem):
        return {"__problem": [str(obj.message), str(obj.hint)]}
    if isinstance(obj, torch.Tensor):
        t = to_plain(obj)
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise WireError(f"tensors of dtype {t.dtype} cannot be returned")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        off = size[0]
        size[0] += len(data)
        if size[0] > MAX_BYTES:
            raise WireError("the output is larger than the grader accepts")
        blobs.append(data)
        return {"__t": [name, list(t.shape), off, len(data)]}
    if isinstance(obj, tuple):
        return {"__tuple": [_encode(o, blobs, size, depth + 1) for o in obj]}
    if isinstance(obj, list):
        return [_encode(o, blobs, size, depth + 1) for o in obj]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k.startswith("__"):
                raise WireError(f"dictionary keys must be strings not starting with '__' (got {k!r:.40})")
            out[k] = _encode(v, blobs, size, depth + 1)
        return out
    raise WireError(f"an object of type {type(obj).__name__} cannot be returned here: return tensors, numbers, "
                    "strings, or lists / tuples / dicts of them")


def dumps(obj) -> bytes:
    """``obj`` (tensors, numbers, strings, None, Problem, and lists / tuples / str-keyed dicts of them)
    as bytes; :class:`WireError` for anything else."""
    blobs: list[bytes] = []
    header = json.dumps(_encode(obj, blobs, [0], 0), ensure_ascii=True, allow_nan=False).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + b"".join(blobs)


def _decode(node, body: memoryview, depth: int):
    if depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        if len(node) > MAX_STR:
            raise WireError("a string is too long")
        return node
    if isinstance(node, list):
        return [_decode(o, body, depth + 1) for o in node]
    if not isinstance(node, dict):
        raise WireError(f"unexpected {type(node).__name__}")
    if len(node) == 1:
        (k, v), = node.items()
        if k == "__t":
            return _tensor(v, body)
        if k == "__tuple" and isinstance(v, list):
            return tuple(_decode(o, body, depth + 1) for o in v)
        if k == "__f" and v in ("nan", "inf", "-inf"):
            return float(v)
        if k == "__problem" and isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v):
            return Problem(v[0][:MAX_STR], v[1][:MAX_STR])
    if any(not isinstance(k, str) or k.startswith("__") for k in node):
        raise WireError("a reserved or malformed key")
    return {k: _decode(v, body, depth + 1) for k, v in node.items()}


def _tensor(v, body: memoryview) -> torch.Tensor:
    if not (isinstance(v, list) and len(v) == 4 and v[0] in DTYPES and isinstance(v[1], list)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < (1 << 40) for d in v[1])
            and isinstance(v[2], int) and isinstance(v[3], int)):
        raise WireError("a malformed tensor entry")
    dtype, shape, off, n = DTYPES[v[0]], tuple(v[1]), v[2], v[3]
    numel = math.prod(shape)
    if n != numel * torch.empty((), dtype=dtype).element_size() or off < 0 or off + n > len(body):
        raise WireError("a tensor's size does not match its bytes")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(body[off:off + n]), dtype=torch.uint8)
    return raw.view(dtype).reshape(shape).clone()


def loads(data: bytes):
    """The object :func:`dumps` wrote; :class:`WireError` for bytes that are not such a message."""
    if len(data) < 12 or data[:4] != MAGIC:
        raise WireError("not a message of the grader's format")
    if len(data) > MAX_BYTES + (64 << 20):
        raise WireError("the message is too large")
    (hlen,) = struct.unpack("<Q", data[4:12])
    if hlen > len(data) - 12:
        raise WireError("a truncated message")
    try:
        header = json.loads(bytes(data[12:12 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError(f"an unreadable header ({type(e).__name__})") from None
    return _decode(header, memoryview(data)[12 + hlen:], 0)
