"""MindRecord export reads back to the same records as the JSONL it came from."""
import json

import pytest

from mindrlhf.data.formats import DataError, export_mindrecord, load_demonstrations, load_prompts, load_rankings

ROWS = {
    "demonstrations": [{"prompt": "Any comedies?", "response": "Try \"X\" (1994).\n  Two spaces."},
                       {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ünï 🎉"},
                                     {"role": "assistant", "content": "Ok."}]}],
    "rankings": [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2, 0]},
                 {"prompt": "q", "chosen": "yes", "rejected": "no"}],
    "prompts": [{"prompt": "Any thrillers?", "genre": "thriller", "seen": None}, {"prompt": "More?"}],
}
LOADERS = {"demonstrations": load_demonstrations, "rankings": load_rankings, "prompts": load_prompts}


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_round_trip(tmp_path, kind):
    jsonl = tmp_path / f"{kind}.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS[kind] * 3) + "\n", encoding="utf-8")
    out = tmp_path / "mr" / f"{kind}.mindrecord"
    assert export_mindrecord(str(jsonl), str(out), kind) == 6
    original, read_back = LOADERS[kind](str(jsonl)), LOADERS[kind](str(out))
    assert read_back == original
    assert [r.where for r in read_back] == [r.where for r in original]  # errors still point at the JSONL lines


def test_export_validates_first(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1: field 'ranking'"):
        export_mindrecord(str(jsonl), str(tmp_path / "x.mindrecord"), "rankings")
    with pytest.raises(ValueError, match="kind 'ranks' is not one of"):
        export_mindrecord(str(jsonl), str(tmp_path / "x.mindrecord"), "ranks")
