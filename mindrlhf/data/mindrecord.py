"""MindRecord export of the JSONL formats, and reading it back to the same records.

MindRecord has no list-of-strings column, and demonstrations may hold message lists, so each row stores
the record's canonical JSON object (``record``: string) plus the line it came from (``source``: string,
``file:line``), which keeps error messages pointing at the original file. Reading a ``.mindrecord`` path
goes through the same validation as JSONL, so the loaders accept either and return equal records.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Tuple

from mindrlhf.data.formats import LOADERS, DataError, to_json

SCHEMA = {"record": {"type": "string"}, "source": {"type": "string"}}


def export_mindrecord(jsonl_path: str, out_path: str, kind: str, skip_invalid: bool = False) -> int:
    """Validate ``jsonl_path`` as ``kind`` (demonstrations | rankings | prompts) and write ``out_path``
    (plus MindSpore's ``out_path.db`` index). Returns the number of records written; overwrites."""
    from mindspore.mindrecord import FileWriter

    if kind not in LOADERS:
        raise ValueError(f"export_mindrecord: kind {kind!r} is not one of {sorted(LOADERS)}")
    if not str(out_path).endswith(".mindrecord"):
        raise ValueError(f"export_mindrecord: out_path {out_path!r} should end in .mindrecord, which is how the "
                         "loaders recognise the format")
    records = LOADERS[kind](jsonl_path, skip_invalid=skip_invalid)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = FileWriter(str(out_path), shard_num=1, overwrite=True)
    writer.add_schema(SCHEMA, f"mindrlhf {kind}")
    writer.write_raw_data([{"record": json.dumps(to_json(r), ensure_ascii=False), "source": r.where}
                           for r in records])
    writer.commit()
    return len(records)


def iter_mindrecord(path: str) -> Iterator[Tuple[str, object]]:
    """Yield ``(source, parsed JSON)`` per row, in written order, like :func:`formats.iter_jsonl`."""
    from mindspore.mindrecord import FileReader

    if not os.path.isfile(path):
        raise FileNotFoundError(f"MindRecord file not found: {path}")
    reader = FileReader(str(path), num_consumer=1)  # one consumer keeps rows in written order
    try:
        for i, row in enumerate(reader.get_next()):
            source = _text(row.get("source")) or f"{path}:row {i}"
            try:
                yield source, json.loads(_text(row["record"]))
            except (KeyError, json.JSONDecodeError) as e:
                yield source, DataError(f"{path}: row {i} (from {source}) has no valid 'record' column ({e}); "
                                        "write the file with export_mindrecord")
    finally:
        reader.close()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else ("" if value is None else str(value))
