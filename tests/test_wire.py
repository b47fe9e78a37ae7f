"""The plain-data format between the sandbox and the grader (effilab/grading/wire.py): exact round
trips of what a run may return, plain tensors only on the grader's side, and bytes that are not a
message of the format refused with WireError (never code run, never a crash)."""
import math
import struct

import pytest
import torch

from effilab.grading import wire
from effilab.grading.calls import Problem
from effilab.grading.keys import Key


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Problem):
        return isinstance(b, Problem) and (a.message, a.hint) == (b.message, b.hint)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("obj", [
    None, True, 3, -2**62, 0.5, float("nan"), float("inf"), -float("inf"), "héllo \ud800 surrogate", [],
    torch.tensor(2.5),  # 0-dim
    torch.zeros(0, 3),
    torch.randn(7, 5).to(torch.bfloat16),
    torch.randn(3, 4)[:, ::2],  # not contiguous
    torch.tensor([float("nan"), 1.0]).to(torch.float8_e4m3fn),
    torch.arange(10, dtype=torch.int16),
    torch.tensor([True, False]),
    {"trace": [{"scale": 2.0, "params": [torch.ones(2)], "inject": None}], "state": {"a": 1}},
    (torch.ones(1), (2, "x")),
    Problem("your function raised ValueError", "read the error"),
])
def test_round_trip_is_exact(obj):
    assert same(obj, wire.loads(wire.dumps(obj)))


def test_a_tensor_subclass_comes_back_as_a_plain_tensor():
    class Agree(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return super().__torch_function__(func, types, args, kwargs or {})

    t = torch.arange(6.0).as_subclass(Agree)
    back = wire.loads(wire.dumps({"out": t}))["out"]
    assert type(back) is torch.Tensor and torch.equal(back, torch.arange(6.0))


@pytest.mark.parametrize("obj", [object(), {1: 2}, {"__t": 1}, torch.nn.Linear(2, 2), lambda: 0])
def test_objects_are_refused(obj):
    with pytest.raises(wire.WireError):
        wire.dumps(obj)


def _message(header: bytes, body: bytes = b"") -> bytes:
    return wire.MAGIC + struct.pack("<Q", len(header)) + header + body


@pytest.mark.parametrize("data", [
    b"", b"EFW1", b"not a message at all",
    _message(b"{"),  # bad JSON
    _message(b'{"__t": ["float32", [4], 0, 16]}', b"\x00" * 8),  # fewer bytes than the header says
    _message(b'{"__t": ["float32", [2], 0, 9]}', b"\x00" * 9),  # size not numel x element size
    _message(b'{"__t": ["object", [1], 0, 8]}', b"\x00" * 8),  # no such dtype
    _message(b'{"__reduce__": 1}'),  # a reserved key
    _message(b"[" * 5000 + b"]" * 5000),  # nested far too deep
    _message(b'{"__problem": [1, 2]}'),
])
def test_bytes_that_are_no_message_raise_wire_error(data):
    with pytest.raises(wire.WireError):
        wire.loads(data)


def test_hidden_seeds_are_keyed_and_print_as_their_index():
    a, b = Key.hidden("secret-a", "ex"), Key.hidden("secret-b", "ex")
    sa, sb = a.seeds(5), b.seeds(5)
    assert sa != sb and len(set(sa)) == 5
    assert all(str(s) == f"#{i}" and f"{s}" == f"#{i}" for i, s in enumerate(sa))  # labels carry no seed
    diffs = {int(y) - int(x) for x, y in zip(sa, sa[1:])}
    assert len(diffs) > 1  # not base + i: one seed does not give the others away
    assert Key.hidden("secret-a", "other").seeds(1) != sa[:1]  # per exercise
    assert [int(s) for s in Key.public().seeds(3)] == [0, 1, 2]
