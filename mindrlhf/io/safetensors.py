"""safetensors files (HuggingFace's weight format): read to numpy float32, written atomically."""
from __future__ import annotations

import json
import struct
from typing import Optional

import numpy as np
from safetensors.numpy import save_file

from mindrlhf.io.atomic import atomic_write

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "BOOL": np.bool_}


def _header(f, path) -> dict:
    """The JSON header; a file too short, or whose header is not a JSON object, is a ValueError naming it."""
    head = f.read(8)
    size = f.seek(0, 2)
    (header_len,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
    if not 0 < header_len <= size - 8:
        raise ValueError(f"{path}: not a safetensors file ({size} bytes; empty, truncated or another format)")
    f.seek(8)
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as numpy float32 arrays (bf16 widened by hand: numpy has no bf16).
    A corrupt or truncated file is a ValueError naming it."""
    with open(path, "rb") as f:
        header = _header(f, path)
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > len(data):
            raise ValueError(f"{path}: truncated (tensor {name} ends at byte {end} of {len(data)})")
        raw = data[start:end]
        if info["dtype"] == "BF16":  # bf16 is the top half of an fp32
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _NP_DTYPES:
            arr = np.frombuffer(raw, _NP_DTYPES[info["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which mindrlhf cannot read")
        out[name] = arr.reshape(info["shape"]).astype(np.float32)
    return out


def safetensors_metadata(path) -> dict:
    """The file's ``__metadata__`` (str -> str; empty when it has none), without reading the tensors."""
    with open(path, "rb") as f:
        return dict(_header(f, path).get("__metadata__") or {})


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None) -> None:
    """{name: numpy array} to a safetensors file, atomically; ``metadata`` is str -> str."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
