"""Weight-only quantization for notebook 07: the course model it quantizes and the helpers around it.

* :mod:`effilab.quant.model` — the small course GPT (shipped checkpoint, held-out and calibration
  text), :func:`perplexity`, and :func:`linear_inputs` (the calibration activations of any layer);
* :mod:`effilab.quant.formats` — bytes per parameter of the weight formats a user meets (GPTQ, AWQ,
  GGUF, bitsandbytes 4-bit) and the memory-bound model of a W4A16 decode step;
* ``effilab.quant.reference`` (instructor edition only) — the reference RTN, int4 packing, GPTQ and
  AWQ the graders compare with; ``effilab.ops.w4a16`` (instructor edition only) — the W4A16 kernel.
"""
from __future__ import annotations

from .formats import FORMATS, bytes_per_param, decode_time_us, format_table
from .model import (CHECKPOINT, CONFIG, course_texts, linear_inputs, linear_names, load_course_model, perplexity,
                    windows)

__all__ = ["CONFIG", "CHECKPOINT", "load_course_model", "course_texts", "windows", "perplexity", "linear_names",
           "linear_inputs", "FORMATS", "bytes_per_param", "decode_time_us", "format_table"]
