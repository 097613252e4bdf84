"""K-way rankings → preference pairs (all C(K,2), or best against each), and the pair batch's row layout."""
import numpy as np
import pytest

from mindrlhf.data.encoding import EncodedRanking, EncodedSequence
from mindrlhf.data.pairs import pair_batch, pair_indices, rankings_to_pairs


def ranking(*responses, prompt=(1, 7)):
    """Token-id rankings: prompt ids then response ids; loss mask on the response."""
    seqs = tuple(EncodedSequence(list(prompt) + list(r), [0] * len(prompt) + [1] * len(r)) for r in responses)
    return EncodedRanking(seqs, where="f:1")


def test_pair_indices_all_and_best():
    assert pair_indices(4, "all") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert pair_indices(4, "best") == [(0, 1), (0, 2), (0, 3)]
    assert pair_indices(2, "all") == pair_indices(2, "best") == [(0, 1)]
    with pytest.raises(ValueError, match="unknown pair mode 'worst'; expected one of all, best"):
        pair_indices(3, "worst")


@pytest.mark.parametrize("mode, expected", [
    ("all", [(0, 1), (0, 2), (1, 2), (3, 4)]),
    ("best", [(0, 1), (0, 2), (3, 4)]),
])
def test_rankings_give_pairs_indexing_one_sequence_table(mode, expected):
    rankings = [ranking([10, 2], [11, 2], [12, 2]), ranking([20, 2], [21, 2])]  # K = 3, then a chosen/rejected line
    sequences, pairs, identical = rankings_to_pairs(rankings, mode, first_id=100)
    assert len(sequences) == 5 and identical == 0
    assert [(p.chosen_id - 100, p.rejected_id - 100) for p in pairs] == expected
    for p in pairs:  # the ids point at the pair's own sequences, better first
        assert sequences[p.chosen_id - 100] is p.chosen and sequences[p.rejected_id - 100] is p.rejected
        assert p.where == "f:1"


def test_pairs_of_identical_answers_are_left_out_and_counted():
    sequences, pairs, identical = rankings_to_pairs([ranking([10, 2], [10, 2], [12, 2])], "all")
    assert identical == 1 and len(sequences) == 3
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [(0, 2), (1, 2)]


def test_pair_batch_stacks_chosen_and_rejected_rows():
    _, pairs, _ = rankings_to_pairs([ranking([10, 11, 2], [12, 2]), ranking([20, 2], [21, 22, 23, 2])], "all")
    b = pair_batch(pairs, pad_id=0, multiple=4)
    assert b["input_ids"].shape == (4, 8)  # 2 pairs × (chosen, rejected); longest 6 tokens → bucket 8
    np.testing.assert_array_equal(b["input_ids"][:, :6], [[1, 7, 10, 11, 2, 0], [1, 7, 12, 2, 0, 0],
                                                          [1, 7, 20, 2, 0, 0], [1, 7, 21, 22, 23, 2]])
    np.testing.assert_array_equal(b["loss_mask"].sum(1), [3, 2, 2, 4])
    np.testing.assert_array_equal(b["attention_mask"].sum(1), [5, 4, 4, 6])
