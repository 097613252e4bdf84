"""Rankings for the reward model: sample K responses per prompt from the SFT policy, have a task's labeler
rank them, write rankings JSONL (InstructGPT's comparison data).

Responses are drawn by temperature sampling with the compiled generation engine: all K samples of a
prompt sit in the same generation batch (rows p·K .. p·K+K−1) and differ by their random draws (each row
draws its own). The labeler is a function named ``module:function`` (the contract: :mod:`mindrlhf.tasks`);
it sees the prompt and response texts and the prompts file's other fields. ``noise`` reaches it with a
seeded numpy Generator: the built-in labeler adds Gaussian noise of that standard deviation to each score
before sorting, standing in for disagreement among human labelers. With a ``scorer`` (a function of the
judge contract giving each answer's score without that noise, e.g. the task's judge when it is the
labeler's score) each line also keeps ``true_scores``, which ``mindrlhf eval rm --against-labeler``
measures a reward model against.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from .. import runtime
from ..config import field, require
from ..data.encoding import EncodedPrompt, encode_prompts
from ..data.formats import load_prompts
from ..data.tokenizer import Tokenizer
from ..io import write_jsonl
from ..generation import generate_batches, generation_config, response_texts
from ..nn import CausalLM
from ..nn.generate import GenerationConfig, Generator
from ..plugins import load_function, load_scorer
from ..runtime import DEVICES, RuntimeConfig
from ..tasks import make_rankings


@dataclasses.dataclass
class RankingsConfig:
    """How comparison data is sampled and labelled; the pipeline's ``rankings`` section."""

    k: int = field(4, "responses sampled per prompt and ranked (InstructGPT: 4 to 9)")
    noise: float = field(0.5, "labelers disagree: handed to the labeler (the built-in one adds Gaussian noise of "
                              "this std to each score)")
    max_prompts: int = field(0, "use only the first N prompts; 0 = all")
    temperature: float = field(1.0, "sampling temperature of the K responses")
    top_p: float = field(1.0, "nucleus mass of the sampling; 1 = off")
    max_new_tokens: int = field(48, "response length limit")
    batch_prompts: int = field(16, "prompts per generation batch (each brings k rows)")
    prompt_bucket: int = field(16, "prompts are left-padded to a multiple of this; each width compiles its own graph")

    def validate(self):
        require(self.k >= 2, "k", f"must be >= 2 (a ranking compares responses), got {self.k}")
        require(self.noise >= 0, "noise", f"must be >= 0 (a standard deviation), got {self.noise}")
        require(self.max_prompts >= 0, "max_prompts", f"must be >= 0 (0 = all), got {self.max_prompts}")
        require(self.temperature > 0, "temperature", f"must be > 0 (the responses are sampled), got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.batch_prompts >= 1, "batch_prompts", f"must be >= 1, got {self.batch_prompts}")
        require(self.prompt_bucket >= 1, "prompt_bucket", f"must be >= 1, got {self.prompt_bucket}")

    def sampling(self) -> dict:
        """These keys, as the keyword arguments of :func:`sample_rankings`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RankingsConfig)}


@dataclasses.dataclass
class RankingsCommandConfig(RankingsConfig):
    """`mindrlhf data rankings`: the policy, the files, the seed and the device, with the sampling keys."""

    policy: str = field("", "SFT output folder (model + tokenizer) the responses are sampled from")
    prompts: str = field("", "prompts JSONL; a line's other fields reach the labeler as columns")
    out: str = field("", "rankings JSONL to write")
    labeler: str = field("", "module:function (or file.py:function) ranking K answers; the contract is in "
                             "mindrlhf/tasks.py")
    labeler_kwargs: dict = field({}, "fixed keyword arguments of the labeler, e.g. {lexicon: words.json}")
    scorer: str = field("", "module:function (or file.py:function) scoring each answer without the labeler's noise "
                            "(the judge contract; a task whose judge is its labeler's score names its judge): "
                            "written as each line's true_scores, for `eval rm --against-labeler`; empty = none")
    scorer_kwargs: dict = field({}, "fixed keyword arguments of the scorer")
    chat_template: bool = field(True, "prompts through the tokenizer's chat template (off: plain continuation)")
    seed: int = field(0, "seed of the sampling and the labeler's noise")
    device: str = field("CPU", "device target: CPU, GPU or Ascend")

    def validate(self):
        super().validate()
        for key, example in (("policy", "runs/sft/model"), ("prompts", "prompts.jsonl"), ("out", "rankings.jsonl"),
                             ("labeler", "my_task.py:rank")):
            require(bool(getattr(self, key)), key, f"required, e.g. --{key} {example}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.device in DEVICES, "device", f"{self.device!r} is not one of {', '.join(DEVICES)}")
        require(not self.scorer_kwargs or bool(self.scorer), "scorer_kwargs", "given without a scorer")


def sample_responses(generator: Generator, tokenizer, prompts: Sequence[EncodedPrompt], config: GenerationConfig,
                     batch_prompts: int, k: int) -> List[List[str]]:
    """``k`` sampled responses to each of ``prompts`` (texts, stripped), prompt by prompt: call b of
    ``batch_prompts`` prompts × k rows draws with ``config.seed + b``."""
    responses = []
    for gen in generate_batches(generator, [p.input_ids for p in prompts], config, batch_prompts,
                                samples_per_prompt=k):
        texts = [t.strip() for t in response_texts(tokenizer, gen)]
        responses += [texts[i : i + k] for i in range(0, len(texts), k)]
    return responses


def sample_rankings(policy_dir: str, prompts_file: str, out: str, labeler: str, labeler_kwargs: Optional[dict] = None,
                    k: int = 4, noise: float = 0.5, seed: int = 0, temperature: float = 1.0, top_p: float = 1.0,
                    max_new_tokens: int = 48, batch_prompts: int = 16, max_prompts: int = 0, prompt_bucket: int = 16,
                    chat_template: bool = True, runtime_cfg: Optional[RuntimeConfig] = None, scorer: str = "",
                    scorer_kwargs: Optional[dict] = None) -> dict:
    """Sample ``k`` responses per prompt from the policy in ``policy_dir`` (an SFT output folder), rank
    them with ``labeler`` (``module:function``, with ``labeler_kwargs`` bound; its rng is seeded with
    ``[seed, 1]``), and write the rankings to ``out``; with ``scorer`` (``module:function``, the judge
    contract) each line keeps its responses' noise-free ``true_scores``. Returns a summary: prompts, rankings
    written, prompts dropped (fewer than 2 distinct non-empty responses), prompts skipped as too long."""
    if k < 2:
        raise ValueError(f"sample_rankings: k={k}; a ranking needs at least 2 responses per prompt")
    if noise < 0:
        raise ValueError(f"sample_rankings: noise={noise}; the labeler's noise is a standard deviation, >= 0")
    rank = load_function(labeler, "labeler", labeler_kwargs)  # a typo fails before the model is loaded
    true_scores = load_scorer(scorer, "scorer", scorer_kwargs, what="scorer") if scorer else None
    runtime.setup(runtime_cfg or RuntimeConfig(seed=seed))
    tokenizer = Tokenizer.load(policy_dir)
    model = CausalLM.from_pretrained(policy_dir)
    limit = model.config.max_position_embeddings - max_new_tokens
    records = load_prompts(prompts_file)
    if max_prompts:
        records = records[:max_prompts]
    encoded = encode_prompts(records, tokenizer, limit, chat_template=chat_template)
    # batch b holds batch_prompts prompts × k rows and draws with seed + b; each prompt width compiles its own graph
    config = generation_config(tokenizer, max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                               seed=seed)
    responses = sample_responses(Generator(model, prompt_bucket=prompt_bucket), tokenizer, encoded, config,
                                 batch_prompts, k)
    rankings = make_rankings([p.text for p in encoded], responses, rank, labeler, np.random.default_rng([seed, 1]),
                             noise, [p.meta for p in encoded], true_scores)
    write_jsonl(out, rankings)  # the pipeline takes an existing file as a done stage
    return {"prompts": len(encoded), "rankings": len(rankings), "dropped": len(encoded) - len(rankings),
            "skipped_prompts": encoded.skipped, "out": out}
