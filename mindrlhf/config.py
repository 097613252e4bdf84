"""Configs: dataclasses with defaults and help text, loaded from YAML, overridden on the command line.

A stage's config is a dataclass tree (see ``mindrlhf/trainers/*.py``); this module turns YAML plus
dotted overrides (``train.lr=3e-4``) into that tree, and checks it on the way:

- an unknown key fails with the file, the line and the valid keys;
- a value of the wrong type fails with the key, the value and the expected type;
- ``validate()`` methods on the dataclasses check ranges and cross-field rules.

Every field carries its help text in ``metadata["help"]`` (use :func:`field`), which ``mindrlhf <stage>
--help-config`` prints.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from typing import Any, Optional, Union

import yaml

from mindrlhf.io import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and what would be right."""


def field(default: Any = dataclasses.MISSING, help: str = "", **kwargs) -> Any:  # noqa: A002 (mirrors argparse)
    """A dataclass field with help text. Mutable defaults (lists, dataclasses) are copied per instance."""
    if default is not dataclasses.MISSING and (isinstance(default, (list, dict)) or dataclasses.is_dataclass(default)):
        proto = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(proto), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# ----------------------------------------------------------------------------------------------- types


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


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


def _coerce(value, tp, where: str, lines: Optional[dict] = None):
    """Return ``value`` checked against the annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, lines)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where, lines)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls, data: dict, where: str, lines: Optional[dict] = None, base=None):
    """``cls`` with the keys of ``data`` set on top of ``base`` (default: ``cls()``), recursively.

    Starting from the enclosing default matters: a section whose default is a customised instance
    (the pipeline's stage sections) keeps its customisation when YAML sets only some of its keys.
    """
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    if base is None:
        try:
            base = cls()
        except TypeError:
            base = None
    kwargs = {}
    for key, value in data.items():
        key_where = f"{where}{key}" if where.endswith(":") else f"{where}.{key}" if where else key
        if key not in names:
            line = (lines or {}).get(id(data), {}).get(key)
            at = f" (line {line})" if line else ""
            raise ConfigError(
                f"{key_where}{at}: unknown key {key!r}; valid keys of {cls.__name__} are: {', '.join(sorted(names))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and base is not None:
            kwargs[key] = _build(tp, value, key_where, lines, base=getattr(base, key))
        else:
            kwargs[key] = _coerce(value, tp, key_where, lines)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of each mapping key, for error messages."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    loader.key_lines[id(mapping)] = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads 3e-4 as a string; accept exponent floats without a dot, as people write them.
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: str) -> tuple[dict, dict]:
    """Read a YAML mapping; return (data, key_lines) where key_lines maps id(mapping) → {key: line}."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as fh:
        loader = _LineLoader(fh)
        loader.key_lines = {}
        try:
            data = loader.get_single_data()
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        finally:
            loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data, loader.key_lines


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'ppo.clip_range=0.1'`` → (['ppo', 'clip_range'], 0.1); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    loader = _LineLoader(raw)
    loader.key_lines = {}
    try:
        value = loader.get_single_data() if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    finally:
        loader.dispose()
    return [k for k in key.strip().split(".") if k], value


def _merge(base: dict, path: list[str], value, cls, origin: str) -> None:
    node, node_cls = base, cls
    for depth, key in enumerate(path):
        names = {f.name for f in dataclasses.fields(node_cls)}
        if key not in names:
            dotted = ".".join(path[: depth + 1])
            raise ConfigError(
                f"{origin}: unknown key {dotted!r}; valid keys of {node_cls.__name__} are: {', '.join(sorted(names))}"
            )
        if depth == len(path) - 1:
            node[key] = value
            return
        sub_tp = _hints(node_cls)[key]
        sub_tp = next((a for a in typing.get_args(sub_tp) if dataclasses.is_dataclass(a)), sub_tp)
        if not dataclasses.is_dataclass(sub_tp):
            raise ConfigError(f"{origin}: {'.'.join(path[: depth + 1])} is not a section, it cannot have sub-keys")
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else child
            node[key] = child
        node, node_cls = child, sub_tp


def load_config(cls, path: Optional[str] = None, overrides: Optional[list[str]] = None):
    """Build ``cls`` from an optional YAML file and a list of ``a.b=value`` overrides, then validate it."""
    data, lines = ({}, {}) if path is None else read_yaml(path)
    for text in overrides or []:
        keys, value = parse_override(text)
        _merge(data, keys, value, cls, f"override {text!r}")
    cfg = _build_with_lines(cls, data, path or "<config>", lines)
    validate(cfg)
    return cfg


def _build_with_lines(cls, data, path, lines):
    try:
        return _build(cls, data, f"{path}:", lines)
    except ConfigError as err:
        msg = str(err)
        # Put the line of the offending key next to the file name when we know it.
        raise ConfigError(_locate(msg, data, path, lines)) from None


def _locate(msg: str, data: dict, path: str, lines: dict) -> str:
    if not msg.startswith(f"{path}:") or "(line " in msg:
        return msg
    dotted = msg[len(path) + 1 :].split(":", 1)[0].split("[", 1)[0]
    node, line = data, None
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            break
        line = lines.get(id(node), {}).get(key, line)
        node = node[key]
    return msg.replace(f"{path}:", f"{path}:{line}:", 1) if line else msg


def validate(cfg) -> None:
    """Run ``validate()`` on every dataclass in the tree, outermost first."""
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``condition`` holds; for ``validate()`` methods."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str) -> None:
    """Write the resolved config as YAML, atomically, so a run folder can be reproduced alone."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls, prefix: str = "") -> list[str]:
    """One line per leaf field: ``key (type, default): help``; for ``--help-config``."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(describe(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        out.append(f"{key} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return out
