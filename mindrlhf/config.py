"""Configs: dataclasses with defaults and help text, loaded from YAML, overridden on the command line.

A stage's config is a dataclass tree (see ``mindrlhf/trainers/*.py``); this module turns YAML plus
dotted overrides (``train.max_steps=50``) into that tree, and checks it on the way:

- an unknown or repeated key fails with the file, the line and the valid keys;
- a value of the wrong type fails with the key, the value and the expected type (a bad override is
  blamed on the override);
- a class's ``resolve_includes(data, origin)`` (a staticmethod) may rewrite the raw mapping before it is
  built: the pipeline puts the stage recipes it names beneath its stage sections;
- ``validate()`` methods on the dataclasses check ranges and cross-field rules. A ``validate()`` names
  keys relative to its own section (``require(self.lr > 0, "lr", ...)``); :func:`validate` puts the
  section's dotted path in front (``actor_optim.lr``), so a section class reads the same wherever it sits.

Every field carries its help text in ``metadata["help"]`` (use :func:`field`), which ``mindrlhf <stage>
--help-config`` prints with the defaults of the stage's own instance (:func:`describe`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from typing import Any, Optional, Union

import yaml

from mindrlhf.io import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and what would be right.

    ``key``/``detail``: set when the message is ``"{key}: {detail}"`` about a key relative to a section, so
    the caller that knows the section can name the full dotted key."""

    def __init__(self, message: str, key: Optional[str] = None, detail: Optional[str] = None):
        super().__init__(message)
        self.key, self.detail = key, detail


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds; for ``validate()`` methods, with
    ``key`` relative to the section whose ``validate()`` runs."""
    if not condition:
        raise ConfigError(f"{key}: {message}", key, message)


def _within(err: ConfigError, prefix: str) -> ConfigError:
    """``err`` about a key of the section at ``prefix`` (``"train."``), naming the full dotted key."""
    if err.key is None or not prefix:
        return err
    return ConfigError(f"{prefix}{err.key}: {err.detail}", prefix + err.key, err.detail)


def field(default: Any = dataclasses.MISSING, help: str = "", **kwargs) -> Any:  # noqa: A002 (mirrors argparse)
    """A dataclass field with help text. Mutable defaults (lists, dataclasses) are copied per instance."""
    if default is not dataclasses.MISSING and (isinstance(default, (list, dict)) or dataclasses.is_dataclass(default)):
        proto = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(proto), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# ----------------------------------------------------------------------------------------------- types


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _section_type(tp):
    """The dataclass of a section annotation (``X`` or ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str, origin: str, lines: dict):
    """``value`` checked against the annotation ``tp``; a ConfigError(key=``key``) when it does not fit."""
    def wrong(expected: str):
        return ConfigError(f"{key}: expected {expected}, got {value!r}", key, f"expected {expected}, got {value!r}")

    kind = typing.get_origin(tp)
    if kind is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key, origin, lines)
                except ConfigError:
                    pass
        raise wrong(_type_name(tp))
    if kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong(_type_name(tp))
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", origin, lines) for i, v in enumerate(value)]
    if kind is dict or tp is dict:
        if not isinstance(value, dict):
            raise wrong("a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong(f"a mapping of {tp.__name__} fields")
        return _build(tp, value, origin, lines, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise wrong("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong("a string")
    return value


def _unknown(cls, prefix: str, key: str, subs: list) -> str:
    """The message for ``key``, not a field of ``cls``: the key a class's ``redirects`` names, or the valid keys.

    ``redirects`` (a ClassVar {key: (right key, what it is)}) covers keys people reach for that live
    under another name; ``subs``, the sub-keys given under ``key``, complete the example."""
    redirect = getattr(cls, "redirects", {}).get(key)
    if redirect is not None:
        right, what = redirect
        tail = "".join(f".{s}" for s in subs)
        example = f" ({prefix + right + tail})" if tail else ""
        return f"unknown key {prefix + key + tail!r}: {what} is {right!r}{example}"
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    return f"unknown key {prefix + key!r}; valid keys of {cls.__name__}: {', '.join(names)}"


def _build(cls, data: dict, origin: str, lines: dict, base=None, prefix: str = ""):
    """``cls`` with the keys of ``data`` set on top of ``base`` (default: ``cls()``), recursively.

    Starting from the enclosing default matters: a section whose default is a customised instance
    (the pipeline's stage sections) keeps its customisation when YAML sets only some of its keys.
    ``origin`` is the file (empty without one); ``lines`` maps id(mapping) → {key: line} for messages.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    if base is None:
        try:
            base = cls()
        except TypeError:
            base = None
    kwargs = {}
    for key, value in data.items():
        at = _at(origin, lines.get(id(data), {}).get(key))
        if key not in names:
            raise ConfigError(f"{at}{_unknown(cls, prefix, key, list(value)[:1] if isinstance(value, dict) else [])}")
        tp = hints[key]
        try:
            if dataclasses.is_dataclass(tp) and isinstance(value, dict) and base is not None:
                kwargs[key] = _build(tp, value, origin, lines, getattr(base, key), f"{prefix}{key}.")
            else:
                kwargs[key] = _coerce(value, tp, prefix + key, origin, lines)
        except ConfigError as err:
            if err.key is None:  # already says where
                raise
            raise ConfigError(f"{at}{err}") from None
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as err:  # a section that checks itself on construction
        raise ConfigError(f"{_at(origin)}{_within(err, prefix)}") from None
    except TypeError as err:
        raise ConfigError(f"{_at(origin)}{prefix.rstrip('.') or cls.__name__}: {err}") from None


def _at(origin: str, line: Optional[int] = None) -> str:
    """``"file:line: "``, ``"file: "`` or nothing (a config built from overrides alone)."""
    return f"{origin}:{line}: " if origin and line else f"{origin}: " if origin else ""


# ----------------------------------------------------------------------------------------------- YAML


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of each mapping key and refuses a key given twice."""


def _construct_mapping(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key, line = getattr(key_node, "value", None), key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{loader.origin}:{line}: duplicate key {key!r} (also on line {seen[key]}); "
                              "keep one of them")
        seen[key] = line
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    loader.key_lines[id(mapping)] = seen
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads 3e-4 as a string; accept exponent floats without a dot, as people write them.
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(stream, origin: str) -> tuple[Any, dict]:
    loader = _LineLoader(stream)
    loader.key_lines, loader.origin = {}, origin
    try:
        return loader.get_single_data(), loader.key_lines
    finally:
        loader.dispose()


def read_yaml(path: str) -> tuple[dict, dict]:
    """Read a YAML mapping; return (data, key_lines) where key_lines maps id(mapping) → {key: line}."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not a file; expected a YAML config file")
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a file saved with a BOM reads the same
            data, lines = _load_yaml(fh, path)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data, lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'algo.clip_range=0.1'`` → (['algo', 'clip_range'], 0.1); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=50")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, f"override {text!r}")[0] if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [k for k in key.strip().split(".") if k], value


def _merge(base: dict, path: list[str], value, cls, origin: str) -> None:
    """Set ``path`` to ``value`` in the raw mapping ``base`` of ``cls``; a leaf value is type-checked here,
    so that a bad value is blamed on ``origin`` (the override), not on a YAML line."""
    node, node_cls = base, cls
    for depth, key in enumerate(path):
        prefix = ".".join(path[:depth]) + "." if depth else ""
        if key not in {f.name for f in dataclasses.fields(node_cls)}:
            raise ConfigError(f"{origin}: {_unknown(node_cls, prefix, key, path[depth + 1:])}")
        tp = _hints(node_cls)[key]
        if depth == len(path) - 1:
            if _section_type(tp) is None:
                try:
                    value = _coerce(value, tp, prefix + key, origin, {})
                except ConfigError as err:
                    raise ConfigError(f"{origin}: {err}") from None
            node[key] = value
            return
        sub_tp = _section_type(tp)
        if sub_tp is None:
            raise ConfigError(f"{origin}: {prefix + key} is not a section, it cannot have sub-keys")
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else child
            node[key] = child
        node, node_cls = child, sub_tp


# ----------------------------------------------------------------------------------------------- loading


def load_config(cls, path: Optional[str] = None, overrides: Optional[list[str]] = None):
    """Build ``cls`` from an optional YAML file and a list of ``a.b=value`` overrides, then validate it."""
    data, lines = ({}, {}) if path is None else read_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        _merge(data, keys, value, cls, f"override {text!r}")
    include = getattr(cls, "resolve_includes", None)  # a config that reads other files into its sections
    if include is not None:
        data = include(data, path or "")
    cfg = _build(cls, data, path or "", lines)
    validate(cfg)
    return cfg


def load_run_config(cls, path: Optional[str] = None, overrides: Optional[list[str]] = None,
                    resume: Optional[str] = None):
    """A run's config: :func:`load_config`, or to resume the run folder ``resume``, its ``config.yaml`` (or
    ``path`` when given) with ``overrides`` on top and ``out_dir`` set to ``resume``.

    A resumed run must keep what its checkpoints and data order were made with: every key a section lists
    in its ``fixed_on_resume`` (a ClassVar of dotted keys relative to the section) must equal the saved one."""
    if not resume:
        return load_config(cls, path, overrides)
    saved_path = os.path.join(resume, "config.yaml")
    if path is None and not os.path.isfile(saved_path):
        raise ConfigError(f"{saved_path}: not found, so there is no config to resume with; give --config FILE")
    cfg = load_config(cls, path or saved_path, overrides)
    if hasattr(cfg, "out_dir") and os.path.abspath(resume) != os.path.abspath(cfg.out_dir):
        cfg.out_dir = resume  # a resumed run keeps writing where it was
    if os.path.isfile(saved_path):
        _check_fixed(load_config(cls, saved_path), cfg, saved_path, os.path.abspath(resume))
    return cfg


def _check_fixed(saved, cfg, saved_path: str, run_dir: str, prefix: str = "") -> None:
    """Refuse a change of a ``fixed_on_resume`` key between ``saved`` and ``cfg`` (``{out_dir}`` in a
    path counts as filled in with ``run_dir``, as the pipeline fills it)."""
    for key in getattr(type(cfg), "fixed_on_resume", ()):
        old, new = saved, cfg
        for part in key.split("."):
            old, new = getattr(old, part), getattr(new, part)
        if isinstance(new, str):
            new = new.replace("{out_dir}", run_dir)
        if old != new:
            raise ConfigError(f"{prefix}{key}: {old!r} in {saved_path}, {new!r} now; a resumed run keeps the "
                              "shapes and data order it started with (start a new run to change it)")
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(getattr(cfg, f.name)):
            _check_fixed(getattr(saved, f.name), getattr(cfg, f.name), saved_path, run_dir, f"{prefix}{f.name}.")


def validate(cfg, prefix: str = "") -> None:
    """Check every section of the tree, inner sections first, then the section's own ``validate()``
    (whose cross-field rules can then rely on each section's ranges). Every float must be finite."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name}: must be a finite number, got {value}")
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as err:
            raise _within(err, prefix) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML, atomically, so a run folder can be reproduced alone."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls, prefix: str = "", instance=None) -> list[str]:
    """One line per leaf field: ``key (type, default): help``, the default read from ``cls()`` (so a
    section whose default the enclosing class customises shows that value); for ``--help-config``."""
    instance = cls() if instance is None else instance
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        value, key = getattr(instance, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(describe(type(value), key + ".", value))
            continue
        out.append(f"{key} ({_type_name(hints[f.name])}, default {value!r}): {f.metadata.get('help', '')}")
    return out
