"""Where language models become RLHF roles: Actor, Reference, Critic and RewardModel Cells.

``nn/`` knows nothing of RL; this module is the only place that puts heads on LM trunks and decides
what each role returns:

- policy (actor / reference): per-token log-probs of a response given its prompt;
- critic: one value per token, from a scalar head on the trunk's hidden states;
- reward model: one scalar per sequence, read at the sequence's last real token.

With LoRA, a trainable role is adapters on a frozen base, and a base is loaded once and shared by the
roles that start from it (:func:`adapted_copy`): a LoRA actor's base is the reference itself.
"""
from __future__ import annotations

import os
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from .nn import CausalLM, ModelConfig, ScalarHead
from .io.gguf import is_gguf
from .nn.lora import LoRAConfig, apply_lora, shared_copy


def is_pretrained(spec: str) -> bool:
    """True when model spec ``spec`` names pretrained weights (a HuggingFace folder, or a GGUF file or preset
    name) rather than a model preset or YAML that starts from random weights."""
    return os.path.isdir(spec) or is_gguf(spec)


def load_lm(spec: str, vocab_size: int, compute_dtype: str = "", lora: Optional[LoRAConfig] = None) -> CausalLM:
    """A CausalLM from a HuggingFace folder or GGUF file/name (weights loaded), or a preset name/YAML (random init);
    with ``lora`` enabled, its adapters are applied and everything else is frozen.

    A preset's vocabulary is resized to the tokenizer's ``vocab_size``; a folder's must already cover it.
    """
    return with_lora(_load(spec, vocab_size, compute_dtype), lora)


def with_lora(lm: CausalLM, lora: Optional[LoRAConfig]) -> CausalLM:
    """``lm`` with ``lora``'s adapters applied (base frozen) when it is enabled; else ``lm`` unchanged."""
    if lora is not None and lora.enabled:
        apply_lora(lm, lora)
    return lm


def adapted_copy(base: CausalLM, lora: LoRAConfig) -> CausalLM:
    """A trainable LM on ``base``'s weights without copying them: ``lora``'s adapters on a second model
    structure whose Parameters are ``base``'s. ``base`` keeps computing the base model (adapters off)."""
    if not lora.enabled:
        raise ValueError("adapted_copy: LoRA is off; a fully trained role needs its own copy of the weights")
    return with_lora(shared_copy(base), lora)


def _load(spec: str, vocab_size: int, compute_dtype: str) -> CausalLM:
    if is_pretrained(spec):
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

    With ``ensemble_size`` M > 1 the head has M outputs, the members r_1 .. r_M of an ensemble on the one
    trunk, and the reward is the conservative ``r = mean_m r_m − k · std_m r_m`` (population std over the
    members), which punishes answers the members disagree on (Coste et al. 2024, reward-model ensembles
    against over-optimisation).

    construct(input_ids [B, T], attention_mask [B, T], last_index [B]) → rewards [B] (fp32);
    member_scores(...) → [B, M] (for M = 1, the reward as a column).
    """

    def __init__(self, trunk: CausalLM, ensemble_size: int = 1, k: float = 1.0):
        super().__init__()
        self.trunk = trunk
        self.ensemble_size, self.k = int(ensemble_size), float(k)
        self.head = ScalarHead(trunk.config.hidden_size, outputs=self.ensemble_size)

    def construct(self, input_ids, attention_mask, last_index):
        if self.ensemble_size == 1:
            hidden = self.trunk.hidden_states(input_ids, attention_mask)
            return gather_last(self.head(hidden), last_index)
        members = self.member_scores(input_ids, attention_mask, last_index)
        mean = members.mean(-1)
        std = ops.sqrt(((members - mean.expand_dims(-1)) ** 2).mean(-1))
        return mean - self.k * std

    def member_scores(self, input_ids, attention_mask, last_index):
        """Each member's score [B, M] at the last real token."""
        values = self.head(self.trunk.hidden_states(input_ids, attention_mask))  # [B, T] or [B, T, M]
        if self.ensemble_size == 1:
            return gather_last(values, last_index).expand_dims(-1)
        index = last_index.astype(ms.int32).reshape(-1, 1, 1).broadcast_to((values.shape[0], 1, self.ensemble_size))
        return ops.gather_elements(values, 1, index).squeeze(1)


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
    """Actor or reference: log π(y_t | x, y_<t) and the entropy of π at each response token.

    construct(input_ids [B, T], attention_mask [B, T]) → (logprobs, entropy), [B, T-1] each, of token t+1
    given ≤ t.
    """

    def __init__(self, lm: CausalLM):
        super().__init__()
        self.lm = lm

    def construct(self, input_ids, attention_mask):
        return self.response_logprobs(input_ids, attention_mask, input_ids.shape[1] - 1)

    def response_logprobs(self, input_ids, attention_mask, response_len: int):
        """(logprobs [B, N], entropy [B, N]) of the last N = ``response_len`` tokens: construct's last N columns.

        The trunk runs over all T columns (a response token attends to its prompt), but the LM head
        (``CausalLM.token_logprobs``) only over the N positions that predict response tokens (columns
        T−N−1 … T−2): the head, hidden × vocab per position, is the biggest matmul of a small model (GPT-2:
        768 × 50257), and RL never reads the prompt's log-probs. ``response_len`` is a Python int (a static
        shape in graph mode).
        """
        total = input_ids.shape[1]
        hidden = self.lm.hidden_states(input_ids, attention_mask)[:, total - 1 - response_len : total - 1, :]
        return self.lm.token_logprobs(hidden, input_ids[:, total - response_len :])


def frozen(cell: nn.Cell) -> nn.Cell:
    """``cell`` with every parameter's requires_grad off (a role that never trains)."""
    for p in cell.get_parameters():
        p.requires_grad = False
    return cell


def ppo_roles(policy: str, vocab_size: int, reward_model: RewardModel, critic_from: str,
              actor_lora: LoRAConfig, critic_lora: LoRAConfig, reference: str = "") -> tuple[Policy, Policy, Critic]:
    """(actor, reference, critic) for PPO; ``reward_model`` is the frozen, loaded reward model.

    The reference is the policy loaded once and frozen, or the model in ``reference`` when that is another
    folder (an actor that continues from an earlier PPO round stays tied to SFT). A LoRA actor is adapters
    on the reference's own weights (:func:`adapted_copy`), so the reference is the actor's base with its
    adapters off; with a separate reference they adapt a copy of the policy. A fully trained actor is a
    second copy. The critic starts from ``critic_from`` (the reward model's folder:
    its trunk, and a copy of its head, a better start for V than zeros) or, when empty, from the policy
    with a zero head; a LoRA critic adapts the frozen reward model's (or the reference's) weights in place
    of a copy.
    """
    separate = bool(reference) and os.path.abspath(reference) != os.path.abspath(policy)
    reference_lm = load_lm(reference if separate else policy, vocab_size)
    if actor_lora.enabled:
        actor_lm = adapted_copy(load_lm(policy, vocab_size) if separate else reference_lm, actor_lora)
    else:
        actor_lm = load_lm(policy, vocab_size)
    if critic_lora.enabled:
        trunk = adapted_copy(reward_model.trunk if critic_from else reference_lm, critic_lora)
    else:
        trunk = CausalLM.from_pretrained(critic_from) if critic_from else load_lm(policy, vocab_size)
    critic = Critic(trunk)
    if critic_from:  # an ensemble's heads averaged: the head of the members' mean score
        for name in ("weight", "bias"):
            value = getattr(reward_model.head, name).asnumpy()  # weight [hidden, M], bias [M]
            getattr(critic.head, name).set_data(ms.Tensor(value.mean(axis=-1, keepdims=True)))
    return Policy(actor_lm), frozen(Policy(reference_lm)), critic
