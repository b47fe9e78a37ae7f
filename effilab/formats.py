"""Floating-point formats for notebook 01: layouts, ranges, bit patterns and plots.

Everything here is *public* teaching material: the format table, helpers to look at the bits of a
tensor, generators of bit patterns that cover every value class, and the plots of the notebook.
The graded exercises (decomposing a number into its fields, rounding to bf16 with integer
arithmetic, a stochastic-rounding Triton kernel) are not solved here.

Formats follow IEEE 754 (fp32, fp16), Google Brain's bfloat16, and the OCP 8-bit formats
(Micikevicius et al., "FP8 Formats for Deep Learning", 2022): e4m3 as PyTorch's
``float8_e4m3fn`` (no infinities, a single NaN mantissa) and e5m2 (IEEE-like).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

__all__ = [
    "FloatFormat",
    "FORMATS",
    "ValueClass",
    "fmt_of",
    "bits_of",
    "from_bits",
    "bit_patterns",
    "format_table",
    "stochastic_round_bf16_torch",
    "bf16_neighbours",
    "plot_bit_layouts",
    "plot_number_line",
    "plot_relative_spacing",
]


class ValueClass(enum.IntEnum):
    """The class of a floating-point value, as ``decompose`` must report it."""

    ZERO = 0
    SUBNORMAL = 1
    NORMAL = 2
    INF = 3
    NAN = 4


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exp_bits`` exponent bits, ``man_bits`` mantissa bits.

    A finite number with sign ``s``, exponent field ``E`` and mantissa field ``M`` is
    ``(-1)**s * 2**(E - bias) * (1 + M / 2**man_bits)`` when ``E > 0`` (normal) and
    ``(-1)**s * 2**(1 - bias) * (M / 2**man_bits)`` when ``E == 0`` (zero or subnormal).
    """

    name: str
    dtype: torch.dtype
    exp_bits: int
    man_bits: int
    has_inf: bool  # False for e4m3fn: the all-ones exponent still holds normal numbers
    nan_all_mantissa_ones_only: bool  # True for e4m3fn: only S.1111.111 is NaN

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def int_dtype(self) -> torch.dtype:
        """The signed integer dtype of the same width (for ``Tensor.view``)."""
        return {32: torch.int32, 16: torch.int16, 8: torch.int8}[self.bits]

    @property
    def finfo(self) -> torch.finfo:
        return torch.finfo(self.dtype)

    @property
    def max(self) -> float:
        return float(self.finfo.max)

    @property
    def smallest_normal(self) -> float:
        return float(self.finfo.smallest_normal)

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.man_bits)

    @property
    def eps(self) -> float:
        """Spacing of numbers just above 1.0 (machine epsilon)."""
        return 2.0 ** (-self.man_bits)

    def __repr__(self) -> str:  # short, for reports
        return f"FloatFormat({self.name}: 1+{self.exp_bits}+{self.man_bits} bits, bias {self.bias})"


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", torch.float32, 8, 23, True, False),
    "fp16": FloatFormat("fp16", torch.float16, 5, 10, True, False),
    "bf16": FloatFormat("bf16", torch.bfloat16, 8, 7, True, False),
    "fp8_e4m3": FloatFormat("fp8_e4m3", torch.float8_e4m3fn, 4, 3, False, True),
    "fp8_e5m2": FloatFormat("fp8_e5m2", torch.float8_e5m2, 5, 2, True, False),
}


def fmt_of(dtype: torch.dtype) -> FloatFormat:
    """The :class:`FloatFormat` of a torch dtype."""
    for f in FORMATS.values():
        if f.dtype == dtype:
            return f
    raise ValueError(f"no FloatFormat for {dtype}; known: {[f.dtype for f in FORMATS.values()]}")


def bits_of(x: torch.Tensor) -> torch.Tensor:
    """The bit patterns of ``x`` as non-negative int64 (e.g. 0x3F800000 for fp32 1.0)."""
    f = fmt_of(x.dtype)
    raw = x.view(f.int_dtype).to(torch.int64)
    return raw & ((1 << f.bits) - 1)


def from_bits(bits: torch.Tensor, fmt: FloatFormat | str) -> torch.Tensor:
    """Inverse of :func:`bits_of`: a tensor of ``fmt`` whose bit patterns are ``bits`` (any int dtype)."""
    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    b = bits.to(torch.int64) & ((1 << f.bits) - 1)
    b = torch.where(b >= (1 << (f.bits - 1)), b - (1 << f.bits), b)  # to signed range
    return b.to(f.int_dtype).view(f.dtype)


def _special_bits(f: FloatFormat) -> list[int]:
    """Bit patterns at the edges of every value class, both signs."""
    m, e = f.man_bits, f.exp_bits
    top_e = ((1 << e) - 1) << m
    out = [
        0,  # +0
        1,  # smallest subnormal
        (1 << m) - 1,  # largest subnormal
        1 << m,  # smallest normal
        (f.bias << m),  # 1.0
        (f.bias << m) | 1,  # 1 + eps
        top_e - 1,  # largest number below the all-ones exponent
        top_e,  # inf (or 2**(emax+1) in e4m3fn)
        top_e | 1,  # NaN (or a normal in e4m3fn)
        top_e | (1 << (m - 1)),  # quiet NaN
        top_e | ((1 << m) - 1),  # NaN with all-ones mantissa (the only NaN of e4m3fn)
    ]
    return out + [b | (1 << (f.bits - 1)) for b in out]


def bit_patterns(fmt: FloatFormat | str, n: int = 100_000, seed: int = 0) -> torch.Tensor:
    """A tensor of ``fmt`` covering every value class: edge patterns, then random bit patterns.

    8- and 16-bit formats are enumerated exhaustively (every pattern once, then random ones up to
    ``n``); fp32 gets uniformly random 32-bit patterns plus extra subnormals, so that a check
    on ``n`` values sees ±0, ±inf, NaNs, subnormals and normals of all magnitudes.
    """
    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    g = torch.Generator().manual_seed(seed)
    parts = [torch.tensor(_special_bits(f), dtype=torch.int64)]
    if f.bits <= 16:
        parts.append(torch.randperm(1 << f.bits, generator=g))
    rest = max(0, n - sum(p.numel() for p in parts))
    rand = torch.randint(0, 1 << f.bits, (rest,), generator=g, dtype=torch.int64)
    if f.bits == 32:  # random patterns are rarely subnormal: force a slice of them
        k = rest // 16
        rand[:k] &= (1 << 31) | ((1 << f.man_bits) - 1)
    parts.append(rand)
    return from_bits(torch.cat(parts), f)


def format_table() -> list[dict]:
    """One row per format: bits, bias, largest, smallest normal and subnormal, epsilon."""
    rows = []
    for f in FORMATS.values():
        rows.append(
            dict(
                format=f.name,
                layout=f"1+{f.exp_bits}+{f.man_bits}",
                bias=f.bias,
                max=f.max,
                smallest_normal=f.smallest_normal,
                smallest_subnormal=f.smallest_subnormal,
                eps=f.eps,
                decimal_digits=round(math.log10(2 ** (f.man_bits + 1)), 2),
                has_inf=f.has_inf,
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Stochastic rounding: the eager PyTorch version, i.e. the baseline a Triton kernel must beat.
# ----------------------------------------------------------------------------------------------
def stochastic_round_bf16_torch(x: torch.Tensor, seed: int) -> torch.Tensor:
    """fp32 → bf16 with stochastic rounding, in eager PyTorch (several kernels, several passes).

    Adding a uniform random integer in [0, 2**16) to the fp32 bit pattern and then dropping the
    low 16 bits rounds up with probability equal to the dropped fraction, so the result is
    unbiased: E[round(x)] = x (Gupta et al., "Deep Learning with Limited Numerical Precision",
    2015). Magnitudes round, signs stay: the bit pattern is sign-magnitude. NaN stays NaN.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"expected a float32 tensor, got {x.dtype}")
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, generator=g, device=x.device, dtype=torch.int32)
    rounded = torch.bitwise_right_shift(bits + noise, 16)  # arithmetic shift keeps the sign bits
    out = rounded.to(torch.int16).view(torch.bfloat16)
    return torch.where(torch.isnan(x), torch.full_like(out, float("nan")), out)


def bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two bf16 values around each fp32 value: toward zero and away from zero (bit patterns, int64).

    For a value that bf16 represents exactly both are the value itself. Above the largest bf16
    number the neighbour away from zero is infinity.
    """
    b = bits_of(x.to(torch.float32))
    low = b >> 16
    exact = (b & 0xFFFF) == 0
    high = torch.where(exact, low, low + 1)
    return low, high


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------
_COLORS = {"sign": "#d62728", "exponent": "#1f77b4", "mantissa": "#2ca02c"}


def plot_bit_layouts(ax=None, formats=None):
    """A bar per format showing its sign, exponent and mantissa fields to scale."""
    import matplotlib.pyplot as plt

    formats = formats or list(FORMATS.values())
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.6 + 0.5 * len(formats)))
    for row, f in enumerate(reversed(formats)):
        start = 32 - f.bits
        for field, width in (("sign", 1), ("exponent", f.exp_bits), ("mantissa", f.man_bits)):
            ax.barh(row, width, left=start, color=_COLORS[field], edgecolor="white")
            if width >= 2:
                ax.text(start + width / 2, row, f"{field[0]}{width}", ha="center", va="center",
                        color="white", fontsize=8)
            start += width
    ax.set_yticks(range(len(formats)), [f.name for f in reversed(formats)])
    ax.set_xlim(0, 32)
    ax.set_xlabel("bit position (right-aligned)")
    ax.set_title("Bit layouts: sign | exponent | mantissa")
    return ax


def plot_number_line(fmt: FloatFormat | str = "fp8_e4m3", ax=None, max_value: float | None = None):
    """Every non-negative finite value of a small format on a line: spacing doubles per binade."""
    import matplotlib.pyplot as plt

    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    if f.bits > 16:
        raise ValueError("plot_number_line enumerates every value: use a format of 16 bits or fewer")
    vals = from_bits(torch.arange(0, 1 << (f.bits - 1)), f).to(torch.float64)
    vals = vals[torch.isfinite(vals)]
    if max_value is not None:
        vals = vals[vals <= max_value]
    sub = vals < f.smallest_normal
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.6))
    ax.vlines(vals[~sub].numpy(), 0, 1, lw=0.6, color=_COLORS["exponent"], label="normal")
    ax.vlines(vals[sub].numpy(), 0, 1, lw=0.6, color=_COLORS["sign"], label="subnormal / zero")
    ax.set_yticks([])
    ax.set_xlabel("value")
    ax.set_title(f"Every representable value of {f.name} (≤ {float(vals.max()):g})")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_relative_spacing(ax=None, formats=None, lo: float = 1e-10, hi: float = 1e6):
    """Relative gap between neighbouring numbers (≈ 2·rounding error) vs magnitude, log-log.

    Flat at 2**-man_bits over the normal range; it rises in the subnormal range, where precision
    is lost, and stops at the largest finite value.
    """
    import matplotlib.pyplot as plt

    formats = formats or list(FORMATS.values())
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    xs = torch.logspace(math.log10(lo), math.log10(hi), 4000, dtype=torch.float64)
    for f in formats:
        ok = (xs <= f.max) & (xs >= f.smallest_subnormal)
        x = xs[ok]
        exp = torch.floor(torch.log2(x)).clamp(min=1 - f.bias)
        spacing = torch.pow(2.0, exp - f.man_bits)
        ax.loglog(x.numpy(), (spacing / x).numpy(), label=f.name)
    ax.set_xlabel("|x|")
    ax.set_ylabel("gap to next number / |x|")
    ax.set_title("Relative precision by magnitude")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return ax
