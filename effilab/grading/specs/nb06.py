"""Exercise specs of notebook 06 — LoRA, DoRA and QLoRA from scratch, equal to peft and bitsandbytes.

1. ``LoRALinear(base, r, alpha, use_rslora)``: a frozen ``nn.Linear`` plus ``(α/r) · B A``
   (α/√r with rsLoRA): the init (A Kaiming-uniform, B = 0, so the layer starts equal to its base;
   only A and B train), the forward and its gradients equal to peft's ``LoraModel`` loaded with the
   same A and B, and ``merge()`` / ``unmerge()``.
2. ``DoRALinear``: LoRA with a trainable magnitude per output row, ``m · (W + s B A) / ‖W + s B A‖``,
   the norm detached as in the paper and in peft (``use_dora=True``): init, forward, gradients,
   merge.
3. ``nf4_quantize`` / 4. ``nf4_dequantize`` (Triton kernels): :mod:`.nb06_nf4`.
5. ``QLoRALinear`` (a frozen NF4 base + LoRA, fine-tuned on the course corpus) and 6. ``lora_linear``
   (a fused LoRA linear kernel): :mod:`.nb06_qlora`.

peft and bitsandbytes are the judges. Both take seconds to import, so they are imported inside the
judges, baselines and expected values only — code that runs in the grader's own process — never
at import and never in the sandbox, where graded code may not use them at all (``forbidden``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..calls import Problem, poisoned_allocations, student_error
from ..compare import compare_tensors
from ..core import Case, Exercise, Group, case_seeds, default_device, register

NOTEBOOK = "06_lora_qlora"
#: Outputs and gradients against peft's (fp32): the two compute the same sums in a different order
#: (peft: ``base(x) + lora_B(lora_A(x)) * s``; ours may use one addmm), which costs ~1e-7 relative;
#: a wrong scale (α instead of α/r, α/r instead of α/√r) is off by a factor ≥ √2.
RTOL = 1e-5
#: A's init: Kaiming-uniform with a = √5 (nn.Linear's default, peft's ``init_lora_weights=True``)
#: draws from U(−1/√d_in, 1/√d_in); the spread test needs enough values to be decisive.
MIN_VALUES_FOR_SPREAD = 128


# ==============================================================================================
# Shared by every exercise of the notebook
# ==============================================================================================
def student_call(label: str, f, *a, **k):
    """Call the student's code on poisoned memory; (result, None) or (None, Problem)."""
    try:
        with poisoned_allocations():
            return f(*a, **k), None
    except Exception as exc:  # the student's bug, reported, never raised
        return None, student_error(exc, label)


def gen(s: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(s) % (1 << 62))


def linear_from(w: torch.Tensor, b: torch.Tensor | None, dev=None) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``w`` (d_out × d_in) and ``b``, on ``dev``."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.detach().clone().to(dev or w.device))
    if b is not None:
        lin.bias = nn.Parameter(b.detach().clone().to(dev or w.device))
    return lin


def close(yours, expected: torch.Tensor, name: str, rtol: float = RTOL) -> str | None:
    """compare_tensors with an absolute tolerance scaled to the expected values' size."""
    if not isinstance(yours, torch.Tensor):
        return f"{name}: expected a tensor, got {type(yours).__name__}"
    e = expected.detach().cpu()
    scale = float(e.abs().max()) if e.numel() else 1.0
    return compare_tensors(yours.detach().cpu().to(e.dtype), e, rtol=rtol, atol=rtol * max(scale, 1e-6), name=name,
                           max_show=3)


class _Holder(nn.Module):
    """One Linear in a module, the shape peft's LoraModel adapts (``target_modules=["lin"]``)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def peft_layer(w, b, r, alpha, *, dora=False, rslora=False, A=None, B=None, m=None):
    """peft's LoRA (or DoRA) layer on a copy of (w, b), with A, B (and the magnitude m) loaded:
    returns (the wrapped module to call, peft's lora.Linear)."""
    from ...lora import peft_lora

    model = peft_lora(_Holder(linear_from(w.float().cpu(), None if b is None else b.float().cpu())), r, alpha,
                      targets=("lin",), use_dora=dora, use_rslora=rslora)
    layer = model.model.lin
    with torch.no_grad():
        if A is not None:
            layer.lora_A["default"].weight.copy_(A)
            layer.lora_B["default"].weight.copy_(B)
        if m is not None:
            layer.lora_magnitude_vector["default"].weight.copy_(m)
    return model, layer


# ==============================================================================================
# 1. LoRALinear
# ==============================================================================================
# (d_in, d_out, r, alpha, bias, leading dims of x): odd sizes, r from 1 to 16, α below and above r
SHAPES = [(37, 19, 4, 8.0, True, (5,)), (64, 64, 8, 16.0, False, (2, 3)), (129, 33, 16, 32.0, True, (7,)),
          (7, 300, 2, 1.0, True, (1,)), (256, 65, 8, 8.0, False, (4,))]


def lora_case_tensors(s: int, d_in: int, d_out: int, r: int, bias: bool, lead: tuple, dora: bool = False) -> tuple:
    """(W, b, x, A, B, g[, m]) for one case: a base layer, an input, adapters large enough that the
    low-rank term is a sizeable part of the output (so every scale error shows), an output gradient."""
    g = gen(s * 7919 + d_in)
    w = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
    b = torch.randn(d_out, generator=g) * 0.1 if bias else None
    x = torch.randn(*lead, d_in, generator=g)
    A = torch.randn(r, d_in, generator=g) / math.sqrt(d_in)
    B = torch.randn(d_out, r, generator=g) * (0.6 / math.sqrt(r))
    grad = torch.randn(*lead, d_out, generator=g)
    out = (w, b, x, A, B, grad)
    if dora:
        out += (w.norm(dim=1) * (0.5 + torch.rand(d_out, generator=g)),)
    return out


def check_interface(layer, base: nn.Linear, r: int, names=("lora_A", "lora_B"), magnitude: bool = False):
    """A Problem unless ``layer`` has the parameters the exercise names, with the right shapes."""
    if not isinstance(layer, nn.Module):
        return Problem(f"your class must be an nn.Module (got {type(layer).__name__})", "class LoRALinear(nn.Module)")
    want = {"lora_A": (r, base.in_features), "lora_B": (base.out_features, r)}
    if magnitude:
        want["magnitude"] = (base.out_features,)
    for name, shape in want.items():
        p = getattr(layer, name, None)
        if not isinstance(p, nn.Parameter) or tuple(p.shape) != shape:
            got = f"{type(p).__name__} of shape {tuple(p.shape)}" if isinstance(p, torch.Tensor) else type(p).__name__
            return Problem(f"self.{name} must be an nn.Parameter of shape {shape} (got {got})",
                           f"self.{name} = nn.Parameter(torch.empty(...)) with shape {shape}")
    return None


def load_adapters(layer, A, B, m=None) -> None:
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
        if m is not None:
            layer.magnitude.copy_(m)


def _requires_grad_report(layer, base) -> dict:
    return {"trainable": [[n, int(p.numel())] for n, p in layer.named_parameters() if p.requires_grad],
            "base_frozen": all(not p.requires_grad for p in base.parameters())}


def run_adapter_case(fn, case, dora: bool):
    """Drive the student's LoRALinear / DoRALinear through one case; plain data back (or a Problem)."""
    m = case.meta
    dev = default_device()
    tensors = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in case.args]
    w, b, x, A, B, grad = tensors[:6]
    mag = tensors[6] if dora else None
    base = linear_from(w, b)
    label = f"{m['cls']}(base, r={m['r']}, alpha={m['alpha']:g}, use_rslora={m['rslora']})"
    layer, err = student_call(label, fn, base, r=m["r"], alpha=m["alpha"], use_rslora=m["rslora"])
    if err:
        return err
    bad = check_interface(layer, base, m["r"], magnitude=dora)
    if bad:
        return bad
    kind = m["kind"]
    if kind == "init":
        y, err = student_call("layer(x)", layer, x)
        if err:
            return err
        out = {"A": layer.lora_A.detach().clone(), "B": layer.lora_B.detach().clone(), "y": y.detach()}
        if dora:
            out["magnitude"] = layer.magnitude.detach().clone()
        return out | _requires_grad_report(layer, base)
    load_adapters(layer, A, B, mag)
    if kind == "merge":
        return _run_merge(layer, base, x)
    xg = x.clone().requires_grad_(kind == "grads")
    y, err = student_call("layer(x)", layer, xg)
    if err:
        return err
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape[:-1]) + (w.shape[0],):
        return Problem(f"layer(x) must return a tensor of shape {tuple(x.shape[:-1]) + (w.shape[0],)}, got "
                       f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    out = {"y": y.detach()}
    if kind == "grads":
        _, err = student_call("y.backward(grad)", y.backward, grad)
        if err:
            return err
        grads = {"x": xg.grad, "lora_A": layer.lora_A.grad, "lora_B": layer.lora_B.grad}
        if dora:
            grads["magnitude"] = layer.magnitude.grad
        if any(v is None for v in grads.values()):
            missing = [k for k, v in grads.items() if v is None]
            return Problem(f"no gradient reached {missing} after y.backward(grad)",
                           "keep lora_A and lora_B in the graph (no .detach(), no torch.no_grad() in forward)")
        out["grads"] = {k: v.detach().clone() for k, v in grads.items()}
        out |= _requires_grad_report(layer, base)
        out["base_grads"] = [p.grad is not None for p in base.parameters()]
    return out


def _run_merge(layer, base, x):
    for name in ("merge", "unmerge"):
        if not callable(getattr(layer, name, None)):
            return Problem(f"your layer has no {name}() method", "def merge(self): … and def unmerge(self): …")
    _, err = student_call("layer.merge()", layer.merge)
    if err:
        return err
    merged = base.weight.detach().clone()
    y, err = student_call("layer(x) after merge()", layer, x)
    if err:
        return err
    _, err = student_call("layer.unmerge()", layer.unmerge)
    if err:
        return err
    return {"merged": merged, "y_merged": y.detach(), "unmerged": base.weight.detach().clone()}


def _adapter_cases(suite, key, kinds: dict, dora: bool, cls: str):
    seeds = case_seeds(suite, key)
    groups = []
    for kind, (gname, rslora, hint) in kinds.items():
        cases = []
        for i, (s, (d_in, d_out, r, alpha, bias, lead)) in enumerate(zip(seeds, SHAPES)):
            args = lora_case_tensors(s * 10 + len(groups), d_in, d_out, r, bias, lead, dora)
            cases.append(Case(f"seed {s}: Linear({d_in} → {d_out}, bias={bias}), r={r}, alpha={alpha:g}, "
                              f"x of shape {lead + (d_in,)}" + (", use_rslora=True" if rslora else ""), args,
                              meta={"kind": kind, "r": r, "alpha": alpha, "rslora": rslora, "cls": cls}))
        groups.append(Group(gname, cases, hint))
    return groups


def _judge_init(out, case, dora: bool) -> str | None:
    w, b, x = case.args[:3]
    d_in = w.shape[1]
    A, B = out["A"].float(), out["B"].float()
    if B.abs().max() != 0:
        return (f"lora_B is not zero after __init__ (max |B| = {float(B.abs().max()):.3g}): with B = 0 the adapted layer "
                "starts exactly equal to the pretrained one")
    bound = 1 / math.sqrt(d_in)
    if float(A.abs().max()) > bound * (1 + 1e-6):
        return (f"lora_A has values up to {float(A.abs().max()):.4g}, beyond the Kaiming-uniform bound 1/√d_in = "
                f"{bound:.4g}")
    if float(A.abs().max()) == 0:
        return "lora_A is all zeros: with A = 0 and B = 0 no gradient reaches either (the adapter can never learn)"
    if A.numel() >= MIN_VALUES_FOR_SPREAD:
        std, want = float(A.std()), bound / math.sqrt(3)
        if abs(std / want - 1) > 0.25 or float(A.abs().max()) < 0.8 * bound:
            return (f"lora_A does not look Kaiming-uniform: std {std:.4g}, max |A| {float(A.abs().max()):.4g}; "
                    f"U(−{bound:.4g}, {bound:.4g}) has std {want:.4g}")
    base_y = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    problem = close(out["y"], base_y.float(), "output at init")
    if problem:
        return "at init your layer must compute exactly the base layer: " + problem
    if dora:
        problem = close(out["magnitude"], w.double().norm(dim=1).float(), "magnitude at init")
        if problem:
            return "the magnitude starts as the row norms ‖W‖ of the base weight (so W' = W at init): " + problem
    return _judge_trainable(out, case, dora)


def _judge_trainable(out, case, dora: bool) -> str | None:
    w = case.args[0]
    r = case.meta["r"]
    names = sorted(n for n, _ in out["trainable"])
    want = sorted(["lora_A", "lora_B"] + (["magnitude"] if dora else []))
    if not out["base_frozen"]:
        return "the base layer's weight and bias must be frozen (requires_grad=False)"
    if names != want:
        return f"the trainable parameters must be exactly {want}; yours are {names}"
    count = sum(n for _, n in out["trainable"])
    expected = r * (w.shape[0] + w.shape[1]) + (w.shape[0] if dora else 0)
    if count != expected:
        return f"{count} trainable values, expected r·(d_in + d_out){' + d_out' if dora else ''} = {expected}"
    return None


def _reference(case, dora: bool):
    """peft's layer loaded with the case's adapters; (output, grads) on the case's input."""
    w, b, x, A, B, grad = case.args[:6]
    mag = case.args[6] if dora else None
    m = case.meta
    model, layer = peft_layer(w, b, m["r"], m["alpha"], dora=dora, rslora=m["rslora"], A=A, B=B, m=mag)
    xg = x.float().clone().requires_grad_()
    y = model(xg)
    y.backward(grad.float())
    grads = {"x": xg.grad, "lora_A": layer.lora_A["default"].weight.grad, "lora_B": layer.lora_B["default"].weight.grad}
    if dora:
        grads["magnitude"] = layer.lora_magnitude_vector["default"].weight.grad
    return model, layer, y.detach(), grads


def judge_adapter(out, case, dora: bool) -> str | None:
    kind = case.meta["kind"]
    if kind == "init":
        return _judge_init(out, case, dora)
    model, layer, y, grads = _reference(case, dora)
    what = "peft's DoRA (use_dora=True)" if dora else "peft's LoRA"
    if kind == "merge":
        layer.merge()
        problem = close(out["merged"], layer.base_layer.weight.detach(), "merged base weight")
        if problem:
            return f"after merge() base.weight must equal {what} merged weight: " + problem
        problem = close(out["y_merged"], model(case.args[2].float()).detach(), "output after merge()")
        if problem:
            return "after merge() the output must not change (and the adapter must not be added twice): " + problem
        problem = close(out["unmerged"], case.args[0].float(), "weight after unmerge()")
        return None if problem is None else "unmerge() must restore the original weight: " + problem
    problem = close(out["y"], y, "output")
    if problem:
        return f"your output differs from {what} with the same weights: " + problem
    if kind == "grads":
        problem = _judge_trainable(out, case, dora)
        if problem:
            return problem
        if any(out["base_grads"]):
            return "the base layer received a gradient: it must stay frozen"
        for name, ref in grads.items():
            problem = close(out["grads"][name], ref, f"gradient of {name}")
            if problem:
                return f"your gradients differ from {what}'s: " + problem
    return None


_LORA_GROUPS = {
    "init": ("init: B = 0 and A Kaiming-uniform, so the layer starts as its base; only A and B train", False,
             "self.lora_B = nn.Parameter(torch.zeros(d_out, r)); A = torch.empty(r, d_in) then "
             "nn.init.kaiming_uniform_(A, a=math.sqrt(5)); freeze base with requires_grad_(False)"),
    "forward": ("forward equal to peft's LoraModel: base(x) + (α/r)·(x Aᵀ) Bᵀ", False,
                "the scale is alpha / r (not alpha): y = base(x) + (alpha / r) * (x @ A.T) @ B.T"),
    "grads": ("gradients of x, A and B equal to peft's; the base gets none", False,
              "let autograd differentiate your forward; never detach A or B, and freeze the base layer"),
    "merge": ("merge() writes W + (α/r)·B A into the base weight (output unchanged); unmerge() undoes it", False,
              "merge: base.weight += self.scaling * (lora_B @ lora_A) under torch.no_grad(), then skip the "
              "adapter in forward while merged; unmerge subtracts the same product"),
    "rslora": ("rsLoRA: use_rslora=True scales by α/√r, equal to peft's use_rslora", True,
               "self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r"),
}


@register
class LoRALinearExercise(Exercise):
    name = "LoRALinear"
    notebook = NOTEBOOK
    title = "A LoRA layer from scratch, equal to peft"
    points = {"correctness": 4.0}
    signature = ("class LoRALinear(nn.Module): __init__(self, base: nn.Linear, r=8, alpha=16.0, use_rslora=False) "
                 "with self.lora_A (r, d_in), self.lora_B (d_out, r), forward(x), merge(), unmerge()")
    forbidden = ("peft",)
    single_thread = True

    def cases(self, suite, key):
        return _adapter_cases(suite, key, _LORA_GROUPS, dora=False, cls="LoRALinear")

    def run(self, fn, case):
        return run_adapter_case(fn, case, dora=False)

    def judge(self, out, case, expected=None):
        return judge_adapter(out, case, dora=False)


# ==============================================================================================
# 2. DoRALinear
# ==============================================================================================
_DORA_GROUPS = {
    "init": ("init: the magnitude is the row norm ‖W‖ (so W' = W), B = 0, only A, B and m train", False,
             "after building the LoRA part: self.magnitude = nn.Parameter(torch.linalg.norm(W, dim=1)) "
             "(one value per output row)"),
    "forward": ("forward equal to peft's DoRA: m · (W + s B A) x / ‖W + s B A‖ + b", False,
                "norm = torch.linalg.norm(W + s * B @ A, dim=1) (one per output row); "
                "y = (m / norm) * (x Wᵀ + s (x Aᵀ) Bᵀ) + bias"),
    "grads": ("gradients equal to peft's: the norm is detached (a constant in backward)", False,
              "DoRA §4.3 and peft treat ‖W + s B A‖ as a constant: divide by norm.detach(), or the gradients of "
              "A and B pick up an extra term"),
    "merge": ("merge() writes m · (W + s B A) / ‖W + s B A‖ into the base weight; unmerge() undoes it", False,
              "keep the norm you divided by at merge time (the merged W has other norms) to undo it exactly"),
}


@register
class DoRALinearExercise(Exercise):
    name = "DoRALinear"
    notebook = NOTEBOOK
    title = "DoRA: magnitude times a normalised direction, equal to peft (use_dora=True)"
    points = {"correctness": 3.0}
    signature = ("class DoRALinear(LoRALinear) with self.magnitude (d_out,), the same constructor, forward(x), "
                 "merge(), unmerge()")
    forbidden = ("peft",)
    single_thread = True

    def cases(self, suite, key):
        return _adapter_cases(suite, key, _DORA_GROUPS, dora=True, cls="DoRALinear")

    def run(self, fn, case):
        return run_adapter_case(fn, case, dora=True)

    def judge(self, out, case, expected=None):
        return judge_adapter(out, case, dora=True)


from . import nb06_nf4, nb06_qlora  # noqa: E402,F401  (the other exercises of the notebook register themselves)
