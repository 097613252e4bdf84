"""Where PPO's score comes from: a function of the response text (``reward_fn``) or the built-in task's hidden
labeler (``ppo.gold_reward``) instead of the reward model; and config errors that name their key. (The
reward-model and Cell-reward paths: test_ppo.py.)"""
import numpy as np
import pytest

from mindrlhf.config import ConfigError, load_config
from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.task import ideal_response
from mindrlhf.data.builtin.world import make_world
from mindrlhf.trainers.ppo import PPOConfig, PPOTrainer

from .test_ppo import N, TargetFraction, ppo_config, world  # noqa: F401  (world: the module's fixture)


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


def test_gold_reward_is_the_hidden_labelers_score(world, tmp_path):
    """ppo.gold_reward=true scores with the built-in task's labeler, read from data.labeler_world."""
    built = make_world(3)
    built.save(str(tmp_path / "world.json"))
    cfg = ppo_config(world, tmp_path / "run", "ppo.gold_reward=true", f"data.labeler_world={tmp_path / 'world.json'}")
    trainer = PPOTrainer(cfg, reward_model=TargetFraction(world[1].vocab_size, N))
    labeler, rng = Labeler(built), np.random.default_rng(0)
    prompts = [f"Any good {g}? I've already seen \"{m.title}\"." for g, m in zip(("comedies", "thrillers"), built.movies)]
    answers = [ideal_response(labeler, p, rng) for p in prompts] + ["no idea", f"\"{built.movies[0].title}\""]
    prompts = prompts + prompts
    want = [labeler.score(p, a) for p, a in zip(prompts, answers)]
    assert trainer.reward_fn(prompts, answers) == want
    assert want[0] == labeler.max_score(prompts[0]) and min(want) < 0


# ------------------------------------------------------------------ config errors

BASE = ["policy=p", "reward_model=r", "data.prompts=x.jsonl"]


@pytest.mark.parametrize("overrides, key, hint", [
    (["rollout.batch_size=12", "ppo.mini_batch_size=8"], "ppo.mini_batch_size", "must divide rollout.batch_size=12"),
    (["ppo.mini_batch_size=0"], "ppo.mini_batch_size", ">= 1"),
    (["ppo.policy_loss=clipped"], "ppo.policy_loss", "clip or kl_penalty"),
    (["ppo.kl_estimator=k4"], "ppo.kl_estimator", "k1"),
    (["ppo.loss_agg_mode=mean"], "ppo.loss_agg_mode", "token-mean"),
    (["critic_init=random"], "critic_init", "reward_model or policy"),
    (["ppo.gold_reward=true"], "ppo.gold_reward", "data.labeler_world"),
])
def test_config_errors_name_the_key(overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(PPOConfig, None, BASE + overrides)
    assert str(err.value).startswith(key) and hint in str(err.value)


def test_a_reward_model_cell_needs_the_critic_from_the_policy(world, tmp_path):
    cfg = ppo_config(world, tmp_path, "critic_init=reward_model")
    with pytest.raises(ConfigError, match="critic_init"):
        PPOTrainer(cfg, reward_model=TargetFraction(world[1].vocab_size, N))
