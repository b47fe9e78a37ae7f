"""Exercise specs of notebook 07, part 2: the exercises on the course model's layers and the whole model.

2. ``gptq_quantize`` on a layer of the course model, judged on held-out inputs against the reference
   GPTQ and RTN; 3. ``awq_search_scales``, judged against RTN and the reference AWQ; 5.
   ``quantize_model``: the perplexity gaps of GPTQ against RTN on the whole model.
See :mod:`effilab.grading.specs.nb07` for the thresholds and part 1.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

from ...quant import model as cm
from ..calls import Problem, call_student, one_thread
from ..compare import compare_tensors
from ..core import Case, CaseResult, Exercise, Group, case_seeds, register
from .nb07 import (AWQ_VS_REFERENCE, AWQ_VS_RTN, GPTQ_VS_REFERENCE, GPTQ_VS_RTN, N_CAL_WINDOWS, N_HELDOUT_WINDOWS,
                   NOTEBOOK, PPL_GAP_3BIT, _g_idx, _gen, _groups, _tensor_problem, dequantize_expected,
                   rtn_expected)

PUBLIC_REFS = Path(__file__).with_name("nb07_public_refs.json")


# ==============================================================================================
# Calibration activations of the course model (exercises 2 and 3)
# ==============================================================================================
@functools.lru_cache(maxsize=8)
def _activations(text: str, seed: int, n_windows: int) -> dict[str, torch.Tensor]:
    """Inputs of every linear of the course model on ``n_windows`` random windows of a shipped text."""
    with one_thread():
        model = cm.load_course_model()
        return cm.linear_inputs(model, cm.windows(cm.course_texts()[text], n_windows, seed=seed))


@functools.lru_cache(maxsize=1)
def _layers() -> tuple[list[str], dict[str, torch.Tensor]]:
    model = cm.load_course_model()
    names = cm.linear_names(model)
    mods = dict(model.named_modules())
    return names, {n: mods[n].weight.detach().clone() for n in names}


def layer_case(s: int, name: str, *, dead: int = 0, n_windows: int = N_CAL_WINDOWS):
    """(W, X_calibration, X_heldout) for layer ``name``: calibration rows from the calibration text,
    held-out rows from the held-out text, both drawn from ``s``; ``dead`` input channels zeroed in both."""
    _, weights = _layers()
    W = weights[name]
    Xc = _activations("calib", 1000 + s % 97, n_windows)[name]
    Xh = _activations("heldout", 2000 + s % 89, N_HELDOUT_WINDOWS)[name]
    if dead:
        idx = torch.randperm(W.shape[1], generator=_gen(s))[:dead]
        Xc, Xh = Xc.clone(), Xh.clone()
        Xc[:, idx] = 0.0
        Xh[:, idx] = 0.0
    return W, Xc, Xh


def output_error(W, W_hat, X) -> float:
    """Relative squared output error ‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖² (float64)."""
    X = X.double()
    y = X @ W.double().T
    return float(((X @ W_hat.double().T - y) ** 2).sum() / (y ** 2).sum().clamp_min(1e-300))


def _pick(s: int, names: list[str], i: int) -> str:
    return names[(s + i) % len(names)]


def _reference():
    """The instructor-only reference quantizers, or None in the student edition."""
    try:
        from ...quant import reference
    except ImportError:
        return None
    return reference


@functools.lru_cache(maxsize=1)
def _public_refs() -> dict:
    return json.loads(PUBLIC_REFS.read_text()) if PUBLIC_REFS.is_file() else {}


def _ref_error(kind: str, case: Case) -> float | None:
    """The reference method's error on this case: computed (instructor edition) or recorded (public)."""
    ref = _reference()
    if ref is None:
        return _public_refs().get(kind, {}).get(case.meta["ref_key"])
    return _compute_ref_error(kind, case, ref)


def _compute_ref_error(kind: str, case: Case, ref) -> float:
    W, Xc = case.args[:2]
    m = case.meta
    if kind == "gptq":
        q, sc, z, gi = ref.gptq_quantize(W, Xc, m["bits"], m["group_size"], act_order=m["act_order"])
        return output_error(W, ref.dequantize_grouped(q, sc, z, gi), m["heldout"])
    s = ref.awq_search_scales(W, Xc, m["bits"], m["group_size"], m["n_grid"])
    return output_error(W, ref.fake_quantize(W * s, m["bits"], m["group_size"]) / s, Xc)


def _rtn_error(W, X, bits, group_size) -> float:
    q, sc, z = rtn_expected(W, bits, group_size, False)
    return output_error(W, dequantize_expected(q, sc, z, _g_idx(W.shape[1], group_size)), X)


# ==============================================================================================
# 2. GPTQ
# ==============================================================================================
def _grouped_problem(out, n, k, bits, group_size) -> str | None:
    """What is wrong with a (q, scale, zero, g_idx) answer's types, shapes and grouping, if anything."""
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        return f"return a tuple (q, scale, zero, g_idx); got {type(out).__name__}"
    q, scale, zero, g_idx = out
    ng = k // _groups(k, group_size)
    for t, shp, dt, nm in ((q, (n, k), torch.uint8, "q"), (scale, (n, ng), torch.float32, "scale"),
                           (zero, (n, ng), torch.uint8, "zero"), (g_idx, (k,), torch.int64, "g_idx")):
        bad = _tensor_problem(t, shp, dt, nm)
        if bad:
            return bad
    if int(q.max()) > 2 ** bits - 1 or int(zero.max()) > 2 ** bits - 1:
        return f"codes and zeros must lie in 0..{2 ** bits - 1} for {bits} bits"
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= ng or not torch.all(torch.bincount(g_idx.long(), minlength=ng)
                                                                          == _groups(k, group_size)):
        return f"g_idx must give every one of the {ng} groups exactly {_groups(k, group_size)} columns"
    if not torch.isfinite(scale).all() or bool((scale <= 0).any()):
        return "every scale must be positive and finite"
    return None


@register
class GPTQ(Exercise):
    name = "gptq_quantize"
    notebook = NOTEBOOK
    title = "GPTQ for one linear layer"
    points = {"correctness": 4.0}
    signature = ("gptq_quantize(W: [N, K], X: [n, K], bits=4, group_size=128, act_order=False, damp=0.01, "
                 "block_size=128) -> (q uint8 [N, K], scale fp32 [N, K/G], zero uint8 [N, K/G], g_idx int64 [K])")
    forbidden = ("effilab.quant.reference",)

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        names, _ = _layers()

        def case(s, i, bits=4, gs=128, act_order=False, dead=0, n_windows=N_CAL_WINDOWS):
            name = _pick(s, names, i)
            W, Xc, Xh = layer_case(s, name, dead=dead, n_windows=n_windows)
            key_ = f"{name}|{s}|{bits}|{gs}|{act_order}|{dead}|{n_windows}"
            label = (f"seed {s}: {name} ({W.shape[0]}×{W.shape[1]}), {Xc.shape[0]} calibration tokens, {bits} bits, "
                     f"group {gs}, act_order={act_order}" + (f", {dead} dead input channels" if dead else ""))
            return Case(label, (W, Xc), {"bits": bits, "group_size": gs, "act_order": act_order},
                        meta={"heldout": Xh, "bits": bits, "group_size": gs, "act_order": act_order, "ref_key": key_})

        return [
            Group("4 bits, groups of 128", [case(s, i) for i, s in enumerate(seeds)],
                  "quantize column by column: q = quant(w[:, j]); err = (w[:, j] - deq) / Hinv[j, j]; "
                  "W[:, j:] -= err ⊗ Hinv[j, j:] inside the block; after the block, "
                  "W[:, end:] -= Err @ Hinv[block, end:] (Hinv = upper Cholesky factor of (H + λI)⁻¹)"),
            Group("act-order (columns by decreasing diag(H)), 4 bits, groups of 128",
                  [case(s, i + 3, act_order=True) for i, s in enumerate(seeds)],
                  "permute W's columns and H's rows and columns by argsort(diag(H), descending) before quantizing; "
                  "return q in the original column order and g_idx[perm[j]] = j // group_size"),
            Group("3 bits, one group per row (group_size=-1)",
                  [case(s, i + 5, bits=3, gs=-1) for i, s in enumerate(seeds)],
                  "group_size=-1: a single (scale, zero) per row, computed once, from the whole row, before column 0"),
            Group("fewer calibration tokens than inputs, dead input channels: dampening",
                  [case(s, i + 1, dead=16, n_windows=4) for i, s in enumerate(seeds)],
                  "H = 2 XᵀX / n is singular here: add λ = damp · mean(diag(H)) to its diagonal before the "
                  "Cholesky factorisation"),
        ]

    def judge(self, out, case, expected=None):
        W, Xc = case.args
        m = case.meta
        bad = _grouped_problem(out, *W.shape, m["bits"], m["group_size"])
        if bad:
            return bad
        w_hat = dequantize_expected(*out)
        if not torch.isfinite(w_hat).all():
            return "your quantized weights contain NaN or inf"
        err = output_error(W, w_hat, m["heldout"])
        rtn = _rtn_error(W, m["heldout"], m["bits"], m["group_size"])
        ref = _ref_error("gptq", case)
        msg = f"held-out output error ‖WX − ŴX‖²/‖WX‖²: yours {err:.4g}, RTN {rtn:.4g}" + (
            f", reference GPTQ {ref:.4g}" if ref is not None else "")
        if ref is not None and err > GPTQ_VS_REFERENCE * ref:
            return CaseResult(False, msg + f" — yours is above {GPTQ_VS_REFERENCE:g}× the reference's")
        if err > GPTQ_VS_RTN * rtn:
            return CaseResult(False, msg + f" — yours is above {GPTQ_VS_RTN:g}× RTN's")
        return None


# ==============================================================================================
# 3. AWQ
# ==============================================================================================
@register
class AWQ(Exercise):
    name = "awq_search_scales"
    notebook = NOTEBOOK
    title = "AWQ: activation-aware per-channel scales"
    points = {"correctness": 2.0}
    signature = "awq_search_scales(W: [N, K], X: [n, K], bits=4, group_size=128, n_grid=20) -> s fp32 [K]"
    forbidden = ("effilab.quant.reference",)

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        names, _ = _layers()
        ln_fed = [n for n in names if n.endswith(("attn.c_attn", "mlp.c_fc"))]
        other = [n for n in names if n not in ln_fed]

        def case(s, name, bits=4, gs=128, n_grid=20):
            W, Xc, _ = layer_case(s, name, n_windows=4)
            return Case(f"seed {s}: {name} ({W.shape[0]}×{W.shape[1]}), {Xc.shape[0]} tokens, {bits} bits, group {gs}",
                        (W, Xc), {"bits": bits, "group_size": gs, "n_grid": n_grid},
                        meta={"bits": bits, "group_size": gs, "n_grid": n_grid,
                              "ref_key": f"{name}|{s}|{bits}|{gs}|{n_grid}"})

        return [
            Group("4 bits, groups of 128, layers fed by a LayerNorm (c_attn, c_fc)",
                  [case(s, _pick(s, ln_fed, i)) for i, s in enumerate(seeds)],
                  "s_x = mean |X| over the tokens (per input channel); for α = i / n_grid, i = 0 … n_grid − 1: "
                  "s = s_x**α, s /= sqrt(s.max() * s.min()); error of X (Q(W·s)/s)ᵀ vs X Wᵀ; keep the best s"),
            Group("4 bits, the attention output and MLP down projections (c_proj)",
                  [case(s, _pick(s, other, i)) for i, s in enumerate(seeds)],
                  "multiply W's columns by s before quantizing and divide the dequantized weight by s (the same "
                  "s): Ŵ = Q(W · diag(s)) · diag(s)⁻¹"),
            Group("3 bits and groups of 64, grids of 10 and 20",
                  [case(s, _pick(s, names, i), bits=3, gs=64 if i % 2 else 128, n_grid=10 if i % 2 else 20)
                   for i, s in enumerate(seeds)],
                  "quantize with the bits and group_size you are given; the grid is α = 0, 1/n, …, (n−1)/n (α = 0 "
                  "is plain RTN, so the search can never do worse than RTN)"),
        ]

    def judge(self, out, case, expected=None):
        W, Xc = case.args
        m = case.meta
        bad = _tensor_problem(out, (W.shape[1],), torch.float32, "s")
        if bad:
            return bad
        if not torch.isfinite(out).all() or bool((out <= 0).any()):
            return "every scale must be positive and finite"
        q, sc, z = rtn_expected(W * out, m["bits"], m["group_size"], False)
        err = output_error(W, dequantize_expected(q, sc, z, _g_idx(W.shape[1], m["group_size"])) / out, Xc)
        rtn = _rtn_error(W, Xc, m["bits"], m["group_size"])
        ref = _ref_error("awq", case)
        msg = f"output error on the calibration tokens: yours {err:.4g}, RTN {rtn:.4g}" + (
            f", reference AWQ {ref:.4g}" if ref is not None else "")
        if err > AWQ_VS_RTN * rtn:
            return CaseResult(False, msg + " — worse than RTN", "check the direction: quantize W · s, then divide by s")
        if ref is not None and err > AWQ_VS_REFERENCE * ref:
            return CaseResult(False, msg + f" — above {AWQ_VS_REFERENCE:g}× the reference's")
        return None


# ==============================================================================================
# 5. The whole model: perplexity
# ==============================================================================================
@functools.lru_cache(maxsize=1)
def _heldout_windows() -> torch.Tensor:
    n = 254 if torch.cuda.is_available() else 24
    return cm.windows(cm.course_texts()["heldout"], n)


@functools.lru_cache(maxsize=16)
def _reference_ppl(kind: str, bits: int = 0, group_size: int = 0) -> float:
    """Perplexity of the fp16 model or of RTN of every layer, on the judge's held-out windows."""
    model = cm.load_course_model()
    if kind == "rtn":
        for name, mod in dict(model.named_modules()).items():
            if name in cm.linear_names(model):
                q, sc, z = rtn_expected(mod.weight.data, bits, group_size, False)
                mod.weight.data = dequantize_expected(q, sc, z, _g_idx(q.shape[1], group_size))
    with one_thread():
        return cm.perplexity(model, _heldout_windows())


def _model_ppl(weights: dict[str, torch.Tensor]) -> float:
    model = cm.load_course_model()
    mods = dict(model.named_modules())
    for name, w in weights.items():
        mods[name].weight.data = w.float()
    with one_thread():
        return cm.perplexity(model, _heldout_windows())


@register
class QuantizeModel(Exercise):
    name = "quantize_model"
    notebook = NOTEBOOK
    title = "Quantize every layer of the course model: the perplexity table"
    points = {"correctness": 3.0}
    signature = ("quantize_model(model, calib: int64 [n, T+1], bits=4, group_size=128, method='gptq') -> "
                 "{layer name: {'q', 'scale', 'zero', 'g_idx'}}")
    forbidden = ("effilab.quant.reference",)

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        rtn = [(4, 128), (3, 128), (4, -1), (8, 128), (2, 64)]

        def case(s, method, bits, gs):
            return Case(f"seed {s}: method={method!r}, {bits} bits, group {gs}, calibration windows from seed {s}",
                        (s,), meta={"method": method, "bits": bits, "group_size": gs})

        return [
            Group("method='rtn': every linear of the blocks rounded to nearest",
                  [case(s, "rtn", b, g) for s, (b, g) in zip(seeds, rtn)],
                  "quantize every nn.Linear inside model.blocks (not the embedding / LM head) with "
                  "quantize_rtn(W, bits, group_size) — with zero points, as its default (symmetric=False) — and "
                  "return its {'q', 'scale', 'zero', 'g_idx'} under the module's name, e.g. 'blocks.0.attn.c_attn'"),
            Group(f"method='gptq', 3 bits, g128: no collapse (gap ≤ {PPL_GAP_3BIT:g}× RTN-3's)",
                  [case(s, "gptq", 3, 128) for s in seeds],
                  "quantize the layers in forward order and capture each layer's inputs on the model whose "
                  "earlier layers are already quantized (write each dequantized weight back before moving on); "
                  "pass bits and group_size through to your gptq_quantize"),
        ]

    def run(self, fn, case):
        (s,) = case.args
        m = case.meta
        with one_thread():
            model = cm.load_course_model()
            calib = cm.windows(cm.course_texts()["calib"], N_CAL_WINDOWS, seed=s)
            out = call_student(fn, (model, calib), {"bits": m["bits"], "group_size": m["group_size"],
                                                    "method": m["method"]})
        if isinstance(out, Problem):
            return out
        if not isinstance(out, dict):
            return Problem(f"return a dict {{layer name: {{'q', 'scale', 'zero', 'g_idx'}}}}, got {type(out).__name__}")
        plain = {}
        for name, v in out.items():
            if not isinstance(v, dict) or not {"q", "scale", "zero", "g_idx"} <= set(v):
                return Problem(f"layer {name!r}: give a dict with keys 'q', 'scale', 'zero', 'g_idx'")
            plain[str(name)] = {k: v[k] for k in ("q", "scale", "zero", "g_idx")}
        return plain

    def judge(self, out, case, expected=None):
        m = case.meta
        names, weights = _layers()
        if sorted(out) != sorted(names):
            return f"quantize exactly the layers {names}; got {sorted(out)}"
        w_hat = {}
        for name in names:
            n, k = weights[name].shape
            v = out[name]
            bad = _grouped_problem((v["q"], v["scale"], v["zero"], v["g_idx"]), n, k, m["bits"], m["group_size"])
            if bad:
                return f"layer {name}: {bad}"
            w_hat[name] = dequantize_expected(v["q"], v["scale"], v["zero"], v["g_idx"])
        if m["method"] == "rtn":
            for name in names:
                q, sc, z = rtn_expected(weights[name], m["bits"], m["group_size"], False)
                bad = compare_tensors(w_hat[name], dequantize_expected(q, sc, z, _g_idx(q.shape[1], m["group_size"])),
                                      rtol=1e-5, atol=1e-7, name=f"dequantized {name}")
                if bad:
                    return bad
            return None
        fp = _reference_ppl("fp")
        rtn = _reference_ppl("rtn", m["bits"], m["group_size"])
        ppl = _model_ppl(w_hat)
        limit = PPL_GAP_3BIT
        msg = (f"held-out perplexity: fp16 {fp:.4f}, RTN {rtn:.4f} (gap {rtn - fp:.4f}), yours {ppl:.4f} "
               f"(gap {ppl - fp:.4f}, {(ppl - fp) / max(rtn - fp, 1e-12):.2f}× RTN's)")
        if not math.isfinite(ppl) or ppl - fp > limit * (rtn - fp):
            return CaseResult(False, msg + f" — above {limit:g}× RTN's gap")
        return None


# ==============================================================================================
# The recorded reference errors of the public cases (for the student edition's self-checks)
# ==============================================================================================
def public_reference_table() -> dict:
    """{"gptq": {ref_key: error}, "awq": {…}} of the public cases, computed with the reference."""
    from ..core import key_for
    from ...quant import reference as ref

    table = {}
    for kind, ex in (("gptq", GPTQ()), ("awq", AWQ())):
        table[kind] = {c.meta["ref_key"]: _compute_ref_error(kind, c, ref)
                       for g in ex.cases("public", key_for(ex, "public")) for c in g.cases}
    return table


def write_public_reference_table(path: Path = PUBLIC_REFS) -> Path:
    path.write_text(json.dumps(public_reference_table(), indent=1, sort_keys=True) + "\n")
    _public_refs.cache_clear()
    return path
