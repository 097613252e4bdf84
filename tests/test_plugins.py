"""Functions named as "module:function" in a config: every way loading or calling one can go wrong gives one
line naming the config key or the function; a good one is called with the prompts file's columns."""
import numpy as np
import pytest

from mindrlhf.config import ConfigError
from mindrlhf.plugins import PluginError, call_scores, function_name, load_function

MODULE = '''
import numpy as np

THRESHOLD = 3

def score(prompts, responses, **columns):
    return [len(r) + len(columns) for r in responses]

def with_answer(prompts, responses, answer, **_):
    return [float(r == a) for r, a in zip(responses, answer)]

def scaled(prompts, responses, *, scale, **_):
    return [scale * len(r) for r in responses]

def strict(prompts, responses):
    return [1.0] * len(responses)

def one_arg(responses):
    return [0.0] * len(responses)

def too_few(prompts, responses, **_):
    return [1.0] * (len(responses) - 1)

def nan_score(prompts, responses, **_):
    return [0.5] + [float("nan")] * (len(responses) - 1)

def inf_score(prompts, responses, **_):
    return [np.float64(1e300)] * len(responses)   # finite in float64, inf in float32

def text_score(prompts, responses, **_):
    return ["good"] * len(responses)

def none_score(prompts, responses, **_):
    return None

def bools(prompts, responses, **_):
    return np.array([True, False])[: len(responses)]

def raises(prompts, responses, **_):
    raise KeyError("answer")

class Judge:
    @staticmethod
    def rate(prompts, responses, **_):
        return [2.0] * len(responses)
'''


@pytest.fixture
def mod(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    (tmp_path / "broken_rewards.py").write_text("import numpy as np\n1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_a_good_function_gets_the_columns_and_its_kwargs(mod):
    fn = load_function(f"{mod}:score", "reward.functions[0]")
    got = call_scores(fn, f"{mod}:score", ["p", "p"], ["ab", "abcd"], {"answer": ["1", "2"], "level": [1, 2]})
    assert got.dtype == np.float32 and got.tolist() == [4.0, 6.0]
    fn = load_function(f"{mod}:with_answer", "reward.functions[0]")
    assert call_scores(fn, "s", ["p", "q"], ["1", "3"], {"answer": ["1", "2"]}).tolist() == [1.0, 0.0]
    fn = load_function(f"{mod}:scaled", "reward.functions[1]", {"scale": 0.5})
    assert call_scores(fn, "s", ["p"], ["abcd"], {"answer": ["x"]}).tolist() == [2.0]
    assert call_scores(load_function(f"{mod}:Judge.rate", "k"), "s", ["p"], ["a"]).tolist() == [2.0]
    assert call_scores(load_function(f"{mod}:bools", "k"), "s", ["p", "p"], ["a", "b"]).tolist() == [1.0, 0.0]
    assert function_name(f"{mod}:Judge.rate") == "Judge.rate"


@pytest.mark.parametrize("spec, words", [
    ("my_rewards.score", ["reward.functions[2]:", "is not MODULE:FUNCTION"]),
    ("no_such_pkg.mod:score", ["reward.functions[2]:", "cannot import module 'no_such_pkg.mod'", "No module named"]),
    ("broken_rewards:score", ["reward.functions[2]:", "importing 'broken_rewards'", "ZeroDivisionError"]),
    ("my_rewards:scor", ["reward.functions[2]:", "has no attribute 'scor'", "score", "with_answer"]),
    ("my_rewards:THRESHOLD", ["reward.functions[2]:", "is a int, not a function"]),
    ("my_rewards:one_arg", ["reward.functions[2]:", "cannot be called as fn(prompts, responses)",
                            "too many positional arguments", "(responses)"]),
])
def test_load_errors_are_one_line_naming_the_key(mod, spec, words):
    with pytest.raises(ConfigError) as err:
        load_function(spec, "reward.functions[2]")
    message = str(err.value)
    assert "\n" not in message and message.startswith("reward.functions[2]:")
    for word in words:
        assert word in message, message


def test_a_kwarg_the_function_does_not_take_is_a_load_error(mod):
    with pytest.raises(ConfigError, match=r"reward.kwargs: .*strict.*unexpected keyword argument 'pattern'"):
        load_function(f"{mod}:strict", "reward.kwargs", {"pattern": "x"})


@pytest.mark.parametrize("name, columns, words", [
    ("too_few", {}, ["returned 2 scores for 3 responses"]),
    ("nan_score", {}, ["returned nan for response 1", "2 of 3 not finite", "'b'"]),
    ("inf_score", {}, ["returned 1e+300 for response 0", "3 of 3 not finite"]),
    ("text_score", {}, ["a non-number for response 0: 'good' (str)"]),
    ("none_score", {}, ["returned NoneType, expected a list of 3 numbers"]),
    ("raises", {}, ["raised KeyError: 'answer'"]),
    ("strict", {"answer": ["1", "2", "3"]}, ["cannot be called as fn(prompts, responses, answer=[...])",
                                             "unexpected keyword argument 'answer'", "**columns"]),
    ("scaled", {}, ["missing a required argument: 'scale'", "kwargs"]),
])
def test_call_errors_are_one_line_naming_the_function(mod, name, columns, words):
    spec = f"{mod}:{name}"
    fn = load_function(spec, "reward.functions[0]")
    with pytest.raises(PluginError) as err:
        call_scores(fn, spec, ["p"] * 3, ["a", "b", "c"], columns)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"reward function {spec}")
    for word in words:
        assert word in message, message


def test_plugin_errors_are_value_errors_so_the_cli_prints_one_line():
    assert issubclass(PluginError, ValueError) and issubclass(ConfigError, ValueError)
