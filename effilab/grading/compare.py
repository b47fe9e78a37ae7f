"""Tensor comparison with reports a student can act on.

``compare_tensors(yours, expected)`` returns ``None`` when the two agree and otherwise a message
that says what differs — type, shape, dtype, device, elements never written, NaN/Inf placement, or
values — with "Yours / Expected" for the first few mismatches and their indices.

Default tolerances depend on the dtype of the expected tensor and are set so that an answer
computed in the dtype itself passes, while one that went through a lower precision fails (tests
in tests/test_grading_compare.py show each tolerance rejecting the next format down).
"""
from __future__ import annotations

import math

import torch

__all__ = ["TOLERANCES", "tolerance", "compare_tensors", "format_value"]

# dtype -> (rtol, atol). An fp32 answer carries ~6e-8 relative rounding error per op; a bf16 one
# 2**-9 ≈ 2e-3; fp16 2**-12 ≈ 2.4e-4. The margins allow a few rounding steps of the same format.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float8_e4m3fn: (1.25e-1, 1e-3),
    torch.float8_e5m2: (2.5e-1, 1e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    if dtype in TOLERANCES:
        return TOLERANCES[dtype]
    if not dtype.is_floating_point:
        return (0.0, 0.0)
    raise KeyError(f"no default tolerance for {dtype}")


def format_value(v: torch.Tensor | float, dtype: torch.dtype | None = None) -> str:
    """A scalar as its value and, for floating dtypes, its bit pattern in hex."""
    if isinstance(v, torch.Tensor):
        dtype = v.dtype
        f = v.item()
        if dtype.is_floating_point and dtype in (torch.float32, torch.float16, torch.bfloat16,
                                                 torch.float8_e4m3fn, torch.float8_e5m2):
            width = {4: torch.int32, 2: torch.int16, 1: torch.int8}[v.element_size()]
            bits = int(v.reshape(1).view(width).item()) & ((1 << (8 * v.element_size())) - 1)
            return f"{f:.9g} (0x{bits:0{2 * v.element_size()}X})"
        return f"{f:.9g}" if isinstance(f, float) else str(f)
    return f"{v:.9g}" if isinstance(v, float) else str(v)


def _first_mismatches(mask: torch.Tensor, yours: torch.Tensor, expected: torch.Tensor, k: int,
                      extra=None) -> str:
    idx = mask.nonzero()[:k]
    lines = []
    for row in idx:
        ix = tuple(int(i) for i in row)
        y = yours[ix] if yours.dim() else yours
        e = expected[ix] if expected.dim() else expected
        where = f"[{', '.join(map(str, ix))}]"
        line = f"  at {where}: yours {format_value(y)}  expected {format_value(e)}"
        if extra is not None:
            line += f"  ({extra(ix)})"
        lines.append(line)
    return "\n".join(lines)


def compare_tensors(yours, expected: torch.Tensor, *, rtol: float | None = None, atol: float | None = None,
                    exact: bool = False, nan_ok_where_expected: bool = True, name: str = "output",
                    max_show: int = 5, describe_input=None) -> str | None:
    """``None`` if ``yours`` matches ``expected``; otherwise a report of what differs.

    exact: compare bit patterns (floats) or values (ints); NaN matches NaN of any payload when
        ``nan_ok_where_expected`` is set.
    rtol/atol: default to :data:`TOLERANCES` of the expected dtype; ``|y - e| <= atol + rtol·|e|``.
        Infinities must match in sign and position; NaN must appear exactly where expected.
    describe_input: optional ``f(index) -> str`` that names the input at a mismatch.
    """
    if not isinstance(yours, torch.Tensor):
        return f"your {name} is a {type(yours).__name__}, expected a torch.Tensor"
    if yours.shape != expected.shape:
        return f"your {name} has shape {tuple(yours.shape)}, expected {tuple(expected.shape)}"
    if yours.dtype != expected.dtype:
        return f"your {name} has dtype {yours.dtype}, expected {expected.dtype}"
    if yours.device.type != expected.device.type:
        return f"your {name} is on {yours.device}, expected on {expected.device}"
    y = yours.detach()
    e = expected.detach()
    if y.numel() == 0:
        return None
    if e.dtype.is_floating_point:
        y64, e64 = y.to(torch.float64).cpu(), e.to(torch.float64).cpu()
        y_nan, e_nan = torch.isnan(y64), torch.isnan(e64)
        if exact:
            width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[e.element_size()]
            bad = y.contiguous().view(width).cpu() != e.contiguous().view(width).cpu()
            if nan_ok_where_expected:
                bad &= ~(y_nan & e_nan)
        else:
            r, a = tolerance(e.dtype)
            r = r if rtol is None else rtol
            a = a if atol is None else atol
            both_inf = torch.isinf(y64) & torch.isinf(e64) & (torch.sign(y64) == torch.sign(e64))
            with torch.no_grad():
                close = (y64 - e64).abs() <= a + r * e64.abs()
            bad = ~(close | both_inf | (y_nan & e_nan))
        n_bad = int(bad.sum())
        if n_bad == 0:
            return None
        unwritten = y_nan & ~e_nan
        head = f"{n_bad} of {e.numel()} elements of your {name} are wrong"
        if int(unwritten.sum()) and int((unwritten & bad).sum()) == n_bad:
            head += (" — all of them NaN where a number was expected: elements your code never wrote "
                     "(the checker fills new tensors with NaN) or a NaN produced by the arithmetic")
        elif int((y_nan & ~e_nan).sum()):
            head += f"; {int((y_nan & ~e_nan).sum())} are NaN where a number was expected"
        if not exact:
            err = ((y64 - e64).abs() / e64.abs().clamp_min(1e-30))[bad & ~y_nan & ~e_nan]
            if err.numel():
                head += f"; largest relative error {float(err.max()):.3g} (tolerance rtol={r:g}, atol={a:g})"
        return head + "\nfirst mismatches:\n" + _first_mismatches(bad, y.cpu(), e.cpu(), max_show, describe_input)
    bad = (y.cpu() != e.cpu())
    n_bad = int(bad.sum())
    if n_bad == 0:
        return None
    return (f"{n_bad} of {e.numel()} elements of your {name} are wrong\nfirst mismatches:\n"
            + _first_mismatches(bad, y.cpu(), e.cpu(), max_show, describe_input))


def rel_error(yours: torch.Tensor, expected: torch.Tensor) -> float:
    """‖yours − expected‖ / ‖expected‖ in float64."""
    y, e = yours.double(), expected.double()
    den = float(e.norm())
    return float((y - e).norm()) / den if den > 0 else math.inf if float(y.norm()) else 0.0
