"""Configs: defaults <- YAML <- --set <- options; unknown keys and wrong types name the key."""

import pytest

from hgmcli.config import (
    ClusterConfig,
    GenerateConfig,
    PipelineConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_size,
    with_options,
)
from hgmcli.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_then_yaml_then_set(tmp_path):
    p = write(tmp_path, "seed: 3\nlayers:\n  - cluster: {k: 10}\n  - cluster: {k: 20}\n")
    cfg = load_config(PipelineConfig, p, ["layers.1.cluster.k=64", "data.val_size=0"])
    assert cfg.seed == 3
    assert [layer.cluster.k for layer in cfg.layers] == [10, 64]
    assert cfg.layers[0].cluster.patches == ClusterConfig().patches  # default filled in
    assert cfg.data.val_size == 0


def test_set_on_defaults_creates_sections():
    cfg = load_config(PipelineConfig, None, ["generate.depth=2", "layers.0.train.bias=-0.5"])
    assert cfg.generate.depth == 2 and cfg.generate.k == GenerateConfig().k
    assert cfg.layers[0].train.bias == -0.5


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "layers:\n  - cluster: {kk: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'layers.0.cluster.kk' \(known: k, patches"):
        load_config(PipelineConfig, p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="config key 'layers.0.cluster.k': expected an integer, got 'abc'"):
        load_config(PipelineConfig, None, ["layers.0.cluster.k=abc"])
    with pytest.raises(ConfigError, match="config key 'generate.orthonormal': expected true or false"):
        load_config(PipelineConfig, None, ["generate.orthonormal=3"])
    with pytest.raises(ConfigError, match="config key 'layers.0.train.mode': expected one of adam-ce"):
        load_config(PipelineConfig, None, ["layers.0.train.mode=sgd"])


def test_list_index_out_of_range():
    with pytest.raises(ConfigError, match="config key 'layers.3': no such list element"):
        load_config(PipelineConfig, None, ["layers.3.cluster.k=1"])


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(PipelineConfig, None, ["seed"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PipelineConfig, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(PipelineConfig, write(tmp_path, "- 1\n"))


def test_options_override_and_validate():
    cfg = with_options(GenerateConfig(), {"depth": 4, "k": None}, "generate")
    assert cfg.depth == 4 and cfg.k == GenerateConfig().k
    with pytest.raises(ConfigError, match="config key 'generate.model'"):
        with_options(GenerateConfig(), {"model": "nope"}, "generate")


def test_scalar_becomes_list_and_int_becomes_float():
    cfg = from_dict(GenerateConfig, {"classes": 5, "noise": 1})
    assert cfg.classes == [5] and cfg.noise == 1.0 and isinstance(cfg.noise, float)


def test_yaml_is_not_executed(tmp_path):
    p = write(tmp_path, "seed: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_config(PipelineConfig, p)


def test_apply_overrides_does_not_mutate():
    raw = {"a": {"b": 1}}
    apply_overrides(raw, ["a.b=2"])
    assert raw == {"a": {"b": 1}}


def test_parse_size():
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size(None) is None
    with pytest.raises(ConfigError, match="memory size 'lots'"):
        parse_size("lots")
