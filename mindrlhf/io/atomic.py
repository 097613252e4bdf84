"""Atomic file writes: readers (and a run resumed after a crash) see the old file or the new one, never half."""
from __future__ import annotations

import os
import secrets
from typing import Callable


def _new_temp(folder: str, name: str) -> str:
    """Create an empty file beside the target, with the mode a plain ``open(path, "w")`` would give it
    (0o666 less the umask; ``tempfile.mkstemp`` would make it 0o600)."""
    while True:
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(4)}-{name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def atomic_write(path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then ``os.replace(tmp_path, path)``. The temporary file sits
    beside ``path`` (same filesystem) and ends with its name (writers that add a missing suffix keep it);
    on any error it is removed and an existing ``path`` is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _new_temp(folder, os.path.basename(path))
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text: str) -> None:
    """``text`` to ``path`` as UTF-8, atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    atomic_write(path, write)
