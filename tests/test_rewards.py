"""The built-in reward functions (mindrlhf.rewards), called through the plug-in path as a config names them."""
import numpy as np
import pytest

from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.task import ideal_response
from mindrlhf.data.builtin.world import make_world
from mindrlhf.plugins import PluginError, call_scores, load_function
from mindrlhf.rewards import answer_matches, last_number, parse_number


def score(name, responses, columns=None, kwargs=None, prompts=None):
    spec = f"mindrlhf.rewards:{name}"
    fn = load_function(spec, "reward.functions[0]", kwargs)
    return call_scores(fn, spec, prompts or ["p"] * len(responses), responses, columns).tolist()


@pytest.mark.parametrize("response, answer, want", [
    ("6 + 7 = 13", "13", True),
    ("So the answer is 13.", 13, True),
    ("First 5, then 8, so 13", "13", True),
    ("13 or maybe 14", "13", False),          # the last number counts
    ("The result is -4.", "-4", True),
    ("It is 1,250 apples", "1250", True),
    ("It is 1,250 apples", "1,250", True),
    ("2.50", "2.5", True),
    ("thirteen", "13", False),                # no number in the response
    ("", "0", False),
    ("  Paris ", "paris", True),              # not a number: stripped, case-insensitive
    ("Paris is the capital", "Paris", False),
])
def test_exact_match_rule(response, answer, want):
    assert answer_matches(response, answer) is want
    assert score("exact_match", [response], {"answer": [answer]}) == [float(want)]


def test_number_helpers():
    assert parse_number(" -3.5 ") == -3.5 and parse_number("1,000") == 1000.0 and parse_number("12 apples") is None
    assert last_number("from 3, to 4,") == 4.0 and last_number("none") is None


def test_exact_match_without_an_answer_column_names_the_function():
    with pytest.raises(PluginError, match=r"^reward function mindrlhf.rewards:exact_match raised ValueError: needs an "
                                          r"'answer' field"):
        score("exact_match", ["13"], {"level": [1]})


def test_format_regex_takes_its_pattern_from_kwargs():
    responses = ["The answer is 42.", "I think 42", "the ANSWER IS -7."]
    assert score("format_regex", responses, kwargs={"pattern": r"^The answer is -?\d+\.$"}) == [1.0, 0.0, 0.0]
    assert score("format_regex", responses, kwargs={"pattern": r"answer is -?\d+", "ignore_case": True}) == [
        1.0, 0.0, 1.0]
    with pytest.raises(PluginError, match="missing a required argument: 'pattern'"):
        score("format_regex", responses)


def test_length_penalty():
    assert score("length_penalty", ["abc", " abcdefgh ", ""], kwargs={"limit": 4, "per_char": 0.5}) == [
        0.0, -2.0, 0.0]
    assert score("length_penalty", ["x" * 10]) == pytest.approx([-0.1])


def test_movie_labeler_is_the_hidden_labelers_score(tmp_path):
    world = make_world(3)
    world.save(str(tmp_path / "world.json"))
    labeler, rng = Labeler(world), np.random.default_rng(0)
    prompts = [f"Any good {g}? I've already seen \"{m.title}\"." for g, m in zip(("comedies", "thrillers"), world.movies)]
    answers = [ideal_response(labeler, p, rng) for p in prompts] + ["no idea", f"\"{world.movies[0].title}\""]
    prompts = prompts + prompts
    got = score("movie_labeler", answers, {"genre": ["comedy"] * 4}, {"world": str(tmp_path / "world.json")}, prompts)
    want = [labeler.score(p, a) for p, a in zip(prompts, answers)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(labeler.max_score(prompts[0])) and min(got) < 0
