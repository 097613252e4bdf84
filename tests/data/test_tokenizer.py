"""Tokenizer: lossless round trip, fixed special ids, exact chat-template boundaries, HF tokenizer.json."""
import pytest

from mindrlhf.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, HFTokenizer, Tokenizer, train_tokenizer

CORPUS = [
    "I'm in the mood for a comedy.", "Any good thrillers? I've already seen \"Velmor's Garden\".",
    "Try \"Korvina Nights\" (1994), directed by Dala Merrin. It is about a retired pilot.",
    "You might like \"The Storm of Klisol\" by Kozaklo Lute, about three sisters.",
    "Can you recommend a horror movie? What documentaries should I watch?",
]
TRICKY = ["hello  world", "two\nlines\n\nand a blank", "  leading and trailing  ", "\ttab\t", "",
          "unseen: 日本語 🎉 ñ", "digits 1994 and 20231", "quote \" and apostrophe ' ", "a" * 50]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 20) + "\n", encoding="utf-8")
    return train_tokenizer(str(folder / "corpus.txt"), 400, str(folder / "out"))


def test_special_ids_fixed(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (PAD_ID, BOS_ID, EOS_ID) == (0, 2, 3)
    assert all(len(ids) == 1 for ids in tok.role_ids.values())
    assert 300 < tok.vocab_size <= 400


@pytest.mark.parametrize("text", TRICKY + CORPUS)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_unseen_characters_use_byte_fallback(tok):
    assert tok.encode("🎉") and tok.sp.unk_id() not in tok.encode("🎉 日本語")


def test_decode_special(tok):
    ids = tok.encode_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert tok.decode(ids) == "hiyo"
    assert tok.decode(ids, skip_special=False) == "<bos><|user|>hi<|assistant|>yo<eos>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size + 5])


def test_prompt_response_boundary_is_exact(tok):
    prompt, response = "Any good thrillers?", "Try \"Korvina Nights\" (1994)."
    ids, loss_mask = tok.encode_prompt_response(prompt, response)
    prompt_ids = tok.encode_prompt(prompt)
    assert ids[:len(prompt_ids)] == prompt_ids
    assert prompt_ids == [BOS_ID] + tok.role_ids["user"] + tok.encode(prompt) + tok.role_ids["assistant"]
    assert ids[len(prompt_ids):] == tok.encode(response) + [EOS_ID]
    assert loss_mask == [0] * len(prompt_ids) + [1] * (len(tok.encode(response)) + 1)
    assert len(ids) == len(loss_mask)


def test_multi_turn_only_last_assistant_is_target(tok):
    context = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A comedy?"},
               {"role": "assistant", "content": "Try X."}, {"role": "user", "content": "Another?"}]
    ids, loss_mask = tok.encode_prompt_response(context, "Try Y.")
    full = tok.encode_chat(context + [{"role": "assistant", "content": "Try Y."}])
    assert ids == full
    assert sum(loss_mask) == len(tok.encode("Try Y.")) + 1
    assert loss_mask[-1] == 1 and ids[-1] == EOS_ID
    first_eos = ids.index(EOS_ID)  # the eos that closes the earlier assistant turn is context, not target
    assert first_eos < len(ids) - 1 and loss_mask[first_eos] == 0
    assert tok.decode([i for i, m in zip(ids, loss_mask) if m]) == "Try Y."


def test_save_load_and_missing(tok, tmp_path):
    tok.save(str(tmp_path / "copy"))
    again = Tokenizer.load(str(tmp_path / "copy"))
    assert again.encode(CORPUS[1]) == tok.encode(CORPUS[1]) and again.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        Tokenizer.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither tokenizer.model"):
        Tokenizer.load(str(tmp_path / "empty"))


def test_vocab_too_small_is_explained(tmp_path):
    (tmp_path / "c.txt").write_text("abc\n")
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(str(tmp_path / "c.txt"), 100, str(tmp_path / "o"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(CORPUS * 20, trainer)
    folder = tmp_path_factory.mktemp("hf")
    hf.save(str(folder / "tokenizer.json"))
    return folder


def test_hf_tokenizer_same_interface(hf_folder, tmp_path):
    tok = Tokenizer.load(str(hf_folder))
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)  # found by the names <pad>, <s>, </s>
    for text in TRICKY + CORPUS:
        assert tok.decode(tok.encode(text)) == text
    ids, loss_mask = tok.encode_prompt_response("Any good thrillers?", "Try X.")
    assert ids[:len(tok.encode_prompt("Any good thrillers?"))] == tok.encode_prompt("Any good thrillers?")
    assert tok.decode(ids, skip_special=False) == "<s><|user|>Any good thrillers?<|assistant|>Try X.</s>"
    assert sum(loss_mask) == len(tok.encode("Try X.")) + 1
    tok.save(str(tmp_path / "copy"))
    assert Tokenizer.load(str(tmp_path / "copy")).encode(CORPUS[2]) == tok.encode(CORPUS[2])


def test_hf_encode_matches_transformers(hf_folder):
    transformers = pytest.importorskip("transformers")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_folder / "tokenizer.json"))
    tok = Tokenizer.load(str(hf_folder / "tokenizer.json"))
    for text in CORPUS + TRICKY:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False)


def test_empty_training_text_is_one_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="the tokenizer training text is empty"):
        train_tokenizer(str(tmp_path / "empty.txt"), 512, str(tmp_path / "tok"))
