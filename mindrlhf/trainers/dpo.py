"""Direct preference optimisation: train the policy on preference pairs, tied to a frozen reference.

    loss = 1/N · Σ_pairs  ℓ(h),   h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))

with ℓ the configured variant of ``mindrlhf.algos.dpo`` (``sigmoid``: −log σ(β h), Rafailov et al. 2023;
``ipo``, ``hinge``, and the reference-free ``simpo``), log-probs summed over each response's tokens
(prompt and padding excluded) and N the global number of pairs in the batch, passed into the compiled
step so micro-batches and ranks add up to the full batch's gradient.

The pairs come from the rankings the reward model reads: a K-way ranking gives every C(K, 2) pair or the
best against each other (``data.pairs``), a chosen/rejected line one pair. Both answers of a pair go
through the policy in one forward (rows 2p and 2p + 1). The reference's log-probs are computed before
training in one compiled pass over every sequence of the data (train and held-out), once per sequence
however many pairs share it, and kept in ``out_dir/reference_logps.npz`` for a resumed run. The reference
is the starting model: with ``lora.enabled`` the policy's own base with the adapters off, without LoRA
the policy before its first step (no second copy either way); a ``reference`` folder other than ``model``
is loaded frozen for that one pass and released.

The metrics are TRL's: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (implicit
rewards β·(log π − log π_ref)), logps/chosen, logps/rejected, and ``eval_`` versions on held-out pairs.
The product, ``out_dir/model/``, is a policy folder like SFT's.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
from typing import ClassVar, Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import runtime
from ..algos import DPO_LOSSES, dpo_loss, is_reference_free, masked_sum
from ..config import field, require
from ..data.batching import sft_batch
from ..data.encoding import encode_rankings
from ..data.formats import load_rankings
from ..data.pairs import PAIR_MODES, pair_batch, rankings_to_pairs
from ..io import atomic_write
from ..nn.lora import LoRAConfig, TrainableParams
from ..roles import adapted_copy, frozen, load_lm
from ..runtime import RuntimeConfig
from .artifacts import export_model, resolve_tokenizer
from .loop import prepare_run_dir, run_loop
from .step import OptimConfig, Updater
from .supervised import DataConfig, LoopConfig, SupervisedStage, split_heldout, with_dropout

REFERENCE_FILE = "reference_logps.npz"


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
                                      "(SLiC), simpo (reference-free)")
    beta: float = field(0.1, "β: the KL tie to the reference (Rafailov et al. 2023; TRL's default 0.1)")
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
    optim: OptimConfig = field(OptimConfig(lr=1e-4, warmup_steps=10), "AdamW and its schedule")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")


def sequence_logps(lm, input_ids, attention_mask, loss_mask):
    """(Σ_t m_t · log π(y_t | y_<t), Σ_t m_t) per row, [B] each: log-probs summed over the response tokens.

    m = loss_mask[:, 1:] (token-aligned: 1 on response tokens and EOS), so prompt and padding count 0."""
    hidden = lm.hidden_states(input_ids, attention_mask)[:, :-1, :]
    logprobs, _ = lm.token_logprobs(hidden, input_ids[:, 1:])  # [B, T-1]: token t+1 given ≤ t
    mask = loss_mask[:, 1:].astype(ms.float32)
    return masked_sum(logprobs, mask, 1), ops.reduce_sum(mask, 1)


class SequenceLogps(nn.Cell):
    """(input_ids, attention_mask, loss_mask [B, T]) → log π(response) [B]: the reference pass."""

    def __init__(self, lm):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, input_ids, attention_mask, loss_mask):
        return sequence_logps(self.lm, input_ids, attention_mask, loss_mask)[0]


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
    ``nll_loss`` when the RPO term is on, and with a ``prefix`` (held-out) the mean loss as well."""
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


# ------------------------------------------------------------------------------------ the reference pass


def reference_pass(lm, sequences, pad_id: int, rows: int, pad_multiple: int, max_length: int) -> np.ndarray:
    """log π_lm(response) of every sequence, float32 [N], by one compiled Cell over fixed-size batches.

    Sequences are batched in length order (less padding, few length buckets); the last batch is filled
    with copies, so only the bucketed length can trigger a compile."""
    cell = SequenceLogps(lm)
    order = np.argsort([len(s.input_ids) for s in sequences], kind="stable")
    out = np.zeros(len(sequences), np.float32)
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        chunk = [sequences[i] for i in idx] + [sequences[idx[0]]] * (rows - len(idx))
        b = sft_batch(chunk, pad_id, pad_multiple, max_length)
        logps = cell(ms.Tensor(b["input_ids"], ms.int32), ms.Tensor(b["attention_mask"], ms.int32),
                     ms.Tensor(b["loss_mask"], ms.float32))
        out[idx] = logps.asnumpy()[: len(idx)]
    return out


def fingerprint(sequences) -> str:
    """A hash of every sequence's tokens and loss mask, in order: which data a stored reference belongs to."""
    digest = hashlib.sha256()
    for s in sequences:
        digest.update(np.asarray(s.input_ids, np.int32).tobytes() + b"|")
        digest.update(np.asarray(s.loss_mask, np.int8).tobytes() + b";")
    return digest.hexdigest()


def stored_reference(run_dir: str, sequences, compute, resume: bool) -> np.ndarray:
    """The reference log-probs of ``sequences``: read from ``run_dir/reference_logps.npz`` on resume, else
    ``compute()``-d and written there (atomically, rank 0). A stored file made from other data is an error."""
    path = os.path.join(run_dir, REFERENCE_FILE)
    key = fingerprint(sequences)
    if resume and os.path.isfile(path):
        with np.load(path) as stored:
            logps, stored_key = stored["logps"], str(stored["fingerprint"])
        if len(logps) != len(sequences) or stored_key != key:
            raise ValueError(f"{path}: holds the reference log-probs of {len(logps)} sequences of other data, but "
                             f"the data now gives {len(sequences)} sequences (or other tokens); resume with the "
                             "data the run started with, or start a fresh run (--overwrite)")
        return logps
    logps = compute()
    if runtime.current().is_main:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, logps=logps, fingerprint=np.asarray(key))
        atomic_write(path, write)
    return logps


# ------------------------------------------------------------------------------------ training


def train_dpo(cfg: DPOConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run DPO; write ``out_dir/model`` (HuggingFace folder + tokenizer). Returns the final metrics."""
    rt = runtime.setup(cfg.runtime)
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.model)
    data, algo = cfg.data, cfg.algo

    def encode_file(path):
        encoded = encode_rankings(load_rankings(path, data.skip_invalid), tokenizer, data.max_length,
                                  data.skip_invalid)
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

    def compute_reference():
        if is_reference_free(algo.loss_type):  # SimPO: h never reads the reference
            return np.zeros(len(train_seqs) + len(eval_seqs), np.float32)
        # The reference is the model the policy starts from: the LoRA base with its adapters off, or (no LoRA)
        # the policy itself before its first step, so no second copy is loaded; another folder is loaded
        # frozen for this pass and released.
        lm = frozen(load_lm(cfg.reference, tokenizer.vocab_size)) if separate else base
        if rt.is_main:
            print(f"[dpo] reference log-probs of {len(train_seqs) + len(eval_seqs)} sequences", flush=True)
        return reference_pass(lm, train_seqs + eval_seqs, pad, 2 * micro, data.pad_multiple, data.max_length)

    ref_table = stored_reference(cfg.out_dir, train_seqs + eval_seqs, compute_reference, resume=bool(resume))
    gc.collect()  # a separate reference's weights and graph go before training starts

    loss_cell = DPOLoss(model, algo)
    updater = Updater(loss_cell, model.trainable_params(), cfg.optim, cfg.train.total_steps(len(train_set)),
                      accum_steps=n_micro)
    nll = algo.sft_coef > 0

    def evaluate():
        return heldout_metrics(loss_cell, eval_set, ref_table, pad, data, micro, nll) if eval_set else {}

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        evaluate = with_dropout(model, evaluate)

    def export(run_dir):
        model.set_train(False)
        export_model(model, tokenizer, cfg, os.path.join(run_dir, "model"), base=cfg.model)

    stage = DPOStage(
        records=train_set,
        make_batch=lambda items, norm: batch_tensors(items, ref_table, pad, data.pad_multiple, data.max_length,
                                                     norm),
        count=len,  # pairs
        updater=updater,
        cells={"model": TrainableParams(model)},
        loop=cfg.train,
        seed=cfg.runtime.seed,
        evaluate=evaluate,
        describe_aux=lambda auxes: describe(auxes, nll=nll),
        unit="pair",
        export=export,
    )
    return run_loop(stage, cfg.train, cfg.out_dir, resume, config=cfg)


class DPOStage(SupervisedStage):
    """The supervised stage over pairs, with DPO's name and the margin and accuracy on the progress bar."""

    name = "dpo"

    def postfix(self, metrics: dict) -> dict:
        shown = super().postfix(metrics)
        shown["margin"] = f"{metrics['rewards/margins']:.3f}"
        shown["acc"] = f"{metrics['rewards/accuracies']:.2f}"
        return shown
