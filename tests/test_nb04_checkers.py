"""Notebook 04's checkers: the reference solution (taken from solutions/, the single source) gets
every correctness and memory point; each classic mistake loses exactly the groups that cover it."""
import math
from pathlib import Path

import pytest

from effilab.grading import check
from effilab.grading.nbcode import solution_namespace

ROOT = Path(__file__).resolve().parents[1]
UNEVEN = ["many small micro-batches, some of one short sequence",
          "uneven micro-batches of variable-length padded sequences"]


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(ROOT / "solutions" / "04_gradient_accumulation.ipynb")


def failed(v):
    return sorted(g.name for g in v.groups if not g.passed)


def test_reference_memory_within_budget(ref):
    v = check("accumulate_gradients", ref["accumulate_gradients"], "memory", verbose=False)
    assert v.passed, v.report()
    assert v.details["ratio"] <= 0.3


# ---------------------------------------------------------------------------------------------- accumulation
def mean_of_means(model, micro_batches):
    total = 0.0
    for x, y, mask in micro_batches:
        _, loss = model(x, y, loss_mask=mask)
        (loss / len(micro_batches)).backward()
        total += loss.item()
    return total / len(micro_batches)


@pytest.mark.parametrize("suite,seed", [("public", 0), ("hidden", 12345)])
def test_mean_of_means_loses_exactly_the_uneven_groups(suite, seed):
    v = check("accumulate_gradients", mean_of_means, suite=suite, seed=seed, verbose=False)
    assert failed(v) == UNEVEN
    assert v.points == 1.5
    assert "total" in v.report()


def test_mean_of_means_gets_no_memory_points():
    v = check("accumulate_gradients", mean_of_means, "memory", verbose=False)
    assert v.points == 0 and "not measured" in v.report()


def test_sum_without_normalising_is_caught():
    def wrong(model, mbs):
        for x, y, mask in mbs:
            model(x, y, loss_mask=mask, reduction="sum")[1].backward()
        return 0.0

    assert check("accumulate_gradients", wrong, verbose=False).points == 0


def test_padding_counted_as_tokens_is_caught():
    def wrong(model, mbs):
        total = sum(x.numel() for x, _, _ in mbs)
        out = 0.0
        for x, y, mask in mbs:
            _, s, _ = model(x, y, loss_mask=mask, reduction="sum")
            (s / total).backward()
            out += s.item()
        return out / total

    v = check("accumulate_gradients", wrong, verbose=False)
    assert "equal micro-batches of full-length sequences (equal token counts)" not in failed(v)
    assert set(UNEVEN) <= set(failed(v))


def test_wrong_returned_loss_is_caught(ref):
    good = ref["accumulate_gradients"]
    v = check("accumulate_gradients", lambda m, mbs: 2 * good(m, mbs), verbose=False)
    assert v.points == 0 and "returned loss" in v.report()


def test_summing_losses_before_one_backward_loses_exactly_the_memory_point():
    def wrong(model, mbs):
        total = sum(int(mask.sum()) for _, _, mask in mbs)
        loss = sum(model(x, y, loss_mask=mask, reduction="sum")[1] for x, y, mask in mbs) / total
        loss.backward()
        return loss.item()

    assert check("accumulate_gradients", wrong, verbose=False).passed
    v = check("accumulate_gradients", wrong, "memory", verbose=False)
    assert v.points == 0 and v.details["ratio"] > 0.9


# ---------------------------------------------------------------------------------------------- lr scaling
def test_sqrt_precedence_bug_loses_sqrt_groups():
    def wrong(lr, b0, b1, rule):
        if rule == "linear":
            return lr * b1 / b0
        if rule == "sqrt":
            return lr * b1 / b0 ** 0.5
        raise ValueError(rule)

    v = check("scaled_lr", wrong, verbose=False)
    assert failed(v) == ["smaller batches scale the rate down", "square-root rule (Krizhevsky 2014; Adam-like optimizers)"]
    assert v.points == 0.5


def test_inverted_ratio_is_caught():
    v = check("scaled_lr", lambda lr, b0, b1, r: lr * b0 / b1 if r in ("linear", "sqrt") else 1 / 0, verbose=False)
    assert v.points == 0


def test_unknown_rule_must_raise_value_error(ref):
    good = ref["scaled_lr"]

    def lenient(lr, b0, b1, rule):
        return good(lr, b0, b1, rule) if rule in ("linear", "sqrt") else lr

    v = check("scaled_lr", lenient, verbose=False)
    assert failed(v) == ["an unknown rule raises ValueError"]
    assert math.isclose(v.points, 0.75)
