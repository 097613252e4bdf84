"""nn.graph: the C heap's free pages go back to the OS (glibc), and a GraphCell runs as the Cell it extends."""
import ctypes
import ctypes.util
import platform

import numpy as np
import pytest
import mindspore as ms
from mindspore import ops

from mindrlhf.nn.graph import GraphCell, release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or "glibc" not in " ".join(platform.libc_ver()),
                    reason="malloc_trim is glibc's")
def test_release_returns_freed_heap_pages():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunk, count = 64 * 1024, 3200  # 200 MB in chunks below glibc's mmap threshold: they come from the heap
    blocks = [libc.malloc(chunk) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, chunk)  # touched: resident
    for b in blocks[:-1]:  # the last one pins the top of the heap, so free() alone cannot shrink it
        libc.free(b)
    before = _rss_mb()
    assert release_free_memory()
    after = _rss_mb()
    libc.free(blocks[-1])
    assert before - after > 100, (before, after)


class _Double(GraphCell):
    def construct(self, x):
        return ops.mul(x, 2.0)


def test_graph_cell_compiles_once_per_input_shape_and_computes():
    cell = _Double()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(cell(ms.Tensor(x)).asnumpy(), 2 * x)
    np.testing.assert_array_equal(cell(ms.Tensor(x + 1)).asnumpy(), 2 * (x + 1))
    assert len(cell.compile_cache) == 1
    cell(ms.Tensor(np.ones((4, 3), np.float32)))
    assert len(cell.compile_cache) == 2
