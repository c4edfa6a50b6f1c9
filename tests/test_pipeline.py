"""`hgm pipeline`: Algorithm 1 end to end, cached and resumable stages."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hgmcli import artifacts
from hgmcli.cli import app
from hgmcli.config import PipelineConfig, load_config
from hgmcli.errors import HgmError
from hgmcli.pipeline import locked, run_pipeline

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
# The smoke config at a fifth of its size (~3 s): for tests of the run folder, not of the result.
SMALL = ["generate.n_train=600", "generate.n_test=100", "data.val_size=100", "layers.0.cluster.patches=3000",
         "layers.1.cluster.patches=3000", "plots=false"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def cfg(*extra):
    return load_config(PipelineConfig, SMOKE, list(extra))


def hgm(*args):
    """The command line of a real `hgm` process (the tests' PYTHONPATH, this checkout)."""
    return [sys.executable, "-m", "hgmcli", *map(str, args)]


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
    _, rec3 = run_pipeline(cfg("layers.1.cluster.lloyd_iterations=7"), tmp_path)
    assert names(rec3, skipped=True) == ["generate", "cluster 1", "train-layer 1"]
    assert names(rec3, skipped=False) == ["cluster 2", "train-layer 2", "fit-svm", "evaluate"]
    _, rec4 = run_pipeline(cfg("layers.1.cluster.lloyd_iterations=7"), tmp_path, force=True)
    assert not any(r.skipped for r in rec4)


def test_pipeline_json_has_the_evaluate_schema(tmp_path):
    r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert isinstance(m["accuracy"], float) and m["split"] == "test" and m["n"] == 1000
    assert {"level", "ari"} <= set(m["latent_recovery"][0])
    assert [s["name"] for s in m["stages"]][0] == "generate"


def test_killed_run_resumes_with_the_same_result(tmp_path):
    cmd = hgm("-q", "pipeline", "--config", SMOKE, "--json")
    m_ref, _ = run_pipeline(cfg(), tmp_path / "ref")
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    log = run / "run.log"
    deadline = time.time() + 60
    while time.time() < deadline:  # SIGKILL right after the first stage has finished
        if log.exists() and "generate: done" in log.read_text():
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run(cmd + ["--out", str(run)], capture_output=True, text=True, check=True, env=ENV)
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
        (["--set", "layers.0.cluster.k=many"], "Error: config key 'layers.0.cluster.k': expected auto or an integer"),
    ],
)
def test_config_errors(tmp_path, args, message):
    r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(tmp_path / "run"), *args])
    assert r.exit_code == 1 and r.stderr.startswith(message) and r.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()  # no config.yaml for a config that did not validate


def test_missing_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("HGM_DATA", raising=False)
    c = tmp_path / "c.yaml"
    c.write_text("layers: [{cluster: {k: 4}}]\n")
    r = CliRunner().invoke(app, ["pipeline", "--config", str(c), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: no data given: pass --data or set HGM_DATA"
    r = CliRunner().invoke(app, ["pipeline", "--config", str(c), "--out", str(tmp_path / "run"),
                                 "--set", "data.root=/nonexistent/cifar"])
    assert r.exit_code == 1 and r.stderr.strip() == "Error: data not found: /nonexistent/cifar"


# --------------------------------------------------------------------------- the run folder as a transaction


WAIT = "wait for it or choose another --out"


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def files(run):
    """Every file of a run folder and its bytes (the lock file aside)."""
    return {str(f.relative_to(run)): f.read_bytes() for f in sorted(run.rglob("*")) if f.is_file() and f.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    run_pipeline(cfg(*SMALL), folder / "run")
    shutil.copytree(folder / "run", folder / "pristine", symlinks=True)
    return folder


@pytest.fixture
def run(finished):
    """A finished run folder, fresh for each test and always at the same path
    (the stages' cache keys hold the data path: a copy elsewhere would rerun them)."""
    shutil.rmtree(finished / "run")
    return Path(shutil.copytree(finished / "pristine", finished / "run", symlinks=True))


def test_a_failed_rerun_with_another_config_leaves_no_stale_result(run):
    result = {n: (run / n).read_bytes() for n in ("config.yaml", "metrics.json", "classifier.pt")}
    with pytest.raises(HgmError, match="larger than the number of patches"):  # fails in layer 2, after layer 1
        run_pipeline(cfg(*SMALL, "layers.1.cluster.k=100000"), run)
    assert not (run / "metrics.json").exists() and not (run / "classifier.pt").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["layers"][1]["cluster"]["k"] == 100000
    assert {n: (run / "previous" / n).read_bytes() for n in result} == result  # set aside, not lost
    # Back to the first config: a fresh result; previous/ still holds the last *finished* one.
    m, _ = run_pipeline(cfg(*SMALL), run)
    assert json.loads((run / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    assert {n: (run / "previous" / n).read_bytes() for n in result} == result


def test_a_change_after_fit_svm_keeps_the_classifier(run):
    _, records = run_pipeline(cfg(*SMALL, "evaluate.split=val"), run)
    assert names(records, skipped=False) == ["evaluate"]
    assert json.loads((run / "metrics.json").read_text())["split"] == "val"
    assert json.loads((run / "previous" / "metrics.json").read_text())["split"] == "test"


def test_leftovers_are_removed_and_a_full_disk_log_only_warns(run):
    ours = [run / ".data.npz.hgm-k1ll3d.tmp", run / "layer1" / ".network.pt.hgm-x.probe"]
    users = run / ".notes.tmp"
    for f in [*ours, users]:
        f.write_text("x")
    (run / "run.log").unlink()
    (run / "run.log").symlink_to("/dev/full")  # every append fails with ENOSPC
    r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(run), *sets(SMALL)])
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())  # rich wraps the echoed lines
    assert err.count("warning: cannot append to") == 1 and "run.log (No space left on device)" in err
    assert "test accuracy: 1.0000" in r.stdout
    assert not any(f.exists() for f in ours) and users.exists()
    assert (run / "run.log").is_symlink()


def test_a_locked_run_folder_is_refused_at_once(run):
    before = files(run)
    with locked(run):
        r = CliRunner().invoke(app, ["pipeline", "--config", str(SMOKE), "--out", str(run), "--set", "seed=1"])
    assert r.exit_code == 1
    assert r.stderr == f"Error: {run} is in use by another hgm pipeline (pid {os.getpid()}); {WAIT}\n"
    assert files(run) == before


def test_two_real_pipelines_on_one_folder(tmp_path):
    """Issue 14: two pipelines with one --out and different seeds both 'succeeded' into a mixed folder."""
    run = tmp_path / "run"
    first = subprocess.Popen(hgm("-q", "pipeline", "--config", SMOKE, "--out", run, "--json", *sets(SMALL)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (run / "run.log").exists():  # written once the lock is held
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)  # keep it mid-run however fast or slow this machine is
        try:
            other_seed = hgm("-q", "pipeline", "--config", SMOKE, "--out", run, *sets(SMALL), "--set", "seed=1")
            second = subprocess.run(other_seed, capture_output=True, text=True, env=ENV, timeout=120, check=False)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert second.returncode == 1 and second.stdout == ""
    assert second.stderr == f"Error: {run} is in use by another hgm pipeline (pid {first.pid}); {WAIT}\n"
    assert first.returncode == 0, err
    # Nothing mixed: every artifact, config.yaml and metrics.json come from the first run (seed 0).
    assert json.loads((run / "metrics.json").read_text())["accuracy"] == json.loads(out)["accuracy"]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 0
    for f in ("data.npz", "layer1/centroids.npz", "layer1/network.pt", "layer2/network.pt", "classifier.pt"):
        assert artifacts.load_meta(run / f)["seed"] == 0, f


def test_curves_keep_lloyd_objectives_and_skip_the_svms_single_objective(tmp_path):
    from hgmcli.pipeline import Curves

    curves = Curves(tmp_path / "curves.csv")
    curves.from_stats("cluster 1", {"objective": [0.5, 0.4]})
    curves.from_stats("fit-svm", {"objective": 123.0, "solver": "torch-lbfgs"})  # one number: no curve
    curves.close()
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines == ["stage,step,metric,value", "cluster 1,0,objective,0.5", "cluster 1,1,objective,0.4"]


def test_the_same_data_named_another_way_reuses_every_stage(tmp_path, monkeypatch):
    """The inputs' hashes stand for the data: ../data and /abs/data (or an older hgm's
    config.yaml for the same settings) do not invalidate the run folder."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(160, 3, 10, 10), dtype=np.uint8)
    y = (x[:, 0].mean(axis=(1, 2)) > 127).astype(np.int64)
    np.savez(tmp_path / "img.npz", x_train=x[:140], y_train=y[:140], x_test=x[140:], y_test=y[140:])
    cfg = {"data": {"val_size": 40}, "evaluate": {"split": "val"},
           "layers": [{"cluster": {"k": 8, "patches": 2000, "patch_size": 3},
                       "train": {"mode": "none", "pool": "grid", "pool_size": 2}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["pipeline", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]
    first = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "img.npz")])
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path)
    again = CliRunner().invoke(app, [*args, "--data", "img.npz"])
    assert again.exit_code == 0, again.output
    for stage in ("cluster 1", "train-layer 1", "fit-svm"):
        assert f"{stage}: reused" in again.output, again.output
