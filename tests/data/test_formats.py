"""JSONL formats: loading, normalisation, and error messages that name file, line and field."""
import json

import pytest

from mindrlhf.data.formats import (DataError, Demonstration, PromptRecord, Ranking, load_demonstrations,
                                   load_prompts, load_rankings, to_json)
from mindrlhf.io import write_jsonl


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
                    encoding="utf-8")
    return str(path)


def test_demonstrations_both_forms(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [
        {"prompt": "Any good comedies?", "response": "Try X."},
        "",  # blank lines are ignored
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "A comedy?"},
                      {"role": "assistant", "content": "Try Y."}]},
    ])
    demos = load_demonstrations(path)
    assert demos == [Demonstration("Any good comedies?", "Try X."),
                     Demonstration([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": "Hello"},
                                    {"role": "user", "content": "A comedy?"}], "Try Y.")]
    assert demos[1].where == f"{path}:3"
    assert demos.skipped == 0


def test_rankings_normalised_best_first(tmp_path):
    path = write_lines(tmp_path / "rm.jsonl", [
        {"prompt": "p", "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1]},
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
    ])
    rankings = load_rankings(path)
    assert rankings == [Ranking("p", ("r2", "r0", "r1")), Ranking("q", ("good", "bad"))]
    assert rankings[0].chosen == "r2" and rankings[0].rejected == "r1"


def test_prompts_keep_extra_keys(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "Any thrillers?", "genre": "thriller", "seen": None}])
    assert load_prompts(path) == [PromptRecord("Any thrillers?", {"genre": "thriller", "seen": None})]


@pytest.mark.parametrize("line, loader, expected", [
    ('{"prompt": "p", "response": ', load_demonstrations, "not valid JSON"),
    ({"prompt": "p"}, load_demonstrations, "field 'response' is missing"),
    ({"prompt": "p", "response": "  "}, load_demonstrations, "field 'response' is empty"),
    ({"prompt": 3, "response": "r"}, load_demonstrations, "field 'prompt': expected a string, got int"),
    ({"messages": [{"role": "user", "content": "hi"}]}, load_demonstrations, "last turn is 'user'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, load_demonstrations, "'messages[0].role': 'bot' is not one of"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, load_demonstrations,
     "field 'messages[1].content' is empty"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}, load_rankings,
     "field 'ranking': [0, 0, 2] is not a permutation of 0..2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1, 2]}, load_rankings, "not a permutation of 0..1"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, load_rankings, "a ranking needs K >= 2"),
    ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, load_rankings, "field 'responses[1]'"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, load_rankings, "field 'rejected' is empty"),
    ({"prompt": "p", "responses": ["a", "b"]}, load_rankings, "field 'ranking' is missing"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, load_rankings, "'chosen' and 'rejected' are the same"),
    ({"prompt": "p", "responses": ["a", "a", "a"], "ranking": [2, 0, 1]}, load_rankings,
     "all 3 responses are the same text"),
    (["not", "an", "object"], load_prompts, "expected a JSON object, got list"),
    ({"text": "p"}, load_prompts, "field 'prompt' is missing"),
])
def test_errors_name_file_line_and_field(tmp_path, line, loader, expected):
    good = {"prompt": "p", "response": "r", "responses": ["a", "b"], "ranking": [1, 0]}
    path = write_lines(tmp_path / "data.jsonl", [good, line])
    with pytest.raises(DataError) as e:
        loader(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert expected in str(e.value)


def test_ranking_error_message_exact(tmp_path):
    path = write_lines(tmp_path / "rm.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}])
    with pytest.raises(DataError, match=r"rm\.jsonl:1: field 'ranking': \[0, 0, 2\] is not a permutation of 0\.\.2"):
        load_rankings(path)


def test_skip_invalid_counts_and_keeps_reasons(tmp_path):
    lines = [{"prompt": "ok", "response": "fine"}] + [{"prompt": f"bad{i}"} for i in range(7)] + ["{oops"]
    path = write_lines(tmp_path / "sft.jsonl", lines)
    demos = load_demonstrations(path, skip_invalid=True)
    assert len(demos) == 1 and demos[0].prompt == "ok"
    assert demos.skipped == 8
    assert len(demos.skip_reasons) == 5  # only the first few are kept for the log
    assert demos.skip_reasons[0].startswith(f"{path}:2: field 'response' is missing")


def test_no_valid_records_is_an_error(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": ""}])
    with pytest.raises(DataError, match=r"no valid prompt records \(1 invalid lines skipped"):
        load_prompts(path, skip_invalid=True)


def test_records_round_trip_through_to_json(tmp_path):
    records = [Ranking("p", ("best", "mid", "worst")), Ranking("q", ("a", "b"))]
    write_jsonl(tmp_path / "out.jsonl", map(to_json, records))
    assert load_rankings(str(tmp_path / "out.jsonl")) == records
    demos = [Demonstration("p", "r"), Demonstration([{"role": "user", "content": "u"}], "a\n b")]
    write_jsonl(tmp_path / "d.jsonl", map(to_json, demos))
    assert load_demonstrations(str(tmp_path / "d.jsonl")) == demos
    prompts = [PromptRecord("p", {"genre": "comedy", "seen": None})]
    write_jsonl(tmp_path / "p.jsonl", map(to_json, prompts))
    assert load_prompts(str(tmp_path / "p.jsonl")) == prompts


def test_a_line_that_is_not_json_is_a_data_error(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "ok"}, "{oops"])
    with pytest.raises(DataError, match=r"p\.jsonl:2: not valid JSON \(.* at column 2\); expected one JSON object"):
        load_prompts(path)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Any comedies?"}).encode() + b"\n")
    assert load_prompts(str(path)) == [PromptRecord("Any comedies?")]


def test_bytes_that_are_not_utf8_name_file_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "ok"}).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_prompts(str(path))
    kept = load_prompts(str(path), skip_invalid=True)
    assert [r.prompt for r in kept] == ["ok"] and kept.skipped == 1


def test_identical_answers_can_be_skipped_and_are_counted(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                   {"prompt": "q", "chosen": "c", "rejected": "c"}])
    kept = load_rankings(path, skip_invalid=True)
    assert len(kept) == 1 and kept.skipped == 1 and "same text" in kept.skip_reasons[0]


def test_a_folder_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: is a folder; expected a prompt JSONL file"):
        load_prompts(str(tmp_path))
