"""Pipeline stages in child processes (``stage_processes``): the work happens elsewhere, results and
errors come back to the caller as if the stage had run in-process."""
import os

import pytest

from mindrlhf.pipeline import _call


def test_an_isolated_stage_runs_in_another_process_and_returns_its_result():
    assert _call(False, os.getpid) == os.getpid()
    assert _call(True, os.getpid) != os.getpid()
    assert _call(True, divmod, 17, 5) == (3, 2)


def test_an_isolated_stage_raises_its_error_in_the_caller():
    with pytest.raises(ValueError, match="invalid literal"):
        _call(True, int, "seventeen")
