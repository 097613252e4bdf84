"""The decoder LM (GPT-2 and Llama/Qwen2 families), scalar heads, HuggingFace and GGUF weights, LoRA and compiled generation."""
from mindrlhf.nn.config import ModelConfig, available_presets
from mindrlhf.nn.gguf import gguf_to_hf_folder
from mindrlhf.nn.heads import ScalarHead
from mindrlhf.nn.lora import LoRAConfig, apply_lora, load_adapters, merge_lora, save_adapters
from mindrlhf.nn.model import CausalLM, positions_from_mask

__all__ = ["ModelConfig", "available_presets", "CausalLM", "ScalarHead", "positions_from_mask",
           "gguf_to_hf_folder", "LoRAConfig", "apply_lora", "merge_lora", "save_adapters",
           "load_adapters"]
