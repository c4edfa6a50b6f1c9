"""`hgm search`: random parameter search on the validation split (appendix C)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hgmcli.cli import app
from hgmcli.config import PipelineConfig, load_config
from hgmcli.errors import ConfigError
from hgmcli.search import default_space, parse_space, sample_trial

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def test_two_trials_on_the_smoke_model_write_a_sorted_table_and_a_loadable_best_config(tmp_path):
    r = CliRunner().invoke(app, ["search", "--config", str(SMOKE), "--trials", "2", "--out", str(tmp_path), "--json",
                                 "--space", "layers.0.train.out_channels=8:32:log", "--space", "layers.0.cluster.patches=5000:20000"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    accs = [row["val_accuracy"] for row in rows]
    assert len(rows) == 2 and accs == sorted(accs, reverse=True)
    assert json.loads((tmp_path / "trials.json").read_text())[0]["index"] == rows[0]["trial"]
    best = load_config(PipelineConfig, tmp_path / "best.yaml")
    assert best.layers[0].train.out_channels == rows[0]["values"]["layers.0.train.out_channels"]
    assert best.evaluate.split == "val"
    assert (tmp_path / f"trial-{rows[0]['trial']:03d}" / "metrics.json").exists()


def test_default_space_and_shared_bias():
    cfg = load_config(PipelineConfig, SMOKE)
    space = default_space(cfg)
    assert "layers.0.train.out_channels" in space and "layers.1.train.out_channels" not in space  # layer 2 trains nothing
    values = sample_trial(cfg, space, np.random.default_rng(0))
    assert values["layers.0.train.bias"] == values["layers.1.train.bias"]
    assert isinstance(values["layers.0.cluster.patches"], int)


def test_bad_space():
    with pytest.raises(ConfigError, match="--space expects key=low:high"):
        parse_space(["layers.0.train.out_channels"])
    with pytest.raises(ConfigError, match="need low <= high"):
        parse_space(["layers.0.train.out_channels=9:3"])
