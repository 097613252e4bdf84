"""Stage 2, the reward model: learn r(x, y) from rankings of K responses per prompt (InstructGPT step 2).

    loss = 1/N · Σ_p  1/C(K_p, 2) · Σ_{i<j}  −log σ(r(x_p, y_{p,i}) − r(x_p, y_{p,j}) − margin)

with each prompt's responses ordered best first and N the global number of prompts in the batch.
All K responses of a prompt go through the model in one forward pass (rows p·K .. p·K+K−1), so every
one of the C(K, 2) comparisons costs no extra forward (Ouyang et al. 2022, §3.5). N is passed into the
compiled step, so micro-batches and ranks add up to the full batch's gradient.

The product, ``out_dir/model/``: the trunk as a HuggingFace folder, its tokenizer, the scalar head in
``reward_head.safetensors`` and ``rm_stats.json`` (held-out accuracy, mean margin, and the reward's mean
and std, which PPO uses to normalise rewards). :func:`load_reward_model` reads it back.
With ``lora.enabled`` the trunk trains through adapters only (the head trains in full); ``model/``
holds the merged trunk and ``lora_adapters.safetensors``, as SFT writes them.

With ``ensemble.size`` M > 1 the head has M outputs on the one trunk (one compiled graph: an ensemble
costs a head, not a model), member m trained on its own bootstrap resample of the training rankings,
drawn with the run's seed: prompt p weighs w_{p,m}, the times the resample drew it, and

    loss = 1/(M·N) · Σ_m Σ_p  w_{p,m} · ℓ_{p,m}          (ℓ_{p,m}: member m's ranking loss on prompt p)

The exported model scores mean_m r_m − k·std_m r_m (``ensemble.k``; :class:`~mindrlhf.roles.RewardModel`),
and ``rm_stats.json`` describes that score, the one PPO and GRPO receive.
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import runtime
from ..algos import pairwise_accuracy, prompt_ranking_losses, ranking_loss
from ..config import field, require
from ..data.batching import ranking_batch
from ..data.encoding import encode_rankings
from ..data.formats import DataError, load_rankings
from ..data.tokenizer import Tokenizer
from ..nn.lora import LoRAConfig, TrainableParams
from ..roles import RewardModel, load_lm
from ..runtime import RuntimeConfig
from .artifacts import export_reward_model, load_reward_model, resolve_tokenizer, write_stats
from .loop import prepare_run_dir, run_loop
from .step import OptimConfig, Updater
from .supervised import DataConfig, LoopConfig, SupervisedStage, split_heldout, with_dropout

@dataclasses.dataclass
class RMDataConfig(DataConfig):
    train: str = field("", "rankings JSONL (or .mindrecord): K >= 2 responses per prompt and their order")
    eval: str = field("", "held-out rankings; empty = hold out eval_fraction of train")
    margin: float = field(0.0, "a pair is only won once r_better − r_worse exceeds this (Llama 2's margin); "
                               "0 = InstructGPT's loss")

    def validate(self):
        require(bool(self.train), "train", "set the rankings file, e.g. data.train=rankings.jsonl "
                                                "(make one with `mindrlhf data rankings`)")
        super().validate()
        require(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")


@dataclasses.dataclass
class EnsembleConfig:
    size: int = field(1, "reward heads on the one trunk, each trained on its own bootstrap resample of the rankings; "
                         "1 = a single model on all of them")
    k: float = field(1.0, "an ensemble scores mean − k·std over its heads, a conservative reward that curbs "
                          "over-optimisation (Coste et al. 2024); stored in the model folder, which its user may "
                          "override")

    def validate(self):
        require(self.size >= 1, "size", f"must be >= 1 (1 = no ensemble), got {self.size}")
        require(self.k >= 0, "k", f"must be >= 0 (0 = the members' mean), got {self.k}")


@dataclasses.dataclass
class RMLoopConfig(LoopConfig):
    # Counted in prompts: each prompt brings all its K responses into the same forward pass.
    batch_size: int = field(16, "global batch size in PROMPTS per optimizer step (each with its K responses)")
    micro_batch_size: int = field(0, "prompts per forward pass on one rank; 0 = the whole per-rank batch")


@dataclasses.dataclass
class RMConfig:
    # What the checkpoints' shapes and the data order were made with; a resumed run may not change them.
    fixed_on_resume: ClassVar[tuple] = ("model", "lora.enabled", "lora.rank", "lora.targets", "data.max_length",
                                        "data.chat_template", "train.batch_size", "ensemble.size")

    model: str = field("runs/sft/model", "SFT output folder (or HuggingFace folder, or preset) the trunk starts from")
    tokenizer: str = field("", "tokenizer folder; empty = the model folder's")
    lora: LoRAConfig = field(LoRAConfig(enabled=False), "LoRA adapters on the trunk (off unless lora.enabled=true); "
                                                        "the scalar head always trains")
    out_dir: str = field("runs/rm", "run folder: checkpoints, metrics, plots and the final model/")
    data: RMDataConfig = field(RMDataConfig(), "rankings")
    # InstructGPT trains its RM for one epoch: more epochs overfit the correlated pairs of each prompt.
    train: RMLoopConfig = field(RMLoopConfig(), "batching, length and cadence of training")
    ensemble: EnsembleConfig = field(EnsembleConfig(), "several reward heads on bootstrap resamples, scored "
                                                       "mean − k·std")
    optim: OptimConfig = field(OptimConfig(lr=1e-3, warmup_steps=10), "AdamW and its schedule")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")


class RMLoss(nn.Cell):
    """(input_ids, attention_mask [P·K, T], last_index [P·K], k_mask [P, K], normalizer []) → (loss, aux).

    loss = ranking_loss(r [P, K]) · n / normalizer, where n is the number of prompts with >= 2
    responses: ranking_loss averages over those prompts, so times n it is their sum, and the sum over
    micro-batches and ranks divided by the global prompt count is the full batch's mean.
    aux = [Σ_p pairwise accuracy_p, n] for the train-accuracy metric.
    """

    def __init__(self, reward_model: RewardModel, margin: float = 0.0):
        super().__init__(auto_prefix=False)
        self.reward_model = reward_model
        self.margin = float(margin)

    def construct(self, input_ids, attention_mask, last_index, k_mask, normalizer):
        rewards = self.reward_model(input_ids, attention_mask, last_index).reshape(k_mask.shape)  # [P, K]
        ranked = (ops.reduce_sum(k_mask, 1) >= 2).astype(ms.float32)
        n = ops.reduce_sum(ranked)
        loss = ranking_loss(rewards, k_mask, self.margin) * n / normalizer
        return loss, ops.stack((pairwise_accuracy(rewards, k_mask) * n, n))


class EnsembleRMLoss(nn.Cell):
    """(input_ids, attention_mask [P·K, T], last_index [P·K], k_mask [P, K], weights [P, M], normalizer []) →
    (loss, aux).

    loss = Σ_m Σ_p weights[p, m] · ℓ_{p,m} / (M · normalizer), ℓ_{p,m} = member m's ranking loss on prompt p
    (:func:`~mindrlhf.algos.prompt_ranking_losses`); weights[p, m] is how many times member m's bootstrap
    resample drew prompt p, so a resample's mean weight is 1 and the loss has the scale of :class:`RMLoss`.
    aux = [Σ_p pairwise accuracy_p of the members' mean score, n], as RMLoss's.
    """

    def __init__(self, reward_model: RewardModel, margin: float = 0.0):
        super().__init__(auto_prefix=False)
        self.reward_model = reward_model
        self.margin = float(margin)

    def construct(self, input_ids, attention_mask, last_index, k_mask, weights, normalizer):
        members = self.reward_model.member_scores(input_ids, attention_mask, last_index)  # [P·K, M]
        p, k = k_mask.shape
        m = members.shape[-1]
        per_member = members.reshape(p, k, m).transpose(2, 0, 1).reshape(m * p, k)  # row m·P + p
        losses = prompt_ranking_losses(per_member, ops.tile(k_mask, (m, 1)), self.margin).reshape(m, p)
        loss = ops.reduce_sum(losses * weights.transpose(1, 0)) / (m * normalizer)
        ranked = (ops.reduce_sum(k_mask, 1) >= 2).astype(ms.float32)
        n = ops.reduce_sum(ranked)
        return loss, ops.stack((pairwise_accuracy(members.mean(-1).reshape(p, k), k_mask) * n, n))


@dataclasses.dataclass(frozen=True)
class ResampledRanking:
    """A training ranking and how many times each ensemble member's bootstrap resample drew it."""

    sequences: tuple  # the EncodedRanking's, best first
    weights: tuple  # [M] counts


def bootstrap_counts(n_records: int, members: int, seed: int) -> np.ndarray:
    """[n_records, members] int: column m counts how often each record is drawn when n_records records are
    drawn with replacement (member m's bootstrap resample, seeded by ``[seed, m]``)."""
    return np.stack([np.bincount(np.random.default_rng([seed, m]).integers(0, n_records, n_records),
                                 minlength=n_records) for m in range(members)], axis=1)


def batch_tensors(items, pad_id: int, k: int, pad_multiple: int, max_length: int, normalizer: float):
    """The loss cell's inputs for encoded rankings ``items``, every prompt padded to ``k`` responses."""
    b = ranking_batch(items, pad_id, k, pad_multiple, max_length)
    return (ms.Tensor(b["input_ids"], ms.int32), ms.Tensor(b["attention_mask"], ms.int32),
            ms.Tensor(b["last_index"], ms.int32), ms.Tensor(b["k_mask"], ms.float32),
            ms.Tensor(normalizer, ms.float32))


def ensemble_batch_tensors(items, pad_id: int, k: int, pad_multiple: int, max_length: int, normalizer: float):
    """:class:`EnsembleRMLoss`'s inputs for :class:`ResampledRanking` items: :func:`batch_tensors` with the
    resample weights [P, M] before the normalizer."""
    *tensors, norm = batch_tensors(items, pad_id, k, pad_multiple, max_length, normalizer)
    return (*tensors, ms.Tensor(np.array([r.weights for r in items], np.float32)), norm)


def encode_rankings_file(path: str, tokenizer, max_length: int, skip_invalid: bool = False,
                         chat_template: bool = True):
    """Load, validate and encode a rankings file; errors name file:line (see mindrlhf.data.formats)."""
    encoded = encode_rankings(load_rankings(path, skip_invalid), tokenizer, max_length, skip_invalid, chat_template)
    if encoded.skipped:
        print(f"[rm] {path}: skipped {encoded.skipped} invalid rankings; first: {encoded.skip_reasons[:1]}")
    return encoded


# ------------------------------------------------------------------------------------ evaluation


def score_rankings(reward_model, records, pad_id: int, k: int, batch_size: int, pad_multiple: int,
                   max_length: int):
    """r(x, y) for every response of ``records``: (rewards [N, k], k_mask [N, k]) as numpy.

    The last chunk is filled up with copies of the first record (dropped afterwards), so every forward
    pass has the same number of rows and only the length buckets can trigger a compile.
    """
    rewards, masks = [], []
    for start in range(0, len(records), batch_size):
        chunk = list(records[start : start + batch_size])
        real = len(chunk)
        chunk += [records[0]] * (batch_size - real)
        ids, attention, last, k_mask, _ = batch_tensors(chunk, pad_id, k, pad_multiple, max_length, 1.0)
        r = reward_model(ids, attention, last).asnumpy().reshape(batch_size, k)
        rewards.append(r[:real])
        masks.append(k_mask.asnumpy()[:real])
    return np.concatenate(rewards), np.concatenate(masks)


def ranking_stats(rewards: np.ndarray, k_mask: np.ndarray, margin: float = 0.0) -> dict:
    """Held-out quality of a reward model from its rewards [N, K] (best first) and k_mask [N, K].

    accuracy    = pairwise_accuracy (per prompt, then over prompts), ties count as wrong
    mean_margin = mean_p mean_{i<j} (r_i − r_j): how far the better response is ahead, on average
    loss        = ranking_loss (the training objective, for comparison with the train curve)
    reward_mean, reward_std = moments of r over every real response (PPO normalises rewards by them)
    """
    r, m = ms.Tensor(rewards, ms.float32), ms.Tensor(k_mask, ms.float32)
    valid = k_mask > 0
    gaps = []
    for row, keep in zip(rewards, valid):
        kept = row[keep]
        i, j = np.triu_indices(len(kept), 1)
        if len(i):
            gaps.append(float(np.mean(kept[i] - kept[j])))
    flat = rewards[valid].astype(np.float64)
    return {"accuracy": float(pairwise_accuracy(r, m).asnumpy()),
            "mean_margin": float(np.mean(gaps)) if gaps else 0.0,
            "loss": float(ranking_loss(r, m, margin).asnumpy()),
            "reward_mean": float(flat.mean()), "reward_std": float(flat.std()),
            "prompts": int(len(rewards)), "pairs": int(sum(n * (n - 1) // 2 for n in valid.sum(1)))}


def labeler_agreement(rewards: np.ndarray, true_scores: np.ndarray, k_mask: np.ndarray) -> dict:
    """The reward model against the labeler's noise-free scores, from rewards, true_scores and k_mask [N, K]
    (each row's responses best first by the noisy ranking the model trained on).

    A pair of responses counts 1 when the reward model orders it as the true scores do, 0 when not (a tie
    of the reward model is wrong, as in ``accuracy``), and ½ when the true scores tie (either order is the
    labeler's). Means per prompt, then over prompts, as ``accuracy``:

    labeler_accuracy          every pair
    labeler_accuracy_decisive the pairs whose true scores differ (prompts without one drop out)
    noisy_ranking_accuracy    how often the noisy ranking (the model's training target) orders those pairs
                              as the true scores do: how much of the truth the labeler's noise leaves
    """
    every, decisive, noisy, n_decisive = [], [], [], 0
    for r, t, keep in zip(rewards, true_scores, k_mask > 0):
        r, t = r[keep].astype(np.float64), t[keep].astype(np.float64)
        i, j = np.triu_indices(len(r), 1)  # slot i is ranked above slot j
        if not len(i):
            continue
        true_order, model_order = np.sign(t[i] - t[j]), np.sign(r[i] - r[j])
        hit = np.where(true_order == 0, 0.5, (model_order == true_order).astype(np.float64))
        every.append(hit.mean())
        differ = true_order != 0
        if differ.any():
            decisive.append(hit[differ].mean())
            noisy.append(np.mean(true_order[differ] > 0))
            n_decisive += int(differ.sum())
    nan = float("nan")
    return {"labeler_accuracy": float(np.mean(every)) if every else nan,
            "labeler_accuracy_decisive": float(np.mean(decisive)) if decisive else nan,
            "noisy_ranking_accuracy": float(np.mean(noisy)) if noisy else nan,
            "labeler_decisive_pairs": n_decisive}


# ------------------------------------------------------------------------------------ training


def train_rm(cfg: RMConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Train the reward model; write ``out_dir/model`` (see module docstring). Returns the final metrics."""
    rt = runtime.setup(cfg.runtime)
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.model)
    data = cfg.data

    def encode_file(path):
        return encode_rankings_file(path, tokenizer, data.max_length, data.skip_invalid, data.chat_template)

    train_set, eval_set = split_heldout(encode_file(data.train), data, cfg.runtime.seed, encode_file)
    k = max(len(r.sequences) for r in train_set + eval_set)  # one K for every batch: fixed shapes

    members = cfg.ensemble.size
    reward_model = RewardModel(load_lm(cfg.model, tokenizer.vocab_size, lora=cfg.lora), members, cfg.ensemble.k)
    records, make_batch = train_set, batch_tensors
    loss_cell = RMLoss(reward_model, data.margin)
    if members > 1:
        counts = bootstrap_counts(len(train_set), members, cfg.runtime.seed)
        records = [ResampledRanking(r.sequences, tuple(c)) for r, c in zip(train_set, counts)]
        make_batch, loss_cell = ensemble_batch_tensors, EnsembleRMLoss(reward_model, data.margin)
    per_rank, n_micro = cfg.train.layout(rt.world_size)
    updater = Updater(loss_cell, reward_model.trainable_params(), cfg.optim,
                      cfg.train.total_steps(len(train_set)), accum_steps=n_micro)
    pad = tokenizer.pad_id
    micro = per_rank // n_micro

    def stats_on(records):
        rewards, k_mask = score_rankings(reward_model, records, pad, k, micro, data.pad_multiple, data.max_length)
        return ranking_stats(rewards, k_mask, data.margin)

    def evaluate():
        if not eval_set:
            return {}
        s = stats_on(eval_set)
        return {f"eval_{name}": s[name] for name in ("loss", "accuracy", "mean_margin", "reward_mean", "reward_std")}

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        evaluate = with_dropout(reward_model, evaluate)

    def export(run_dir):
        reward_model.set_train(False)
        model_dir = os.path.join(run_dir, "model")
        export_reward_model(reward_model, tokenizer, cfg, model_dir)
        stats = stats_on(eval_set or train_set)
        stats["reference"] = "held-out rankings" if eval_set else "training rankings (no held-out set)"
        if members > 1:
            stats["ensemble"] = {"size": members, "k": cfg.ensemble.k}
        write_stats(stats, model_dir)

    stage = SupervisedStage(
        records=records,
        make_batch=lambda items, norm: make_batch(items, pad, k, data.pad_multiple, data.max_length, norm),
        count=len,  # prompts: every ranking has K >= 2, so every one is a term of the loss
        updater=updater,
        cells={"model": TrainableParams(reward_model)},
        loop=cfg.train,
        seed=cfg.runtime.seed,
        evaluate=evaluate,
        describe_aux=_train_accuracy,
        unit="prompt",
        export=export,
        name="rm",
    )
    return run_loop(stage, cfg.train, cfg.out_dir, resume, config=cfg)


def _train_accuracy(auxes) -> dict:
    total = np.sum(np.stack(auxes), axis=0)  # [Σ accuracy, prompts] over the micro-batches
    return {"accuracy": float(total[0] / max(total[1], 1.0))}


def evaluate_rm(model_dir: str, rankings_file: str, batch_size: int = 16, max_length: int = 0,
                write: bool = False, chat_template: bool = True, runtime_cfg: Optional[RuntimeConfig] = None,
                against_labeler: bool = False, ensemble_k: Optional[float] = None) -> dict:
    """Accuracy, mean margin and reward moments of the reward model in ``model_dir`` on ``rankings_file``;
    with ``against_labeler`` also :func:`labeler_agreement` with the file's ``true_scores`` (every line must
    have them: ``mindrlhf data rankings --scorer``). The model folder is left as it is unless ``write``: then
    the stats replace its ``rm_stats.json``, the mean and std PPO normalises scores with. ``max_length``
    0 = the model's context; ``chat_template`` as the model was trained (its ``data.chat_template``);
    ``ensemble_k``: an ensemble's k in place of the stored one (0 = the members' mean)."""
    if write and ensemble_k is not None:
        raise ValueError("eval rm: --write-stats with --ensemble-k would store the stats of another score than the "
                         "one the folder gives (its stored k); drop one of them")
    rankings = load_rankings(rankings_file)
    if against_labeler:
        missing = [r.where for r in rankings if r.true_scores is None]
        if missing:
            raise DataError(f"{missing[0]}: no 'true_scores' ({len(missing)} of {len(rankings)} lines lack them); "
                            "--against-labeler needs the labeler's noise-free scores: make the file with "
                            "`mindrlhf data rankings --scorer MODULE:FUNCTION`")
    if runtime_cfg is not None:
        runtime.setup(runtime_cfg)
    reward_model = load_reward_model(model_dir, k=ensemble_k)
    tokenizer = Tokenizer.load(model_dir)
    max_length = max_length or reward_model.trunk.config.max_position_embeddings
    records = encode_rankings(rankings, tokenizer, max_length, chat_template=chat_template)  # one per line
    k = max(len(r.sequences) for r in records)
    rewards, k_mask = score_rankings(reward_model, records, tokenizer.pad_id, k, batch_size, 32, max_length)
    stats = dict(ranking_stats(rewards, k_mask), reference=os.path.abspath(rankings_file))
    if against_labeler:
        true_scores = np.zeros_like(rewards, np.float64)
        for row, r in zip(true_scores, rankings):
            row[: len(r.true_scores)] = r.true_scores
        stats.update(labeler_agreement(rewards, true_scores, k_mask))
    if write:
        write_stats(stats, model_dir)
    return stats
