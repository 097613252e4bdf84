"""GRPO: groups of answers per prompt in one generation call, rewards from Python functions, advantages of the
estimator, a reward a tiny policy can learn rising over a few iterations, DAPO's dynamic sampling, a wrong
reward function stopping the run with one line, and resume equal to the uninterrupted run."""
import json
import os
import shutil
import sys

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.config import ConfigError, load_config
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.plugins import PluginError
from mindrlhf.roles import RewardModel
from mindrlhf.trainers.artifacts import export_reward_model, write_stats
from mindrlhf.trainers.grpo import GRPOTrainer
from mindrlhf.trainers.grpo_experience import GroupAdvantagePass, GroupBatch, concat_groups, overlong_penalty
from mindrlhf.trainers.grpo_config import GRPOAlgoConfig, GRPOConfig
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.reward import RMConfig

from .test_kill_resume import SAVE_EVERY, STEPS, kill_after_a_checkpoint, run as run_cli, same_run

N = 8  # answer tokens (rollout.max_new_tokens)
P = 16  # the prompt bucket; every prompt fits, so each graph compiles for one shape
B, G = 16, 4  # prompts per iteration, answers per prompt
ITERATIONS = 12
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
REWARDS = '''
def chars(prompts, responses, **columns):
    """A reward a random tiny policy can learn: longer text (longer pieces, no early EOS)."""
    assert set(columns) == {"answer", "words"}, columns
    return [len(r) / 40 for r in responses]

def flat_for_cat(prompts, responses, **_):
    """All answers to a prompt naming "cat" score the same: their group carries no signal."""
    return [1.0 if "cat" in p else len(r) / 40 for p, r in zip(prompts, responses)]

def too_few(prompts, responses, **_):
    return [0.0] * (len(responses) - 1)

def nan_reward(prompts, responses, **_):
    return [float("nan")] * len(responses)
'''


@pytest.fixture(scope="module")
def world(toy_task, tmp_path_factory):
    """Prompts with two extra columns, a random tiny policy with its tokenizer, and the reward module on sys.path."""
    root = tmp_path_factory.mktemp("grpo")
    tok = Tokenizer.load(str(toy_task / "tok"))
    rng = np.random.default_rng(0)
    lines = []
    while len(lines) < 96:
        words = list(rng.choice(WORDS, int(rng.integers(1, 4)), replace=False))
        text = "reverse: " + " ".join(words)
        if len(tok.encode_prompt(text)) <= P:
            lines.append({"prompt": text, "answer": " ".join(reversed(words)), "words": len(words)})
    (root / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ms.set_seed(0)
    CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=32,
                                     intermediate_size=64)).save_pretrained(str(root / "policy"))
    tok.save(str(root / "policy"))
    (root / "grpo_test_rewards.py").write_text(REWARDS)
    sys.path.insert(0, str(root))
    yield root, tok
    sys.path.remove(str(root))


def overrides(world, out, *extra):
    root, _ = world
    return [f"policy={root / 'policy'}", f"data.prompts={root / 'prompts.jsonl'}", f"out_dir={out}", "progress=false",
            f"algo.iterations={ITERATIONS}", f"rollout.batch_size={B}", f"rollout.group_size={G}",
            f"rollout.max_new_tokens={N}", "algo.mini_batch_size=16", "algo.epochs=2", "optim.lr=1e-2",
            "algo.policy_loss=clip_higher", "reward.functions=[grpo_test_rewards:chars]", "save_every=6",
            "keep_checkpoints=3", *extra]


def grpo_config(world, out, *extra):
    return load_config(GRPOConfig, None, overrides(world, out, *extra))


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """A 12-iteration run (clip-higher, the KL in the loss, k3): (trainer, metric rows, run folder)."""
    out = tmp_path_factory.mktemp("run")
    trainer = GRPOTrainer(grpo_config(world, out))
    trainer.train()
    return trainer, read_metrics(str(out / "metrics.jsonl")), out


# ------------------------------------------------------------------ learning

def test_grpo_raises_a_reward_it_can_learn(run):
    """A random tiny policy; the reward is the answer's length in characters / 40. Measured here: iteration 1
    scores 0.221, iterations 11-12 average 0.679; the noise of one iteration's mean (64 answers) is about 0.01."""
    _, rows, out = run
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    reward, kl = [r["reward"] for r in rows], [r["kl"] for r in rows]
    print(f"\n[grpo] reward {np.round(reward, 3).tolist()} kl {np.round(kl, 3).tolist()}")
    assert np.mean(reward[-2:]) > reward[0] + 0.2, reward
    assert kl[0] < 1e-5 and np.mean(kl[-2:]) > 0.2, kl  # the first rollout comes from the reference itself
    assert max(r["clip_ratio"] for r in rows) > 0.01 and all(r["kl_loss"] >= 0 for r in rows)
    for key in ("reward_std", "rewards/chars", "frac_reward_zero_std", "completion_length", "clipped_ratio",
                "entropy", "approx_kl", "grad_norm", "lr", "pg_loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["rewards/chars"] == pytest.approx(rows[0]["reward"], abs=1e-6)  # one function, weight 1
    # the KL of whole answers: Σ_t KL_t per answer, averaged = the per-token kl × the mean answer length
    for r in rows:
        assert r["response_kl"] == pytest.approx(r["kl"] * r["completion_length"], rel=1e-4, abs=1e-7)
    assert "judge_score" not in rows[0] and "rm_score" not in rows[0]  # no judge, no reward model
    assert os.path.isfile(out / "model" / "config.json") and os.path.isfile(out / "model" / "mindrlhf_config.yaml")


def test_a_group_is_one_prompt_answered_g_times_and_scored_by_the_function(run):
    trainer, _, _ = run
    prompts = [trainer.prompts[i] for i in range(B)]
    batch, terms, _ = trainer.rollout(prompts, seed=5)
    assert len(batch) == B * G and batch.response_mask.shape == (B * G, N)
    prompt_cols = batch.input_ids[:, :-N]
    for k, p in enumerate(prompts):
        group = slice(k * G, (k + 1) * G)
        assert (prompt_cols[group] == prompt_cols[k * G]).all()  # the same prompt, G times
        assert prompt_cols[k * G][batch.attention_mask[k * G, :-N] > 0].tolist() == p.input_ids
    answers = batch.input_ids[:, -N:]
    assert sum(len({tuple(a) for a in answers[k * G:(k + 1) * G]}) > 1 for k in range(B)) > B // 2  # sampled
    texts = [trainer.tokenizer.decode(a[m > 0]) for a, m in zip(answers, batch.response_mask)]
    np.testing.assert_allclose(batch.scores, [len(t) / 40 for t in texts], atol=1e-6)
    np.testing.assert_array_equal(terms["rewards/chars"], batch.scores)
    valid = batch.response_mask > 0
    assert np.abs(batch.old_logprobs - batch.ref_logprobs)[valid].max() > 1e-3  # the trained actor has moved


def test_advantages_are_the_group_estimators(run):
    """The KL is in the loss, so the advantages are GRPO's of the scores: (s − mean_g) / (std_g + 1e-6)."""
    trainer, _, _ = run
    batch, _, _ = trainer.rollout([trainer.prompts[i] for i in range(B)], seed=6)
    kl, advantages = (x.asnumpy() for x in trainer.advantage(*(ms.Tensor(x) for x in (
        batch.scores, batch.old_logprobs, batch.ref_logprobs, batch.response_mask))))
    grouped = batch.scores.astype(np.float64).reshape(B, G)
    want = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(advantages, want.reshape(-1, 1) * batch.response_mask, atol=2e-4)
    log_r = batch.ref_logprobs - batch.old_logprobs  # k3 of the rollout policy against the reference
    np.testing.assert_allclose(kl, (np.exp(log_r) - log_r - 1) * batch.response_mask, rtol=1e-5, atol=1e-5)


def test_dynamic_sampling_drops_groups_of_equal_rewards(run):
    """Prompts naming "cat" score 1 whatever the answer: their groups are dropped and more prompts drawn."""
    trainer, _, _ = run
    saved = trainer.functions, trainer.cfg.algo.dynamic_sampling, trainer.order.state()
    trainer.functions = [("grpo_test_rewards:flat_for_cat", sys.modules["grpo_test_rewards"].flat_for_cat, 1.0)]
    trainer.cfg.algo.dynamic_sampling = True
    try:
        batch, stats = trainer.collect(100)
    finally:
        trainer.functions, trainer.cfg.algo.dynamic_sampling = saved[:2]
        trainer.order.restore(saved[2])
    assert len(batch) == B * G and stats["frac_reward_zero_std"] > 0 and stats["dynamic_draws"] >= 1
    grouped = batch.scores.reshape(B, G)
    flat = grouped.max(1) == grouped.min(1)
    assert flat.sum() == stats["filled_groups"] == 0
    texts = [trainer.tokenizer.decode(r[r != trainer.tokenizer.pad_id]) for r in batch.input_ids[::G, :-N]]
    assert not any("cat" in t for t in texts)


def test_the_kl_can_go_into_the_reward():
    """kl_in=reward: GRPO's advantages of score − β·Σ_t k1_t (k1 = log π_old − log π_ref), on valid tokens only."""
    rng = np.random.default_rng(3)
    scores = rng.normal(size=8).astype(np.float32)
    old, ref = (rng.normal(-2, 0.5, (8, 5)).astype(np.float32) for _ in range(2))
    mask = (np.arange(5)[None, :] < rng.integers(1, 6, 8)[:, None]).astype(np.float32)
    cell = GroupAdvantagePass(GRPOAlgoConfig(kl_in="reward", kl_coef=0.5), group_size=4)
    kl, advantages = (x.asnumpy() for x in cell(*map(ms.Tensor, (scores, old, ref, mask))))
    np.testing.assert_allclose(kl, (old - ref) * mask, atol=1e-6)
    shaped = (scores - 0.5 * ((old - ref) * mask).sum(1)).astype(np.float64).reshape(2, 4)
    want = (shaped - shaped.mean(1, keepdims=True)) / (shaped.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(advantages, want.reshape(-1, 1) * mask, rtol=1e-4, atol=1e-5)


def test_a_reward_model_folder_as_the_reward_and_log_probs_recomputed_below_temperature_one(world, tmp_path):
    """reward.model alone: the score is the reward model's, normalised with rm_stats.json. At T = 0.8 the sampler's
    log-probs are the tempered policy's, so log π_old comes from an actor forward: at the start (actor = reference)
    it equals log π_ref."""
    root, tok = world
    ms.set_seed(4)
    reward_model = RewardModel(CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=32,
                                                                intermediate_size=64)))
    reward_model.head.weight.set_data(ms.Tensor(np.random.default_rng(4).normal(0, 0.5, (32, 1)).astype(np.float32)))
    export_reward_model(reward_model, tok, RMConfig(), str(tmp_path / "rm"))
    write_stats({"reward_mean": 0.5, "reward_std": 2.0}, str(tmp_path / "rm"))
    trainer = GRPOTrainer(grpo_config(world, tmp_path / "run", "reward.functions=[]", f"reward.model={tmp_path / 'rm'}",
                                      "rollout.temperature=0.8", "judge=grpo_test_rewards:chars"))
    assert trainer.scoring.with_actor and trainer.scoring.with_reference and trainer.scoring.with_reward_model
    batch, terms, _ = trainer.rollout([trainer.prompts[i] for i in range(B)], seed=9)
    valid = batch.response_mask > 0
    np.testing.assert_allclose(batch.old_logprobs[valid], batch.ref_logprobs[valid], atol=1e-5)
    last = (batch.attention_mask.shape[1] - N - 1 + batch.response_mask.sum(1)).astype(np.int32)
    raw = trainer.reward_model(*(ms.Tensor(x) for x in (batch.input_ids, batch.attention_mask, last))).asnumpy()
    assert np.ptp(raw) > 1e-3
    np.testing.assert_allclose(batch.scores, (raw - 0.5) / 2.0, atol=1e-5)
    np.testing.assert_array_equal(terms["rewards/model"], batch.scores)
    # logged, not trained on: the reward model's raw score and the judge's (here the chars function)
    np.testing.assert_allclose(terms["rm_score"], raw, atol=1e-5)
    texts = [trainer.tokenizer.decode(a[m > 0]) for a, m in zip(batch.input_ids[:, -N:], batch.response_mask)]
    np.testing.assert_allclose(terms["judge_score"], [len(t) / 40 for t in texts], atol=1e-9)
    stats = trainer.rollout_stats(batch, terms, {"time_generate": 1.0})
    assert stats["judge_score"] == pytest.approx(np.mean([len(t) / 40 for t in texts]))
    assert stats["rm_score"] == pytest.approx(float(raw.mean()), abs=1e-5)


# ------------------------------------------------------------------ a wrong reward function stops the run

@pytest.mark.parametrize("name, message", [
    ("too_few", "reward function grpo_test_rewards:too_few returned 63 scores for 64 responses"),
    ("nan_reward", "reward function grpo_test_rewards:nan_reward returned nan for response 0"),
])
def test_a_misbehaving_reward_function_stops_the_step(run, name, message):
    trainer, _, _ = run
    saved = trainer.functions
    trainer.functions = [(f"grpo_test_rewards:{name}", getattr(sys.modules["grpo_test_rewards"], name), 1.0)]
    try:
        with pytest.raises(PluginError) as err:
            trainer.step(50)
    finally:
        trainer.functions = saved
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec, message", [
    ("grpo_test_rewards:missing", "mindrlhf: error: reward.functions[0]: 'grpo_test_rewards:missing': "
                                  "'grpo_test_rewards' has no attribute 'missing'"),
    ("no_such_module:score", "mindrlhf: error: reward.functions[0]: cannot import module 'no_such_module'"),
    ("grpo_test_rewards:nan_reward", "mindrlhf: error: reward function grpo_test_rewards:nan_reward returned nan"),
])
def test_the_command_prints_one_line_naming_the_function(world, tmp_path, capsys, spec, message):
    code = main(["grpo", *overrides(world, tmp_path / "run", f"reward.functions=[{spec}]", "algo.iterations=1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "run" / "model").exists()


# ------------------------------------------------------------------ roles, config, helpers

def test_lora_actor_uses_the_reference_as_its_base_and_no_kl_means_no_reference(world, tmp_path):
    trainer = GRPOTrainer(grpo_config(world, tmp_path, "lora.enabled=true", "lora.rank=2"))
    base = {id(p) for p in trainer.reference.get_parameters()}
    actor = list(trainer.actor.get_parameters())
    assert base and base <= {id(p) for p in actor}  # the base weights are shared, not copied
    assert all("lora" in p.name for p in trainer.actor.trainable_params())
    bare = GRPOTrainer(grpo_config(world, tmp_path, "algo.kl_coef=0"))
    assert bare.reference is None and bare.scoring is None  # T = 1: nothing to score in a compiled pass


BASE = ["policy=p", "data.prompts=x.jsonl", "reward.functions=[mindrlhf.rewards:exact_match]"]


@pytest.mark.parametrize("extra, key, hint", [
    (["reward.functions=[]"], "reward.functions", "at least one reward function"),
    (["reward.weights=[1.0, 2.0]"], "reward.weights", "2 weights for 1 functions"),
    (["reward.kwargs={mindrlhf.rewards:format_regex: {pattern: x}}"], "reward.kwargs", "not one of functions"),
    (["rollout.group_size=1"], "rollout.group_size", "must be >= 2"),
    (["rollout.temperature=0"], "rollout.temperature", "must be > 0"),
    (["algo.mini_batch_size=24"], "algo.mini_batch_size", "must divide rollout.batch_size × group_size = 128"),
    (["algo.adv_estimator=gae"], "algo.adv_estimator", "dr_grpo, grpo, reinforce_pp, rloo"),
    (["algo.policy_loss=kl_penalty"], "algo.policy_loss", "clip, clip_higher, dual_clip, gspo"),
    (["algo.loss_agg_mode=mean"], "algo.loss_agg_mode", "seq-mean-token-sum-norm"),
    (["algo.kl_in=both"], "algo.kl_in", "loss or reward"),
    (["algo.kl_estimator=k4"], "algo.kl_estimator", "k3"),
    (["algo.clip_c=1"], "algo.clip_c", "must be > 1"),
    (["algo.clip_range=0"], "algo.clip_range", "(0, 1)"),
    (["algo.overlong_buffer=48"], "algo.overlong_buffer", "< rollout.max_new_tokens=48"),
    (["lora.enabled=true", "lora.dropout=0.1"], "lora.dropout", "must be 0"),
])
def test_config_errors_name_the_key(extra, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(GRPOConfig, None, BASE + extra)
    assert str(err.value).startswith(key) and hint in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["grpo_builtin.yaml", "grpo_arithmetic_smollm2.yaml"])
def test_the_recipes_load(name):
    cfg = load_config(GRPOConfig, os.path.join(os.path.dirname(__file__), "..", "..", "configs", name))
    assert cfg.reward.functions and cfg.rollout.batch_size * cfg.rollout.group_size % cfg.algo.mini_batch_size == 0


def test_overlong_penalty_hand_numbers():
    # L_max = 10, buffer 4: free up to 6 tokens, then −(|y| − 6)/4 · 0.5
    np.testing.assert_allclose(overlong_penalty(np.array([3, 6, 7, 8, 10]), 10, 4, 0.5),
                               [0, 0, -0.125, -0.25, -0.5])
    assert not overlong_penalty(np.array([10, 10]), 10, 0).any()


def test_concat_groups_left_pads_the_narrower_prompts():
    def part(width, value):
        r = 2
        return GroupBatch(np.full((r, width + 3), value, np.int32), np.ones((r, width + 3), np.int32),
                          np.ones((r, 3), np.float32), np.zeros((r, 3), np.float32), np.zeros((r, 3), np.float32),
                          np.full(r, value, np.float32), np.zeros((r, 3), np.float32))
    out = concat_groups([part(2, 7), part(4, 9)], pad_id=0)
    assert out.input_ids.shape == (4, 7) and out.scores.tolist() == [7, 7, 9, 9]
    assert out.input_ids[0].tolist() == [0, 0, 7, 7, 7, 7, 7] and out.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]


# ------------------------------------------------------------------ resume

def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(run, world, tmp_path):
    full, full_rows, full_dir = run
    run_dir = tmp_path / "resumed"
    shutil.copytree(full_dir, run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["latest", "step_00000006", "step_00000012"]
    shutil.rmtree(ckpts / "step_00000012")
    (ckpts / "latest").write_text("step_00000006")
    trainer = GRPOTrainer(grpo_config(world, run_dir))
    trainer.train(resume=str(run_dir))
    rows = read_metrics(str(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, ITERATIONS + 1))
    for a, b in zip(full_rows[6:], rows[6:]):
        for key, value in a.items():
            if not key.startswith(("time_", "gen_tok")):
                assert b[key] == pytest.approx(value, abs=1e-5), (a["step"], key)
    for (name, p), (_, q) in zip(trainer.actor.parameters_and_names(), full.actor.parameters_and_names()):
        np.testing.assert_allclose(p.asnumpy(), q.asnumpy(), atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(world, tmp_path):
    """`mindrlhf grpo` SIGKILLed after a mid-run checkpoint and resumed ends bit for bit where an uninterrupted
    run does: weights, and every metric of every iteration (rollouts are seeded by the iteration, the prompt order
    and the optimizer come back from the checkpoint)."""
    root, _ = world
    args = ["grpo", f"policy={root / 'policy'}", f"data.prompts={root / 'prompts.jsonl'}", "progress=false",
            f"algo.iterations={STEPS}", f"rollout.batch_size={B}", f"rollout.group_size={G}",
            f"rollout.max_new_tokens={N}", "algo.mini_batch_size=32", "algo.epochs=1", "optim.lr=1e-2",
            "reward.functions=[mindrlhf.rewards:length_penalty]", f"save_every={SAVE_EVERY}", "keep_checkpoints=2"]
    run_cli(args, tmp_path / "whole")
    step = kill_after_a_checkpoint(args, tmp_path / "killed")
    assert SAVE_EVERY <= step < STEPS, f"the run was not killed mid-way (latest checkpoint {step})"
    assert not (tmp_path / "killed" / "model").exists()
    run_cli(["grpo", f"--resume={tmp_path / 'killed'}", *args[1:]], tmp_path / "killed")
    same_run(tmp_path / "whole", tmp_path / "killed")
