"""Build the CPU kernel library from the C++ sources shipped in ``kernels/csrc`` on first use.

The library goes into a per-user cache, one folder per build:
``$XDG_CACHE_HOME/mindrlhf/kernels/<hash>/libmindrlhf_kernels.so`` (``~/.cache`` without XDG_CACHE_HOME),
the hash taken over the sources, the compiler command, the compiler's version and the CPU's feature flags
(the code is compiled for this CPU, ``-march=native``). A build writes a temporary file in that folder and
renames it into place, so two processes building at once both end with the same complete library.

The kernels run on ``MINDRLHF_KERNEL_THREADS`` threads when that is set, else on the CPUs this process may
use (its affinity mask).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile

SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
LIBRARY = "libmindrlhf_kernels.so"
# -fopenmp-simd: `#pragma omp simd` only (vectorised reductions), no OpenMP runtime; no -ffast-math, so
# results follow IEEE float32 except where a kernel says otherwise (its own exp).
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-std=c++17",
         "-shared", "-fPIC", "-pthread")
THREADS_ENV = "MINDRLHF_KERNEL_THREADS"


class KernelBuildError(OSError):
    """The CPU kernel library could not be built or loaded; the message says why (an OSError: the machine
    lacks something, and the command line prints it as one line)."""


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mindrlhf", "kernels")


def _sources() -> list:
    return sorted(os.path.join(SOURCES, n) for n in os.listdir(SOURCES) if n.endswith((".cc", ".h")))


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def build_hash(cxx: str) -> str:
    """Hash of everything that makes the library: sources, command, compiler version, CPU features."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"no C++ compiler: `{cxx} --version` failed ({e}); set CXX to one") from None
    h = hashlib.sha256()
    for path in _sources():
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(fh.read())
    for part in (" ".join(FLAGS), version, platform.machine(), _cpu_flags()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _compile(cxx: str, target: str) -> None:
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
    os.close(fd)
    cmd = [cxx, *FLAGS, "-o", tmp, *[p for p in _sources() if p.endswith(".cc")]]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
            raise KernelBuildError(f"`{' '.join(cmd)}` failed: {first}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a concurrent build replaces it with the same bytes
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"building the CPU kernels with {cxx} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def kernel_threads() -> int:
    """Threads the kernels use: MINDRLHF_KERNEL_THREADS, else the CPUs in this process's affinity mask."""
    value = os.environ.get(THREADS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise KernelBuildError(f"{THREADS_ENV}={value!r}: expected a positive number of threads")
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.lru_cache(maxsize=None)
def library() -> str:
    """Path of the built library (building it when the cache lacks it), loaded once to set its thread count.

    Raises KernelBuildError with the reason when there is no compiler or the build fails."""
    if platform.system() != "Linux":
        raise KernelBuildError(f"the CPU kernels are built for Linux only, not {platform.system()}")
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise KernelBuildError(f"no C++ compiler: `{cxx}` is not on PATH (install g++, or set CXX)")
    target = os.path.join(cache_root(), build_hash(cxx), LIBRARY)
    if not os.path.isfile(target):
        print(f"[kernels] building the CPU kernels into {os.path.dirname(target)} (once)", file=sys.stderr)
        _compile(cxx, target)
    try:
        # MindSpore's Custom op opens this same file, so this handle is the library its kernels run in
        ctypes.CDLL(target).mindrlhf_set_threads(kernel_threads())
    except (OSError, AttributeError) as e:
        raise KernelBuildError(f"loading {target} failed: {e}") from None
    return target
