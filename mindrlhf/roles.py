"""Where language models become RLHF roles: Actor, Reference, Critic and RewardModel Cells.

``nn/`` knows nothing of RL; this module is the only place that puts heads on LM trunks and decides
what each role returns:

- policy (actor / reference): per-token log-probs of a response given its prompt;
- critic: one value per token, from a scalar head on the trunk's hidden states;
- reward model: one scalar per sequence, read at the sequence's last real token.
"""
from __future__ import annotations

import os

import mindspore as ms
from mindspore import nn, ops

from .algos import logprobs_from_logits
from .nn import CausalLM, ModelConfig, ScalarHead


def load_lm(spec: str, vocab_size: int, compute_dtype: str = "") -> CausalLM:
    """A CausalLM from a HuggingFace folder or GGUF file/name (weights loaded), or a preset name/YAML (random init).

    A preset's vocabulary is resized to the tokenizer's ``vocab_size``; a folder's must already cover it.
    """
    from .nn.gguf import is_gguf

    if os.path.isdir(spec) or is_gguf(spec):
        model = CausalLM.from_pretrained(spec, compute_dtype=compute_dtype or None)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"{spec}: the model's vocab_size {model.config.vocab_size} is smaller than the "
                             f"tokenizer's {vocab_size}; use the tokenizer saved with this model")
        return model
    overrides = {"vocab_size": vocab_size}
    if compute_dtype:
        overrides["compute_dtype"] = compute_dtype
    return CausalLM(ModelConfig.from_preset(spec, **overrides))


def gather_last(values, last_index):
    """values [B, T] (or [B, T, 1]), last_index [B] int → values at each row's last real token, [B]."""
    if values.ndim == 3:
        values = values.squeeze(-1)
    return ops.gather_elements(values, 1, last_index.astype(ms.int32).expand_dims(1)).squeeze(1)


class RewardModel(nn.Cell):
    """LM trunk + scalar head read at the last real token: ``r(x, y)``.

    construct(input_ids [B, T], attention_mask [B, T], last_index [B]) → rewards [B] (fp32).
    """

    def __init__(self, trunk: CausalLM):
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.hidden_size)

    def construct(self, input_ids, attention_mask, last_index):
        hidden = self.trunk.hidden_states(input_ids, attention_mask)
        return gather_last(self.head(hidden), last_index)


class Critic(nn.Cell):
    """LM trunk + value head: V(s_t) for every token. construct(ids, mask) → values [B, T]."""

    def __init__(self, trunk: CausalLM):
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.hidden_size)

    def construct(self, input_ids, attention_mask):
        values = self.head(self.trunk.hidden_states(input_ids, attention_mask))
        return values.squeeze(-1) if values.ndim == 3 else values


class Policy(nn.Cell):
    """Actor or reference: log π(y_t | x, y_<t) for each response token.

    construct(input_ids [B, T], attention_mask [B, T]) → logprobs [B, T-1] of token t+1 given ≤ t,
    and the logits they came from (for entropy), [B, T-1, V].
    """

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.lm = lm

    def construct(self, input_ids, attention_mask):
        logits = self.lm(input_ids, attention_mask)[:, :-1, :]
        return logprobs_from_logits(logits, input_ids[:, 1:]), logits
