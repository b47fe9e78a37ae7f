"""What the machine is: GPU name, compute capability, bf16/fp8 support, Colab, peak rates.

The course grades exercises for speed, so every speed is read against a *ceiling*. Two kinds of
ceilings live here:

* **datasheet peaks** (:func:`peak_rates`): the vendor's numbers for memory bandwidth and dense
  (non-sparse) tensor-core throughput. No real kernel reaches them; 80-90 % of the bandwidth and
  70-80 % of the matmul peak is already excellent.
* **measured ceilings** (:func:`measured_rates`): what a plain device-to-device copy and a large
  bf16 cuBLAS matmul actually reached on the course's reference GPU. They answer "how close am I to
  the best anyone gets on this machine?".

Units: bandwidth in GB/s (1 GB = 1e9 bytes, as on datasheets), throughput in TFLOP/s (1e12).

Typical use::

    from effilab import device
    print(device.info().summary())
    device.roofline_fraction(achieved_gbs=2400.0)   # {'frac_bandwidth': 0.716..., ...}
"""
from __future__ import annotations

import html
import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "PeakRates",
    "DeviceInfo",
    "has_cuda",
    "info",
    "peak_rates",
    "measured_rates",
    "is_colab",
    "default_device",
    "roofline_fraction",
    "flops_peak",
]


# --------------------------------------------------------------------------------------------
# Peak rates
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeakRates:
    """Ceilings of one GPU model.

    Attributes:
        bandwidth_gbs: DRAM (HBM/GDDR) bandwidth in GB/s (1e9 bytes/s).
        bf16_tflops, fp16_tflops, tf32_tflops, fp32_tflops: dense (non-sparse) throughput in
            TFLOP/s for matmuls in that format (tensor cores for bf16/fp16/tf32, CUDA cores for
            fp32); ``None`` where the hardware has no such mode (e.g. bf16 on T4/V100) or where
            nothing was measured.
        source: ``"datasheet"`` or ``"measured on <GPU>, <date> (...)"``.
        gpu: a short human label of the matched model, e.g. ``"H100 SXM 80GB"``.
        notes: free text (variants, other measurements).
    """

    bandwidth_gbs: float | None
    bf16_tflops: float | None
    fp16_tflops: float | None
    tf32_tflops: float | None
    fp32_tflops: float | None
    source: str = "datasheet"
    gpu: str = ""
    notes: str = ""


def _ds(gpu: str, gbs: float, bf16: float | None, fp16: float | None, tf32: float | None,
        fp32: float, notes: str = "") -> PeakRates:
    """A datasheet entry (all flops dense, i.e. half of NVIDIA's 'with sparsity' figures)."""
    return PeakRates(gbs, bf16, fp16, tf32, fp32, source="datasheet", gpu=gpu, notes=notes)


# Ordered (pattern, rates): the first regex that matches ``torch.cuda.get_device_name()``
# (case-insensitive) wins, so more specific variants come first. Word boundaries keep e.g.
# "L4" from matching "L40S" and "A10" from matching "A100"/"A10G".
# Names as torch reports them, e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
# "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe", "Tesla T4",
# "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090".
_DATASHEET: list[tuple[str, PeakRates]] = [
    # Hopper
    (r"\bH100\b.*\bNVL\b", _ds("H100 NVL 94GB", 3900, 835.5, 835.5, 417.5, 60,
                               "per GPU of the NVL pair (newer datasheet)")),
    (r"\bH100\b.*\bPCIe\b", _ds("H100 PCIe 80GB", 2000, 756, 756, 378, 51)),
    (r"\bH100\b", _ds("H100 SXM 80GB", 3350, 989, 989, 494, 67, "HBM3; 'H100 80GB HBM3'")),
    (r"\bH200\b.*\bNVL\b", _ds("H200 NVL 141GB", 4800, 835.5, 835.5, 417.5, 60)),
    (r"\bH200\b", _ds("H200 SXM 141GB", 4800, 989, 989, 494, 67)),
    # Ampere
    (r"\bA100\b.*80GB.*\bPCIe\b", _ds("A100 PCIe 80GB", 1935, 312, 312, 156, 19.5)),
    (r"\bA100\b.*80GB", _ds("A100 SXM 80GB", 2039, 312, 312, 156, 19.5)),
    (r"\bA100\b", _ds("A100 40GB", 1555, 312, 312, 156, 19.5, "SXM4 and PCIe 40GB")),
    (r"\bA10G\b", _ds("A10G", 600, 70, 70, 35, 31.2, "AWS variant of the A10")),
    (r"\bA10\b", _ds("A10", 600, 125, 125, 62.5, 31.2)),
    (r"RTX 3090\s*$", _ds("RTX 3090", 936, 71, 71, 35.6, 35.6, "tensor cores with fp32 accumulate")),
    # Ada Lovelace
    (r"\bL40S\b", _ds("L40S", 864, 362, 362, 183, 91.6)),
    (r"\bL4\b", _ds("L4", 300, 121, 121, 60, 30.3)),
    (r"RTX 4090\s*$", _ds("RTX 4090", 1008, 165, 165, 82.6, 82.6, "tensor cores with fp32 accumulate")),
    # Turing and Volta: no bf16, no tf32
    (r"\bT4\b", _ds("T4", 320, None, 65, None, 8.1)),
    (r"\bV100S\b", _ds("V100S PCIe", 1134, None, 130, None, 16.4)),
    (r"\bV100\b.*\bPCIe\b", _ds("V100 PCIe", 900, None, 112, None, 14)),
    (r"\bV100\b", _ds("V100 SXM2", 900, None, 125, None, 15.7)),
]

# Ceilings measured on the course's reference GPU (see benchmarks/core_gpu_check.py to redo them).
_MEASURED: list[tuple[str, PeakRates]] = [
    (r"\bH100\b.*80GB.*HBM3", PeakRates(
        bandwidth_gbs=2990.0,  # device-to-device copy, bytes read + written
        bf16_tflops=710.0,  # torch.matmul, bf16, 8192^3, random data
        fp16_tflops=None,
        tf32_tflops=None,
        fp32_tflops=None,
        source="measured on NVIDIA H100 80GB HBM3, 2026-11-23 (torch 2.11, triton 3.6)",
        gpu="H100 SXM 80GB",
        notes="bf16 8192^3 matmul: 710 TFLOP/s (another run saw 798); "
              "RMSNorm via torch.compile: 2840 GB/s",
    )),    # The H200 of the course's GPU machine (torch names it "NVIDIA H200"; the NVL variant is not this).
    (r"\bH200\b(?!.*\bNVL\b)", PeakRates(
        bandwidth_gbs=4250.0,  # device-to-device copy, bytes read + written (0.89 of the 4.8 TB/s datasheet)
        bf16_tflops=716.0,  # torch.matmul, bf16, 8192^3, random data (same die and clocks as the H100 SXM)
        fp16_tflops=None,
        tf32_tflops=None,
        fp32_tflops=None,
        source="measured on NVIDIA H200, 2026-12-01 (torch 2.11, triton 3.6)",
        gpu="H200 SXM 141GB",
        notes="ceilings of the issue-14 kernel benchmarks (benchmarks/ops); "
              "RMSNorm forward 16384x4096 bf16: effilab 3840 GB/s, Liger-Kernel 3890 GB/s",
    )),
]


def _lookup(table: list[tuple[str, PeakRates]], name: str) -> PeakRates | None:
    name = (name or "").strip()
    if not name:
        return None
    for pattern, rates in table:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return rates
    return None


def peak_rates(name: str) -> PeakRates | None:
    """Datasheet peaks for a GPU named like ``torch.cuda.get_device_name()``; ``None`` if unknown.

    >>> peak_rates("NVIDIA H100 80GB HBM3").bandwidth_gbs
    3350
    """
    return _lookup(_DATASHEET, name)


# The GPU class every speed threshold of the course is calibrated on (benchmarks/RESULTS.md).
CALIBRATION_GPU = "H200"


def gpu_class(name: str | None = None) -> str | None:
    """The GPU family speed thresholds are keyed by: the first word of the datasheet entry a GPU
    named like ``torch.cuda.get_device_name()`` matches ("H200", "H100", "A100", "L4", "T4", …).
    ``name`` None: this machine's GPU 0; ``None`` on a CPU or for a GPU the table does not know.

    >>> gpu_class("NVIDIA A100-SXM4-40GB"), gpu_class("Tesla T4")
    ('A100', 'T4')
    """
    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    rates = peak_rates(name)
    if not rates or not rates.gpu:
        return None
    words = rates.gpu.split()
    return " ".join(words[:2]) if words[0] == "RTX" else words[0]  # "RTX 4090", not "RTX"


def measured_rates(name: str) -> PeakRates | None:
    """Ceilings measured on the course's reference GPU, if ``name`` is that GPU; else ``None``."""
    return _lookup(_MEASURED, name)


_DTYPE_FIELD = {
    "bf16": "bf16_tflops", "bfloat16": "bf16_tflops",
    "fp16": "fp16_tflops", "float16": "fp16_tflops", "half": "fp16_tflops",
    "tf32": "tf32_tflops",
    "fp32": "fp32_tflops", "float32": "fp32_tflops", "float": "fp32_tflops",
}


def _flops_field(dtype: torch.dtype | str) -> str:
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPE_FIELD:
        raise ValueError(
            f"no peak throughput is tabulated for dtype {dtype!r}; use torch.bfloat16, "
            "torch.float16, torch.float32, or the string 'tf32' (fp32 matmuls on tensor cores)"
        )
    return _DTYPE_FIELD[key]


def flops_peak(rates: PeakRates | None, dtype: torch.dtype | str = torch.bfloat16) -> float | None:
    """The TFLOP/s entry of ``rates`` for ``dtype`` (``torch.bfloat16``, ..., or ``"tf32"``)."""
    field = _flops_field(dtype)  # validate even when rates is None
    return None if rates is None else getattr(rates, field)


# --------------------------------------------------------------------------------------------
# Device info
# --------------------------------------------------------------------------------------------
def has_cuda() -> bool:
    """True when torch sees at least one CUDA GPU."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # a broken driver install: treat as no GPU
        return False


def is_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda") if has_cuda() else torch.device("cpu")


def _triton_version() -> str | None:
    """Installed Triton version without importing it (``None`` when absent)."""
    for dist in ("triton", "pytorch-triton"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    mod = sys.modules.get("triton")
    return getattr(mod, "__version__", None) if mod is not None else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class DeviceInfo:
    """A description of one device (a CUDA GPU, or the CPU when there is none).

    Attributes:
        kind: ``"cuda"`` or ``"cpu"``.
        name: ``torch.cuda.get_device_name()`` or the CPU model.
        capability: CUDA compute capability ``(major, minor)``; ``None`` on CPU.
        bf16: hardware bf16 support (capability >= 8.0, Ampere and newer); False on CPU.
        fp8: hardware fp8 support (capability >= 8.9, Ada/Hopper and newer); False on CPU.
        memory_bytes: GPU memory (on CPU: the machine's RAM), bytes.
        sm_count: streaming multiprocessors; ``None`` on CPU.
        is_colab: running inside Google Colab.
        triton_interpreter: ``TRITON_INTERPRET=1`` (Triton kernels run on the CPU, slowly).
        torch_version, triton_version: versions (``triton_version`` is None if not installed).
        peak: datasheet peaks (:func:`peak_rates`), ``None`` for unknown GPUs and CPUs.
        measured: measured ceilings (:func:`measured_rates`), ``None`` except on the reference GPU.
        index: CUDA device index (``None`` on CPU).
        l2_bytes: L2 cache size in bytes when torch reports it.
        cpu_count: logical CPU cores of the machine.
    """

    kind: str
    name: str
    capability: tuple[int, int] | None
    bf16: bool
    fp8: bool
    memory_bytes: int | None
    sm_count: int | None
    is_colab: bool
    triton_interpreter: bool
    torch_version: str
    triton_version: str | None
    peak: PeakRates | None
    measured: PeakRates | None
    index: int | None = None
    l2_bytes: int | None = None
    cpu_count: int | None = None

    @property
    def device(self) -> torch.device:
        """The ``torch.device`` this describes."""
        return torch.device("cpu") if self.kind == "cpu" else torch.device("cuda", self.index or 0)

    def summary(self) -> str:
        """Several lines of human-readable text."""
        yn = {True: "yes", False: "no"}
        mem = _gib(self.memory_bytes)
        if self.kind == "cuda":
            cap = ".".join(map(str, self.capability)) if self.capability else "?"
            lines = [
                f"GPU {self.index}: {self.name} (compute capability {cap}, {self.sm_count} SMs, "
                f"{mem} memory)",
                f"  bf16: {yn[self.bf16]}   fp8: {yn[self.fp8]}   Colab: {yn[self.is_colab]}   "
                f"Triton interpreter: {yn[self.triton_interpreter]}",
            ]
        else:
            lines = [
                f"CPU: {self.name} ({self.cpu_count} cores, {mem} RAM); no CUDA GPU",
                f"  Colab: {yn[self.is_colab]}   Triton interpreter: {yn[self.triton_interpreter]}"
                + ("  (Triton kernels run on the CPU, slowly)" if self.triton_interpreter else ""),
            ]
        lines.append(f"  torch {self.torch_version}   triton {self.triton_version or 'not installed'}")
        if self.peak is not None:
            lines.append(f"  datasheet peaks ({self.peak.gpu}): " + _rates_text(self.peak))
        elif self.kind == "cuda":
            lines.append("  datasheet peaks: unknown GPU (fractions of peak will be None)")
        if self.measured is not None:
            lines.append(f"  measured ceilings: {_rates_text(self.measured)}")
            lines.append(f"    {self.measured.source}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.summary())}</pre>"


def _gib(n: int | None) -> str:
    return "? GiB" if n is None else f"{n / 2**30:.1f} GiB"


def _rates_text(r: PeakRates) -> str:
    parts = []
    if r.bandwidth_gbs is not None:
        parts.append(f"{r.bandwidth_gbs / 1000:.2f} TB/s")
    for label, value in (("bf16", r.bf16_tflops), ("fp16", r.fp16_tflops),
                         ("tf32", r.tf32_tflops), ("fp32", r.fp32_tflops)):
        if value is not None:
            parts.append(f"{label} {value:g} TFLOP/s")
    return ", ".join(parts)


_INFO_CACHE: dict[int | None, DeviceInfo] = {}


def info(index: int | None = None) -> DeviceInfo:
    """Describe CUDA device ``index`` (default: the current one), or the CPU when there is no GPU.

    Results are cached per index; ``info.cache_clear()`` forgets them.
    """
    common: dict[str, Any] = dict(
        is_colab=is_colab(),
        triton_interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1",
        torch_version=torch.__version__,
        triton_version=_triton_version(),
        cpu_count=os.cpu_count(),
    )
    if not has_cuda():
        if None not in _INFO_CACHE:
            _INFO_CACHE[None] = DeviceInfo(
                kind="cpu", name=_cpu_name(), capability=None, bf16=False, fp8=False,
                memory_bytes=_ram_bytes(), sm_count=None, peak=None, measured=None, **common,
            )
        return _INFO_CACHE[None]

    count = torch.cuda.device_count()
    idx = torch.cuda.current_device() if index is None else int(index)
    if not 0 <= idx < count:
        raise ValueError(f"no CUDA device {index}: this machine has {count} (indices 0..{count - 1})")
    if idx not in _INFO_CACHE:
        props = torch.cuda.get_device_properties(idx)
        cap = (int(props.major), int(props.minor))
        name = torch.cuda.get_device_name(idx)
        _INFO_CACHE[idx] = DeviceInfo(
            kind="cuda", name=name, capability=cap, bf16=cap >= (8, 0), fp8=cap >= (8, 9),
            memory_bytes=int(props.total_memory), sm_count=int(props.multi_processor_count),
            peak=peak_rates(name), measured=measured_rates(name), index=idx,
            l2_bytes=getattr(props, "L2_cache_size", None), **common,
        )
    return _INFO_CACHE[idx]


info.cache_clear = _INFO_CACHE.clear  # type: ignore[attr-defined]
_get_info = info  # alias: functions below take a parameter named ``info``


# --------------------------------------------------------------------------------------------
# Roofline fractions
# --------------------------------------------------------------------------------------------
def _frac(achieved: float | None, ceiling: float | None) -> float | None:
    if achieved is None or ceiling is None or ceiling <= 0:
        return None
    return achieved / ceiling


def roofline_fraction(
    achieved_gbs: float | None = None,
    achieved_tflops: float | None = None,
    dtype: torch.dtype | str = torch.bfloat16,
    info: DeviceInfo | None = None,
) -> dict[str, float | None]:
    """How close an achieved rate is to the ceilings of the device.

    Args:
        achieved_gbs: achieved memory bandwidth in GB/s (bytes read + written / time / 1e9).
        achieved_tflops: achieved throughput in TFLOP/s.
        dtype: the matmul format whose peak applies (``torch.bfloat16``, ``torch.float16``,
            ``torch.float32`` or ``"tf32"``).
        info: the device (default: :func:`info` of the current device).

    Returns:
        ``{"frac_bandwidth", "frac_measured_bandwidth", "frac_flops", "frac_measured_flops",
        "peak_gbs", "measured_gbs", "peak_tflops", "measured_tflops"}``; each ``None`` where the
        achieved rate was not given or the ceiling is unknown. Fractions of *measured* ceilings can
        exceed 1 (a better kernel, a cooler GPU).
    """
    dev = info if info is not None else _get_info()
    peak, meas = dev.peak, dev.measured
    peak_gbs = peak.bandwidth_gbs if peak else None
    meas_gbs = meas.bandwidth_gbs if meas else None
    peak_tf = flops_peak(peak, dtype)
    meas_tf = flops_peak(meas, dtype)
    return {
        "frac_bandwidth": _frac(achieved_gbs, peak_gbs),
        "frac_measured_bandwidth": _frac(achieved_gbs, meas_gbs),
        "frac_flops": _frac(achieved_tflops, peak_tf),
        "frac_measured_flops": _frac(achieved_tflops, meas_tf),
        "peak_gbs": peak_gbs,
        "measured_gbs": meas_gbs,
        "peak_tflops": peak_tf,
        "measured_tflops": meas_tf,
    }
