"""The rollout's compiled pieces alone, on tiny random models: the policies' response-only LM head equals the
full-sequence head's response columns (log-probs, entropies and their gradients; tied and untied heads, LoRA);
when the sampler's log-probs may stand in for log π_old; the advantage pass against numpy."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.lora import LoRAConfig, apply_lora, lora_parameters
from mindrlhf.roles import Policy
from mindrlhf.trainers.experience import AdvantagePass, response_slice
from mindrlhf.trainers.ppo_config import RolloutConfig

N = 8  # response columns
IDS = np.random.default_rng(0).integers(3, 256, (3, 20)).astype(np.int32)
MASK = (np.arange(20)[None, :] >= np.array([[0], [5], [9]])).astype(np.int32)  # three left paddings


class ResponseOnly(nn.Cell):
    """Policy.response_logprobs as a compiled graph of its own."""

    def __init__(self, policy, n):
        super().__init__()
        self.policy, self.n = policy, n

    def construct(self, input_ids, attention_mask):
        return self.policy.response_logprobs(input_ids, attention_mask, self.n)


@pytest.fixture(scope="module")
def policies():
    """A tied-head llama, and an untied one with LoRA adapters whose B is random (so they change the output)."""
    def lm(tied):
        ms.set_seed(3)
        config = ModelConfig.from_preset("tiny", vocab_size=256, hidden_size=32, intermediate_size=64,
                                         tie_word_embeddings=tied)
        return CausalLM(config)

    adapted = lm(False)
    apply_lora(adapted, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "down")))
    rng = np.random.default_rng(4)
    for p in lora_parameters(adapted):
        p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    return {"tied": Policy(lm(True)), "untied+lora": Policy(adapted)}


def both_ways(policy):
    """(full-sequence log-probs and entropies at the response columns, response-only ones), numpy."""
    ids, mask = ms.Tensor(IDS), ms.Tensor(MASK)
    full_lp, full_entropy = policy(ids, mask)
    lp, entropy = ResponseOnly(policy, N)(ids, mask)
    full = [response_slice(x, N, IDS.shape[1]).asnumpy() for x in (full_lp, full_entropy)]
    return full, [lp.asnumpy(), entropy.asnumpy()]


@pytest.mark.parametrize("name", ["tied", "untied+lora"])
def test_response_only_head_equals_the_full_heads_response_columns(policies, name):
    policy = policies[name]
    (full_lp, full_entropy), (lp, entropy) = both_ways(policy)
    assert lp.shape == entropy.shape == (3, N)
    np.testing.assert_allclose(lp, full_lp, atol=1e-5)
    np.testing.assert_allclose(entropy, full_entropy, atol=1e-5)
    # against the LM's logits in float64: the columns T−N−1 … T−2 predict the response, IDS' last N columns
    logits = policy.lm(ms.Tensor(IDS), ms.Tensor(MASK)).asnumpy().astype(np.float64)[:, -N - 1:-1]
    logp_all = logits - logits.max(-1, keepdims=True)
    logp_all -= np.log(np.exp(logp_all).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp, np.take_along_axis(logp_all, IDS[:, -N:, None], -1)[..., 0], atol=1e-5)
    # entropy ≈ log 256 ≈ 5.5, a float32 sum over the vocabulary: relative rounding
    np.testing.assert_allclose(entropy, -(np.exp(logp_all) * logp_all).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("name", ["tied", "untied+lora"])
def test_response_only_head_has_the_full_heads_gradients(policies, name):
    """PyNative: ∂/∂θ of Σ w·log π + Σ H over the response positions is the same through either head
    (θ: every weight of the tied model, the adapters of the LoRA one)."""
    policy = policies[name]
    weights = policy.trainable_params()
    w = ms.Tensor(np.random.default_rng(5).normal(0, 1, (3, N)).astype(np.float32))
    ids, mask = ms.Tensor(IDS), ms.Tensor(MASK)

    def full(input_ids, attention_mask):
        lp, entropy = policy(input_ids, attention_mask)
        return (response_slice(lp, N, IDS.shape[1]) * w).sum() + response_slice(entropy, N, IDS.shape[1]).sum()

    def response_only(input_ids, attention_mask):
        lp, entropy = policy.response_logprobs(input_ids, attention_mask, N)
        return (lp * w).sum() + entropy.sum()

    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        want = ms.grad(full, grad_position=None, weights=weights)(ids, mask)
        got = ms.grad(response_only, grad_position=None, weights=weights)(ids, mask)
        (full_lp, _), (lp, _) = both_ways(policy)  # and the values agree eagerly too
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    np.testing.assert_allclose(lp, full_lp, atol=1e-5)
    assert len(weights) == len(got) > 0 and any(np.abs(g.asnumpy()).max() > 1e-3 for g in got)
    for p, a, b in zip(weights, got, want):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-5, err_msg=p.name)


@pytest.mark.parametrize("flag, temperature, top_k, top_p, reuse", [
    (True, 1.0, 0, 1.0, True),
    (True, 1.0, 5, 0.9, True),  # filters do not touch the recorded log-prob (tests/nn/test_generate.py)
    (True, 0.7, 0, 1.0, False),  # the tempered distribution's log-prob is not log π
    (False, 1.0, 0, 1.0, False),
])
def test_when_the_samplers_logprobs_are_log_pi_old(flag, temperature, top_k, top_p, reuse):
    cfg = RolloutConfig(logprobs_from_generation=flag, temperature=temperature, top_k=top_k, top_p=top_p)
    assert cfg.reuses_generation_logprobs() is reuse


# ------------------------------------------------------------------ the advantage pass

def numpy_advantages(old_lp, ref_lp, values, scores, mask, kl_coef, gamma, lam):
    """KL k1, per-token rewards (score on the last valid token), GAE over each row's valid tokens, then
    whitening over all valid tokens (unbiased variance)."""
    kl = (old_lp - ref_lp) * mask
    rewards = -kl_coef * kl
    advantages = np.zeros_like(values)
    for b, length in enumerate(mask.sum(1).astype(int)):
        rewards[b, length - 1] += scores[b]
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1] if t + 1 < length else 0.0
            running = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * running
            advantages[b, t] = running
    returns = advantages + values
    valid = advantages[mask > 0]
    whitened = (advantages - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8) * mask
    return kl, rewards, whitened, returns


def test_advantage_pass_matches_numpy():
    rng = np.random.default_rng(3)
    lengths = np.array([3, N, 1, 5])
    mask = (np.arange(N)[None, :] < lengths[:, None]).astype(np.float32)
    old_lp, ref_lp = (rng.uniform(-4, -0.1, (4, N)).astype(np.float32) for _ in range(2))
    values = rng.normal(0, 1, (4, N)).astype(np.float32)
    scores = rng.normal(0, 2, 4).astype(np.float32)
    kl_coef, gamma, lam = 0.1, 0.9, 0.8
    got = [x.asnumpy() for x in AdvantagePass("k1", gamma, lam, True)(
        ms.Tensor(old_lp), ms.Tensor(ref_lp), ms.Tensor(values), ms.Tensor(scores), ms.Tensor(mask),
        ms.Tensor(kl_coef, ms.float32))]
    want = numpy_advantages(old_lp, ref_lp, values, scores, mask, kl_coef, gamma, lam)
    for name, g, w in zip(("kl", "rewards", "advantages", "returns"), got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, err_msg=name)
    assert (got[2][mask == 0] == 0).all() and (got[1][mask == 0] == 0).all()
    assert got[2][mask > 0].std(ddof=1) == pytest.approx(1.0, abs=1e-3)
