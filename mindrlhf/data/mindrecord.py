"""MindRecord files of JSON records: the binary twin of a JSONL file, read back row by row.

MindRecord has no list-of-strings column, and demonstrations may hold message lists, so each row stores
a record's JSON object (``record``: string) plus the line it came from (``source``: string,
``file:line``), which keeps error messages pointing at the original file. Validation is the loaders' job
(:mod:`mindrlhf.data.formats`), so a ``.mindrecord`` path and its JSONL source give equal records.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Sequence, Tuple

SCHEMA = {"record": {"type": "string"}, "source": {"type": "string"}}


def write_mindrecord(out_path: str, rows: Sequence[Tuple[str, dict]], description: str) -> int:
    """Write ``(source, JSON object)`` rows to ``out_path`` (plus MindSpore's ``out_path.db`` index), in
    order; overwrites. Returns the number of rows."""
    from mindspore.mindrecord import FileWriter  # MindSpore takes seconds to import: only when asked for

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = FileWriter(str(out_path), shard_num=1, overwrite=True)
    writer.add_schema(SCHEMA, description)
    writer.write_raw_data([{"record": json.dumps(obj, ensure_ascii=False), "source": source} for source, obj in rows])
    writer.commit()
    return len(rows)


def iter_mindrecord(path: str) -> Iterator[Tuple[str, object]]:
    """Yield ``(source, parsed JSON)`` per row, in written order, like :func:`mindrlhf.io.iter_jsonl`; a row
    without a valid ``record`` column yields a ValueError in place of its value."""
    from mindspore.mindrecord import FileReader  # MindSpore takes seconds to import: only when asked for

    if not os.path.isfile(path):
        raise FileNotFoundError(f"MindRecord file not found: {path}")
    reader = FileReader(str(path), num_consumer=1)  # one consumer keeps rows in written order
    try:
        for i, row in enumerate(reader.get_next()):
            source = _text(row.get("source")) or f"{path}:row {i}"
            try:
                yield source, json.loads(_text(row["record"]))
            except (KeyError, json.JSONDecodeError) as e:
                yield source, ValueError(f"{path}: row {i} (from {source}) has no valid 'record' column ({e}); "
                                         "write the file with export_mindrecord")
    finally:
        reader.close()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else ("" if value is None else str(value))
