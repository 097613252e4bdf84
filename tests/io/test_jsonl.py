"""JSON lines: every value round-trips, a bad line is reported in place, a failed write changes nothing."""
import pytest

from mindrlhf.io import JSONLineError, iter_jsonl, write_jsonl


def test_round_trip_skips_blank_lines_and_names_each_line(tmp_path):
    path = tmp_path / "v.jsonl"
    values = [{"prompt": "ünï 🎉", "meta": [1, None]}, [1, 2], "text", 3.5]
    assert write_jsonl(path, iter(values)) == 4
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"prompt": "ünï 🎉", "meta": [1, null]}'
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n7\n", encoding="utf-8")
    rows = list(iter_jsonl(path))
    assert [v for _, v in rows] == values + [7]
    assert [w for w, _ in rows] == [f"{path}:{i}" for i in (1, 2, 3, 4, 7)]


def test_a_bad_line_is_yielded_as_an_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{oops\n{"b": 2}\n', encoding="utf-8")
    rows = list(iter_jsonl(path))
    assert rows[0] == (f"{path}:1", {"a": 1}) and rows[2] == (f"{path}:3", {"b": 2})
    where, err = rows[1]
    assert where == f"{path}:2" and isinstance(err, JSONLineError)
    assert str(err).startswith(f"{path}:2: not valid JSON (") and "at column 2" in str(err)


def test_failing_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"prompt": "old"}])

    def values():
        yield {"prompt": "new"}
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        write_jsonl(path, values())
    assert path.read_text(encoding="utf-8") == '{"prompt": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left behind
