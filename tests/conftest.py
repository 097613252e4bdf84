"""Shared test set-up: MindSpore on CPU in graph mode, hub access off, and the `slow` marker."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only

import mindspore as ms  # noqa: E402
import pytest  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (minutes); CI runs them too")


@pytest.fixture(autouse=True)
def _graph_mode_by_default():
    """Tests that switch to PyNative get graph mode back afterwards."""
    yield
    ms.set_context(mode=ms.GRAPH_MODE)
