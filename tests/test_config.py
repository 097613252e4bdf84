"""Config loading: YAML + dotted overrides, with errors that name the file, line and key."""
import dataclasses
from typing import List, Optional

import pytest

from mindrlhf.config import ConfigError, describe, field, load_config, require, save_config


@dataclasses.dataclass
class Inner:
    lr: float = field(1e-3, "learning rate")
    steps: int = field(10, "steps")
    names: List[str] = field(["a"], "names")

    def validate(self):
        require(self.lr > 0, "inner.lr", "must be > 0")


@dataclasses.dataclass
class Outer:
    name: str = field("run", "run name")
    flag: bool = field(False, "a flag")
    maybe: Optional[int] = field(None, "optional int")
    inner: Inner = field(Inner(), "nested section")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lr: 3e-4\n  names: [p, q]\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "flag=true", "maybe=3"])
    assert cfg.name == "x" and cfg.flag is True and cfg.maybe == 3
    assert cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.steps == 7 and cfg.inner.names == ["p", "q"]
    # defaults are not shared between instances
    a, b = Outer(), Outer()
    a.inner.names.append("z")
    assert b.inner.names == ["a"]


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lr: 0.1\n  stesp: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert path in msg and "line 4" in msg and "'stesp'" in msg and "steps" in msg and "lr" in msg


def test_wrong_type_names_key_line_and_expected_type(tmp_path):
    path = write(tmp_path, "inner:\n  steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert f"{path}:2:" in msg and "inner.steps" in msg and "integer" in msg


def test_override_errors():
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(Outer, None, ["inner.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Outer, None, ["name.x=1"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config(Outer, None, ["flag=maybe"])


def test_validate_runs_on_nested_sections():
    with pytest.raises(ConfigError, match="inner.lr: must be > 0"):
        load_config(Outer, None, ["inner.lr=-1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=0.5", "maybe=2"])
    out = tmp_path / "saved.yaml"
    save_config(cfg, str(out))
    assert load_config(Outer, str(out)) == cfg


def test_describe_lists_every_leaf_with_help():
    lines = describe(Outer)
    assert any(line.startswith("inner.lr (float, default 0.001): learning rate") for line in lines)
    assert len(lines) == 6


@dataclasses.dataclass
class WithCustomSection:
    inner: Inner = field(Inner(lr=0.25, names=["custom"]), "a section whose default is customised")


def test_partial_section_keeps_the_enclosing_default(tmp_path):
    """Setting one key of a section must not reset the section's other customised defaults."""
    cfg = load_config(WithCustomSection, write(tmp_path, "inner:\n  steps: 3\n"), ["inner.names=[x]"])
    assert cfg.inner.lr == 0.25 and cfg.inner.steps == 3 and cfg.inner.names == ["x"]
    assert load_config(WithCustomSection, None, ["inner.steps=4"]).inner.names == ["custom"]
