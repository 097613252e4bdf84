"""The I/O floor: files written atomically, JSON lines, safetensors and GGUF files read and written.

Nothing here imports from the rest of mindrlhf, so every layer above may use it. GGUF reading lives in
:mod:`mindrlhf.io.gguf` (it needs the optional ``gguf`` package).
"""
from mindrlhf.io.atomic import atomic_write, atomic_write_text
from mindrlhf.io.jsonl import JSONLineError, iter_jsonl, write_jsonl
from mindrlhf.io.safetensors import read_safetensors, safetensors_metadata, write_safetensors

__all__ = ["atomic_write", "atomic_write_text", "JSONLineError", "iter_jsonl", "write_jsonl", "read_safetensors",
           "safetensors_metadata", "write_safetensors"]
