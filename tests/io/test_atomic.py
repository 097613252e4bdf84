"""Atomic writes: the old file or the new one, never half of one, with a normal file's permissions."""
import os
import stat

import pytest

from mindrlhf.io import atomic_write, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_gets_the_mode_of_a_plain_write(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o644


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "private.txt").st_mode) == 0o600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "old\n")  # creates the missing folder

    def broken(tmp):
        assert os.path.basename(tmp).endswith("out.txt")  # writers that add a missing suffix keep the name
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old\n"
    assert os.listdir(path.parent) == ["out.txt"]
    atomic_write_text(path, "new ünï\n")
    assert path.read_text(encoding="utf-8") == "new ünï\n"
    assert os.listdir(path.parent) == ["out.txt"]
