"""Tests of effilab.bench: time_fn's stopping rule, throughput arithmetic, compare, bar_plot."""
import itertools
import time

import pytest
import torch

from effilab import bench, device


def _sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)


def test_time_fn_cpu_median_is_sane():
    t = bench.time_fn(_sleep_ms, 5.0, warmup=1, min_reps=5, max_time_s=0.5, device="cpu")
    assert t.method == "perf_counter" and t.device == "cpu"
    assert 4.9 <= t.median_ms < 25.0  # sleep never returns early; generous for loaded machines
    assert t.min_ms <= t.q1_ms <= t.median_ms <= t.q3_ms
    assert t.n == len(t.samples_ms) >= 1
    assert t.spread == pytest.approx((t.q3_ms - t.q1_ms) / t.median_ms)
    assert "ms (IQR ±" in str(t) and f"n={t.n}" in str(t)


def test_time_fn_stops_at_min_reps_when_spread_is_met():
    # Any spread is acceptable: the first batch of min_reps calls is enough.
    t = bench.time_fn(lambda: None, warmup=0, min_reps=7, target_spread=float("inf"), device="cpu")
    assert t.n == 7


def test_time_fn_stops_at_max_reps_when_spread_is_never_met():
    # Calls of deliberately varying cost never reach a spread of 0: runs to max_reps.
    counter = itertools.count()
    t = bench.time_fn(lambda: sum(range(next(counter) % 5 * 2000)), warmup=2, min_reps=5,
                      max_reps=23, target_spread=0.0, max_time_s=10.0, device="cpu")
    assert t.n == 23


def test_time_fn_stops_at_max_time():
    start = time.perf_counter()
    t = bench.time_fn(_sleep_ms, 10.0, warmup=1, min_reps=5, max_reps=1000, target_spread=0.0,
                      max_time_s=0.1, device="cpu")
    elapsed = time.perf_counter() - start
    assert t.n < 30  # 0.1 s of 10 ms calls is ~10 calls, far from max_reps
    assert elapsed < 1.0


def test_time_fn_passes_args_and_kwargs():
    seen = []
    bench.time_fn(lambda a, b=0: seen.append((a, b)), 1, b=2, warmup=1, min_reps=2,
                  target_spread=float("inf"), device="cpu")
    assert seen == [(1, 2)] * 3  # 1 warm-up + 2 timed


def test_time_fn_infers_cpu_from_tensor_args():
    x = torch.randn(64, 64)
    t = bench.time_fn(torch.mm, x, x, warmup=1, min_reps=3, max_time_s=0.2)
    assert t.device == "cpu"


@pytest.mark.parametrize("kw", [dict(min_reps=0), dict(min_reps=10, max_reps=5), dict(max_time_s=0),
                                dict(warmup=-1), dict(target_spread=-0.1)])
def test_time_fn_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        bench.time_fn(lambda: None, device="cpu", **kw)


def test_timing_from_samples_quartiles():
    t = bench.Timing.from_samples([1.0, 2.0, 3.0, 4.0, 5.0], "cpu", "perf_counter")
    assert (t.median_ms, t.q1_ms, t.q3_ms, t.min_ms, t.n) == (3.0, 2.0, 4.0, 1.0, 5)
    assert t.spread == pytest.approx(2.0 / 3.0)
    assert str(t) == "3.00 ms (IQR ±33.3%, n=5)"


def _fake_h100() -> device.DeviceInfo:
    name = "NVIDIA H100 80GB HBM3"
    return device.DeviceInfo(
        kind="cuda", name=name, capability=(9, 0), bf16=True, fp8=True, memory_bytes=80 * 2**30,
        sm_count=132, is_colab=False, triton_interpreter=False, torch_version="2.11",
        triton_version="3.6", peak=device.peak_rates(name), measured=device.measured_rates(name),
    )


def test_throughput_arithmetic():
    dev = _fake_h100()
    # 2.41e9 bytes in 1 ms = 2410 GB/s = 72% of 3350 GB/s
    tp = bench.throughput(1.0, bytes=2.41e9, info=dev)
    assert tp.gbs == pytest.approx(2410.0)
    assert tp.frac_bandwidth == pytest.approx(2410 / 3350)
    assert tp.frac_measured_bandwidth == pytest.approx(2410 / 2990)
    assert tp.tflops is None and tp.frac_flops is None
    assert str(tp).startswith("2.41 TB/s = 72% of peak 3.35 TB/s")
    # a 8192^3 matmul (2*8192^3 FLOP) in 2 ms
    fl = 2 * 8192**3
    tp = bench.throughput(2.0, flops=fl, info=dev, dtype=torch.bfloat16)
    assert tp.tflops == pytest.approx(fl / 2e-3 / 1e12)
    assert tp.frac_flops == pytest.approx(tp.tflops / 989)
    assert tp.frac_measured_flops == pytest.approx(tp.tflops / 710)
    assert "TFLOP/s" in str(tp) and "bf16" in str(tp)
    tp32 = bench.throughput(1.0, flops=33.5e9, info=dev, dtype=torch.float32)
    assert tp32.frac_flops == pytest.approx(0.5)


def test_throughput_accepts_timing_and_unknown_device():
    t = bench.Timing.from_samples([2.0, 2.0, 2.0], "cpu", "perf_counter")
    dev = device.DeviceInfo(
        kind="cpu", name="x", capability=None, bf16=False, fp8=False, memory_bytes=None,
        sm_count=None, is_colab=False, triton_interpreter=True, torch_version="", triton_version=None,
        peak=None, measured=None,
    )
    tp = bench.throughput(t, bytes=4e9, info=dev)
    assert tp.gbs == pytest.approx(2000.0) and tp.frac_bandwidth is None
    with pytest.raises(ValueError):
        bench.throughput(0.0, bytes=1)


def test_compare_orders_candidates_and_interleaves():
    calls = []

    def fast():
        calls.append("fast")
        _sleep_ms(1.0)

    def slow():
        calls.append("slow")
        _sleep_ms(4.0)

    c = bench.compare({"slow": slow, "fast": fast}, rounds=3, warmup=1, min_reps=3, max_time_s=0.3,
                      device="cpu")
    assert c.ratio("slow", "fast") > 2.0
    assert c.ratio("fast", "slow") < 0.5
    assert c.fastest == "fast"
    assert set(c.timings) == {"slow", "fast"} and c.rounds == 3
    assert all(len(v) == 3 for v in c.round_medians.values())
    assert c.timings["fast"].n == sum(1 for x in calls if x == "fast") - 3  # minus 3 warm-ups
    # interleaved: both candidates appear in the first and in the last third of the calls
    third = len(calls) // 3
    assert {"slow", "fast"} <= set(calls[:third + 2]) and {"slow", "fast"} <= set(calls[-third - 2:])
    table = c.table()
    assert "slow" in table and "fast" in table and "median" in table
    with pytest.raises(KeyError, match="candidates"):
        c.ratio("slow", "nope")


def test_compare_passes_args():
    x = torch.randn(32, 32)
    c = bench.compare({"mm": torch.mm, "matmul": torch.matmul}, args=(x, x), rounds=2, warmup=1,
                      min_reps=2, max_time_s=0.1)
    assert c.timings["mm"].device == "cpu"
    ax = c.plot()
    assert len(ax.patches) == 2


def test_bar_plot_bars_and_ratio_labels():
    import matplotlib.pyplot as plt

    ax = bench.bar_plot({"eager": 4.0, "compiled": 2.0, "triton": 1.0}, ylabel="ms",
                        title="t", baseline="eager", lower_is_better=True)
    assert len(ax.patches) == 3
    assert [p.get_height() for p in ax.patches] == [4.0, 2.0, 1.0]
    texts = [t.get_text() for t in ax.texts]
    assert any("4.00×" in s for s in texts) and any("1.00×" in s for s in texts)
    assert ax.get_ylabel() == "ms" and ax.get_title() == "t"
    plt.close(ax.figure)

    fig, ax2 = plt.subplots()
    out = bench.bar_plot({"a": 100.0, "b": 250.0}, ylabel="GB/s", ax=ax2, baseline="a")
    assert out is ax2 and any("2.50×" in t.get_text() for t in ax2.texts)
    plt.close(fig)
    with pytest.raises(KeyError):
        bench.bar_plot({"a": 1.0}, ylabel="x", baseline="b")


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_time_fn_cuda_agrees_with_triton_do_bench():
    import triton.testing

    n = 64 * 2**20  # 256 MiB of float32
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    t = bench.time_fn(dst.copy_, src)
    assert t.method == "cuda-events" and t.device.startswith("cuda")
    ref = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    assert t.median_ms == pytest.approx(ref, rel=0.15)
    tp = bench.throughput(t, bytes=2 * src.nbytes)
    if tp.frac_bandwidth is not None:
        assert 0.3 < tp.frac_bandwidth < 1.0


@pytest.mark.gpu
def test_compare_on_gpu_orders_sizes():
    big = torch.randn(32 * 2**20, device="cuda")
    small = big[: 2**20]
    c = bench.compare({"big": lambda: big.mul(2), "small": lambda: small.mul(2)}, rounds=3)
    assert c.ratio("big", "small") > 4


def test_kernel_times_says_it_needs_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        bench.kernel_times(lambda: None)


@pytest.mark.gpu
def test_kernel_times_sums_the_kernels_of_one_call():
    x = torch.randn(1 << 20, device="cuda")
    total, rows = bench.kernel_times(lambda: (x * 2).sum(), calls=4)
    assert rows and total == pytest.approx(sum(ms for _, ms, _ in rows))
    assert sum(c for _, _, c in rows) >= 2  # the multiply and the reduction, per call
