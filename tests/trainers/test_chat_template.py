"""Plain continuation (``data.chat_template: false``) in SFT, the reward model and PPO: the prompt text as it
is after <bos>, the response and EOS after it, no role markers. A max_length that fits the plain sequences
but not the templated ones tells which encoding a stage used."""
import json

import pytest

from mindrlhf.config import load_config
from mindrlhf.data.encoding import encode_pair
from mindrlhf.data.formats import DataError, load_demonstrations
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.trainers.ppo import PPOTrainer
from mindrlhf.trainers.reward import RMConfig, train_rm
from mindrlhf.trainers.sft import SFTConfig, train_sft

from .test_ppo import N, TargetFraction, ppo_config, world  # noqa: F401  (world: the module's fixture)


def test_plain_continuation_is_bos_prompt_response_eos(toy_task):
    tok = Tokenizer.load(str(toy_task / "tok"))
    ids, mask = encode_pair(tok, "reverse: red cat", " cat red", chat_template=False)
    prompt, response = tok.encode("reverse: red cat"), tok.encode(" cat red")
    assert ids == [tok.bos_id] + prompt + response + [tok.eos_id]
    assert mask == [0] * (1 + len(prompt)) + [1] * (len(response) + 1)
    chat, _ = encode_pair(tok, "reverse: red cat", " cat red")
    assert len(chat) == len(ids) + 2 and not set(ids) & {i for r in tok.role_ids.values() for i in r}
    with pytest.raises(DataError, match="a.jsonl:3: a 'messages' prompt needs the chat template"):
        encode_pair(tok, [{"role": "user", "content": "hi"}], "yo", chat_template=False, where="a.jsonl:3")


def _plain_fit(toy_task, demos=None) -> int:
    """The longest demonstration, encoded plain: a max_length the templated encoding exceeds by 2."""
    tok = Tokenizer.load(str(toy_task / "tok"))
    demos = demos or load_demonstrations(str(toy_task / "demos.jsonl"))
    return max(len(encode_pair(tok, d.prompt, d.response, False)[0]) for d in demos)


STEP = ["train.max_steps=1", "train.batch_size=8", "train.progress=false", "train.eval_every=0",
        "data.eval_fraction=0", "model=tiny"]


def test_sft_trains_on_plain_sequences(toy_task, tmp_path):
    common = [f"data.train={toy_task / 'demos.jsonl'}", f"tokenizer={toy_task / 'tok'}", f"out_dir={tmp_path / 'sft'}",
              f"data.max_length={_plain_fit(toy_task)}", *STEP]
    train_sft(load_config(SFTConfig, None, [*common, "data.chat_template=false"]))
    assert "chat_template: false" in (tmp_path / "sft" / "model" / "mindrlhf_config.yaml").read_text()
    with pytest.raises(DataError, match="longer than data.max_length"):
        train_sft(load_config(SFTConfig, None, [*common, f"out_dir={tmp_path / 'chat'}"]))


def test_the_reward_model_trains_on_plain_sequences(toy_task, tmp_path):
    rankings, demos = tmp_path / "rankings.jsonl", load_demonstrations(str(toy_task / "demos.jsonl"))[:32]
    with open(rankings, "w") as fh:
        for d in demos:
            fh.write(json.dumps({"prompt": d.prompt, "responses": [d.response, "stone"], "ranking": [0, 1]}) + "\n")
    common = [f"data.train={rankings}", f"tokenizer={toy_task / 'tok'}", f"out_dir={tmp_path / 'rm'}",
              f"data.max_length={_plain_fit(toy_task, demos)}", *STEP]
    train_rm(load_config(RMConfig, None, [*common, "data.chat_template=false"]))
    assert (tmp_path / "rm" / "model" / "reward_head.safetensors").is_file()
    with pytest.raises(DataError, match="longer than data.max_length"):
        train_rm(load_config(RMConfig, None, [*common, f"out_dir={tmp_path / 'chat'}"]))


def test_ppo_rolls_out_from_plain_prompts(world, tmp_path):  # noqa: F811 (world: the fixture)
    _, tok = world
    trainer = PPOTrainer(ppo_config(world, tmp_path, "data.chat_template=false"),
                         reward_model=TargetFraction(tok.vocab_size, N))
    assert [p.input_ids for p in trainer.prompts] == [[tok.bos_id] + tok.encode(p.text) for p in trainer.prompts]
