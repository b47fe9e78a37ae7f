"""effilab.train: the training loop, gradient accumulation, MFU, and the memory breakdown."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from effilab import data as D
from effilab import train as TR
from effilab.models import GPT, GPTConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster, and far more robust when other
    processes share the 2 CPU cores (2 spinning OpenMP threads on a busy core slow down ~10x)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text():
    return D.corpus(400_000, cache=False)


def tiny(**kw):
    return GPT(GPTConfig.preset("cpu-tiny", **kw), seed=0)


def test_train_lowers_the_loss_on_cpu_tiny(text):
    tr, va = D.train_val_split(text)
    log = TR.train(tiny(), tr, steps=40, batch_size=16, lr=3e-3, device="cpu", progress=False,
                   seed=0, val_data=va, eval_every=20, eval_batches=2)
    assert log.steps == 40 and len(log.step_times_s) == 40 and len(log.tokens) == 40
    assert log.losses[0] == pytest.approx(math.log(256), abs=0.15)
    assert log.final_loss() < log.losses[0] - 1.5  # from ~5.5 nats/byte to below ~4
    assert [s for s, _ in log.val_losses] == [20, 40] and log.val_losses[-1][1] < 4.5
    assert log.tokens == [16 * 64] * 40
    assert log.tokens_per_s > 0 and all(t > 0 for t in log.step_times_s)
    assert log.flops_per_token == tiny().flops_per_token()
    assert log.mfu is None and log.peak_memory_bytes is None  # CPU
    s = log.summary()
    assert "MFU" in s and "tokens/s" in s
    ax = log.plot(smooth=0.5)
    assert len(ax.lines) == 2  # the training curve and the validation points
    import matplotlib.pyplot as plt

    plt.close("all")


def test_train_is_reproducible_with_dropout(text):
    runs = [TR.train(tiny(dropout=0.2), text, steps=4, batch_size=4, device="cpu",
                     progress=False, seed=7).losses for _ in range(2)]
    assert runs[0] == runs[1]
    other = TR.train(tiny(dropout=0.2), text, steps=4, batch_size=4, device="cpu",
                     progress=False, seed=8).losses
    assert other != runs[0]


def test_progress_bar_writes_to_stdout_not_stderr(text, capfd):
    TR.train(tiny(), text, steps=3, batch_size=2, device="cpu", progress=True, log_every=1)
    out, err = capfd.readouterr()
    assert err == ""
    assert "train fp32" in out and "3/3" in out
    TR.train(tiny(), text, steps=2, batch_size=2, device="cpu", progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _sgd_step(model, micro):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = TR.train_step(model, opt, micro, grad_clip=None)
    return loss, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_matches_the_full_batch(text):
    x, y = D.get_batch(text, 8, 64, seed=1)
    full_loss, full = _sgd_step(tiny(), [(x, y)])
    acc_loss, acc = _sgd_step(tiny(), [(x[:4], y[:4]), (x[4:], y[4:])])
    assert acc_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert torch.allclose(acc, full, atol=1e-6)


def test_masked_accumulation_weights_every_token_equally(text):
    x, y, m = D.variable_length_batch(text, 8, 64, 4, seed=2)
    # uneven micro-batches: make sure the two halves hold different token counts
    assert int(m[:4].sum()) != int(m[4:].sum())
    full_loss, full = _sgd_step(tiny(), [(x, y, m)])
    acc_loss, acc = _sgd_step(tiny(), [(x[:4], y[:4], m[:4]), (x[4:], y[4:], m[4:])])
    assert acc_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert torch.allclose(acc, full, atol=1e-6)
    # the naive mean of per-micro-batch means is a different (biased) objective
    model = tiny()
    naive = sum(model(xb, yb, loss_mask=mb)[1] for xb, yb, mb in
                [(x[:4], y[:4], m[:4]), (x[4:], y[4:], m[4:])]) / 2
    assert abs(naive.item() - full_loss.item()) > 1e-4
    with pytest.raises(ValueError, match="mask"):
        TR.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), [(x, y, m), (x, y)])


def test_train_with_batch_fn_and_grad_accum(text):
    fn = lambda g: D.variable_length_batch(text, 4, 48, 8, generator=g)  # noqa: E731
    log = TR.train(tiny(), None, steps=3, batch_size=4, grad_accum=2, batch_fn=fn, device="cpu",
                   progress=False)
    assert log.steps == 3 and all(8 * 2 <= n <= 4 * 48 * 2 for n in log.tokens)
    assert len(set(log.tokens)) > 1


def test_bf16_autocast_step_on_cpu_and_precision_context(text):
    log = TR.train(tiny(), text, steps=2, batch_size=2, device="cpu", dtype=torch.bfloat16,
                   progress=False)
    assert log.precision == "bf16" and all(math.isfinite(v) for v in log.losses)
    before = torch.get_float32_matmul_precision()
    with TR.precision_context("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
    with TR.precision_context("fp32"):
        assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match="precision"):
        TR.train(tiny(), text, steps=1, batch_size=2, device="cpu", precision="fp8", progress=False)


def test_mfu_against_device_peaks():
    from effilab.device import PeakRates

    peak = PeakRates(bandwidth_gbs=3350, bf16_tflops=989, fp16_tflops=989, tf32_tflops=494,
                     fp32_tflops=67)
    gpu = SimpleNamespace(kind="cuda", name="H100", peak=peak)
    assert TR.mfu(1e5, 6e8, info=gpu) == pytest.approx(1e5 * 6e8 / 989e12)
    assert TR.mfu(1e5, 6e8, info=gpu, dtype="tf32") == pytest.approx(1e5 * 6e8 / 494e12)
    assert TR.mfu(1e5, 6e8, info=gpu, dtype=torch.float32) == pytest.approx(1e5 * 6e8 / 67e12)
    assert TR.mfu(1e5, 6e8, info=SimpleNamespace(kind="cuda", name="?", peak=None)) is None
    assert TR.mfu(1e5, 6e8, info=SimpleNamespace(kind="cpu", name="cpu", peak=None)) is None
    no_bf16 = SimpleNamespace(kind="cuda", name="T4", peak=PeakRates(320, None, 65, None, 8.1))
    assert TR.mfu(1e5, 6e8, info=no_bf16) is None


def test_memory_breakdown_is_16_bytes_per_parameter_for_fp32_adamw(text):
    model = tiny()
    n = model.num_params()
    snapshot = copy.deepcopy(model.state_dict())
    batch = D.get_batch(text, 4, 64, seed=0)
    mb = TR.measure_memory_breakdown(model, batch, lambda ps: torch.optim.AdamW(ps, lr=1e-3),
                                     device="cpu")
    assert mb["weights"] == 4 * n and mb["grads"] == 4 * n and mb["optimizer"] == 8 * n
    assert mb["weights"] + mb["grads"] + mb["optimizer"] == 16 * n
    assert mb["master_weights"] == 0 and mb["activations"] > 0
    assert mb.optimizer_scalars > 0  # Adam's step counters, kept apart
    for k, v in model.state_dict().items():  # measured on a copy: the model is untouched
        assert torch.equal(v, snapshot[k])
    assert model.wte.weight.grad is None

    # SGD without momentum keeps no state at all
    sgd = TR.measure_memory_breakdown(model, batch, lambda ps: torch.optim.SGD(ps, lr=0.1), device="cpu")
    assert sgd["optimizer"] == 0 and sgd["weights"] == 4 * n

    from effilab.memory import training_memory

    formula = training_memory(n, "fp32_adam", activation_bytes=mb["activations"])
    for key in ("weights", "grads", "optimizer", "master_weights", "activations"):
        assert formula[key] == pytest.approx(mb[key])
    ax = TR.plot_memory_breakdown(mb, formula, unit="MiB")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["measured", "formula"]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_step_time_uses_bench_timing(text):
    model = tiny()
    opt = TR.make_optimizer(model, 1e-3)
    batch = D.get_batch(text, 2, 64, seed=0)
    t = TR.step_time(lambda: TR.train_step(model, opt, [batch]), max_time_s=0.5, min_reps=3)
    assert t.median_ms > 0 and t.n >= 1


@pytest.mark.gpu
def test_on_cuda_bf16_training_reports_mfu_and_memory(text):
    model = tiny()
    log = TR.train(model, text, steps=6, batch_size=8, device="cuda", precision="bf16", progress=False)
    assert all(math.isfinite(v) for v in log.losses)
    assert log.peak_memory_bytes > 0 and log.tokens_per_s > 0
    from effilab.device import info

    if info().peak is not None:
        assert log.mfu is not None and 0 < log.mfu < 1
    batch = D.get_batch(text, 4, 64, seed=0)
    mb = TR.measure_memory_breakdown(model, batch, lambda ps: torch.optim.AdamW(ps, lr=1e-3), device="cuda")
    n = model.num_params()
    assert mb["weights"] + mb["grads"] + mb["optimizer"] == 16 * n
    assert mb["activations"] > 0
