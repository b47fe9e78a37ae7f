"""Tests of effilab.device: peak tables, device info, roofline fractions."""
import dataclasses

import pytest
import torch

from effilab import device


@pytest.mark.parametrize(
    "name, gpu, gbs, bf16",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80GB", 3350, 989),
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB", 2000, 756),
        ("NVIDIA H200", "H200 SXM 141GB", 4800, 989),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB", 2039, 312),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB", 1555, 312),
        ("NVIDIA L4", "L4", 300, 121),
        ("NVIDIA L40S", "L40S", 864, 362),
        ("NVIDIA A10G", "A10G", 600, 70),
        ("NVIDIA A10", "A10", 600, 125),
        ("Tesla T4", "T4", 320, None),
        ("Tesla V100-SXM2-16GB", "V100 SXM2", 900, None),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 1008, 165),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 936, 71),
    ],
)
def test_peak_rates_lookup(name, gpu, gbs, bf16):
    r = device.peak_rates(name)
    assert r is not None, name
    assert (r.gpu, r.bandwidth_gbs, r.bf16_tflops) == (gpu, gbs, bf16)
    assert r.source == "datasheet"


def test_peak_rates_full_entries():
    h100 = device.peak_rates("NVIDIA H100 80GB HBM3")
    assert (h100.fp16_tflops, h100.tf32_tflops, h100.fp32_tflops) == (989, 494, 67)
    t4 = device.peak_rates("Tesla T4")
    assert (t4.bf16_tflops, t4.fp16_tflops, t4.tf32_tflops, t4.fp32_tflops) == (None, 65, None, 8.1)


@pytest.mark.parametrize("name", ["", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 4090 Laptop GPU",
                                  "NVIDIA GH200 480GB", "AMD Instinct MI300X", "NVIDIA L40", "cpu"])
def test_unknown_gpus_give_none(name):
    assert device.peak_rates(name) is None


def test_measured_rates_only_on_reference_gpu():
    m = device.measured_rates("NVIDIA H100 80GB HBM3")
    assert m is not None and m.bandwidth_gbs == 2990 and m.bf16_tflops == 710
    assert m.source.startswith("measured on")
    assert device.measured_rates("NVIDIA H100 PCIe") is None
    assert device.measured_rates("NVIDIA A100-SXM4-80GB") is None


def test_measured_rates_of_the_h200():
    m = device.measured_rates("NVIDIA H200")
    assert m is not None and m.bandwidth_gbs == 4250 and m.bf16_tflops == 716
    assert m.source.startswith("measured on NVIDIA H200") and m.gpu == "H200 SXM 141GB"
    assert m.bandwidth_gbs < device.peak_rates("NVIDIA H200").bandwidth_gbs  # below the datasheet
    assert device.measured_rates("NVIDIA H200 NVL") is None  # another board, other clocks
    assert device.measured_rates("NVIDIA H100 80GB HBM3").bandwidth_gbs == 2990  # the H100 row is kept


def test_peak_rates_is_frozen():
    r = device.peak_rates("NVIDIA L4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.bandwidth_gbs = 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_info_on_cpu():
    d = device.info()
    assert d.kind == "cpu" and d.capability is None and d.sm_count is None
    assert d.bf16 is False and d.fp8 is False
    assert d.peak is None and d.measured is None
    assert d.triton_interpreter is True  # effilab sets TRITON_INTERPRET=1 without a GPU
    assert d.torch_version == torch.__version__
    assert device.info() is d  # cached
    assert not device.has_cuda()
    assert device.default_device() == torch.device("cpu")
    text = d.summary()
    assert "CPU" in text and "torch" in text and len(text.splitlines()) >= 3
    assert "<pre>" in d._repr_html_()


def test_is_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert device.is_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert device.is_colab() is True


def _fake_h100() -> device.DeviceInfo:
    name = "NVIDIA H100 80GB HBM3"
    return device.DeviceInfo(
        kind="cuda", name=name, capability=(9, 0), bf16=True, fp8=True, memory_bytes=80 * 2**30,
        sm_count=132, is_colab=False, triton_interpreter=False, torch_version="2.11",
        triton_version="3.6", peak=device.peak_rates(name), measured=device.measured_rates(name),
        index=0,
    )


def test_roofline_fraction_arithmetic():
    dev = _fake_h100()
    f = device.roofline_fraction(achieved_gbs=1675.0, achieved_tflops=494.5, info=dev)
    assert f["frac_bandwidth"] == pytest.approx(0.5)
    assert f["frac_measured_bandwidth"] == pytest.approx(1675 / 2990)
    assert f["frac_flops"] == pytest.approx(0.5)
    assert f["frac_measured_flops"] == pytest.approx(494.5 / 710)
    f32 = device.roofline_fraction(achieved_tflops=33.5, dtype=torch.float32, info=dev)
    assert f32["frac_flops"] == pytest.approx(0.5)
    assert f32["frac_measured_flops"] is None  # fp32 was not measured
    assert f32["frac_bandwidth"] is None  # no bandwidth given
    tf32 = device.roofline_fraction(achieved_tflops=247.0, dtype="tf32", info=dev)
    assert tf32["frac_flops"] == pytest.approx(0.5)
    assert "H100" in dev.summary() and "3.35 TB/s" in dev.summary()


def test_roofline_fraction_unknown_device_and_bad_dtype():
    dev = dataclasses.replace(_fake_h100(), name="Mystery GPU", peak=None, measured=None)
    f = device.roofline_fraction(achieved_gbs=100.0, achieved_tflops=10.0, info=dev)
    assert all(v is None for v in f.values())
    with pytest.raises(ValueError, match="tf32"):
        device.roofline_fraction(achieved_tflops=1.0, dtype=torch.int8, info=dev)


@pytest.mark.gpu
def test_info_on_gpu():
    d = device.info()
    assert d.kind == "cuda" and d.name == torch.cuda.get_device_name()
    assert d.capability == torch.cuda.get_device_capability()
    assert d.bf16 == (d.capability >= (8, 0)) and d.fp8 == (d.capability >= (8, 9))
    assert d.memory_bytes > 2**30 and d.sm_count > 0
    assert d.peak == device.peak_rates(d.name)
    assert "GPU" in d.summary() and d.name in d.summary()
    with pytest.raises(ValueError, match="no CUDA device"):
        device.info(torch.cuda.device_count())


def test_gpu_class_names_the_family_speed_thresholds_are_keyed_by():
    from effilab.device import gpu_class

    assert gpu_class("NVIDIA H200") == "H200"
    assert gpu_class("NVIDIA H100 80GB HBM3") == "H100"
    assert gpu_class("NVIDIA A100-SXM4-40GB") == gpu_class("NVIDIA A100 80GB PCIe") == "A100"
    assert gpu_class("Tesla T4") == "T4"
    assert gpu_class("NVIDIA L4") == "L4" and gpu_class("NVIDIA L40S") == "L40S"
    assert gpu_class("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert gpu_class("Some Future GPU") is None
