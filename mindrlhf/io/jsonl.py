"""JSON lines: one JSON value per line, blank lines ignored. What the values mean is for the caller."""
from __future__ import annotations

import json
from typing import Iterable, Iterator, Tuple

from mindrlhf.io.atomic import atomic_write


class JSONLineError(ValueError):
    """A line that is not valid JSON; the message names ``file:line`` and the column."""


def iter_jsonl(path) -> Iterator[Tuple[str, object]]:
    """Yield ``("file:line", value)`` for each non-blank line. A line that is not valid JSON yields a
    :class:`JSONLineError` in place of its value, so a reader may skip it and go on, or raise it."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:  # a UTF-8 byte-order mark (files saved on Windows) is allowed on the first line
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield where, JSONLineError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                           f"{e.start + 1}); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, JSONLineError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                                           "expected one JSON object per line")


def write_jsonl(path, values: Iterable) -> int:
    """Write JSON-serialisable values one per line (UTF-8, non-ASCII kept), atomically: a failure half-way
    leaves an existing file as it was. Returns how many lines were written."""
    n = 0

    def write(tmp):
        nonlocal n
        with open(tmp, "w", encoding="utf-8") as f:
            for value in values:
                f.write(json.dumps(value, ensure_ascii=False) + "\n")
                n += 1
    atomic_write(path, write)
    return n
