"""Notebook 03's checkers: the reference solution (taken from solutions/, the single source) gets
every correctness and memory point; each classic mistake loses exactly the groups that cover it."""
from pathlib import Path

import pytest
import torch

from effilab.grading import check
from effilab.grading.nbcode import solution_namespace
from effilab.grading.specs.nb03 import SavedTensorMeter, peak_saved_bytes, reference_segments
from effilab.models.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
DROPOUT_GROUP = "dropout > 0: the recomputation replays the same dropout masks (gradients equal)"
SAVED_GROUP = "keeps only its inputs for backward (no intermediate activations)"


@pytest.fixture(scope="module")
def ref():
    return solution_namespace(ROOT / "solutions" / "03_gradient_checkpointing.ipynb")


def failed(v):
    return sorted(g.name for g in v.groups if not g.passed)


def test_reference_memory_ratio_below_a_third(ref):
    v = check("checkpointed_blocks", ref["checkpointed_blocks"], "memory", verbose=False)
    assert v.passed, v.report()
    assert v.details["ratio"] <= 1 / 3 and v.details["segments"] == [(0, 4), (4, 8), (8, 12), (12, 16)]


# ---------------------------------------------------------------------------------------------- checkpoint
def _variant(ref, restore_rng=True, keep_graph=False):
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, fn, *args):
            ctx.fn, ctx.rng = fn, torch.get_rng_state()
            ctx.save_for_backward(*args)
            with torch.no_grad():
                return fn(*args)

        @staticmethod
        def backward(ctx, *grads):
            inputs = [a.detach().requires_grad_(a.requires_grad) for a in ctx.saved_tensors]
            with torch.random.fork_rng(devices=[]):
                if restore_rng:
                    torch.set_rng_state(ctx.rng)
                with torch.enable_grad():
                    out = ctx.fn(*inputs)
            torch.autograd.backward(out, grads)
            return (None, *(a.grad for a in inputs))

    if keep_graph:
        return lambda fn, *args: fn(*args)
    return lambda fn, *args: F.apply(fn, *args)


def test_checkpoint_variant_with_rng_passes(ref):
    assert check("checkpoint", _variant(ref), verbose=False).passed


def test_checkpoint_forgetting_the_rng_state_loses_exactly_the_dropout_group(ref):
    v = check("checkpoint", _variant(ref, restore_rng=False), verbose=False)
    assert failed(v) == [DROPOUT_GROUP]
    assert v.points == 3.0
    assert "get_rng_state" in v.report()
    # ... and nothing in the other exercises of the notebook
    ns = dict(ref)
    exec("def checkpoint(fn, *args):\n    return BAD(fn, *args)", ns | {"BAD": _variant(ref, restore_rng=False)}, ns)
    assert check("checkpointed_blocks", ns["checkpointed_blocks"], verbose=False).passed
    assert check("checkpointed_blocks", ns["checkpointed_blocks"], "memory", verbose=False).passed


def test_checkpoint_that_keeps_the_graph_is_caught_by_the_accounting(ref):
    v = check("checkpoint", _variant(ref, keep_graph=True), verbose=False)
    assert failed(v) == [SAVED_GROUP]
    assert "keeps intermediates" in v.report()


def test_checkpoint_detached_output_gives_no_gradients():
    v = check("checkpoint", lambda fn, *args: fn(*(a.detach() for a in args)), verbose=False)
    assert v.points == 0 or "no gradient" in v.report()
    assert DROPOUT_GROUP in failed(v)


def test_checkpoint_stub_is_reported_as_not_filled_in():
    def stub(fn, *args):
        raise NotImplementedError()

    v = check("checkpoint", stub, verbose=False)
    assert v.points == 0 and "not filled in yet" in v.report()


# ---------------------------------------------------------------------------------------------- segments
def test_reference_segments_examples():
    assert reference_segments(16) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert reference_segments(10) == [(0, 4), (4, 7), (7, 10)]
    assert reference_segments(1) == [(0, 1)]


def test_segments_one_per_layer_is_not_sqrt():
    v = check("segments_for", lambda n: [(i, i + 1) for i in range(n)], verbose=False)
    assert "perfect squares" in failed(v) and v.points < 1


def test_segments_fixed_size_leaves_a_short_tail():
    def wrong(n):
        s = max(1, round(n ** 0.5) + 1)
        return [(i, min(n, i + s)) for i in range(0, n, s)]

    assert check("segments_for", wrong, verbose=False).points < 1


def test_best_n_segments_without_ceil_is_caught(ref):
    def wrong(n, a, b):
        return min(range(1, n + 1), key=lambda k: (k * b + n / k * a, k))

    v = check("best_n_segments", wrong, verbose=False)
    assert v.points < 1


def test_best_n_segments_sqrt_shortcut_is_caught():
    v = check("best_n_segments", lambda n, a, b: max(1, round((n * a / b) ** 0.5)), verbose=False)
    assert v.points < 1


# ---------------------------------------------------------------------------------------------- checkpointed_blocks
def test_segments_without_checkpointing_lose_exactly_the_memory_points(ref):
    ns = dict(ref)

    def no_ckpt(model, x, segments):
        for s, e in segments:
            for b in model.blocks[s:e]:
                x = b(x)
        return x

    assert check("checkpointed_blocks", no_ckpt, verbose=False).passed
    v = check("checkpointed_blocks", no_ckpt, "memory", verbose=False)
    assert v.points == 0 and v.details["ratio"] > 0.9
    assert ns


def test_skipping_a_block_is_caught(ref):
    ck = ref["checkpoint"]

    def wrong(model, x, segments):
        for s, e in segments:
            def run(h, blocks=model.blocks[s:e - 1]):
                for b in blocks:
                    h = b(h)
                return h
            x = ck(run, x)
        return x

    v = check("checkpointed_blocks", wrong, verbose=False)
    assert v.points == 0
    m = check("checkpointed_blocks", wrong, "memory", verbose=False)
    assert m.points == 0 and "not measured" in m.report()


def test_meter_counts_recomputation_and_releases_everything():
    model = GPT(GPTConfig.preset("cpu-tiny", n_layer=4), seed=0).train()
    x, y = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    meter = SavedTensorMeter(model)
    with meter.hooks():
        _, loss = model(x, y)
        fwd = meter.current
        loss.backward()
    assert meter.peak == fwd > 0 and meter.current == 0
    assert peak_saved_bytes(lambda: model(x, y)[1].backward(), model) == fwd
