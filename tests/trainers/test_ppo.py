"""PPO: rollout tensors line up with the models that scored them (log π_old from the sampler or recomputed);
losses against numpy; PPO raises a reward that is a known function of the tokens; resume equals the
uninterrupted run. (The advantage pass: test_experience.py; rewards from text and config errors:
test_ppo_rewards.py.)"""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindrlhf.config import load_config
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.generate import GenerationOutput
from mindrlhf.roles import Critic, Policy, RewardModel
from mindrlhf.trainers.experience import ScoringPass, assemble
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.ppo import ActorLoss, CriticLoss, PPOAlgoConfig, PPOConfig, PPOTrainer

N = 8  # response columns (rollout.max_new_tokens)
P = 16  # the generator's prompt bucket; every prompt here fits, so each graph compiles for one shape
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
ITERATIONS = 8
# The kl_penalty run also takes the other road to log π_old (an actor forward in the scoring pass, not the sampler's).
KL_RUN = ["save_every=4", "keep_checkpoints=3", "algo.adaptive_kl=true", "algo.kl_target=1.0", "algo.kl_horizon=1000",
          "rollout.logprobs_from_generation=false"]


def model_config(tok):
    return ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64)


def target_ids(vocab_size):
    """The tokens the known reward counts: every 8th id, none of them special (ids 0–6)."""
    return np.arange(13, vocab_size, 8)


class TargetFraction(nn.Cell):
    """A reward model whose score is a known function of the tokens: the fraction of the valid response
    tokens (the last ``n`` columns) whose id is a target id. Called like RewardModel: (ids, mask, last) → [B]."""

    def __init__(self, vocab_size, n):
        super().__init__()
        table = np.zeros(vocab_size, np.float32)
        table[target_ids(vocab_size)] = 1.0
        self.table, self.n = ms.Tensor(table), n

    def construct(self, input_ids, attention_mask, last_index):
        mask = attention_mask[:, -self.n:].astype(ms.float32)
        hits = ops.gather(self.table, input_ids[:, -self.n:], 0) * mask
        return hits.sum(1) / ops.maximum(mask.sum(1), 1.0)


@pytest.fixture(scope="module")
def world(toy_task, tmp_path_factory):
    """Prompts of at most P tokens and a random tiny policy saved as a HuggingFace folder with its tokenizer."""
    root = tmp_path_factory.mktemp("ppo")
    tok = Tokenizer.load(str(toy_task / "tok"))
    rng = np.random.default_rng(0)
    prompts = []
    while len(prompts) < 96:
        text = "reverse: " + " ".join(rng.choice(WORDS, int(rng.integers(1, 4)), replace=False))
        if len(tok.encode_prompt(text)) <= P:
            prompts.append(text)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    ms.set_seed(0)
    CausalLM(model_config(tok)).save_pretrained(str(root / "policy"))
    tok.save(str(root / "policy"))
    return root, tok


def ppo_config(world, out, *extra):
    root, _ = world
    return load_config(PPOConfig, None, [
        f"policy={root / 'policy'}", "reward_model=in-memory", "critic_init=policy",  # the Cell replaces the folder
        f"data.prompts={root / 'prompts.jsonl'}", f"out_dir={out}", "progress=false",
        f"algo.iterations={ITERATIONS}", "rollout.batch_size=64", "algo.mini_batch_size=16", "algo.epochs=2",
        f"rollout.max_new_tokens={N}", "algo.missing_eos_penalty=0", "actor_optim.lr=1e-2", *extra])


@pytest.fixture(scope="module")
def ppo_runs(world, tmp_path_factory):
    """run(policy_loss) → (trainer, metrics rows, run folder) of an 8-iteration run, made once per module."""
    done = {}

    def run(policy_loss):
        if policy_loss not in done:
            out = tmp_path_factory.mktemp(f"run_{policy_loss}")
            extra = KL_RUN if policy_loss == "kl_penalty" else []
            trainer = PPOTrainer(ppo_config(world, out, f"algo.policy_loss={policy_loss}", *extra),
                                 reward_model=TargetFraction(world[1].vocab_size, N))
            trainer.train()
            done[policy_loss] = trainer, read_metrics(str(out / "metrics.jsonl")), out
        return done[policy_loss]

    return run


# ------------------------------------------------------------------ references computed row by row, eagerly

def log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def unpadded_rows(ids, mask, n):
    """Each row's real tokens (no left or right padding), its prompt length and its response length."""
    for row, m in zip(ids, mask):
        yield row[m > 0], int(m[:-n].sum()), int(m[-n:].sum())


def row_references(ids, mask, n, policies=(), critic=None, reward_model=None):
    """Per row, alone and unpadded, in PyNative mode: log-probs of the response tokens and entropies at the
    positions that predict them under each policy, the critic's values there, the reward model's score."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        out = []
        for x, p, r in unpadded_rows(ids, mask, n):
            t, ones = ms.Tensor(x[None]), ms.Tensor(np.ones((1, len(x)), np.int32))
            ref = {"len": r, "logprobs": [], "entropy": []}
            for policy in policies:
                logp = log_softmax(policy.lm(t, ones).asnumpy()[0])[p - 1 : p - 1 + r]  # [r, V]
                ref["logprobs"].append(logp[np.arange(r), x[p:]])
                ref["entropy"].append(-(np.exp(logp) * logp).sum(-1))
            if critic is not None:
                ref["values"] = critic(t, ones).asnumpy()[0, p - 1 : p - 1 + r]
            if reward_model is not None:
                ref["score"] = float(reward_model(t, ones, ms.Tensor([len(x) - 1], ms.int32)).asnumpy()[0])
            out.append(ref)
        return out
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


# ------------------------------------------------------------------ 1. alignment

@pytest.fixture(scope="module")
def roles(world):
    """Four distinct tiny models; the critic's and reward model's heads are random (fresh heads are zero)."""
    _, tok = world
    ms.set_seed(1)
    actor, reference = Policy(CausalLM(model_config(tok))), Policy(CausalLM(model_config(tok)))
    critic, reward_model = Critic(CausalLM(model_config(tok))), RewardModel(CausalLM(model_config(tok)))
    rng = np.random.default_rng(1)
    for head in (critic.head, reward_model.head):
        head.weight.set_data(ms.Tensor(rng.normal(0, 0.5, head.weight.shape).astype(np.float32)))
        head.bias.set_data(ms.Tensor(np.full((1,), 0.3, np.float32)))
    for prefix, cell in (("actor", actor), ("reference", reference), ("critic", critic), ("reward", reward_model)):
        for name, p in cell.parameters_and_names():  # unique names within the one scoring graph
            p.name = f"{prefix}.{name}"
    return actor, reference, critic, reward_model


@pytest.fixture(scope="module")
def scored(world, roles):
    """A hand-made rollout (prompts of different lengths, responses ending early with EOS) → ScoringPass."""
    _, tok = world
    texts = ["reverse: cat", "reverse: red blue green", "reverse: dog sun", "reverse: tree"]
    lengths, ends_with_eos = [3, N, N, 1], [True, True, False, True]
    rng = np.random.default_rng(2)
    b = len(texts)
    gen = GenerationOutput(prompt_ids=np.full((b, P), tok.pad_id, np.int32), prompt_mask=np.zeros((b, P), np.int32),
                           response_ids=np.full((b, N), tok.pad_id, np.int32),
                           response_mask=np.zeros((b, N), np.int32), logprobs=np.zeros((b, N), np.float32))
    for i, (text, n, eos) in enumerate(zip(texts, lengths, ends_with_eos)):
        prompt = tok.encode_prompt(text)
        gen.prompt_ids[i, P - len(prompt):], gen.prompt_mask[i, P - len(prompt):] = prompt, 1
        body = rng.integers(7, tok.vocab_size, n)
        if eos:
            body[-1] = tok.eos_id
        gen.response_ids[i, :n], gen.response_mask[i, :n] = body, 1
    ids, mask, response_mask, last_index = assemble(gen)
    actor, reference, critic, reward_model = roles
    scoring = ScoringPass(actor, reference, critic, reward_model, N)
    out = [x.asnumpy() for x in scoring(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(last_index))]
    refs = row_references(ids, mask, N, (actor, reference), critic, reward_model)
    return dict(gen=gen, lengths=lengths, ids=ids, mask=mask, response_mask=response_mask, last_index=last_index,
                old_logprobs=out[0], ref_logprobs=out[1], values=out[2], scores=out[3], refs=refs)


def test_assemble_concatenates_prompt_and_response_and_finds_the_last_real_token(scored, world):
    s, tok = scored, world[1]
    gen, lengths = s["gen"], np.array(s["lengths"])
    np.testing.assert_array_equal(s["ids"], np.concatenate([gen.prompt_ids, gen.response_ids], 1))
    np.testing.assert_array_equal(s["mask"][:, P:], gen.response_mask)
    assert len(set(gen.prompt_mask.sum(1))) == 4  # four different left paddings
    np.testing.assert_array_equal(s["response_mask"].sum(1), lengths)
    np.testing.assert_array_equal(s["last_index"], P + lengths - 1)
    last_tokens = s["ids"][np.arange(4), s["last_index"]]
    assert list(last_tokens == tok.eos_id) == [True, True, False, True]


def test_scoring_pass_reads_each_model_at_the_response_positions(scored):
    """old/ref log-probs, values and scores of the padded batch = each model run on each row alone (≤ 1e-4)."""
    s = scored
    for row, ref in enumerate(s["refs"]):
        r = ref["len"]
        np.testing.assert_allclose(s["old_logprobs"][row, :r], ref["logprobs"][0], atol=1e-4)
        np.testing.assert_allclose(s["ref_logprobs"][row, :r], ref["logprobs"][1], atol=1e-4)
        np.testing.assert_allclose(s["values"][row, :r], ref["values"], atol=1e-4)
        assert s["scores"][row] == pytest.approx(ref["score"], abs=1e-4)
    valid = s["response_mask"] > 0
    assert np.abs(s["old_logprobs"] - s["ref_logprobs"])[valid].min() > 1e-3  # two different models
    assert np.ptp(s["scores"]) > 1e-2 and np.ptp(s["values"][valid]) > 1e-2  # heads are not constant
    for key in ("old_logprobs", "ref_logprobs", "values"):
        assert np.isfinite(s[key]).all()


@pytest.mark.parametrize("policy_loss, reuse", [("clip", True), ("kl_penalty", False)])
def test_rollout_experience_lines_up_with_the_models(ppo_runs, policy_loss, reuse):
    """A real rollout of the trained policy: the Experience agrees with each model run on each row alone
    (left-padded prompts of different lengths), and the raw score is the fraction of target tokens.
    log π_old comes from the sampler (clip run) or from the scoring pass's actor forward (kl_penalty run)."""
    trainer, _, _ = ppo_runs(policy_loss)
    assert trainer.reuse_logprobs == reuse and trainer.scoring.with_actor != reuse
    exp, stats = trainer.make_experience([trainer.prompts[i] for i in range(64)], seed=123)
    m = exp.response_mask
    lengths = m.sum(1).astype(int)
    np.testing.assert_array_equal(m, np.arange(N)[None, :] < lengths[:, None])  # a prefix of ones
    responses = exp.input_ids[:, -N:]
    ends = responses[np.arange(64), lengths - 1]
    assert ((ends == trainer.tokenizer.eos_id) | (lengths == N)).all()  # shorter rows end at EOS
    hits = np.isin(responses, target_ids(trainer.tokenizer.vocab_size)) * m
    np.testing.assert_allclose(exp.raw_scores, hits.sum(1) / lengths, atol=1e-6)
    np.testing.assert_allclose(exp.scores, exp.raw_scores)  # nothing to normalise, no EOS penalty here
    assert stats["score"] == pytest.approx(exp.raw_scores.mean(), abs=1e-6)
    np.testing.assert_allclose(exp.kl, (exp.old_logprobs - exp.ref_logprobs) * m, atol=1e-6)
    # The trained policy no longer stops early (EOS earns nothing here); the hand-made rollout covers EOS.
    rows = np.arange(8)
    assert len(set(exp.attention_mask[rows, :-N].sum(1))) > 2  # prompts of different lengths
    assert np.ptp(exp.values[m > 0]) > 1e-3  # the critic's head has learned away from zero
    refs = row_references(exp.input_ids[rows], exp.attention_mask[rows], N, (trainer.actor, trainer.reference),
                          trainer.critic)
    for row, ref in zip(rows, refs):
        r = ref["len"]
        np.testing.assert_allclose(exp.old_logprobs[row, :r], ref["logprobs"][0], atol=1e-4)
        np.testing.assert_allclose(exp.ref_logprobs[row, :r], ref["logprobs"][1], atol=1e-4)
        np.testing.assert_allclose(exp.values[row, :r], ref["values"], atol=1e-4)


def test_the_first_update_starts_at_ratio_one_with_the_samplers_logprobs(ppo_runs):
    """log π_old taken from the sampler is the update's log π before any step: the first mini-batch's ratio
    π/π_old is 1 (≤ 1e-4) on every response token, as it would be with a recomputed log π_old."""
    trainer, _, _ = ppo_runs("clip")
    exp, _ = trainer.make_experience([trainer.prompts[i] for i in range(64)], seed=321)
    first = np.sort(np.split(np.random.default_rng(5).permutation(64), 4)[0])  # rows as update() draws them
    mb = exp.rows(first)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        logprobs, _ = trainer.actor.response_logprobs(ms.Tensor(mb.input_ids), ms.Tensor(mb.attention_mask), N)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    ratio = np.exp(logprobs.asnumpy().astype(np.float64) - mb.old_logprobs)[mb.response_mask > 0]
    assert ratio.size > 16 * N // 2 and np.abs(ratio - 1).max() < 1e-4


# ------------------------------------------------------------------ 2. losses

@pytest.mark.parametrize("policy_loss", ["clip", "kl_penalty"])
def test_actor_loss_matches_numpy(roles, scored, policy_loss):
    """At the rollout policy (log π = log π_old) the loss is −mean(A) with no clipping; away from it, the
    clipped or KL-penalised surrogate of numpy; the entropy bonus is the token-mean entropy."""
    s, rng = scored, np.random.default_rng(4)
    m = s["response_mask"]
    count, beta, entropy_coef = float(m.sum()), 0.5, 0.01
    cell = ActorLoss(roles[0], PPOAlgoConfig(policy_loss=policy_loss, entropy_coef=entropy_coef))
    advantages = (rng.normal(0, 1, m.shape) * m).astype(np.float32)

    def call(old_logprobs):
        loss, aux = cell(ms.Tensor(s["ids"]), ms.Tensor(s["mask"]), ms.Tensor(old_logprobs), ms.Tensor(advantages),
                         ms.Tensor(m), ms.Tensor(count, ms.float32), ms.Tensor(beta, ms.float32))
        return float(loss.asnumpy()), [float(a.asnumpy()) for a in aux]

    logprobs = s["old_logprobs"]  # log π of the actor, checked against row-by-row forwards above
    loss, (pg_loss, clipfrac, approx_kl, entropy) = call(logprobs)
    assert pg_loss == pytest.approx(-advantages.sum() / count, abs=1e-5)
    assert clipfrac == 0.0 and approx_kl < 1e-8
    want_entropy = sum(ref["entropy"][0].sum() for ref in s["refs"]) / count
    assert entropy == pytest.approx(want_entropy, abs=1e-4)
    assert loss == pytest.approx(pg_loss - entropy_coef * entropy, abs=1e-6)

    old = (logprobs + rng.uniform(-0.4, 0.4, m.shape)).astype(np.float32)
    _, (pg_loss, clipfrac, approx_kl, _) = call(old)
    ratio = np.exp(logprobs.astype(np.float64) - old)
    if policy_loss == "clip":
        unclipped, clipped = -advantages * ratio, -advantages * np.clip(ratio, 0.8, 1.2)
        per_token, want_clipfrac = np.maximum(unclipped, clipped), ((clipped > unclipped) * m).sum() / count
        assert 0 < want_clipfrac < 1
    else:
        per_token, want_clipfrac = -advantages * ratio + beta * (ratio - np.log(ratio) - 1), 0.0
    assert pg_loss == pytest.approx((per_token * m).sum() / count, abs=1e-4)
    assert clipfrac == pytest.approx(want_clipfrac, abs=1e-6)
    assert approx_kl == pytest.approx((0.5 * np.log(ratio) ** 2 * m).sum() / count, abs=1e-5)


def test_critic_loss_matches_numpy(roles, scored):
    s, rng = scored, np.random.default_rng(5)
    m = s["response_mask"]
    count = float(m.sum())
    values = s["values"].astype(np.float64)  # V of the critic, checked against row-by-row forwards above
    old_values = (values + rng.uniform(-0.5, 0.5, m.shape)).astype(np.float32)
    returns = rng.normal(0, 1, m.shape).astype(np.float32)
    loss, clipfrac = CriticLoss(roles[2], PPOAlgoConfig(clip_range_value=0.2))(
        ms.Tensor(s["ids"]), ms.Tensor(s["mask"]), ms.Tensor(old_values), ms.Tensor(returns), ms.Tensor(m),
        ms.Tensor(count, ms.float32))
    clipped = np.clip(values, old_values - 0.2, old_values + 0.2)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    assert float(loss.asnumpy()) == pytest.approx((0.5 * np.maximum(err, err_clipped) * m).sum() / count, abs=1e-4)
    want_clipfrac = ((err_clipped > err) * m).sum() / count
    assert 0 < want_clipfrac < 1
    assert float(clipfrac.asnumpy()) == pytest.approx(want_clipfrac, abs=1e-6)


# ------------------------------------------------------------------ 3. learning a known reward

@pytest.mark.parametrize("policy_loss", ["clip", "kl_penalty"])
def test_ppo_raises_a_reward_that_counts_target_tokens(ppo_runs, policy_loss):
    """A random tiny policy samples a target token ~1 time in 8; the reward is the fraction of them in the
    response. Measured here: iteration 1 scores 0.141 in both runs (same seed, same policy); iterations 7–8
    average 0.416 (clip) and 0.379 (kl_penalty); the score's noise per iteration is ≈ 0.02 (64 × 8 tokens)."""
    _, rows, _ = ppo_runs(policy_loss)
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    score, kl = [r["score"] for r in rows], [r["kl"] for r in rows]
    print(f"\n[ppo {policy_loss}] score {np.round(score, 3).tolist()} kl {np.round(kl, 2).tolist()}")
    assert abs(kl[0]) < 1e-5  # the first rollout comes from the reference itself
    assert np.mean(score[6:8]) > score[0] + 0.08, score
    assert np.mean(kl[6:8]) > 0.2, kl  # the policy has moved away from the reference
    if policy_loss == "kl_penalty":
        assert all(r["clipfrac"] == 0 for r in rows)
        assert len({r["kl_penalty_coef"] for r in rows}) > 1  # β_ppo adapts after each update
    else:
        assert max(r["clipfrac"] for r in rows) > 0.05  # the clip is active


# ------------------------------------------------------------------ 4. resume

@pytest.mark.slow  # a third trainer to compile: ~50 s here, more on a loaded machine
def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(ppo_runs, world, tmp_path):
    """The kl_penalty run (β_ppo and the adaptive β both move) saved at iteration 4: a fresh trainer resumed
    there reaches the same metrics, controllers and weights at iteration 8.

    The checkpoint at 4 is what a run with algo.iterations=4 writes (same save path; the learning rate is
    constant, so the total step count, the only difference, plays no part)."""
    full, full_rows, full_dir = ppo_runs("kl_penalty")
    run_dir = tmp_path / "resumed"
    shutil.copytree(full_dir, run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["latest", "step_00000004", "step_00000008"]
    shutil.rmtree(ckpts / "step_00000008")
    (ckpts / "latest").write_text("step_00000004")
    trainer = PPOTrainer(ppo_config(world, run_dir, "algo.policy_loss=kl_penalty", *KL_RUN),
                         reward_model=TargetFraction(world[1].vocab_size, N))
    trainer.train(resume=str(run_dir))
    rows = read_metrics(str(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    for a, b in zip(full_rows[4:], rows[4:]):
        for key, value in a.items():
            if not key.startswith(("time_", "gen_tok")):
                assert b[key] == pytest.approx(value, abs=1e-5), (a["step"], key)
    assert trainer.kl_penalty_coef == full.kl_penalty_coef
    assert trainer.kl_ctl.kl_coef == pytest.approx(full.kl_ctl.kl_coef)
    assert trainer.kl_ctl.kl_coef != pytest.approx(0.05)  # the adaptive β did move, so its restore counted
    for mine, theirs in ((trainer.actor, full.actor), (trainer.critic, full.critic)):
        for (name, p), (_, q) in zip(mine.parameters_and_names(), theirs.parameters_and_names()):
            np.testing.assert_allclose(p.asnumpy(), q.asnumpy(), atol=1e-5, err_msg=name)
