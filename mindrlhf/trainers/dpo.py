"""Direct preference optimisation: train the policy on preference pairs, tied to a frozen reference.

    loss = 1/N · Σ_pairs  ℓ(h),   h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))

with ℓ the configured variant of ``mindrlhf.algos.dpo`` (``sigmoid``: −log σ(β h), Rafailov et al. 2023;
``ipo``, ``hinge``, and the reference-free ``simpo`` and ``orpo``), log-probs summed over each response's tokens
(prompt and padding excluded) and N the global number of pairs in the batch, passed into the compiled
step so micro-batches and ranks add up to the full batch's gradient.

The pairs come from the rankings the reward model reads: a K-way ranking gives every C(K, 2) pair or the
best against each other (``data.pairs``), a chosen/rejected line one pair. Both answers of a pair go
through the policy in one forward (rows 2p and 2p + 1). The reference's log-probs are computed before
training in one compiled pass over every sequence of the data (train and held-out), once per sequence
however many pairs share it, and kept in ``out_dir/reference_logps.npz`` for a resumed run
(:mod:`mindrlhf.trainers.dpo_reference`). The reference is the starting model: with ``lora.enabled`` the
policy's own base with the adapters off, without LoRA the policy before its first step (no second copy
either way); a ``reference`` folder other than ``model`` is loaded frozen for that one pass and released.

With ``iterate.rounds`` > 1 each round after the first trains on the current policy's own answers, ranked
(:mod:`mindrlhf.trainers.dpo_rounds`), tied to the same reference (``round{r}_reference_logps.npz``), as
a DPO run of its own from the last policy: fresh AdamW moments and the schedule from its start. Every
round ends with an evaluation and a checkpoint; the held-out pairs stay round 1's.

The metrics are TRL's: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (implicit
rewards β·(log π − log π_ref)), logps/chosen, logps/rejected, and ``eval_`` versions on held-out pairs
(and ``round`` when iterating). The product, ``out_dir/model/``, is a policy folder like SFT's.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import os
from typing import ClassVar, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import runtime
from ..algos import DPO_LOSSES, dpo_loss, is_reference_free, nll_weight
from ..config import field, require
from ..data.encoding import encode_rankings
from ..data.formats import load_rankings
from ..data.pairs import PAIR_MODES, pair_batch, rankings_to_pairs
from ..nn.lora import LoRAConfig, TrainableParams
from ..roles import adapted_copy, frozen, load_lm
from ..runtime import RuntimeConfig
from .artifacts import export_model, resolve_tokenizer
from .dpo_reference import REFERENCE_FILE, reference_pass, sequence_logps, stored_reference
from .dpo_rounds import IterateConfig, RoundPlan, RoundSampler, plan_rounds, remove_round_files
from .loop import prepare_run_dir, run_loop
from .step import OptimConfig, Updater
from .supervised import DataConfig, DataOrder, LoopConfig, SupervisedStage, split_heldout, with_dropout

@dataclasses.dataclass
class DPODataConfig(DataConfig):
    train: str = field("", "rankings JSONL (or .mindrecord): K >= 2 responses per prompt, best first, or "
                           "chosen/rejected lines")
    eval: str = field("", "held-out rankings; empty = hold out eval_fraction of train (whole rankings)")
    pairs: str = field("all", "pairs a K-way ranking gives: all = every C(K,2) better/worse pair, "
                              "best = the best response against each other one (K − 1)")

    def validate(self):
        require(bool(self.train), "train", "set the rankings file, e.g. data.train=rankings.jsonl "
                                                "(make one with `mindrlhf data rankings`)")
        super().validate()
        require(self.pairs in PAIR_MODES, "pairs", f"{self.pairs!r}: expected one of {', '.join(PAIR_MODES)}")


@dataclasses.dataclass
class DPOAlgoConfig:
    loss_type: str = field("sigmoid", f"the loss of h, from {DPO_LOSSES.names()}: sigmoid = DPO, ipo, hinge "
                                      "(SLiC), simpo and orpo (reference-free)")
    beta: float = field(0.1, "β: the KL tie to the reference (Rafailov et al. 2023; TRL's default 0.1); for "
                             "orpo the weight λ of the odds-ratio term (Hong et al. 2024 use 0.1)")
    label_smoothing: float = field(0.0, "ε of conservative DPO: the chance a label is flipped (sigmoid, simpo)")
    simpo_gamma: float = field(0.5, "SimPO's target margin γ in β·h − γ (TRL's CPOConfig default)")
    sft_coef: float = field(0.0, "RPO: weight of the chosen answer's NLL per token added to the loss "
                                 "(Pang et al. 2024 use 1.0); 0 = off")

    def validate(self):
        require(self.loss_type in DPO_LOSSES.names(), "loss_type",
                f"{self.loss_type!r}: expected one of {', '.join(DPO_LOSSES.names())}")
        require(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        require(0 <= self.label_smoothing < 0.5, "label_smoothing",
                f"must be in [0, 0.5), got {self.label_smoothing}")
        require(self.sft_coef >= 0, "sft_coef", f"must be >= 0, got {self.sft_coef}")


@dataclasses.dataclass
class DPOLoopConfig(LoopConfig):
    batch_size: int = field(16, "global batch size in PAIRS per optimizer step (each pair is two sequences)")
    micro_batch_size: int = field(0, "pairs per forward pass on one rank; 0 = the whole per-rank batch")


@dataclasses.dataclass
class DPOConfig:
    # What the checkpoints' shapes, the data order and the stored reference log-probs were made with.
    fixed_on_resume: ClassVar[tuple] = ("model", "reference", "lora.enabled", "lora.rank", "lora.targets",
                                        "data.max_length", "data.pairs", "train.batch_size")

    model: str = field("runs/sft/model", "the policy's start: SFT output folder, HuggingFace folder, GGUF or preset")
    reference: str = field("", "model folder the policy is tied to; empty = model (the usual DPO reference)")
    tokenizer: str = field("", "tokenizer folder; empty = the model folder's")
    lora: LoRAConfig = field(LoRAConfig(enabled=False), "LoRA adapters (off unless lora.enabled=true); the "
                                                        "reference is then the base with adapters off")
    out_dir: str = field("runs/dpo", "run folder: reference log-probs, checkpoints, metrics, plots, model/")
    data: DPODataConfig = field(DPODataConfig(), "preference pairs")
    train: DPOLoopConfig = field(DPOLoopConfig(), "batching, length and cadence of training")
    algo: DPOAlgoConfig = field(DPOAlgoConfig(), "the loss")
    optim: OptimConfig = field(OptimConfig(lr=1e-4, warmup_steps=10), "AdamW and its schedule (again each round)")
    iterate: IterateConfig = field(IterateConfig(), "iterated DPO: later rounds on the policy's own answers, ranked")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")

    def validate(self):
        require(self.iterate.rounds == 1 or self.iterate.max_new_tokens < self.data.max_length,
                "iterate.max_new_tokens", f"{self.iterate.max_new_tokens} leaves no room for a prompt in "
                                          f"data.max_length={self.data.max_length}")


class DPOLoss(nn.Cell):
    """(input_ids, attention_mask, loss_mask [2P, T], ref_logps [P, 2], pair_mask [P], normalizer [])
    → (loss, aux).

    Rows 2p and 2p + 1 are pair p's chosen and rejected answers; ``ref_logps[p]`` their reference log-probs;
    ``pair_mask`` is 0 on rows that only fill a fixed-shape batch. loss = Σ_p m_p ℓ_p / normalizer.
    aux = Σ_p m_p · [reward_w, reward_l, reward_w > reward_l, log π(y_w), log π(y_l), −log π(y_w)/|y_w|, ℓ_p]
    and Σ_p m_p: sums, so micro-batches and ranks add up (``describe``).
    """

    def __init__(self, lm, cfg: DPOAlgoConfig):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.loss_type, self.beta, self.label_smoothing = cfg.loss_type, cfg.beta, cfg.label_smoothing
        self.gamma, self.sft_coef = cfg.simpo_gamma, cfg.sft_coef

    def construct(self, input_ids, attention_mask, loss_mask, ref_logps, pair_mask, normalizer):
        logps, tokens = sequence_logps(self.lm, input_ids, attention_mask, loss_mask)
        logps, tokens = logps.reshape(-1, 2), tokens.reshape(-1, 2)  # [P, 2]: chosen, rejected
        chosen, rejected = logps[:, 0], logps[:, 1]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_logps[:, 0], ref_logps[:, 1], tokens[:, 0], tokens[:, 1], self.beta,
            self.label_smoothing, self.loss_type, self.gamma, self.sft_coef)
        loss = ops.reduce_sum(losses * pair_mask) / normalizer
        nll = -chosen / ops.maximum(tokens[:, 0], 1.0)
        won = (chosen_rewards > rejected_rewards).astype(ms.float32)
        per_pair = ops.stack((chosen_rewards, rejected_rewards, won, chosen, rejected, nll, losses), 1)
        aux = ops.reduce_sum(ops.stop_gradient(per_pair) * pair_mask.reshape(-1, 1), 0)
        return loss, ops.concat((aux, ops.reduce_sum(pair_mask).reshape(1)))


def describe(auxes, prefix: str = "", nll: bool = False) -> dict:
    """TRL's metric names from :class:`DPOLoss` aux sums (one array per micro-batch, or the ranks' total);
    ``nll_loss`` when an NLL term is on (RPO's, ORPO's), and with a ``prefix`` (held-out) the mean loss as well."""
    total = np.sum(np.stack([np.asarray(a, np.float64) for a in auxes]), axis=0)
    mean = total[:-1] / max(total[-1], 1.0)
    out = {"rewards/chosen": mean[0], "rewards/rejected": mean[1], "rewards/margins": mean[0] - mean[1],
           "rewards/accuracies": mean[2], "logps/chosen": mean[3], "logps/rejected": mean[4]}
    if nll:
        out["nll_loss"] = mean[5]
    if prefix:
        out["loss"] = mean[6]
    return {f"{prefix}{k}": float(v) for k, v in out.items()}


def batch_tensors(pairs, ref_table: np.ndarray, pad_id: int, pad_multiple: int, max_length: int,
                  normalizer: float, real: Optional[int] = None):
    """The loss cell's inputs for ``pairs``; ``real`` = how many of them count (the rest fill the batch)."""
    b = pair_batch(pairs, pad_id, pad_multiple, max_length)
    ref = np.asarray([[ref_table[p.chosen_id], ref_table[p.rejected_id]] for p in pairs], np.float32)
    pair_mask = np.zeros(len(pairs), np.float32)
    pair_mask[: len(pairs) if real is None else real] = 1.0
    return (ms.Tensor(b["input_ids"], ms.int32), ms.Tensor(b["attention_mask"], ms.int32),
            ms.Tensor(b["loss_mask"], ms.float32), ms.Tensor(ref), ms.Tensor(pair_mask),
            ms.Tensor(normalizer, ms.float32))


def heldout_metrics(loss_cell, pairs, ref_table, pad_id, data_cfg, rows: int, nll: bool) -> dict:
    """eval_ metrics over ``pairs`` in chunks of ``rows`` pairs (the last filled up: one shape per length)."""
    auxes = []
    for start in range(0, len(pairs), rows):
        chunk = list(pairs[start : start + rows])
        real = len(chunk)
        chunk += [pairs[0]] * (rows - real)
        _, aux = loss_cell(*batch_tensors(chunk, ref_table, pad_id, data_cfg.pad_multiple, data_cfg.max_length,
                                          1.0, real))
        auxes.append(aux.asnumpy())
    return describe(auxes, prefix="eval_", nll=nll)


# ------------------------------------------------------------------------------------ training


def train_dpo(cfg: DPOConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run DPO; write ``out_dir/model`` (HuggingFace folder + tokenizer). Returns the final metrics."""
    rt = runtime.setup(cfg.runtime)
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    if not resume and rt.is_main:
        remove_round_files(cfg.out_dir)
    tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.model)
    data, algo = cfg.data, cfg.algo

    def encode_file(path):
        encoded = encode_rankings(load_rankings(path, data.skip_invalid), tokenizer, data.max_length,
                                  data.skip_invalid, data.chat_template)
        if encoded.skipped:
            print(f"[dpo] {path}: skipped {encoded.skipped} invalid rankings; first: {encoded.skip_reasons[:1]}")
        return encoded

    train_rankings, eval_rankings = split_heldout(encode_file(data.train), data, cfg.runtime.seed, encode_file)
    train_seqs, train_set, same = rankings_to_pairs(train_rankings, data.pairs)
    eval_seqs, eval_set, same_eval = rankings_to_pairs(eval_rankings, data.pairs, first_id=len(train_seqs))
    if (same or same_eval) and rt.is_main:
        print(f"[dpo] left out {same + same_eval} pairs whose two answers are the same tokens")
    per_rank, n_micro = cfg.train.layout(rt.world_size)
    micro = per_rank // n_micro
    pad = tokenizer.pad_id

    base = load_lm(cfg.model, tokenizer.vocab_size)
    model = adapted_copy(base, cfg.lora) if cfg.lora.enabled else base
    separate = bool(cfg.reference) and os.path.abspath(cfg.reference) != os.path.abspath(cfg.model)

    def compute_reference(sequences, later_round: bool = False):
        if is_reference_free(algo.loss_type):  # SimPO, ORPO: h never reads the reference
            return np.zeros(len(sequences), np.float32)
        # The reference is the model the policy starts from: the LoRA base with its adapters off, or (no LoRA)
        # the policy itself before its first step, so no second copy is loaded; another folder, or the start
        # model once a round has trained the policy, is loaded frozen for this pass and released.
        reload = separate or (later_round and not cfg.lora.enabled)
        lm = frozen(load_lm(cfg.reference or cfg.model, tokenizer.vocab_size)) if reload else base
        if rt.is_main:
            print(f"[dpo] reference log-probs of {len(sequences)} sequences", flush=True)
        return reference_pass(lm, sequences, pad, 2 * micro, data.pad_multiple, data.max_length)

    # the labeler (or reward-model folder) and the prompts of later rounds are checked before anything compiles
    sampler = RoundSampler(cfg.iterate, model, tokenizer, data, cfg.out_dir, cfg.runtime.seed, bool(resume)) \
        if cfg.iterate.rounds > 1 else None
    ref_table = stored_reference(os.path.join(cfg.out_dir, REFERENCE_FILE), train_seqs + eval_seqs,
                                 lambda: compute_reference(train_seqs + eval_seqs), resume=bool(resume))
    gc.collect()  # a separate reference's weights and graph go before training starts

    plan, round_pairs = None, None
    if sampler is not None:
        plan = plan_rounds(cfg.iterate, cfg.train.total_steps(len(train_set)), len(sampler.prompts), data.pairs,
                           cfg.train.batch_size)

        def round_reference(r: int, sequences) -> np.ndarray:
            logps = stored_reference(os.path.join(cfg.out_dir, f"round{r}_{REFERENCE_FILE}"), sequences,
                                     lambda: compute_reference(sequences, later_round=True), resume=bool(resume))
            gc.collect()
            return logps

        round_pairs = functools.partial(sampler.pairs, first_id=len(ref_table), reference=round_reference,
                                        min_pairs=cfg.train.batch_size)

    loss_cell = DPOLoss(model, algo)
    updater = Updater(loss_cell, model.trainable_params(), cfg.optim, cfg.train.total_steps(len(train_set)),
                      accum_steps=n_micro)
    nll = nll_weight(algo.loss_type, algo.sft_coef) > 0

    def evaluate():
        return heldout_metrics(loss_cell, eval_set, ref_table, pad, data, micro, nll) if eval_set else {}

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        evaluate = with_dropout(model, evaluate)

    def export(run_dir):
        model.set_train(False)
        export_model(model, tokenizer, cfg, os.path.join(run_dir, "model"), base=cfg.model)

    stage = DPOStage(
        model, ref_table, pad, data,
        plan=plan, round_pairs=round_pairs,
        records=train_set,
        updater=updater,
        cells={"model": TrainableParams(model)},
        loop=cfg.train,
        seed=cfg.runtime.seed,
        evaluate=evaluate,
        describe_aux=lambda auxes: describe(auxes, nll=nll),
        export=export,
    )
    return run_loop(stage, cfg.train, cfg.out_dir, resume, config=cfg)


class DPOStage(SupervisedStage):
    """The supervised stage over pairs, with the margin and accuracy on the progress bar.

    With a :class:`RoundPlan` (iterated DPO) the first step of round r >= 2 replaces the pairs with
    ``round_pairs(r, resumed=False)``'s (pairs, reference log-probs) and restarts the optimizer; a run
    resumed inside round r takes them back with ``resumed=True`` and keeps the checkpoint's optimizer."""

    def __init__(self, lm, ref_table: np.ndarray, pad_id: int, data: DPODataConfig,
                 plan: Optional[RoundPlan] = None, round_pairs=None, **kwargs):
        self.lm, self.ref_table, self.n_fixed, self.pad_id, self.data = lm, ref_table, len(ref_table), pad_id, data
        super().__init__(make_batch=self.batch, count=len, unit="pair", name="dpo", **kwargs)  # count: pairs
        self.plan, self.round_pairs, self.round, self.seed = plan, round_pairs, 1, self.order.seed
        if plan is not None:
            self.total_steps = plan.total

    def batch(self, pairs, normalizer):
        return batch_tensors(pairs, self.ref_table, self.pad_id, self.data.pad_multiple, self.data.max_length,
                             normalizer)

    def enter_round(self, r: int, resumed: bool) -> None:
        pairs, logps = self.round_pairs(r, resumed)  # their ids start at n_fixed: after round 1's table
        self.ref_table = np.concatenate([self.ref_table[: self.n_fixed], logps])
        self.records, self.round = pairs, r
        self.order = DataOrder(len(pairs), self.order.batch_size, self.seed + r - 1)
        if resumed:
            self.updater.total_steps = self.plan.steps[r - 1]
        else:
            self.updater.restart(self.plan.steps[r - 1])

    def step(self, step: int) -> tuple[dict, int]:
        if self.plan is not None and self.plan.round_of(step) != self.round:
            self.enter_round(self.plan.round_of(step), resumed=False)
        metrics, units = super().step(step)
        if self.plan is not None:
            metrics["round"] = self.round
        return metrics, units

    def before_save(self) -> None:
        """The generator of a later round re-prefixes the policy's parameter names (MindSpore's auto_prefix);
        a checkpoint keeps the names a resumed run, which has not sampled yet, looks them up by."""
        for name, p in self.lm.parameters_and_names():
            p.name = name

    def boundary(self, done: int) -> bool:
        return self.plan is not None and done in self.plan.ends

    def state(self) -> dict:
        return {**super().state(), "round": self.round, "optimizer_steps": self.updater.step_count}

    def restore(self, state: dict) -> None:
        r = int(state.get("round", 1))
        if r > (len(self.plan.steps) if self.plan else 1):
            raise ValueError(f"the checkpoint is in round {r} of iterated DPO; resume with iterate.rounds >= {r}")
        if r > 1:
            self.enter_round(r, resumed=True)
        super().restore(state)

    def postfix(self, metrics: dict) -> dict:
        shown = super().postfix(metrics)
        shown["margin"] = f"{metrics['rewards/margins']:.3f}"
        shown["acc"] = f"{metrics['rewards/accuracies']:.2f}"
        if "round" in metrics:
            shown["round"] = int(metrics["round"])
        return shown
