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


def _header(f) -> dict:
    (header_len,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(header_len))


def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as numpy float32 arrays (bf16 widened by hand: numpy has no bf16)."""
    with open(path, "rb") as f:
        header = _header(f)
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
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
        return dict(_header(f).get("__metadata__") or {})


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None) -> None:
    """{name: numpy array} to a safetensors file, atomically; ``metadata`` is str -> str."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
