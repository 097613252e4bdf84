"""The decoder LM (GPT-2 and Llama/Qwen2 families), scalar heads, HuggingFace I/O and compiled generation."""
from mindrlhf.nn.config import ModelConfig, available_presets
from mindrlhf.nn.heads import ScalarHead
from mindrlhf.nn.model import CausalLM, positions_from_mask

__all__ = ["ModelConfig", "available_presets", "CausalLM", "ScalarHead", "positions_from_mask"]
