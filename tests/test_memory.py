"""Tests of effilab.memory: activation bytes, the training-memory model, plots, peak memory."""
import pytest
import torch
from torch import nn

from effilab import memory


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_saved_activation_bytes_of_linear_relu_linear():
    model, x = _mlp(), torch.randn(4, 16)
    rep = memory.saved_activation_bytes(model, x)
    # Saved for backward (float32, 4 bytes):
    #   Linear 0: its input x (4x16) for the weight gradient (its weight is not needed: x needs
    #             no gradient);
    #   ReLU 1:   its output h (4x32), also the input Linear 2 saves -> counted once;
    #   Linear 2: h (already counted) and weight.t() (a parameter view, excluded).
    assert rep.total_bytes == 4 * 16 * 4 + 4 * 32 * 4 == 768
    assert rep.count == 2
    assert rep.by_module == {"0": 256, "1": 512}
    assert sum(rep.by_module.values()) == rep.total_bytes
    assert rep.saves == 4  # x, h (relu), h (linear 2), weight.t()
    assert isinstance(rep.result, torch.Tensor) and rep.result.shape == (4, 8)
    rep.result.sum().backward()  # the hooks left a working graph
    assert model[0].weight.grad is not None
    assert "768 B" in str(rep)


def test_saved_activation_bytes_can_include_parameters():
    model, x = _mlp(), torch.randn(4, 16)
    rep = memory.saved_activation_bytes(model, x, include_parameters=True)
    # + the (8x32) weight of Linear 2, saved as weight.t(); its storage is 32*8*4 bytes
    assert rep.total_bytes == 768 + 32 * 8 * 4
    assert rep.by_module["2"] == 32 * 8 * 4


def test_saved_activation_bytes_dedups_same_tensor():
    a = torch.randn(1000, requires_grad=True)

    def f(a):
        b = a * 2  # saves nothing of b's size (mul by a constant saves no tensor)
        return b * b  # saves b twice: one storage of 4000 bytes

    rep = memory.saved_activation_bytes(f, a)
    assert rep.saves == 2
    assert rep.count == 1 and rep.total_bytes == 4000
    assert rep.by_module == {}  # no model given


def test_saved_activation_bytes_dedups_views_by_storage():
    x = torch.randn(2, 4, 16)  # 512 bytes, viewed as (8, 16) inside the 3-D Linear
    model = _mlp()
    rep = memory.saved_activation_bytes(model, x)
    assert rep.total_bytes == 2 * 4 * 16 * 4 + 2 * 4 * 32 * 4


def test_saved_activation_bytes_nothing_under_no_grad():
    model = _mlp()
    with torch.no_grad():
        rep = memory.saved_activation_bytes(model, torch.randn(4, 16))
    assert rep.total_bytes == 0 and rep.count == 0


def test_saved_activation_bytes_removes_hooks_on_error():
    model = _mlp()
    with pytest.raises(RuntimeError):
        memory.saved_activation_bytes(model, torch.randn(4, 17))  # wrong width
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_training_memory_recipes():
    n = 1_000_000
    assert sum(memory.training_memory(n, "fp32_adam").values()) == 16 * n
    mixed = memory.training_memory(n, "mixed_adam", activation_bytes=123)
    assert mixed == {"weights": 2 * n, "grads": 2 * n, "master_weights": 4 * n,
                     "optimizer": 8 * n, "activations": 123}
    assert sum(memory.training_memory(n, "mixed_8bit_adam").values()) == 10 * n
    assert sum(memory.training_memory(n, "bf16_adam").values()) == 8 * n
    assert sum(memory.training_memory(n, "sgd_fp32").values()) == 8 * n
    assert sum(memory.training_memory(n, "sgd_momentum_fp32").values()) == 12 * n
    for name, r in memory.RECIPES.items():
        assert r.doc, name


def test_training_memory_bad_recipe_lists_valid_ones():
    with pytest.raises(ValueError, match="mixed_adam") as e:
        memory.training_memory(10, "adam_fp64")
    assert "adam_fp64" in str(e.value)
    with pytest.raises(ValueError):
        memory.training_memory(-1)


def test_plot_training_memory():
    import matplotlib.pyplot as plt

    n = 7e9
    bd = {"fp32": memory.training_memory(n, "fp32_adam"),
          "mixed": memory.training_memory(n, "mixed_adam", activation_bytes=2**34)}
    ax = memory.plot_training_memory(bd, unit="GiB")
    # fp32: 3 non-empty parts; mixed: 5 parts -> one Rectangle per (segment, bar) drawn
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * 5  # every segment present in some bar is drawn for both bars
    total_mixed = sum(h for p, h in zip(ax.patches, heights) if p.get_x() > 0.5)
    assert total_mixed == pytest.approx((16 * n + 2**34) / 2**30)
    assert ax.get_ylabel() == "memory (GiB)"
    assert ax.get_legend() is not None
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="GiB"):
        memory.plot_training_memory(bd, unit="gigs")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1536, "1.50 KiB"),
                                     (3 * 2**30, "3.00 GiB"), (-2**20, "-1.00 MiB")])
def test_format_bytes(n, text):
    assert memory.format_bytes(n) == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_peak_memory_raises_clear_error_on_cpu():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*saved_activation_bytes"):
        memory.peak_memory(lambda: torch.empty(10))


# ------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_peak_memory_of_known_allocation():
    size = 256 * 2**20
    res = memory.peak_memory(lambda: torch.empty(size, dtype=torch.uint8, device="cuda"))
    assert abs(res.peak_bytes - size) <= 2 * 2**20
    assert abs(res.retained_bytes - size) <= 2 * 2**20  # the result is still alive
    assert isinstance(res.result, torch.Tensor) and "MiB" in str(res)


@pytest.mark.gpu
def test_peak_memory_counts_temporaries():
    x = torch.randn(16 * 2**20, device="cuda")  # 64 MiB

    def f():
        y = x * 2  # 64 MiB temporary
        return (y + 1).sum()  # another 64 MiB temporary at the peak, scalar result

    res = memory.peak_memory(f)
    assert res.peak_bytes >= 2 * x.nbytes - 2**20
    assert res.retained_bytes < 2**20
