"""Data: JSONL formats and validation, the tokenizer and chat template, batching, MindRecord export,
and the built-in movie-recommendation task (:mod:`mindrlhf.data.builtin`).

Nothing here imports MindSpore at import time; only MindRecord export/reading does, when called.
"""
from mindrlhf.data.batching import bucket_length, pad_left, pad_right, ranking_batch, sft_batch
from mindrlhf.data.encoding import (EncodedPrompt, EncodedRanking, EncodedSequence, encode_demonstrations,
                                    encode_prompts, encode_rankings)
from mindrlhf.data.formats import (DataError, Demonstration, PromptRecord, Ranking, Records, load_demonstrations,
                                   load_prompts, load_rankings, to_json)
from mindrlhf.data.tokenizer import Tokenizer, train_tokenizer
