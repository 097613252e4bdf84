"""The base of every Cell that runs as one compiled graph of its own (train steps, scoring passes, the decode
loop): once a call has compiled a new graph, the C heap's free pages go back to the operating system before
the graph first runs.

Compiling a graph allocates and frees a lot through ``malloc`` (on a SmolLM2 PPO step, about a third of the
memory its compilation took), and glibc keeps freed pages for later ``malloc`` calls. MindSpore's CPU memory
pool does not take its blocks from there, so without the release a graph's first run adds its working memory
on top of the compiler's leftovers (docs/performance.md, "PPO memory").
"""
import ctypes
import ctypes.util
import functools

from mindspore import nn


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or None), "malloc_trim", None)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class GraphCell(nn.Cell):
    """A Cell called as a compiled graph of its own: after a call that compiles a new graph (graph mode; a
    new input shape compiles another), :func:`release_free_memory` runs before the graph does."""

    def compile(self, *args, **kwargs):
        known = len(self.compile_cache)
        super().compile(*args, **kwargs)
        if len(self.compile_cache) != known:
            release_free_memory()
