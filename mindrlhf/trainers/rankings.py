"""Rankings for the reward model: sample K responses per prompt from the SFT policy, have the built-in
task's hidden labeler rank them (with its noise), write rankings JSONL (InstructGPT's comparison data).

Responses are drawn by temperature sampling with the compiled generation engine: all K samples of a
prompt sit in the same generation batch (rows p·K .. p·K+K−1) and differ by their random draws. The
labeler sees only prompt and response text; ``noise`` is the standard deviation of the Gaussian it adds
to each score before sorting, standing in for disagreement among human labelers.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from .. import runtime
from ..data.builtin.labeler import Labeler
from ..data.builtin.task import make_rankings
from ..data.builtin.world import load_world
from ..data.encoding import encode_prompts
from ..data.formats import load_prompts
from ..data.tokenizer import Tokenizer
from ..io import write_jsonl
from ..generation import generate_batches, generation_config, response_texts
from ..nn import CausalLM
from ..nn.generate import Generator
from ..runtime import RuntimeConfig


def sample_rankings(policy_dir: str, prompts_file: str, out: str, k: int = 4, noise: float = 0.5, seed: int = 0,
                    world_file: str = "", temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 48,
                    batch_prompts: int = 16, max_prompts: int = 0, prompt_bucket: int = 16,
                    runtime_cfg: Optional[RuntimeConfig] = None) -> dict:
    """Sample ``k`` responses per prompt from the policy in ``policy_dir`` (an SFT output folder), rank
    them with the built-in labeler of ``world_file`` (default: ``world.json`` beside the prompts), and
    write the rankings to ``out``. Returns a summary: prompts, rankings written, prompts dropped (fewer
    than 2 distinct non-empty responses) and the labeler's mean score of the samples."""
    if k < 2:
        raise ValueError(f"sample_rankings: k={k}; a ranking needs at least 2 responses per prompt")
    if noise < 0:
        raise ValueError(f"sample_rankings: noise={noise}; the labeler's noise is a standard deviation, >= 0")
    world_file = world_file or os.path.join(os.path.dirname(os.path.abspath(prompts_file)), "world.json")
    if not os.path.isfile(world_file):
        raise FileNotFoundError(f"{world_file}: the built-in task's world.json (the labeler's ground truth) was not "
                                "found; pass world_file=/--world, or keep the prompts next to the files "
                                "`mindrlhf data builtin` writes")
    runtime.setup(runtime_cfg or RuntimeConfig(seed=seed))
    tokenizer = Tokenizer.load(policy_dir)
    model = CausalLM.from_pretrained(policy_dir)
    limit = model.config.max_position_embeddings - max_new_tokens
    records = load_prompts(prompts_file)
    if max_prompts:
        records = records[:max_prompts]
    encoded = encode_prompts(records, tokenizer, limit)
    # batch b holds batch_prompts prompts × k rows and draws with seed + b; each prompt width compiles its own graph
    config = generation_config(tokenizer, max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                               seed=seed)
    responses = []
    for gen in generate_batches(Generator(model, prompt_bucket=prompt_bucket), [p.input_ids for p in encoded],
                                config, batch_prompts, samples_per_prompt=k):
        texts = [t.strip() for t in response_texts(tokenizer, gen)]
        responses += [texts[i : i + k] for i in range(0, len(texts), k)]
    labeler = Labeler(load_world(world_file))
    prompts = [p.text for p in encoded]
    rankings = make_rankings(prompts, responses, labeler, np.random.default_rng([seed, 1]), noise)
    write_jsonl(out, rankings)  # the pipeline takes an existing file as a done stage
    scores = [labeler.score(p, r) for p, rs in zip(prompts, responses) for r in rs]
    return {"prompts": len(prompts), "rankings": len(rankings), "dropped": len(prompts) - len(rankings),
            "skipped_prompts": encoded.skipped, "mean_score": float(np.mean(scores)), "out": out}
