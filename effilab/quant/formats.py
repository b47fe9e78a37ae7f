"""The weight formats a user of quantized LLMs meets, in numbers: bytes per parameter and the
memory-bound time of a decode step.

Bytes per parameter count the codes and the per-group metadata (a 16-bit scale and, when the
format has one, a zero point) and nothing else. Sources: GPTQ (Frantar et al. 2022) as stored by
its common checkpoints (4-bit codes packed in int32, fp16 scales, 4-bit zeros, group 128); AWQ
(Lin et al. 2023, same storage, group 128); GGUF's ``Q4_K`` (llama.cpp: super-blocks of 256 weights
in 8 blocks of 32, 6-bit block scales and mins, fp16 super-block scale and min: 4.5 bits a weight)
and ``Q8_0`` (blocks of 32, one fp16 scale: 8.5 bits); bitsandbytes NF4 (Dettmers et al. 2023,
"QLoRA": blocks of 64, an fp32 absmax each, or 8-bit absmax with double quantization: 4.127 bits).
"""
from __future__ import annotations

__all__ = ["FORMATS", "bytes_per_param", "decode_time_us", "format_table"]

# name -> (bits per code, weights per group, metadata bits per group, where it is used)
FORMATS: dict[str, tuple[float, int, float, str]] = {
    "bf16 / fp16": (16, 1, 0, "the unquantized baseline"),
    "int8 per channel (LLM.int8-style weights)": (8, 4096, 16, "bitsandbytes 8-bit, W8A16 kernels"),
    "GGUF Q8_0": (8, 32, 16, "llama.cpp"),
    "GPTQ 4-bit g128 (scale fp16 + 4-bit zero)": (4, 128, 16 + 4, "AutoGPTQ / GPTQModel / exllama, vLLM Marlin"),
    "AWQ 4-bit g128 (scale fp16 + 4-bit zero)": (4, 128, 16 + 4, "AutoAWQ, vLLM, TensorRT-LLM"),
    "GGUF Q4_K (super-block 256)": (4, 256, 128, "llama.cpp"),
    "bitsandbytes NF4 (block 64, fp32 absmax)": (4, 64, 32, "QLoRA, transformers load_in_4bit"),
    "bitsandbytes NF4 + double quant": (4, 64, 8 + 32 / 256, "QLoRA with bnb_4bit_use_double_quant"),
    "GPTQ 3-bit g128": (3, 128, 16 + 3, "AutoGPTQ"),
}


def bytes_per_param(name: str) -> float:
    """Storage of one weight in bytes, metadata included."""
    if name not in FORMATS:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    bits, group, meta, _ = FORMATS[name]
    return (bits + meta / group) / 8


def decode_time_us(n_params: float, name: str, bandwidth_gbs: float) -> float:
    """The time one decode step needs just to read the weights once (memory bound), in µs."""
    if bandwidth_gbs <= 0:
        raise ValueError(f"bandwidth_gbs must be positive, got {bandwidth_gbs}")
    return n_params * bytes_per_param(name) / (bandwidth_gbs * 1e9) * 1e6


def format_table(n_params: float = 4096 * 4096, bandwidth_gbs: float = 4250.0) -> str:
    """A markdown table: format, bits per weight, bytes for ``n_params`` weights, read time at the bandwidth."""
    lines = ["| format | bits / weight | MiB for the matrix | read time | used by |", "|---|---|---|---|---|"]
    for name, (_, _, _, where) in FORMATS.items():
        b = bytes_per_param(name)
        lines.append(f"| {name} | {8 * b:.3f} | {n_params * b / 2**20:.2f} | "
                     f"{decode_time_us(n_params, name, bandwidth_gbs):.2f} µs | {where} |")
    return "\n".join(lines)
