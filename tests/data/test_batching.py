"""Batching: bucketed padding, batch layouts, sharding, and the resumable epoch iterator (hand-computed)."""
import json

import numpy as np
import pytest

from mindrlhf.data.batching import (EpochIterator, bucket_length, pad_left, pad_right, prompt_batch, ranking_batch,
                                    sft_batch, shard)
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


def test_prompt_batch_positions():
    batch = prompt_batch([[2, 5, 6], [2, 7]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(batch["input_ids"], [[0, 2, 5, 6], [0, 0, 2, 7]])
    np.testing.assert_array_equal(batch["attention_mask"], [[0, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(batch["position_ids"], [[0, 0, 1, 2], [0, 0, 0, 1]])


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


def test_shard_disjoint_equal_and_deterministic():
    records = list(range(11))
    parts = [shard(records, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # the 11 % 3 = 2 tail records are dropped
    assert shard(records, 1, 3) == parts[1]
    with pytest.raises(ValueError, match="rank 3 is not in 0..2"):
        shard(records, 3, 3)


def test_epoch_iterator_permutations_and_ranks():
    n, batch, world = 20, 3, 2
    iters = [EpochIterator(n, batch, seed=7, rank=r, world_size=world) for r in range(world)]
    assert iters[0].batches_per_epoch == 3  # 10 per rank -> 3 full batches of 3
    epoch0 = [np.concatenate([next(it) for _ in range(3)]) for it in iters]
    assert not set(epoch0[0]) & set(epoch0[1])  # ranks see disjoint records in an epoch
    both = np.concatenate(epoch0)
    assert len(set(both)) == 18 and set(both) <= set(range(n))
    epoch1 = np.concatenate([next(iters[0]) for _ in range(3)])
    assert iters[0].epoch == 1 and not np.array_equal(epoch1, epoch0[0])  # reshuffled
    again = EpochIterator(n, batch, seed=7, rank=0, world_size=world)
    np.testing.assert_array_equal(np.concatenate([next(again) for _ in range(3)]), epoch0[0])


def test_epoch_iterator_resume_matches_uninterrupted():
    straight = EpochIterator(10, 4, seed=3)
    expected = [next(straight).tolist() for _ in range(7)]
    first = EpochIterator(10, 4, seed=3)
    got = [next(first).tolist() for _ in range(3)]  # stop in the middle of epoch 1
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = EpochIterator(10, 4, seed=99)  # the saved state wins over the constructor's seed
    resumed.load_state_dict(state)
    got += [next(resumed).tolist() for _ in range(4)]
    assert got == expected
    with pytest.raises(ValueError, match="covered 10 records"):
        EpochIterator(12, 4, seed=3).load_state_dict(state)


def test_epoch_iterator_too_few_records():
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        EpochIterator(7, 4, seed=0, world_size=2)


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
    with pytest.raises(DataError, match=r"f\.jsonl:2: prompt\+response is 14 tokens, longer than max_length=10"):
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
