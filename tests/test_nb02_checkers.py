"""Notebook 02's checkers: the reference solution (taken from solutions/, the single source) gets
every correctness point on the public and hidden suites; each classic mistake loses exactly the
groups that cover it; a trainer without fp32 master weights misses the stated tolerance."""
import copy
import json
from pathlib import Path

import pytest
import torch

from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.keys import Key
from effilab.grading.specs import nb02

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "solutions" / "02_mixed_precision.ipynb"
BUGS = json.loads((ROOT / "grader" / "examples" / "02_mixed_precision" / "bugs.json").read_text())


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(NB)


def variant(cell: str, old: str, new: str) -> dict:
    """The solution namespace with ``old`` replaced by ``new`` in the solution cell ``cell``."""
    return solution_namespace(NB, {cell: (old, new)})


def failed(v):
    return sorted(g.name for g in v.groups if not g.passed)


G_SCALE = "no overflow: the scale grows ×growth_factor every growth_interval good steps"
G_SKIP = "an inf/NaN step is skipped (parameters unchanged) and the others are applied"
G_BACKOFF = "after an overflow the scale backs off and the growth count restarts from 0"
G_GRADS = "unscale_ before clipping: clipping sees the unscaled gradients"
G_STATE = "state_dict() equals GradScaler's (scale, factors, interval, _growth_tracker)"
G_BF16 = "bf16 copy + fp32 master weights follow the fp32 trajectory"
G_FP16 = "fp16 copy + loss scaling follow the fp32 trajectory"
G_OVF = "fp16: overflow steps are skipped (huge initial scale), then training goes on"
G_AUTOCAST = "the forward runs under torch.autocast(dtype=torch.bfloat16); weights stay fp32"
G_STEP = "one AdamW step: loss and parameters match the reference bf16 step"


def test_grad_scaler_runs_on_cpu():
    s = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert s.is_enabled() and s.get_scale() == 8.0


def test_scripts_exercise_what_they_claim():
    """The overflow scripts really overflow mid-interval; GradScaler backs off and skips there."""
    for s in range(5):
        script = nb02._scaler_script("overflow", s)
        trace, sd = nb02.run_scaler_script(nb02._reference_scaler, script)
        assert any(r["skipped"] for r in trace) and not all(r["skipped"] for r in trace)
        assert all(r["skipped"] == bool(r["inject"]) for r in trace)
        assert "_growth_tracker" in sd


# ---------------------------------------------------------------------------------------------- scaler mistakes
def test_scaler_growing_in_the_overflow_update():
    ns = variant("DynamicLossScaler_solution",
                 "            self._growth_tracker = 0\n        else:\n            self._growth_tracker += 1",
                 "            self._growth_tracker = 0\n        if True:\n            self._growth_tracker += 1")
    v = check("DynamicLossScaler", ns["DynamicLossScaler"], verbose=False)
    assert failed(v) == [G_BACKOFF], v.report()
    assert "GradScaler" in v.report()


def test_scaler_lazy_unscale_clipping_sees_scaled_gradients():
    # unscale_ only looks for inf/NaN; step() divides by the scale: clipping ran on scaled gradients
    ns = variant("DynamicLossScaler_solution", "p.grad.mul_(inv)\n", "pass\n")
    ns2 = variant("DynamicLossScaler_solution", "        return optimizer.step()",
                  "        return optimizer.step()")  # unchanged: sanity of the helper
    cls = ns["DynamicLossScaler"]
    orig_step = cls.step

    def step(self, optimizer):
        if not self._unscaled:
            self.unscale_(optimizer)
        if self._found_inf:
            return None
        with torch.no_grad():
            for g in optimizer.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(1.0 / self._scale)
        return optimizer.step()

    cls.step = step
    v = check("DynamicLossScaler", cls, verbose=False)
    cls.step = orig_step
    assert G_GRADS in failed(v) and G_SCALE not in failed(v) and G_STATE not in failed(v), v.report()
    assert check("DynamicLossScaler", ns2["DynamicLossScaler"], verbose=False).passed


def test_scaler_that_never_skips():
    ns = variant("DynamicLossScaler_solution", "        if self._found_inf:\n            return None\n", "")
    v = check("DynamicLossScaler", ns["DynamicLossScaler"], verbose=False)
    # the NaN update poisons the weights: every later step overflows too
    assert failed(v) == sorted([G_SKIP, G_BACKOFF, G_GRADS]), v.report()
    assert "yours applied the update, GradScaler skipped it" in v.report()


def test_scaler_state_dict_keys():
    ns = variant("DynamicLossScaler_solution", '"_growth_tracker": self._growth_tracker', '"tracker": self._growth_tracker')
    v = check("DynamicLossScaler", ns["DynamicLossScaler"], verbose=False)
    assert failed(v) == [G_STATE] and "_growth_tracker" in v.report()


def test_unfilled_scaler_says_not_filled_in():
    class Stub:
        def __init__(self, **kw):
            raise NotImplementedError()

    v = check("DynamicLossScaler", Stub, verbose=False)
    assert v.points == 0 and "not filled in yet" in v.report()


# ---------------------------------------------------------------------------------------------- master weights
class NoMasterTrainer:
    """Updates the half-precision weights directly: the optimizer works on the bf16/fp16 model."""

    def __init__(self, model, optimizer_factory, dtype=torch.bfloat16, scaler=None, max_norm=1.0):
        self.model = copy.deepcopy(model).to(dtype)
        self.optimizer = optimizer_factory(list(self.model.parameters()))
        self.scaler, self.max_norm = scaler, max_norm

    def step(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        _, loss = self.model(*batch)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return float(loss)

    def master_params(self):
        return [p.detach().float() for p in self.model.parameters()]


def test_trainer_without_master_weights_misses_the_tolerance():
    v = check("MixedPrecisionTrainer", NoMasterTrainer, verbose=False)
    assert failed(v) == sorted([G_BF16, G_FP16, G_OVF]), v.report()
    assert "off the fp32 trajectory" in v.report()  # bf16: the stated tolerance, not an exception
    # the error is far beyond the tolerance, not marginal
    ex = nb02.MixedPrecisionTrainerExercise()
    case = ex.cases("public", Key.public())[0].cases[0]
    msg = ex.judge(ex.run(NoMasterTrainer, case), case)
    err = float(msg.split("trajectory by ")[1].split(" ")[0])
    assert err > 5 * nb02.MP_TOL[torch.bfloat16]


def test_trainer_that_forgets_to_refresh_the_half_copy(ref):
    ns = variant("MixedPrecisionTrainer_solution", "                p.copy_(m)\n", "                pass\n")
    v = check("MixedPrecisionTrainer", ns["MixedPrecisionTrainer"], verbose=False)
    assert failed(v) == sorted([G_BF16, G_FP16, G_OVF]) and "rounded to" in v.report()


def test_bf16_step_without_autocast_loses_only_the_autocast_group():
    ns = variant("bf16_train_step_solution",
                 "with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):\n        _, loss = model(x, y)",
                 "if True:\n        _, loss = model(x, y)")
    v = check("bf16_train_step", ns["bf16_train_step"], verbose=False)
    assert G_AUTOCAST in failed(v), v.report()
