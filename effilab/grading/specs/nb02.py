"""Exercise specs of notebook 02 — mixed precision.

1. ``DynamicLossScaler``: a dynamic loss scaler whose observable behaviour equals
   ``torch.amp.GradScaler``'s (the reference, run side by side on the same scripted steps): the
   scale after every step, which steps were skipped, the parameters after every step, the unscaled
   gradients that gradient clipping sees, and ``state_dict()``. Scripts inject inf / -inf / NaN
   into a gradient at chosen steps, with several growth intervals and growth/backoff factors.
2. ``MixedPrecisionTrainer``: fp32 master weights behind a bf16 or fp16 model copy. Trained for a
   few steps of plain SGD with momentum and gradient clipping, its master weights must follow the
   fp32 trajectory of the same model within :data:`MP_TOL` (relative error of the total update of
   each parameter tensor). Updating the half-precision weights directly (no master copy) loses
   every update smaller than half a bf16 ulp and misses the tolerance by two orders of magnitude
   (tests/test_nb02_checkers.py shows it).
3. ``bf16_train_step``: one AdamW step under bf16 autocast; on a CUDA GPU, ≥ :data:`BF16_SPEED_THRESHOLD`
   × faster than the fp32 step (TF32 off) on the ``gpu-real`` GPT, batch 16 × 1024.
"""
from __future__ import annotations

import math

import torch

from ..calls import Problem, poisoned_allocations, student_error
from ..core import Case, Exercise, Group, case_seeds, default_device, register
from ..measure import SpeedPart

NOTEBOOK = "02_mixed_precision"

#: The master weights' total update of each parameter tensor must be within this relative error of
#: the fp32 trajectory's (‖Δyours − Δfp32‖ / ‖Δfp32‖). Measured on CPU (torch 2.13, 5 seeds): a
#: correct bf16 trainer 0.007–0.02, a correct fp16 one ≈ 0.002, a trainer without master weights
#: 1.0 (the LayerNorm weights at 1.0 never move: every SGD update is below half a bf16 ulp).
MP_TOL = {torch.bfloat16: 0.1, torch.float16: 0.02}

#: Required speed-up of the bf16 autocast step over the fp32 step (TF32 off) on gpu-real, batch
#: 16×1024, calibrated from benchmarks/RESULTS.md (H100, torch 2.11: fp32 221.1 ms, bf16 35.6 ms,
#: 6.2× end to end, through effilab.train). The course GPU run of benchmarks/gpu/nb02.sh prints
#: the ratio the checker measures; set this well below it.
BF16_SPEED_THRESHOLD = 3.0  # H100, gpu-real 16×1024: 6.34–6.43× measured (benchmarks/RESULTS.md); the brief asks ≥ 1.8×
SPEED_PRESET, SPEED_BATCH = "gpu-real", 16





def _student_call(label: str, f, *a, **k):
    """Call the student's code; (result, None) or (None, Problem)."""
    try:
        with poisoned_allocations():
            return f(*a, **k), None
    except Exception as exc:  # the student's bug, reported, never raised
        return None, student_error(exc, label)


# ==============================================================================================
# 1. DynamicLossScaler
# ==============================================================================================
_SCALER_SIGNATURE = ("class DynamicLossScaler(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, "
                     "growth_interval=2000) with scale(loss), unscale_(optimizer), step(optimizer), update(), "
                     "get_scale(), state_dict()")


def _scaler_script(kind: str, s: int) -> dict:
    """A scripted run: constructor arguments and the step at which inf/-inf/NaN is injected."""
    g = torch.Generator().manual_seed((s * 7919 + 17) % (1 << 62))
    r = lambda n: int(torch.randint(0, n, (1,), generator=g))  # noqa: E731
    factors = [(2.0, 0.5), (2.0, 0.5), (4.0, 0.25), (2.0, 0.5), (8.0, 0.5)][s % 5]
    interval = [1, 2, 3, 4, 3][(s + r(5)) % 5]
    init = 2.0 ** (8 + r(10))
    steps = 10 + r(4)
    inject = [None] * steps
    if kind == "overflow":
        # overflows mid-interval (so a growth counter that is not reset shows), back to back, at step 0
        kinds = ["inf", "nan", "-inf"]
        first = interval // 2 + 1 + r(2)
        inject[first % steps] = kinds[r(3)]
        second = min(steps - 1, first + interval + 1 + r(2))
        inject[second] = kinds[r(3)]
        if s % 2 == 0 and second + 1 < steps:
            inject[second + 1] = kinds[r(3)]  # two overflows in a row
        if s % 3 == 0:
            inject[0] = kinds[r(3)]
        if interval > 1:  # one more overflow after exactly interval - 1 good steps
            third = second + interval
            if third < steps:
                inject[third] = "inf"
    kw = dict(init_scale=init, growth_factor=factors[0], backoff_factor=factors[1], growth_interval=interval)
    return {"kwargs": kw, "inject": inject, "seed": s, "max_norm": [0.5, 1.0, 1e9][s % 3]}


def run_scaler_script(make_scaler, script: dict, call=None) -> tuple[list[dict], dict]:
    """Run the scripted training steps with a scaler; returns the trace and the final state_dict().

    Each step: ``scaler.scale(loss).backward()``; inject inf/NaN into one gradient element if the
    script says so; ``scaler.unscale_(opt)``; record the gradients; ``clip_grad_norm_``;
    ``scaler.step(opt)``; ``scaler.update()``; record the scale, whether the parameters moved and
    their values. ``call(label, f, *a)`` wraps each call of the scaler's methods (the checker uses
    it to report the student's exceptions); it returns (result, error message or None).
    """
    call = call or (lambda label, f, *a, **k: (f(*a, **k), None))
    s = script["seed"]
    g = torch.Generator().manual_seed(s)
    torch_g = torch.Generator().manual_seed(s + 1)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3))
    with torch.no_grad():  # a deterministic init from the script's seed
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    scaler, err = call("DynamicLossScaler(**kwargs)", make_scaler, **script["kwargs"])
    if err:
        return [], {"error": err}
    trace = []
    for t, inj in enumerate(script["inject"]):
        opt.zero_grad(set_to_none=True)
        x = torch.randn(5, 7, generator=torch_g)
        y = torch.randn(5, 3, generator=torch_g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaled, err = call(f"step {t}: scale(loss)", scaler.scale, loss)
        if err:
            return trace, {"error": err}
        if not isinstance(scaled, torch.Tensor) or not scaled.requires_grad:
            return trace, {"error": Problem(f"step {t}: scale(loss) must return a tensor that backward() can be "
                                            f"called on (got {type(scaled).__name__})",
                                            "return loss * self.get_scale()")}
        scaled.backward()
        if inj is not None:
            pi = int(torch.randint(0, len(params), (1,), generator=g))
            ei = int(torch.randint(0, params[pi].numel(), (1,), generator=g))
            params[pi].grad.view(-1)[ei] = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}[inj]
        scale_before, err = call(f"step {t}: get_scale()", scaler.get_scale)
        if err:
            return trace, {"error": err}
        _, err = call(f"step {t}: unscale_(optimizer)", scaler.unscale_, opt)
        if err:
            return trace, {"error": err}
        grads = [p.grad.detach().clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, script["max_norm"])
        before = [p.detach().clone() for p in params]
        _, err = call(f"step {t}: step(optimizer)", scaler.step, opt)
        if err:
            return trace, {"error": err}
        _, err = call(f"step {t}: update()", scaler.update)
        if err:
            return trace, {"error": err}
        scale, err = call(f"step {t}: get_scale()", scaler.get_scale)
        if err:
            return trace, {"error": err}
        trace.append({"inject": inj, "scale_before": float(scale_before), "scale": float(scale),
                      "skipped": all(torch.equal(a, b) for a, b in zip(before, params)),
                      "params": [p.detach().clone() for p in params], "grads": grads})
    sd, err = call("state_dict()", scaler.state_dict)
    if err:
        return trace, {"error": err}
    return trace, sd


def _reference_scaler(**kw):
    return torch.amp.GradScaler("cpu", **kw)


def _fmt_scales(tr: list[dict]) -> str:
    return "[" + ", ".join(f"{r['scale']:g}" + ("*" if r["inject"] else "") for r in tr) + "]"


@register
class DynamicLossScalerExercise(Exercise):
    single_thread = True
    name = "DynamicLossScaler"
    notebook = NOTEBOOK
    title = "A dynamic loss scaler that behaves exactly like torch.amp.GradScaler"
    points = {"correctness": 4.0}
    signature = _SCALER_SIGNATURE

    _GROUPS = [
        ("scale", "clean", "no overflow: the scale grows ×growth_factor after every growth_interval good steps",
         "count good steps in update(); when the count reaches growth_interval multiply the scale by "
         "growth_factor and reset the count to 0"),
        ("skip", "overflow", "an inf/NaN step is skipped (parameters unchanged) and the others are applied",
         "unscale_ must detect any non-finite gradient (torch.isfinite(g).all()); step() must then not call "
         "optimizer.step() at all"),
        ("scale", "overflow", "after an overflow the scale backs off and the growth count restarts from 0",
         "in update() after an overflow: scale *= backoff_factor AND reset the count of good steps to 0 — "
         "never grow the scale in the same update"),
        ("grads", "mixed", "unscale_ before clipping: clipping sees the unscaled gradients",
         "unscale_(optimizer) must divide every .grad by the scale in place, right away (clipping runs "
         "between unscale_ and step); step() must not unscale a second time"),
        ("state", "clean", "state_dict() equals GradScaler's (scale, factors, interval, _growth_tracker)",
         "return {'scale': float, 'growth_factor': ..., 'backoff_factor': ..., 'growth_interval': ..., "
         "'_growth_tracker': int} — the keys torch.amp.GradScaler.state_dict() uses"),
    ]

    def cases(self, suite, key):
        out = []
        for check, kind, gname, hint in self._GROUPS:
            cases = []
            for i, s in enumerate(case_seeds(suite, key)):
                k = kind if kind != "mixed" else ("overflow" if i % 2 else "clean")
                script = _scaler_script(k, s * 10 + ("scale", "skip", "grads", "state").index(check))
                kw = script["kwargs"]
                where = [t for t, v in enumerate(script["inject"]) if v]
                label = (f"seed {s}: init_scale {kw['init_scale']:g}, growth ×{kw['growth_factor']:g} every "
                         f"{kw['growth_interval']} steps, backoff ×{kw['backoff_factor']:g}, "
                         f"{len(script['inject'])} steps" + (f", inf/NaN at steps {where}" if where else ""))
                cases.append(Case(label, (script,), meta={"check": check}))
            out.append(Group(gname, cases, hint))
        return out

    def run(self, fn, case):
        """Drive the student's scaler through the script; its trace as plain data (or a Problem)."""
        (script,) = case.args
        mine, sd = run_scaler_script(fn, script, call=_student_call)
        if isinstance(sd, dict) and set(sd) == {"error"}:
            return sd["error"]  # the student's scaler raised: already a full message
        if not isinstance(sd, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in sd):
            return Problem(f"state_dict() returned {type(sd).__name__}, expected a dict with string keys",
                           "return a dict like torch.amp.GradScaler.state_dict()'s")
        sd = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in sd.items()}
        return {"trace": [{k: r[k] for k in ("inject", "scale_before", "scale", "skipped", "params", "grads")}
                          for r in mine], "state": sd}

    def judge(self, out, case, expected=None):
        """``out``: the trace of the student's scaler; the expected one is GradScaler's on the same script."""
        mine, sd = out["trace"], out["state"]
        theirs, ref_sd = run_scaler_script(_reference_scaler, case.args[0])
        if len(mine) != len(theirs):
            return f"your run stopped after {len(mine)} of {len(theirs)} steps"
        check = case.meta["check"]
        if check == "scale":
            for t, (a, b) in enumerate(zip(mine, theirs)):
                if a["scale"] != b["scale"]:
                    return (f"scale after step {t} is {a['scale']:g}, GradScaler's {b['scale']:g}\n"
                            f"yours:      {_fmt_scales(mine)}\nGradScaler: {_fmt_scales(theirs)}  (* = inf/NaN step)")
            return None
        if check == "skip":
            for t, (a, b) in enumerate(zip(mine, theirs)):
                if a["skipped"] != b["skipped"]:
                    return (f"step {t} ({'inf/NaN injected' if b['inject'] else 'finite gradients'}): yours "
                            f"{'skipped' if a['skipped'] else 'applied'} the update, GradScaler "
                            f"{'skipped' if b['skipped'] else 'applied'} it")
                for i, (pa, pb) in enumerate(zip(a["params"], b["params"])):
                    if not torch.allclose(pa, pb, rtol=1e-5, atol=1e-6, equal_nan=False):
                        bad = int((~torch.isclose(pa, pb, rtol=1e-5, atol=1e-6)).sum())
                        return (f"after step {t} parameter {i} differs from GradScaler's run in {bad} of "
                                f"{pa.numel()} values (yours {pa.view(-1)[:3].tolist()}…, "
                                f"expected {pb.view(-1)[:3].tolist()}…)")
            return None
        if check == "grads":
            for t, (a, b) in enumerate(zip(mine, theirs)):
                for i, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
                    if not torch.allclose(ga, gb, rtol=1e-6, atol=0.0, equal_nan=True):
                        ratio = (ga.abs().max() / gb.abs().max().clamp_min(1e-30)).item()
                        return (f"at step {t} (scale {b['scale_before']:g}) the gradients clipping saw after "
                                f"unscale_ differ from GradScaler's (parameter {i}: max |grad| yours / expected "
                                f"= {ratio:.6g})")
            return None
        if check == "state":
            if not isinstance(sd, dict):
                return f"state_dict() returned {type(sd).__name__}, expected a dict"
            missing = sorted(set(ref_sd) - set(sd))
            if missing:
                return f"state_dict() lacks the keys {missing} (yours has {sorted(sd)})"
            for k, v in ref_sd.items():
                y = sd[k]
                y = y.item() if isinstance(y, torch.Tensor) else y
                if float(y) != float(v):
                    return f"state_dict()[{k!r}] is {y!r}, GradScaler's is {v!r}"
            return None
        raise AssertionError(check)


# ==============================================================================================
# 2. MixedPrecisionTrainer (fp32 master weights)
# ==============================================================================================
def _mp_model(s: int):
    from ...models import GPT, GPTConfig

    return GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32), seed=s)


def _mp_batches(s: int, steps: int):
    g = torch.Generator().manual_seed(s)
    out = []
    for _ in range(steps):
        x = torch.randint(0, 256, (4, 33), generator=g)
        out.append((x[:, :-1].contiguous(), x[:, 1:].contiguous()))
    return out


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


@register
class MixedPrecisionTrainerExercise(Exercise):
    single_thread = True
    name = "MixedPrecisionTrainer"
    notebook = NOTEBOOK
    title = "Training with fp32 master weights behind a half-precision model copy"
    points = {"correctness": 3.0}
    signature = ("class MixedPrecisionTrainer(model, optimizer_factory, dtype=torch.bfloat16, scaler=None, "
                 "max_norm=1.0) with step(batch) -> float, master_params() -> list of fp32 tensors, and "
                 ".model (the half-precision copy)")

    _GROUPS = [
        ("bf16 copy + fp32 master weights follow the fp32 trajectory", torch.bfloat16, None,
         "keep an fp32 copy of every parameter (the master weights) and build the optimizer on those; after "
         "backward copy each half gradient into master.grad as fp32, clip and step the master weights, then copy "
         "them back into the half model"),
        ("fp16 copy + loss scaling follow the fp32 trajectory", torch.float16, dict(init_scale=2.0 ** 12),
         "with a scaler: scaler.scale(loss).backward(), copy the grads to the masters, scaler.unscale_(optimizer) "
         "BEFORE clip_grad_norm_ (else you clip the scaled gradients), then scaler.step(optimizer), "
         "scaler.update()"),
        ("fp16: overflow steps are skipped (huge initial scale), then training goes on", torch.float16,
         dict(init_scale=2.0 ** 40, backoff_factor=2.0 ** -8),
         "a step whose fp16 gradients overflow must leave the master weights (and the half copy) unchanged: "
         "let scaler.step(optimizer) decide, and copy master → half only after it"),
    ]
    STEPS = 6

    def cases(self, suite, key):
        out = []
        for gname, dtype, scaler_kw, hint in self._GROUPS:
            cases = [Case(f"seed {s}: tiny GPT, {str(dtype)[6:]} copy, {self.STEPS} "
                          f"steps of SGD(lr=0.1, momentum=0.9), max_norm 1.0"
                          + (f", GradScaler(init_scale={scaler_kw['init_scale']:g})" if scaler_kw else ""),
                          (s,), meta={"dtype": dtype, "scaler": scaler_kw})
                     for s in case_seeds(suite, key)]
            out.append(Group(gname, cases, hint))
        return out

    def run(self, fn, case):
        """Train with the student's trainer; which steps were skipped and the final master weights."""
        (s,) = case.args
        dtype, scaler_kw = case.meta["dtype"], case.meta["scaler"]
        model = _mp_model(s)
        w0 = [p.detach().clone() for p in model.parameters()]
        names = [n for n, _ in model.named_parameters()]
        scaler = torch.amp.GradScaler("cpu", **scaler_kw) if scaler_kw else None
        trainer, err = _student_call("MixedPrecisionTrainer(model, optimizer_factory, dtype, scaler, max_norm=1.0)",
                                     fn, model, _sgd, dtype=dtype, scaler=scaler, max_norm=1.0)
        if err:
            return err
        skipped, masters = [], None
        for t, batch in enumerate(_mp_batches(s, self.STEPS)):
            before = scaler.get_scale() if scaler else None
            _, err = _student_call(f"step {t}: trainer.step(batch)", trainer.step, tuple(b.clone() for b in batch))
            if err:
                return err
            skipped.append(bool(scaler is not None and scaler.get_scale() < before))
            masters, err = _student_call(f"step {t}: trainer.master_params()", trainer.master_params)
            if err:
                return err
            problem = self._check_state(trainer, masters, dtype, len(w0), t, names)
            if problem:
                return Problem(problem)
        return {"skipped": skipped, "masters": [m.detach().clone() for m in masters]}

    def judge(self, out, case, expected=None):
        """The student's final master weights against the fp32 trajectory (which skips the same steps)."""
        (s,) = case.args
        dtype = case.meta["dtype"]
        model = _mp_model(s)
        names = [n for n, _ in model.named_parameters()]
        w0 = [p.detach().clone() for p in model.parameters()]
        ref_opt = _sgd(list(model.parameters()))
        skipped, masters = out["skipped"], out["masters"]
        for t, batch in enumerate(_mp_batches(s, self.STEPS)):
            if skipped[t]:
                continue
            ref_opt.zero_grad(set_to_none=True)
            _, loss = model(*batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            ref_opt.step()
        if all(skipped):
            return "every step was skipped: the scaler never found finite gradients"
        errs = []
        for m, r, w in zip(masters, model.parameters(), w0):
            dr, dm = r.detach() - w, m.float() - w
            errs.append(((dm - dr).norm() / dr.norm()).item() if dr.norm() > 0 else
                        (0.0 if dm.norm() == 0 else math.inf))
        worst = max(range(len(errs)), key=lambda i: errs[i] if not math.isnan(errs[i]) else math.inf)
        tol = MP_TOL[dtype]
        if not errs[worst] <= tol:
            return (f"after {self.STEPS} steps the update of {names[worst]} is off the fp32 "
                    f"trajectory by {errs[worst]:.3g} (relative error ‖Δyours − Δfp32‖/‖Δfp32‖; allowed {tol:g}; "
                    f"median over tensors {sorted(errs)[len(errs) // 2]:.3g})")
        return None

    @staticmethod
    def _check_state(trainer, masters, dtype, n, t, names):
        if not isinstance(masters, (list, tuple)) or len(masters) != n:
            return (f"master_params() must return a list of {n} tensors, one per model parameter in "
                    f"model.parameters() order (got {type(masters).__name__}"
                    + (f" of length {len(masters)})" if isinstance(masters, (list, tuple)) else ")"))
        half = getattr(trainer, "model", None)
        if not isinstance(half, torch.nn.Module):
            return "the trainer must keep the half-precision model copy in its attribute .model"
        hp = list(half.parameters())
        if len(hp) != n:
            return f"trainer.model has {len(hp)} parameters, the model {n}"
        for name, m, h in zip(names, masters, hp):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.float32:
                return f"master weight of {name} is {getattr(m, 'dtype', type(m).__name__)}; master weights are float32"
            if h.dtype != dtype:
                return f"trainer.model's {name} is {h.dtype}; the model copy must run in {dtype}"
            if not torch.equal(h.detach(), m.detach().to(dtype)):
                return (f"after step {t} trainer.model's {name} is not the master weight rounded to {dtype}: "
                        "copy the updated master weights into the half model after every step")
        return None


# ==============================================================================================
# 3. bf16 autocast training step (speed)
# ==============================================================================================
def fp32_train_step(model, optimizer, batch):
    """The baseline: the same step in true fp32 (TF32 off)."""
    from ...train import precision_context

    inputs, targets = batch
    with precision_context("fp32"):
        optimizer.zero_grad(set_to_none=True)  # set_to_none: as in the student's step
        out = model(inputs, targets)[1]
        out.backward()
        optimizer.step()  # fp32 weights, fp32 math
    return out.detach()


def reference_bf16_train_step(model, optimizer, batch):
    inputs, targets = batch
    optimizer.zero_grad(set_to_none=True)  # set_to_none: as in the student's step
    with torch.autocast(inputs.device.type, torch.bfloat16):
        out = model(inputs, targets)[1]
    out.backward()
    optimizer.step()  # fp32 weights, bf16 matmuls
    return out.detach()


def _step_case(s: int, dev):
    from ...models import GPT, GPTConfig

    model = GPT(GPTConfig.preset("cpu-tiny"), seed=s).to(dev)
    g = torch.Generator().manual_seed(s)
    x = torch.randint(0, 256, (4, 65), generator=g).to(dev)
    return model, (x[:, :-1].contiguous(), x[:, 1:].contiguous())


def _adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)


@register
class BF16TrainStep(Exercise):
    single_thread = True
    name = "bf16_train_step"
    notebook = NOTEBOOK
    title = "A bf16 autocast training step, faster than fp32"
    points = {"correctness": 1.0, "speed": 2.0}
    signature = "bf16_train_step(model, optimizer, batch) -> loss (a detached 0-dim tensor)"

    def cases(self, suite, key):
        seeds = case_seeds(suite, key)
        return [
            Group("the forward runs under torch.autocast(dtype=torch.bfloat16); weights stay fp32",
                  [Case(f"seed {s}: cpu-tiny GPT, batch 4×64", (s,), meta={"check": "autocast"}) for s in seeds],
                  "wrap only the forward (model(x, y)) in torch.autocast(device_type=x.device.type, "
                  "dtype=torch.bfloat16); do not convert the model with .to(torch.bfloat16)"),
            Group("one AdamW step: loss and parameters match the reference bf16 step",
                  [Case(f"seed {s}: cpu-tiny GPT, batch 4×64", (s,), meta={"check": "step"}) for s in seeds],
                  "zero_grad(set_to_none=True), forward under autocast, loss.backward() outside autocast, "
                  "optimizer.step(), return loss.detach()"),
        ]

    def run(self, fn, case):
        """One step of the student's on a fresh model: what autocast looked like inside the forward,
        the parameters' dtypes, the returned loss and the parameters after the step."""
        (s,) = case.args
        dev = default_device()
        model, batch = _step_case(s, dev)
        opt = _adamw(model)
        seen = []
        hook = model.register_forward_pre_hook(
            lambda m, a: seen.append([bool(torch.is_autocast_enabled(dev.type)), str(torch.get_autocast_dtype(dev.type))]))
        try:
            loss, err = _student_call("bf16_train_step(model, optimizer, batch)", fn, model, opt, batch)
        finally:
            hook.remove()
        if err:
            return err
        return {"seen": seen[:8], "dtypes": [[n, str(p.dtype)] for n, p in model.named_parameters()],
                "loss": loss.detach() if isinstance(loss, torch.Tensor) else repr(type(loss).__name__),
                "loss_grad": bool(getattr(loss, "requires_grad", False)),
                "params": [p.detach().clone() for p in model.parameters()]}

    def expect(self, case):
        """The reference bf16 step on the grading device (bf16 kernels differ between devices)."""
        if case.meta["check"] != "step":
            return None
        (s,) = case.args
        ref, batch = _step_case(s, default_device())
        loss = reference_bf16_train_step(ref, _adamw(ref), batch)
        return {"loss": float(loss), "params": [p.detach().float().cpu() for p in ref.parameters()],
                "names": [n for n, _ in ref.named_parameters()]}

    def judge(self, out, case, expected=None):
        bad = [n for n, dt in out["dtypes"] if dt != str(torch.float32)]
        if case.meta["check"] == "autocast":
            seen = out["seen"]
            if not seen:
                return "your step never called the model"
            if not all(on and dt == str(torch.bfloat16) for on, dt in seen):
                return f"the model ran without bf16 autocast (autocast on: {seen[0][0]}, dtype {seen[0][1]})"
            if bad:
                return f"parameters {bad[:3]} are no longer float32; autocast keeps the weights fp32"
            return None
        loss = out["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return f"return the loss as a 0-dim tensor (got {loss if isinstance(loss, str) else type(loss).__name__})"
        if out["loss_grad"]:
            return "return loss.detach() (yours still holds the autograd graph)"
        if bad:
            return (f"after your step {bad[0]} is no longer float32: training 16-bit weights directly has no "
                    "fp32 master copy; autocast keeps the weights fp32")
        expected = expected or self.expect(case)
        if not math.isclose(float(loss), expected["loss"], rel_tol=1e-3):
            return f"loss {float(loss):.6f}, expected {expected['loss']:.6f}"
        for n, p, r in zip(expected["names"], out["params"], expected["params"]):
            p = p.float().cpu()
            # one AdamW step moves each weight by ≈ lr = 1e-3; GPU kernels may differ in the last bits,
            # which can flip the sign of a near-zero gradient: allow 0.1 % of elements off by < 2.5 lr
            off = (p - r).abs() > 2e-4 + 1e-4 * r.abs()
            if off.float().mean() > 1e-3 or bool(((p - r).abs() > 2.5e-3).any()):
                return (f"after the step {n} differs from the reference bf16 step in {int(off.sum())} of {p.numel()} "
                        f"values (max |diff| {(p - r).abs().max().item():.3g}): one optimizer.step() after one backward")
        return None

    def speed_part(self, key):
        from ...models import GPT, GPTConfig
        from ...train import make_optimizer

        s = key.derive("speed")

        def inputs():
            cfg = GPTConfig.preset(SPEED_PRESET)
            model = GPT(cfg, seed=0).cuda()
            g = torch.Generator().manual_seed(s)
            x = torch.randint(0, 256, (SPEED_BATCH, cfg.block_size + 1), generator=g).cuda()
            return model, make_optimizer(model, lr=1e-4), (x[:, :-1].contiguous(), x[:, 1:].contiguous())

        return SpeedPart(
            inputs=inputs, baseline=fp32_train_step, threshold=BF16_SPEED_THRESHOLD, mutate=False,
            gate=Case("seed 0: cpu-tiny GPT on the GPU, batch 4×64", (0,), meta={"check": "step"}),
            flops=lambda args: args[0].flops_per_token() * SPEED_BATCH * args[0].config.block_size,
            baseline_name="fp32 step",
            cpu_note=f"On a GPU yours must be ≥ {BF16_SPEED_THRESHOLD:g}× faster than the fp32 step "
                     f"({SPEED_PRESET}, batch {SPEED_BATCH}×1024).",
            advice="run only the forward under torch.autocast(dtype=torch.bfloat16), keep the model fp32, and "
                   "do not synchronise (.item(), float(loss)) inside the step")
