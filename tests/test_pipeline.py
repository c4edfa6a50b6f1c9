"""`hgm pipeline`: Algorithm 1 end to end, cached and resumable stages."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hgmcli.cli import app
from hgmcli.config import PipelineConfig, load_config
from hgmcli.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
FAST: list[str] = []  # smoke.yaml already runs in seconds; overrides here would shrink it further


def cfg(*extra):
    return load_config(PipelineConfig, SMOKE, FAST + list(extra))


def names(records, skipped):
    return [r.name for r in records if r.skipped == skipped]


def test_rerun_reuses_every_stage_and_changes_rerun_only_downstream(tmp_path):
    m1, rec1 = run_pipeline(cfg(), tmp_path)
    assert not any(r.skipped for r in rec1)
    # Theorem 2 in miniature: exact recovery at every level and zero test error.
    assert m1["accuracy"] == 1.0
    assert [e["ari"] for e in m1["latent_recovery"]] == [1.0, 1.0]
    for f in ("config.yaml", "data.npz", "layer1/centroids.npz", "layer1/network.pt", "layer2/centroids.npz",
              "layer2/network.pt", "classifier.pt", "metrics.json", "metrics.png", "run.log"):
        assert (tmp_path / f).exists(), f
    m2, rec2 = run_pipeline(cfg(), tmp_path)
    assert names(rec2, skipped=False) == ["evaluate"]
    assert m2["accuracy"] == m1["accuracy"]
    # A change under layer 2's clustering reruns it and what follows, nothing before.
    _, rec3 = run_pipeline(cfg("layers.1.cluster.iterations=7"), tmp_path)
    assert names(rec3, skipped=True) == ["generate", "cluster 1", "train-layer 1"]
    assert names(rec3, skipped=False) == ["cluster 2", "train-layer 2", "fit-svm", "evaluate"]
    _, rec4 = run_pipeline(cfg("layers.1.cluster.iterations=7"), tmp_path, force=True)
    assert not any(r.skipped for r in rec4)


def test_pipeline_json_has_the_evaluate_schema(tmp_path):
    r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(tmp_path), "--json",
                                 *sum((["--set", s] for s in FAST), [])])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert isinstance(m["accuracy"], float) and m["split"] == "test" and m["n"] == 1000
    assert {"level", "ari"} <= set(m["latent_recovery"][0])
    assert [s["name"] for s in m["stages"]][0] == "generate"


def test_killed_run_resumes_with_the_same_result(tmp_path):
    overrides = sum((["--set", s] for s in FAST), [])
    cmd = [sys.executable, "-m", "hgmcli", "-q", "pipeline", "--config", str(SMOKE), "--json", *overrides]
    m_ref, _ = run_pipeline(cfg(), tmp_path / "ref")
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "run.log"
    deadline = time.time() + 60
    while time.time() < deadline:  # SIGKILL right after the first stage has finished
        if log.exists() and "generate: done" in log.read_text():
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run(cmd + ["--out", str(run)], capture_output=True, text=True, check=True)
    m_res = json.loads(resumed.stdout)
    reused = {s["name"] for s in m_res["stages"] if s["skipped"]}
    assert "generate" in reused
    assert m_res["accuracy"] == m_ref["accuracy"]
    assert m_res["latent_recovery"] == m_ref["latent_recovery"]
    assert not list(run.rglob("*.tmp"))  # no half-written files


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "layers.0.cluster.kk=1"], "Error: unknown config key 'layers.0.cluster.kk'"),
        (["--set", "layers.0.cluster.k=many"], "Error: config key 'layers.0.cluster.k': expected an integer"),
    ],
)
def test_config_errors(tmp_path, args, message):
    r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(tmp_path), *args])
    assert r.exit_code == 1 and r.stderr.startswith(message) and r.stderr.count("\n") == 1


def test_missing_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    c = tmp_path / "c.yaml"
    c.write_text("layers: [{cluster: {k: 4}}]\n")
    r = CliRunner().invoke(app, ["pipeline", "--config", str(c), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: no data given: pass --data or set HGM_DATA"
    r = CliRunner().invoke(app, ["pipeline", "--config", str(c), "--out", str(tmp_path / "run"),
                                 "--set", "data.root=/nonexistent/cifar"])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: data not found: /nonexistent/cifar"
