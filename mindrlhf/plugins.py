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

Every error is one line that names the config key or the function, so the CLI can print it as it is.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import numbers
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from mindrlhf.config import ConfigError


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
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import module {module_name!r} of {spec!r}: {err} "
                          "(is it installed, or on PYTHONPATH?)") from None
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


def call_scores(fn: Callable, spec: str, prompts: Sequence[str], responses: Sequence[str],
                columns: Optional[Mapping[str, Sequence]] = None) -> np.ndarray:
    """``fn(prompts, responses, **columns)`` as a float32 array [len(responses)], checked.

    PluginError (one line naming ``spec``) when the call does not fit the signature, when ``fn`` raises,
    or when it returns something other than one finite number per response.
    """
    columns = dict(columns or {})
    try:
        inspect.signature(fn).bind(prompts, responses, **columns)
    except TypeError as err:
        raise PluginError(f"reward function {spec}: cannot be called as fn(prompts, responses"
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
        raise PluginError(f"reward function {spec} raised {type(err).__name__}: {err}") from err
    n = len(responses)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise PluginError(f"reward function {spec} returned {type(values).__name__}, expected a list of {n} numbers")
    if len(values) != n:
        raise PluginError(f"reward function {spec} returned {len(values)} scores for {n} responses")
    for i, v in enumerate(values):
        if not isinstance(v, (numbers.Real, np.bool_)):  # bools count as 0/1
            raise PluginError(f"reward function {spec} returned a non-number for response {i}: {v!r} "
                              f"({type(v).__name__})")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
        scores = np.asarray([float(v) for v in values], np.float32)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise PluginError(f"reward function {spec} returned {float(values[i])!r} for response {i} "
                          f"({bad.size} of {n} not finite); scores must be finite numbers "
                          f"(response {i}: {_short(responses[i])})")
    return scores


def _short(text: str, limit: int = 60) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"

