"""Batching: bucketed padding and batch layouts (hand-computed)."""
import numpy as np
import pytest

from mindrlhf.data.batching import bucket_length, pad_left, pad_right, ranking_batch, sft_batch
from mindrlhf.data.encoding import encode_demonstrations, encode_prompts, encode_rankings
from mindrlhf.data.formats import DataError, Demonstration, PromptRecord, Ranking, Records


def test_bucket_length():
    assert bucket_length(5, 8) == 8
    assert bucket_length(8, 8) == 8
    assert bucket_length(9, 8) == 16
    assert bucket_length(9, 8, max_length=12) == 12
    assert bucket_length(0, 4) == 4
    with pytest.raises(ValueError, match="does not fit max_length=12"):
        bucket_length(13, 8, max_length=12)


def test_pad_right_and_left():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    ids, mask = pad_left([[5, 6, 7], [8]], pad_id=9, multiple=4)
    np.testing.assert_array_equal(ids, [[9, 5, 6, 7], [9, 9, 9, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32


def test_sft_batch_token_aligned():
    batch = sft_batch([([2, 10, 11, 12, 3], [0, 0, 1, 1, 1]), ([2, 10, 3], [0, 1, 1])], pad_id=0, multiple=8)
    np.testing.assert_array_equal(batch["input_ids"], [[2, 10, 11, 12, 3, 0, 0, 0], [2, 10, 3, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]])
    # the shifted view a loss takes: predictions of tokens 11, 12, eos for row 0
    targets = batch["input_ids"][:, 1:][batch["loss_mask"][:, 1:] == 1]
    np.testing.assert_array_equal(targets, [11, 12, 3, 10, 3])


def test_ranking_batch_groups_and_k_mask():
    first = [([2, 5, 3], [0, 1, 1]), ([2, 6, 6, 3], [0, 1, 1, 1]), ([2, 7, 3], [0, 1, 1])]
    second = [([2, 8, 3], [0, 1, 1]), ([2, 9, 9, 9, 3], [0, 1, 1, 1, 1])]
    batch = ranking_batch([first, second], pad_id=0, multiple=4)
    assert batch["input_ids"].shape == (6, 8)
    np.testing.assert_array_equal(batch["k_mask"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(batch["input_ids"][3, :3], [2, 8, 3])  # row p*K + j: prompt 1, best
    np.testing.assert_array_equal(batch["input_ids"][5], batch["input_ids"][3])  # filler copies the first
    np.testing.assert_array_equal(batch["last_index"], [2, 3, 2, 2, 4, 2])
    assert ranking_batch([second], pad_id=0, k=4)["k_mask"].tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="has 3 responses but k=2"):
        ranking_batch([first], pad_id=0, k=2)


class CharTokenizer:
    """One id per character, bos=1, eos=2, user=3, assistant=4: lengths are easy to compute by hand."""
    pad_id, bos_id, eos_id = 0, 1, 2

    def encode(self, text):
        return [10 + ord(c) % 50 for c in text]

    def encode_prompt(self, prompt):
        return [1, 3] + self.encode(prompt) + [4]

    def encode_prompt_response(self, prompt, response):
        p, r = self.encode_prompt(prompt), self.encode(response) + [2]
        return p + r, [0] * len(p) + [1] * len(r)


def test_length_check_errors_or_skips():
    demos = Records([Demonstration("abc", "de", "f.jsonl:1"), Demonstration("abcdefgh", "ij", "f.jsonl:2")])
    # lengths: 3 + 3 + 3 = 9 and 3 + 8 + 3 = 14 tokens
    with pytest.raises(DataError, match=r"f\.jsonl:2: prompt\+response is 14 tokens, longer than data.max_length=10"):
        encode_demonstrations(demos, CharTokenizer(), max_length=10)
    kept = encode_demonstrations(demos, CharTokenizer(), max_length=10, skip_invalid=True)
    assert len(kept) == 1 and kept.skipped == 1 and kept[0].input_ids[:2] == [1, 3]
    assert len(encode_demonstrations(demos, CharTokenizer(), max_length=14)) == 2


def test_length_check_rankings_and_prompts():
    rankings = [Ranking("ab", ("c", "defghij"), "r.jsonl:4")]  # 5 + 2 and 5 + 8 tokens
    with pytest.raises(DataError, match=r"r\.jsonl:4: prompt\+response \(ranked 2 of 2\) is 13 tokens"):
        encode_rankings(rankings, CharTokenizer(), max_length=12)
    assert len(encode_rankings(rankings, CharTokenizer(), max_length=13)[0].sequences) == 2
    prompts = [PromptRecord("abcd", {"genre": "x"}, "p.jsonl:1"), PromptRecord("a", {}, "p.jsonl:2")]
    kept = encode_prompts(prompts, CharTokenizer(), max_prompt_length=4, skip_invalid=True)
    assert [p.input_ids for p in kept] == [[1, 3, 10 + ord("a") % 50, 4]] and kept.skipped == 1
    with pytest.raises(DataError, match="no prompts left after the length check"):
        encode_prompts(prompts, CharTokenizer(), max_prompt_length=3, skip_invalid=True)
