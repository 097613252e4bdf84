"""The batched-generation helper against direct Generator calls: row layout with K samples per prompt,
per-batch seeds, a filled last batch dropped from the output; the GenerationConfig builder; the
"pretrained model spec" test."""
import numpy as np
import pytest

from mindrlhf.generation import generate_batches, generation_config, response_texts
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.generate import Generator
from mindrlhf.roles import is_pretrained

N = 6
PROMPTS = [[5, 17, 99], [7, 8, 9, 10], [400, 2], [3, 4, 5, 6, 7], [11]]


class Tok:
    eos_id, pad_id = 2, 0

    @staticmethod
    def decode(ids):
        return " ".join(str(int(i)) for i in ids)


@pytest.fixture(scope="module")
def generator():
    lm = CausalLM(ModelConfig.from_preset("tiny"))
    rng = np.random.default_rng(0)
    lm.assign_weights({n: (1.0 + 0.1 * rng.standard_normal(p.shape) if "norm" in n else
                           0.3 * rng.standard_normal(p.shape)) for n, p in lm.named_weights()})
    return Generator(lm)


def test_generation_config_takes_the_tokenizers_ids_and_validates():
    config = generation_config(Tok, N, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, seed=3)
    assert (config.eos_token_id, config.pad_token_id, config.max_new_tokens, config.seed) == (2, 0, N, 3)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 0.7, 5, 0.9)
    with pytest.raises(ValueError, match="temperature"):
        generation_config(Tok, N, do_sample=True, temperature=0.0)


def test_batches_equal_direct_calls_with_k_samples_and_seed_stride(generator):
    """2 prompts a batch, 2 samples each, seed 10 + 7·b: the rows and seeds the helper documents."""
    config = generation_config(Tok, N, do_sample=True, temperature=1.5, seed=10)
    outs = list(generate_batches(generator, PROMPTS, config, 2, samples_per_prompt=2, seed_stride=7, progress=True))
    assert [len(g.response_ids) for g in outs] == [4, 4, 2]
    for b, gen in enumerate(outs):
        rows = [p for p in PROMPTS[2 * b : 2 * b + 2] for _ in range(2)]
        direct = generator.generate(rows, generation_config(Tok, N, do_sample=True, temperature=1.5, seed=10 + 7 * b))
        np.testing.assert_array_equal(gen.response_ids, direct.response_ids)
        np.testing.assert_array_equal(gen.logprobs, direct.logprobs)
    assert (outs[0].response_ids[0] != outs[0].response_ids[1]).any()  # a prompt's two samples differ


def test_filled_last_batch_keeps_only_its_real_rows(generator):
    config = generation_config(Tok, N, do_sample=True, temperature=1.5, seed=1)
    outs = list(generate_batches(generator, PROMPTS, config, 4, fill_last=True))
    assert [len(g.response_ids) for g in outs] == [4, 1]
    second = generation_config(Tok, N, do_sample=True, temperature=1.5, seed=2)
    filled = generator.generate([PROMPTS[4]] * 4, second)  # the rows the filled call really generated
    np.testing.assert_array_equal(outs[1].response_ids, filled.response_ids[:1])
    np.testing.assert_array_equal(outs[1].prompt_ids, filled.prompt_ids[:1])
    alone = generator.generate([PROMPTS[4]], second)  # unfilled: a batch of 1 draws other uniforms
    assert (alone.response_ids != outs[1].response_ids).any()
    texts = response_texts(Tok, outs[1])
    assert texts == [Tok.decode(outs[1].response_ids[0][outs[1].response_mask[0] > 0])]
    with pytest.raises(ValueError, match="batch_size=0"):
        next(generate_batches(generator, PROMPTS, config, 0))


def test_is_pretrained(tmp_path):
    assert is_pretrained(str(tmp_path))  # a folder: HuggingFace weights
    assert is_pretrained("model.gguf") and is_pretrained("smollm2-135m-instruct")  # GGUF file or preset name
    assert not is_pretrained("tiny") and not is_pretrained("configs/models/none.yaml")
