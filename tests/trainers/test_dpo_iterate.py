"""Iterated DPO on the toy task: round 2 trains on the policy's own samples, ranked by a labeler named by its
file (or by a reward model), tied to the same reference; a run resumed inside round 2 ends with the same
weights, reusing the rankings already drawn; config errors name their key."""
import json
import re
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import load_file

from mindrlhf.config import ConfigError, load_config, load_run_config, save_config
from mindrlhf.data.encoding import encode_prompts, encode_rankings
from mindrlhf.data.formats import load_prompts, load_rankings
from mindrlhf.data.pairs import rankings_to_pairs
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.io import iter_jsonl
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.generate import Generator
from mindrlhf.nn.lora import TrainableParams
from mindrlhf.plugins import load_function
from mindrlhf.roles import RewardModel
from mindrlhf.tasks import make_rankings
from mindrlhf.trainers.artifacts import export_reward_model
from mindrlhf.trainers.checkpoint import load_cell_weights
from mindrlhf.trainers.dpo import DPOConfig, train_dpo
from mindrlhf.trainers.dpo_reference import REFERENCE_FILE, reference_pass
from mindrlhf.trainers.dpo_rounds import RoundSampler, round_generation, round_prompts
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.rankings import sample_responses

from .reversal_labeler import score
from .test_dpo import dpo_config
from .test_kill_resume import SAVE_EVERY, STEPS, kill_after_a_checkpoint, run, same_run

LABELER = f"{Path(__file__).parent / 'reversal_labeler.py'}:rank"
ROUND1, ROUND2, PER_ROUND, K, NEW_TOKENS = 4, 4, 16, 4, 12


@pytest.fixture(scope="module")
def prompts(dpo_toy):
    """40 prompts of the toy task, each with a column the labeler receives."""
    path = dpo_toy / "iterate_prompts.jsonl"
    demos = [json.loads(line) for line in (dpo_toy / "rankings.jsonl").read_text().splitlines()][:40]
    path.write_text("".join(json.dumps({"prompt": d["prompt"], "words": 3}) + "\n" for d in demos))
    return path


def iterate_args(prompts, *extra):
    return ["iterate.rounds=2", f"iterate.prompts={prompts}", f"iterate.prompts_per_round={PER_ROUND}",
            f"iterate.k={K}", "iterate.noise=0", f"iterate.labeler={LABELER}", f"iterate.max_new_tokens={NEW_TOKENS}",
            "iterate.batch_prompts=8", f"iterate.steps={ROUND2}", f"train.max_steps={ROUND1}", "train.eval_every=0",
            "train.save_every=2", "train.keep_checkpoints=8", *extra]


@pytest.fixture(scope="module")
def iterated(dpo_toy, prompts, tmp_path_factory):
    """An uninterrupted two-round run: 4 steps on the toy rankings, then 4 on round 2's."""
    out = tmp_path_factory.mktemp("iterated") / "whole"
    train_dpo(dpo_config(dpo_toy, out, *iterate_args(prompts)))
    return out


def test_round_two_trains_on_the_policys_samples_ranked_by_the_labeler(iterated, dpo_toy, prompts):
    rows = read_metrics(str(iterated / "metrics.jsonl"))
    assert [r["round"] for r in rows] == [1] * ROUND1 + [2] * ROUND2
    assert [r["step"] for r in rows if "eval_loss" in r] == [ROUND1, ROUND1 + ROUND2]  # each round ends evaluated
    assert abs(rows[0]["rewards/chosen"]) < 1e-5 < abs(rows[ROUND1]["rewards/chosen"])  # round 2 starts moved away
    assert not (iterated / "round1_rankings.jsonl").exists()
    records = [value for _, value in iter_jsonl(iterated / "round2_rankings.jsonl")]
    assert 0 < len(records) <= PER_ROUND

    # the labeler's order: by its score, ties in sampling order
    for rec in records:
        scores = [score(rec["prompt"], r) for r in rec["responses"]]
        assert rec["ranking"] == sorted(range(len(scores)), key=lambda i: -scores[i])
    assert any(len(set(score(rec["prompt"], r) for r in rec["responses"])) > 1 for rec in records)

    # the policy at the end of round 1 (the checkpoint of step 4), loaded apart, draws the same answers
    sft = str(dpo_toy / "sft" / "model")
    tok, cfg = Tokenizer.load(sft), load_config(DPOConfig, str(iterated / "config.yaml"))
    policy = CausalLM.from_pretrained(sft)
    load_cell_weights(TrainableParams(policy), str(iterated / "checkpoints" / "step_00000004" / "model.safetensors"))
    encoded = encode_prompts(load_prompts(str(prompts)), tok, 48 - NEW_TOKENS)
    chosen = [encoded[i] for i in round_prompts(len(encoded), PER_ROUND, 2, cfg.runtime.seed)]
    answers = sample_responses(Generator(policy), tok, chosen, round_generation(cfg.iterate, tok, 2, cfg.runtime.seed),
                               8, K)
    expected = make_rankings([p.text for p in chosen], answers, load_function(LABELER, "labeler"), LABELER,
                             np.random.default_rng([cfg.runtime.seed, 1, 2]), 0.0, [p.meta for p in chosen])
    assert records == expected

    # the reference of round 2's pairs is the SFT model, not the policy that sampled them
    sequences, pairs, _ = rankings_to_pairs(encode_rankings(load_rankings(str(iterated / "round2_rankings.jsonl")),
                                                            tok, 48, skip_invalid=True), "all")
    with np.load(iterated / f"round2_{REFERENCE_FILE}") as stored:
        logps = stored["logps"]
    np.testing.assert_allclose(logps, reference_pass(CausalLM.from_pretrained(sft), sequences, tok.pad_id, 16, 32, 48),
                               rtol=1e-5)
    assert np.abs(logps - reference_pass(policy, sequences, tok.pad_id, 16, 32, 48)).max() > 1e-2

    # each round starts with a fresh optimizer: AdamW's step counter at step 6 is round 2's second step
    steps = {n: int(ms.load_checkpoint(str(iterated / "checkpoints" / f"step_{n:08d}" / "model.optim.ckpt"))
                    ["state_step"].asnumpy()) for n in (4, 6, 8)}
    assert steps == {4: 4, 6: 2, 8: 4}
    # checkpoints after sampling keep the parameter names of those before (a resumed run looks them up)
    names = {n: sorted(load_file(str(iterated / "checkpoints" / f"step_{n:08d}" / "model.safetensors")))
             for n in (4, 6, 8)}
    assert names[6] == names[8] == names[4] == sorted(n for n, _ in policy.parameters_and_names())


def test_a_run_resumed_inside_round_two_ends_with_the_same_weights(iterated, dpo_toy, prompts, tmp_path, capsys):
    out = tmp_path / "half"
    train_dpo(dpo_config(dpo_toy, out, *iterate_args(prompts, "iterate.steps=2")))  # stops after step 6 of 8
    drawn = (out / "round2_rankings.jsonl").stat().st_mtime_ns
    assert "sampling 4 answers to each of 16 prompts" in capsys.readouterr().out
    with pytest.raises(ValueError, match="in round 2 of iterated DPO; resume with iterate.rounds >= 2"):
        train_dpo(dpo_config(dpo_toy, out, *iterate_args(prompts, "iterate.rounds=1")), resume=str(out))
    capsys.readouterr()
    train_dpo(dpo_config(dpo_toy, out, *iterate_args(prompts)), resume=str(out))
    printed = capsys.readouterr().out
    assert "reading the rankings drawn before the run was resumed" in printed
    assert "resuming from the previous checkpoint" not in printed  # from step 6, inside round 2
    assert "sampling" not in printed and "reference log-probs" not in printed  # both read back from the run folder
    assert (out / "round2_rankings.jsonl").stat().st_mtime_ns == drawn
    whole, resumed = load_file(str(iterated / "model" / "model.safetensors")), load_file(str(out / "model" /
                                                                                           "model.safetensors"))
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
    losses = lambda path: [r["loss"] for r in read_metrics(str(path / "metrics.jsonl"))]  # noqa: E731
    assert losses(out) == losses(iterated)


def test_a_reward_model_ranks_the_samples_by_its_score(dpo_toy, prompts, tmp_path, capsys):
    """iterate.reward_model: each prompt's answers ordered by r(x, y), computed here one answer at a time."""
    sft = str(dpo_toy / "sft" / "model")
    tok = Tokenizer.load(sft)
    ms.set_seed(0)
    rm = RewardModel(CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, num_layers=1)))
    rng = np.random.default_rng(0)
    for p in rm.trainable_params():  # a head and trunk that give answers different scores
        p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    export_reward_model(rm, tok, DPOConfig(model=sft), str(tmp_path / "rm"))
    cfg = dpo_config(dpo_toy, tmp_path / "run", *iterate_args(prompts, "iterate.labeler=''",
                                                              f"iterate.reward_model={tmp_path / 'rm'}",
                                                              "iterate.prompts_per_round=4", "iterate.k=3"))
    sampler = RoundSampler(cfg.iterate, CausalLM.from_pretrained(sft), tok, cfg.data, str(tmp_path / "run"), 0, False)
    (tmp_path / "run").mkdir()
    records = sampler.rankings(2, resumed=False)
    assert (tmp_path / "run" / "round2_rankings.jsonl").is_file() and 0 < len(records) <= 4
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        for rec in records:  # responses best first
            scores = []
            for response in rec.responses:
                ids = ms.Tensor([tok.encode_prompt_response(rec.prompt, response)[0]], ms.int32)
                scores.append(float(rm(ids, ms.ops.ones_like(ids), ms.Tensor([ids.shape[1] - 1], ms.int32))[0]))
            assert scores == sorted(scores, reverse=True) and len(set(np.round(scores, 5))) == len(scores), scores
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("overrides, key", [
    (["iterate.rounds=0"], "iterate.rounds"),
    (["iterate.k=1"], "iterate.k"),
    (["iterate.top_p=0"], "iterate.top_p"),
    (["iterate.labeler_kwargs={world: w.json}"], "iterate.labeler_kwargs"),
    (["iterate.rounds=2", "iterate.labeler=m:rank"], "iterate.prompts"),
    (["iterate.rounds=2", "iterate.prompts=p.jsonl"], "iterate.labeler"),
    (["iterate.rounds=2", "iterate.prompts=p.jsonl", "iterate.labeler=m:rank", "iterate.reward_model=rm"],
     "iterate.reward_model"),
    (["iterate.rounds=2", "iterate.prompts=p.jsonl", "iterate.labeler=m:rank", "iterate.max_new_tokens=96"],
     "iterate.max_new_tokens"),
])
def test_config_errors_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: "):
        load_config(DPOConfig, None, ["data.train=r.jsonl", "data.max_length=96", *overrides])


def test_errors_found_when_the_stage_is_built_name_their_key(dpo_toy, prompts, tmp_path):
    for extra, key in ((["iterate.labeler=nowhere.py:rank"], "iterate.labeler: cannot import module 'nowhere.py'"),
                       (["iterate.prompts_per_round=41"], "iterate.prompts_per_round: 41 is more than the 40 prompts"),
                       (["iterate.labeler=''", f"iterate.reward_model={tmp_path / 'none'}"], "iterate.reward_model:")):
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
            train_dpo(dpo_config(dpo_toy, tmp_path / "run", *iterate_args(prompts, *extra)), overwrite=True)
    assert not (tmp_path / "run" / REFERENCE_FILE).exists()  # stopped before the reference pass
    (tmp_path / "run").mkdir(exist_ok=True)
    save_config(dpo_config(dpo_toy, tmp_path / "run", *iterate_args(prompts)), str(tmp_path / "run" / "config.yaml"))
    with pytest.raises(ConfigError, match=r"^iterate\.k: 4 in .*, 3 now"):  # the rankings on disk are of k = 4
        load_run_config(DPOConfig, None, ["iterate.k=3"], resume=str(tmp_path / "run"))


@pytest.mark.slow
def test_a_run_killed_inside_round_two_resumes_to_the_same_weights_and_metrics(dpo_toy, prompts, tmp_path):
    """A real `mindrlhf dpo` process SIGKILLed after a checkpoint of round 2 (steps 5..12), then resumed."""
    args = ["dpo", f"model={dpo_toy / 'sft' / 'model'}", f"data.train={dpo_toy / 'rankings.jsonl'}",
            "data.max_length=48", "train.batch_size=8", "train.log_every=1", "train.progress=false",
            "optim.warmup_steps=2", "optim.lr=1e-3",
            *iterate_args(prompts, f"iterate.steps={STEPS - 4}", f"train.save_every={SAVE_EVERY}",
                          "train.eval_every=4", "train.keep_checkpoints=2")]
    run(args, tmp_path / "whole")
    step = kill_after_a_checkpoint(args, tmp_path / "killed")
    assert 4 < step < STEPS, f"the run was not killed inside round 2 (latest checkpoint {step})"
    drawn = (tmp_path / "killed" / "round2_rankings.jsonl").stat().st_mtime_ns
    run(["dpo", f"--resume={tmp_path / 'killed'}", *args[1:]], tmp_path / "killed")
    assert (tmp_path / "killed" / "round2_rankings.jsonl").stat().st_mtime_ns == drawn  # reused, not redrawn
    same_run(tmp_path / "whole", tmp_path / "killed")
