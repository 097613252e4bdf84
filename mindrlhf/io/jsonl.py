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
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
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
