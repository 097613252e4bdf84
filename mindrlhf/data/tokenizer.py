"""Tokenizers (sentencepiece trained here, or a HuggingFace ``tokenizer.json``) behind one interface,
and the chat template that turns prompts and responses into token ids with an exact loss mask.

Chat template, in tokens (each message's text is encoded on its own, so segment boundaries are exact)::

    <bos> [<|system|> system text] <|user|> user text <|assistant|> assistant text <eos> <|user|> ... <|assistant|>

Every assistant turn is closed by ``<eos>`` (so generation stops at ``<eos>``); other turns are closed by
the next role marker. No spaces or newlines are inserted around markers. For training, only the last
assistant turn is the target: ``encode_prompt_response(prompt, response)`` gives
``ids = encode_prompt(prompt) + encode(response) + [eos]`` and ``loss_mask`` = 1 exactly on
``encode(response) + [eos]``, where ``encode_prompt(prompt)`` (context + ``<|assistant|>``) is exactly
what generation is fed. A ``prompt`` is a string (one user turn) or a list of ``{"role", "content"}``
messages (the turns before the target).

A HuggingFace tokenizer that carries a ``chat_template`` (in ``tokenizer_config.json``, or from a GGUF
file) follows the model's own template instead: ``encode_chat`` renders it with jinja2 (as transformers'
``apply_chat_template`` does) and encodes the text, special tokens included; for ChatML that is
``<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n``. The response boundary stays exact the same
way: ``encode_prompt_response`` appends ``encode(response) + [eos]`` (eos = ``<|im_end|>`` for ChatML) to
the rendered prompt, so a response is never merged with the template's text before it.

Note: the role markers are sentencepiece user-defined symbols, so a literal ``<|user|>`` typed in plain
text is encoded as the marker (and dropped by ``decode(..., skip_special=True)``).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple, Union

import sentencepiece as spm

from mindrlhf.data.gguf_tokenizer import tokenizer_parts
from mindrlhf.io.gguf import GGUF_PRESETS, metadata, read_gguf

ROLE_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SP_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
HF_CONFIG = "tokenizer_config.json"
MIN_SP_VOCAB = 256 + 4 + len(ROLE_MARKERS) + 1  # byte pieces + pad/unk/bos/eos + markers + at least one more

Prompt = Union[str, List[dict]]


class Tokenizer:
    """Text <-> ids plus the chat template. Subclasses supply the text codec (``_encode_text``,
    ``_decode_text``, ``_piece``) and set ``pad_id``, ``bos_id`` (may be None), ``eos_id``, ``vocab_size``
    and ``role_ids`` (role -> list of ids; one id when the marker is a token of the vocabulary)."""

    pad_id: int
    bos_id: Optional[int]
    eos_id: int
    vocab_size: int
    role_ids: Dict[str, List[int]]

    # ------------------------------------------------------------ loading
    @staticmethod
    def load(path: str) -> "Tokenizer":
        """Load a folder holding ``tokenizer.model`` (sentencepiece) or ``tokenizer.json`` (HuggingFace),
        one of those files directly, a ``.gguf`` file or a GGUF preset name (``smollm2-135m-instruct``)."""
        path = str(path)
        if path.endswith(".gguf") or (path in GGUF_PRESETS and not os.path.exists(path)):
            return HFTokenizer.from_gguf(path)
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, SP_FILE)):
                return SentencePieceTokenizer(os.path.join(path, SP_FILE))
            if os.path.exists(os.path.join(path, HF_FILE)):
                return HFTokenizer(os.path.join(path, HF_FILE))
            raise FileNotFoundError(f"tokenizer folder {path} holds neither {SP_FILE} (sentencepiece) nor "
                                    f"{HF_FILE} (HuggingFace); train one with `mindrlhf tokenizer` or point to "
                                    "a folder that has one")
        if path.endswith(".json") and os.path.isfile(path):
            return HFTokenizer(path)
        if os.path.isfile(path):
            return SentencePieceTokenizer(path)
        raise FileNotFoundError(f"tokenizer not found: {path} does not exist; expected a folder with "
                                f"{SP_FILE} or {HF_FILE}")

    # ------------------------------------------------------------ codec
    def encode(self, text: str) -> List[int]:
        """Plain text -> ids, no special tokens added."""
        return self._encode_text(text)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """ids -> text. ``skip_special`` drops pad/bos/eos and role markers; otherwise they are written out."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: ids {bad[:5]} are outside the vocabulary 0..{self.vocab_size - 1}; "
                             "a model whose vocab is larger than the tokenizer's must not sample them")
        special = self.special_ids
        if skip_special:
            return self._decode_text([i for i in ids if i not in special])
        parts, run = [], []
        for i in ids:
            if i in special:
                parts += [self._decode_text(run), self._piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(parts + [self._decode_text(run)])

    @property
    def special_ids(self) -> frozenset:
        ids = {self.pad_id, self.eos_id} | {i for r in self.role_ids.values() if len(r) == 1 for i in r}
        if self.bos_id is not None:
            ids.add(self.bos_id)
        return frozenset(ids)

    # ------------------------------------------------------------ chat template
    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> List[int]:
        """Messages -> ids by the template in the module docstring; with ``add_generation_prompt`` the
        assistant marker is appended so a model continues with the assistant's reply."""
        ids = [] if self.bos_id is None else [self.bos_id]
        for i, m in enumerate(messages):
            if m.get("role") not in self.role_ids:
                raise ValueError(f"encode_chat: messages[{i}].role is {m.get('role')!r}; expected one of "
                                 f"{list(self.role_ids)}")
            ids += self.role_ids[m["role"]] + self.encode(m["content"])
            if m["role"] == "assistant":
                ids.append(self.eos_id)
        if add_generation_prompt:
            ids += self.role_ids["assistant"]
        return ids

    def encode_prompt(self, prompt: Prompt) -> List[int]:
        """What generation is fed: the context turns followed by the assistant marker."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return self.encode_chat(messages, add_generation_prompt=True)

    def encode_prompt_response(self, prompt: Prompt, response: str) -> Tuple[List[int], List[int]]:
        """``(ids, loss_mask)``: ids = encode_prompt(prompt) + encode(response) + [eos];
        loss_mask is 0 on the prompt part and 1 on the response tokens and the closing eos."""
        prompt_ids = self.encode_prompt(prompt)
        response_ids = self.encode(response) + [self.eos_id]
        return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)

    # ------------------------------------------------------------ subclass hooks
    def _encode_text(self, text: str) -> List[int]:
        raise NotImplementedError

    def _decode_text(self, ids: List[int]) -> str:
        raise NotImplementedError

    def _piece(self, i: int) -> str:
        raise NotImplementedError

    def save(self, out_dir: str) -> None:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model trained by :func:`train_tokenizer` (ids: pad=0, unk=1, bos=2, eos=3)."""

    def __init__(self, model_file: str):
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"sentencepiece model not found: {model_file}")
        self.model_file = model_file
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
        if min(self.pad_id, self.bos_id, self.eos_id) < 0:
            raise ValueError(f"{model_file}: the model has no pad, bos or eos piece (ids pad={self.pad_id}, "
                             f"bos={self.bos_id}, eos={self.eos_id}); train it with train_tokenizer()")
        self.role_ids = {}
        for role, marker in ROLE_MARKERS.items():
            i = self.sp.piece_to_id(marker)
            self.role_ids[role] = [i] if i != self.sp.unk_id() else self.sp.encode(marker)

    def _encode_text(self, text: str) -> List[int]:
        return self.sp.encode(text)

    def _decode_text(self, ids: List[int]) -> str:
        return self.sp.decode(ids) if ids else ""

    def _piece(self, i: int) -> str:
        return self.sp.id_to_piece(i)

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        target = os.path.join(out_dir, SP_FILE)
        if os.path.abspath(target) != os.path.abspath(self.model_file):
            shutil.copyfile(self.model_file, target)


class HFTokenizer(Tokenizer):
    """A HuggingFace ``tokenizer.json`` through the ``tokenizers`` package. bos/eos/pad come from a
    ``tokenizer_config.json`` beside it when present, else from common token names; pad falls back to eos.
    Role markers missing from the vocabulary are encoded as plain text."""

    EOS_NAMES = (EOS, "</s>", "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<|eot_id|>")
    BOS_NAMES = (BOS, "<s>", "<|begin_of_text|>")
    PAD_NAMES = (PAD, "<|pad|>", "[PAD]")

    def __init__(self, json_file: str):
        try:
            import tokenizers  # optional (the `gguf` extra): only HuggingFace tokenizers need it
        except ImportError as e:
            raise ImportError(f"loading {json_file} needs the `tokenizers` package: pip install tokenizers") from e
        config_file = os.path.join(os.path.dirname(json_file), HF_CONFIG)
        config = json.load(open(config_file, encoding="utf-8")) if os.path.exists(config_file) else {}
        template_file = os.path.join(os.path.dirname(json_file), "chat_template.jinja")  # transformers >= 4.5x
        if "chat_template" not in config and os.path.exists(template_file):
            config["chat_template"] = open(template_file, encoding="utf-8").read()
        self._setup(tokenizers.Tokenizer.from_file(json_file), config, json_file, config_file)

    @classmethod
    def from_parts(cls, tok, config: dict, where: str = "<memory>") -> "HFTokenizer":
        """From a ``tokenizers.Tokenizer`` and a tokenizer_config-like dict (eos_token, chat_template, ...)."""
        self = cls.__new__(cls)
        self._setup(tok, config, where, where)
        return self

    @classmethod
    def from_gguf(cls, name_or_path) -> "HFTokenizer":
        """The tokenizer (with its chat template) stored in a GGUF file, from a path or preset name."""
        path, reader = read_gguf(name_or_path)
        tok, config = tokenizer_parts(metadata(reader), where=path)
        return cls.from_parts(tok, config, where=path)

    def _setup(self, tok, config: dict, json_file: str, config_file: str) -> None:
        self.tok = tok
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.config = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")
                       if isinstance(config.get(k), str)}
        self.chat_template = self.config.get("chat_template")
        self.eos_id = self._special(config.get("eos_token"), self.EOS_NAMES)
        self.bos_id = self._special(config.get("bos_token"), self.BOS_NAMES)
        self.pad_id = self._special(config.get("pad_token"), self.PAD_NAMES)
        if self.eos_id is None:
            raise ValueError(f"{json_file}: no end-of-sequence token found; add \"eos_token\" to {config_file} "
                             f"or a token named one of {list(self.EOS_NAMES)}")
        if self.pad_id is None:
            self.pad_id = self.eos_id  # masked out everywhere, so any id will do
        self.role_ids = {}
        for role, marker in ROLE_MARKERS.items():
            i = self.tok.token_to_id(marker)
            self.role_ids[role] = [i] if i is not None else self.encode(marker)

    def _special(self, configured, names) -> Optional[int]:
        if isinstance(configured, dict):  # {"content": "<s>", ...} in some tokenizer_config.json files
            configured = configured.get("content")
        for name in ([configured] if configured else []) + list(names):
            i = self.tok.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> List[int]:
        """The model's own chat template when it has one (module docstring), else the role-marker one."""
        if self.chat_template is None:
            return super().encode_chat(messages, add_generation_prompt)
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"encode_chat: messages[{i}] is {m!r}; expected {{\"role\": str, \"content\": str}}")
        special = {k: v for k, v in self.config.items() if k.endswith("_token")}
        return self.encode(render_chat_template(self.chat_template, messages, add_generation_prompt, special))

    def _encode_text(self, text: str) -> List[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _decode_text(self, ids: List[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False) if ids else ""

    def _piece(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def save(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.tok.save(os.path.join(out_dir, HF_FILE))
        names = {"eos_token": self.eos_id, "bos_token": self.bos_id, "pad_token": self.pad_id}
        config = {k: self.tok.id_to_token(v) for k, v in names.items() if v is not None}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(os.path.join(out_dir, HF_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)


def render_chat_template(template: str, messages: Sequence[dict], add_generation_prompt: bool,
                         special_tokens: Dict[str, str]) -> str:
    """A HuggingFace/GGUF jinja chat template -> text, rendered the way transformers renders it
    (sandboxed, ``trim_blocks`` and ``lstrip_blocks``; ``bos_token`` etc. and ``raise_exception`` defined)."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # optional: only chat templates need it
    except ImportError as e:
        raise ImportError("this tokenizer has a chat_template; rendering it needs jinja2: pip install jinja2") from e

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            **special_tokens)


def train_tokenizer(input_txt: Union[str, Sequence[str]], vocab_size: int, out_dir: str,
                    model_type: str = "bpe") -> SentencePieceTokenizer:
    """Train a sentencepiece model on text file(s) and write ``out_dir/tokenizer.model``.

    Lossless by construction: normalization ``identity``, no whitespace collapsing, no dummy prefix,
    byte fallback on (unseen characters become byte pieces), digits split; so ``decode(encode(t)) == t``
    for any text. Ids: pad=0, unk=1, bos=2, eos=3, then the role markers as user-defined symbols.
    ``vocab_size`` is an upper bound: a small corpus may give fewer pieces (read ``.vocab_size``).
    BPE is the default: on the small, repetitive built-in corpus it learned whole words and names where
    unigram kept splitting common words (demonstrations were ~40 vs ~68 tokens long at vocab 1000).
    """
    files = [input_txt] if isinstance(input_txt, (str, os.PathLike)) else list(input_txt)
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"tokenizer training text not found: {f}")
    if not any(os.path.getsize(f) for f in files):
        raise ValueError(f"{', '.join(map(str, files))}: the tokenizer training text is empty")
    if vocab_size < MIN_SP_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte fallback needs 256 byte pieces plus "
                         f"{4 + len(ROLE_MARKERS)} special pieces; use at least {MIN_SP_VOCAB} (e.g. 512)")
    os.makedirs(out_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(str(f) for f in files), model_prefix=os.path.join(out_dir, "tokenizer"),
        vocab_size=vocab_size, hard_vocab_limit=False, model_type=model_type,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        byte_fallback=True, split_digits=True, character_coverage=1.0, allow_whitespace_only_pieces=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        user_defined_symbols=list(ROLE_MARKERS.values()),
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,  # deterministic, quiet
    )
    return SentencePieceTokenizer(os.path.join(out_dir, SP_FILE))
