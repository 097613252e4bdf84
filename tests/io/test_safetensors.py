"""safetensors: written atomically with metadata, read back as float32 (bf16 widened exactly)."""
import json
import re
import struct

import numpy as np
import pytest

from mindrlhf.io import read_safetensors, safetensors_metadata, write_safetensors


def test_round_trip_with_metadata(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "h": np.array([1.5, -2.0], np.float16)}
    write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt", "note": "x"})
    back = read_safetensors(tmp_path / "m.safetensors")
    assert sorted(back) == ["h", "w"] and all(a.dtype == np.float32 for a in back.values())
    np.testing.assert_array_equal(back["w"], tensors["w"])
    np.testing.assert_array_equal(back["h"], tensors["h"].astype(np.float32))
    assert safetensors_metadata(tmp_path / "m.safetensors") == {"format": "pt", "note": "x"}
    write_safetensors(tmp_path / "plain.safetensors", {"w": tensors["w"]})
    assert safetensors_metadata(tmp_path / "plain.safetensors") == {}


def _write_raw(path, dtype: str, shape, raw: bytes):
    header = json.dumps({"t": {"dtype": dtype, "shape": list(shape), "data_offsets": [0, len(raw)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)


def test_bf16_is_the_top_half_of_a_float32(tmp_path):
    want = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    top = (want.view(np.uint32) >> 16).astype(np.uint16)  # truncation: these values keep their top half
    _write_raw(tmp_path / "b.safetensors", "BF16", (2, 2), top.tobytes())
    got = read_safetensors(tmp_path / "b.safetensors")["t"]
    np.testing.assert_array_equal(got, (top.astype(np.uint32) << 16).view(np.float32).reshape(2, 2))
    np.testing.assert_allclose(got.ravel()[:3], want[:3], rtol=0)  # exactly representable in bf16


def test_unknown_dtype_is_named(tmp_path):
    _write_raw(tmp_path / "c.safetensors", "F8_E4M3", (2,), b"\x00\x01")
    with pytest.raises(ValueError, match="tensor t has dtype F8_E4M3"):
        read_safetensors(tmp_path / "c.safetensors")


@pytest.mark.parametrize("content, message", [
    (b"", "not a safetensors file (0 bytes"),
    (bytes(range(100)), "not a safetensors file (100 bytes"),
    (struct.pack("<Q", 5) + b"[1,2]", "not a safetensors file (its header is not a JSON object)"),
])
def test_a_file_that_is_not_safetensors_is_named(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        read_safetensors(path)


def test_a_truncated_file_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": np.arange(1000, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=re.escape(f"{path}: truncated (tensor w ends at byte 4000 of")):
        read_safetensors(path)
