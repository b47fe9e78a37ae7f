"""Models trained in the course. Currently one: a tiny byte-level GPT (:mod:`effilab.models.gpt`)."""
from .gpt import GPT, PRESETS, GPTConfig

__all__ = ["GPT", "GPTConfig", "PRESETS"]
