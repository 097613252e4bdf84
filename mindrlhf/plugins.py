"""Functions named in a config as ``"package.module:function"``: rewards, labelers and judges written in Python.

A config names a function by its import path and attribute (``"mindrlhf.rewards:exact_match"``,
``"my_task.scoring:score"``, ``"pkg.mod:Class.method"``); :func:`load_function` imports it once, when the
stage is built, so a typo stops the run before anything is compiled. Scoring functions follow TRL's
convention::

    fn(prompts, responses, **columns) -> list[float]

``prompts`` and ``responses`` are lists of strings of equal length (one entry per answer: with G answers
per prompt a prompt appears G times), and ``columns`` holds the other fields of the prompts JSONL lines,
one list per field in the same order (``{"answer": ["42", "7", ...]}``). Scores are numbers (bools
count as 0 and 1). Fixed parameters of a function
(a regular expression, a file) come from the config as keyword arguments (``kwargs``), bound when it is
loaded. :func:`call_scores` calls it and checks what comes back.

A module may also be named by its file, ``"path/to/scoring.py:function"`` (relative to the working folder):
a task folder then needs no installing and no PYTHONPATH. Labelers, which rank K answers instead of scoring
them, are called through :func:`call_rankings`.

Every error is one line that names the config key or the function, so the CLI can print it as it is.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import numbers
import os
import re
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from mindrlhf.config import ConfigError, field, require


class PluginError(ValueError):
    """A plugged-in function that was called and misbehaved (raised, wrong count, a non-number, NaN/inf)."""


def function_name(spec: str) -> str:
    """The short name of ``"pkg.mod:fn"`` (``"fn"``), e.g. for metric names."""
    return spec.rpartition(":")[2] or spec


def load_function(spec: str, key: str, kwargs: Optional[Mapping] = None) -> Callable:
    """The callable named by ``spec`` (``"package.module:function"``), with ``kwargs`` bound as keyword arguments.

    ``key`` is the config key that gave the spec (e.g. ``"reward.functions[1]"``); it starts every error
    message. Errors (ConfigError, one line): a spec without ``MODULE:NAME``, a module that cannot be
    imported (or fails while importing), a missing attribute, something not callable, and a signature
    that cannot take ``(prompts, responses, **kwargs)``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} is not MODULE:FUNCTION (e.g. mindrlhf.rewards:exact_match)")
    try:
        module = _import(module_name)
    except ImportError as err:
        hint = "paths are relative to the working folder" if module_name.endswith(".py") else \
            "is it installed, or on PYTHONPATH?"
        raise ConfigError(f"{key}: cannot import module {module_name!r} of {spec!r}: {err} ({hint})") from None
    except Exception as err:  # the module itself is broken: say how, in one line
        raise ConfigError(f"{key}: importing {module_name!r} of {spec!r} failed: {type(err).__name__}: {err}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            known = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n)))
            raise ConfigError(f"{key}: {spec!r}: {getattr(obj, '__name__', module_name)!r} has no attribute "
                              f"{part!r}; callables there: {', '.join(known) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {spec!r} is a {type(obj).__name__}, not a function")
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins have none: they are checked when called
        signature = None
    if signature is not None:
        try:
            signature.bind_partial(None, None, **kwargs)
        except TypeError as err:
            raise ConfigError(f"{key}: {spec!r} cannot be called as fn(prompts, responses"
                              f"{''.join(f', {k}=...' for k in kwargs)}): {err}; its signature is "
                              f"{obj.__name__ if hasattr(obj, '__name__') else spec}{signature}") from None
    return functools.partial(obj, **kwargs) if kwargs else obj


def _import(module_name: str):
    """The module named ``module_name``, or the one in the file ``module_name`` when it ends in ``.py``
    (loaded once per absolute path, under a name of its own)."""
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = os.path.abspath(module_name)
    if not os.path.isfile(path):
        raise ImportError(f"no file {path}")
    name = "mindrlhf_plugin_" + re.sub(r"\W", "_", path)
    if name not in sys.modules:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def call_scores(fn: Callable, spec: str, prompts: Sequence[str], responses: Sequence[str],
                columns: Optional[Mapping[str, Sequence]] = None, what: str = "reward function",
                dtype=np.float32) -> np.ndarray:
    """``fn(prompts, responses, **columns)`` as an array [len(responses)] of ``dtype``, checked.

    PluginError (one line naming ``what`` and ``spec``) when the call does not fit the signature, when
    ``fn`` raises, or when it returns something other than one finite number per response. A judge keeps
    float64 (``dtype``): its scores are compared for ties, which float32 rounding could make or break.
    """
    columns = dict(columns or {})
    try:
        inspect.signature(fn).bind(prompts, responses, **columns)
    except TypeError as err:
        raise PluginError(f"{what} {spec}: cannot be called as fn(prompts, responses"
                          f"{''.join(f', {k}=[...]' for k in columns)}): {err}; a function takes "
                          "(prompts, responses, **columns), and fixed parameters come from the config's kwargs "
                          f"for {spec!r}") from None
    except ValueError:  # no signature to check
        pass
    try:
        values = fn(list(prompts), list(responses), **columns)
    except PluginError:
        raise
    except Exception as err:
        raise PluginError(f"{what} {spec} raised {type(err).__name__}: {err}") from err
    n = len(responses)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise PluginError(f"{what} {spec} returned {type(values).__name__}, expected a list of {n} numbers")
    if len(values) != n:
        raise PluginError(f"{what} {spec} returned {len(values)} scores for {n} responses")
    for i, v in enumerate(values):
        if not isinstance(v, (numbers.Real, np.bool_)):  # bools count as 0/1
            raise PluginError(f"{what} {spec} returned a non-number for response {i}: {v!r} "
                              f"({type(v).__name__})")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
        scores = np.asarray([float(v) for v in values], dtype)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise PluginError(f"{what} {spec} returned {float(values[i])!r} for response {i} "
                          f"({bad.size} of {n} not finite); scores must be finite numbers "
                          f"(response {i}: {_short(responses[i])})")
    return scores


def load_scorer(spec: str, key: str, kwargs: Optional[Mapping] = None, what: str = "judge",
                dtype=np.float64) -> Callable:
    """``score(prompts, responses, columns) -> dtype [n]``: the function named ``spec`` (``kwargs`` bound,
    imported now: a typo is a ConfigError naming ``key``) called through :func:`call_scores`."""
    fn = load_function(spec, key, kwargs)

    def score(prompts: Sequence[str], responses: Sequence[str], columns=None) -> np.ndarray:
        return call_scores(fn, spec, prompts, responses, columns, what=what, dtype=dtype)

    return score


def _short(text: str, limit: int = 60) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"



def prompt_columns(metas: Sequence[Mapping]) -> Dict[str, list]:
    """The prompts file's other fields as columns: ``{field: [value of each prompt]}`` (None where a line
    lacks the field), the ``**columns`` a scoring function or labeler receives."""
    return {key: [meta.get(key) for meta in metas] for key in sorted({k for meta in metas for k in meta})}


def call_rankings(fn: Callable, spec: str, prompts: Sequence[str], responses_per_prompt: Sequence[Sequence[str]],
                  rng: np.random.Generator, noise: float, columns: Optional[Mapping[str, Sequence]] = None) -> list:
    """A labeler's rankings, checked: ``fn(prompts, responses_per_prompt, rng=rng, noise=noise, **columns)``
    must return, for each prompt, the indices of its responses best first (a permutation of 0..K−1).

    ``rng`` (a numpy Generator) and ``noise`` (the ``rankings.noise`` of the config) let a labeler simulate
    labelers who disagree; one that ranks deterministically ignores them (``**columns`` takes them).
    PluginError (one line naming ``spec``) when the call does not fit, raises, or returns something else.
    """
    columns = dict(columns or {})
    clash = sorted({"rng", "noise"} & set(columns))
    if clash:
        raise PluginError(f"labeler {spec}: the prompts file has a field named {clash[0]!r}, which is the labeler's "
                          "own keyword; rename the field")
    try:
        inspect.signature(fn).bind(prompts, responses_per_prompt, rng=rng, noise=noise, **columns)
    except TypeError as err:
        raise PluginError(f"labeler {spec}: cannot be called as fn(prompts, responses_per_prompt, rng=..., noise=..."
                          f"{''.join(f', {k}=[...]' for k in columns)}): {err}; a labeler takes "
                          "(prompts, responses_per_prompt, *, rng, noise, **columns)") from None
    except ValueError:  # no signature to check
        pass
    try:
        rankings = fn(list(prompts), [list(r) for r in responses_per_prompt], rng=rng, noise=noise, **columns)
    except PluginError:
        raise
    except Exception as err:
        raise PluginError(f"labeler {spec} raised {type(err).__name__}: {err}") from err
    if isinstance(rankings, (str, bytes)) or not hasattr(rankings, "__len__") or len(rankings) != len(prompts):
        got = f"{len(rankings)} rankings" if hasattr(rankings, "__len__") else type(rankings).__name__
        raise PluginError(f"labeler {spec} returned {got} for {len(prompts)} prompts; expected one list of indices "
                          "(best first) per prompt")
    out = []
    for i, (ranking, responses) in enumerate(zip(rankings, responses_per_prompt)):
        k = len(responses)
        ok = hasattr(ranking, "__len__") and all(isinstance(j, (numbers.Integral, np.integer)) for j in ranking)
        if not ok or sorted(int(j) for j in ranking) != list(range(k)):
            got = str(list(ranking) if ok else ranking)
            raise PluginError(f"labeler {spec} returned {got if len(got) <= 60 else got[:56] + '...'} for prompt "
                              f"{i}; expected a permutation of 0..{k - 1} (its {k} responses, best first)")
        out.append([int(j) for j in ranking])
    return out


@dataclasses.dataclass
class RewardFunctionsConfig:
    """Scoring functions whose weighted sum is a reward:
    ``Σ_k weights[k] · functions[k](prompts, responses, **columns)``."""

    functions: List[str] = field([], "scoring functions as module:function (or file.py:function), each called "
                                     "fn(prompts, responses, **columns) -> one number per response")
    weights: List[float] = field([], "one weight per function; empty = 1 each")
    kwargs: dict = field({}, "fixed keyword arguments per function, keyed by its spec, e.g. "
                             "{mindrlhf.rewards:format_regex: {pattern: 'answer is'}}")

    def validate(self):
        require(not self.weights or len(self.weights) == len(self.functions), "weights",
                f"{len(self.weights)} weights for {len(self.functions)} functions; give one per function or none")
        for spec, kwargs in self.kwargs.items():
            require(spec in self.functions, "kwargs",
                    f"{spec!r} is not one of functions ({', '.join(self.functions) or 'none'})")
            require(isinstance(kwargs, dict), f"kwargs[{spec!r}]", f"expected a mapping, got {kwargs!r}")

    def load(self, key: str = "reward") -> List[tuple]:
        """``[(spec, function, weight)]``, every function imported now (a typo stops the run before anything
        is compiled); ``key`` is the config section named in errors."""
        weights = list(self.weights) if self.weights else [1.0] * len(self.functions)
        return [(spec, load_function(spec, f"{key}.functions[{i}]", self.kwargs.get(spec)), w)
                for i, (spec, w) in enumerate(zip(self.functions, weights))]

    def scorer(self, key: str = "reward") -> Optional[Callable]:
        """``score(prompts, responses, columns) -> float32 [n]``, the weighted sum (None without functions);
        every function is imported now, so a typo stops the run before anything is compiled."""
        if not self.functions:
            return None
        loaded = self.load(key)

        def score(prompts, responses, columns=None) -> np.ndarray:
            total = np.zeros(len(responses), np.float32)
            for spec, fn, w in loaded:
                total += np.float32(w) * call_scores(fn, spec, prompts, responses, columns)
            return total

        return score
