"""Configs: defaults <- YAML <- --set <- options; unknown keys and wrong types name the key."""

import pytest

from hgmcli.config import (
    ClusterConfig,
    DataConfig,
    GenerateConfig,
    HgmDeprecationWarning,
    PipelineConfig,
    to_dict,
    upgrade_record,
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
    assert cfg.generate.depth == 2 and cfg.generate.patches_per_class == GenerateConfig().patches_per_class
    assert cfg.layers[0].train.bias == -0.5


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "layers:\n  - cluster: {kk: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'layers.0.cluster.kk' \(known: k, patches"):
        load_config(PipelineConfig, p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="config key 'layers.0.cluster.k': expected auto or an integer, got 'abc'"):
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
    cfg = with_options(GenerateConfig(), {"depth": 4, "patches_per_class": None}, "generate")
    assert cfg.depth == 4 and cfg.patches_per_class == GenerateConfig().patches_per_class
    with pytest.raises(ConfigError, match="config key 'generate.family'"):
        with_options(GenerateConfig(), {"family": "nope"}, "generate")


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


# --------------------------------------------------------------------------- renames, ranges, auto (issue 12)


def test_renamed_keys_still_read_with_a_warning(tmp_path):
    p = write(tmp_path, "layers:\n  - cluster: {iterations: 7}\n    train: {n: 12, iterations: 3}\nclassifier: {classifier: fc}\n")
    with pytest.warns(HgmDeprecationWarning, match="'layers.0.cluster.iterations' is deprecated; use 'layers.0.cluster.lloyd_iterations'"):
        cfg = load_config(PipelineConfig, p)
    assert cfg.layers[0].cluster.lloyd_iterations == 7
    assert (cfg.layers[0].train.out_channels, cfg.layers[0].train.gd_steps) == (12, 3)
    assert cfg.classifier.head == "fc"


def test_an_old_set_key_overrides_a_new_yaml_key_and_the_reverse(tmp_path):
    new = write(tmp_path, "classifier: {adam_steps: 5}\n")
    with pytest.warns(HgmDeprecationWarning):
        assert load_config(PipelineConfig, new, ["classifier.iterations=9"]).classifier.adam_steps == 9
    (tmp_path / "old.yaml").write_text("classifier: {iterations: 5}\n")
    with pytest.warns(HgmDeprecationWarning):
        assert load_config(PipelineConfig, tmp_path / "old.yaml", ["classifier.adam_steps=9"]).classifier.adam_steps == 9


def test_both_spellings_in_one_mapping_is_an_error():
    with pytest.raises(ConfigError, match="'classifier.iterations' and 'classifier.adam_steps' are the same setting"):
        from_dict(PipelineConfig, {"classifier": {"iterations": 1, "adam_steps": 2}})


@pytest.mark.parametrize("override, message", [
    ("layers.0.cluster.k=0", "config key 'layers.0.cluster.k': must be >= 1, got 0"),
    ("layers.0.cluster.stride=0", "config key 'layers.0.cluster.stride': must be >= 1, got 0"),
    ("seed=-1", "config key 'seed': must be between 0 and 4294967295, got -1"),
    ("layers.0.train.lr=.nan", "config key 'layers.0.train.lr': must be > 0, got nan"),
    ("layers.0.train.weight_decay=-1", "config key 'layers.0.train.weight_decay': must be >= 0, got -1.0"),
    ("layers.0.train.batch_size=0", "config key 'layers.0.train.batch_size': must be >= 1, got 0"),
    ("layers.0.train.pool_size=0", "config key 'layers.0.train.pool_size': must be >= 1, got 0"),
    ("layers.0.train.padding=-1", "config key 'layers.0.train.padding': must be >= 0, got -1"),
    ("classifier.C=0", "config key 'classifier.C': must be > 0, got 0.0"),
    ("classifier.hidden=[-3]", "config key 'classifier.hidden.0': must be >= 1, got -3"),
    ("classifier.eval_every=0", "config key 'classifier.eval_every': must be >= 1, got 0"),
    ("layers.0.cluster.max_points_per_centroid=0", "config key 'layers.0.cluster.max_points_per_centroid': must be >= 1"),
    ("layers.0.train.memory_budget=lots", "config key 'layers.0.train.memory_budget': expected auto or e.g. 4G"),
    ("layers.0.train.mode=sgd", "config key 'layers.0.train.mode': expected one of adam-ce, gd-linear, jl, none; got 'sgd'"),
])
def test_every_number_has_a_range_and_zero_is_not_auto(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, None, [override])
    assert str(e.value).startswith(message)


def test_auto_is_spelled_auto_and_null_for_auto_is_read_with_a_warning(tmp_path):
    cfg = load_config(PipelineConfig, None, ["layers.0.cluster.k=auto", "layers.0.cluster.k=auto"])
    assert cfg.layers[0].cluster.k == "auto" and cfg.data.val_size == "auto"
    with pytest.warns(HgmDeprecationWarning, match="null for auto is deprecated"):
        assert load_config(PipelineConfig, write(tmp_path, "data: {val_size: null}\n")).data.val_size == "auto"


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    ) + "seed: *i\n"
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*name\) are not allowed in a config \(line 2\)") as e:
        load_config(PipelineConfig, write(tmp_path, bomb))
    assert len(str(e.value)) < 300


def test_a_huge_bad_value_is_echoed_short():
    with pytest.raises(ConfigError) as e:
        load_config(PipelineConfig, None, ["seed=" + "9" * 100_000])
    assert len(str(e.value)) < 400


def test_old_records_compare_equal_in_todays_spelling():
    old = {"data": {"root": "/d", "val_size": None, "normalize": "auto", "limit": None, "download": False},
           "cluster": {"k": None, "patches": 5, "patch_size": None, "stride": None, "center": False, "backend": "auto",
                       "init": "kmeans++", "seed_trials": None, "restarts": 1, "iterations": 25,
                       "max_points_per_centroid": None, "batch_size": 256}}
    new = {"data": to_dict(DataConfig(root="/d")), "cluster": to_dict(ClusterConfig(patches=5, init="kmeans++"))}
    assert upgrade_record(old) == upgrade_record(new)
    assert upgrade_record({"cluster": {"nonsense": 1}}) == {"cluster": {"nonsense": 1}}  # unreadable: unchanged
