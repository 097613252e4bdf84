"""Reward model end to end on the built-in task: rankings → `mindrlhf rm` → held-out accuracy against the
labeler's noise-free order; and `mindrlhf data rankings` sampling from a policy folder."""
import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.config import load_config
from mindrlhf.data.builtin import Labeler, ideal_response, write_builtin_task
from mindrlhf.data.builtin.functions import rank
from mindrlhf.data.builtin.task import demonstration, prompt_text, sample_prompts
from mindrlhf.data.builtin.world import load_world
from mindrlhf.data.formats import load_rankings
from mindrlhf.io import write_jsonl
from mindrlhf.data.tokenizer import train_tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.artifacts import load_reward_model, read_stats
from mindrlhf.trainers.reward import RMConfig, train_rm
from mindrlhf.tasks import make_rankings

N_TRAIN, N_HELDOUT, K = 600, 150, 4
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "rm_builtin.yaml"
FILLER = " It is a very good movie and I am sure you will like it a lot."  # pushes past the 30-word limit


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    paths = write_builtin_task(str(root / "task"), seed=0)
    train_tokenizer(paths["corpus.txt"], 1000, str(root / "tok"))
    return root, paths, Labeler(load_world(paths["world.json"]))


def candidates(labeler, key, rng):
    """K responses of demonstration quality: the ideal answer, two demonstrations (of random kinds: full,
    terse, wrong genre, seen title, false detail) and a perturbed copy of one of them."""
    world, prompt = labeler.world, prompt_text(key)
    out = [ideal_response(labeler, prompt, rng), demonstration(world, key, rng), demonstration(world, key, rng)]
    base, kind = out[int(rng.integers(1, 3))], int(rng.integers(3))
    other = world.movies[int(rng.integers(len(world.movies)))].title
    out.append(["I am not sure, maybe something else.", base + f" Or try \"{other}\".", base + FILLER][kind])
    return [out[i] for i in rng.permutation(K)]


def write_rankings(labeler, world_file, out_dir):
    """Training rankings by the NOISY labeler (noise 0.5); held-out rankings in its noise-free order,
    one response per distinct score (tied pairs have no right answer)."""
    rng = np.random.default_rng(0)
    keys = sample_prompts(labeler.world, rng, N_TRAIN, heldout=False)
    train = make_rankings([prompt_text(k) for k in keys], [candidates(labeler, k, rng) for k in keys],
                          functools.partial(rank, world=world_file), "rank", rng, noise=0.5)
    heldout = []
    for key in sample_prompts(labeler.world, rng, N_HELDOUT, heldout=True):
        prompt = prompt_text(key)
        by_score = {}
        for r in candidates(labeler, key, rng):
            by_score.setdefault(labeler.score(prompt, r), r)
        if len(by_score) >= 2:
            responses = list(by_score.values())
            heldout.append({"prompt": prompt, "responses": responses,
                            "ranking": labeler.rank(prompt, responses, rng, noise=0.0)})
    write_jsonl(str(out_dir / "train.jsonl"), train)
    write_jsonl(str(out_dir / "heldout.jsonl"), heldout)
    return len(train), len(heldout)


@pytest.mark.slow
def test_reward_model_ranks_heldout_pairs_like_the_noise_free_labeler(task, capsys):
    root, paths, labeler = task
    n_train, n_heldout = write_rankings(labeler, paths["world.json"], root)
    assert n_train == N_TRAIN and n_heldout > 100
    cfg = load_config(RMConfig, str(CONFIG), [
        f"data.train={root / 'train.jsonl'}", f"data.eval={root / 'heldout.jsonl'}", f"tokenizer={root / 'tok'}",
        "model=tiny", f"out_dir={root / 'rm'}", "train.progress=false", "train.epochs=1"])
    start = time.perf_counter()
    final = train_rm(cfg)
    seconds = time.perf_counter() - start
    stats = read_stats(str(root / "rm" / "model"))
    with capsys.disabled():  # the measured numbers belong in the test log
        print(f"\n[rm e2e] {n_train} train / {n_heldout} held-out rankings: accuracy {stats['accuracy']:.3f}, "
              f"mean margin {stats['mean_margin']:.3f}, train {seconds:.0f}s")
    assert stats["accuracy"] >= 0.75, stats
    assert stats["mean_margin"] > 0 and stats["reward_std"] > 0
    assert final["eval_accuracy"] == pytest.approx(stats["accuracy"])
    rows = read_metrics(str(root / "rm" / "metrics.jsonl"))
    assert rows[-1]["prompt_per_s"] > 0 and 0 <= rows[-1]["accuracy"] <= 1

    # `mindrlhf eval rm --write-stats` reloads the exported folder and gets the same numbers
    capsys.readouterr()
    assert main(["eval", "rm", "--model", str(root / "rm" / "model"), "--data", str(root / "heldout.jsonl"),
                 "--write-stats"]) == 0
    assert "accuracy=" in capsys.readouterr().out
    again = read_stats(str(root / "rm" / "model"))
    assert again["accuracy"] == pytest.approx(stats["accuracy"], abs=1e-6)
    assert again["reward_mean"] == pytest.approx(stats["reward_mean"], abs=1e-4)
    assert load_reward_model(str(root / "rm" / "model")).trunk.config.hidden_size == 64


@pytest.mark.slow
def test_data_rankings_samples_k_responses_and_ranks_them_with_the_labeler(task, tmp_path):
    root, paths, labeler = task
    from mindrlhf.data.tokenizer import Tokenizer

    tok = Tokenizer.load(str(root / "tok"))
    policy = CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size))  # any policy folder will do
    policy.save_pretrained(str(tmp_path / "policy"))
    tok.save(str(tmp_path / "policy"))
    out = tmp_path / "rankings.jsonl"
    args = ["data", "rankings", "--policy", str(tmp_path / "policy"), "--prompts", paths["prompts.jsonl"],
            "--k", "3", "--out", str(out), "--noise", "0", "--max-prompts", "12", "--max-new-tokens", "16",
            "--labeler", "mindrlhf.data.builtin.functions:rank", "--labeler-kwargs", f"{{world: {paths['world.json']}}}"]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rankings = load_rankings(str(out))  # valid rankings file
    assert 1 <= len(rankings) <= 12 and all(2 <= len(r.responses) <= 3 for r in rankings)
    prompts = [json.loads(line)["prompt"] for line in open(paths["prompts.jsonl"])][:12]
    assert all(r.prompt in prompts for r in rankings)
    for r in rankings:  # noise 0: best first by the labeler's score
        scores = [labeler.score(r.prompt, y) for y in r.responses]
        assert scores == sorted(scores, reverse=True)
        assert r.true_scores is None
    assert main(args) == 0  # same seed, same file
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    # one prompt width for every batch (one compiled graph), smaller batches: the same prompts, ranked
    assert main(args + ["--prompt-bucket", "64", "--batch-prompts", "4"]) == 0
    assert [r.prompt for r in load_rankings(str(out))] == [r.prompt for r in rankings]
    # with the judge as scorer each line keeps the noise-free scores of its responses; nothing else changes
    assert main(args + ["--scorer", "mindrlhf.data.builtin.functions:judge",
                        "--scorer-kwargs", f"{{world: {paths['world.json']}}}"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in x.items() if k != "true_scores"} for x in scored] == lines
    assert all(x["true_scores"] == [labeler.score(x["prompt"], y) for y in x["responses"]] for x in scored)
