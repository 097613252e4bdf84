"""Where PPO's score comes from: a function of the response text (``reward_fn``) or named scoring functions
(``reward.functions``, e.g. a task's judge) instead of the reward model; the judge's score of rollouts in the
log (``judge``); a reference other than the starting policy (a later round of iterated RLHF); and config
errors that name their key. (The reward-model and Cell-reward paths: test_ppo.py.)"""
import mindspore as ms
import numpy as np
import pytest

from mindrlhf.config import ConfigError, load_config
from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.task import ideal_response
from mindrlhf.data.builtin.world import make_world
from mindrlhf.nn import CausalLM
from mindrlhf.nn.lora import merged_weights
from mindrlhf.trainers.ppo import PPOConfig, PPOTrainer

from .test_ppo import N, TargetFraction, model_config, ppo_config, target_ids, world  # noqa: F401  (world: the module's fixture)


def test_a_reward_function_of_the_text_replaces_the_reward_models_score(world, tmp_path):
    """reward_fn(prompt texts, response texts) gives the raw scores, computed on the decoded responses, and
    they are not normalised with the reward model's statistics (which describe the reward model's scores)."""
    seen = []

    def chars(prompts, texts):
        seen.append((list(prompts), list(texts)))
        return [len(t) / 100 for t in texts]

    trainer = PPOTrainer(ppo_config(world, tmp_path), reward_model=TargetFraction(world[1].vocab_size, N),
                         reward_fn=chars)
    trainer.rm_stats = {"reward_mean": 100.0, "reward_std": 10.0}  # as a reward-model folder would bring
    prompts = [trainer.prompts[i] for i in range(64)]
    exp, stats = trainer.make_experience(prompts, seed=7)
    texts = [trainer.tokenizer.decode(r[m > 0]) for r, m in zip(exp.input_ids[:, -N:], exp.response_mask)]
    assert seen == [([p.text for p in prompts], texts)]
    assert len(set(texts)) > 8
    np.testing.assert_allclose(exp.raw_scores, [len(t) / 100 for t in texts], atol=1e-6)
    np.testing.assert_allclose(exp.scores, exp.raw_scores)  # rm_stats ignored; no EOS penalty in this config
    assert stats["score"] == pytest.approx(float(np.mean(exp.raw_scores)), abs=1e-6)
    # the reward model still scored the rollouts, for the log (rm_score)
    responses, mask = exp.input_ids[:, -N:], exp.response_mask
    hits = (np.isin(responses, target_ids(world[1].vocab_size)) * mask).sum(1) / np.maximum(mask.sum(1), 1)
    np.testing.assert_allclose(exp.rm_scores, hits, atol=1e-6)
    assert stats["rm_score"] == pytest.approx(float(hits.mean()), abs=1e-6)
    assert stats["response_kl"] == stats["kl"] == pytest.approx(float(exp.kl.sum(1).mean()))


JUDGE = "mindrlhf.data.builtin.functions:judge"


def test_reward_functions_weigh_a_tasks_judge_and_other_scores(world, tmp_path):
    """reward.functions: the weighted sum of named functions of the text (here the built-in task's judge, a
    perfect reward model, and a length penalty) replaces the reward model's score."""
    built = make_world(3)
    built.save(str(tmp_path / "world.json"))
    cfg = ppo_config(world, tmp_path / "run", f"reward.functions=[{JUDGE}, mindrlhf.rewards:length_penalty]",
                     "reward.weights=[2.0, 1.0]", f"reward.kwargs={{{JUDGE}: {{world: {tmp_path / 'world.json'}}}}}")
    trainer = PPOTrainer(cfg, reward_model=TargetFraction(world[1].vocab_size, N))
    labeler, rng = Labeler(built), np.random.default_rng(0)
    prompts = [f"Any good {g}? I've already seen \"{m.title}\"." for g, m in zip(("comedies", "thrillers"), built.movies)]
    answers = [ideal_response(labeler, p, rng) for p in prompts] + ["no idea", f"\"{built.movies[0].title}\""]
    prompts = prompts + prompts
    want = [2 * labeler.score(p, a) - 0.01 * len(a) for p, a in zip(prompts, answers)]
    np.testing.assert_allclose(trainer.text_reward(prompts, answers, {}), want, rtol=1e-6)
    assert labeler.score(prompts[0], answers[0]) == labeler.max_score(prompts[0]) and min(want) < 0


def test_the_judge_scores_rollouts_for_the_log_only(world, tmp_path):
    """judge (here a function in a file, with a kwarg): its mean score of the rollouts is the metric
    judge_score; the scores PPO learns from stay the reward model's."""
    (tmp_path / "my_judge.py").write_text("def judge(prompts, responses, *, bonus, **columns):\n"
                                          "    return [bonus + len(r) for r in responses]\n")
    cfg = ppo_config(world, tmp_path / "run", f"judge={tmp_path / 'my_judge.py'}:judge", "judge_kwargs={bonus: 0.5}")
    trainer = PPOTrainer(cfg, reward_model=TargetFraction(world[1].vocab_size, N))
    exp, stats = trainer.make_experience([trainer.prompts[i] for i in range(64)], seed=3)
    responses, mask = exp.input_ids[:, -N:], exp.response_mask
    texts = [trainer.tokenizer.decode(r[m > 0]) for r, m in zip(responses, mask)]
    assert stats["judge_score"] == pytest.approx(0.5 + np.mean([len(t) for t in texts]))
    hits = (np.isin(responses, target_ids(world[1].vocab_size)) * mask).sum(1) / np.maximum(mask.sum(1), 1)
    np.testing.assert_allclose(exp.raw_scores, hits, atol=1e-6)  # the reward model's, not the judge's


# ------------------------------------------------------------------ config errors

BASE = ["policy=p", "reward_model=r", "data.prompts=x.jsonl"]


@pytest.mark.parametrize("overrides, key, hint", [
    (["rollout.batch_size=12", "algo.mini_batch_size=8"], "algo.mini_batch_size", "must divide rollout.batch_size=12"),
    (["algo.mini_batch_size=0"], "algo.mini_batch_size", ">= 1"),
    (["algo.policy_loss=clipped"], "algo.policy_loss", "clip or kl_penalty"),
    (["algo.kl_estimator=k4"], "algo.kl_estimator", "k1"),
    (["algo.loss_agg_mode=mean"], "algo.loss_agg_mode", "token-mean"),
    (["critic_init=random"], "critic_init", "reward_model or policy"),
    (["judge_kwargs={a: 1}"], "judge_kwargs", "without a judge"),
    (["reward.functions=[m:f]", "reward.weights=[1, 2]"], "reward.weights", "2 weights for 1 functions"),
])
def test_config_errors_name_the_key(overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(PPOConfig, None, BASE + overrides)
    assert str(err.value).startswith(key) and hint in str(err.value)


def test_a_reward_model_cell_needs_the_critic_from_the_policy(world, tmp_path):
    cfg = ppo_config(world, tmp_path, "critic_init=reward_model")
    with pytest.raises(ConfigError, match="critic_init"):
        PPOTrainer(cfg, reward_model=TargetFraction(world[1].vocab_size, N))


@pytest.mark.parametrize("lora", [False, True])
def test_an_actor_continuing_from_a_later_policy_stays_tied_to_the_reference_given(world, tmp_path, lora):
    """Round 2 of iterated RLHF: the actor starts from round 1's policy, the KL is still taken to SFT."""
    root, tok = world
    ms.set_seed(1)
    CausalLM(model_config(tok)).save_pretrained(str(tmp_path / "later"))
    tok.save(str(tmp_path / "later"))
    extra = ["actor_lora.enabled=true", "actor_lora.rank=2"] if lora else []
    trainer = PPOTrainer(ppo_config(world, tmp_path / "run", f"policy={tmp_path / 'later'}",
                                    f"reference={root / 'policy'}", *extra),
                         reward_model=TargetFraction(tok.vocab_size, N))
    sft, later = (dict(CausalLM.from_pretrained(str(d)).named_weights()) for d in (root / "policy", tmp_path / "later"))
    actor = merged_weights(trainer.actor.lm)  # B = 0 at the start: the adapted actor computes its base
    assert set(actor) == set(sft) and any(not np.array_equal(sft[n].asnumpy(), later[n].asnumpy()) for n in sft)
    for name, p in trainer.reference.lm.named_weights():
        np.testing.assert_array_equal(p.asnumpy(), sft[name].asnumpy(), err_msg=name)
    for name, value in actor.items():
        np.testing.assert_array_equal(value, later[name].asnumpy(), err_msg=name)
