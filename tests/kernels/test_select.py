"""Which kernels run (runtime.kernels × device), what happens without a compiler, and the build cache: two
processes building into an empty cache at once both get the one complete library."""
import os
import shutil
import subprocess
import sys

import pytest

from mindrlhf import kernels, runtime
from mindrlhf.cli import describe_error
from mindrlhf.kernels import build, cpu, reference
from mindrlhf.runtime import RuntimeConfig

HAVE_GXX = shutil.which("g++") is not None


@pytest.fixture
def no_compiler(monkeypatch):
    """CXX names no compiler, and nothing is remembered from builds before (nor after) the test."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    build.library.cache_clear()
    kernels.resolve.cache_clear()
    yield
    build.library.cache_clear()
    kernels.resolve.cache_clear()


def test_reference_everywhere_and_gpu_falls_back():
    assert kernels.resolve("reference", "CPU") == "reference"
    assert kernels.resolve("reference", "Ascend") == "reference"
    assert kernels.resolve("auto", "Ascend") == "ascend"
    assert kernels.resolve("auto", "GPU") == "reference"
    with pytest.raises(kernels.KernelBuildError, match="no fused kernels for GPU"):
        kernels.resolve("fused", "GPU")
    with pytest.raises(ValueError, match="not one of reference, auto, fused"):
        kernels.resolve("fast", "CPU")


def test_reference_kernels_are_mindspore_compositions(monkeypatch):
    monkeypatch.setattr(runtime, "_CURRENT", runtime.Runtime(kernels="reference"))
    assert kernels.backend() == "reference"
    assert isinstance(kernels.rms_norm(8, 1e-6), reference.RMSNorm)
    assert isinstance(kernels.token_logprobs(), reference.TokenLogprobs)
    assert isinstance(kernels.sum_squares(), reference.SumSquares)


def test_runtime_config_checks_the_setting():
    RuntimeConfig(kernels="reference").validate()
    with pytest.raises(ValueError, match="kernels"):
        RuntimeConfig(kernels="fast").validate()


@pytest.mark.skipif(not HAVE_GXX, reason="no g++")
def test_the_default_builds_and_uses_the_fused_kernels_on_cpu(monkeypatch):
    assert RuntimeConfig().kernels == runtime.Runtime().kernels == "auto"
    monkeypatch.setattr(runtime, "_CURRENT", runtime.Runtime())
    assert kernels.backend() == "fused"
    assert kernels.resolve("auto", "CPU") == "fused"
    assert isinstance(kernels.rms_norm(8, 1e-6), cpu.RMSNorm)
    monkeypatch.setattr(runtime, "_CURRENT", runtime.Runtime(kernels="reference"))
    assert isinstance(kernels.rms_norm(8, 1e-6), reference.RMSNorm)
    assert isinstance(kernels.token_logprobs(), reference.TokenLogprobs)


def test_without_a_compiler_auto_says_so_once_and_fused_stops(no_compiler, capsys):
    assert kernels.resolve("auto", "CPU") == "reference"
    assert kernels.resolve("auto", "CPU") == "reference"
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "/nonexistent/g++" in printed[0] and "reference kernels" in printed[0]
    with pytest.raises(kernels.KernelBuildError) as err:
        kernels.resolve("fused", "CPU")
    line = describe_error(err.value)  # what `mindrlhf` prints: an OSError becomes one line
    assert isinstance(err.value, OSError)
    assert line.startswith("runtime.kernels=fused: no C++ compiler") and "runtime.kernels=auto or reference" in line


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(build.THREADS_ENV, "3")
    assert build.kernel_threads() == 3
    monkeypatch.setenv(build.THREADS_ENV, "0")
    with pytest.raises(kernels.KernelBuildError, match="positive number"):
        build.kernel_threads()
    monkeypatch.delenv(build.THREADS_ENV)
    assert build.kernel_threads() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(not HAVE_GXX, reason="no g++")
def test_two_processes_build_one_library_into_an_empty_cache(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    code = "from mindrlhf.kernels import build; print(build.library())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    path = paths.pop()
    assert path.startswith(str(tmp_path / "mindrlhf" / "kernels")) and path.endswith(build.LIBRARY)
    assert os.listdir(os.path.dirname(path)) == [build.LIBRARY]  # no temporary file left behind
    # a third process finds it and does not build again
    before = os.stat(path).st_mtime_ns
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == path and os.stat(path).st_mtime_ns == before
