"""Exercise specs of notebook 01 — floating-point formats.

1. ``decompose(x, fmt)``: sign, exponent, significand and value class of every element, for fp32,
   fp16, bf16, fp8 e4m3 and fp8 e5m2, checked against torch's own conversion to float64.
2. ``round_to_bf16(x)``: fp32 → bf16 with round-to-nearest-even by integer arithmetic, bit-exact
   against ``x.to(torch.bfloat16)``.
3. ``stochastic_round_bf16(x, seed)``: a Triton kernel; always one of the two bf16 neighbours,
   unbiased in expectation (a binomial test with a stated false-alarm rate), reproducible per seed;
   on a GPU, faster than the eager PyTorch version of the same computation.
4. ``underflow_fraction(grads)`` and ``max_safe_loss_scale(grads)``: fp16 gradient underflow and
   the loss scale that recovers it (the computed answers of the mixed-precision story).
"""
from __future__ import annotations

import math
import statistics

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...formats import FORMATS, FloatFormat, ValueClass, bf16_neighbours, bit_patterns, bits_of, from_bits
# Taken at import: the grader traps the student-facing name while graded code runs (grader.traps),
# so the checker's speed baseline must be its own reference, never a lazy import inside speed().
from ...formats import stochastic_round_bf16_torch as _sr_bf16_torch
from ..compare import compare_tensors, format_value
from ..calls import Problem, as_float, call_student
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import SpeedPart

NOTEBOOK = "01_float_formats"




# ==============================================================================================
# 1. decompose
# ==============================================================================================
_CLASS_GROUPS = {
    "normal numbers": (ValueClass.NORMAL,),
    "zeros and subnormals": (ValueClass.ZERO, ValueClass.SUBNORMAL),
    "infinities and NaNs": (ValueClass.INF, ValueClass.NAN),
}


def expected_decomposition(x: torch.Tensor, f: FloatFormat):
    """(sign, exponent, significand, value_class) from torch's conversion of ``x`` to float64."""
    v = x.to(torch.float64)
    sign = (bits_of(x) >> (f.bits - 1)) & 1
    nan, inf, zero = torch.isnan(v), torch.isinf(v), v == 0
    sub = ~nan & ~inf & ~zero & (v.abs() < f.smallest_normal)
    cls = torch.full_like(sign, int(ValueClass.NORMAL))
    cls[zero] = int(ValueClass.ZERO)
    cls[sub] = int(ValueClass.SUBNORMAL)
    cls[inf] = int(ValueClass.INF)
    cls[nan] = int(ValueClass.NAN)
    finite = ~nan & ~inf
    a = torch.where(finite, v.abs(), torch.zeros_like(v))
    _, e = torch.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    exponent = torch.where(cls == int(ValueClass.NORMAL), e.to(torch.int64) - 1,
                           torch.full_like(sign, 1 - f.bias))
    significand = torch.ldexp(a, (f.man_bits - exponent).to(torch.float64)).round().to(torch.int64)
    return sign, exponent, significand, cls


@register
class Decompose(Exercise):
    name = "decompose"
    notebook = NOTEBOOK
    title = "Decompose a float into sign, exponent, significand and value class"
    points = {"correctness": 3.0}
    signature = "decompose(x: torch.Tensor, fmt: FloatFormat) -> (sign, exponent, significand, value_class)"

    def cases(self, suite, key):
        out = []
        for fi, f in enumerate(FORMATS.values()):
            for gname, classes in _CLASS_GROUPS.items():
                cases = []
                for s in case_seeds(suite, key):
                    x = bit_patterns(f, n=100_000, seed=s * 31 + fi)
                    cases.append(Case(f"{f.name}, seed {s}, {x.numel()} bit patterns", (x, f),
                                      meta={"fmt": f, "classes": classes}))
                out.append(Group(f"{f.name}: {gname}", cases, hint=_decompose_hint(f, gname)))
        return out

    def judge(self, out, case, expected=None):
        x, f = case.args
        if not isinstance(out, (tuple, list)) or len(out) != 4:
            return ("return a tuple of four tensors (sign, exponent, significand, value_class); "
                    f"got {type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
        names = ("sign", "exponent", "significand", "value_class")
        got = []
        for nm, t in zip(names, out):
            if not isinstance(t, torch.Tensor):
                return f"{nm} is a {type(t).__name__}; return torch tensors"
            if t.shape != x.shape:
                return f"{nm} has shape {tuple(t.shape)}; expected the shape of x, {tuple(x.shape)}"
            if t.dtype.is_floating_point:
                return f"{nm} has dtype {t.dtype}; return integer tensors (e.g. torch.int64)"
            got.append(t.to(torch.int64).cpu())
        exp = expected_decomposition(x.cpu(), f)
        sel = torch.zeros(x.shape, dtype=torch.bool)
        for c in case.meta["classes"]:
            sel |= exp[3] == int(c)
        finite = sel & (exp[3] <= int(ValueClass.NORMAL))
        masks = (sel, finite, finite, sel)  # exponent and significand are only defined for finite values
        for nm, g, e, m in zip(names, got, exp, masks):
            bad = (g != e) & m
            n = int(bad.sum())
            if n:
                idx = bad.nonzero().flatten()[:5].tolist()
                rows = []
                for i in idx:
                    mine = ", ".join(f"{k}={int(t[i])}" for k, t in zip(("s", "e", "sig", "cls"), got))
                    theirs = ", ".join(f"{k}={int(t[i])}" for k, t in zip(("s", "e", "sig", "cls"), exp))
                    rows.append(f"  x[{i}] = {format_value(x.cpu()[i])}: yours ({mine})  expected ({theirs})")
                return (f"{nm} wrong for {n} of {int(m.sum())} values\nfirst mismatches "
                        "(value_class: 0 zero, 1 subnormal, 2 normal, 3 inf, 4 nan):\n" + "\n".join(rows))
        return None


def _decompose_hint(f: FloatFormat, group: str) -> str:
    if group == "normal numbers":
        h = (f"normal: exponent = E - bias (bias {f.bias} for {f.name}), significand = 2**{f.man_bits} + M "
             "(the implicit leading 1)")
        if not f.has_inf:
            h += "; in e4m3 the all-ones exponent still holds normal numbers unless M is all ones"
        return h
    if group == "zeros and subnormals":
        return (f"E == 0: exponent is 1 - bias (= {1 - f.bias}), not -bias, and the significand is M with no "
                "implicit 1; class ZERO when M == 0, SUBNORMAL otherwise; keep the sign of -0.0")
    if not f.has_inf:
        return "e4m3fn has no infinities: only S.1111.111 is NaN; every other pattern is finite"
    return "all-ones exponent: INF when M == 0, NAN otherwise; the sign bit is still reported for both"


# ==============================================================================================
# 2. round_to_bf16
# ==============================================================================================
def _fp32_from_parts(sign: torch.Tensor, exp: torch.Tensor, man: torch.Tensor) -> torch.Tensor:
    return from_bits((sign << 31) | (exp << 23) | man, "fp32")


def _round_inputs(kind: str, s: int, shape=(4099,)) -> torch.Tensor:
    g = torch.Generator().manual_seed(s)
    n = math.prod(shape)
    sign = torch.randint(0, 2, (n,), generator=g)
    man = torch.randint(0, 1 << 23, (n,), generator=g)
    if kind in ("normal", "subnormal"):
        # exact ties (low 16 bits 0x8000) belong to the "ties" group alone: without this, about one
        # course seed in ten would put a tie here and a ties-only mistake would cost this group too
        man = torch.where((man & 0xFFFF) == 0x8000, man ^ 1, man)
    if kind == "normal":
        x = _fp32_from_parts(sign, torch.randint(1, 254, (n,), generator=g), man)
    elif kind == "ties":
        man = (man & ~0xFFFF) | 0x8000  # exactly halfway between two bf16 numbers
        x = _fp32_from_parts(sign, torch.randint(1, 254, (n,), generator=g), man)
    elif kind == "subnormal":
        x = _fp32_from_parts(sign, torch.zeros(n, dtype=torch.int64), man)
        x[:4] = torch.tensor([0.0, -0.0, 1e-45, -1e-45])
    elif kind == "overflow":
        low = torch.randint(0, 1 << 16, (n,), generator=g)
        x = from_bits((sign << 31) | 0x7F7F0000 | low, "fp32")
    elif kind == "special":
        base = [0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF,
                0x7F80FFFF, 0x7F810000, 0xFFFFFFFF]
        picks = torch.tensor(base)[torch.randint(0, len(base), (n,), generator=g)]
        x = from_bits(picks, "fp32")
    elif kind == "any":
        x = from_bits(torch.randint(0, 1 << 32, (n,), generator=g), "fp32")
    else:
        raise ValueError(kind)
    return x.reshape(shape)


@register
class RoundToBF16(Exercise):
    name = "round_to_bf16"
    notebook = NOTEBOOK
    title = "fp32 → bf16 with round-to-nearest-even, by integer arithmetic"
    points = {"correctness": 3.0}
    signature = "round_to_bf16(x: torch.Tensor[float32]) -> torch.Tensor[bfloat16]"
    forbidden_source = ((r"\.to\(\s*(torch\.)?bfloat16|\.bfloat16\(\)|\.type\(\s*torch\.bfloat16",
                         "converting with torch does the whole exercise: use integer operations on the bits"),)

    def run(self, fn, case):
        """The call, watched: any float → bf16 conversion that torch does (``.to``, ``.type``, a keyword
        form, ``copy_`` into a bf16 tensor…) is refused, however it was spelled; reinterpreting bits
        with ``.view(torch.bfloat16)`` is what the exercise asks for."""
        with _TorchConversions() as seen:
            out = super().run(fn, case)
        if seen.ops:
            return Problem(f"your function converts to bfloat16 with torch ({', '.join(sorted(seen.ops)[:3])}): that "
                           "does the whole exercise", "use integer operations on the bits of x.view(torch.int32), "
                           "then .view(torch.bfloat16) on the int16 result")
        return out

    _GROUPS = [
        ("normal numbers", "normal", "add 0x7FFF plus the lowest kept bit ((bits >> 16) & 1) to the fp32 bits, "
                                     "then keep the high 16 bits"),
        ("ties round to even", "ties", "a tie (low 16 bits == 0x8000) rounds to the neighbour whose last kept "
                                       "bit is 0: that is what the '+ ((bits >> 16) & 1)' term does"),
        ("zeros and subnormals", "subnormal", "the same integer recipe works for subnormals; keep the sign of -0.0"),
        ("overflow to infinity", "overflow", "values above the largest bf16 round to inf: the carry of the integer "
                                             "addition into the exponent does this for free"),
        ("infinities and NaNs", "special", "a NaN must stay NaN: a NaN whose payload sits in the low 16 bits "
                                           "(e.g. 0x7F800001) would turn into inf if you only truncate — "
                                           "detect NaN first (x != x) and return a quiet NaN (0x7FC0)"),
        ("odd 2-D shape 1823×781, all bit patterns", "any", "this group mixes every kind of bit pattern: fix the "
                                                            "groups above first; then make sure any shape works "
                                                            "(work on x.view(torch.int32), keep x's shape)"),
    ]

    def cases(self, suite, key):
        out = []
        for gname, kind, hint in self._GROUPS:
            shape = (1823, 781) if kind == "any" else (4099,)
            cases = [Case(f"{kind} inputs, seed {s}, shape {shape}", (_round_inputs(kind, s, shape),))
                     for s in case_seeds(suite, key)]
            out.append(Group(gname, cases, hint))
        return out

    def judge(self, out, case, expected=None):
        (x,) = case.args
        expected = x.to(torch.bfloat16)
        flat_x = x.reshape(-1)
        return compare_tensors(out, expected, exact=True, name="result",
                               describe_input=lambda ix: "x = " + format_value(
                                   flat_x[_flat_index(ix, x.shape)]))


def _sr_window(args, pick: int):
    """A random window of 2^22 elements of the timed input and its output (judged in place of all 2^28)."""
    x, seed = args
    n = min(SR_JUDGED, x.numel())
    a = pick % (x.numel() - n + 1)
    return (x[a:a + n], seed), slice(a, a + n)


class _TorchConversions(TorchDispatchMode):
    """Records the aten ops that write bf16 values computed from floats (every op with a bf16
    result except reinterpretations and copies of bf16 data)."""

    ALLOWED = {"view", "_unsafe_view", "alias", "detach", "clone", "reshape", "_reshape_alias", "as_strided",
               "contiguous", "empty", "empty_like", "empty_strided", "full", "full_like", "fill", "zeros", "zeros_like",
               "lift_fresh", "select", "slice", "expand", "t", "transpose", "permute", "squeeze", "unsqueeze",
               "flatten", "unflatten"}

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        if name not in self.ALLOWED:
            src_float = any(isinstance(a, torch.Tensor) and a.dtype.is_floating_point and a.dtype != torch.bfloat16
                            for a in list(args) + list((kwargs or {}).values()))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if src_float and any(isinstance(o, torch.Tensor) and o.dtype == torch.bfloat16 for o in outs):
                self.ops.add(f"aten::{name}")
        return out


def _flat_index(ix, shape) -> int:
    flat = 0
    for i, n in zip(ix, shape):
        flat = flat * n + i
    return flat


# ==============================================================================================
# 3. stochastic_round_bf16 (Triton)
# ==============================================================================================
SR_FALSE_ALARM = 1e-6  # probability that a correct kernel fails the unbiasedness test (family-wise)
SR_SPEED_THRESHOLD = 3.0  # required speed-up over the eager PyTorch version; see benchmarks/RESULTS.md
SR_SPEED_N = 1 << 28  # 256 Mi fp32 elements: 1 GiB in, 512 MiB out (launch overhead negligible)
SR_JUDGED = 1 << 22  # of the timed outputs, a random window this long is sent to the grader and judged


def _sr_values(s: int, shape, device) -> torch.Tensor:
    """Random fp32 values of all magnitudes and both signs, a few bf16-exact ones, zeros, infs, NaN."""
    dev = torch.device(device)
    on = dev if dev.type == "cuda" else torch.device("cpu")  # GPU-sized inputs are drawn on the GPU
    g = torch.Generator(device=on).manual_seed(s)
    n = math.prod(shape)
    x = torch.randn(n, generator=g, device=on) * torch.exp2(torch.randint(-40, 40, (n,), generator=g, device=on).float())
    x[: min(n, 8)] = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1.0, -3.0, 1e-40, 3.3e38])[: min(n, 8)]
    return x.reshape(shape).to(dev)


def _unbiased_values(s: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k fp32 values whose round-up probability p lies in [0.05, 0.95], and that p."""
    g = torch.Generator().manual_seed(s)
    hi = torch.randint(0x3F00, 0x4100, (k,), generator=g)  # around 0.5 … 8
    frac = torch.randint(3277, 62259, (k,), generator=g)  # low 16 bits: p = frac / 65536
    sign = torch.randint(0, 2, (k,), generator=g)
    x = from_bits((sign << 31) | (hi << 16) | frac, "fp32")
    return x, frac.double() / 65536.0


def _allowed(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> str:
    """What a stochastic rounding of ``x`` may return: a NaN for a NaN, else its one or two bf16 neighbours."""
    if bool(torch.isnan(x)):
        return "allowed: a NaN (any payload)"
    return f"allowed 0x{int(lo):04X}" + ("" if int(lo) == int(hi) else f" or 0x{int(hi):04X}")


@register
class StochasticRoundBF16(Exercise):
    name = "stochastic_round_bf16"
    notebook = NOTEBOOK
    title = "A Triton kernel: fp32 → bf16 with stochastic rounding"
    points = {"correctness": 3.0, "speed": 2.0}
    signature = "stochastic_round_bf16(x: torch.Tensor[float32], seed: int) -> torch.Tensor[bfloat16]"
    forbidden = ("effilab.formats.stochastic_round_bf16_torch",)
    kernel = True

    def cases(self, suite, key):
        dev = default_device()
        seeds = case_seeds(suite, key)
        big = (1823, 781) if dev.type == "cuda" else (257, 129)
        neigh = [Case(f"seed {s}, shape {shp}", (_sr_values(s, shp, dev), s), meta={"check": "neighbours"})
                 for s, shp in zip(seeds, [big, (1000,), (3, 5, 7), (1,), (65537,)])]
        exact = []
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            b = torch.randint(0, 1 << 16, (4097,), generator=g)
            b = b[((b >> 7) & 0xFF) != 0xFF]  # bf16-exact values, no NaN patterns
            xs = from_bits(b << 16, "fp32").to(dev)
            exact.append(Case(f"seed {s}, {xs.numel()} bf16-exact values incl. ±0 and ±inf", (xs, s),
                              meta={"check": "exact"}))
        nan = [Case(f"seed {s}, NaN payloads", (from_bits(torch.tensor(
            [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F80FFFF, 0x7FBFFFFF]), "fp32").to(dev), s),
            meta={"check": "nan"}) for s in seeds]
        k, reps = (256, 4096) if dev.type == "cuda" else (64, 1024)
        unbiased = []
        for s in seeds:
            vals, p = _unbiased_values(s, k)
            x = vals.repeat_interleave(reps).to(dev)
            unbiased.append(Case(f"seed {s}, {k} values × {reps} draws", (x, s),
                                 meta={"check": "unbiased", "vals": vals, "p": p, "reps": reps}))
        seed_cases = [Case(f"seed {s}, called twice, then with the next seed", (_sr_values(s, (4096,), dev), s),
                           meta={"check": "seed"}) for s in seeds]
        return [
            Group("only ever one of the two bf16 neighbours (odd shapes, all magnitudes)", neigh,
                  "add a random integer in [0, 2**16) to the fp32 bit pattern, then keep the high 16 bits"),
            Group("values bf16 represents exactly come back unchanged (±0, ±inf too)", exact,
                  "when the low 16 bits are 0 no random number may change the value: add at most 0xFFFF"),
            Group("NaN stays NaN", nan, "detect NaN (x != x) and store 0x7FC0: truncating a NaN whose payload "
                                        "sits in the low 16 bits gives inf"),
            Group(f"unbiased: E[round(x)] = x (binomial test, false-alarm rate {SR_FALSE_ALARM:g})", unbiased,
                  "the random integer must be uniform over all 2**16 values of the dropped bits — "
                  "e.g. tl.randint(seed, offsets) & 0xFFFF; round-to-nearest or truncation is biased"),
            Group("same seed reproduces, another seed differs", seed_cases,
                  "draw the random numbers from tl.randint(seed, offsets) with the element's global offset"),
        ]

    def _judge_one(self, out, case):
        x, s = case.args
        if not isinstance(out, torch.Tensor):
            return f"return a torch.Tensor, got {type(out).__name__}"
        if out.dtype != torch.bfloat16 or out.shape != x.shape:
            return f"expected a bfloat16 tensor of shape {tuple(x.shape)}, got {out.dtype} of shape {tuple(out.shape)}"
        if out.device.type != x.device.type:
            return f"your output is on {out.device}, the input on {x.device}"
        check = case.meta["check"]
        xc, oc = x.detach(), out.detach().to(x.device)
        ob = bits_of(oc)
        if check in ("neighbours", "exact", "nan", "seed"):
            lo, hi = bf16_neighbours(xc)
            isnan = torch.isnan(xc)
            ok = ((ob == lo) | (ob == hi)) & ~isnan
            ok |= isnan & torch.isnan(oc.float())
            bad = ~ok
            if int(bad.sum()):
                flat = bad.reshape(-1).nonzero().flatten()[:5].tolist()
                xf, of, lof, hif = xc.reshape(-1), oc.reshape(-1), lo.reshape(-1), hi.reshape(-1)
                rows = [f"  x[{i}] = {format_value(xf[i])}: yours {format_value(of[i])}, " + _allowed(xf[i], lof[i], hif[i])
                        for i in flat]
                unw = int((torch.isnan(oc.float()) & ~isnan).sum())
                extra = f" ({unw} NaN where the input was not NaN: never written?)" if unw else ""
                return f"{int(bad.sum())} of {x.numel()} results are not a bf16 neighbour of x{extra}\n" + "\n".join(rows)
            return None
        if check == "unbiased":
            vals, p, reps = case.meta["vals"].to(xc.device), case.meta["p"].to(xc.device), case.meta["reps"]
            lo, hi = bf16_neighbours(vals)
            draws = ob.reshape(len(vals), reps)
            if not bool(((draws == lo[:, None]) | (draws == hi[:, None])).all()):
                return "some results are not a bf16 neighbour of x (see the neighbours group)"
            ups = (draws == hi[:, None]).sum(1).double()
            z = (ups - reps * p) / torch.sqrt(reps * p * (1 - p))
            zcrit = statistics.NormalDist().inv_cdf(1 - SR_FALSE_ALARM / (2 * len(vals)))
            worst = int(z.abs().argmax())
            if float(z.abs().max()) > zcrit:
                return (f"biased: for x = {format_value(vals[worst])} the round-up probability should be "
                        f"{float(p[worst]):.4f}, yours is {float(ups[worst]) / reps:.4f} over {reps} draws "
                        f"(z = {float(z[worst]):.1f}, limit ±{zcrit:.2f})")
            return None
        raise AssertionError(check)

    def judge(self, out, case, expected=None):
        if case.meta["check"] == "seed":
            return self._judge_seed(out, case)
        return self._judge_one(out, case)

    def run(self, fn, case):
        if case.meta["check"] != "seed":
            return super().run(fn, case)
        x, s = case.args
        outs = [call_student(fn, (x, seed)) for seed in (s, s, s + 1)]
        bad = [o for o in outs if isinstance(o, Problem)]
        return bad[0] if bad else tuple(outs)

    def _judge_seed(self, out, case):
        x, s = case.args
        problem = self._judge_one(out[0], Case(case.label, case.args, meta={"check": "neighbours"}))
        if problem:
            return problem
        a, b, c = (bits_of(o.cpu()) for o in out)
        if not torch.equal(a, b):
            return "two calls with the same seed gave different results; the seed must make runs reproducible"
        if torch.equal(a, c):
            return "the next seed gave identical results; the randomness must depend on the seed"
        return None

    def speed_part(self, key):
        s = key.derive("speed")
        return SpeedPart(
            inputs=lambda: (_sr_values(s, (SR_SPEED_N,), "cuda"), 7), baseline=_sr_bf16_torch,
            threshold=SR_SPEED_THRESHOLD, gate_label="the timed input (2^28 values; a random 2^22 judged)",
            meta={"check": "neighbours"}, view=_sr_window,
            fresh=lambda: (_sr_values(s + 99, (SR_SPEED_N,), "cuda"), 8), own_kernels=True,
            bytes_moved=SR_SPEED_N * (4 + 2), baseline_name="eager PyTorch",
            cpu_note=f"On a GPU yours must be ≥ {SR_SPEED_THRESHOLD:g}× faster than eager PyTorch on 2^28 values.",
            advice="one fused pass should read 4 B and write 2 B per element; avoid extra torch ops around "
                   "the kernel and use BLOCK ≥ 1024")


# ==============================================================================================
# 4. fp16 gradient underflow and loss scaling
# ==============================================================================================
FP16_OVERFLOW = 65520.0  # the smallest magnitude that rounds to inf in fp16 (max finite 65504)


def _gradients(s: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(s)
    n = 20_011
    if kind == "typical":  # magnitudes log-uniform over 1e-12 … 1e-2
        mags = torch.pow(10.0, torch.empty(n).uniform_(-12, -2, generator=g))
    elif kind == "outlier":  # mostly tiny, a few large
        mags = torch.pow(10.0, torch.empty(n).uniform_(-10, -6, generator=g))
        mags[:: 997] = torch.pow(10.0, torch.empty(mags[::997].numel()).uniform_(0, 3.5, generator=g))
    elif kind == "zeros":  # exact zeros must not count as underflow
        mags = torch.pow(10.0, torch.empty(n).uniform_(-9, -3, generator=g))
        mags[torch.rand(n, generator=g) < 0.3] = 0.0
    elif kind == "huge":  # so large that the safe scale is below 1
        mags = torch.pow(10.0, torch.empty(n).uniform_(-3, 6, generator=g))
    elif kind == "boundary":  # max |g| · 2**k lands on fp16's edge: 65504 (max), 65504…65520 (rounds down), 65520 (inf)
        mags = torch.pow(10.0, torch.empty(n).uniform_(-8, -1, generator=g))
        edge = (65504.0, 65512.0, 65519.0, FP16_OVERFLOW, 65510.0)[s % 5]
        mags[7] = edge / 2 ** int(torch.randint(4, 20, (1,), generator=g))
    else:
        raise ValueError(kind)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    return (mags * signs).to(torch.float32)


_GRAD_KINDS = ["typical", "outlier", "zeros", "huge", "boundary"]


def expected_underflow_fraction(g: torch.Tensor) -> float:
    """Analytically: a magnitude at or below 2**-25 (half the smallest fp16 subnormal) rounds to 0."""
    a = g.abs().to(torch.float64)
    nz = int((a > 0).sum())
    return float(((a > 0) & (a <= 2.0 ** -25)).sum()) / nz if nz else 0.0


def expected_max_safe_loss_scale(g: torch.Tensor) -> float:
    """Analytically, from max |g| = m·2**e (m in [0.5, 1)): the largest k with max|g|·2**k < 65520."""
    mx = float(g.abs().max())
    if mx == 0:
        raise ValueError("all-zero gradients: every scale is safe")
    m, e = math.frexp(mx)
    return math.ldexp(1.0, 16 - e if m < FP16_OVERFLOW / 65536 else 15 - e)


class _ScalarExercise(Exercise):
    notebook = NOTEBOOK

    def cases(self, suite, key):
        cases = [Case(f"{kind} gradients, seed {s}", (_gradients(s, kind),), meta={"kind": kind})
                 for kind in _GRAD_KINDS for s in case_seeds(suite, key)]
        by_kind = {}
        for c in cases:
            by_kind.setdefault(c.meta["kind"], []).append(c)
        return [Group(f"{kind} gradients", cs, self.hint) for kind, cs in by_kind.items()]



@register
class UnderflowFraction(_ScalarExercise):
    name = "underflow_fraction"
    title = "Fraction of non-zero fp32 gradients that flush to zero in fp16"
    points = {"correctness": 1.0}
    signature = "underflow_fraction(grads: torch.Tensor[float32]) -> float"
    hint = ("count the elements that are non-zero in fp32 but exactly 0 after .to(torch.float16), "
            "divide by the number of non-zero elements (exact zeros are not underflow)")

    def judge(self, out, case, expected=None):
        y = as_float(out)
        if isinstance(y, Problem):
            return y.message
        e = expected_underflow_fraction(case.args[0])
        if not math.isclose(y, e, abs_tol=1e-9):
            return f"yours {y:.6f}, expected {e:.6f}"
        return None


@register
class MaxSafeLossScale(_ScalarExercise):
    name = "max_safe_loss_scale"
    title = "The largest power-of-two loss scale that does not overflow fp16"
    points = {"correctness": 1.0}
    signature = "max_safe_loss_scale(grads: torch.Tensor[float32]) -> float"
    hint = ("find the largest integer k such that (grads * 2.0**k).to(torch.float16) has no inf: fp16's "
            "largest finite value is 65504 and anything ≥ 65520 rounds to inf; k may be negative")

    def judge(self, out, case, expected=None):
        y = as_float(out)
        if isinstance(y, Problem):
            return y.message
        e = expected_max_safe_loss_scale(case.args[0])
        if y != e:
            return (f"yours {y:g} (2**{math.log2(y):.2f}), expected {e:g} (2**{int(math.log2(e))})" if y > 0
                    else f"yours {y:g}, expected {e:g} (2**{int(math.log2(e))})")
        return None
