"""A HuggingFace ``tokenizers.Tokenizer`` and its tokenizer_config built from a GGUF file's tokenizer metadata.

:meth:`mindrlhf.data.tokenizer.HFTokenizer.from_gguf` wraps the result in our tokenizer interface;
``mindrlhf convert --from-gguf`` writes it out as ``tokenizer.json`` + ``tokenizer_config.json``.
"""
from __future__ import annotations

# tokenizer.ggml.pre -> whether digits are split one by one before GPT-2's byte-level regex.
# llama.cpp groups "smollm" with starcoder/refact: "\p{N}" first, then the GPT-2 regex; the model's
# own tokenizer.json does the same with a Digits(individual_digits) pre-tokenizer.
BYTE_LEVEL_PRE = {"smollm": True, "starcoder": True, "refact": True, "gpt2": False, "default": False}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


def tokenizer_parts(meta: dict, where=""):
    """(tokenizers.Tokenizer, tokenizer_config dict) from GGUF tokenizer metadata.

    Byte-level BPE only (`tokenizer.ggml.model == "gpt2"`): the vocabulary and merges as stored,
    control tokens (type 3) as special added tokens, user-defined ones (type 4) as plain added tokens,
    the pre-tokenizer chosen by `tokenizer.ggml.pre`, and the chat template carried over.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # optional (the `gguf` extra)

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') tokenizers "
                         "are built from GGUF metadata")
    if pre not in BYTE_LEVEL_PRE:
        raise ValueError(f"{where}: tokenizer.ggml.pre is {pre!r}; supported pre-tokenizers: "
                         f"{sorted(BYTE_LEVEL_PRE)}")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if BYTE_LEVEL_PRE[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == TOKEN_TYPE_USER_DEFINED])
    config = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            config[name] = tokens[int(i)]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    return tok, config
